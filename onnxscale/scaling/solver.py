"""Hit a flops target with a scaling strategy, despite rounding.

pycls applies the strategy's multipliers for the requested factor s and lives with what the
rounding of depths (whole blocks), widths (multiples of 8) and resolution (multiples of 4) and
the layers that grow only linearly with width give: up to ~11% short of the target.  We instead
search the factor s fed to the strategy: rewrite, measure the real flops of the result, and
correct s by the ratio still missing (flops grow about linearly in s), keeping the closest
result.  The strategy's shape (how s splits into d, w, r) is never changed, only its size.
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
MAX_EVALUATIONS = 8


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
    base = analyze(Graph(proto, input_shapes)).flops
    target = target_flops(kind, value, base)
    s = target / base
    best: Solution | None = None
    history: list[dict] = []
    tried: set[tuple] = set()
    for _ in range(MAX_EVALUATIONS if search else 1):
        multipliers = Multipliers(**strategy_multipliers(weights, s))
        if multipliers.is_identity():
            raise OnnxscaleError(f"flops target {target:,.0f} equals the base model's flops")
        outcome = scale_model(proto, input_shapes, multipliers, options)
        achieved = outcome.scaled.flops
        history.append({"s": s, **multipliers.as_dict(), "flops": achieved})
        candidate = Solution(s, multipliers, outcome, target)
        if best is None or _miss(achieved, target) < _miss(best.outcome.scaled.flops, target):
            best = candidate
        key = (outcome.scaled.flops, outcome.scaled.params)
        if _miss(achieved, target) < math.log1p(TOLERANCE) or key in tried:
            break  # close enough, or the same model again: rounding will not move further
        tried.add(key)
        s *= target / achieved
    assert best is not None
    best.evaluations = history
    return best


def _miss(flops: float, target: float) -> float:
    return abs(math.log(flops / target))
