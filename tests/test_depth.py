"""Depth scaling (issue 4): real architectures run deeper or shallower, flops follow, and every
claim of an exact (function-preserving) rewrite holds in ONNX Runtime."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxscale import zoo
from onnxscale.complexity import analyze
from onnxscale.errors import OnnxscaleError
from onnxscale.graph import Graph
from onnxscale.scaling.depth.blocks import find_blocks
from onnxscale.scaling.pipeline import (Multipliers, ScaleOptions, check, compare_outputs,
                                        scale_model)
from onnxscale.scaling.strategy import round_depth

from .conftest import ort_run, run_cli, scale_and_run_cli

TOLERANCE = 1e-4
MODELS = [
    ("resnet18", "legacy"), ("resnet18", "dynamo"), ("resnet50", "legacy"),
    ("resnext50_32x4d", "legacy"), ("efficientnet_b0", "legacy"), ("efficientnet_b0", "dynamo"),
    ("mobilenet_v2", "legacy"), ("mobilenet_v3_small", "legacy"), ("regnet_x_400mf", "legacy"),
    ("regnet_y_400mf", "legacy"), ("mnasnet0_5", "legacy"), ("convnext_tiny", "legacy"),
    ("efficientnet_v2_s", "legacy"), ("timm.regnetz_b16", "legacy"),
    ("timm.ghostnet_100", "legacy"),
]
# flops ratio bounds per depth multiplier: stems and heads do not scale, so ratios stay inside
FLOPS_RATIO = {2.0: (1.3, 2.2), 1.5: (1.1, 1.7), 0.5: (0.35, 0.95)}


def deepen(proto: onnx.ModelProto, d: float, shapes=None, init: str = "preserve"):
    outcome = scale_model(proto, shapes or {}, Multipliers(d=d), ScaleOptions(init=init))
    check(outcome.model)
    return outcome


def assert_scaled(proto: onnx.ModelProto, d: float, shapes=None) -> None:
    """Runs, flops move as the block counts say, stage counts follow pycls's rule, and an
    exact claim holds in ONNX Runtime."""
    outcome = deepen(proto, d, shapes)
    low, high = FLOPS_RATIO[d]
    assert low < outcome.scaled.flops / outcome.base.flops < high
    stages = outcome.edits[0].details["stages"]
    for row in stages:
        assert row["new"] == (round_depth(d, row["old"]) if row["mode"] else row["old"])
    difference = compare_outputs(proto, outcome.model, outcome.base.inputs)
    assert np.isfinite(difference)
    if outcome.exact:
        assert difference <= TOLERANCE, f"exact claimed, but rel L2 = {difference:.2e}"
    assert outcome.exact == (d >= 1), "growing with preserve is exact; removing never is"


@pytest.mark.parametrize("name, exporter", MODELS)
@pytest.mark.slow
def test_torchvision_and_timm_models(exports, name, exporter):
    proto = onnx.load(exports(name, exporter, res=96))
    for d in (2.0, 1.5, 0.5):
        assert_scaled(proto, d)


@pytest.mark.slow
def test_paddleocr_detector(paddleocr_models):
    """PP-OCRv4 det: plain PP-LCNetV3 stages get copies with an identity skip."""
    proto = onnx.load(paddleocr_models["det"])
    for d in (2.0, 1.5, 0.5):
        assert_scaled(proto, d, {"": [1, 3, 128, 128]})


@pytest.mark.parametrize("name", ["efficientnet-b0", "regnety-400mf"])
def test_zoo_depth_matches_pycls_exactly(name):
    """Our rewrite of the built model == pycls's own deeper model (flops, params, acts),
    including stages of one block instantiated as repeats (EfficientNet's first and last
    stage, RegNetY's first)."""
    outcome = deepen(zoo.build(name), 2)
    reference = analyze(Graph(zoo.build_spec(zoo.spec(name).scaled(d=2))))
    got = (outcome.scaled.flops, outcome.scaled.params, outcome.scaled.acts)
    assert got == (reference.flops, reference.params, reference.acts)
    assert outcome.exact


@pytest.mark.parametrize("name, d", [("resnet-50", 1.5), ("regnetz-500mf", 0.5)])
@pytest.mark.slow
def test_zoo_depth_other_multipliers_match_pycls(name, d):
    outcome = deepen(zoo.build(name), d)
    reference = analyze(Graph(zoo.build_spec(zoo.spec(name).scaled(d=d))))
    assert (outcome.scaled.flops, outcome.scaled.params) == (reference.flops, reference.params)


def test_instantiated_repeats_start_as_the_identity():
    proto = zoo.build("efficientnet-b0")
    outcome = deepen(proto, 3)
    assert outcome.exact
    assert compare_outputs(proto, outcome.model, outcome.base.inputs) <= TOLERANCE
    rows = outcome.edits[0].details["stages"]
    assert [row["mode"] for row in rows][0] == "instantiate" and rows[0]["new"] == 3


def test_random_init_runs_and_is_not_exact():
    proto = zoo.build("resnet-18")
    outcome = deepen(proto, 2, init="random")
    assert not outcome.exact
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}
    assert np.isfinite(ort_run(outcome.model, feeds)[0]).all()


def test_input_model_is_not_mutated():
    proto = zoo.build("regnety-400mf")
    before = proto.SerializeToString()
    deepen(proto, 2)
    deepen(proto, 0.5)
    assert proto.SerializeToString() == before


def test_model_without_blocks_is_refused_clearly():
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])], [weight])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OnnxscaleError, match="no repeatable blocks"):
        deepen(proto, 2)


def test_scale_depth_cli_json(tmp_path):
    out = tmp_path / "r18-d2.onnx"
    result = run_cli("scale", "zoo:resnet-18", "--depth", "2", "--verify", "--json", "-o",
                     str(out), check=True)
    data = json.loads(result.stdout)
    assert data["exact"] and data["verified_rel_l2"] <= TOLERANCE
    assert [(s["old"], s["new"]) for s in data["stages"]] == [(2, 4)] * 4
    assert 1.9 < data["scaled"]["flops"] / data["base"]["flops"] < 2.1
    onnx.checker.check_model(str(out))


@pytest.mark.slow
def test_instanced_block_with_biases_shared_through_identity(tmp_path):
    """torch's legacy exporter dedups equal tensors (untrained BN folds to equal zero biases)
    and shares them through Identity nodes; a re-instantiated single block widens its convs
    differently, so each new shape needs its own copy (timm MobileViT, found in the wild)."""
    import torch

    from .conftest import import_torchvision

    import_torchvision()  # timm imports torchvision
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilevit_xxs", pretrained=False).eval()
    path = tmp_path / "mobilevit.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 128, 128),), str(path), dynamo=False,
                      opset_version=17)
    base = onnx.load(str(path))
    assert sum(node.op_type == "Identity" for node in base.graph.node) > 5
    outcome = scale_model(base, {}, Multipliers(d=2), ScaleOptions())
    assert outcome.exact and outcome.scaled.flops > outcome.base.flops
    assert compare_outputs(base, outcome.model, outcome.base.inputs) < 1e-4


# ---- families off the spine: nested residual blocks, same-shape modules (issue 9) ----------------

@pytest.mark.parametrize("name, exporter, depths", [
    ("timm.cspdarknet53", "legacy", [1, 2, 8, 8, 4]),
    ("timm.cs3darknet_s", "legacy", [1, 3, 4, 1]),
    ("timm.cs3darknet_s", "dynamo", [1, 3, 4, 1]),
    ("local.yolo", "legacy", [1, 2, 2, 1, 1]),   # YOLOv8-like C2f bottlenecks
    ("local.yolo", "dynamo", [1, 2, 2, 1, 1]),
])
@pytest.mark.slow
def test_residual_blocks_nested_in_csp_branches(exports, name, exporter, depths):
    """CSP stages run their bottlenecks on one branch: found off the spine, with timm's own
    stage depths, and repeated in place exactly (copies start as the identity)."""
    proto = onnx.load(exports(name, exporter, res=128))
    found = find_blocks(Graph(proto))
    assert [len(s.blocks) for s in found.stages if s.mode] == depths
    assert all(s.nested for s in found.stages if s.mode)
    outcome = deepen(proto, 2)
    assert outcome.exact
    assert compare_outputs(proto, outcome.model, outcome.base.inputs) <= TOLERANCE
    rows = outcome.edits[0].details["stages"]
    assert [row["new"] for row in rows if row["mode"]] == [2 * n for n in depths]


@pytest.mark.parametrize("name, exporter, depths", [
    ("googlenet", "legacy", [1, 2, 1]), ("inception_v3", "legacy", [1, 4, 1]),
    ("shufflenet_v2_x1_0", "legacy", [3, 7, 3]), ("shufflenet_v2_x1_0", "dynamo", [3, 7, 3]),
])
@pytest.mark.slow
def test_same_shape_modules_repeat_and_say_the_function_changes(exports, name, exporter,
                                                                 depths):
    """Inception modules and ShuffleNet stride-1 units (same shape in and out, no skip) are
    repeatable; their copies cannot start as the identity, which the edit says, and the
    deeper model runs."""
    proto = onnx.load(exports(name, exporter, res=224 if name == "inception_v3" else 96))
    found = find_blocks(Graph(proto))
    assert [len(s.blocks) for s in found.stages if s.mode] == depths
    outcome = deepen(proto, 2)
    assert not outcome.exact
    assert any("change the function" in note for note in outcome.edits[0].notes)
    assert np.isfinite(compare_outputs(proto, outcome.model, outcome.base.inputs))
    assert 1.05 < outcome.scaled.flops / outcome.base.flops < 2.2  # stems and heads stay


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.slow
def test_dense_blocks_append_layers_exactly(exports, exporter):
    """DenseNet-121's dense blocks (6-12-24-16 layers): new layers read every earlier
    output and join the block's Concat, whose readers (transition BN + conv, the final BN,
    pooling, the dynamo export's fixed Reshape target and the classifier) get zero weights
    for them, so --depth 2 is exact; --depth 0.5 drops layers and their channels and runs."""
    proto = onnx.load(exports("densenet121", exporter, res=96))
    found = find_blocks(Graph(proto))
    assert [len(s.blocks) for s in found.stages if s.mode == "dense"] == [6, 12, 24, 16]
    outcome = deepen(proto, 2)
    assert outcome.exact
    assert compare_outputs(proto, outcome.model, outcome.base.inputs) <= TOLERANCE
    assert [row["new"] for row in outcome.edits[0].details["stages"]] == [12, 24, 48, 32]
    shrunk = deepen(proto, 0.5)
    assert not shrunk.exact and shrunk.scaled.flops < 0.6 * shrunk.base.flops
    assert np.isfinite(compare_outputs(proto, shrunk.model, shrunk.base.inputs))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.slow
def test_densenet_at_its_native_size_deepens_exactly_through_the_cli(exports, exporter,
                                                                       tmp_path):
    """The user's path: a DenseNet-121 exported untrained at 224 (every BN scale 1, which the
    legacy exporter shares among unrelated layers), `scale --depth 2 --verify` on the CLI,
    and the written file run in ONNX Runtime.  A dense block's readers once resized such a
    shared BN scale for all its readers: the file ORT refused was reported 'function
    preserved: yes'; dWr 4x was an internal error."""
    source = exports("densenet121", exporter, res=224, init="default")
    summary = scale_and_run_cli(source, tmp_path / "deeper.onnx", "--depth", "2", "--verify")
    assert summary["exact"] and summary["verified_rel_l2"] <= TOLERANCE
    summary = scale_and_run_cli(source, tmp_path / "dwr4.onnx", "--strategy", "dWr",
                                "--flops", "4x")
    assert abs(summary["scaled"]["flops"] / summary["base"]["flops"] - 4) < 0.06


@pytest.mark.parametrize("name, exporter", [("local.plain", "legacy"), ("local.plain", "dynamo"),
                                            ("vgg11_bn", "legacy")])
@pytest.mark.slow
def test_plain_stacks_deepen_exactly(exports, name, exporter):
    """Plain stacks without skips (an MTCNN-like stack, VGG-11-BN): their periodic blocks and
    single-block stages are repeated with an identity skip and a zeroed branch end, so
    --depth 2 is exact."""
    proto = onnx.load(exports(name, exporter, res=224))
    outcome = deepen(proto, 2)
    assert outcome.exact
    assert compare_outputs(proto, outcome.model, outcome.base.inputs) <= TOLERANCE
    assert outcome.scaled.flops > 1.2 * outcome.base.flops
