"""Scaling math that never touches a graph.

Rounding rules of pycls's model scaler (``pycls/models/scaler.py``, *Fast and Accurate Model
Scaling*, Dollár et al. 2021) and of EfficientNet's compound scaling presets.  Every rule uses
Python's built-in ``round`` (halves to even), as pycls does.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Sequence

# --------------------------------------------------------------------------------------------
# pycls scaler rounding
# --------------------------------------------------------------------------------------------


def round_depth(d: float, depth: int) -> int:
    """Blocks in a stage after scaling depth by ``d``: ``max(1, round(d * depth))``."""
    return max(1, round(d * depth))


def round_width(w: float, width: int, divisor: int = 8) -> int:
    """Channels after scaling by ``w``, to a multiple of ``divisor`` and at least ``divisor``.

    pycls: ``max(1, round(w * width / 8)) * 8`` (stage widths, and EfficientNet's stem and head).
    """
    return max(1, round(w * width / divisor)) * divisor


def snap_group_width(gw: int) -> int:
    """pycls's group-width snapping: 1 and 2 stay, 3 to 5 become 4, larger go to a multiple of 8."""
    if gw <= 2:
        return gw
    if gw <= 5:
        return 4
    return round(gw / 8) * 8


def round_group_width(g: float, gw: int, bottleneck_width: int | None = None) -> int:
    """Group width after scaling by ``g``: ``max(1, round(g * gw))``, snapped, and (when the
    bottleneck width is given) no larger than it.

    This is the group-width half of pycls's rule; `adjust_block_compatibility` finishes it by
    also moving the block width to a multiple the group width (and bottleneck ratio) divides.
    """
    gw = snap_group_width(max(1, round(g * gw)))
    if bottleneck_width is not None:
        gw = min(gw, max(1, int(bottleneck_width)))
    return gw


def _ratio_numerator(b: float) -> int:
    """The p of b = p/q in lowest terms (b's integer value when b is integral)."""
    return Fraction(b).limit_denominator(1000).numerator


def adjust_block_compatibility(
    widths: Sequence[int], bot_muls: Sequence[float], group_ws: Sequence[int]
) -> tuple[list[int], list[float], list[int]]:
    """Make each stage's (width, bottleneck multiplier, group width) consistent.

    Same rule as pycls (``pycls/models/blocks.py``): the bottleneck width ``v = w * b`` must be a
    multiple of the group width (and of ``b`` when ``b > 1``, so that ``w = v / b`` is an
    integer); the group width is capped at ``v``; ``v`` moves to the nearest such multiple.
    pycls takes ``lcm(g, b)`` for integral ``b > 1``; for a fractional ``b = p/q > 1`` we use
    ``lcm(g, p)``, which keeps ``v / b`` integral too.
    """
    if not len(widths) == len(bot_muls) == len(group_ws):
        raise ValueError("widths, bot_muls and group_ws need one entry per stage")
    out_w: list[int] = []
    out_g: list[int] = []
    for w, b, g in zip(widths, bot_muls, group_ws):
        if w <= 0 or b <= 0 or g <= 0:
            raise ValueError(f"width, bottleneck multiplier and group width must be > 0: {w}, {b}, {g}")
        v = int(max(1, w * b))
        g = int(min(g, v))
        m = math.lcm(g, _ratio_numerator(b)) if b > 1 else g
        v = max(m, int(round(v / m) * m))
        out_w.append(int(v / b))
        out_g.append(g)
    return out_w, list(bot_muls), out_g


def round_resolution(r: float, res: int, divisor: int = 4) -> int:
    """Input resolution after scaling by ``r``: ``round(r * res / 4) * 4``."""
    return round(r * res / divisor) * divisor


# --------------------------------------------------------------------------------------------
# EfficientNet's own compound-scaling presets (B0..B7)
# --------------------------------------------------------------------------------------------

#: preset -> (width multiplier, depth multiplier, resolution), from the EfficientNet paper.
EFFICIENTNET_PRESETS: dict[str, tuple[float, float, int]] = {
    "b0": (1.0, 1.0, 224),
    "b1": (1.0, 1.1, 240),
    "b2": (1.1, 1.2, 260),
    "b3": (1.2, 1.4, 300),
    "b4": (1.4, 1.8, 380),
    "b5": (1.6, 2.2, 456),
    "b6": (1.8, 2.6, 528),
    "b7": (2.0, 3.1, 600),
}


def efficientnet_round_filters(width: int, multiplier: float, divisor: int = 8) -> int:
    """EfficientNet's channel rule: nearest multiple of ``divisor``, never below 90% of exact."""
    exact = width * multiplier
    new = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    if new < 0.9 * exact:
        new += divisor
    return int(new)


def efficientnet_round_repeats(depth: int, multiplier: float) -> int:
    """EfficientNet's depth rule: repeats rounded up."""
    return int(math.ceil(multiplier * depth))
