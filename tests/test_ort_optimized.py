"""Models saved by ONNX Runtime's own optimizer: fused com.microsoft ops read in their
standard ONNX form (checked against ORT's own kernels), analyzed and scaled like the model
they were optimized from."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxscale.complexity import analyze
from onnxscale.standardform import standard_form
from onnxscale.graph import Graph

from .conftest import run_cli, scale_and_run_cli

RNG = np.random.default_rng(0)


def _run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _model(nodes, inputs, outputs, weights, opset=17):
    graph = helper.make_graph(nodes, "fused", inputs, outputs,
                              [numpy_helper.from_array(v, k) for k, v in weights.items()])
    return helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", opset),
                                                   helper.make_opsetid("com.microsoft", 1)])


MS = {"domain": "com.microsoft"}
FUSED = [
    ("FusedConv", dict(activation="Relu"), False),
    ("FusedConv", dict(activation="LeakyRelu", activation_params=[0.2]), False),
    ("FusedConv", dict(activation="Clip", activation_params=[0.0, 6.0]), False),
    ("FusedConv", dict(activation="HardSigmoid", activation_params=[0.3, 0.4]), False),
    ("FusedConv", dict(activation="Relu"), True),  # with the residual input Z
    ("FusedConv", dict(activation="Sigmoid"), True),
]


@pytest.mark.parametrize("op, attributes, residual", FUSED)
def test_fused_conv_in_standard_form_computes_what_ort_does(op, attributes, residual):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    weights = {"w": RNG.standard_normal((6, 4, 3, 3)).astype(np.float32),
               "b": RNG.standard_normal(6).astype(np.float32)}
    inputs = ["x", "w", "b"]
    if residual:
        weights["z"] = RNG.standard_normal((1, 6, 8, 8)).astype(np.float32)
        inputs.append("z")
    node = helper.make_node(op, inputs, ["y"], name="fused", pads=[1, 1, 1, 1],
                            kernel_shape=[3, 3], **attributes, **MS)
    model = _model([node], [x], [y], weights)
    std, done = standard_form(model)
    assert done == {op: 1}
    assert all(n.domain == "" for n in std.graph.node)
    assert std.graph.node[0].name == "fused" and std.graph.node[0].op_type == "Conv"
    feeds = {"x": RNG.standard_normal((1, 4, 8, 8)).astype(np.float32)}
    np.testing.assert_allclose(_run(std, feeds)[0], _run(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op, attributes, extra", [
    ("FusedGemm", dict(activation="LeakyRelu", activation_alpha=0.1, transB=1), []),
    ("FusedMatMul", dict(alpha=0.5, transB=1), []),
    ("QuickGelu", dict(alpha=1.702), None),
    ("QuickGelu", dict(alpha=1.0), None),
    ("Gelu", {}, None),
    ("BiasGelu", {}, ["bias"]),
    ("FastGelu", {}, ["bias"]),
    ("FastGelu", {}, []),
])
@pytest.mark.parametrize("opset", [17, 20])
def test_fused_elementwise_and_linear_ops_in_standard_form_compute_what_ort_does(
        op, attributes, extra, opset):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    weights = {"bias": RNG.standard_normal(8).astype(np.float32)}
    if extra is None:
        inputs = ["x"]
    elif op in ("FusedGemm", "FusedMatMul"):
        weights["w"] = RNG.standard_normal((8, 8)).astype(np.float32)
        inputs = ["x", "w"] + (["bias"] if op == "FusedGemm" else [])
    else:
        inputs = ["x", *extra]
    node = helper.make_node(op, inputs, ["y"], name="fused", **attributes, **MS)
    model = _model([node], [x], [y], weights, opset)
    std, done = standard_form(model)
    assert done == {op: 1} and all(n.domain == "" for n in std.graph.node)
    feeds = {"x": RNG.standard_normal((3, 8)).astype(np.float32) * 3}
    np.testing.assert_allclose(_run(std, feeds)[0], _run(model, feeds)[0], rtol=1e-4, atol=1e-4)


def _optimized(source, target, level) -> None:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.optimized_model_filepath = str(target)
    options.log_severity_level = 3
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("name, exporter", [("resnet18", "legacy"), ("efficientnet_b0", "legacy"),
                                            ("regnet_y_400mf", "dynamo")])
@pytest.mark.slow
def test_ort_extended_outputs_analyze_and_scale_like_their_model(exports, tmp_path, name,
                                                                 exporter):
    """ORT_ENABLE_EXTENDED output (FusedConv; QuickGelu for EfficientNet's SiLU; dynamo's
    zero conv biases, whose Expand target ORT folds to the old channel count): the same
    pycls figures as the export it came from, --width 2 exact, dWr 4x on target and the
    written file run in ONNX Runtime at its new size (the user's path, at 224)."""
    source = exports(name, exporter, 224)
    optimized = tmp_path / f"{name}.ort.onnx"
    _optimized(source, optimized, ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    assert any(n.domain == "com.microsoft" for n in onnx.load(str(optimized)).graph.node)
    figures = []
    for path in (source, optimized):
        result = run_cli("analyze", str(path), "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        figures.append((report["flops"], report["params"], report["acts"]))
    assert figures[0] == figures[1]
    summary = scale_and_run_cli(optimized, tmp_path / "wide.onnx", "--width", "2", "--verify")
    assert summary["exact"] and summary["verified_rel_l2"] < 1e-4
    assert any("FusedConv x" in note and "standard ONNX" in note for note in summary["notes"])
    summary = scale_and_run_cli(optimized, tmp_path / "dwr.onnx", "--strategy", "dWr",
                                "--flops", "4x")
    assert abs(summary["scaled"]["flops"] / summary["base"]["flops"] - 4) < 0.06


def test_ort_enable_all_layout_ops_are_refused_in_one_line(exports, tmp_path):
    optimized = tmp_path / "all.onnx"
    _optimized(exports("resnet18", "legacy", 224), optimized,
               ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    if not any(n.domain == "com.microsoft.nchwc" for n in onnx.load(str(optimized)).graph.node):
        pytest.skip("this CPU gets no NCHWc layout from ORT")
    result = run_cli("analyze", str(optimized))
    assert result.returncode == 1 and "\n" not in result.stderr.strip()
    assert "com.microsoft.nchwc" in result.stderr and "ORT_ENABLE_EXTENDED" in result.stderr


def test_standard_form_leaves_a_model_without_fused_ops_alone():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], {})
    same, done = standard_form(model)
    assert same is model and done == {}
    report = analyze(Graph(same))
    assert report.flops == 0
