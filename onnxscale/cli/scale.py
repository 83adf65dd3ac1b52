"""``scale``: one scaled model, or a grid of strategies x flops targets."""

from __future__ import annotations

import click

from .common import db_option, input_shape_option, positive_multiplier, print_json


def _batch_value(value: str | None):
    if value is None or value == "dynamic":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter("expected 'dynamic' or a positive integer", param_hint="--batch")


@click.command()
@click.argument("model")
@click.option("--width", "-w", type=float, callback=positive_multiplier,
              help="Multiply every scalable channel group's width by W (W < 1 shrinks).")
@click.option("--depth", "-d", type=float, callback=positive_multiplier,
              help="Set each stage's block count to max(1, round(D*n)).")
@click.option("--resolution", "-r", type=float, callback=positive_multiplier,
              help="Multiply the input's spatial size by R (rounded to a multiple of 4).")
@click.option("--group-width", "-g", type=float, callback=positive_multiplier,
              help="Multiply the group width of grouped convs by G (default: unchanged).")
@click.option("--strategy", "-s", help="Scaling strategy with --flops: letters of d, w, g, r "
                                        "(dw, dwr), pycls weights (d1_w8_g8_r1), or dWr; "
                                        "comma-separated for a grid.")
@click.option("--alpha", help="Fast compound scaling with this alpha (0.8 = dWr, 1/3 = dwr, "
                               "1 = width only), with --flops; comma-separated for a grid.")
@click.option("--flops", "flops_target", help="Flops target for --strategy/--alpha: a ratio "
                                              "(2x) or a count (4G, 800M, 1.5e9); "
                                              "comma-separated for a grid.")
@click.option("--preset", help="EfficientNet's own compound scaling: efficientnet-b1 ... b7 "
                               "(its coefficients and rounding, relative to B0 at 224).")
@click.option("--no-search", is_flag=True, help="Apply the strategy's multipliers once, as "
                                                "pycls does, instead of searching the flops "
                                                "target through the rounding.")
@click.option("--tolerance", default="1.5%", show_default=True,
              help="Largest accepted miss of the flops target (1.5%, 0.05); a strategy that "
                   "cannot get this close is refused.")
@click.option("--strict", is_flag=True, help="Refuse a strategy that names a dimension the "
                                             "model cannot scale, instead of scaling the "
                                             "others in the strategy's proportions.")
@click.option("--batch", help="Rewrite the batch dim: 'dynamic' or a positive integer.")
@click.option("--init", type=click.Choice(["preserve", "random"]), default="preserve",
              show_default=True, help="Weights of new channels/blocks: function-preserving "
                                      "copies, or fresh random (runtime studies).")
@click.option("--divisor", type=click.IntRange(min=1), default=8, show_default=True,
              help="Channel counts become multiples of this.")
@click.option("-o", "--output", type=click.Path(),
              help="Output file (default: MODEL.w2.onnx beside the input); a folder for a grid.")
@click.option("--verify", is_flag=True, help="Run base and scaled model in ONNX Runtime and "
                                             "report the relative L2 difference of outputs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for random init.")
@click.option("--max-size", default="16G", show_default=True,
              help="Refuse models whose weights, or whose batch-1 activations, need more bytes "
                   "than this.")
@click.option("--latency", "latency_target", metavar="25ms|2x",
              help="Runtime budget for --strategy instead of --flops: a time (25ms, 0.5s) or a "
                   "multiple of the base model's measured p50 (2x); the largest model within "
                   "it, found with the runtime predictor and settled by measurement; "
                   "comma-separated for a grid.")
@click.option("--latency-tolerance", default="5%", show_default=True,
              help="Largest accepted miss of the runtime budget, by measurement.")
@click.option("--provider", "-p", "provider_spec", default="cpu", show_default=True,
              help="With --latency: the provider the budget is for.")
@click.option("--threads", default=None, metavar="N", help="With --latency: intra-op threads.")
@db_option
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables "
                                                      "(a list of them for a grid).")
@click.pass_context
def scale(ctx, model, width, depth, resolution, group_width, strategy, alpha, flops_target,
          preset, no_search, tolerance, strict, batch, init, divisor, output, verify, seed,
          max_size, latency_target, latency_tolerance, provider_spec, threads, db_path,
          input_shapes, as_json):
    """Scale width, depth and resolution to a new ONNX model.

    Give multipliers (--width/--depth/--resolution/--group-width), a strategy and a flops
    target (--strategy dWr --flops 2x; the target is met through the rounding by searching
    the strategy's scale factor, or refused when it cannot be), or an EfficientNet preset.
    Comma-separated strategies and targets make a grid: every combination is written to the
    folder given with -o, the base model loaded and analyzed once.

    Examples: onnxscale scale zoo:efficientnet-b0 --strategy dWr --flops 4x;
    onnxscale scale model.onnx --width 2 -o model-w2.onnx;
    onnxscale scale zoo:efficientnet-b0 --strategy d,w,r,dw,dwr,dWr --flops 2x,4x,16x -o grid/
    """
    from ..api import scale as scale_model
    from ..scaling.job import checked, make_jobs, parse_tolerance

    tol = checked(parse_tolerance, tolerance)
    batch_value = _batch_value(batch)
    if latency_target is not None:
        from .latency import scale_latency

        scale_latency(ctx, model, strategy=strategy, alpha=alpha, flops=flops_target,
                      multipliers=(width, depth, resolution, group_width), preset=preset,
                      latency=latency_target, tolerance=latency_tolerance,
                      provider_spec=provider_spec, threads=threads, batch=batch_value,
                      init=init, divisor=divisor, seed=seed, max_size=max_size, output=output,
                      db_path=db_path, input_shapes=input_shapes, as_json=as_json)
        return
    jobs = make_jobs(strategy, alpha, flops_target, preset, no_search,
                     (width, depth, resolution, group_width), tol, strict)
    if len(jobs) > 1:
        _scale_grid(model, input_shapes, jobs, init, divisor, batch_value, seed, max_size,
                    output, verify, as_json)
        return
    result = scale_model(model, strategy=strategy, flops=flops_target, alpha=alpha,
                         width=width, depth=depth, resolution=resolution,
                         group_width=group_width, preset=preset, search=not no_search,
                         tolerance=tol, strict=strict, init=init, divisor=divisor,
                         batch=batch_value, seed=seed, max_size=max_size,
                         input_shapes=input_shapes)
    result.save(output, verify=verify)
    if as_json:
        print_json(result.to_dict())
        return
    from ..render import print_scale

    print_scale(result.to_dict())


def _scale_grid(model, input_shapes, jobs, init, divisor, batch, seed, max_size, output,
                verify, as_json) -> None:
    """Every combination to the folder -o: a progress bar on stderr, one summary table."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress

    from ..model import load_model, parse_input_shapes
    from ..scaling.job import write_grid
    from ..scaling.plan import ScaleOptions, parse_bytes

    options = ScaleOptions(init=init, divisor=divisor, batch=batch, seed=seed,
                           max_bytes=parse_bytes(max_size))
    shapes = parse_input_shapes(input_shapes)
    folder = Path(output) if output else Path(".")
    loaded = load_model(model, lazy=True)  # weights are read as the writer streams them
    with Progress(console=Console(stderr=True), transient=True, disable=as_json) as progress:
        task = progress.add_task("planning", total=2 * len(jobs))
        started = []

        def step(description: str) -> None:
            if started:
                progress.advance(task)
            started.append(description)
            progress.update(task, description=description)

        results = write_grid(loaded, shapes, jobs, options, folder, verify, step)
    if as_json:
        print_json(results)
        return
    from ..render import print_scale_grid

    print_scale_grid(results)
