"""Resolution and batch scaling (issue 4): models run at the new input size with every baked
size rewritten; where the architecture allows, the rewritten ONNX model computes what the
source network computes at that size."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from onnxscale.errors import OnnxscaleError
from onnxscale.graph import Graph, declared_dims
from onnxscale.scaling.pipeline import Multipliers, ScaleOptions, check, scale_model

from .conftest import ort_run, run_cli

# (model, exporter, resolution, flops ratio bounds at r=2): Inception's unpadded convs make its
# flops grow faster than r^2 at small sizes (its last map goes from 1x1 to 4x4 here).
CLASSIFIERS = [("resnet18", "legacy", 96, (3.9, 4.1)), ("resnet18", "dynamo", 96, (3.9, 4.1)),
               ("inception_v3", "legacy", 96, (4.0, 6.5)),
               ("densenet121", "legacy", 96, (3.9, 4.1)),
               ("convnext_tiny", "legacy", 96, (3.9, 4.1)),
               ("timm.hrnet_w18_small", "legacy", 128, (3.9, 4.1))]


def rescale(proto: onnx.ModelProto, r: float = 1.0, batch=None, shapes=None):
    outcome = scale_model(proto, shapes or {}, Multipliers(r=r), ScaleOptions(batch=batch))
    check(outcome.model)
    return outcome


def feeds_for(outcome, batch: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal([batch or dims[0]] + dims[1:], np.float32)
            for name, dims in outcome.inputs.items()}


@pytest.mark.parametrize("name, exporter, res, ratio", CLASSIFIERS)
def test_classifiers_run_at_twice_the_resolution(exports, name, exporter, res, ratio):
    outcome = rescale(onnx.load(exports(name, exporter, res=res)), 2)
    assert list(outcome.inputs.values())[0][2:] == [2 * res, 2 * res]
    assert ratio[0] < outcome.scaled.flops / outcome.base.flops < ratio[1]
    logits = ort_run(outcome.model, feeds_for(outcome))[0]
    assert logits.shape == (1, 1000) and np.isfinite(logits).all()


def test_dynamic_detector_keeps_symbolic_dims(paddleocr_models):
    """PaddleOCR det takes any size: the written input stays symbolic, the analysis size and
    the flops scale."""
    proto = onnx.load(paddleocr_models["det"])
    outcome = rescale(proto, 2, shapes={"": [1, 3, 128, 128]})
    assert outcome.inputs == {"x": [1, 3, 256, 256]}
    assert 3.9 < outcome.scaled.flops / outcome.base.flops < 4.1
    declared = declared_dims(outcome.model.graph.input[0])
    assert declared[2:] == declared_dims(proto.graph.input[0])[2:]
    assert not all(isinstance(d, int) for d in declared[2:])
    prob = ort_run(outcome.model, feeds_for(outcome))[0]
    assert prob.shape == (1, 1, 256, 256)


def test_pool_expand_slice_and_constant_of_shape_follow_the_size():
    """A global pool written as an 8x8 AveragePool, a mean broadcast back with Expand to
    [1, 4, 8, 8], a full-width Slice and a ConstantOfShape [1, 4, 8, 8]: all baked to 8x8."""
    from onnx import TensorProto, helper, numpy_helper

    def ints(name, values):
        return numpy_helper.from_array(np.array(values, np.int64), name)

    one = numpy_helper.from_array(np.ones(1, np.float32), "one")
    nodes = [
        helper.make_node("AveragePool", ["x"], ["mean"], name="pool", kernel_shape=[8, 8]),
        helper.make_node("Expand", ["mean", "full"], ["spread"], name="expand"),
        helper.make_node("Add", ["x", "spread"], ["y"], name="add"),
        helper.make_node("Slice", ["y", "zero", "width", "last"], ["z"], name="slice"),
        helper.make_node("ConstantOfShape", ["full"], ["ones"], name="ones", value=one),
        helper.make_node("Add", ["z", "ones"], ["out"], name="add_ones")]
    graph = helper.make_graph(
        nodes, "baked", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])],
        [ints("full", [1, 4, 8, 8]), ints("zero", [0]), ints("width", [8]), ints("last", [3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    outcome = rescale(proto, 2)
    assert {row["node"] for row in outcome.edits[0].details["rewritten"]} == {
        "pool", "expand", "slice", "ones"}
    x = feeds_for(outcome)["x"]
    expected = x + x.mean(axis=(2, 3), keepdims=True) + 1
    np.testing.assert_allclose(ort_run(outcome.model, {"x": x})[0], expected, rtol=1e-5,
                               atol=1e-5)


# ---- fixed-size models built in torch: the rewrite must match the network at the new size ----

def torch_models():
    torch = pytest.importorskip("torch")
    nn, functional = torch.nn, torch.nn.functional

    def cbr(c_in, c_out, stride=1):
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(c_out), nn.LeakyReLU(0.1))

    class TinyYolo(nn.Module):
        """Two heads (strides 16, 32), an upsampled lateral (Upsample and interpolate to a
        size), concat, and YOLO's view/permute decoding: sizes baked by a fixed export."""

        def __init__(self, classes=3, anchors=3):
            super().__init__()
            self.na, self.no = anchors, 5 + classes
            self.c16 = nn.Sequential(cbr(3, 8, 2), cbr(8, 8, 2), cbr(8, 16, 2), cbr(16, 16, 2))
            self.c32 = cbr(16, 32, 2)
            self.head32 = nn.Conv2d(32, self.na * self.no, 1)
            self.lateral = nn.Conv2d(32, 16, 1)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.head16 = nn.Conv2d(32, self.na * self.no, 1)

        def decode(self, p):
            b, _, h, w = p.shape
            p = p.view(b, self.na, self.no, h, w).permute(0, 1, 3, 4, 2).contiguous()
            return p.view(b, -1, self.no)

        def forward(self, x):
            f16 = self.c16(x)
            f32 = self.c32(f16)
            lateral = self.lateral(f32)
            up = functional.interpolate(lateral, size=f16.shape[2:], mode="nearest")
            p16 = self.head16(torch.cat([up + self.up(lateral), f16], 1))
            return torch.cat([self.decode(self.head32(f32)), self.decode(p16)], 1)

    class TinyVGG(nn.Module):
        """VGG's head: adaptive pooling to 2x2, flatten, fully connected layers."""

        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(cbr(3, 8), nn.MaxPool2d(2), cbr(8, 16), nn.MaxPool2d(2),
                                          cbr(16, 16), nn.MaxPool2d(2))
            self.pool = nn.AdaptiveAvgPool2d((2, 2))
            self.fc = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.features(x)), 1))

    return torch, TinyYolo, TinyVGG


@pytest.fixture(scope="module")
def fixed_models(tmp_path_factory):
    """(torch module, exported .onnx with a fixed input size) for the YOLO- and VGG-style nets."""
    torch, yolo, vgg = torch_models()
    folder = tmp_path_factory.mktemp("fixed")
    made = {}
    for name, cls, res in (("yolo", yolo, 416), ("vgg", vgg, 64)):
        torch.manual_seed(0)
        module = cls().eval()
        path = folder / f"{name}.onnx"
        torch.onnx.export(module, (torch.randn(1, 3, res, res),), str(path), dynamo=False,
                          opset_version=17, input_names=["images"], output_names=["out"])
        made[name] = (module, path)
    return torch, made


def torch_output(torch, module, feeds):
    with torch.no_grad():
        return module(torch.from_numpy(next(iter(feeds.values())))).numpy()


def test_fixed_size_yolo_matches_the_network_at_the_new_size(fixed_models):
    torch, made = fixed_models
    module, path = made["yolo"]
    outcome = rescale(onnx.load(path), 2)
    assert outcome.inputs == {"images": [1, 3, 832, 832]}
    assert 3.9 < outcome.scaled.flops / outcome.base.flops < 4.1
    rewritten = {row["op"] for row in outcome.edits[0].details["rewritten"]}
    assert {"Reshape", "Resize"} <= rewritten
    feeds = feeds_for(outcome)
    got = ort_run(outcome.model, feeds)[0]
    assert got.shape == (1, 3 * (26 * 26 + 52 * 52), 8)
    np.testing.assert_allclose(got, torch_output(torch, module, feeds), rtol=1e-4, atol=1e-4)


def test_flattened_head_is_pooled_like_adaptive_pooling(fixed_models):
    torch, made = fixed_models
    module, path = made["vgg"]
    outcome = rescale(onnx.load(path), 2)
    assert any("average pool" in note for note in outcome.edits[0].notes)
    feeds = feeds_for(outcome)
    np.testing.assert_allclose(ort_run(outcome.model, feeds)[0],
                               torch_output(torch, module, feeds), rtol=1e-4, atol=1e-5)


def test_flattened_head_that_cannot_be_pooled_is_refused(fixed_models):
    _, made = fixed_models
    with pytest.raises(OnnxscaleError, match=r"Gemm '/fc/fc.0/Gemm' reads the flattened "
                                             r"16x2x2 feature map.*3x3"):
        rescale(onnx.load(made["vgg"][1]), 1.5)


# ---- batch --------------------------------------------------------------------------------------

def test_batch_four_computes_each_sample_as_before(exports):
    proto = onnx.load(exports("resnet18", "legacy", res=96))
    outcome = rescale(proto, batch=4)
    assert outcome.inputs == {"input": [4, 3, 96, 96]}
    assert outcome.scaled.flops == 4 * outcome.base.flops
    feeds = feeds_for(outcome)
    batched = ort_run(outcome.model, feeds)[0]
    single = [ort_run(proto, {"input": feeds["input"][i:i + 1]})[0] for i in range(4)]
    np.testing.assert_allclose(batched, np.concatenate(single), rtol=1e-4, atol=1e-5)


def test_dynamic_batch_with_a_baked_reshape(exports):
    """torch's dynamo export bakes the batch of 1 into the classifier's view: rewritten."""
    proto = onnx.load(exports("resnet18", "dynamo", res=96))
    outcome = rescale(proto, 2, batch="dynamic")
    assert declared_dims(outcome.model.graph.input[0])[0] == "batch"
    assert declared_dims(outcome.model.graph.output[0])[0] == "batch"
    out = ort_run(outcome.model, feeds_for(outcome, batch=3))[0]
    assert out.shape == (3, 1000)


def test_batch_baked_into_an_index_is_refused():
    """A Gather on the whole flattened tensor (torch's as_strided) cannot follow the batch."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Reshape", ["x", "flat"], ["f"], name="flatten_all"),
             helper.make_node("Gather", ["f", "index"], ["y"], name="as_strided")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4])],
        [numpy_helper.from_array(np.array([16], np.int64), "flat"),
         numpy_helper.from_array(np.arange(0, 16, 4).reshape(1, 4), "index")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(OnnxscaleError, match="output 'y' keeps batch 1"):
        rescale(proto, batch=2)


def test_scale_resolution_cli_json(tmp_path):
    out = tmp_path / "r18-r2.onnx"
    result = run_cli("scale", "zoo:resnet-18", "--resolution", "1.5", "--batch", "dynamic",
                     "--json", "-o", str(out), check=True)
    data = json.loads(result.stdout)
    assert data["scaled"]["inputs"] == {"input": [1, 3, 336, 336]}
    assert not data["exact"]
    assert declared_dims(onnx.load(out).graph.input[0]) == ["batch", 3, 336, 336]
    Graph(onnx.load(out), {"input": [2, 3, 336, 336]})


@pytest.mark.slow
def test_input_shape_over_fixed_dims_is_what_the_written_model_declares(tmp_path):
    """zoo:resnet-18 declares 1x3x224x224: scaled at --input-shape 96x96, the file declares
    96x96 (the size its figures are for), the width edit stays exact and --verify runs the
    base at 96 too (it stopped with an ORT error on the base's fixed 224)."""
    out = tmp_path / "r18-w2-96.onnx"
    data = json.loads(run_cli("scale", "zoo:resnet-18", "--input-shape", "input:1x3x96x96",
                              "--width", "2", "--verify", "--json", "-o", str(out),
                              check=True).stdout)
    assert data["scaled"]["inputs"] == {"input": [1, 3, 96, 96]} and data["exact"]
    assert data["verified_rel_l2"] < 1e-5
    assert declared_dims(onnx.load(out).graph.input[0]) == [1, 3, 96, 96]
    logits = ort_run(out, {"input": np.zeros((1, 3, 96, 96), np.float32)})[0]
    assert logits.shape == (1, 1000)


# ---- sizes the model accepts (issue 9) ----------------------------------------------------------

@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_crnn_keeps_the_height_its_lstm_was_trained_for(exports, exporter):
    """The height is reshaped into the LSTM's features: it stays, the width (the sequence)
    scales, the note names the LSTM, and the written model runs."""
    proto = onnx.load(exports("local.crnn", exporter))
    outcome = rescale(proto, 1.5)
    assert outcome.inputs == {next(iter(outcome.inputs)): [1, 1, 32, 152]}
    note = next(n for e in outcome.edits for n in e.notes if "keeps its size 32" in n)
    assert "height" in note and "(LSTM)" in note and "expects 128" in note
    out = ort_run(outcome.model, feeds_for(outcome))[0]
    assert out.shape == (76, 1, 40) and np.isfinite(out).all()


def test_upsample_and_merge_takes_multiples_of_its_stride(exports):
    """A stride-32 FPN: 128 x 1.1 would be 140 (multiple of 4), which its upsample-and-add
    cannot take; the nearest multiple of 32 is chosen instead, and said."""
    outcome = rescale(onnx.load(exports("local.fpn", "legacy")), 1.2)
    assert outcome.inputs == {"input": [1, 3, 160, 160]}
    assert any("k*32" in n for e in outcome.edits for n in e.notes)
    assert ort_run(outcome.model, feeds_for(outcome))[0].shape == (1, 1, 20, 20)


def test_a_model_that_accepts_no_other_size_is_refused_naming_the_node():
    """A learned position embedding added to the feature map (hybrid conv/transformer
    models): no size but the trained one fits, so --resolution is refused naming the node,
    and a strategy with r says r is unavailable."""
    from onnx import TensorProto, helper, numpy_helper

    conv_w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "cw")
    position = numpy_helper.from_array(np.ones((1, 2, 8, 8), np.float32), "position")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Add", ["c", "position"], ["y"], name="add_position")],
        "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [conv_w, position])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxscaleError, match="accepts no other input size.*'add_position'"):
        rescale(proto, 2)


def test_the_refusal_names_what_pins_the_size_not_a_grid_mismatch():
    """A YOLO-like head: an upsample-and-merge (fine steps break it: a grid matter), then
    anchors baked in at the trained size (every size breaks them, as in a legacy YOLOv8
    export).  The error names the anchors, the node a user must change; the merge fits from a
    step of 8 on and is no answer."""
    from onnx import TensorProto, helper, numpy_helper

    def conv(name, src, dst):
        return helper.make_node("Conv", [src, f"{name}_w"], [dst], name=name, strides=[2, 2],
                                pads=[1, 1, 1, 1])

    weights = [numpy_helper.from_array(np.ones((2, c, 3, 3), np.float32), f"{n}_w")
               for n, c in (("c1", 3), ("c2", 2), ("c3", 2))]
    weights += [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
                numpy_helper.from_array(np.ones((1, 2, 8, 8), np.float32), "anchors")]
    graph = helper.make_graph(
        [conv("c1", "x", "s2"), conv("c2", "s2", "s4"), conv("c3", "s4", "s8"),
         helper.make_node("Resize", ["s8", "", "scales"], ["up"], name="up", mode="nearest"),
         helper.make_node("Add", ["up", "s4"], ["merged"], name="merge"),
         helper.make_node("Add", ["merged", "anchors"], ["y"], name="add_anchors")],
        "yolo_like", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])], weights)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    assert ort_run(proto, {"x": np.ones((1, 3, 32, 32), np.float32)})[0].shape == (1, 2, 8, 8)
    with pytest.raises(OnnxscaleError, match="accepts no other input size") as refused:
        rescale(proto, 2)
    assert "'add_anchors'" in str(refused.value)
    assert "'merge'" not in str(refused.value)


def test_space_to_depth_keeps_its_block_and_matches_torch_at_the_new_size(tmp_path):
    """TResNet's stem cuts each spatial axis into 4-pixel blocks, ``view(B, C, H/4, 4, W/4,
    4)``, baked into the legacy export.  At a new size the blocks keep their 4 pixels and
    their count grows; the written model computes what torch computes at that size."""
    import torch
    from torch import nn

    class SpaceToDepthNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(48, 8, 3, padding=1)

        def forward(self, x):
            b, c, h, w = x.shape
            x = x.view(b, c, h // 4, 4, w // 4, 4).permute(0, 3, 5, 1, 2, 4)
            return self.conv(x.reshape(b, c * 16, h // 4, w // 4))

    torch.manual_seed(0)
    net = SpaceToDepthNet().eval()
    path = tmp_path / "s2d.onnx"
    torch.onnx.export(net, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False,
                      opset_version=17, input_names=["x"], output_names=["y"])
    outcome = rescale(onnx.load(str(path)), 1.5)
    assert outcome.inputs == {"x": [1, 3, 48, 48]}
    x = np.random.default_rng(0).random((1, 3, 48, 48), dtype=np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(x)).numpy()
    got = ort_run(outcome.model, {"x": x})[0]
    assert got.shape == expected.shape == (1, 8, 12, 12)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_lstm_input_mismatch_is_caught_by_the_analysis():
    """The analysis checks an LSTM's input features against its weight, as for Conv/Gemm."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.zeros((1, 32, 12), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((1, 32, 8), np.float32), "R")
    graph = helper.make_graph(
        [helper.make_node("LSTM", ["x", "W", "R"], ["y"], name="lstm", hidden_size=8)],
        "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w, r])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(OnnxscaleError, match=r"'lstm' \(LSTM\).*10 features.*expects 12"):
        Graph(proto)
