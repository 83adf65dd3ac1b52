"""No written model that ONNX Runtime refuses: the weightless load check, and `scale`
writing nothing (and saying which node) when a rewrite would produce such a model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxscale.loadcheck import NotLoadable, verdict, weightless_twin
from onnxscale.model import LoadedModel
from onnxscale.scaling import job
from onnxscale.scaling.pipeline import Multipliers, Planner, ScaleOptions

from .conftest import ort_run

SHAPES = {"x": [1, 8, 16, 16]}


def _net(bn_channels: int = 16, bias: int = 16) -> onnx.ModelProto:
    """Conv (8 -> 16, 7x7: large enough to be left out of the twin), BatchNormalization with
    ``bn_channels`` statistics, then a 1x1 conv to 4 outputs (so the 16 channels can widen)."""
    rng = np.random.default_rng(0)
    weights = {
        "w": rng.standard_normal((16, 8, 7, 7)).astype(np.float32),  # > 4096: becomes an input
        "b": np.zeros(bias, np.float32),
        "scale": np.ones(bn_channels, np.float32), "shift": np.zeros(bn_channels, np.float32),
        "mean": np.zeros(bn_channels, np.float32), "var": np.ones(bn_channels, np.float32),
        "head": rng.standard_normal((4, 16, 1, 1)).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[3] * 4),
             helper.make_node("BatchNormalization", ["c", "scale", "shift", "mean", "var"],
                              ["n"], name="bn"),
             helper.make_node("Conv", ["n", "head"], ["y"], name="head")]
    graph = helper.make_graph(
        nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPES["x"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 17)])


def test_a_valid_model_passes_and_its_twin_has_no_large_weight():
    model = _net()
    assert verdict(model, SHAPES).refused is None
    twin = weightless_twin(model)
    assert "w" in {v.name for v in twin.graph.input}
    assert "w" not in {t.name for t in twin.graph.initializer}
    assert twin.ByteSize() < model.ByteSize() / 10


def test_a_batchnorm_narrower_than_its_input_is_named():
    """What ORT said of the DenseNet that `scale --depth 2` once wrote: the BN node and the
    two sizes it cannot unify."""
    why = verdict(_net(bn_channels=12), SHAPES).refused
    assert why is not None and "bn" in why and "12" in why and "16" in why


def test_a_conv_bias_of_the_wrong_length_is_named():
    """ORT loads such a model and fails at its first run; the check sees it before."""
    why = verdict(_net(bias=12), SHAPES).refused
    assert why is not None and "'conv'" in why and "[12]" in why and "16 output" in why


def test_what_ort_refuses_in_the_given_model_too_is_a_note_not_a_refusal():
    """An IR version newer than the installed ORT knows is the model's matter: the scaled
    model is written, with a note that it could not be load-checked."""
    newer = _net()
    newer.ir_version = 99
    found = verdict(newer, SHAPES, base=newer)
    assert found.refused is None and "refuses the given model as well" in found.note
    assert "IR version" in found.note
    assert verdict(_net(bn_channels=12), SHAPES, base=_net()).refused


def test_scale_writes_nothing_when_the_rewrite_would_be_refused(tmp_path, monkeypatch):
    """A rewrite bug stands in here: the planned model comes back with a BN that no longer
    fits.  The command fails naming the node; no file, no 'function preserved'."""
    base = _net()
    planner = Planner(base, SHAPES)
    plan = planner.plan(Multipliers(w=2.0), ScaleOptions())
    real_apply = job.apply_plan

    def broken_apply(proto, shapes, plan):
        outcome = real_apply(proto, shapes, plan)
        bn = next(n for n in outcome.model.graph.node if n.op_type == "BatchNormalization")
        for tensor in outcome.model.graph.initializer:
            if tensor.name == bn.input[1]:
                tensor.CopyFrom(numpy_helper.from_array(np.ones(3, np.float32), tensor.name))
        return outcome

    monkeypatch.setattr(job, "apply_plan", broken_apply)
    target = tmp_path / "out.onnx"
    planned = job.Planned(job.Job(), plan)
    with pytest.raises(NotLoadable, match="would not load.*bn"):
        job.write_job(LoadedModel(base, "net.onnx", None), SHAPES, planned, target, False)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    monkeypatch.setattr(job, "apply_plan", real_apply)
    job.write_job(LoadedModel(base, "net.onnx", None), SHAPES, planned, target, True)
    assert ort_run(target, {"x": np.zeros(SHAPES["x"], np.float32)})[0].shape == (1, 4, 16, 16)
