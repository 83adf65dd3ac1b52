"""Quantized graphs written by onnxruntime's own quantizer count like their float model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxscale import zoo
from onnxscale.complexity import analyze
from onnxscale.graph import Graph

quantization = pytest.importorskip("onnxruntime.quantization")


class Calibration(quantization.CalibrationDataReader):
    def __init__(self):
        self.left = 2

    def get_next(self):
        if not self.left:
            return None
        self.left -= 1
        return {"input": np.random.default_rng(self.left).random((1, 3, 224, 224), np.float32)}


@pytest.fixture(scope="module")
def float_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("quant") / "resnet18.onnx"
    onnx.save(zoo.build("resnet-18"), str(path))
    return path


@pytest.mark.parametrize("form", ["qoperator", "qdq", "dynamic"])
def test_quantized_counts_equal_float(float_model, form):
    """QLinearConv/QGemm (QOperator), Q/DQ pairs around float ops (QDQ), ConvInteger with
    dynamic quantization: the same multiply-adds, weights and activations as the float model."""
    out = float_model.with_name(f"{form}.onnx")
    if form == "dynamic":
        quantization.quantize_dynamic(str(float_model), str(out),
                                      weight_type=quantization.QuantType.QInt8)
    else:
        fmt = quantization.QuantFormat.QOperator if form == "qoperator" else \
            quantization.QuantFormat.QDQ
        quantization.quantize_static(str(float_model), str(out), Calibration(), quant_format=fmt)
    quantized = onnx.load(str(out))
    ops = {node.op_type for node in quantized.graph.node}
    assert ops & {"QLinearConv", "DequantizeLinear", "ConvInteger"}
    base = analyze(Graph(onnx.load(str(float_model))))
    report = analyze(Graph(quantized))
    assert (report.flops, report.params, report.acts) == (base.flops, base.params, base.acts)


@pytest.mark.parametrize("form", ["qoperator", "qdq", "dynamic"])
@pytest.mark.slow
def test_depth_and_width_of_quantized_models_are_refused_with_the_way_there(float_model, form):
    """Depth and width would need calibrated scales for tensors that do not exist yet: refused
    up front, naming a quantized node and saying how to get there (a strategy too, with
    --strict); resolution keeps every weight and works, and the written model runs at its
    new size."""
    from .conftest import ort_run, run_cli

    out = float_model.with_name(f"{form}.onnx")
    if not out.exists():
        test_quantized_counts_equal_float(float_model, form)
    for args in (["--width", "2"], ["--depth", "2"],
                 ["--strategy", "dWr", "--flops", "2x", "--strict"]):
        target = out.with_name(f"{form}.scaled.onnx")
        result = run_cli("scale", str(out), *args, "-o", str(target))
        assert result.returncode in (1, 2) and not target.exists(), result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and "the model is quantized" in line
        assert "scale the float model, then quantize" in line and "node '" in line
    target = out.with_name(f"{form}.r.onnx")
    run_cli("scale", str(out), "--resolution", "1.5", "-o", str(target), check=True)
    logits = ort_run(target, {"input": np.zeros((1, 3, 336, 336), np.float32)})[0]
    assert logits.shape == (1, 1000)


@pytest.mark.parametrize("form", ["qoperator", "qdq", "dynamic"])
def test_a_strategy_on_a_quantized_model_scales_resolution_alone(float_model, form, tmp_path):
    """dWr on a quantized model adapts as on any model that cannot scale some dimension:
    depth and width are dropped (the note says why, once), resolution reaches the target,
    and the written model runs at its new size."""
    from .conftest import ort_run, run_cli

    out = float_model.with_name(f"{form}.onnx")
    if not out.exists():
        test_quantized_counts_equal_float(float_model, form)
    target = tmp_path / "dwr.onnx"
    result = run_cli("scale", str(out), "--strategy", "dWr", "--flops", "2x", "-o", str(target),
                     "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["multipliers"]["d"] == summary["multipliers"]["w"] == 1
    assert abs(summary["scaled"]["flops"] / summary["base"]["flops"] - 2) < 0.03
    assert sum("d and w cannot be scaled" in note for note in summary["notes"]) == 1
    size = summary["scaled"]["inputs"]["input"]
    assert ort_run(target, {"input": np.zeros(size, np.float32)})[0].shape == (1, 1000)


@pytest.mark.slow
def test_dynamically_quantized_crnn_with_a_dynamic_width(tmp_path):
    """quantize_dynamic of a CRNN exported with a dynamic width (DynamicQuantizeLinear feeding
    ConvInteger and MatMulInteger, its LSTM a com.microsoft DynamicQuantizeLSTM): analyzed
    at a given size exactly like its float model, and dWr scales its width axis alone (the
    LSTM pins the height), the written model running at the new width."""
    import torch

    from .conftest import local_models, make_torch_model, ort_run, run_cli

    model = make_torch_model("local.crnn")
    float_path, quantized = tmp_path / "crnn.onnx", tmp_path / "crnn.int8.onnx"
    torch.onnx.export(model, (torch.randn(1, *local_models()["crnn"][1]),), str(float_path),
                      dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["out"], dynamic_axes={"input": {0: "b", 3: "w"}})
    quantization.quantize_dynamic(str(float_path), str(quantized),
                                  weight_type=quantization.QuantType.QInt8)
    ops = {node.op_type for node in onnx.load(str(quantized)).graph.node}
    assert {"DynamicQuantizeLinear", "ConvInteger", "DynamicQuantizeLSTM"} <= ops
    figures = []
    for path in (float_path, quantized):
        result = run_cli("analyze", str(path), "--input-shape", "input:1x1x32x100", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        figures.append((report["flops"], report["params"], report["acts"]))
    assert figures[0] == figures[1] and figures[0][0] > 0
    target = tmp_path / "crnn.int8.dwr.onnx"
    result = run_cli("scale", str(quantized), "--input-shape", "input:1x1x32x100", "--strategy",
                     "dWr", "--flops", "2x", "-o", str(target), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    height, width = summary["scaled"]["inputs"]["input"][2:]
    assert height == 32 and width > 150
    assert abs(summary["scaled"]["flops"] / summary["base"]["flops"] - 2) < 0.05
    out = ort_run(target, {"input": np.zeros((1, 1, 32, width), np.float32)})[0]
    assert out.shape == (width // 2, 1, 40)  # one step per two columns, 40 classes
