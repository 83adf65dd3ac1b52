"""Models by name from PyTorch's hubs: ``torchvision:NAME`` and ``timm:NAME``, exported to
ONNX on first use and cached on disk, so every command takes them where it takes a file.

Weights are random (the framework's own initialisation, or with ``init='random-bn'`` BatchNorm
statistics randomized as well, so folding BN into convs is not a no-op), or ``pretrained``
from a checkpoint already on this machine: nothing is downloaded at run time.  Complexity and
runtime do not depend on the weights' values; function-preservation checks do not either.

An export is cached under ``<cache dir>/exports/torch-<version>.recipe-<RECIPE>/`` keyed by
model, exporter, size, weights and batch: a second request exports nothing.  Bump `RECIPE`
when what an export contains changes.  torch, torchvision and timm are the ``torch`` extra.
"""

from __future__ import annotations

import contextlib
import os
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import OnnxscaleError, UsageError, first_line
from .paths import default_cache_dir

HUBS = ("torchvision", "timm")
EXPORTERS = ("legacy", "dynamo")
INITS = ("default", "random-bn", "pretrained")
RECIPE = 1
NO_TORCH = "{spec} needs torch: pip install 'onnxscale[torch]'"


@dataclass(frozen=True)
class ExportSpec:
    """What to export: hub and model name, input size, exporter, weights, batch."""

    hub: str
    name: str
    size: int = 224
    exporter: str = "legacy"
    init: str = "default"
    dynamic_batch: bool = False

    @property
    def label(self) -> str:
        return f"{self.hub}:{self.name}"

    def file_name(self) -> str:
        """``resnet50.legacy.224.default.onnx`` (torchvision) or ``timm.NAME...`` (timm);
        random-bn exports carry no init tag (the test suite's cache predates the others)."""
        stem = self.name if self.hub == "torchvision" else f"{self.hub}.{self.name}"
        tags = ([] if self.init == "random-bn" else [self.init]) + \
            (["dynamic"] if self.dynamic_batch else [])
        return ".".join([stem, self.exporter, str(self.size), *tags, "onnx"])


def is_hub_model(spec: str) -> bool:
    return spec.split(":", 1)[0] in HUBS and ":" in spec


def parse_spec(spec: str, *, size: int = 224, exporter: str = "legacy", init: str = "default",
               dynamic_batch: bool = False) -> ExportSpec:
    hub, _, name = spec.partition(":")
    if hub not in HUBS or not name:
        raise UsageError(f"'{spec}': expected torchvision:NAME or timm:NAME")
    if exporter not in EXPORTERS:
        raise UsageError(f"exporter '{exporter}': expected legacy or dynamo")
    if init not in INITS:
        raise UsageError(f"weights '{init}': expected one of {', '.join(INITS)}")
    if not isinstance(size, int) or not 16 <= size <= 4096:
        raise UsageError(f"size {size}: expected a whole number of pixels from 16 to 4096")
    return ExportSpec(hub, name, size, exporter, init, dynamic_batch)


def cache_root() -> Path:
    return default_cache_dir() / "exports"


def exported(spec: str | ExportSpec, *, root: Path | None = None) -> Path:
    """The ONNX file of a hub model, exported now unless the cache has it."""
    target = spec if isinstance(spec, ExportSpec) else parse_spec(spec)
    torch = _import_torch(target.label)
    folder = (root or cache_root()) / f"torch-{torch.__version__}.recipe-{RECIPE}"
    path = folder / target.file_name()
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    write_export(build_module(target), target, path)
    return path


def write_export(module, target: ExportSpec, path: Path,
                 example_shape: tuple[int, ...] | None = None) -> Path:
    """Export a torch module to ``path`` atomically (a temporary file, then a rename)."""
    import torch

    x = torch.randn(1, *(example_shape or (3, target.size, target.size)))
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        # exporters print progress and warnings; stdout belongs to --json
        with torch.no_grad(), contextlib.redirect_stdout(sys.stderr), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if target.exporter == "legacy":
                axes = {"input": {0: "batch"}, "logits": {0: "batch"}} \
                    if target.dynamic_batch else None
                torch.onnx.export(module, (x,), str(tmp), dynamo=False, opset_version=17,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_axes=axes)
            else:
                _require("onnxscript", target.label)
                shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) \
                    if target.dynamic_batch else None
                # optimize=False keeps BatchNormalization nodes (pycls counts their params)
                torch.onnx.export(module, (x,), str(tmp), dynamo=True, opset_version=18,
                                  optimize=False, external_data=False, dynamic_shapes=shapes,
                                  verbose=False)
        tmp.replace(path)
    except OnnxscaleError:
        raise
    except Exception as exc:
        raise OnnxscaleError(f"{target.label}: the {target.exporter} exporter failed: "
                             f"{first_line(exc)}") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def build_module(target: ExportSpec):
    """The torch module, in eval mode, with the weights ``target.init`` asks for."""
    import torch

    torch.manual_seed(0)
    if target.hub == "timm":
        import_torchvision()  # timm imports torchvision
        timm = _require("timm", target.label)
        if target.name not in timm.list_models():
            raise UsageError(f"timm has no model '{target.name}' (timm.list_models() lists "
                             f"them)")
        module = _timm_model(timm, target)
    else:
        tv = import_torchvision()
        names = tv.models.list_models(module=tv.models)
        if target.name not in names:
            raise UsageError(f"torchvision has no classification model '{target.name}' "
                             f"(for example: resnet50, efficientnet_b0, regnet_y_400mf)")
        module = _torchvision_model(tv, target)
    module.eval()
    if target.init == "random-bn":
        randomize_batchnorm(module)
    return module


def _torchvision_model(tv, target: ExportSpec):
    if target.init != "pretrained":
        return tv.models.get_model(target.name, weights=None)
    import torch

    weights = tv.models.get_model_weights(target.name).DEFAULT
    checkpoint = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not checkpoint.exists():
        raise OnnxscaleError(f"{target.label}: pretrained weights are not on this machine "
                             f"({checkpoint}); onnxscale downloads nothing: fetch them once "
                             f"with torchvision, or use random weights")
    return tv.models.get_model(target.name, weights=weights)


def _timm_model(timm, target: ExportSpec):
    if target.init != "pretrained":
        return timm.create_model(target.name, pretrained=False)
    os.environ["HF_HUB_OFFLINE"] = "1"  # the local Hugging Face cache only
    try:
        return timm.create_model(target.name, pretrained=True)
    except Exception as exc:
        raise OnnxscaleError(f"{target.label}: pretrained weights are not on this machine "
                             f"({type(exc).__name__}); onnxscale downloads nothing") from None


def randomize_batchnorm(module) -> None:
    """Random BatchNorm statistics and affine parameters (a fixed seed): an untrained
    network's BN is the identity, which folding would hide."""
    import torch

    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
                layer.running_mean.normal_(0, 0.1)
                layer.running_var.uniform_(0.5, 1.5)
                layer.weight.uniform_(0.5, 1.5)
                layer.bias.normal_(0, 0.1)


def import_torchvision():
    """torchvision, importable from torch's CPU wheel: a torchvision wheel built for CUDA
    registers C ops at import that a CPU torch lacks; the two modules that do so are stubbed
    (classification models need neither)."""
    _import_torch("torchvision")
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    return _require("torchvision", "torchvision models")


def _import_torch(spec: str):
    try:
        import torch
    except ImportError:
        raise OnnxscaleError(NO_TORCH.format(spec=spec)) from None
    return torch


def _require(package: str, spec: str):
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        raise OnnxscaleError(f"{spec} needs {package}: pip install 'onnxscale[torch]'") \
            from None
