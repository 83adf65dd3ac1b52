"""Saving: streamed protobuf encoding, external data for huge models, atomic and safe."""

from __future__ import annotations

import os
import stat

import onnx
import pytest

from onnxscale import model as model_io
from onnxscale import zoo
from onnxscale.errors import OnnxscaleError


def test_streamed_file_loads_back_identical(tmp_path):
    proto = zoo.build("regnety-400mf")
    proto.metadata_props.add(key="k", value="v")
    out = model_io.save_model(proto, tmp_path / "m.onnx")
    loaded = onnx.load(str(out))
    assert loaded == proto
    assert os.path.getsize(out) == proto.ByteSize()
    mode = stat.S_IMODE(os.stat(out).st_mode)
    assert mode & stat.S_IRGRP, "outputs are ordinary files, not mkstemp's 0600"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left


def test_large_models_get_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    proto = zoo.build("resnet-18")
    out = model_io.save_model(proto, tmp_path / "big.onnx")
    assert (tmp_path / "big.onnx.data").stat().st_size > 40_000_000
    assert os.path.getsize(out) < 1_000_000
    loaded = model_io.load_model(str(out)).proto
    assert [t.name for t in loaded.graph.initializer] == [t.name for t in proto.graph.initializer]
    onnx.checker.check_model(str(out))


def test_pieces_carry_the_whole_model_each_under_its_largest_tensor():
    """`to_pieces` is how --ray ships a base model of any size: no piece is the whole model
    (one protobuf cannot pass 2 GiB), and `from_pieces` gives back the same model."""
    proto = zoo.build("resnet-18")
    proto.metadata_props.add(key="k", value="v")
    shell, tensors = model_io.to_pieces(proto)
    assert len(tensors) == len(proto.graph.initializer)
    largest = max(t.ByteSize() for t in proto.graph.initializer)
    assert len(shell) < 100_000 and max(map(len, tensors)) == largest < proto.ByteSize() / 4
    assert model_io.from_pieces(shell, tensors) == proto


def test_never_overwrites_the_input(tmp_path):
    path = tmp_path / "in.onnx"
    model_io.save_model(zoo.build("resnet-18"), path)
    before = path.read_bytes()
    with pytest.raises(OnnxscaleError, match="refusing to overwrite"):
        model_io.save_model(zoo.build("resnet-18", seed=1), path, protect=path)
    assert path.read_bytes() == before
    with pytest.raises(OnnxscaleError, match="does not exist"):
        model_io.save_model(zoo.build("resnet-18"), tmp_path / "no" / "x.onnx")


def test_removing_a_written_model_takes_its_data_file_and_no_other(tmp_path, monkeypatch):
    """`remove_model` (an output that failed onnx's checker) removes OUT.data only when OUT
    keeps its weights there: a stale file of that name from another run stays."""
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 1000)
    big = model_io.save_model(zoo.build("resnet-18"), tmp_path / "big.onnx")
    model_io.remove_model(big)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 10**12)
    stale = tmp_path / "small.onnx.data"
    stale.write_bytes(b"someone else's")
    model_io.remove_model(model_io.save_model(zoo.build("resnet-18"), tmp_path / "small.onnx"))
    assert list(tmp_path.iterdir()) == [stale]
