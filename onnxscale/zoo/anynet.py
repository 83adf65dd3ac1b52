"""AnyNet / RegNet X, Y, Z (pycls's ``anynet`` and ``regnet`` models) built directly as ONNX.

A RegNet is generated from (depth, w_0, w_a, w_m, group width, bottleneck multiplier) into
per-stage depths and widths (pycls ``generate_regnet``), then built as an AnyNet:

- stems: ``simple_stem_in`` (3x3/2 conv, BN, act) or ``res_stem_in`` (7x7/2 conv, BN, act,
  3x3/2 max pool);
- blocks: ``res_bottleneck_block`` (RegNetX/Y, ResNet-50: 1x1, 3x3 grouped with the stride,
  optional SE of ``round(w_in * se_r)`` channels, 1x1; 1x1 projection shortcut when the shape
  changes; add, act), ``res_bottleneck_linear_block`` (RegNetZ: same transform, no projection,
  add only when the shape is unchanged, no act after it) and ``res_basic_block`` (ResNet-18/34:
  two 3x3 convs);
- head: optional 1x1 conv + BN + act (``head_w > 0``, RegNetZ), global pool, fully connected.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from ..scaling.strategy import (
    adjust_block_compatibility,
    round_depth,
    round_group_width,
    round_resolution,
    round_width,
)
from .builder import GraphBuilder, Tensor

STEM_TYPES = ("simple_stem_in", "res_stem_in")
BLOCK_TYPES = ("res_bottleneck_block", "res_bottleneck_linear_block", "res_basic_block")


@dataclass(frozen=True)
class AnyNetSpec:
    """pycls ``ANYNET.*`` config (a RegNet converted to per-stage form)."""

    stem_type: str
    stem_w: int
    block_type: str
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    strides: tuple[int, ...]
    bot_muls: tuple[float, ...]
    group_ws: tuple[int, ...]
    se_r: float = 0.0          # 0: no Squeeze-Excite (pycls SE_ON False)
    head_w: int = 0            # 0: no head conv
    activation: str = "relu"
    res: int = 224
    num_classes: int = 1000

    def __post_init__(self):
        if self.stem_type not in STEM_TYPES:
            raise ValueError(f"unknown stem type {self.stem_type!r}")
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f"unknown block type {self.block_type!r}")
        n = len(self.depths)
        if not all(len(t) == n for t in (self.widths, self.strides, self.bot_muls, self.group_ws)):
            raise ValueError("AnyNetSpec: depths, widths, strides, bot_muls, group_ws need one entry per stage")

    def scaled(self, d: float = 1.0, w: float = 1.0, g: float = 1.0, r: float = 1.0) -> "AnyNetSpec":
        """Scale as pycls's scaler does for ``anynet``/``regnet``: stage depths with ``d``, stage
        widths with ``w`` (multiples of 8), group widths with ``g`` (snapped), then widths,
        bottleneck multipliers and group widths made compatible; resolution with ``r``.
        pycls leaves the stem width and the head width unscaled; so do we."""
        depths, widths, bot_muls, group_ws = _scale_stages(self.depths, self.widths, self.bot_muls,
                                                           self.group_ws, d, w, g)
        return replace(self, depths=depths, widths=widths, bot_muls=bot_muls, group_ws=group_ws,
                       res=round_resolution(r, self.res))


def _scale_stages(depths, widths, bot_muls, group_ws, d, w, g):
    ds = tuple(round_depth(d, x) for x in depths)
    ws = [round_width(w, x) for x in widths]
    gs = [round_group_width(g, x) for x in group_ws]
    ws, bs, gs = adjust_block_compatibility(ws, list(bot_muls), gs)
    return ds, tuple(ws), tuple(bs), tuple(gs)


# --------------------------------------------------------------------------------------------
# RegNet generation
# --------------------------------------------------------------------------------------------


def generate_regnet_stages(w_a: float, w_0: int, w_m: float, depth: int, q: int = 8
                           ) -> tuple[list[int], list[int]]:
    """Per-stage (widths, depths) of a RegNet: linear widths ``w_0 + w_a * i`` quantized to
    powers of ``w_m`` times ``w_0``, then to multiples of ``q``; equal widths form a stage."""
    if not (w_a >= 0 and w_0 > 0 and w_m > 1 and w_0 % q == 0):
        raise ValueError(f"invalid RegNet parameters w_a={w_a} w_0={w_0} w_m={w_m}")
    ws_cont = np.arange(depth) * w_a + w_0
    ks = np.round(np.log(ws_cont / w_0) / np.log(w_m))
    ws_all = np.round(w_0 * np.power(w_m, ks) / q).astype(int) * q
    ws, ds = np.unique(ws_all, return_counts=True)
    return [int(x) for x in ws], [int(x) for x in ds]


def regnet_spec(*, depth: int, w_0: int, w_a: float, w_m: float, group_w: int, bot_mul: float = 1.0,
                se_r: float = 0.0, block_type: str = "res_bottleneck_block", head_w: int = 0,
                activation: str = "relu", stem_w: int = 32, stride: int = 2, res: int = 224,
                num_classes: int = 1000) -> AnyNetSpec:
    """A pycls ``REGNET.*`` config converted to AnyNet form (pycls ``regnet_cfg_to_anynet_cfg``)."""
    ws, ds = generate_regnet_stages(w_a, w_0, w_m, depth)
    n = len(ws)
    ws, bs, gs = adjust_block_compatibility(ws, [bot_mul] * n, [group_w] * n)
    return AnyNetSpec(stem_type="simple_stem_in", stem_w=stem_w, block_type=block_type,
                      depths=tuple(ds), widths=tuple(ws), strides=(stride,) * n, bot_muls=tuple(bs),
                      group_ws=tuple(gs), se_r=se_r, head_w=head_w, activation=activation, res=res,
                      num_classes=num_classes)


# --------------------------------------------------------------------------------------------
# Graph construction
# --------------------------------------------------------------------------------------------


def _stem(gb: GraphBuilder, x: Tensor, stem_type: str, w: int, act: str) -> Tensor:
    if stem_type == "simple_stem_in":
        return gb.conv_bn_act(x, "stem.conv", w, 3, stride=2, act=act, bn_name="stem.bn", act_name="stem.act")
    x = gb.conv_bn_act(x, "stem.conv", w, 7, stride=2, act=act, bn_name="stem.bn", act_name="stem.act")
    return gb.max_pool(x, "stem.pool", 3, 2)


def _bottleneck_transform(gb: GraphBuilder, x: Tensor, name: str, w_out: int, stride: int,
                          bot_mul: float, group_w: int, se_r: float, act: str) -> Tensor:
    w_b = int(round(w_out * bot_mul))
    w_se = int(round(x.channels * se_r))
    groups = w_b // group_w
    f = gb.conv_bn_act(x, f"{name}.a", w_b, 1, act=act)
    f = gb.conv_bn_act(f, f"{name}.b", w_b, 3, stride=stride, groups=groups, act=act)
    if w_se:
        f = gb.se(f, f"{name}.se", w_se, act)
    return gb.conv_bn_act(f, f"{name}.c", w_out, 1, act=None)


def _basic_transform(gb: GraphBuilder, x: Tensor, name: str, w_out: int, stride: int, act: str) -> Tensor:
    f = gb.conv_bn_act(x, f"{name}.a", w_out, 3, stride=stride, act=act)
    return gb.conv_bn_act(f, f"{name}.b", w_out, 3, act=None)


def _block(gb: GraphBuilder, x: Tensor, name: str, spec, w_out: int, stride: int, bot_mul: float,
           group_w: int) -> Tensor:
    act = spec.activation
    same_shape = x.channels == w_out and stride == 1
    if spec.block_type == "res_basic_block":
        f = _basic_transform(gb, x, f"{name}.f", w_out, stride, act)
    else:
        f = _bottleneck_transform(gb, x, f"{name}.f", w_out, stride, bot_mul, group_w, spec.se_r, act)
    if spec.block_type == "res_bottleneck_linear_block":
        return gb.add(x, f, f"{name}.add") if same_shape else f
    shortcut = x
    if not same_shape:
        shortcut = gb.conv_bn_act(x, f"{name}.proj", w_out, 1, stride=stride, act=None,
                                  bn_name=f"{name}.proj_bn")
    y = gb.add(shortcut, f, f"{name}.add")
    return gb.act(y, f"{name}.act", act)


def build_anynet(spec, seed: int = 0, name: str = "anynet", doc: str = "",
                 metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    """Build an `AnyNetSpec` (or anything with the same fields, e.g. a ResNet in AnyNet form)."""
    gb = GraphBuilder(seed)
    x = gb.input("input", 3, spec.res, spec.res)
    x = _stem(gb, x, spec.stem_type, spec.stem_w, spec.activation)
    stages = zip(spec.depths, spec.widths, spec.strides, spec.bot_muls, spec.group_ws)
    for i, (depth, w_out, stride, bot_mul, group_w) in enumerate(stages, start=1):
        for j in range(1, depth + 1):
            x = _block(gb, x, f"s{i}.b{j}", spec, w_out, stride if j == 1 else 1, bot_mul, group_w)
    if spec.head_w > 0:
        x = gb.conv_bn_act(x, "head.conv", spec.head_w, 1, act=spec.activation, bn_name="head.bn",
                           act_name="head.act")
    gb.classifier(x, "head", spec.num_classes)
    return gb.finish(name, doc, metadata)
