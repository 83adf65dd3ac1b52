"""``scale --latency``: a strategy scaled to a runtime budget on this machine."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import OnnxscaleError, UsageError
from .common import debug_enabled, print_json


def scale_latency(ctx, model, *, strategy, alpha, flops, multipliers, preset, latency,
                  tolerance, provider_spec, threads, batch, init, divisor, seed, max_size,
                  output, db_path, input_shapes, as_json) -> None:
    """Check every argument before anything is measured or written, then run each
    (strategy, budget) of the grid."""
    from ..calibration import stored_predictor
    from ..latency import latency_arguments, scale_to_latency
    from ..model import load_model, parse_input_shapes
    from ..runtime import parse_providers
    from ..runtime.settings import make_settings
    from ..scaling.job import split_list
    from ..scaling.plan import ScaleOptions, parse_bytes
    from ..store import ResultStore, default_db_path

    if flops is not None:
        raise UsageError("--latency and --flops: give one target, a runtime or a flops count")
    if preset or any(m is not None for m in multipliers):
        raise UsageError("--latency scales a --strategy; multipliers and presets take no "
                         "runtime budget")
    if not strategy:
        raise UsageError("--latency needs --strategy (e.g. --strategy dWr --latency 25ms)")
    if alpha:
        raise UsageError("--latency takes --strategy; write --alpha A as a strategy name")
    strategies = split_list(strategy, "--strategy")
    providers = parse_providers(provider_spec)
    if len(providers) != 1:
        raise UsageError(f"--provider '{provider_spec}': --latency is for one provider")
    provider = providers[0]
    budgets, tol = latency_arguments(latency, tolerance, provider)
    measure_batch = batch if isinstance(batch, int) else 1
    settings = make_settings(providers, threads=threads, debug=debug_enabled(ctx))
    shapes = parse_input_shapes(input_shapes)
    settings.input_shapes = shapes
    grid = len(strategies) * len(budgets) > 1
    folder = Path(output) if output else Path(".")
    if grid and folder.exists() and not folder.is_dir():
        raise OnnxscaleError(f"{folder}: a grid writes one file per combination; -o must be "
                             f"a folder")
    store = ResultStore(db_path if db_path else default_db_path())
    try:
        predictor = stored_predictor(store, provider, settings, batch=measure_batch)
        options = ScaleOptions(init=init, divisor=divisor,
                               batch=batch if batch is not None else None, seed=seed,
                               max_bytes=parse_bytes(max_size))
        loaded = load_model(model)
        results = []
        base_ms = None   # measured once for every ratio budget of the grid
        from rich.console import Console

        console = Console(stderr=True)
        for name in strategies:
            for budget in budgets:
                tag = f"{budget[1]:g}{'x' if budget[0] == 'ratio' else 'ms'}"
                target = (folder / _grid_name(loaded.source, name, tag)) if grid else (
                    Path(output) if output else Path(_grid_name(loaded.source, name, tag)))
                if grid:
                    target.parent.mkdir(parents=True, exist_ok=True)
                with console.status(f"{name} to {tag} ...") as status:
                    results.append(scale_to_latency(
                        loaded, name, budget, provider=provider, settings=settings,
                        batch=measure_batch, tolerance=tol, predictor=predictor, store=store,
                        options=options, output=target,
                        progress=lambda text, _s=status: _s.update(text), base_ms=base_ms))
                base_ms = results[-1]["latency"]["base_ms"] or base_ms
    finally:
        store.close()
    if as_json:
        print_json(results if grid else results[0])
        return
    for result in results:
        _print(result)


def _grid_name(source: str, strategy: str, tag: str) -> str:
    from ..model import model_stem

    return f"{model_stem(source)}.{strategy.replace('=', '')}.{tag}.onnx"


def _print(result: dict) -> None:
    from ..render import human

    lat = result["latency"]
    spread = lat.get("measured_interval_ms")
    scaled = result["scaled"]
    base = (f" ({lat['budget_ms'] / lat['base_ms']:g}x the base model's measured "
            f"{lat['base_ms']:.2f} ms)" if lat.get("base_ms") else "")
    click.echo(f"{result['output']}: measured p50 {lat['measured_ms']:.2f} ms"
               + (f" (95% interval {spread[0]:.2f}-{spread[1]:.2f})" if spread else "")
               + f" for a budget of {lat['budget_ms']:.2f} ms{base}, ±{lat['tolerance']:.0%}; "
                 f"predicted {lat['predicted_ms']:.2f} ms; flops {human(scaled['flops'])} "
                 f"({lat['flops_factor']:.2f}x), params {human(scaled['params'])}, acts "
                 f"{human(scaled['acts'])}")
    trail = ", ".join(f"{m['factor']:.3g}x flops {m['ms']:.2f} ms (predicted "
                      f"{m['predicted_ms']:.2f})" for m in lat["measurements"])
    click.echo(f"  scaled models measured: {trail}; {lat['predictions']} plan(s) predicted")
