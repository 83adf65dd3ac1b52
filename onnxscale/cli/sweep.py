"""``sweep`` and ``report``: strategies x flops factors timed, and the paper's analysis of
what was stored."""

from __future__ import annotations

import click

from ..errors import OnnxscaleError, UsageError
from .common import db_option, debug_enabled, json_option, print_json, result_filters, \
    settings_from, timing_options


@click.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--strategy", "-s", default="d,w,r,dw,dwr,dWr", show_default=True,
              help="Strategies, comma-separated (pycls syntax, as for scale).")
@click.option("--alpha", help="Fast compound scaling alphas, comma-separated (added to the "
                               "strategies).")
@click.option("--flops", "flops_spec", default="1x,2x,4x,8x,16x", show_default=True,
              help="Flops factors; 1x is the base model, measured once for every strategy.")
@click.option("--tolerance", default="1.5%", show_default=True,
              help="Largest accepted miss of a flops target; other cells are stored as failed.")
@click.option("--latency", "latency_spec", metavar="10ms,20ms|2x,4x",
              help="Runtime budgets instead of flops factors: each strategy scaled to each "
                   "budget by measurement (as scale --latency), the cells compared at matched "
                   "runtime. One provider of this process's onnxruntime.")
@click.option("--latency-tolerance", default="5%", show_default=True,
              help="With --latency: largest accepted miss of a budget, by measurement.")
@timing_options("1", "Batch sizes.")
@db_option
@click.option("--keep-models", type=click.Path(file_okay=False), default=None,
              help="Keep the scaled models in this folder (default: each is deleted once "
                   "timed).")
@click.option("--retry-failed", is_flag=True, help="Try again the cells stored as failed.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None,
              metavar="[ADDRESS]",
              help="Run the cells on a Ray cluster: auto (the cluster this machine is in), "
                   "HOST:PORT, ray://HOST:PORT (client), or no value (a local cluster). "
                   "Needs pip install 'onnxscale[ray]'.")
@click.option("--each-machine", is_flag=True,
              help="With --ray: measure every cell on every kind of machine in the cluster.")
@click.option("--accelerator-type", "accelerator_types", default=None, metavar="H100,A10G",
              help="With --ray: measure every cell on each kind of machine with one of these "
                   "GPUs (Ray's accelerator types).")
@json_option
@click.pass_context
def sweep(ctx, models, strategy, alpha, flops_spec, tolerance, latency_spec, latency_tolerance,
          provider_spec, batch_spec, db_path, keep_models, retry_failed, ray_address,
          each_machine, accelerator_types, as_json, **timing) -> None:
    """Scale each model with every strategy to every flops factor and time every result.

    Cells (model, strategy, factor, provider, batch, options, machine) are stored one by one
    in the results database with the scaling facts; rerunning the same command skips the
    finished ones, and a killed sweep loses at most the cell in flight.

    Example: onnxscale sweep zoo:regnety-400mf --strategy d,w,dWr --flops 1x,2x,4x --runs 20
    """
    from pathlib import Path

    from ..runtime import parse_providers
    from ..runtime.settings import parse_batches
    from ..scaling.job import checked, parse_tolerance
    from ..store import ResultStore, default_db_path
    from ..sweeps import Sweep, parse_factors, parse_strategies

    strategies = parse_strategies(strategy, alpha)
    factors = parse_factors(flops_spec)
    providers = parse_providers(provider_spec)
    batches = parse_batches(batch_spec)
    settings = settings_from(providers, timing, debug_enabled(ctx))
    tol = checked(parse_tolerance, tolerance)
    keep = Path(keep_models) if keep_models else None
    if keep is not None and keep.exists() and not keep.is_dir():
        raise OnnxscaleError(f"{keep}: --keep-models needs a folder, and this is a file")
    path = Path(db_path) if db_path else default_db_path()
    types = [t.strip() for t in accelerator_types.split(",") if t.strip()] \
        if accelerator_types else []
    if (each_machine or types) and not ray_address:
        raise UsageError("--each-machine and --accelerator-type need --ray")
    if ray_address and settings.rounds > 1:
        raise UsageError("--rounds is for local sweeps: with --ray each cell is timed once")
    if ray_address and keep is not None:
        raise UsageError("--keep-models is for local sweeps: with --ray, scaled models are "
                         "made on the node that measures them")
    from .. import render

    if latency_spec is not None:
        result = _latency_sweep(ctx, models, strategy, alpha, latency_spec, latency_tolerance,
                                providers, batches, settings, path, keep, ray_address)
        if as_json:
            print_json({"db": str(path), **result.to_json()})
            return
        with ResultStore(path) as store:
            machines = store.fingerprints()
        render.print_sweep(result, path, machines=machines)
        return
    with ResultStore(path) as store, render.sweep_progress(not as_json) as progress:
        common = dict(tolerance=tol, retry_failed=retry_failed, progress=progress)
        if ray_address:
            from ..cluster import RaySweep

            runner = RaySweep(store, providers, batches, settings, address=ray_address,
                              each_machine=each_machine, accelerator_types=types, **common)
        else:
            runner = Sweep(store, providers, batches, settings, keep_models=keep, **common)
        try:
            result = runner.run(list(models), strategies, factors)
        except KeyboardInterrupt:
            raise OnnxscaleError(f"interrupted: {runner.result.done} cell(s) finished and "
                                 f"saved to {path}; rerun the same command to go on") from None
        machines = store.fingerprints()
    if as_json:
        print_json({"db": str(path), **result.to_json()})
        return
    render.print_sweep(result, path, machines=machines)


def _latency_sweep(ctx, models, strategy, alpha, latency_spec, latency_tolerance, providers,
                   batches, settings, path, keep, ray_address):
    """``sweep --latency``: the arguments checked before anything runs, then every
    (model, strategy, budget) scaled to its budget by measurement."""
    from .. import render
    from ..latency import latency_arguments, sweep_latency
    from ..scaling.job import split_list
    from ..store import ResultStore

    source = ctx.get_parameter_source("flops_spec")
    if source is not None and source.name != "DEFAULT":
        raise UsageError("--latency and --flops: give one, runtime budgets or flops factors")
    if alpha:
        raise UsageError("--latency takes --strategy names; write --alpha A as a strategy")
    if ray_address:
        raise UsageError("--latency is for local sweeps: the search measures on this machine")
    if settings.rounds > 1:
        raise UsageError("--latency and --rounds: a budget is settled by measurement, once")
    if len(providers) != 1 or len(batches) != 1:
        raise UsageError("--latency: give one provider and one batch size")
    budgets, tol = latency_arguments(latency_spec, latency_tolerance, providers[0])
    with ResultStore(path) as store, render.sweep_progress(True) as progress:
        return sweep_latency(list(models), split_list(strategy, "--strategy"), budgets,
                             provider=providers[0], settings=settings, batch=batches[0] or 1,
                             tolerance=tol, store=store, keep=keep, progress=progress)


@click.command()
@db_option
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Folder for the plots, summary.json, rows.csv, summary.md and index.html.")
@result_filters("base models")
@click.option("--reference", metavar="ID", help="Machine the others are compared to "
              "(fingerprint id prefix; default: the first stored).")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json's findings on stdout.")
def report(db_path, output, model_filter, provider_spec, machine_filter, reference,
           as_json) -> None:
    """Analyze stored sweeps: runtime against flops, params and acts per provider and machine.

    Writes plots (PNG, SVG), summary.json, rows.csv, summary.md and a self-contained
    index.html.

    Example: onnxscale report -o report/ && open report/index.html
    """
    from ..api import report as make_report

    providers = provider_spec.split(",") if provider_spec else None
    result = make_report(output, db=db_path, model=model_filter, providers=providers,
                         machine=machine_filter, reference=reference)
    if as_json:
        print_json(result.to_dict())
        return
    for finding in result.findings + result.machines + result.providers:
        click.echo(finding)
    click.echo(f"report written to {result.output}/index.html ({len(result.files)} files)")
