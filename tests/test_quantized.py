"""Quantized graphs written by onnxruntime's own quantizer count like their float model."""

from __future__ import annotations

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
def test_depth_and_width_of_quantized_models_are_refused_with_the_way_there(float_model, form):
    """Depth and width would need calibrated scales for tensors that do not exist yet: refused
    up front, naming a quantized node and saying how to get there; resolution keeps every
    weight and works, and the written model runs at its new size."""
    from .conftest import ort_run, run_cli

    out = float_model.with_name(f"{form}.onnx")
    if not out.exists():
        test_quantized_counts_equal_float(float_model, form)
    for args in (["--width", "2"], ["--depth", "2"], ["--strategy", "dWr", "--flops", "2x"]):
        target = out.with_name(f"{form}.scaled.onnx")
        result = run_cli("scale", str(out), *args, "-o", str(target))
        assert result.returncode == 1 and not target.exists(), result.stderr
        line = result.stderr.strip()
        assert "\n" not in line and "the model is quantized" in line
        assert "scale the float model, then quantize" in line and "node '" in line
    target = out.with_name(f"{form}.r.onnx")
    run_cli("scale", str(out), "--resolution", "1.5", "-o", str(target), check=True)
    logits = ort_run(target, {"input": np.zeros((1, 3, 336, 336), np.float32)})[0]
    assert logits.shape == (1, 1000)
