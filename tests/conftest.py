"""Shared test material: small ONNX graphs built with onnx.helper, and real architectures
exported from torchvision/timm with both torch exporters (cached once per test session)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ONNXSCALE_TEST_CACHE", Path.home() / ".cache" / "onnxscale-tests"))
# onnxscale's own cache (TensorRT engines, provider environments, exports by name) is the
# suite's, never the user's: a user's `providers add` must not change what a test sees.
os.environ["ONNXSCALE_CACHE_DIR"] = str(CACHE / "onnxscale-cache")


def import_torchvision():
    """torchvision (stubbed as `onnxscale.export` does for torch's CPU wheel), or a skip."""
    pytest.importorskip("torch")
    from onnxscale.export import import_torchvision as load

    return load()


def local_models() -> dict:
    """Small torch networks of families no zoo ships, by name: (module factory, input
    shape without batch).  ``crnn``: conv features reshaped into a bidirectional LSTM (its
    input height is baked into the LSTM's weights, its width is the sequence length).
    ``fpn``: a stride-32 backbone whose coarsest map is upsampled and added back at strides
    16 and 8 (only multiples of 32 fit).  ``plain``: an MTCNN-like plain stack (no skips)."""
    import torch
    from torch import nn

    class CRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Sequential(
                nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                nn.MaxPool2d((2, 1)), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                nn.MaxPool2d((2, 1)))
            self.rnn = nn.LSTM(32 * 4, 48, bidirectional=True)
            self.fc = nn.Linear(96, 40)

        def forward(self, x):
            f = self.conv(x)
            n, c, h, w = f.shape
            y, _ = self.rnn(f.reshape(n, c * h, w).permute(2, 0, 1))
            return self.fc(y)

    def block(cin, cout, stride):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())

    class FPN(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [32, 48, 64, 96, 128]
            self.down = nn.ModuleList(block(c_in, c_out, 2) for c_in, c_out in
                                      zip([3] + widths[:-1], widths))
            self.lateral = nn.ModuleList(nn.Conv2d(c, 64, 1) for c in widths[2:])
            self.head = nn.Conv2d(64, 1, 3, padding=1)

        def forward(self, x):
            feats = []
            for layer in self.down:
                x = layer(x)
                feats.append(x)
            top = self.lateral[2](feats[4])
            for i in (1, 0):
                top = nn.functional.interpolate(top, scale_factor=2.0) + \
                    self.lateral[i](feats[2 + i])
            return torch.sigmoid(self.head(top))

    def plain():
        return nn.Sequential(block(3, 32, 1), nn.MaxPool2d(2), block(32, 64, 1), block(64, 64, 1),
                             nn.MaxPool2d(2), block(64, 128, 1), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(128, 10))

    class ConvBnSiLU(nn.Sequential):
        def __init__(self, cin, cout, k=1, s=1):
            super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False),
                             nn.BatchNorm2d(cout), nn.SiLU())

    class Bottleneck(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.cv1, self.cv2 = ConvBnSiLU(c, c, 3), ConvBnSiLU(c, c, 3)

        def forward(self, x):
            return x + self.cv2(self.cv1(x))

    class C2f(nn.Module):
        """YOLOv8's C2f: split in two, a chain of bottlenecks on one half, every output
        concatenated."""

        def __init__(self, c, n):
            super().__init__()
            self.cv1 = ConvBnSiLU(c, c)
            self.m = nn.ModuleList(Bottleneck(c // 2) for _ in range(n))
            self.cv2 = ConvBnSiLU((2 + n) * (c // 2), c)

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class YOLO(nn.Module):
        """A YOLOv8n-like detector: C2f backbone (stride 32), upsample-and-concat neck, a
        1x1 head at stride 8 and 16."""

        def __init__(self):
            super().__init__()
            self.stem = ConvBnSiLU(3, 16, 3, 2)
            self.down = nn.ModuleList(ConvBnSiLU(a, b, 3, 2) for a, b in
                                      ((16, 32), (32, 64), (64, 128), (128, 128)))
            self.c2f = nn.ModuleList(C2f(c, n) for c, n in ((32, 1), (64, 2), (128, 2),
                                                             (128, 1)))
            self.up = C2f(256, 1)
            self.reduce = ConvBnSiLU(256, 128)
            self.head8, self.head16 = nn.Conv2d(192, 85, 1), nn.Conv2d(128, 85, 1)

        def forward(self, x):
            x, feats = self.stem(x), []
            for down, c2f in zip(self.down, self.c2f):
                x = c2f(down(x))
                feats.append(x)
            p16 = self.reduce(self.up(torch.cat([nn.functional.interpolate(
                feats[3], scale_factor=2.0), feats[2]], 1)))
            p8 = torch.cat([nn.functional.interpolate(p16, scale_factor=2.0), feats[1]], 1)
            return self.head8(p8), self.head16(p16)

    return {"crnn": (CRNN, (1, 32, 100)), "fpn": (FPN, (3, 128, 128)),
            "plain": (plain, (3, 64, 64)), "yolo": (YOLO, (3, 160, 160))}


def _spec(name: str, res: int = 224, exporter: str = "legacy", init: str = "random-bn"):
    """The library's export spec of a suite name: ``resnet50`` (torchvision), ``timm.NAME``."""
    from onnxscale.export import ExportSpec

    hub, _, model = name.partition(".") if name.startswith("timm.") else ("torchvision", "", name)
    return ExportSpec(hub, model, res, exporter, init)


def make_torch_model(name: str, init: str = "random-bn"):
    """A torchvision (``resnet50``), timm (``timm.regnety_008``) or local (``local.crnn``)
    model with random weights and, with ``init='random-bn'``, randomized BatchNorm
    statistics, so folding BN (legacy exporter) is not a no-op.  ``init='default'`` keeps the
    framework's own initialisation, as a user's untrained export has it: every BN scale 1 and
    bias 0, which the legacy exporter then shares among unrelated layers.  Hub models are
    built by `onnxscale.export`, the code behind ``onnxscale export``."""
    import torch

    if not name.startswith("local."):
        import_torchvision()
        if name.startswith("timm."):
            pytest.importorskip("timm")
        from onnxscale.export import build_module

        return build_module(_spec(name, init=init))
    from onnxscale.export import randomize_batchnorm

    torch.manual_seed(0)
    model = local_models()[name[6:]][0]()
    model.eval()
    if init != "default":
        randomize_batchnorm(model)
    return model


class Exports:
    """Exports torch models to ONNX once (keyed by name, exporter, resolution and init), kept
    on disk under ``CACHE`` per torch version, so a second run of the suite exports nothing.
    torchvision and timm models go through `onnxscale.export` (its cache layout and
    ``RECIPE``); the suite's local models are exported the same way."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, name: str, exporter: str = "legacy", res: int = 224,
                 init: str = "random-bn") -> Path:
        import torch

        if exporter == "dynamo":
            pytest.importorskip("onnxscript")
        from onnxscale.export import RECIPE, exported, write_export

        if not name.startswith("local."):
            import_torchvision()
            if name.startswith("timm."):
                pytest.importorskip("timm")
            return exported(_spec(name, res, exporter, init), root=self.root)
        folder = self.root / f"torch-{torch.__version__}.recipe-{RECIPE}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = "" if init == "random-bn" else f".{init}"
        path = folder / f"{name}.{exporter}.{res}{suffix}.onnx"  # res: the model's own size
        if not path.exists():
            write_export(make_torch_model(name, init), _spec("local", 0, exporter, init), path,
                         example_shape=local_models()[name[6:]][1])
        return path


@pytest.fixture(scope="session")
def exports() -> Exports:
    return Exports(CACHE / "exports")


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


# TensorFlow's own venv: it cannot share the test environment (its ml_dtypes is newer than
# the cap onnx's import time needs); pinned so the exports are the same everywhere
KERAS = ("tensorflow-cpu==2.21.0", "tf2onnx==1.17.0")


@pytest.fixture(scope="session")
def keras_exports() -> dict[str, Path]:
    """Keras ResNet50 and MobileNetV3Small (224) and an MTCNN ONet-like stack (48) exported by
    tf2onnx (NHWC inputs, Transposes around convs, PReLU written as Relu/Neg/Mul/Add), made
    once in a TensorFlow venv under ``CACHE`` (a few minutes the first time)."""
    folder = CACHE / ("keras-" + "-".join(KERAS).replace("==", ""))
    names = ("resnet50", "mobilenetv3small", "onet")
    if not all((folder / f"{n}.onnx").exists() for n in names):
        venv = CACHE / "tf-venv"
        python = venv / "bin" / "python"
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        result = subprocess.run([str(python), "-m", "pip", "install", "-q", *KERAS],
                                capture_output=True, text=True, timeout=1200)
        if result.returncode != 0:
            pytest.skip(f"cannot install {' '.join(KERAS)}: {result.stderr[-300:]}")
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run([str(python), str(REPO / "tests" / "keras_exports.py"),
                                 str(folder)], capture_output=True, text=True, timeout=1200,
                                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
                                     "CUDA_VISIBLE_DEVICES": ""})
        assert result.returncode == 0, result.stderr[-2000:]
    return {name: folder / f"{name}.onnx" for name in names}


def run_cli(*args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run the real ``onnxscale`` command line in a subprocess (as a user would)."""
    result = subprocess.run([sys.executable, "-m", "onnxscale", *args], capture_output=True,
                            text=True, cwd=REPO, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"onnxscale {' '.join(args)} failed: {result.stderr}")
    return result


def scale_and_run_cli(source: Path, out: Path, *args: str) -> dict:
    """``onnxscale scale SOURCE ARGS -o OUT --json`` as a user runs it; the written model is
    then run once in ONNX Runtime at the input dims the summary gives.  The summary."""
    import json

    result = run_cli("scale", str(source), *args, "-o", str(out), "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    rng = np.random.default_rng(0)
    feeds = {name: rng.standard_normal(dims).astype(np.float32)
             for name, dims in summary["scaled"]["inputs"].items()}
    for output in ort_run(out, feeds):
        assert np.isfinite(output).all()
    return summary


def ort_input_name(path: Path) -> str:
    """The first graph input's name of a saved model (exporters name it differently)."""
    import onnx

    return onnx.load(str(path), load_external_data=False).graph.input[0].name


def ort_run(path_or_proto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    data = path_or_proto if isinstance(path_or_proto, (str, Path, bytes)) else \
        path_or_proto.SerializeToString()
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see pipeline
    session = ort.InferenceSession(str(data) if isinstance(data, Path) else data, options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)
