"""Complexity of real architectures exported by torch, checked against independent references:
the pycls numbers of docs/concepts.md, torch's FlopCounterMode, and forward hooks on torch modules."""

from __future__ import annotations

import pytest

from onnxscale.complexity import analyze
from onnxscale.graph import Graph
from onnxscale.model import load_model

from .conftest import make_torch_model

# (flops, params, acts) from pycls, docs/concepts.md (Complexity)
PYCLS = {
    "efficientnet_b0": (385_825_092, 5_288_548, 6_748_036, 224),
    "efficientnet_b1": (686_817_992, 7_794_184, 10_884_328, 240),
    "regnet_y_400mf": (401_849_056, 4_344_144, 3_892_496, 224),
    "timm.regnety_008": (797_183_328, 6_263_168, 5_249_888, 224),
}


def analyze_file(path, shapes=None):
    return analyze(Graph(load_model(str(path)).proto, shapes))


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.parametrize("name", list(PYCLS))
def test_pycls_reference_numbers(exports, name, exporter):
    flops, params, acts, res = PYCLS[name]
    report = analyze_file(exports(name, exporter, res))
    assert report.acts == acts
    assert abs(report.flops - flops) / flops < 1e-3  # pycls adds a tiny SE/fc bias term
    if exporter == "dynamo":  # BatchNormalization kept: params exact
        assert report.params == params
    else:  # the legacy exporter folds BN: its 2C scale/shift params become C conv biases
        assert params * 0.98 < report.params < params


# grouped, depthwise, dense, inception, shuffle, ConvNeXt, VGG, fire, NAS, GhostNet, ...
CROSS_CHECK = ["resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "densenet121",
               "googlenet", "shufflenet_v2_x1_0", "convnext_tiny", "vgg11_bn", "squeezenet1_0",
               "mnasnet0_5", "regnet_x_400mf", "alexnet", "timm.ghostnet_100"]


def torch_reference(name: str, res: int = 224) -> tuple[int, int]:
    """(multiply-adds by FlopCounterMode / 2, output elements of Conv/Linear/MaxPool modules)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = make_torch_model(name)
    acts = 0

    def count(module, inputs, output):
        nonlocal acts
        acts += output.numel()

    counted = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear, torch.nn.MaxPool2d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, counted)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, res, res))
    for hook in hooks:
        hook.remove()
    return counter.get_total_flops() // 2, acts


@pytest.mark.parametrize("name", CROSS_CHECK)
@pytest.mark.slow
def test_flops_and_acts_match_torch(exports, name):
    flops, acts = torch_reference(name)
    report = analyze_file(exports(name, "legacy"))
    assert report.flops == flops
    assert report.acts == acts


@pytest.mark.parametrize("name", ["convnext_tiny", "shufflenet_v2_x1_0", "densenet121"])
def test_dynamo_export_matches_torch(exports, name):
    flops, acts = torch_reference(name)
    report = analyze_file(exports(name, "dynamo"))
    assert report.flops == flops
    assert report.acts == acts


def test_paddleocr_models_from_wheel(paddleocr_models):
    """Paddle2ONNX graphs: weights in Constant nodes, all-dynamic input dims."""
    import onnx

    det = paddleocr_models["det"]
    proto = onnx.load(str(det))
    assert not proto.graph.initializer  # weights live in Constant nodes
    report = analyze_file(det, {"x": [1, 3, 640, 640]})
    expected_params = sum(
        int(__import__("numpy").prod(n.attribute[0].t.dims)) for n in proto.graph.node
        if n.op_type == "Constant" and n.attribute[0].t.data_type == 1
        and any(c.op_type in ("Conv", "ConvTranspose") and c.input[1] == n.output[0]
                for c in proto.graph.node))
    conv_params = sum(layer.params for layer in report.layers
                      if layer.op in ("Conv", "ConvTranspose"))
    assert conv_params >= expected_params > 0
    assert report.outputs and all(s is not None for s in report.outputs.values())
    out = list(report.outputs.values())[0]
    assert out[-2:] == [640, 640]
    # a fully convolutional detector: 4x pixels -> 4x flops, but for its 1x1 SE convs
    small = analyze_file(det, {"x": [1, 3, 320, 320]})
    assert 3.99 < report.flops / small.flops < 4.0
    rec = analyze_file(paddleocr_models["rec"], {"x": [1, 3, 48, 320]})
    cls = analyze_file(paddleocr_models["cls"], {"x": [1, 3, 48, 192]})
    assert rec.flops > 0 and cls.flops > 0 and list(cls.outputs.values())[0] == [1, 2]


def test_shapes_agree_with_onnx_shape_inference(paddleocr_models, exports):
    """Our propagated shapes equal onnx's own inference wherever onnx knows the shape."""
    import onnx

    for path, shapes in [(paddleocr_models["det"], {"x": [1, 3, 320, 480]}),
                         (exports("shufflenet_v2_x1_0", "dynamo"), None),
                         (exports("googlenet"), None)]:
        proto = load_model(str(path)).proto
        graph = Graph(proto, shapes)
        fixed = onnx.ModelProto()
        fixed.CopyFrom(proto)
        for value in fixed.graph.input:
            if value.name in graph.inputs:
                for dim, size in zip(value.type.tensor_type.shape.dim, graph.inputs[value.name]):
                    dim.Clear()
                    dim.dim_value = size
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
        compared = 0
        for value in list(inferred.graph.value_info) + list(inferred.graph.output):
            dims = value.type.tensor_type.shape.dim
            if not value.type.tensor_type.HasField("shape") or \
                    any(not d.HasField("dim_value") for d in dims):
                continue
            assert graph.shapes[value.name] == tuple(d.dim_value for d in dims), value.name
            compared += 1
        assert compared > 100
