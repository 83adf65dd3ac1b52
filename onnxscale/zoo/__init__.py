"""Built-in base CNNs, generated directly as ONNX graphs with seeded random weights.

The architectures are pycls's (``facebookresearch/pycls``: EfficientNet, RegNet X/Y/Z as AnyNet,
ResNet), so their flops / params / acts match pycls's published complexity (docs/concepts.md, Complexity).

    >>> from onnxscale import zoo
    >>> zoo.names()[:2]
    ['efficientnet-b0', 'efficientnet-b1']
    >>> model = zoo.build("regnety-400mf", seed=0)
    >>> wide = zoo.build_spec(zoo.spec("efficientnet-b0").scaled(w=2), name="en-b0-w2")

Graph conventions: opset 17, IR version 8, input ``input`` [1, 3, res, res] float32, output
``logits`` [1, classes]; Conv without bias + BatchNormalization (not folded) + activation
(Relu, or SiLU as Sigmoid+Mul); node names follow pycls's module names (``stem.conv``,
``s2.b1.dwise``, ``s3.b2.f.se.fc1``, ``head.fc``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Callable, Union

import onnx

from ..errors import OnnxscaleError
from .anynet import AnyNetSpec, build_anynet, regnet_spec
from .effnet import EFFICIENTNET_B0, EfficientNetSpec, build_efficientnet, efficientnet_preset
from .resnet import RESNET_18, RESNET_34, RESNET_50, ResNetSpec, build_resnet

Spec = Union[EfficientNetSpec, AnyNetSpec, ResNetSpec]

__all__ = [
    "AnyNetSpec",
    "EfficientNetSpec",
    "ResNetSpec",
    "Spec",
    "build",
    "build_spec",
    "describe",
    "names",
    "spec",
    "spec_to_dict",
]


@dataclass(frozen=True)
class _Entry:
    title: str
    make: Callable[[], Spec]
    summary: str


_ZOO: dict[str, _Entry] = {
    "efficientnet-b0": _Entry("EfficientNet-B0", lambda: EFFICIENTNET_B0,
                              "MBConv + SE, SiLU; pycls EN-B0"),
    "efficientnet-b1": _Entry("EfficientNet-B1", lambda: efficientnet_preset("b1"),
                              "B0 with depth x1.1; pycls EN-B1"),
    "efficientnet-b2": _Entry("EfficientNet-B2", lambda: efficientnet_preset("b2"),
                              "B0 with width x1.1, depth x1.2; pycls EN-B2"),
    "efficientnet-b3": _Entry("EfficientNet-B3", lambda: efficientnet_preset("b3"),
                              "B0 with width x1.2, depth x1.4; pycls EN-B3"),
    "regnetx-400mf": _Entry(
        "RegNetX-400MF",
        lambda: regnet_spec(depth=22, w_0=24, w_a=24.48, w_m=2.54, group_w=16),
        "grouped bottleneck blocks, ReLU; pycls RegNetX-400MF"),
    "regnety-400mf": _Entry(
        "RegNetY-400MF",
        lambda: regnet_spec(depth=16, w_0=48, w_a=27.89, w_m=2.09, group_w=8, se_r=0.25),
        "grouped bottleneck blocks + SE, ReLU; pycls RegNetY-400MF"),
    "regnety-800mf": _Entry(
        "RegNetY-800MF",
        lambda: regnet_spec(depth=14, w_0=56, w_a=38.84, w_m=2.4, group_w=16, se_r=0.25),
        "grouped bottleneck blocks + SE, ReLU; pycls RegNetY-800MF"),
    "regnetz-500mf": _Entry(
        "RegNetZ-500MF",
        lambda: regnet_spec(depth=21, w_0=16, w_a=10.7, w_m=2.51, group_w=4, bot_mul=4.0, se_r=0.25,
                            block_type="res_bottleneck_linear_block", head_w=1024, activation="silu"),
        "inverted linear bottlenecks (x4) + SE, SiLU, 1x1 head conv 1024; pycls RegNetZ-500MF"),
    "resnet-18": _Entry("ResNet-18", lambda: RESNET_18, "basic blocks, ReLU"),
    "resnet-34": _Entry("ResNet-34", lambda: RESNET_34, "basic blocks, ReLU"),
    "resnet-50": _Entry("ResNet-50", lambda: RESNET_50,
                        "bottleneck blocks (stride on 3x3), ReLU; pycls ResNet-50 (R-50-1x64d)"),
}


def names() -> list[str]:
    """The zoo's model names, sorted."""
    return sorted(_ZOO)


def _entry(name: str) -> tuple[str, _Entry]:
    key = name.strip().lower()
    if key not in _ZOO:
        raise OnnxscaleError(f"unknown zoo model '{name}'; available: {', '.join(names())}")
    return key, _ZOO[key]


def spec(name: str) -> Spec:
    """The architecture of zoo model ``name`` as a spec dataclass (with a ``scaled`` method)."""
    return _entry(name)[1].make()


def _shape_summary(s: Spec) -> str:
    depths = "-".join(str(d) for d in s.depths)
    widths = "-".join(str(w) for w in s.widths)
    return f"depths {depths}, widths {widths}, {s.res}x{s.res}"


def describe(name: str) -> str:
    """One line: title, architecture, stage depths/widths and input resolution."""
    key, entry = _entry(name)
    return f"{entry.title}: {entry.summary}; {_shape_summary(entry.make())}"


def spec_to_dict(s: Spec) -> dict:
    """A JSON-able dict of a spec: ``{"type": "EfficientNetSpec", ...fields}``."""
    return {"type": type(s).__name__, **dataclasses.asdict(s)}


def build_spec(s: Spec, seed: int = 0, name: str | None = None) -> onnx.ModelProto:
    """Build any (possibly scaled) spec into an ONNX model with random weights from ``seed``."""
    if isinstance(s, EfficientNetSpec):
        builder, default = build_efficientnet, "efficientnet"
    elif isinstance(s, AnyNetSpec):
        builder, default = build_anynet, "anynet"
    elif isinstance(s, ResNetSpec):
        builder, default = build_resnet, "resnet"
    else:
        raise OnnxscaleError(f"cannot build a {type(s).__name__}; expected a zoo spec")
    name = name or default
    doc = f"onnxscale zoo model '{name}' (random weights, seed {seed}): {s!r}"
    metadata = {
        "onnxscale.zoo.name": name,
        "onnxscale.zoo.seed": str(seed),
        "onnxscale.zoo.spec": json.dumps(spec_to_dict(s)),
    }
    return builder(s, seed=seed, name=name, doc=doc, metadata=metadata)


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """Build zoo model ``name`` with random weights drawn from ``seed``."""
    key, entry = _entry(name)
    return build_spec(entry.make(), seed=seed, name=key)
