"""``profile``, ``predict`` and ``calibrate``: per-layer runtime, a runtime predictor learned
from it, and the standard set that gives a new machine one."""

from __future__ import annotations

import click

from ..errors import UsageError
from .common import db_option, debug_enabled, input_shape_option, json_option, print_json


def _config_options(command):
    """The configuration a profile or a predictor is specific to."""
    for option in reversed((
            click.option("--provider", "-p", "provider_spec", default="cpu", show_default=True,
                         help="Execution provider (in this process's onnxruntime)."),
            click.option("--threads", default=None, metavar="N",
                         help="Intra-op threads (default: onnxruntime's)."),
            click.option("--batch", "-b", "batch_spec", default="1", show_default=True,
                         metavar="N", help="Batch size."),
            click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
                         show_default=True),
            db_option)):
        command = option(command)
    return command


def _configuration(provider_spec, threads, batch_spec, precision, debug, input_shapes=()):
    from ..runtime import parse_providers
    from ..runtime.settings import make_settings, parse_batches

    providers = parse_providers(provider_spec)
    if len(providers) != 1:
        raise UsageError(f"--provider '{provider_spec}': give one provider")
    batch = parse_batches(batch_spec)[0]
    settings = make_settings(providers, threads=threads, precision=precision, debug=debug,
                             input_shapes=input_shapes)
    return providers[0], batch, settings


def _store(db_path):
    from ..store import ResultStore, default_db_path

    return ResultStore(db_path if db_path else default_db_path())


@click.command("profile")
@click.argument("model")
@_config_options
@input_shape_option
@click.option("--runs", default="20", show_default=True, metavar="N",
              help="Profiled runs (after bench's own timing of the whole model).")
@click.option("--top", default=20, show_default=True, help="Layers shown in the table.")
@click.option("--csv", "as_csv", is_flag=True, help="Every layer as CSV on stdout.")
@json_option
@click.pass_context
def profile(ctx, model, provider_spec, threads, batch_spec, precision, db_path, input_shapes,
            runs, top, as_csv, as_json):
    """Per-layer runtime from ONNX Runtime's profiler, joined to flops, params and acts.

    The whole-model p50 comes from bench's method; the profile is a separate pass, its
    kernels mapped back to the model's layers (a fused Conv+BatchNormalization+activation is
    one layer).  Stored in the results database for `predict` and `calibrate`."""
    from ..calibration import profile_model
    from ..model import load_model
    from ..runtime.settings import positive_int

    provider, batch, settings = _configuration(provider_spec, threads, batch_spec, precision,
                                               debug_enabled(ctx), input_shapes)
    loaded = load_model(model)
    with _store(db_path) as store:
        found = profile_model(loaded, provider, settings, batch=batch, store=store,
                              runs=positive_int(runs, "--runs"))
        where = store.path
    if as_csv:
        import csv
        import sys

        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(["layer", "op", "kernels", "ms", "share", "flops", "params", "acts",
                         "contains"])
        total = sum(layer.ms for layer in found.layers) or 1.0
        for layer in sorted(found.layers, key=lambda item: -item.ms):
            writer.writerow([layer.name, layer.op, "+".join(layer.kernels), f"{layer.ms:.4f}",
                             f"{layer.ms / total:.4f}", layer.flops, layer.params, layer.acts,
                             ";".join(layer.contains)])
        return
    if as_json:
        print_json({"profile": found.to_dict(), "db": str(where)})
        return
    from ..render import print_profile

    print_profile(found, top, where)


@click.command("predict")
@click.argument("model")
@_config_options
@input_shape_option
@json_option
@click.pass_context
def predict(ctx, model, provider_spec, threads, batch_spec, precision, db_path, input_shapes,
            as_json):
    """Predict a model's p50 on this machine from the stored profiles, with an interval,
    the paper's whole-model baselines, and the layers that dominate."""
    from .. import predictor as P
    from ..calibration import predict_model, predictor_in
    from ..model import load_model
    from ..runtime.providers import short_name

    provider, batch, settings = _configuration(provider_spec, threads, batch_spec, precision,
                                               debug_enabled(ctx), input_shapes)
    fitted = predictor_in(db_path, provider, settings, batch=batch or 1, interval=True)
    loaded = load_model(model)
    result = predict_model(fitted, loaded, batch, settings.input_shapes)
    result |= {"provider": short_name(provider), "threads": settings.threads}
    if as_json:
        print_json(result)
        return
    click.echo(f"{loaded.source} on {short_name(provider)}: "
               f"{P.describe_interval(result['predicted_ms'], fitted.interval)} "
               f"(layer-level predictor fitted on {fitted.models} profiled models)")
    if result["extrapolation"]:
        click.echo(f"note: {result['extrapolation']}")
    for name, value in result["baselines"].items():
        spread = fitted.baseline_intervals.get(name)
        click.echo(f"  whole-model baseline ({name}): {value:.2f} ms"
                   + (f" (95% {P.describe_factor(spread)})" if spread is not None else ""))
    click.echo("layers that dominate:")
    for layer in result["layers"][:5]:
        click.echo(f"  {layer['name']} ({layer['kind']}): {layer['ms']:.3f} ms, "
                   f"{layer['share']:.0%}")


@click.command("calibrate")
@_config_options
@click.option("--budget", default="10m", show_default=True, metavar="TIME",
              help="Stop starting new models after this long (600s, 10m, 1h); rerun to go on.")
@json_option
@click.pass_context
def calibrate(ctx, provider_spec, threads, batch_spec, precision, db_path, budget, as_json):
    """Profile a standard set of zoo models and scaled variants (resumable) so this machine
    gets a runtime predictor for `predict` and `scale --latency`."""
    from ..calibration import calibrate as run

    provider, batch, settings = _configuration(provider_spec, threads, batch_spec, precision,
                                               debug_enabled(ctx))
    seconds = _duration(budget)
    from rich.console import Console

    console = Console(stderr=True)
    with _store(db_path) as store, console.status("calibrating ...") as status:
        result = run(provider, settings, store=store, batch=batch, budget_s=seconds,
                     progress=lambda text: status.update(text))
    if as_json:
        print_json(result)
        return
    click.echo(f"calibrate: {len(result['profiled'])} profiled, "
               f"{len(result['already_stored'])} already stored, {len(result['failed'])} "
               f"failed, {result['left_for_next_time']} left for the next run "
               f"({result['seconds']:.0f} s)")
    for failure in result["failed"]:
        click.echo(f"  failed: {failure}")


def _duration(text: str) -> float:
    import re

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|m|h)?\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise UsageError(f"--budget '{text}': expected a duration like 600s, 10m or 1h")
    return float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]
