"""Runtime measurement on ONNX Runtime execution providers.

    >>> from onnxscale.runtime import BenchSettings, run_bench
    >>> report = run_bench(["model.onnx"], ["CPUExecutionProvider"], [1, 8],
    ...                    BenchSettings(threads=1, runs=50))
    >>> report.rows[0].p50_ms

`run_bench` loads every model first (so a bad path fails before any timing), then measures each
(model, batch, provider) configuration in that order (providers of one model and batch measured
back to back, so their ratio is least affected by drift) and saves each row to the results store
as soon as it is measured.  See `runner` for the timing method (its steps in `settings`, `inputs`,
`session` and `timing`), `row` for what a measurement records, `providers` for names, options
and availability, `fingerprint` for the machine record.  `dispatch` sends each configuration
where its provider lives (`locate`: this process, a `plugins` EP, or an isolated
`environments` worker) and checks the row (`placement`, `agreement`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import OnnxscaleError
from ..model import LoadedModel, load_model
from ..paths import default_cache_dir
from . import fingerprint as fingerprint_mod
from .inputs import PreparedModel, prepare
from .providers import (CPU, availability, parse_provider_options, parse_providers,
                        resolve_provider, short_name)
from .row import Row
from .dispatch import Dispatcher
from .rounds import combine, run_order
from .settings import BenchSettings, key_options

__all__ = [
    "BenchInterrupted", "BenchReport", "BenchSettings", "CPU", "Row", "availability",
    "default_cache_dir", "model_hash", "parse_provider_options", "parse_providers",
    "resolve_provider", "run_bench", "short_name",
]


class BenchInterrupted(OnnxscaleError):
    """Ctrl-C or SIGTERM during ``bench``; finished rows are already stored."""

    exit_code = 130


@dataclass
class BenchReport:
    rows: list[Row] = field(default_factory=list)
    fingerprint: dict = field(default_factory=dict)
    planned: int = 0


def model_hash(loaded: LoadedModel) -> str:
    """sha256 of the model's content (deterministic serialization, external data inlined)."""
    return hashlib.sha256(loaded.proto.SerializeToString(deterministic=True)).hexdigest()


ProgressFn = Callable[[int, int, str, str, float | None], None]
"""progress(done configs, total configs, description, phase, fraction of phase or None)"""


def run_bench(models: list[str] | list[LoadedModel], providers: list[str],
              batches: list[int | None],
              settings: BenchSettings, *, store=None, resume: bool = False,
              progress: ProgressFn | None = None,
              on_row: Callable[[Row], None] | None = None) -> BenchReport:
    """Measure every (model, batch, provider); rows are saved to ``store`` one by one.

    ``resume``: configurations already measured on this machine are taken from the store.
    Raises `OnnxscaleError` for unusable models or arguments before any timing starts;
    KeyboardInterrupt propagates (rows finished so far are in the store).
    """
    loaded = [m if isinstance(m, LoadedModel) else load_model(m) for m in models]
    fp = fingerprint_mod.collect()
    if store is not None:
        store.save_fingerprint(fp)
    report = BenchReport(fingerprint=fp)

    # Plan everything first: input shapes, rebatching, and errors the user must fix.
    plan: list[tuple[LoadedModel, str, PreparedModel, str]] = []
    for model in loaded:
        digest = model_hash(model)
        seen_batches: set[int] = set()
        for batch in batches:
            prepared = prepare(model.proto, batch, settings.input_shapes, model.source)
            if prepared.batch in seen_batches:
                continue
            seen_batches.add(prepared.batch)
            for provider in providers:
                plan.append((model, digest, prepared, provider))
    report.planned = len(plan)
    dispatcher = Dispatcher(settings)
    try:
        _measure_plan(plan, dispatcher, report, fp, store, resume, progress, on_row)
    finally:
        dispatcher.close()
    return report


def _measure_plan(plan, dispatcher: Dispatcher, report: BenchReport, fp: dict, store,
                  resume: bool, progress: ProgressFn | None,
                  on_row: Callable[[Row], None] | None) -> None:
    """Time every configuration ``settings.rounds`` times, rounds interleaved A B B A (see
    `rounds`); each configuration's row is saved after every round, so an interruption keeps
    the rounds done and ``resume`` adds only the missing ones."""
    settings = dispatcher.settings
    wanted = max(1, settings.rounds)
    rows: list[Row | None] = [None] * len(plan)
    if resume and store is not None:
        for index, (model, digest, prepared, provider) in enumerate(plan):
            options = key_options(provider, prepared, settings)
            stored = store.get(digest, provider, options, prepared.batch, fp["id"])
            if stored is not None and stored.available:
                rows[index] = dataclasses.replace(stored, cached=True)
    needed = [wanted - _rounds_in(row) for row in rows]
    total = sum(max(0, n) for n in needed)
    done = 0
    for round_index in range(wanted):
        for index in run_order(range(len(plan)), round_index):
            if needed[index] <= round_index:
                continue
            model, digest, prepared, provider = plan[index]
            desc = f"{model.source} · {short_name(provider)} · batch {prepared.batch}"
            if wanted > 1:
                desc += f" · round {round_index + 1}/{wanted}"
            if progress is not None:
                progress(done, total, desc, "starting", None)

            def phase(name: str, fraction: float | None, _d=desc, _done=done) -> None:
                if progress is not None:
                    progress(_done, total, _d, name, fraction)

            row = dispatcher.measure(model, digest, prepared, provider, progress=phase)
            row.fingerprint = fp["id"]
            row.measured_at = time.time()
            previous = rows[index]
            if previous is not None and previous.available and row.available:
                row = combine(previous, row)
            elif previous is not None and previous.available:
                row = previous  # a round that failed does not undo the rounds that ran
                row.notes.append(f"round {round_index + 1} could not run")
            rows[index] = row
            if store is not None:
                store.save(row)
            done += 1
            if progress is not None:
                progress(done, total, desc, "done", None)
            if needed[index] == round_index + 1 and on_row is not None:
                on_row(row)
    for row in rows:
        report.rows.append(row)  # type: ignore[arg-type]
        if row is not None and row.cached and on_row is not None:
            on_row(row)


def _rounds_in(row: Row | None) -> int:
    if row is None or not row.available:
        return 0
    return len(row.rounds or [None])
