"""Scale jobs as ``onnxscale scale`` runs them: one model, or a grid of strategies x targets.

A job is *what* to make -- explicit multipliers, a strategy with a flops target, or an
EfficientNet preset -- planned on one shared `Planner` (the base model is loaded, made hollow
and analyzed once, however many jobs), then written: apply the plan with real weights, stamp,
save atomically, check, optionally verify.  Planning every job before writing any means a grid
with an unreachable cell is refused before a single file is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from .. import external
from ..errors import OnnxscaleError, UsageError
from ..model import model_stem
from .pipeline import (Planner, apply_plan, check, check_base, compare_outputs,
                       default_output, stamp)
from .plan import Multipliers, Plan, ScaleOptions
from .resolution.resize import spatial_axes
from .solver import TOLERANCE, Solution, solve
from .strategy import alpha_weights, parse_flops, parse_strategy, preset_multipliers


SPILL_MODEL_BYTES = 512 << 20  # scaled models with more weights than this rewrite via disk


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


def make_jobs(strategy: str | None = None, alpha: str | None = None,
              flops_target: str | None = None, preset: str | None = None,
              no_search: bool = False, multipliers=(None, None, None, None),
              tolerance: float = TOLERANCE, strict: bool = False) -> list[Job]:
    """What to make, from the command line's values: one job, or a grid (comma-separated
    strategies, alphas, flops targets or presets).  ``multipliers`` is (width, depth,
    resolution, group width), None where not given."""
    has_multipliers = any(v is not None for v in multipliers)
    if preset is not None:
        if strategy or alpha or flops_target or has_multipliers:
            raise UsageError("--preset sets depth, width and resolution itself: give it alone, "
                             "without --strategy/--alpha/--flops or multipliers")
        names = split_list(preset, "--preset")
        for name in names:
            checked(preset_multipliers, name)
        return [Job(preset=name) for name in names]
    if strategy is None and alpha is None:
        if flops_target is not None:
            raise UsageError("--flops needs --strategy (e.g. dWr) or --alpha")
        width, depth, resolution, group_width = multipliers
        return [Job(multipliers=Multipliers(d=depth or 1.0, w=width or 1.0,
                                            g=group_width or 1.0, r=resolution or 1.0))]
    if has_multipliers:
        raise UsageError("give either --strategy/--alpha with --flops, or --width/--depth/"
                         "--resolution/--group-width, not both")
    if strategy is not None and alpha is not None:
        raise UsageError("give --strategy or --alpha, not both")
    if flops_target is None:
        raise UsageError("--strategy/--alpha need a flops target: --flops 2x (or 4G)")
    if strategy is not None:
        named = [(name, checked(parse_strategy, name))
                 for name in split_list(strategy, "--strategy")]
    else:
        named = [(f"alpha={a}", checked(alpha_weights, checked(float, a)))
                 for a in split_list(alpha, "--alpha")]
    targets = [(text, checked(parse_flops, text)) for text in split_list(flops_target, "--flops")]
    return [Job(strategy=name, weights=weights, flops=text, target=target,
                search=not no_search, tolerance=tolerance, strict=strict)
            for name, weights in named for text, target in targets]


def parse_tolerance(text: str | float) -> float:
    """``1.5%`` or ``0.015`` -> 0.015 (finite, positive, below 100%)."""
    spec = str(text).strip()
    value = float(spec[:-1]) / 100 if spec.endswith("%") else float(spec)
    if not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"--tolerance '{text}': give a fraction in (0, 1) or a percentage "
                         f"like 1.5%")
    return value


def checked(parse, text):
    """Run a strategy-module parser, turning its ValueError into a usage error."""
    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def split_list(text: str, flag: str) -> list[str]:
    """A comma-separated flag value, refused when an entry is empty or repeated."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UsageError(f"{flag} '{text}': empty entry in the comma-separated list")
    if len(set(parts)) != len(parts):
        raise UsageError(f"{flag} '{text}': an entry is repeated")
    return parts


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
    stem = model_stem(source)
    tag = job.preset or f"{job.strategy}.{job.flops}".replace("/", "_").replace("=", "")
    return folder / f"{stem}.{tag}.onnx"


def write_grid(loaded, shapes: dict[str, list[int]], jobs: list[Job], options: ScaleOptions,
               folder: Path, verify: bool, progress=None) -> list[dict]:
    """Plan every job (refusing the whole grid before anything is written when one cell is
    unreachable), then write them all to ``folder``; the ``--json`` object of each.
    ``progress(description)`` is called before each of the 2 x len(jobs) steps."""
    if folder.exists() and not folder.is_dir():
        raise OnnxscaleError(f"{folder}: a grid writes one file per combination; -o must be "
                             f"a folder, and this is a file")
    planner = Planner(loaded.proto, shapes)
    planned = []
    for job in jobs:
        if progress is not None:
            progress(f"planning {job.label}")
        try:
            planned.append(plan_job(planner, job, options))
        except OnnxscaleError as exc:
            raise type(exc)(f"{job.label}: {exc} (nothing written)") from exc
    del planner
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for item in planned:
        if progress is not None:
            progress(f"writing {item.job.label}")
        results.append(write_job(loaded, shapes, item, grid_output(loaded.source, item.job,
                                                                    folder), verify))
    return results


def write_job(loaded, shapes: dict[str, list[int]], planned: Planned, output: Path | None,
              verify: bool) -> dict:
    """Apply a plan with real weights, write it atomically, check it; the ``--json`` object."""
    from ..loadcheck import NotLoadable, verdict, weightless_twin
    from ..model import save_model

    plan = planned.plan
    target = output or default_output(loaded.source, plan.multipliers, plan.options)
    if verify and plan.inputs != plan.base.inputs:
        raise OnnxscaleError("--verify runs both models on the same inputs, but the scaled "
                             "model's input size differs (--resolution, --batch, or a "
                             "strategy or preset that scales resolution)")
    with _weights_on_disk(plan, target):
        outcome = apply_plan(loaded.proto, shapes, plan)
        scaled = stamp(outcome, loaded.source, plan.multipliers, plan.options)
        # nothing is written that fails onnx's checker or that ORT refuses; both look at the
        # weightless twin (`loadcheck`): the structure, without reading a weight again
        twin = weightless_twin(scaled)
        try:
            check(twin)
        except OnnxscaleError:
            check_base(weightless_twin(loaded.proto), loaded.source)
            raise
        load = verdict(scaled, outcome.inputs, loaded.proto, twin)
        if load.refused is not None:
            raise NotLoadable(f"the scaled model would not load: {load.refused}")
        save_model(scaled, target, protect=loaded.path)
        outcome.model = scaled = None
    difference = None
    if verify:
        difference = compare_outputs(loaded.proto, str(target), outcome.base.inputs)
    result = summary(str(target), outcome, plan.multipliers, difference)
    if load.note:
        result["notes"].append(load.note)
    job = planned.job
    if planned.solution is not None:
        result["strategy"] = {"name": job.strategy, "weights": job.weights,
                              "flops": job.flops, **planned.solution.summary()}
        by_reason: dict[str, list[str]] = {}
        for letter, why in planned.solution.unavailable.items():
            by_reason.setdefault(why, []).append(letter)
        for why, letters in reversed(by_reason.items()):
            result["notes"].insert(0, f"{job.strategy}: {' and '.join(sorted(letters))} "
                                      f"cannot be scaled on this model ({why}); the other "
                                      f"dimensions keep the strategy's proportions (--strict "
                                      f"refuses instead)")
    if job.preset:
        result["preset"] = job.preset
    if loaded.rewritten:
        fused = ", ".join(f"{op} x{count}" for op, count in sorted(loaded.rewritten.items()))
        result["notes"].append(f"read and written as the standard ONNX ops they compute: "
                               f"{fused}")
    return result


def _weights_on_disk(plan: Plan, target: Path):
    """Computed weights go to a scratch file beside the output while a large model is
    rewritten and written (`external.Spill`): peak memory stays near one weight, not the
    model.  Small models stay in memory, where they are faster."""
    folder = Path(target).resolve().parent
    if plan.weight_bytes < SPILL_MODEL_BYTES or not folder.is_dir():
        return contextlib.nullcontext()  # (a missing folder is save_model's to report)
    return external.Spill(folder)


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
    result["realized"] = realized(result)
    if difference is not None:
        result["verified_rel_l2"] = difference
    return result


def realized(result: dict) -> dict[str, float]:
    """What the model got, as multipliers: blocks, channels (of the channel groups that
    changed) and input size, new over old.  Rounding to whole blocks, multiples of 8 channels
    and the sizes a model accepts can leave these far from the multipliers searched
    (``--flops 0.001x`` searches w = 7.7e-05 and gets 8 of 64 channels: x0.125)."""

    def ratio(rows, key_old="old", key_new="new") -> float:
        old = sum(row[key_old] for row in rows)
        return sum(row[key_new] for row in rows) / old if old else 1.0

    stages = [row for row in result["stages"] if row.get("mode")]
    groups = [row for row in result["groups"] if row["new"] != row["old"]]
    sides = [(b[axis], a[axis]) for b, a in zip(result["base"]["inputs"].values(),
                                                result["scaled"]["inputs"].values())
             if b and a and len(b) == len(a) for axis in spatial_axes(b)[-1:]]
    return {"d": ratio(stages), "w": ratio(groups),
            "r": sides[0][1] / sides[0][0] if sides and sides[0][0] else 1.0}
