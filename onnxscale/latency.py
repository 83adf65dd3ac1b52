"""Scaling to a runtime budget (``scale --latency``): the largest model a strategy makes that
runs within the budget on this machine, found with the runtime predictor and settled by
measurement.

The search runs over the flops factor ``f`` the strategy is asked for (``--flops fx``):

1. **predict**: bisect log f until the predicted p50 of the plan at f meets the budget (plans
   are not written: the predictor reads their layers);
2. **measure** the model at that f; if the measured p50 is within ``tolerance`` of the budget,
   done;
3. **refine** by measurement: with measurements on both sides of the budget, interpolate in
   log-log between the nearest two; with one side only, step by the predictor's local slope
   scaled to what was measured; at most ``max_measurements`` models are measured;
4. **refuse**, saying the nearest measured runtimes, when the budget is below the smallest model
   (f at its lower bound) or above the largest, or when two neighbouring factors give the same
   model (the rounding allows nothing between them).

`search` takes the two steps as callables (``predict(f)``, ``measure(f)``), so the logic is
tested against a deterministic fake timer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import OnnxscaleError, UsageError

LOWEST, HIGHEST = 1 / 16, 64.0   # the flops factors the search may ask a strategy for
FLOPS_SLACK = 0.5                # how far a plan's flops may miss the factor asked for


def parse_budget(text: str) -> tuple[str, float]:
    """``25ms``, ``0.5s``, ``2x`` -> ('absolute', ms) or ('ratio', x); refused in one line
    when zero, negative, not a number or without a unit."""
    spec = str(text).strip().lower()
    match = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[-+]?\d+)?)\s*(ms|s|us|x)", spec)
    if not match:
        raise UsageError(f"--latency '{text}': expected a time like 25ms or 0.5s, or a "
                         f"multiple of the base model's measured p50 like 2x")
    value, unit = float(match.group(1)), match.group(2)
    if not (math.isfinite(value) and value > 0):
        raise UsageError(f"--latency '{text}': must be a positive, finite number")
    if unit == "x":
        return "ratio", value
    return "absolute", value * {"ms": 1.0, "s": 1000.0, "us": 0.001}[unit]


def latency_arguments(budgets: str, tolerance: str, provider: str
                      ) -> tuple[list[tuple[str, float]], float]:
    """``--latency``, ``--latency-tolerance`` and the provider of ``scale`` and ``sweep``,
    checked before anything is measured: (budgets, tolerance), or a one-line `UsageError`."""
    from .runtime import locate
    from .runtime.providers import short_name
    from .scaling.job import parse_tolerance, split_list

    route = locate.route(provider)
    if route.kind is None:
        raise UsageError(f"--provider {short_name(provider)}: {route.reason}")
    if route.kind != locate.IN_PROCESS:
        raise UsageError(f"--provider {short_name(provider)}: --latency profiles the models it "
                         f"measures, which needs the provider in this process's onnxruntime "
                         f"(it is reachable only as '{route.kind}')")
    parsed = [parse_budget(item) for item in split_list(budgets, "--latency")]
    try:
        return parsed, parse_tolerance(tolerance)
    except ValueError:
        raise UsageError(f"--latency-tolerance '{tolerance}': give a fraction in (0, 1) or a "
                         f"percentage like 5%") from None


@dataclass
class Measured:
    factor: float
    ms: float
    predicted_ms: float | None = None
    spread_ms: list[float] | None = None    # the p50's 95% interval


@dataclass
class SearchResult:
    budget_ms: float
    chosen: Measured | None
    measurements: list[Measured] = field(default_factory=list)
    predictions: int = 0
    reason: str | None = None               # why nothing was chosen


class Refused(OnnxscaleError):
    """No model of the strategy runs within the budget's tolerance."""


def _bisect(budget: float, predict: Callable[[float], float], low: float, high: float,
            steps: int = 14) -> tuple[float, int]:
    """The factor whose prediction meets ``budget`` (log-scale bisection), and the number of
    predictions made."""
    calls = 0
    lo, hi = math.log(low), math.log(high)
    for _ in range(steps):
        mid = (lo + hi) / 2
        calls += 1
        if predict(math.exp(mid)) > budget:
            hi = mid
        else:
            lo = mid
    return math.exp((lo + hi) / 2), calls


def search(budget_ms: float, predict: Callable[[float], float],
           measure: Callable[[float], Measured], *, tolerance: float = 0.05,
           low: float = LOWEST, high: float = HIGHEST, max_measurements: int = 6
           ) -> SearchResult:
    """Find the factor whose measured p50 is within ``tolerance`` of ``budget_ms``."""
    result = SearchResult(budget_ms, None)
    if predict(low) > budget_ms * (1 + tolerance):
        result.predictions += 1
        factor = low
    elif predict(high) < budget_ms * (1 - tolerance):
        result.predictions += 2
        factor = high
    else:
        result.predictions += 2
        factor, calls = _bisect(budget_ms, predict, low, high)
        result.predictions += calls
    seen: dict[float, Measured] = {}
    for _ in range(max_measurements):
        point = seen.get(round(factor, 6)) or measure(factor)
        if round(factor, 6) not in seen:
            seen[round(factor, 6)] = point
            result.measurements.append(point)
        if abs(point.ms / budget_ms - 1) <= tolerance:
            result.chosen = point
            return result
        next_factor = _next_factor(budget_ms, result.measurements, predict, low, high)
        if next_factor is None or round(next_factor, 6) in seen:
            break
        factor = next_factor
    result.reason = _refusal(budget_ms, result.measurements, low, high)
    return result


def _next_factor(budget: float, points: list[Measured], predict, low: float,
                 high: float) -> float | None:
    below = [p for p in points if p.ms < budget]
    above = [p for p in points if p.ms > budget]
    if below and above:  # interpolate in log-log between the nearest two
        a = max(below, key=lambda p: p.ms)
        b = min(above, key=lambda p: p.ms)
        if a.factor == b.factor:
            return None
        t = (math.log(budget) - math.log(a.ms)) / (math.log(b.ms) - math.log(a.ms))
        f = math.exp(math.log(a.factor) + t * (math.log(b.factor) - math.log(a.factor)))
    else:
        last = points[-1]
        if (last.ms > budget and last.factor <= low) or (last.ms < budget and
                                                         last.factor >= high):
            return None
        step = 1.25
        slope = math.log(max(1e-9, predict(last.factor * step)) /
                         max(1e-9, predict(last.factor))) / math.log(step)
        slope = min(max(slope, 0.3), 2.0)  # runtime grows with flops, at most quadratically
        f = last.factor * (budget / last.ms) ** (1 / slope)
    return min(max(f, low), high)


def _refusal(budget: float, points: list[Measured], low: float, high: float) -> str:
    listed = ", ".join(f"{p.ms:.2f} ms at {p.factor:.3g}x flops"
                       for p in sorted(points, key=lambda p: p.factor))
    if points and all(p.ms > budget for p in points) and min(p.factor for p in points) <= low:
        return (f"the budget {budget:.2f} ms is below the smallest model this strategy makes "
                f"here (measured: {listed})")
    if points and all(p.ms < budget for p in points) and max(p.factor for p in points) >= high:
        return (f"the budget {budget:.2f} ms is above the largest model this strategy makes "
                f"(measured: {listed})")
    return f"no model lands within the tolerance of {budget:.2f} ms (measured: {listed})"


# ---- the job: a strategy, a budget, a model written ------------------------------------------

def reachable_bounds(plan_for: Callable[[float], object]) -> tuple[float, float]:
    """The smallest and largest flops factors the strategy can reach on this model (within
    `LOWEST`..`HIGHEST`), found by halving/doubling from 1."""
    low = 1.0
    for factor in (0.5, 0.25, 0.125, LOWEST):
        try:
            plan_for(factor)
        except OnnxscaleError:
            break
        low = factor
    high = 1.0
    for factor in (2.0, 4.0, 8.0, 16.0, 32.0, HIGHEST):
        try:
            plan_for(factor)
        except OnnxscaleError:
            break
        high = factor
    return low, high


def scale_to_latency(loaded, strategy: str, budget: tuple[str, float], *, provider: str,
                     settings, batch: int, tolerance: float, predictor, store,
                     options, output, progress: Callable[[str], None] | None = None,
                     base_ms: float | None = None) -> dict:
    """Search, measure and write the model of ``strategy`` that meets ``budget`` on
    ``provider``; the result's JSON (measured p50 with its interval, predicted p50, flops,
    params, acts, every measurement), or `Refused`.  ``base_ms``: the base model's p50 when
    already measured (a ratio budget measures it otherwise)."""
    import dataclasses

    from .calibration import profile_model
    from .model import LoadedModel
    from .runtime_features import describe
    from .scaling.job import Job, plan_job, write_job
    from .scaling.pipeline import Planner, apply_plan
    from .scaling.strategy import parse_strategy

    def say(text: str) -> None:
        if progress is not None:
            progress(text)

    shapes = settings.input_shapes
    planner = Planner(loaded.proto, shapes)
    weights = parse_strategy(strategy)
    planned_at: dict[float, object] = {}

    def planned_for(factor: float):
        key = round(factor, 6)
        if key not in planned_at:
            # the flops factor is only the search's handle: the nearest model the strategy
            # makes is taken (depth moves in whole blocks), and measurement decides
            job = Job(strategy=strategy, weights=weights, flops=f"{factor:.6g}x",
                      target=("ratio", factor), tolerance=FLOPS_SLACK)
            planned_at[key] = plan_job(planner, job, options)
        return planned_at[key]

    def timed(model, family: str):
        """Measure (bench's method) and profile the model, both stored: every model the
        search measures teaches the predictor."""
        return profile_model(model, provider, settings, batch=batch, store=store, runs=10,
                             family=family)

    def predict(factor: float) -> float:
        try:
            plan = planned_for(factor).plan
            return predictor.predict(describe(plan.graph, plan.scaled))
        except OnnxscaleError:
            return math.inf if factor > 1 else 0.0

    measured_models: dict[tuple, Measured] = {}

    def measure(factor: float) -> Measured:
        plan = planned_for(factor).plan
        model = (plan.scaled.flops, plan.scaled.params, plan.scaled.acts)
        if model in measured_models:  # two factors, one model: the rounding allows no other
            return dataclasses.replace(measured_models[model], factor=factor)
        say(f"measuring {strategy} at {factor:.3g}x flops")
        outcome = apply_plan(loaded.proto, shapes, plan)
        found = timed(LoadedModel(outcome.model, f"{loaded.source}.{strategy}.{factor:.3g}x",
                                  None), loaded.source)
        measured_models[model] = Measured(factor, found.p50_ms, predict(factor),
                                          found.p50_ci_ms)
        return measured_models[model]

    kind, value = budget
    if kind == "ratio":
        if base_ms is None:   # a grid measures its base model once (``base_ms``)
            say("measuring the base model")
            base_ms = timed(loaded, loaded.source).p50_ms
        budget_ms = value * base_ms
    else:
        budget_ms = value
    low, high = reachable_bounds(planned_for)
    found = search(budget_ms, predict, measure, tolerance=tolerance, low=low, high=high)
    if found.chosen is None:
        raise Refused(f"{strategy}, --latency {value:g}{'x' if kind == 'ratio' else 'ms'}: "
                      f"{found.reason}")
    chosen = planned_for(found.chosen.factor)
    summary = write_job(loaded, shapes, chosen, output, verify=False)
    return summary | {"latency": {
        "budget_ms": budget_ms, "base_ms": base_ms, "provider": provider,
        "measured_ms": found.chosen.ms, "measured_interval_ms": found.chosen.spread_ms,
        "predicted_ms": found.chosen.predicted_ms,
        "flops_factor": chosen.plan.scaled.flops / chosen.plan.base.flops,
        "tolerance": tolerance,
        "measurements": [dataclasses.asdict(m) for m in found.measurements],
        "predictions": found.predictions}}


# ---- a sweep over runtime budgets (``sweep --latency``) ---------------------------------------

def sweep_latency(models: list[str], strategies: list[str], budgets: list[tuple[str, float]],
                  *, provider: str, settings, batch: int, tolerance: float, store,
                  keep: Path | None = None, progress=None):
    """Every (model, strategy, budget): the strategy scaled to the budget (`scale_to_latency`)
    and stored as a sweep cell at the flops factor it landed on, with the budget it was made
    for (``latency_budget``); the base model is measured once per model and stored as the
    sweep's base cell.  A cell already stored for the same budget on this machine is skipped
    (rerun to go on); a budget no model of a strategy meets is counted as failed, with the
    refusal as its reason, and not stored (a rerun tries again)."""
    import shutil
    import tempfile

    from .calibration import profile_model, stored_predictor
    from .model import load_model, model_stem
    from .runtime import fingerprint as fingerprint_mod
    from .runtime import model_hash
    from .scaling.plan import ScaleOptions
    from .sweeps import BASE, SweepResult, cell_options

    predictor = stored_predictor(store, provider, settings, batch=batch)
    machine = fingerprint_mod.collect()["id"]
    options = cell_options(provider, settings)
    result = SweepResult()
    total = len(models) * len(strategies) * len(budgets)
    for spec in models:
        loaded = load_model(spec, seed=settings.seed)
        digest = model_hash(loaded)
        key = {"base_hash": digest, "provider": provider, "batch": batch, "options": options,
               "fingerprint": machine}
        base = store.cell(key | {"strategy": BASE, "factor": 1.0})
        if not base or base.get("status") != "ok":
            found = profile_model(loaded, provider, settings, batch=batch, store=store,
                                  runs=10, family=loaded.source)
            base = _base_cell(key | {"strategy": BASE, "factor": 1.0}, loaded.source, found)
            store.save_cell(base)
        done = {(c["strategy"], c.get("latency_budget")): c
                for c in store.cells(base=digest) if c.get("latency_budget")
                and c["fingerprint"] == machine and c["provider"] == provider
                and c["batch"] == batch and c.get("options") == options}
        for strategy in strategies:
            for kind, value in budgets:
                label = f"{value:g}{'x' if kind == 'ratio' else 'ms'}"
                handled = result.done + result.skipped + result.failed
                if progress is not None:
                    progress(handled, total, f"{loaded.source} {strategy} to {label}")
                if (strategy, label) in done:
                    result.skipped += 1
                    result.add_earlier(done[(strategy, label)])
                    continue
                budget_ms = value * base["p50_ms"] if kind == "ratio" else value
                folder = keep or Path(tempfile.mkdtemp(prefix="onnxscale-sweep."))
                folder.mkdir(parents=True, exist_ok=True)
                stem = model_stem(loaded.source)
                try:
                    made = scale_to_latency(
                        loaded, strategy, ("absolute", budget_ms), provider=provider,
                        settings=settings, batch=batch, tolerance=tolerance,
                        predictor=predictor, store=store,
                        options=ScaleOptions(init="random", seed=settings.seed),
                        output=folder / f"{stem}.{strategy}.{label}.onnx")
                except OnnxscaleError as exc:
                    result.failed += 1
                    result.cells.append({"base": loaded.source, "strategy": strategy,
                                         "latency_budget": label, "status": "failed",
                                         "reason": str(exc)})
                    continue
                finally:
                    if keep is None:
                        shutil.rmtree(folder, ignore_errors=True)
                lat = made["latency"]
                cell = key | {"strategy": strategy, "factor": round(lat["flops_factor"], 6),
                              "base": loaded.source, "status": "ok",
                              "p50_ms": lat["measured_ms"],
                              "flops": made["scaled"]["flops"],
                              "params": made["scaled"]["params"],
                              "acts": made["scaled"]["acts"],
                              "multipliers": made.get("multipliers"),
                              "base_figures": base.get("base_figures"),
                              "latency_budget": label, "latency_budget_ms": budget_ms,
                              "latency": lat,
                              "bench": {"p50_ci_ms": lat["measured_interval_ms"]}}
                store.save_cell(cell)
                result.done += 1
                result.cells.append(cell)
    return result


def _base_cell(key: dict, source: str, found) -> dict:
    """The base model's sweep cell from its profile (p50 by bench's method)."""
    figures = {"flops": found.flops, "params": found.params, "acts": found.acts}
    return key | figures | {"base": source, "status": "ok", "p50_ms": found.p50_ms,
                            "base_figures": figures,
                            "multipliers": {"d": 1, "w": 1, "g": 1, "r": 1},
                            "bench": {"p50_ci_ms": found.p50_ci_ms}}
