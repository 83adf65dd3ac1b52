"""Scale jobs as ``onnxscale scale`` runs them: one model, or a grid of strategies x targets.

A job is *what* to make -- explicit multipliers, a strategy with a flops target, or an
EfficientNet preset -- planned on one shared `Planner` (the base model is loaded, made hollow
and analyzed once, however many jobs), then written: apply the plan with real weights, stamp,
save atomically, check, optionally verify.  Planning every job before writing any means a grid
with an unreachable cell is refused before a single file is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from ..errors import OnnxscaleError
from .pipeline import (Planner, apply_plan, check, check_base, compare_outputs,
                       default_output, stamp)
from .plan import Multipliers, Plan, ScaleOptions
from .solver import TOLERANCE, Solution, solve
from .strategy import preset_multipliers


@dataclass
class Job:
    """One model to make.  Exactly one of ``multipliers``, ``strategy``, ``preset`` is set."""

    multipliers: Multipliers | None = None
    strategy: str | None = None              # its name as the user wrote it (dWr, alpha=0.5)
    weights: dict[str, float] | None = None  # the strategy's pycls weights
    flops: str | None = None                 # the target as written (2x, 4G)
    target: tuple[str, float] | None = None  # parsed: ('ratio', 2.0) or ('absolute', 4e9)
    preset: str | None = None
    search: bool = True
    tolerance: float = TOLERANCE
    strict: bool = False                     # refuse when a strategy dimension is unavailable

    @property
    def label(self) -> str:
        if self.preset:
            return self.preset
        if self.strategy:
            return f"{self.strategy} {self.flops}"
        return ", ".join(f"{k}={v:g}" for k, v in self.multipliers.as_dict().items() if v != 1)


@dataclass
class Planned:
    job: Job
    plan: Plan
    solution: Solution | None = None


def plan_job(planner: Planner, job: Job, options: ScaleOptions) -> Planned:
    """The plan of one job (no weight is written)."""
    if job.preset:
        res = _base_resolution(planner)
        m = Multipliers(**preset_multipliers(job.preset, res))
        preset_options = dataclasses.replace(options, rounding="efficientnet")
        return Planned(job, planner.plan(m, preset_options))
    if job.strategy:
        kind, value = job.target
        solution = solve(None, planner.input_shapes, job.weights, kind, value, options,
                         search=job.search, planner=planner, name=job.strategy,
                         tolerance=job.tolerance, strict=job.strict)
        return Planned(job, solution.plan, solution)
    return Planned(job, planner.plan(job.multipliers, options))


def _base_resolution(planner: Planner) -> int:
    """The base model's input height (presets are relative to EfficientNet-B0's 224)."""
    for dims in planner.graph.inputs.values():
        if len(dims) == 4:
            return int(dims[2] if dims[1] <= 4 or dims[3] > 4 else dims[1])
    raise OnnxscaleError("--preset needs a model with an image input (rank 4)")


def grid_output(source: str, job: Job, folder: Path) -> Path:
    """``folder/MODEL.dWr.4x.onnx`` (or ``MODEL.efficientnet-b2.onnx``)."""
    stem = source[4:] if source.startswith("zoo:") else Path(source).name
    stem = stem[:-5] if stem.endswith(".onnx") else stem
    tag = job.preset or f"{job.strategy}.{job.flops}".replace("/", "_").replace("=", "")
    return folder / f"{stem}.{tag}.onnx"


def write_job(loaded, shapes: dict[str, list[int]], planned: Planned, output: Path | None,
              verify: bool) -> dict:
    """Apply a plan with real weights, write it atomically, check it; the ``--json`` object."""
    from ..model import remove_model, save_model

    plan = planned.plan
    outcome = apply_plan(loaded.proto, shapes, plan)
    if verify and outcome.inputs != outcome.base.inputs:
        raise OnnxscaleError("--verify runs both models on the same inputs, but the scaled "
                             "model's input size differs (--resolution, --batch, or a "
                             "strategy or preset that scales resolution)")
    scaled = stamp(outcome, loaded.source, plan.multipliers, plan.options)
    target = output or default_output(loaded.source, plan.multipliers, plan.options)
    save_model(scaled, target, protect=loaded.path)
    outcome.model = scaled = None  # checked from the file: one model in memory at a time
    try:
        check(str(target))
    except OnnxscaleError:
        remove_model(target)  # an invalid model is not an output
        check_base(loaded.proto, loaded.source)
        raise
    difference = None
    if verify:
        difference = compare_outputs(loaded.proto, str(target), outcome.base.inputs)
    result = summary(str(target), outcome, plan.multipliers, difference)
    job = planned.job
    if planned.solution is not None:
        result["strategy"] = {"name": job.strategy, "weights": job.weights,
                              "flops": job.flops, **planned.solution.summary()}
        for letter, why in planned.solution.unavailable.items():
            result["notes"].insert(0, f"{job.strategy}: {letter} cannot be scaled on this "
                                      f"model ({why}); the other dimensions keep the "
                                      f"strategy's proportions (--strict refuses instead)")
    if job.preset:
        result["preset"] = job.preset
    return result


def summary(output: str, outcome, multipliers: Multipliers, difference) -> dict:
    """The ``scale --json`` object of one written model."""

    def figures(report):
        return {"flops": report.flops, "params": report.params, "acts": report.acts,
                "inputs": report.inputs}

    details = {edit.kind: edit.details for edit in outcome.edits}
    result = {"output": output, "base": figures(outcome.base), "scaled": figures(outcome.scaled),
              "multipliers": multipliers.as_dict(), "exact": outcome.exact,
              "groups": details.get("width", {}).get("groups", []),
              "stages": details.get("depth", {}).get("stages", []),
              "notes": [note for edit in outcome.edits for note in edit.notes],
              "edits": [{"kind": e.kind, "exact": e.exact, **e.details} for e in outcome.edits]}
    if difference is not None:
        result["verified_rel_l2"] = difference
    return result
