"""EfficientNet (pycls's ``effnet`` model) built directly as ONNX.

Architecture as in pycls: stem 3x3/2 conv + BN + SiLU; stages of MBConv blocks (1x1 expansion
when the expansion ratio is not 1, k x k depthwise, SE with ``int(w_in * se_r)`` channels and SiLU,
1x1 linear projection + BN, residual add when stride is 1 and width unchanged); head 1x1 conv +
BN + SiLU, global average pool, fully connected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

from ..scaling.strategy import (
    EFFICIENTNET_PRESETS,
    adjust_block_compatibility,
    efficientnet_round_filters,
    efficientnet_round_repeats,
    round_depth,
    round_resolution,
    round_width,
)
from .builder import GraphBuilder, Tensor


@dataclass(frozen=True)
class EfficientNetSpec:
    """pycls ``EN.*`` config: per-stage depths, widths, expansion ratios, kernels and strides."""

    stem_w: int
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    exp_ratios: tuple[int, ...]
    kernels: tuple[int, ...]
    strides: tuple[int, ...]
    head_w: int
    se_r: float = 0.25
    res: int = 224
    num_classes: int = 1000
    activation: str = "silu"

    def __post_init__(self):
        n = len(self.depths)
        if not all(len(t) == n for t in (self.widths, self.exp_ratios, self.kernels, self.strides)):
            raise ValueError("EfficientNetSpec: depths, widths, exp_ratios, kernels, strides need one entry per stage")

    def scaled(self, d: float = 1.0, w: float = 1.0, g: float = 1.0, r: float = 1.0) -> "EfficientNetSpec":
        """Scale as pycls's scaler does for ``effnet``: depths with ``d``; stage widths, stem and
        head width with ``w`` (multiples of 8); expansion ratios made compatible; resolution with
        ``r`` (multiple of 4).  ``g`` has no effect: depthwise convs stay depthwise."""
        depths = tuple(round_depth(d, x) for x in self.depths)
        widths = [round_width(w, x) for x in self.widths]
        widths, exp_ratios, _ = adjust_block_compatibility(widths, self.exp_ratios, [1] * len(widths))
        return replace(
            self,
            stem_w=round_width(w, self.stem_w),
            depths=depths,
            widths=tuple(widths),
            exp_ratios=tuple(exp_ratios),
            head_w=round_width(w, self.head_w),
            res=round_resolution(r, self.res),
        )


EFFICIENTNET_B0 = EfficientNetSpec(
    stem_w=32,
    depths=(1, 2, 2, 3, 3, 4, 1),
    widths=(16, 24, 40, 80, 112, 192, 320),
    exp_ratios=(1, 6, 6, 6, 6, 6, 6),
    kernels=(3, 3, 5, 3, 5, 5, 3),
    strides=(1, 2, 2, 2, 1, 2, 1),
    head_w=1280,
    res=224,
)


def efficientnet_preset(name: str, base: EfficientNetSpec = EFFICIENTNET_B0) -> EfficientNetSpec:
    """EfficientNet-B``n`` by the paper's compound rule (channels to multiples of 8, never below
    90% of exact; repeats rounded up).  For B1..B3 this reproduces pycls's EN-B1..B3 configs."""
    w_mult, d_mult, res = EFFICIENTNET_PRESETS[name]
    return replace(
        base,
        stem_w=efficientnet_round_filters(base.stem_w, w_mult),
        depths=tuple(efficientnet_round_repeats(x, d_mult) for x in base.depths),
        widths=tuple(efficientnet_round_filters(x, w_mult) for x in base.widths),
        head_w=efficientnet_round_filters(base.head_w, w_mult),
        res=res,
    )


def _mbconv(gb: GraphBuilder, x: Tensor, name: str, spec: EfficientNetSpec, exp_r: int, k: int,
            stride: int, w_out: int) -> Tensor:
    act = spec.activation
    w_in = x.channels
    w_exp = int(w_in * exp_r)
    f = x
    if w_exp != w_in:
        f = gb.conv_bn_act(f, f"{name}.exp", w_exp, 1, act=act)
    f = gb.conv_bn_act(f, f"{name}.dwise", w_exp, k, stride=stride, groups=w_exp, act=act)
    w_se = int(w_in * spec.se_r)
    if w_se > 0:
        f = gb.se(f, f"{name}.se", w_se, act)
    f = gb.conv_bn_act(f, f"{name}.lin_proj", w_out, 1, act=None)
    if stride == 1 and w_in == w_out:
        f = gb.add(x, f, f"{name}.add")
    return f


def build_efficientnet(spec: EfficientNetSpec, seed: int = 0, name: str = "efficientnet",
                       doc: str = "", metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    gb = GraphBuilder(seed)
    x = gb.input("input", 3, spec.res, spec.res)
    x = gb.conv_bn_act(x, "stem.conv", spec.stem_w, 3, stride=2, act=spec.activation,
                       bn_name="stem.bn", act_name="stem.act")
    stages = zip(spec.depths, spec.widths, spec.exp_ratios, spec.kernels, spec.strides)
    for i, (depth, w_out, exp_r, k, stride) in enumerate(stages, start=1):
        for j in range(1, depth + 1):
            x = _mbconv(gb, x, f"s{i}.b{j}", spec, exp_r, k, stride if j == 1 else 1, w_out)
    x = gb.conv_bn_act(x, "head.conv", spec.head_w, 1, act=spec.activation, bn_name="head.bn",
                       act_name="head.act")
    gb.classifier(x, "head", spec.num_classes)
    return gb.finish(name, doc, metadata)
