"""Scaling math that never touches a graph.

Rounding rules of pycls's model scaler (``pycls/models/scaler.py``, *Fast and Accurate Model
Scaling*, Dollár et al. 2021) and of EfficientNet's compound scaling presets.  Every rule uses
Python's built-in ``round`` (halves to even), as pycls does.
"""

from __future__ import annotations

import math
import re
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


#: how a scaled width or depth is rounded: pycls's scaler, or EfficientNet's presets
ROUNDINGS = ("pycls", "efficientnet")


def stage_depth(d: float, depth: int, rounding: str = "pycls") -> int:
    """Blocks of a stage of ``depth`` blocks scaled by ``d``, by the given rounding rule."""
    if rounding == "efficientnet":
        return max(1, efficientnet_round_repeats(depth, d))
    return round_depth(d, depth)


def scaled_width(w: float, width: int, divisor: int = 8, rounding: str = "pycls") -> int:
    """Channels of a group of ``width`` scaled by ``w``, by the given rounding rule."""
    if rounding == "efficientnet":
        return efficientnet_round_filters(width, w, divisor)
    return round_width(w, width, divisor)


def preset_multipliers(name: str, base_resolution: int = 224) -> dict[str, float]:
    """EfficientNet preset ``efficientnet-b3`` (or ``b3``) -> multipliers relative to B0.

    Resolution is relative to B0's 224, so a 224 base gets the preset's exact size."""
    key = name.lower().removeprefix("efficientnet-").removeprefix("efficientnet_")
    if key not in EFFICIENTNET_PRESETS:
        known = ", ".join(f"efficientnet-{k}" for k in EFFICIENTNET_PRESETS if k != "b0")
        raise ValueError(f"unknown preset '{name}': use one of {known}")
    w, d, res = EFFICIENTNET_PRESETS[key]
    return {"d": d, "w": w, "g": 1.0, "r": res / base_resolution}


# --------------------------------------------------------------------------------------------
# Strategies: which share of a flops increase goes to depth, width, group width, resolution
# --------------------------------------------------------------------------------------------

#: Named strategies beyond letter strings: the paper's fast compound scaling (alpha = 0.8).
STRATEGY_ALIASES = {"dWr": "d1_w8_g8_r1"}


def parse_strategy(text: str) -> dict[str, float]:
    """pycls strategy string -> weights ``{'d', 'w', 'g', 'r'}``.

    ``dw``, ``dwr`` ...: each named letter (of d, w, g, r) gets weight 1; ``d1_w8_g8_r1``:
    explicit weights; ``dWr`` is ``d1_w8_g8_r1`` (fast compound scaling, alpha = 0.8).
    """
    text = text.strip()
    spec = STRATEGY_ALIASES.get(text, text)
    weights = {"d": 0.0, "w": 0.0, "g": 0.0, "r": 0.0}
    if re.fullmatch(r"[dwgr]+", spec) and len(set(spec)) == len(spec):
        for letter in spec:
            weights[letter] = 1.0
    elif re.fullmatch(r"[dwgr]\d+(\.\d+)?(_[dwgr]\d+(\.\d+)?)*", spec):
        for part in spec.split("_"):
            if weights[part[0]]:
                raise ValueError(f"strategy '{text}' names '{part[0]}' twice")
            weights[part[0]] = float(part[1:])
    else:
        raise ValueError(f"unknown strategy '{text}': use letters from d, w, g, r (dw, dwr), "
                         f"explicit weights (d1_w8_g8_r1) or dWr")
    if weights["d"] + weights["w"] + weights["r"] <= 0:
        raise ValueError(f"strategy '{text}' scales none of depth, width or resolution")
    return weights


def alpha_weights(alpha: float) -> dict[str, float]:
    """Fast compound scaling with parameter alpha: e_d = (1-a)/2, e_w = a/2, e_r = (1-a)/4.

    As pycls weights (summing to 1): d = r = (1-a)/2, w = a; g follows w, as in dWr.
    alpha = 0.8 gives d1_w8_r1 (dWr), alpha = 1/3 gives dwr, alpha = 1 pure width.
    """
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    return {"d": (1 - alpha) / 2, "w": alpha, "g": alpha, "r": (1 - alpha) / 2}


def multipliers(weights: dict[str, float], s: float) -> dict[str, float]:
    """Multipliers for an ``s``-fold flops increase (docs/concepts.md, Strategies).

    With sw = W_d + W_w + W_r: d = s^(W_d/sw), w = s^(W_w/(2 sw)), g = s^(W_g/(2 sw)),
    r = s^(W_r/(2 sw)); flops ~ d w^2 r^2 = s.
    """
    total = weights["d"] + weights["w"] + weights["r"]
    return {"d": s ** (weights["d"] / total), "w": s ** (weights["w"] / (2 * total)),
            "g": s ** (weights["g"] / (2 * total)), "r": s ** (weights["r"] / (2 * total))}


def exponents(weights: dict[str, float]) -> dict[str, float]:
    """How params and acts grow: params ~ s^(e_d + 2 e_w), acts ~ s^(e_d + e_w + 2 e_r)."""
    total = weights["d"] + weights["w"] + weights["r"]
    e_d, e_w, e_r = (weights["d"] / total, weights["w"] / (2 * total),
                     weights["r"] / (2 * total))
    return {"d": e_d, "w": e_w, "r": e_r, "params": e_d + 2 * e_w, "acts": e_d + e_w + 2 * e_r}


_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_flops(text: str) -> tuple[str, float]:
    """``2x`` -> ('ratio', 2.0); ``4G``, ``800M``, ``1.5GF``, ``4e9`` -> ('absolute', flops)."""
    spec = text.strip().lower().replace("_", "").replace(",", "")
    match = re.fullmatch(r"x?(\d+(?:\.\d*)?|\.\d+)x?", spec)
    if match and ("x" in spec):
        value = float(match.group(1))
        kind = "ratio"
    else:
        match = re.fullmatch(r"(\d+(?:\.\d*)?(?:e\d+)?)\s*([kmgt]?)(?:f|flops)?", spec)
        if not match:
            raise ValueError(f"--flops '{text}': expected a ratio like 2x or a count like "
                             f"4G, 800M, 1.5e9")
        value = float(match.group(1)) * _UNITS[match.group(2)]
        kind = "absolute"
    if value <= 0:
        raise ValueError(f"--flops '{text}' must be positive")
    return kind, value
