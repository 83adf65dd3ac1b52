"""Hit a flops target with a scaling strategy, despite rounding -- or refuse, saying why.

pycls applies the strategy's multipliers for the requested factor s and lives with what the
rounding of depths (whole blocks), widths (multiples of 8) and resolution (multiples of 4) and
the layers that grow only linearly with width give: up to ~11% short of the target.  We
instead search the factor s fed to the strategy, on *plans* (`pipeline.Planner`: the scaled
structure with exact complexity, no weight written), and apply only the winner:

1. bracket the target: from s = target / base, step s by the ratio still missing, growing the
   step while flops barely move (a strategy whose width is already at its floor, say);
2. bisect s (in log space) between the closest plans under and over the target;
3. if rounding still leaves a gap (a whole block or 4 more pixels can jump over the target),
   close it with width alone, the finest-grained dimension (with the group width held at
   its value or a neighbour's where wide groups make w and g jump together);
4. refuse, before anything is written, when no plan lands within the tolerance: the target is
   below the smallest model the strategy makes (every stage at one block, every width at the
   divisor), above the largest within the size limit (``--max-size``), or between two steps.

The strategy's shape (how s splits into d, w, r) is never changed, only its size, except for
step 3's width-only correction, which only strategies that scale width get.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from ..errors import OnnxscaleError, UsageError
from .pipeline import Planner
from .plan import Multipliers, Plan, ScaleOptions, format_bytes
from .strategy import multipliers as strategy_multipliers

TOLERANCE = 0.015  # a plan further than this from the target is refused
AIM = 0.005        # the search stops once a plan is this close
MAX_BRACKET = 40   # evaluations to bracket the target (or find the strategy's floor/ceiling)
MAX_BISECT = 30    # evaluations to bisect the bracket
REFINE_EVALUATIONS = 12
EXTRA_REFINES = 3  # further starting plans for width refinement when the closest two fail
GROUP_WIDTH_STEPS = (1.0, 0.95, 1.05, 0.9, 1.1)  # g held here while w alone closes the gap


class Unreachable(UsageError):
    """The strategy cannot reach the target within the tolerance on this model."""


@dataclass
class Solution:
    s: float
    plan: Plan
    target_flops: float
    evaluations: list[dict] = field(default_factory=list)

    unavailable: dict[str, str] = field(default_factory=dict)  # dimension -> why not scaled

    @property
    def multipliers(self) -> Multipliers:
        return self.plan.multipliers

    @property
    def error(self) -> float:
        return self.plan.scaled.flops / self.target_flops - 1

    def summary(self) -> dict:
        return {"s": self.s, "target_flops": int(round(self.target_flops)),
                "achieved_flops": self.plan.scaled.flops, "error": self.error,
                "unavailable": self.unavailable, "evaluations": self.evaluations}


def target_flops(kind: str, value: float, base_flops: int) -> float:
    if base_flops <= 0:
        raise OnnxscaleError("the model has no counted flops (no Conv/Gemm/MatMul): "
                             "cannot scale to a flops target")
    target = value * base_flops if kind == "ratio" else value
    if not math.isfinite(target) or target <= 0:
        raise OnnxscaleError(f"flops target {value:g} is not a finite positive number")
    return target


def solve(proto: onnx.ModelProto | None, input_shapes: dict[str, list[int]],
          weights: dict[str, float], kind: str, value: float, options: ScaleOptions,
          search: bool = True, planner: Planner | None = None,
          name: str = "the strategy", tolerance: float = TOLERANCE,
          strict: bool = False) -> Solution:
    """The plan of strategy ``weights`` whose flops come closest to the target (``kind``
    'ratio': ``value`` times the base flops; 'absolute': ``value`` flops).

    Give ``planner`` to reuse one hollow base model across many targets (grids).  With
    ``search=False`` this is pycls's behaviour: one plan at s = target / base, accepted
    whatever its error.  Otherwise a plan further than ``tolerance`` (relative) raises
    `Unreachable`.
    """
    planner = planner or Planner(proto, input_shapes)
    target = target_flops(kind, value, planner.base.flops)
    if abs(math.log(target / planner.base.flops)) < 1e-12:
        raise OnnxscaleError(f"flops target {target:,.0f} equals the base model's flops")
    searcher = _Search(planner, weights, target, options, name, tolerance)
    try:
        return _run(searcher, search)
    except OnnxscaleError:
        if searcher.best is not None:
            raise
        kept, unavailable = _adapt(planner, weights, options, name, strict)
        if not unavailable:
            raise
    solution = _run(_Search(planner, kept, target, options, name, tolerance), search)
    solution.unavailable = unavailable
    return solution


def _adapt(planner: Planner, weights: dict[str, float], options: ScaleOptions, name: str,
           strict: bool) -> tuple[dict[str, float], dict[str, str]]:
    """When no plan exists at all: the strategy without the dimensions this model cannot
    scale (the rest keep their proportions), and why each was dropped."""
    unavailable = planner.unavailable("".join(k for k in "dwr" if weights[k]), options)
    if not unavailable:
        return weights, {}
    reasons = "; ".join(f"{k}: {why}" for k, why in unavailable.items())
    if strict:
        raise UsageError(f"{name} scales {', '.join(unavailable)}, which this model cannot "
                         f"({reasons}); without --strict the other dimensions are scaled")
    kept = dict(weights, **{k: 0.0 for k in unavailable})
    if "w" in unavailable:
        kept["g"] = 0.0
    if not any(kept[k] for k in "dwr"):
        raise UsageError(f"{name}: this model can scale none of its dimensions ({reasons})")
    return kept, unavailable


def _run(searcher: "_Search", search: bool) -> Solution:
    """The search, or pycls's single plan at s = target / base (``search=False``)."""
    if search:
        return searcher.run()
    s = searcher.target / searcher.planner.base.flops
    plan = searcher.evaluate(s)
    if plan is None:
        raise searcher.failure or OnnxscaleError("no plan")
    return Solution(s, plan, searcher.target, searcher.history)


class _Search:
    """One search for one target; see the module docstring for the steps."""

    def __init__(self, planner: Planner, weights: dict[str, float], target: float,
                 options: ScaleOptions, name: str, tolerance: float = TOLERANCE):
        self.planner, self.weights, self.target, self.options = planner, weights, target, options
        self.name, self.tolerance = name, tolerance
        self.history: list[dict] = []
        self.best: Solution | None = None
        self.below: tuple[float, int] | None = None   # largest s whose plan is under the target
        self.above: tuple[float, int] | None = None   # smallest s whose plan is over it
        self.too_large: float | None = None           # smallest s refused (size, or failed)
        self.invalid: float | None = None             # largest s below which plans fail
        self.failure: OnnxscaleError | None = None
        self.plans = 0

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, s: float, multipliers: Multipliers | None = None,
                 refine: str | None = None) -> Plan | None:
        """Plan at factor ``s`` (or at explicit multipliers); None when no plan exists there."""
        from .pipeline import TooLarge

        m = multipliers or Multipliers(**strategy_multipliers(self.weights, s))
        row = {"s": s, **m.as_dict()}
        if refine:
            row["refine"] = refine
        self.plans += 1
        try:
            plan = self.planner.plan(m, self.options)
        except TooLarge as exc:
            self.too_large = s if self.too_large is None else min(self.too_large, s)
            self.failure = exc
            self.history.append({**row, "flops": None, "refused": str(exc)})
            return None
        except OnnxscaleError as exc:  # e.g. an input size the model cannot take
            if s < self.target / self.planner.base.flops:
                self.invalid = s if self.invalid is None else max(self.invalid, s)
            else:
                self.too_large = s if self.too_large is None else min(self.too_large, s)
            self.failure = exc
            self.history.append({**row, "flops": None, "refused": str(exc)})
            return None
        flops = plan.scaled.flops
        self.history.append({**row, "flops": flops})
        if self.best is None or self._miss(flops) < self._miss(self.best.plan.scaled.flops):
            self.best = Solution(s, plan, self.target)
        if refine is None:
            if flops < self.target and (self.below is None or s > self.below[0]):
                self.below = (s, flops)
            if flops >= self.target and (self.above is None or s < self.above[0]):
                self.above = (s, flops)
        return plan

    def _miss(self, flops: float) -> float:
        return abs(math.log(flops / self.target))

    def _done(self) -> bool:
        return self.best is not None and self._miss(self.best.plan.scaled.flops) < \
            math.log1p(AIM)

    # ---- the search -----------------------------------------------------------------------
    def run(self) -> Solution:
        self._bracket(self.target / self.planner.base.flops)
        if not self._done() and self.below and self.above:
            self._bisect()
        # width closes the gap only for strategies that scale width: a pure d (or r, or dr)
        # strategy stays pure, and is refused when its steps are too coarse for the target
        if self.weights["w"] > 0:
            for s, flops in self._refine_starts():
                if self._done():
                    break
                self._refine_width(s, flops)
        if self.weights["w"] > 0 and self.weights["g"] > 0 and not self._done():
            self._refine_group_width()
        if self.weights["w"] > 0 and self.weights["r"] > 0 and not self._done():
            self._refine_resolution()
        best = self.best
        if best is None or self._miss(best.plan.scaled.flops) >= math.log1p(self.tolerance):
            raise Unreachable(self._why())
        best.evaluations = self.history
        return best

    def _bracket(self, s: float) -> None:
        """Step s until plans lie on both sides of the target, or a wall is met."""
        push, last = 1.0, None
        for _ in range(MAX_BRACKET):
            plan = self.evaluate(s)
            if self._done() or (self.below and self.above):
                return
            if plan is None:
                s = self._retreat(s)
                if s is None:
                    return
                continue
            flops = plan.scaled.flops
            if last is not None and last[1] == flops:
                push *= 4      # a plateau: the dimensions that still move are coarse or at a floor
            elif last is not None:
                moved = abs(math.log(flops / last[1]))
                wanted = abs(math.log(self.target / last[1]))
                push = push * 2 if moved < 0.5 * wanted else push
            last = (s, flops)
            step = push * math.log(self.target / flops)
            s = s * math.exp(max(-30.0, min(30.0, step)))
            s = self._inside_walls(s)
            if s is None or s == last[0]:
                return

    def _retreat(self, s: float) -> float | None:
        """After a failed plan at ``s``: halfway (in log s) back toward the nearest valid plan."""
        valid = [row["s"] for row in self.history if row.get("flops") is not None
                 and "refine" not in row]
        if not valid:  # nothing planned yet: halve the way (in log s) back to the base model
            return math.sqrt(s) if abs(math.log(s)) > 1e-3 else None
        nearest = min(valid, key=lambda v: abs(math.log(v / s)))
        if abs(math.log(nearest / s)) < 1e-4:
            return None
        return math.sqrt(nearest * s)

    def _inside_walls(self, s: float) -> float | None:
        """Keep s strictly between the walls met so far (bisecting toward a wall)."""
        if self.too_large is not None and s >= self.too_large:
            low = self.below[0] if self.below else s
            if self.too_large / low < 1 + 1e-4:
                return None
            s = math.sqrt(low * self.too_large) if low < self.too_large else self.too_large / 2
        if self.invalid is not None and s <= self.invalid:
            high = self.above[0] if self.above else s
            if high / self.invalid < 1 + 1e-4:
                return None
            s = math.sqrt(high * self.invalid) if high > self.invalid else self.invalid * 2
        if s < 1e-300 or s > 1e300:
            return None
        return s

    def _bisect(self) -> None:
        """Bisect log s between the closest plans under and over the target.

        Stops early when two bisections in a row barely move either end: one rounding step
        (a whole block, typically) separates the two sides, and width closes that gap
        faster (`_refine_width`)."""
        stale = 0
        for _ in range(MAX_BISECT):
            if self._done() or self.above[0] / self.below[0] < 1 + 1e-3:
                return
            ends = (self.below[1], self.above[1])
            plan = self.evaluate(math.sqrt(self.below[0] * self.above[0]))
            if plan is None:
                return
            near = min(abs(math.log(plan.scaled.flops / end)) for end in ends)
            stale = stale + 1 if near < math.log1p(self.tolerance) else 0
            if stale >= 2:
                return

    def _refine_starts(self) -> list[tuple[float, int]]:
        """Where width refinement starts: the closest plans under and over the target, then
        up to `EXTRA_REFINES` other plans of the strategy's path, closest first (another depth
        or input size can leave width a finer step to the target)."""
        starts = [side for side in (self.below, self.above) if side is not None]
        others = sorted(((row["s"], row["flops"]) for row in self.history
                         if row.get("flops") is not None and "refine" not in row),
                        key=lambda item: self._miss(item[1]))
        for item in others:
            if len(starts) >= 2 + EXTRA_REFINES:
                break
            if all(item[1] != start[1] for start in starts):
                starts.append(item)
        return starts

    def _refine_group_width(self) -> None:
        """Grouped convs with wide groups (RegNet's 64 and more) keep every bottleneck width a
        multiple of the group width, so w and g moving together jump a whole group per stage
        at once (timm's RegNetV-040: -3.0% to +2.8% with nothing between).  Holding g at its
        value or a neighbouring one and moving w alone gives a finer grid."""
        for s, _ in [side for side in (self.below, self.above) if side is not None]:
            start = strategy_multipliers(self.weights, s)
            for factor in GROUP_WIDTH_STEPS:
                if self._done():
                    return
                m = dict(start, g=start["g"] * factor)
                plan = self.evaluate(s, Multipliers(**m), refine="group width")
                if plan is not None:
                    self._refine_width(s, plan.scaled.flops, start=m, move_g=False)

    def _refine_resolution(self) -> None:
        """When width alone moves in steps too coarse (every layer of a DenseNet has the same
        width, so they all jump at once), try the neighbouring input sizes (one
        step of the model's size grid either way) of the closest plans, each refined by width
        again: a finer two-dimensional grid of reachable flops."""
        finest = self.planner.sizes(self.options).smallest_step()
        if finest is None:
            return
        step = finest[0] / finest[1]
        for s, _ in [side for side in (self.below, self.above) if side is not None]:
            start = strategy_multipliers(self.weights, s)
            for shift in (1, -1, 2, -2):
                if self._done():
                    return
                m = Multipliers(**dict(start, r=start["r"] + shift * step))
                plan = self.evaluate(s, m, refine="resolution")
                if plan is not None:
                    self._refine_width(s, plan.scaled.flops, start=m.as_dict())

    def _refine_width(self, s: float, flops: int, start: dict | None = None,
                      move_g: bool = True) -> None:
        """Close the last gap with width alone, the finest-grained dimension.

        A depth or resolution step (a whole block, 4 more pixels that make every later feature
        map one pixel larger) can jump right over the target.  From the plan at ``s`` (the
        closest under the target, then the closest over it), only w (and g with it) moves
        until the target is met: a secant in log-log space (flops ~ w^e, e between 1 for
        depthwise-heavy nets and 2), kept inside the bracket once there is one.
        """
        start = start or strategy_multipliers(self.weights, s)
        point = (1.0, float(flops))
        low, high = (point, None) if flops < self.target else (None, point)
        last, exponent = point, 2.0
        for _ in range(REFINE_EVALUATIONS):
            if low is not None and high is not None:
                span = math.log(high[1] / low[1])
                t = math.log(self.target / low[1]) / span if span > 0 else 0.5
                factor = low[0] * (high[0] / low[0]) ** min(0.9, max(0.1, t))
            else:
                factor = last[0] * (self.target / last[1]) ** (1 / exponent)
            m = Multipliers(**dict(start, w=start["w"] * factor,
                                   g=start["g"] * factor if self.weights["g"] and move_g
                                   else start["g"]))
            plan = self.evaluate(s, m, refine="width")
            if plan is None or self._done():
                return
            new = (factor, float(plan.scaled.flops))
            if new[1] != last[1] and new[0] != last[0]:
                exponent = min(3.0, max(0.5, math.log(new[1] / last[1]) /
                                        math.log(new[0] / last[0])))
            last = new
            if new[1] < self.target:
                low = new if low is None or new[0] > low[0] else low
            else:
                high = new if high is None or new[0] < high[0] else high
            if low is not None and high is not None and high[0] / low[0] < 1 + 1e-4:
                return

    # ---- refusing -------------------------------------------------------------------------
    def _why(self) -> str:
        base = self.planner.base.flops
        want = f"the target {_flops(self.target)} (x{self.target / base:.4g})"
        made = [row["flops"] for row in self.history if row.get("flops") is not None]
        if not made:
            reason = f": {self.failure}" if self.failure else ""
            return f"{self.name} cannot reach {want} on this model{reason}"
        if self.above is None and self.below is not None:
            largest = max(made)
            limit = ""
            if self.too_large is not None:
                limit = (f"; larger ones need more than --max-size "
                         f"{format_bytes(self.options.max_bytes)}"
                         if isinstance(self.failure, UsageError) else f" ({self.failure})")
            return (f"{self.name} cannot reach {want}: the largest model it makes here has "
                    f"{_flops(largest)} (x{largest / base:.4g}){limit}")
        if self.below is None:
            smallest = min(made)
            floors = [text for key, text in (
                ("d", "every stage at one block"), ("w", "widths near --divisor"),
                ("r", "the smallest input the model accepts")) if self.weights[key]]
            return (f"{self.name} cannot reach {want}: the smallest model it makes here has "
                    f"{_flops(smallest)} (x{smallest / base:.4g}: {', '.join(floors)})")
        under = max(f for f in made if f < self.target)
        over = min(f for f in made if f >= self.target)
        return (f"{self.name} cannot reach {want} within {self.tolerance:.1%}: rounding makes "
                f"the nearest models {_flops(under)} ({under / self.target - 1:+.1%}) and "
                f"{_flops(over)} ({over / self.target - 1:+.1%}); try another target"
                f"{', --divisor 4' if self.weights['w'] else ''} or a larger --tolerance")


def _flops(value: float) -> str:
    for unit, size in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= size:
            return f"{value / size:.4g} {unit}flops"
    return f"{value:.4g} flops"
