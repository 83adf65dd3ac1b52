"""Sweeps: one base model scaled by many strategies to many flops factors, every result timed
on every provider and batch -- the measurements behind *Fast and Accurate Model Scaling*.

A *cell* is (base model content, strategy, flops factor, provider, batch, bench options,
machine).  Factor 1 is the base model itself, stored once under the strategy ``base`` and
shared by every strategy's curve.  For each (strategy, factor) with cells still to do, the
scaled model is planned on one `Planner` (the base is loaded and analyzed once), written once
with random weights (runtime does not depend on their values), timed on every pending
provider and batch, then deleted unless ``keep_models``: disk holds one scaled model at a time.

Every finished cell is one committed row in the results database (`store.ResultStore`,
table ``sweep_cells``), next to the scaling facts: strategy, alpha, factor, target and
achieved flops, params, acts, multipliers, input size.  A rerun skips finished cells; a sweep
killed with SIGKILL loses at most the cell in flight.  A cell that cannot be made (a target
the strategy cannot reach, a model the rewrite refuses) is stored as ``failed`` with its
reason and is not retried unless ``retry_failed`` (nor is a cell whose provider could not
run here: ``unavailable``); the other cells go on.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .runtime import model_hash, run_bench
from .runtime.providers import short_name
from .runtime.settings import BenchSettings, effective_cuda_graph, effective_io_binding
from .errors import OnnxscaleError, UsageError
from .model import LoadedModel, load_model, model_stem
from .store import ResultStore, options_key

BASE = "base"        # the strategy name of factor 1: the base model itself


@dataclass
class Strategy:
    name: str                 # as the user wrote it: dWr, dwr, alpha=0.5
    weights: dict[str, float]
    alpha: float | None = None


@dataclass
class SweepResult:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    cells: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)   # what the user should know of the run
    # cells of this sweep already stored and not redone by this run: a rerun of a finished
    # sweep shows its whole table, not an empty one
    earlier: list[dict] = field(default_factory=list)

    def add_earlier(self, cell: dict | None) -> None:
        if cell is not None and all(cell_identity(cell) != cell_identity(c)
                                    for c in self.earlier):
            self.earlier.append(cell)

    def whole(self) -> list[dict]:
        """This run's cells, then the earlier ones it did not redo."""
        redone = {cell_identity(c) for c in self.cells}
        return self.cells + [c for c in self.earlier if cell_identity(c) not in redone]

    def to_json(self) -> dict:
        return {"done": self.done, "skipped": self.skipped, "failed": self.failed,
                "cells": self.cells, "earlier": self.earlier, "notes": self.notes}


def cell_identity(cell: dict) -> tuple:
    """What tells two stored cells apart (the store's key, plus a --latency budget)."""
    return (cell.get("base_hash", cell.get("base")), cell.get("strategy"), cell.get("factor"),
            cell.get("provider"), cell.get("batch"), str(cell.get("options")),
            cell.get("fingerprint"), cell.get("latency_budget"))


ProgressFn = Callable[[int, int, str], None]
"""progress(cells handled, cells in the sweep, what is in progress)"""


def parse_factors(text: str) -> list[float]:
    """``1x,2x,4x`` (or ``1,2,4``) -> [1.0, 2.0, 4.0]: finite, positive, distinct."""
    factors = []
    for item in text.split(","):
        spec = item.strip().lower().removesuffix("x")
        try:
            value = float(spec)
        except ValueError:
            raise UsageError(f"--flops '{text}': expected factors like 1x,2x,4x") from None
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"--flops '{text}': every factor must be a finite number above 0")
        if value in factors:
            raise UsageError(f"--flops '{text}': factor {item.strip()} is repeated")
        factors.append(value)
    return factors


def parse_strategies(strategy: str | None, alpha: str | None) -> list[Strategy]:
    """The sweep's strategies from ``--strategy d,w,dWr`` and ``--alpha 0.5,0.8``."""
    from .scaling.job import checked, split_list
    from .scaling.strategy import alpha_weights, parse_strategy

    out = [Strategy(name, checked(parse_strategy, name))
           for name in (split_list(strategy, "--strategy") if strategy else [])]
    for text in split_list(alpha, "--alpha") if alpha else []:
        value = checked(float, text)
        out.append(Strategy(f"alpha={text}", checked(alpha_weights, value), value))
    if not out:
        raise UsageError("give at least one --strategy or --alpha")
    return out


def cell_options(provider: str, settings: BenchSettings) -> str:
    """The bench options that make a cell (canonical JSON): what changes a timing."""
    return options_key({
        "threads": settings.threads, "precision": settings.precision,
        "io_binding": effective_io_binding(provider, settings),
        "cuda_graph": effective_cuda_graph(provider, settings),
        "provider_options": dict(sorted(settings.provider_options.get(provider, {}).items())),
        "session_config": dict(sorted(settings.session_config.items())),
        "input_shapes": settings.input_shapes})


class Sweep:
    """Runs the cells of one or more base models against one store (the only writer)."""

    def __init__(self, store: ResultStore, providers: list[str], batches: list[int],
                 settings: BenchSettings, *, tolerance: float, keep_models: Path | None = None,
                 retry_failed: bool = False, progress: ProgressFn | None = None):
        from .runtime import fingerprint as fingerprint_mod

        self.store, self.providers, self.batches, self.settings = store, providers, batches, \
            settings
        self.tolerance, self.keep, self.retry = tolerance, keep_models, retry_failed
        self.progress = progress
        self.fingerprint = fingerprint_mod.collect()
        store.save_fingerprint(self.fingerprint)
        self.result = SweepResult()
        self.total = 0
        self.handled = 0

    def run(self, models: list[str], strategies: list[Strategy],
            factors: list[float]) -> SweepResult:
        """Every cell, ``settings.rounds`` times: round after round over the whole sweep,
        the order of (strategy, factor) reversed in odd rounds (A B B A), so slow minutes of
        the machine do not all land on one strategy.  A cell's rounds are part of its stored
        state: a rerun adds the missing ones."""
        from .runtime.rounds import run_order

        jobs = sweep_jobs(strategies, factors)
        per_job = len(self.providers) * len(self.batches)
        rounds = max(1, self.settings.rounds)
        self.total = len(models) * len(jobs) * per_job * rounds
        loaded = [load_model(spec, seed=self.settings.seed) for spec in models]
        planners: dict[int, object] = {}
        for round_index in range(rounds):
            for index, model in enumerate(loaded):
                self._run_model(model, run_order(jobs, round_index), round_index, planners,
                                index)
        return self.result

    # ---- one base model ---------------------------------------------------------------------
    def _run_model(self, loaded: LoadedModel, jobs: list[tuple[Strategy, float]],
                   round_index: int = 0, planners: dict | None = None, index: int = 0) -> None:
        from .scaling.pipeline import Planner

        base_hash = model_hash(loaded)
        planners = {} if planners is None else planners
        if index not in planners:  # the base is analyzed once, whatever the rounds
            planners[index] = Planner(loaded.proto, self.settings.input_shapes)
        planner = planners[index]
        for strategy, factor in jobs:
            pending = self._pending(base_hash, strategy, factor, round_index)
            self.result.skipped += len(self.providers) * len(self.batches) - len(pending)
            self.handled += len(self.providers) * len(self.batches) - len(pending)
            if not pending:
                continue
            label = f"{loaded.source} {strategy.name} x{factor:g}"
            if self.settings.rounds > 1:
                label += f" (round {round_index + 1}/{self.settings.rounds})"
            self._report(f"{label}: scaling")
            facts = job_facts(loaded.source, base_hash, strategy, factor)
            if factor == 1:
                made, path = facts | _figures(planner.base), None
            else:
                try:
                    made, path = self._make(loaded, planner, strategy, factor, facts)
                except OnnxscaleError as exc:
                    self._failed(pending, facts, str(exc))
                    continue
            try:
                self._measure(label, loaded, path, pending, made)
            finally:
                if path is not None and self.keep is None:
                    shutil.rmtree(path.parent, ignore_errors=True)

    def _pending(self, base_hash: str, strategy: Strategy, factor: float,
                 round_index: int = 0) -> list[dict]:
        """The cells of one (strategy, factor) still to do in this round, as store keys:
        never finished, or timed in fewer rounds than this one needs."""
        machine = {"fingerprint": self.fingerprint["id"]}
        pending = []
        for key in self._cell_keys(base_hash, strategy, factor, self.providers):
            stored = self.store.cell(key | machine)
            status = stored.get("status") if stored else None
            if not self._settled(status) or (
                    status == "ok" and rounds_done(stored) <= round_index):
                pending.append(key | machine)
            else:
                self.result.add_earlier(stored)
        return pending

    def _cell_keys(self, base_hash: str, strategy: Strategy, factor: float,
                   providers: list[str]) -> list[dict]:
        """Store keys of one (strategy, factor) on ``providers`` x batches, machine left out."""
        return [{"base_hash": base_hash, "strategy": strategy.name, "factor": factor,
                 "provider": provider, "batch": batch,
                 "options": cell_options(provider, self.settings)}
                for provider in providers for batch in self.batches]

    def _settled(self, status: str | None) -> bool:
        """Done: ok, or failed/unavailable and not --retry-failed (they wait for it)."""
        return status == "ok" or (status is not None and not self.retry)

    def _make(self, loaded: LoadedModel, planner, strategy: Strategy, factor: float,
              facts: dict) -> tuple[dict, Path]:
        return make_scaled(loaded, planner, strategy, factor, facts, self.settings,
                           self.tolerance, self.keep)

    def _measure(self, label: str, loaded: LoadedModel, path: Path | None,
                 pending: list[dict], facts: dict) -> None:
        """Time the model on every pending (provider, batch); store one row per cell."""
        for cell in time_cells(loaded, path, pending, facts, self.settings, self.store,
                               lambda key: self._report(
                                   f"{label}: {short_name(key['provider'])} batch "
                                   f"{key['batch']}")):
            cell = with_earlier_rounds(cell, self.store.cell(cell))
            self.store.save_cell(cell)
            self.result.done += 1
            self.result.cells.append(cell)
            self.handled += 1

    def _failed(self, pending: list[dict], facts: dict, reason: str) -> None:
        for cell in failed_cells(pending, facts, reason):
            self.store.save_cell(cell)
            self.result.failed += 1
            self.result.cells.append(cell)
            self.handled += 1

    def _report(self, what: str) -> None:
        if self.progress is not None:
            self.progress(self.handled, self.total, what)


def rounds_done(cell: dict | None) -> int:
    """How many rounds a stored cell was timed in (0 when it was not timed)."""
    if not cell or cell.get("status") != "ok":
        return 0
    return len((cell.get("bench") or {}).get("rounds") or [None])


def with_earlier_rounds(cell: dict, stored: dict | None) -> dict:
    """A newly timed cell merged with the rounds its stored version already holds."""
    from .runtime.rounds import combine
    from .runtime.row import Row

    if not stored or stored.get("status") != "ok" or cell.get("status") != "ok":
        return cell
    if not stored.get("bench") or not cell.get("bench"):
        return cell
    merged = combine(Row.from_dict(stored["bench"]), Row.from_dict(cell["bench"]))
    return cell | {"bench": merged.to_dict(), "p50_ms": merged.p50_ms}


def sweep_jobs(strategies: list[Strategy], factors: list[float]) -> list[tuple[Strategy, float]]:
    """Every (strategy, factor) to make; factor 1, the base, once and first."""
    jobs = [(s, f) for s in strategies for f in factors if f != 1]
    if 1 in factors:
        jobs.insert(0, (Strategy(BASE, {}), 1.0))
    return jobs


def job_facts(source: str, base_hash: str, strategy: Strategy, factor: float) -> dict:
    """What every cell of one (strategy, factor) stores about how it was made."""
    return {"base": source, "base_hash": base_hash, "strategy": strategy.name,
            "alpha": strategy.alpha, "factor": factor, "weights": strategy.weights}


def make_scaled(loaded: LoadedModel, planner, strategy: Strategy, factor: float, facts: dict,
                settings: BenchSettings, tolerance: float,
                keep: Path | None = None) -> tuple[dict, Path]:
    """Plan and write the scaled model (random weights); its facts and its file (in ``keep``
    or a fresh temporary folder the caller removes)."""
    from .scaling.job import Job, plan_job, write_job
    from .scaling.plan import ScaleOptions

    job = Job(strategy=strategy.name, weights=strategy.weights, flops=f"{factor:g}x",
              target=("ratio", factor), tolerance=tolerance)
    planned = plan_job(planner, job, ScaleOptions(init="random", seed=settings.seed))
    folder = keep or Path(tempfile.mkdtemp(prefix="onnxscale-sweep."))
    folder.mkdir(parents=True, exist_ok=True)
    stem = model_stem(loaded.source)
    path = folder / f"{stem}.{strategy.name.replace('=', '')}.{factor:g}x.onnx"
    summary = write_job(loaded, settings.input_shapes, planned, path, verify=False)
    made = facts | {
        "target_flops": summary["strategy"]["target_flops"],
        "flops": summary["scaled"]["flops"], "params": summary["scaled"]["params"],
        "acts": summary["scaled"]["acts"], "inputs": summary["scaled"]["inputs"],
        "multipliers": summary["multipliers"], "error": summary["strategy"]["error"],
        "unavailable": summary["strategy"]["unavailable"],
        "base_figures": summary["base"], "exact": summary["exact"]}
    return made, path


def time_cells(loaded: LoadedModel, path: Path | None, pending: list[dict], facts: dict,
               settings: BenchSettings, store=None, before=None):
    """Time the model (the base, or the scaled one at ``path``) on every pending (provider,
    batch): one finished cell (a dict) at a time."""
    import dataclasses

    model = loaded if path is None else load_model(str(path))
    settings = dataclasses.replace(settings, rounds=1)  # the sweep runs its own rounds
    for key in pending:
        if before is not None:
            before(key)
        report = run_bench([model], [key["provider"]], [key["batch"]], settings, store=store)
        row = report.rows[0]
        status = "ok" if row.available else "unavailable"
        yield key | facts | {"status": status, "reason": row.reason,
                             "p50_ms": row.p50_ms, "bench": row.to_dict(),
                             "measured_at": time.time()}


def failed_cells(pending: list[dict], facts: dict, reason: str) -> list[dict]:
    return [key | facts | {"status": "failed", "reason": reason, "measured_at": time.time()}
            for key in pending]


def _figures(report) -> dict:
    figures = {"flops": report.flops, "params": report.params, "acts": report.acts,
               "inputs": report.inputs}
    return figures | {"target_flops": report.flops, "multipliers": {"d": 1, "w": 1, "g": 1,
                                                                     "r": 1},
                      "error": 0.0, "base_figures": figures, "exact": True}
