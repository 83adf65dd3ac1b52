"""Hit a flops target with a scaling strategy, despite rounding.

pycls applies the strategy's multipliers for the requested factor s and lives with what the
rounding of depths (whole blocks), widths (multiples of 8) and resolution (multiples of 4) and
the layers that grow only linearly with width give: up to ~11% short of the target.  We instead
search the factor s fed to the strategy: rewrite, measure the real flops of the result,
correct s by the ratio still missing (flops grow about linearly in s) until the target is
bracketed, then bisect, keeping the closest result.  The strategy's shape (how s splits into d, w, r) is never changed, only its size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from ..complexity import analyze
from ..errors import OnnxscaleError
from ..graph import Graph
from .pipeline import Multipliers, ScaleOptions, ScaleOutcome, scale_model
from .strategy import multipliers as strategy_multipliers

TOLERANCE = 0.01   # stop once within 1% of the target
MAX_EVALUATIONS = 12
REFINE_EVALUATIONS = 8


@dataclass
class Solution:
    s: float
    multipliers: Multipliers
    outcome: ScaleOutcome
    target_flops: float
    evaluations: list[dict] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        return self.outcome.scaled.flops / self.target_flops

    def summary(self) -> dict:
        return {"s": self.s, "target_flops": int(round(self.target_flops)),
                "achieved_flops": self.outcome.scaled.flops,
                "error": self.outcome.scaled.flops / self.target_flops - 1,
                "evaluations": self.evaluations}


def target_flops(kind: str, value: float, base_flops: int) -> float:
    if base_flops <= 0:
        raise OnnxscaleError("the model has no counted flops (no Conv/Gemm/MatMul): "
                             "cannot scale to a flops target")
    return value * base_flops if kind == "ratio" else value


def solve(proto: onnx.ModelProto, input_shapes: dict[str, list[int]],
          weights: dict[str, float], kind: str, value: float, options: ScaleOptions,
          search: bool = True) -> Solution:
    """Scale ``proto`` with strategy ``weights`` so its flops come closest to the target
    (``kind`` 'ratio': ``value`` times the base flops; 'absolute': ``value`` flops).

    With ``search=False`` this is pycls's behaviour: one rewrite at s = target / base.
    """
    graph = Graph(proto, input_shapes)
    prepared = graph, analyze(graph)
    base = prepared[1].flops
    target = target_flops(kind, value, base)
    s = target / base
    best: Solution | None = None
    history: list[dict] = []
    below: tuple[float, int] | None = None  # (s, flops) closest under the target
    above: tuple[float, int] | None = None  # and over it
    for _ in range(MAX_EVALUATIONS if search else 1):
        multipliers = Multipliers(**strategy_multipliers(weights, s))
        if multipliers.is_identity():
            raise OnnxscaleError(f"flops target {target:,.0f} equals the base model's flops")
        outcome = scale_model(proto, input_shapes, multipliers, options, prepared)
        achieved = outcome.scaled.flops
        history.append({"s": s, **multipliers.as_dict(), "flops": achieved})
        if best is None or _miss(achieved, target) < _miss(best.outcome.scaled.flops, target):
            best = Solution(s, multipliers, outcome, target)
        if _miss(achieved, target) < math.log1p(TOLERANCE):
            break
        if achieved < target:
            below = (s, achieved) if below is None or s > below[0] else below
        else:
            above = (s, achieved) if above is None or s < above[0] else above
        s = _next_s(s, achieved, target, below, above)
        if s is None:
            break
    assert best is not None
    if search and _miss(best.outcome.scaled.flops, target) >= math.log1p(TOLERANCE) and below:
        best = _refine_width(proto, input_shapes, weights, below, target, options, best,
                             history, prepared)
    best.evaluations = history
    return best


def _next_s(s: float, achieved: int, target: float, below, above) -> float | None:
    """Extrapolate while the target is on one side; bisect (in log s) once it is bracketed.

    Flops are a step function of s (whole blocks, multiples of 8 channels, of 4 pixels): a
    secant step can jump over many steps, bisection finds the one closest to the target.
    """
    if below is None or above is None:
        return s * target / achieved
    if above[0] / below[0] < 1.01:
        return None  # a single step lies between them: rounding allows no closer on this path
    return math.sqrt(below[0] * above[0])


def _refine_width(proto, input_shapes, weights, below, target, options, best, history,
                  prepared):
    """Close the last gap with width alone, the finest-grained dimension.

    A depth or resolution step (a whole block, 4 more pixels that make every later feature map
    one pixel larger) can jump right over the target.  Starting from the largest model under
    the target on the strategy's path, only w (and g with it) grows until the target is met.
    """
    s, low_flops = below
    start = strategy_multipliers(weights, s)
    low, high = 1.0, None
    for _ in range(REFINE_EVALUATIONS):
        # flops ~ w^2: extrapolate from the model under the target, then bisect
        factor = low * math.sqrt(target / low_flops) if high is None else math.sqrt(low * high)
        m = dict(start, w=start["w"] * factor,
                 g=start["g"] * factor if weights["g"] else start["g"])
        multipliers = Multipliers(**m)
        outcome = scale_model(proto, input_shapes, multipliers, options, prepared)
        achieved = outcome.scaled.flops
        history.append({"s": s, **multipliers.as_dict(), "flops": achieved,
                        "refine": "width"})
        if _miss(achieved, target) < _miss(best.outcome.scaled.flops, target):
            best = Solution(s, multipliers, outcome, target)
        if _miss(achieved, target) < math.log1p(TOLERANCE):
            break
        if achieved < target:
            low, low_flops = factor, achieved
        else:
            high = factor
        if high is not None and high / low < 1 + 1e-4:
            break
    return best


def _miss(flops: float, target: float) -> float:
    return abs(math.log(flops / target))
