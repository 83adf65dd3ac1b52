"""Models by name: ``onnxscale export`` and torchvision:/timm: wherever a model is taken."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
import pytest

from onnxscale.errors import OnnxscaleError, UsageError
from onnxscale.export import ExportSpec, exported, parse_spec

from .conftest import REPO, import_torchvision, ort_input_name, run_cli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A cache of our own, so the test sees the export being made (and then reused)."""
    monkeypatch.setenv("ONNXSCALE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "exports"


@pytest.mark.parametrize("spec, message", [
    ("torchvision:", "expected torchvision:NAME or timm:NAME"),
    ("keras:resnet50", "expected torchvision:NAME or timm:NAME"),
])
def test_bad_names(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_spec(spec)


def test_spec_options_are_checked():
    with pytest.raises(UsageError, match="expected legacy or dynamo"):
        parse_spec("timm:resnet18", exporter="onnx")
    with pytest.raises(UsageError, match="from 16 to 4096"):
        parse_spec("timm:resnet18", size=8)
    spec = parse_spec("timm:regnety_008", size=96, exporter="dynamo", dynamic_batch=True)
    assert spec.file_name() == "timm.regnety_008.dynamo.96.default.dynamic.onnx"
    assert ExportSpec("torchvision", "resnet50", init="random-bn").file_name() == \
        "resnet50.legacy.224.onnx"  # the suite's cached exports keep their names


def test_without_torch_says_what_to_install(tmp_path):
    code = ("import sys; sys.modules['torch'] = None\n"
            "from onnxscale.cli import main\n"
            "main(['analyze', 'torchvision:resnet18'])")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=REPO, env={"ONNXSCALE_CACHE_DIR": str(tmp_path), "PATH": ""})
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == \
        "error: torchvision:resnet18 needs torch: pip install 'onnxscale[torch]'"


@pytest.mark.slow
def test_export_is_cached_and_taken_wherever_a_model_is(cache, tmp_path):
    import_torchvision()
    out = tmp_path / "r18.onnx"
    result = run_cli("export", "torchvision:resnet18", "--size", "64", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out} (torchvision:resnet18, 64x64, legacy")
    (cached,) = cache.rglob("resnet18.legacy.64.default.onnx")
    made = cached.stat().st_mtime_ns
    proto = onnx.load(out)
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == \
        [1, 3, 64, 64]
    # a second use exports nothing, and every command takes the name
    again = exported(parse_spec("torchvision:resnet18", size=64), root=cache)
    assert again == cached and cached.stat().st_mtime_ns == made
    by_file = json.loads(run_cli("analyze", str(out), "--json", check=True).stdout)
    by_name = json.loads(run_cli("analyze", "torchvision:resnet18", "--json",
                                 check=True).stdout)
    assert by_name["model"] == "torchvision:resnet18"
    # torchvision counts 11,689,512; the legacy exporter folds BN into convs, which leaves one
    # bias per BN channel instead of a scale and a shift (8,640 channels)
    assert by_name["params"] == by_file["params"] == 11_689_512 - 8_640
    assert by_name["inputs"] == {"input": [1, 3, 224, 224]}  # the name alone: 224


@pytest.mark.slow
def test_unknown_model_and_dynamic_batch(cache, tmp_path):
    import_torchvision()
    result = run_cli("export", "torchvision:resnet_nope")
    assert result.returncode == 2 and "torchvision has no classification model" in result.stderr
    out = tmp_path / "dyn.onnx"
    run_cli("export", "torchvision:squeezenet1_0", "--size", "64", "--dynamic-batch", "-o",
            str(out), check=True)
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and ort_input_name(out) == "input"


def test_pretrained_weights_are_never_downloaded(cache, monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    import_torchvision()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    with pytest.raises(OnnxscaleError, match="not on this machine.*downloads nothing"):
        exported(parse_spec("torchvision:resnet18", size=64, init="pretrained"), root=cache)


@pytest.mark.parametrize("source, stem", [
    ("torchvision:shufflenet_v2_x1_0", "shufflenet_v2_x1_0"),
    ("timm:regnety_008", "regnety_008"),
    ("zoo:efficientnet-b0", "efficientnet-b0"),
    ("models/net.onnx", "net"),
    ("timm:hf/odd name", "hf-odd-name"),
])
def test_files_made_from_a_model_by_name_have_no_colon_in_their_name(source, stem):
    """A scaled torchvision export was once written as ``torchvision:NAME.w2.onnx``: a name
    Windows refuses and ``scp`` reads as a host."""
    from pathlib import Path

    from onnxscale.cli.latency import _grid_name
    from onnxscale.model import model_stem
    from onnxscale.scaling.job import Job, grid_output
    from onnxscale.scaling.pipeline import default_output
    from onnxscale.scaling.plan import Multipliers, ScaleOptions

    assert model_stem(source) == stem
    single = default_output(source, Multipliers(w=2.0), ScaleOptions())
    assert single.name == f"{stem}.w2.onnx"
    assert single.parent == (Path("models") if source.startswith("models/") else Path("."))
    grid = grid_output(source, Job(strategy="dWr", flops="2x"), Path("out"))
    assert grid == Path("out") / f"{stem}.dWr.2x.onnx"
    assert _grid_name(source, "dWr", "25ms") == f"{stem}.dWr.25ms.onnx"
