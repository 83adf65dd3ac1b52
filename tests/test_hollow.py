"""Hollow weights: the stand-ins that let a plan cost what the graph's structure costs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxscale import zoo
from onnxscale.complexity import analyze
from onnxscale.graph import Graph
from onnxscale.hollow import Hollow, assert_solid, hollow_model, is_hollow
from onnxscale.model import save_model
from onnxscale.scaling.init import Preserve, Random


@pytest.mark.parametrize("op", [
    lambda a: np.take(a, np.arange(7) % 3, axis=1),
    lambda a: np.take(a, np.array([[0, 1], [2, 0]]), axis=0),
    lambda a: np.transpose(a, (2, 0, 1, 3)),
    lambda a: np.transpose(a),
    lambda a: a.reshape(4, -1),
    lambda a: a.reshape((-1,)),
    lambda a: np.full_like(a, 3.0),
    lambda a: np.zeros_like(a, dtype=np.float16),
    lambda a: a.astype(np.float16),
])
def test_hollow_follows_numpy_shapes(op):
    real = np.zeros((4, 3, 5, 2), np.float32)
    expected = op(real)
    got = op(Hollow(real.shape, real.dtype))
    assert isinstance(got, Hollow)
    assert got.shape == expected.shape and got.dtype == expected.dtype


def test_init_policies_keep_shapes_without_values():
    w = Hollow((16, 8, 3, 3), np.float32)
    out_pos, in_pos = np.arange(24) % 16, np.arange(12) % 8
    for policy in (Preserve(), Random(0)):
        dense, _ = policy.layer(w, 0, out_pos, 1, in_pos)
        assert isinstance(dense, Hollow) and dense.shape == (24, 12, 3, 3)
    depthwise = Hollow((16, 1, 3, 3), np.float32)
    grouped, _ = Preserve().grouped(depthwise, out_pos, out_pos, 16, 24)
    assert isinstance(grouped, Hollow) and grouped.shape == (24, 1, 3, 3)


def test_hollow_model_analyzes_like_the_real_one(tmp_path):
    real = zoo.build("regnety-400mf")
    hollow = hollow_model(real)
    big = [t for t in hollow.graph.initializer if is_hollow(t)]
    assert big and all(not t.raw_data for t in big)
    assert hollow.ByteSize() < real.ByteSize() / 20
    a, b = analyze(Graph(real, {})), analyze(Graph(hollow, {}))
    assert (a.flops, a.params, a.acts) == (b.flops, b.params, b.acts)
    with pytest.raises(AssertionError, match="hollow"):
        assert_solid(hollow)
    with pytest.raises(AssertionError, match="hollow"):
        save_model(hollow, tmp_path / "never.onnx")
    assert not (tmp_path / "never.onnx").exists()
    assert_solid(real)
    onnx.checker.check_model(real)
