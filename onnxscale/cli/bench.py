"""``bench`` and ``results``: time models on execution providers, and list what is stored."""

from __future__ import annotations

import click

from ..errors import OnnxscaleError
from .common import db_option, debug_enabled, json_option, print_json, result_filters, \
    settings_from, timing_options


@click.command("bench")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@timing_options(None, "Batch sizes (default: the model's own batch; 1 if it is dynamic).")
@db_option
@click.option("--no-save", is_flag=True, help="Do not write results to the database.")
@click.option("--resume", is_flag=True,
              help="Skip configurations already measured on this machine (reuse stored rows).")
@json_option
@click.pass_context
def bench(ctx: click.Context, models, provider_spec, batch_spec, db_path, no_save, resume,
          as_json, **timing) -> None:
    """Time models on ONNX Runtime execution providers.

    Each (model, batch, provider) is timed after an adaptive warm-up; unavailable providers
    (or ones the session silently replaced by CPU) are reported with the reason.  Results go to
    a SQLite database; see them again with `onnxscale results`.
    """
    import signal

    from ..runtime import BenchInterrupted, parse_providers, run_bench
    from ..runtime.settings import parse_batches
    from ..model import load_model
    from ..store import ResultStore, default_db_path

    providers = parse_providers(provider_spec)
    batches = parse_batches(batch_spec)
    settings = settings_from(providers, timing, debug_enabled(ctx))
    if resume and no_save:
        raise OnnxscaleError("--resume reads the database; it cannot be used with --no-save")
    loaded = [load_model(model) for model in models]  # a bad path fails before any timing
    store = None if no_save else ResultStore(db_path if db_path else default_db_path())

    from .. import render

    progress = render.bench_progress(True)
    task = None
    finished: list = []

    def on_progress(done, total, desc, phase, fraction):
        nonlocal task
        if progress is None:
            return
        if task is None:
            task = progress.add_task(desc, total=total, phase="")
        shown = f"{phase} {fraction * 100:.0f}%" if fraction is not None else phase
        progress.update(task, completed=done, description=desc, phase=shown)
        progress.refresh()

    def on_sigterm(signum, frame):
        raise KeyboardInterrupt

    previous = None
    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        previous = None
    try:
        if progress is not None:
            progress.start()
        report = run_bench(loaded, providers, batches, settings, store=store,
                           resume=resume, progress=on_progress, on_row=finished.append)
    except KeyboardInterrupt:
        if progress is not None:
            progress.stop()
        where = f"saved to {store.path}" if store is not None else "not saved (--no-save)"
        raise BenchInterrupted(f"interrupted: {len(finished)} configuration(s) finished and "
                               f"{where}") from None
    finally:
        if progress is not None:
            progress.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if store is not None:
            store.close()

    if as_json:
        from ..runtime.row import UNITS

        print_json({"results": [row.to_dict() for row in report.rows], "units": UNITS,
                    "fingerprint": report.fingerprint,
                    "db": str(store.path) if store is not None else None})
    else:
        render.print_bench(report.rows, report.fingerprint, store.path if store else None)
    if report.rows and not any(r.available for r in report.rows):
        first = report.rows[0]
        raise OnnxscaleError(f"nothing could be measured ({first.provider}: {first.reason})")


@click.command("results")
@db_option
@result_filters("models")
@click.option("--baseline", default="cpu", show_default=True,
              help="Provider the speedups are relative to.")
@json_option
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the stored rows as CSV on stdout (one line per measurement).")
def results(db_path, model_filter, provider_spec, machine_filter, baseline, as_json,
            as_csv) -> None:
    """List stored measurements side by side.

    Providers side by side with speedups, and one model across machines."""
    if as_json and as_csv:
        raise OnnxscaleError("--json and --csv: give one or the other")
    from pathlib import Path

    from ..runtime import parse_providers, short_name
    from ..store import ResultStore, compare_machines, compare_providers, default_db_path

    path = Path(db_path) if db_path else default_db_path()
    if not path.exists():
        raise OnnxscaleError(f"{path}: no results database yet; run `onnxscale bench` first")
    providers = parse_providers(provider_spec) if provider_spec else None
    base = short_name(parse_providers(baseline)[0])
    with ResultStore(path) as store:
        rows = store.rows(model=model_filter, providers=providers, fingerprint=machine_filter)
        fingerprints = store.fingerprints()
    if as_csv:
        import sys

        from ..runtime.row import write_csv

        write_csv(rows, sys.stdout)
        return
    side = compare_providers(rows, base)
    across = compare_machines(rows)
    if as_json:
        from ..runtime.row import UNITS

        print_json({"db": str(path), "results": [row.to_dict() for row in rows],
                    "units": UNITS,
                    "fingerprints": fingerprints,
                    "providers": side, "machines": across})
        return
    from .. import render

    render.print_results(path, rows, fingerprints, side, across,
                         filtered=bool(model_filter or providers or machine_filter))
