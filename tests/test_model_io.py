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


def _external_copy(proto: onnx.ModelProto, path) -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    onnx.save(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=1024)


def test_a_lazy_load_reads_no_large_weight_and_analyzes_the_same(tmp_path):
    """Analysis needs dims only: large external tensors stay in their file (deferred), small
    ones are read; the figures equal those of the model loaded whole."""
    from onnxscale import external
    from onnxscale.complexity import analyze
    from onnxscale.graph import Graph

    path = tmp_path / "r18.onnx"
    _external_copy(zoo.build("resnet-18"), path)
    lazy = model_io.load_model(str(path), lazy=True).proto
    eager = model_io.load_model(str(path)).proto
    deferred = [t for t in lazy.graph.initializer if external.is_deferred(t)]
    assert deferred and all(not t.raw_data for t in deferred)
    assert lazy.ByteSize() < 200_000 < eager.ByteSize()
    assert not any(external.is_deferred(t) for t in eager.graph.initializer)
    a, b = analyze(Graph(lazy)), analyze(Graph(eager))
    assert (a.flops, a.params, a.acts) == (b.flops, b.params, b.acts)
    big = max(deferred, key=lambda t: external.data_bytes(t))
    eager_big = next(t for t in eager.graph.initializer if t.name == big.name)
    assert (external.array(big) == onnx.numpy_helper.to_array(eager_big)).all()


def test_a_data_file_shorter_than_its_tensors_is_refused(tmp_path):
    path = tmp_path / "r18.onnx"
    _external_copy(zoo.build("resnet-18"), path)
    data = tmp_path / "r18.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(OnnxscaleError, match="shorter"):
        model_io.load_model(str(path), lazy=True)


@pytest.mark.parametrize("external_output", [False, True])
@pytest.mark.slow
def test_scaling_a_model_with_external_data_streams_its_weights(tmp_path, monkeypatch,
                                                                external_output):
    """`scale` of an external-data model: weights it copies are read from the input's data
    file one at a time, weights it computes go to a scratch file beside the output (forced
    here for a small model) and are streamed into the output, inline or as external data;
    the written model computes what scaling the model held in memory gives."""
    import numpy as np

    from onnxscale.scaling import job
    from onnxscale.scaling.pipeline import Multipliers, Planner, ScaleOptions

    from .conftest import ort_run

    source = tmp_path / "in" / "r18.onnx"
    source.parent.mkdir()
    _external_copy(zoo.build("resnet-18"), source)
    shapes = {"input": [1, 3, 64, 64]}
    results = []
    for lazy, spill in ((False, False), (True, True)):
        monkeypatch.setattr(job, "SPILL_MODEL_BYTES", 0 if spill else 1 << 62)
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD",
                            1000 if external_output and spill else 1 << 40)
        loaded = model_io.load_model(str(source), lazy=lazy)
        plan = Planner(loaded.proto, shapes).plan(Multipliers(d=2.0, w=1.5), ScaleOptions())
        out = tmp_path / f"out-{lazy}.onnx"
        job.write_job(loaded, shapes, job.Planned(job.Job(), plan), out, False)
        results.append(ort_run(out, {"input": np.ones(shapes["input"], np.float32)})[0])
        assert (tmp_path / f"out-{lazy}.onnx.data").exists() == (external_output and spill)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # scratch removed
    np.testing.assert_array_equal(results[0], results[1])
    assert sorted(p.name for p in source.parent.iterdir()) == ["r18.onnx", "r18.onnx.data"]
