"""ResNet built directly as ONNX.

ResNet-50 is pycls's model-zoo ResNet-50 (``configs/dds_baselines/resnet/R-50-1x64d``), an AnyNet:
``res_stem_in`` (7x7/2 conv 64, BN, ReLU, 3x3/2 max pool), bottleneck blocks with the stride on the
3x3 conv, widths 256..2048, bottleneck multiplier 0.25, one group, projection shortcuts where the
shape changes.  ResNet-18/34 (not in pycls's ImageNet zoo) use the same stem and pycls's
``res_basic_block`` (two 3x3 convs), i.e. the classic basic-block ResNets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import onnx

from ..scaling.strategy import round_resolution
from .anynet import AnyNetSpec, _scale_stages, build_anynet

BLOCKS = {"bottleneck": "res_bottleneck_block", "basic": "res_basic_block"}


@dataclass(frozen=True)
class ResNetSpec:
    """A ResNet in pycls's AnyNet terms (stem width, per-stage depths/widths/strides/...)."""

    block: str                      # "bottleneck" or "basic"
    depths: tuple[int, ...]
    widths: tuple[int, ...]
    strides: tuple[int, ...] = (1, 2, 2, 2)
    bot_muls: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    group_ws: tuple[int, ...] = (1, 1, 1, 1)
    stem_w: int = 64
    activation: str = "relu"
    res: int = 224
    num_classes: int = 1000

    def __post_init__(self):
        if self.block not in BLOCKS:
            raise ValueError(f"unknown ResNet block {self.block!r} (bottleneck or basic)")
        n = len(self.depths)
        if not all(len(t) == n for t in (self.widths, self.strides, self.bot_muls, self.group_ws)):
            raise ValueError("ResNetSpec: depths, widths, strides, bot_muls, group_ws need one entry per stage")

    def scaled(self, d: float = 1.0, w: float = 1.0, g: float = 1.0, r: float = 1.0) -> "ResNetSpec":
        """Scale as pycls's scaler does for an AnyNet (pycls's ResNet-50 is one): stage depths,
        stage widths (multiples of 8), group widths (snapped), compatibility, resolution; the
        stem is not scaled.

        As in pycls, ResNet-50's "one group" is expressed as group width = bottleneck width, so
        scaling ``w`` without ``g`` can snap the bottleneck to a multiple of the old group width
        (``scaled(w=1.5)``: bottleneck 96 -> 128, i.e. 2 groups and widths 512..4096); pass
        ``g=w`` to keep one group per conv."""
        depths, widths, bot_muls, group_ws = _scale_stages(self.depths, self.widths, self.bot_muls,
                                                           self.group_ws, d, w, g)
        return replace(self, depths=depths, widths=widths, bot_muls=bot_muls, group_ws=group_ws,
                       res=round_resolution(r, self.res))

    def to_anynet(self) -> AnyNetSpec:
        return AnyNetSpec(stem_type="res_stem_in", stem_w=self.stem_w, block_type=BLOCKS[self.block],
                          depths=self.depths, widths=self.widths, strides=self.strides,
                          bot_muls=self.bot_muls, group_ws=self.group_ws, se_r=0.0, head_w=0,
                          activation=self.activation, res=self.res, num_classes=self.num_classes)


RESNET_50 = ResNetSpec(block="bottleneck", depths=(3, 4, 6, 3), widths=(256, 512, 1024, 2048),
                       bot_muls=(0.25, 0.25, 0.25, 0.25), group_ws=(64, 128, 256, 512))
RESNET_34 = ResNetSpec(block="basic", depths=(3, 4, 6, 3), widths=(64, 128, 256, 512))
RESNET_18 = ResNetSpec(block="basic", depths=(2, 2, 2, 2), widths=(64, 128, 256, 512))


def build_resnet(spec: ResNetSpec, seed: int = 0, name: str = "resnet", doc: str = "",
                 metadata: dict[str, str] | None = None) -> onnx.ModelProto:
    return build_anynet(spec.to_anynet(), seed=seed, name=name, doc=doc, metadata=metadata)
