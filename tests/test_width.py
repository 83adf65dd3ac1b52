"""Width scaling of real architectures: every widened model is valid ONNX, runs in ONNX Runtime
with the base's output shapes, and computes the base's outputs whenever it claims ``exact``.

Exports use 64x64 inputs (cheap to run; every architecture here allows it).  The exactness
expectations are part of the contract: a model listed as exact must stay exact.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from onnxscale import zoo
from onnxscale.complexity import analyze
from onnxscale.errors import OnnxscaleError
from onnxscale.graph import Graph
from onnxscale.scaling.pipeline import ScaleOptions, random_inputs
from onnxscale.scaling.width.widen import scale_width

from .conftest import make_torch_model, ort_run, run_cli

RES = 64
EXPORT_RES = 96  # the suite's one small size for exports (a second size is a second export)
WIDTHS = (2.0, 1.5, 0.5)
LEGACY = ["resnet50", "resnext50_32x4d", "efficientnet_b0", "mobilenet_v2", "mobilenet_v3_small",
          "regnet_y_400mf", "densenet121", "squeezenet1_0", "googlenet", "shufflenet_v2_x1_0",
          "convnext_tiny", "timm.regnetz_b16", "timm.ghostnet_100"]
DYNAMO = ["efficientnet_b0", "resnet50", "convnext_tiny", "shufflenet_v2_x1_0",
          "timm.ghostnet_100"]
# Where widening cannot preserve the function, and the note that must say why.
NOT_EXACT = {("shufflenet_v2_x1_0", 2.0): "channel shuffle",
             ("shufflenet_v2_x1_0", 1.5): "channel shuffle",
             ("convnext_tiny", 1.5): "LayerNormalization"}


def relative(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


def widen_all(name: str, base: onnx.ModelProto, shapes=None, compare=None) -> None:
    """Widen ``base`` by each of WIDTHS and check validity, shapes and exactness claims.

    ``compare`` names the tensors to compare (default: the graph outputs)."""
    graph = Graph(base, shapes)
    feeds = random_inputs(graph)
    expected = ort_run(expose(base, compare), feeds)
    for w in WIDTHS:
        edit = scale_width(base, graph, w, 1.0, ScaleOptions())
        onnx.checker.check_model(edit.model, full_check=True)
        assert edit.model.opset_import == base.opset_import
        got = ort_run(expose(edit.model, compare), feeds)
        assert [g.shape for g in got] == [e.shape for e in expected], (name, w)
        reason = NOT_EXACT.get((name, w))
        if w < 1:
            assert not edit.exact and any("narrowed" in n for n in edit.notes)
        elif reason:
            assert not edit.exact and any(reason in n for n in edit.notes), edit.notes
        else:
            assert edit.exact, (name, w, edit.notes)
            assert max(relative(e, g) for e, g in zip(expected, got)) <= 1e-4, (name, w)


def expose(model: onnx.ModelProto, tensors: list[str] | None) -> onnx.ModelProto:
    """A copy of ``model`` whose outputs are ``tensors`` (the model itself when None)."""
    if tensors is None:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.output[:]
    for name in tensors:
        copy.graph.output.add().name = name
    return copy


@pytest.mark.parametrize("name", LEGACY)
@pytest.mark.slow
def test_widen_legacy_exports(exports, name):
    widen_all(name, onnx.load(exports(name, "legacy", EXPORT_RES)))


@pytest.mark.parametrize("name", DYNAMO)
@pytest.mark.slow
def test_widen_dynamo_exports(exports, name):
    widen_all(name, onnx.load(exports(name, "dynamo", EXPORT_RES)))


@pytest.mark.slow
def test_widen_vgg_flatten_head(tmp_path):
    """torchvision vgg11_bn with its 4096-wide classifier cut to 256 (4096 x 2 would make a
    2 GB model) and a 2x2 adaptive pool: Flatten turns each channel into 4 features."""
    import torch

    model = make_torch_model("vgg11_bn")
    model.avgpool = torch.nn.AdaptiveAvgPool2d(2)
    model.classifier = torch.nn.Sequential(
        torch.nn.Linear(512 * 4, 256), torch.nn.ReLU(), torch.nn.Dropout(),
        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Dropout(), torch.nn.Linear(256, 1000))
    path = tmp_path / "vgg.onnx"
    torch.onnx.export(model.eval(), (torch.randn(1, 3, RES, RES),), str(path), dynamo=False,
                      opset_version=17, input_names=["input"], output_names=["logits"])
    widen_all("vgg11_bn", onnx.load(path))


def test_widen_paddleocr_detector(paddleocr_models):
    """The detector ends in a Sigmoid whose outputs are ~1e-5 on random inputs (float32 noise
    dominates their relative error), so compare the logits feeding it."""
    base = onnx.load(paddleocr_models["det"])
    (out,) = base.graph.output
    logits = next(n.input[0] for n in base.graph.node if out.name in n.output)
    widen_all("det", base, {"x": [1, 3, 320, 320]}, compare=[logits])


@pytest.mark.slow
def test_dynamic_batch_stays_dynamic(tmp_path):
    """dynamo builds the head's Reshape target as Concat(batch from Shape, 576): only the
    constant holding the channel count changes, so the widened model still takes any batch."""
    import torch

    path = tmp_path / "dynamic.onnx"
    torch.onnx.export(make_torch_model("mobilenet_v3_small"), (torch.randn(2, 3, RES, RES),),
                      str(path), dynamo=True, opset_version=18, optimize=False,
                      external_data=False, dynamic_shapes=({0: torch.export.Dim("batch")},))
    base = onnx.load(path)
    edit = scale_width(base, Graph(base, {"x": [2, 3, RES, RES]}), 2.0, 1.0, ScaleOptions())
    onnx.checker.check_model(edit.model, full_check=True)
    assert edit.model.graph.input[0].type.tensor_type.shape.dim[0].dim_param
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 3, RES, RES), np.float32)}
    (expected,), (got,) = ort_run(base, feeds), ort_run(edit.model, feeds)
    assert edit.exact and relative(expected, got) <= 1e-4


# ---- what the command line promises ------------------------------------------------------------

def test_scale_command_json_metadata_and_verification(tmp_path):
    out = tmp_path / "b0w2.onnx"
    result = run_cli("scale", "zoo:efficientnet-b0", "--width", "2", "-o", str(out), "--json",
                     "--verify", check=True)
    summary = json.loads(result.stdout)
    assert summary["exact"] is True and summary["verified_rel_l2"] < 1e-4
    groups = summary["groups"]
    assert {"id", "old", "new", "init", "exact"} <= set(groups[1])
    assert groups[0]["init"] == "unchanged" and "graph input" in groups[0]["reason"]
    assert {g["init"] for g in groups[1:-1]} == {"copied"}
    assert all(g["new"] == 2 * g["old"] for g in groups[1:-1])
    model = onnx.load(out)
    onnx.checker.check_model(model, full_check=True)
    assert (model.ir_version, model.opset_import[0].version) == (8, 17)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["onnxscale.zoo.name"] == "efficientnet-b0"
    assert json.loads(meta["onnxscale"])["exact"] is True


def test_width_matches_pycls_scaled_efficientnet():
    """Widening the ONNX graph by 2 gives exactly pycls's EfficientNet-B0 scaled by w=2."""
    base = zoo.build("efficientnet-b0")
    edit = scale_width(base, Graph(base), 2.0, 1.0, ScaleOptions())
    ours = analyze(Graph(edit.model))
    pycls = analyze(Graph(zoo.build_spec(zoo.spec("efficientnet-b0").scaled(w=2))))
    assert (ours.flops, ours.params, ours.acts) == (pycls.flops, pycls.params, pycls.acts)


def test_default_output_name_and_input_untouched(exports, tmp_path):
    source = tmp_path / "net.onnx"
    shutil.copy(exports("squeezenet1_0", "legacy", EXPORT_RES), source)
    before = source.read_bytes()
    run_cli("scale", str(source), "--width", "2", check=True)
    assert (tmp_path / "net.w2.onnx").is_file() and source.read_bytes() == before


def test_nothing_to_widen_is_a_one_line_error(tmp_path):
    """A conv from the input straight to the output: both of its groups are pinned."""
    from .test_groups import Net

    net = Net()
    path = tmp_path / "tiny.onnx"
    onnx.save(net.model(net.conv(net.x, 5)), path)
    result = run_cli("scale", str(path), "--width", "2")
    assert result.returncode == 1
    assert result.stderr.startswith("error: nothing to widen: all 2 channel groups keep")
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "tiny.w2.onnx").exists()


def test_an_input_that_fails_the_checker_is_named_and_no_output_is_left(tmp_path):
    """torch's dynamo exporter at opset 17 writes Split with opset 18's num_outputs: onnx's
    checker (and ONNX Runtime) refuse the *input*.  The error says so, not that scaling broke
    it, and the invalid scaled model is not left behind."""
    from onnx import TensorProto, helper, numpy_helper

    weights = [numpy_helper.from_array(np.ones(shape, np.float32), name) for name, shape in
               (("w1", (4, 3, 3, 3)), ("w2", (4, 4, 1, 1)), ("w3", (2, 4, 1, 1)))]
    graph = helper.make_graph(  # a split of the rows: widening leaves it as it is
        [helper.make_node("Conv", ["x", "w1"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
         helper.make_node("Split", ["c"], ["a", "b"], name="split", axis=2, num_outputs=2),
         helper.make_node("Conv", ["a", "w2"], ["ya"], name="conv2"),
         helper.make_node("Add", ["ya", "b"], ["s"], name="add"),
         helper.make_node("Conv", ["s", "w3"], ["y"], name="conv3")],
        "bad_split", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])], weights)
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    result = run_cli("scale", str(path), "--width", "2")
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"error: {path} fails onnx's checker before any change "
                                    f"(Unrecognized attribute: num_outputs for operator Split)")
    assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.onnx"]


def test_width_that_rounds_to_nothing_is_an_error():
    from .test_groups import Net, head

    net = Net()
    base = net.model(head(net, net.act(net.conv(net.x, 16))))
    with pytest.raises(OnnxscaleError, match="leaves every channel group as it is"):
        scale_width(base, Graph(base), 1.1, 1.0, ScaleOptions())


def test_random_init_runs_and_says_it_is_not_exact(exports):
    base = onnx.load(exports("mobilenet_v2", "legacy", EXPORT_RES))
    graph = Graph(base)
    edit = scale_width(base, graph, 2.0, 1.0, ScaleOptions(init="random", seed=3))
    feeds = random_inputs(graph)
    (expected,), (got,) = ort_run(base, feeds), ort_run(edit.model, feeds)
    assert got.shape == expected.shape and np.isfinite(got).all()
    assert not edit.exact and relative(expected, got) > 0.01
    assert edit.notes[0].startswith("--init random")
    assert {g["init"] for g in edit.details["groups"]} == {"random", "unchanged"}


@pytest.mark.parametrize("w, g, exact", [(1.0, 2.0, True), (2.0, 2.0, True), (1.5, 0.5, False)])
@pytest.mark.slow
def test_group_width_multiplier(exports, w, g, exact):
    """ResNeXt's 32 groups of 4 channels: g=2 doubles the group width (16 groups at w=1);
    each new group holds two whole old groups, so copies stay exact; g=0.5 splits them."""
    base = onnx.load(exports("resnext50_32x4d", "legacy", EXPORT_RES))
    graph = Graph(base)
    edit = scale_width(base, graph, w, g, ScaleOptions())
    grouped = [(n.input[0], a.i) for n in edit.model.graph.node if n.op_type == "Conv"
               for a in n.attribute if a.name == "group" and a.i > 1]
    assert grouped[0][1] == round(32 * w / g)
    assert edit.exact is exact
    feeds = random_inputs(graph)
    (expected,), (got,) = ort_run(base, feeds), ort_run(edit.model, feeds)
    assert (relative(expected, got) <= 1e-4) is exact


def _psa_attention_net():
    """YOLO11's C2PSA attention in small: q, k, v from a heads x head_dim reshape of one
    conv, the result viewed back to (B, C, H, W) with C read off the block's *input*, then a
    projection and a residual add; a widenable conv pair after it."""
    import torch
    from torch import nn

    class Attention(nn.Module):
        def __init__(self, c=16, heads=2):
            super().__init__()
            self.heads, self.key_dim, self.head_dim = heads, 4, c // heads
            self.qkv = nn.Conv2d(c, c + 2 * heads * self.key_dim, 1)
            self.pe = nn.Conv2d(c, c, 3, padding=1, groups=c)
            self.proj = nn.Conv2d(c, c, 1)

        def forward(self, x):
            b, c, h, w = x.shape
            q, k, v = self.qkv(x).view(b, self.heads, 2 * self.key_dim + self.head_dim,
                                       h * w).split([self.key_dim, self.key_dim,
                                                     self.head_dim], dim=2)
            attn = ((q.transpose(-2, -1) @ k) * self.key_dim ** -0.5).softmax(dim=-1)
            y = (v @ attn.transpose(-2, -1)).view(b, c, h, w) + self.pe(v.reshape(b, c, h, w))
            return x + self.proj(y)

    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.SiLU(), Attention(),
                         nn.Conv2d(16, 24, 3, padding=1), nn.SiLU(), nn.Conv2d(24, 8, 1)).eval()


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
@pytest.mark.slow
def test_a_reshape_that_reads_its_channels_off_another_tensor_keeps_both_alike(tmp_path,
                                                                              exporter):
    """With dynamic height/width the attention's ``view(B, C, H, W)`` computes C from the
    block input's Shape at run time.  Widening that input alone made C disagree with the
    heads x head_dim data ("cannot reshape"); the input's channels now keep their width,
    named by the Reshape, and the conv pair after the block is widened, exactly."""
    import torch

    path = tmp_path / "psa.onnx"
    x = torch.randn(1, 3, 16, 16)
    if exporter == "legacy":
        torch.onnx.export(_psa_attention_net(), (x,), str(path), dynamo=False,
                          opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
    else:
        pytest.importorskip("onnxscript")
        h, w = torch.export.Dim("h", min=4, max=256), torch.export.Dim("w", min=4, max=256)
        torch.onnx.export(_psa_attention_net(), (x,), str(path), dynamo=True,
                          opset_version=18, external_data=False,
                          dynamic_shapes={"input": {2: h, 3: w}})
    name = onnx.load(str(path)).graph.input[0].name
    out = tmp_path / "psa.w2.onnx"
    result = run_cli("scale", str(path), "--input-shape", f"{name}:1x3x16x16", "--width", "2",
                     "-o", str(out), "--verify", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["exact"] and data["verified_rel_l2"] < 1e-5
    assert data["scaled"]["flops"] > data["base"]["flops"]
    groups = json.loads(run_cli("groups", str(path), "--input-shape", f"{name}:1x3x16x16",
                                "--json", check=True).stdout)["groups"]
    # dynamo keeps C a constant, so the block input widens around the attention as it does
    # at a fixed size; the legacy export reads C at run time, so it keeps its width
    assert [g["width"] for g in groups if g["scalable"]] == \
        ([24] if exporter == "legacy" else [16, 24])
    if exporter == "legacy":
        block_input = next(g for g in groups if "/0/Conv" in g["producers"])
        assert "Reshape at node /2/Reshape_1 takes its shape from the channels of" in \
            block_input["reason"]
    for size in (16, 24):  # the written model keeps its dynamic size and runs at others
        y = ort_run(out, {name: np.random.rand(1, 3, size, size).astype(np.float32)})[0]
        assert y.shape == (1, 8, size, size)
