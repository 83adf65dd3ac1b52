"""Shared test material: small ONNX graphs built with onnx.helper, and real architectures
exported from torchvision/timm with both torch exporters (cached once per test session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ONNXSCALE_TEST_CACHE", Path.home() / ".cache" / "onnxscale-tests"))


def import_torchvision():
    """torchvision's wheel here is a CUDA build: stub the two modules that need its C ops."""
    pytest.importorskip("torch")
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    return pytest.importorskip("torchvision")


def make_torch_model(name: str):
    """A torchvision (``resnet50``) or timm (``timm.regnety_008``) model with random weights
    and randomized BatchNorm statistics, so folding BN (legacy exporter) is not a no-op."""
    import torch

    torch.manual_seed(0)
    if name.startswith("timm."):
        import_torchvision()  # timm imports torchvision
        timm = pytest.importorskip("timm")
        model = timm.create_model(name[5:], pretrained=False)
    else:
        tv = import_torchvision()
        model = getattr(tv.models, name)()
    model.eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.running_mean.normal_(0, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.1)
    return model


class Exports:
    """Exports torch models to ONNX once per session (keyed by name, exporter, resolution)."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, name: str, exporter: str = "legacy", res: int = 224) -> Path:
        import torch

        path = self.root / f"{name}.{exporter}.{res}.onnx"
        if path.exists():
            return path
        model = make_torch_model(name)
        x = torch.randn(1, 3, res, res)
        tmp = path.with_suffix(".tmp")
        if exporter == "legacy":
            torch.onnx.export(model, (x,), str(tmp), dynamo=False, opset_version=17,
                              input_names=["input"], output_names=["logits"])
        else:
            pytest.importorskip("onnxscript")
            # optimize=False keeps BatchNormalization nodes (pycls counts their params)
            torch.onnx.export(model, (x,), str(tmp), dynamo=True, opset_version=18,
                              optimize=False, external_data=False)
        tmp.rename(path)
        return path


@pytest.fixture(scope="session")
def exports(tmp_path_factory) -> Exports:
    return Exports(tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def paddleocr_models() -> dict[str, Path]:
    """The PaddleOCR det/rec/cls models shipped in the rapidocr-onnxruntime 1.4.4 wheel."""
    target = CACHE / "rapidocr-1.4.4"
    models = target / "rapidocr_onnxruntime" / "models"
    if not models.is_dir():
        download = CACHE / "wheels"
        download.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download),
             "rapidocr-onnxruntime==1.4.4"], capture_output=True, text=True, timeout=600)
        wheels = list(download.glob("rapidocr_onnxruntime-1.4.4-*.whl"))
        if not wheels:
            pytest.skip(f"cannot download rapidocr-onnxruntime==1.4.4: {result.stderr[-300:]}")
        tmp = target.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.endswith(".onnx")]
            wheel.extractall(tmp, members)
        tmp.rename(target)
    return {
        "det": models / "ch_PP-OCRv4_det_infer.onnx",
        "rec": models / "ch_PP-OCRv4_rec_infer.onnx",
        "cls": models / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
    }


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``onnxscale`` command line in a subprocess (as a user would)."""
    result = subprocess.run([sys.executable, "-m", "onnxscale", *args], capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"onnxscale {' '.join(args)} failed: {result.stderr}")
    return result


def ort_run(path_or_proto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    data = path_or_proto if isinstance(path_or_proto, (str, Path)) else \
        path_or_proto.SerializeToString()
    session = ort.InferenceSession(str(data) if isinstance(data, Path) else data,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
