"""The user's path on models others built: the CLI's commands at each export's native size.

For one model of each family the suite knows (torchvision and timm with both exporters, the
PaddleOCR models a PyPI wheel ships, local families no zoo has), `analyze`, `scale --depth 2`,
`scale --width 2` (both with --verify: every "function preserved" is checked in ONNX Runtime),
`scale --resolution 1.5` and `scale --strategy dWr --flops 4x` run through the command line
(click's runner: the same code path as the console script, without paying the interpreter's
start-up each time).  None may end in an internal error; a refusal is one
line with exit code 1 or 2; dWr lands within 1.5% or is refused; and every model written is
run once in ONNX Runtime at its new size.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxscale.cli import main

from .conftest import ort_run

# (name, exporter, native input size: 224 for torchvision/timm classifiers, the local
# families' own size (0), and init="default" where an untrained export is its own form)
FAMILIES = [
    ("resnet18", "legacy", 224, "random-bn"), ("resnet18", "dynamo", 224, "random-bn"),
    ("efficientnet_b0", "legacy", 224, "random-bn"),
    ("mobilenet_v3_small", "dynamo", 224, "random-bn"),
    ("regnet_y_400mf", "legacy", 224, "random-bn"), ("convnext_tiny", "legacy", 224, "random-bn"),
    ("densenet121", "legacy", 224, "default"), ("shufflenet_v2_x1_0", "legacy", 224, "random-bn"),
    ("googlenet", "legacy", 224, "random-bn"), ("squeezenet1_0", "legacy", 224, "random-bn"),
    ("timm.dla34", "legacy", 224, "random-bn"), ("timm.cs3darknet_s", "dynamo", 224, "random-bn"),
    ("local.yolo", "legacy", 0, "random-bn"), ("local.crnn", "legacy", 0, "random-bn"),
    ("local.fpn", "dynamo", 0, "random-bn"),
]
# 16-32 channel layers whose widths move in steps of 8 (+50%), an LSTM that pins the
# height: dWr 4x falls between -1.6% and +2.2% at the default divisor
COARSE = {"local.crnn"}
# the sizes the rapidocr wheel runs its PaddleOCR models at (its det resizes to a multiple of
# 32 near 736; rec and cls take 48-pixel lines)
PADDLE_SHAPES = {"det": "1x3x736x736", "rec": "1x3x48x320", "cls": "1x3x48x192"}
# --verify where the input size stays: a "function preserved: yes" is then checked in ORT
COMMANDS = {
    "depth": ["--depth", "2", "--verify"], "width": ["--width", "2", "--verify"],
    "resolution": ["--resolution", "1.5"], "dWr": ["--strategy", "dWr", "--flops", "4x"],
}


def _invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def user_path(path, tmp_path, extra: list[str], scale_extra: tuple[str, ...] = ()
              ) -> dict[str, str]:
    """Every command on ``path``; the outcome of each (what it wrote ran, or its refusal)."""
    result = _invoke("analyze", str(path), *extra, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["flops"] > 0
    outcomes = {}
    for kind, args in COMMANDS.items():
        out = tmp_path / f"{kind}.onnx"
        result = _invoke("scale", str(path), *args, *extra, *scale_extra, "-o", str(out),
                         "--json")
        assert "internal error" not in result.output, (kind, result.output)
        if result.exit_code != 0:
            line = result.stderr.strip()
            assert result.exit_code in (1, 2) and line.startswith("error: ") and "\n" not in line
            assert not out.exists()
            outcomes[kind] = line
            continue
        summary = json.loads(result.stdout)
        if summary["exact"] and "verified_rel_l2" in summary:  # fp16 weights: 1e-3
            assert summary["verified_rel_l2"] <= 1e-3, (kind, summary["verified_rel_l2"])
        if kind == "dWr":
            assert abs(summary["scaled"]["flops"] / summary["base"]["flops"] / 4 - 1) <= 0.015
        rng = np.random.default_rng(0)
        feeds = {name: rng.standard_normal(dims).astype(np.float32)
                 for name, dims in summary["scaled"]["inputs"].items()}
        for output in ort_run(out, feeds):
            assert np.isfinite(output).all(), kind
        outcomes[kind] = "ran"
    return outcomes


@pytest.mark.parametrize("name, exporter, res, init", FAMILIES)
@pytest.mark.slow
def test_every_command_on_an_export_at_its_native_size(exports, tmp_path, name, exporter, res,
                                                       init):
    path = exports(name, exporter, res or 224, init=init)
    outcomes = user_path(path, tmp_path, [])
    assert outcomes["width"] == "ran", outcomes
    if name in COARSE:  # refused with the way out it names, which then lands
        assert "cannot reach" in outcomes["dWr"] and "--divisor 4" in outcomes["dWr"]
        outcomes = user_path(path, tmp_path, [], ("--divisor", "4"))
    assert outcomes["dWr"] == "ran", outcomes  # every family here scales with dWr


@pytest.mark.parametrize("which", sorted(PADDLE_SHAPES))
@pytest.mark.slow
def test_every_command_on_the_wheels_paddleocr_models(paddleocr_models, tmp_path, which):
    extra = ["--input-shape", f"x:{PADDLE_SHAPES[which]}"]
    outcomes = user_path(paddleocr_models[which], tmp_path, extra)
    assert outcomes["depth"] == "ran" and outcomes["resolution"] == "ran", outcomes


@pytest.mark.parametrize("name", ["resnet50", "mobilenetv3small", "onet"])
@pytest.mark.slow
def test_tf2onnx_exports_deepen_exactly_and_take_every_command(keras_exports, tmp_path, name):
    """NHWC exports from Keras: residual stages (ResNet50), MobileNetV3's single-block stage
    whose convs sit between Transposes and whose stride-2 conv pads explicitly, and a plain
    PReLU stack (ONet) deepen exactly, as their NCHW counterparts do; every command runs."""
    out = tmp_path / "deeper.onnx"
    result = _invoke("scale", str(keras_exports[name]), "--depth", "2", "--verify", "-o",
                     str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["exact"] and summary["verified_rel_l2"] <= 1e-4
    grown = [row for row in summary["stages"] if row["new"] > row["old"]]
    assert len(grown) >= {"resnet50": 4, "mobilenetv3small": 5, "onet": 2}[name], summary
    if name == "mobilenetv3small":  # the 16-channel stage is one block: instantiated
        assert summary["stages"][0]["mode"] == "instantiate"
        assert [row["width"] for row in summary["stages"]] == [16, 24, 40, 48, 96]
    outcomes = user_path(keras_exports[name], tmp_path, [])
    assert outcomes["dWr"] == "ran" and outcomes["width"] == "ran", outcomes


@pytest.mark.parametrize("form", ["fp16", "onnxslim"])
@pytest.mark.slow
def test_converted_forms_count_like_their_model_and_take_every_command(exports, tmp_path, form):
    """A model converted to fp16 weights (onnxconverter-common, float inputs kept) and one
    simplified by onnxslim: the same pycls figures as the export, --depth 2 exact, and every
    command runs."""
    import onnx

    source = exports("resnet18" if form == "fp16" else "efficientnet_b0", "legacy", 224)
    model = onnx.load(str(source))
    if form == "fp16":
        float16 = pytest.importorskip("onnxconverter_common.float16")
        converted = float16.convert_float_to_float16(model, keep_io_types=True)
    else:
        onnxslim = pytest.importorskip("onnxslim")
        converted = onnxslim.slim(model)
    path = tmp_path / f"{form}.onnx"
    onnx.save(converted, str(path))
    figures = []
    for each in (source, path):
        report = json.loads(_invoke("analyze", str(each), "--json").stdout)
        figures.append((report["flops"], report["params"], report["acts"]))
    # flops and acts are the model's; onnxslim gives back separate copies of the equal biases
    # the legacy exporter shares through Identity nodes (3 x 1,152 here), counted apart
    assert figures[0][::2] == figures[1][::2]
    assert abs(figures[1][1] / figures[0][1] - 1) < 1e-3
    out = tmp_path / "deeper.onnx"
    result = _invoke("scale", str(path), "--depth", "2", "--verify", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["exact"] and summary["verified_rel_l2"] <= (1e-2 if form == "fp16" else 1e-4)
    outcomes = user_path(path, tmp_path, [])
    assert set(outcomes.values()) == {"ran"}, outcomes
