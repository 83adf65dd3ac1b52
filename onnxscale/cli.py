"""The ``onnxscale`` command line: parse arguments, call the library, print.

Every command prints a rich table by default and one JSON object on stdout with ``--json``.
User errors (`OnnxscaleError`) become ``error: <one line>`` on stderr and a non-zero exit code;
unexpected exceptions become ``internal error: ...`` and show a traceback only with ``--debug``.
"""

from __future__ import annotations

import json
import sys
import traceback

import click

from . import __version__
from .errors import OnnxscaleError, UsageError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class OnnxscaleGroup(click.Group):
    """A click group that turns exceptions into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # bad flags: one line, like our own usage errors
            where = f" (see 'onnxscale {exc.ctx.info_name} --help')" \
                if exc.ctx is not None and exc.ctx.parent is not None else ""
            _fail(ctx, f"error: {exc.format_message()}{where}", exc.exit_code)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except OnnxscaleError as exc:
            _fail(ctx, f"error: {exc}", exc.exit_code)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)
        except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
            _fail(ctx, f"internal error: {type(exc).__name__}: {exc} "
                       f"(run with --debug for the traceback)", 3)


def _fail(ctx: click.Context, message: str, code: int) -> None:
    if ctx.obj and ctx.obj.get("debug"):
        traceback.print_exc()
    click.echo(message.splitlines()[0] if message else "error", err=True)
    ctx.exit(code)


@click.group(cls=OnnxscaleGroup, context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="onnxscale")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Analyze and scale convolutional networks given only their ONNX file."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def print_json(obj) -> None:
    """Print one JSON object on stdout (the contract of every ``--json`` flag)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:1x3x224x224",
    help="Fix an input's dims (repeatable). A symbolic batch dim defaults to 1.")
db_option = click.option(
    "--db", "db_path", default=None, metavar="PATH",
    help="Results database (default: $ONNXSCALE_DB or the user data folder).")


def result_filters(what: str):
    """--model / --provider / --machine, as `results` and `report` filter stored rows."""
    def decorate(command):
        for option in reversed((
                click.option("--model", "model_filter", default=None, metavar="TEXT",
                             help=f"Only {what} whose name contains TEXT (or whose hash "
                                  f"starts with it)."),
                click.option("--provider", "-p", "provider_spec", default=None, metavar="LIST",
                             help="Only these providers (comma-separated)."),
                click.option("--machine", "machine_filter", default=None, metavar="ID",
                             help="Only results from the machine whose fingerprint id "
                                  "starts with ID."))):
            command = option(command)
        return command
    return decorate


# ---- analyze ----------------------------------------------------------------------------------

def load_graph(model: str, input_shapes: tuple[str, ...]):
    """Load a model argument and index it with concrete input shapes."""
    from .graph import Graph
    from .model import load_model, parse_input_shapes

    shapes = parse_input_shapes(input_shapes)
    loaded = load_model(model, lazy=True)  # dims are all it needs: external data stays
    return loaded, Graph(loaded.proto, shapes)


@main.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--layers", "show_layers", is_flag=True, help="Also show every layer.")
def analyze(model: str, input_shapes: tuple[str, ...], as_json: bool, show_layers: bool) -> None:
    """Count flops, params and activations per layer and stage.

    MODEL is a .onnx path or zoo:NAME.

    Example: onnxscale analyze zoo:efficientnet-b0 --layers
    """
    from .complexity import analyze as run_analysis

    loaded, graph = load_graph(model, input_shapes)
    report = run_analysis(graph)
    if as_json:
        print_json({"model": loaded.source, **report.to_json()})
        return
    from .render import print_analysis

    print_analysis(loaded.source, report, show_layers=show_layers)


# -- bench / results ---------------------------------------------------------------------------


def _positive_int(value: str | None, flag: str, *, allow_zero: bool = False) -> int | None:
    from .errors import UsageError

    if value is None:
        return None
    try:
        number = int(str(value).strip())
    except ValueError:
        raise UsageError(f"{flag} '{value}': expected a whole number") from None
    if number < 0 or (number == 0 and not allow_zero):
        raise UsageError(f"{flag} '{value}': must be {'>= 0' if allow_zero else 'at least 1'}")
    return number


def _parse_batches(spec: str | None) -> list[int | None]:
    from .errors import UsageError

    if spec is None:
        return [None]
    batches: list[int | None] = []
    for item in spec.split(","):
        number = _positive_int(item, "--batch")
        if number is None or item.strip() == "":
            raise UsageError(f"--batch '{spec}': expected sizes like 1,8,64")
        if number not in batches:
            batches.append(number)
    return batches


def _bench_settings(threads, precision, warmup, runs, seconds, io_binding, cuda_graph,
                    provider_options, input_shapes, cache_dir, providers, debug):
    from pathlib import Path

    from .bench import BenchSettings, parse_provider_options
    from .errors import UsageError
    from .model import parse_input_shapes

    if runs is not None and seconds is not None:
        raise UsageError("--runs and --seconds: give one or the other")
    seconds_value = None
    if seconds is not None:
        try:
            seconds_value = float(seconds)
        except ValueError:
            raise UsageError(f"--seconds '{seconds}': expected a number of seconds") from None
        if not seconds_value > 0 or seconds_value == float("inf"):
            raise UsageError(f"--seconds '{seconds}': must be a positive number")
    warm = None if str(warmup).strip().lower() == "auto" else _positive_int(
        warmup, "--warmup", allow_zero=True)
    per_provider, session_config = parse_provider_options(provider_options, providers)
    return BenchSettings(
        threads=_positive_int(threads, "--threads"), precision=precision, warmup=warm,
        runs=_positive_int(runs, "--runs"), seconds=seconds_value, io_binding=io_binding,
        cuda_graph=cuda_graph, provider_options=per_provider, session_config=session_config,
        input_shapes=parse_input_shapes(input_shapes),
        cache_dir=Path(cache_dir) if cache_dir else None, capture_log=not debug)


@main.command("bench")
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--provider", "-p", "provider_spec", default="cpu", show_default=True,
              help="Execution providers, comma-separated: cpu, cuda, tensorrt, openvino, dml, "
                   "coreml, rocm, migraphx, ... or any full ...ExecutionProvider name.")
@click.option("--batch", "-b", "batch_spec", default=None, metavar="1,8,64",
              help="Batch sizes (default: the model's own batch; 1 if it is dynamic).")
@click.option("--threads", default=None, metavar="N",
              help="Intra-op threads (default: onnxruntime's, one per physical core).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              show_default=True, help="fp16: TensorRT builds fp16 engines; other providers run "
                                      "an fp16 copy of the model with fp16 inputs.")
@click.option("--warmup", default="auto", show_default=True, metavar="auto|N",
              help="Warm-up runs; auto = until the recent median settles.")
@click.option("--runs", default=None, metavar="N", help="Timed runs per configuration.")
@click.option("--seconds", default=None, metavar="S",
              help="Time budget per configuration instead of --runs (default 3 s, >= 5 runs).")
@click.option("--io-binding/--no-io-binding", default=None,
              help="Bind inputs/outputs once to device buffers (default: on for GPU providers).")
@click.option("--cuda-graph", is_flag=True,
              help="Capture and replay CUDA graphs (CUDA, TensorRT; implies --io-binding).")
@click.option("--provider-option", "provider_options", multiple=True,
              metavar="[PROVIDER:]KEY=VALUE",
              help="Provider option (repeatable); a bare KEY=VALUE goes to every non-CPU "
                   "provider, a dotted key (session.intra_op.allow_spinning=0) to the session.")
@input_shape_option
@db_option
@click.option("--no-save", is_flag=True, help="Do not write results to the database.")
@click.option("--resume", is_flag=True,
              help="Skip configurations already measured on this machine (reuse stored rows).")
@click.option("--cache-dir", default=None, metavar="DIR",
              help="TensorRT engine and timing caches (default: ~/.cache/onnxscale).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def bench(ctx: click.Context, models, provider_spec, batch_spec, threads, precision, warmup, runs,
          seconds, io_binding, cuda_graph, provider_options, input_shapes, db_path, no_save,
          resume, cache_dir, as_json) -> None:
    """Time models on ONNX Runtime execution providers.

    Each (model, batch, provider) is timed after an adaptive warm-up; unavailable providers
    (or ones the session silently replaced by CPU) are reported with the reason.  Results go to
    a SQLite database; see them again with `onnxscale results`.
    """
    import signal

    from .bench import BenchInterrupted, parse_providers, run_bench
    from .store import ResultStore, default_db_path

    debug = bool(ctx.obj and ctx.obj.get("debug"))
    providers = parse_providers(provider_spec)
    batches = _parse_batches(batch_spec)
    settings = _bench_settings(threads, precision, warmup, runs, seconds, io_binding, cuda_graph,
                               provider_options, input_shapes, cache_dir, providers, debug)
    if resume and no_save:
        raise OnnxscaleError("--resume reads the database; it cannot be used with --no-save")
    store = None if no_save else ResultStore(db_path if db_path else default_db_path())

    from . import render

    progress = render.bench_progress(True)
    task = None
    finished: list[dict] = []

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
        report = run_bench(list(models), providers, batches, settings, store=store,
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
        print_json({"results": report.rows, "fingerprint": report.fingerprint,
                    "db": str(store.path) if store is not None else None})
    else:
        render.print_bench(report.rows, report.fingerprint, store.path if store else None)
    if report.rows and not any(r.get("available") for r in report.rows):
        first = report.rows[0]
        raise OnnxscaleError(f"nothing could be measured ({first['provider']}: {first['reason']})")


@main.command("results")
@db_option
@result_filters("models")
@click.option("--baseline", default="cpu", show_default=True,
              help="Provider the speedups are relative to.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def results(db_path, model_filter, provider_spec, machine_filter, baseline, as_json) -> None:
    """List stored measurements side by side.

    Providers side by side with speedups, and one model across machines."""
    from pathlib import Path

    from .bench import parse_providers, short_name
    from .store import ResultStore, compare_machines, compare_providers, default_db_path

    path = Path(db_path) if db_path else default_db_path()
    if not path.exists():
        raise OnnxscaleError(f"{path}: no results database yet; run `onnxscale bench` first")
    providers = parse_providers(provider_spec) if provider_spec else None
    base = short_name(parse_providers(baseline)[0])
    with ResultStore(path) as store:
        rows = store.rows(model=model_filter, providers=providers, fingerprint=machine_filter)
        fingerprints = store.fingerprints()
    side = compare_providers(rows, base)
    across = compare_machines(rows)
    if as_json:
        print_json({"db": str(path), "results": rows, "fingerprints": fingerprints,
                    "providers": side, "machines": across})
        return
    from . import render

    render.print_results(path, rows, fingerprints, side, across,
                         filtered=bool(model_filter or providers or machine_filter))


# ---- scale ------------------------------------------------------------------------------------

def _batch_value(value: str | None):
    if value is None or value == "dynamic":
        return value
    if value.isdigit() and int(value) > 0:
        return int(value)
    raise click.BadParameter("expected 'dynamic' or a positive integer", param_hint="--batch")


def _positive(ctx, param, value):
    """A multiplier: finite and positive (click's float type lets nan and inf through)."""
    import math

    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter("must be a finite positive number")
    return value


@main.command()
@click.argument("model")
@click.option("--width", "-w", type=float, callback=_positive,
              help="Multiply every scalable channel group's width by W (W < 1 shrinks).")
@click.option("--depth", "-d", type=float, callback=_positive,
              help="Set each stage's block count to max(1, round(D*n)).")
@click.option("--resolution", "-r", type=float, callback=_positive,
              help="Multiply the input's spatial size by R (rounded to a multiple of 4).")
@click.option("--group-width", "-g", type=float, callback=_positive,
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
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables "
                                                      "(a list of them for a grid).")
def scale(model, width, depth, resolution, group_width, strategy, alpha, flops_target, preset,
          no_search, tolerance, strict, batch, init, divisor, output, verify, seed, max_size, input_shapes,
          as_json):
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
    from pathlib import Path

    from .model import load_model, parse_input_shapes
    from .scaling.job import plan_job, write_job
    from .scaling.pipeline import Planner, ScaleOptions
    from .scaling.plan import parse_bytes

    options = ScaleOptions(init=init, divisor=divisor, batch=_batch_value(batch), seed=seed,
                           max_bytes=parse_bytes(max_size))
    multipliers = (width, depth, resolution, group_width)
    jobs = _jobs(strategy, alpha, flops_target, preset, no_search, multipliers,
                 _checked(parse_tolerance, tolerance), strict)
    shapes = parse_input_shapes(input_shapes)
    if len(jobs) > 1:
        _scale_grid(model, shapes, jobs, options, output, verify, as_json)
        return
    loaded = load_model(model, lazy=True)  # weights are read as the writer streams them
    planned = plan_job(Planner(loaded.proto, shapes), jobs[0], options)
    result = write_job(loaded, shapes, planned, Path(output) if output else None, verify)
    if as_json:
        print_json(result)
        return
    from .render import print_scale

    print_scale(result)


def _jobs(strategy, alpha, flops_target, preset, no_search, multipliers, tolerance,
          strict=False) -> list:
    """What to make, from the flags: one job, or a grid (comma-separated lists)."""
    from .errors import UsageError
    from .scaling.job import Job
    from .scaling.pipeline import Multipliers
    from .scaling.strategy import alpha_weights, parse_flops, parse_strategy, preset_multipliers

    has_multipliers = any(v is not None for v in multipliers)
    if preset is not None:
        if strategy or alpha or flops_target or has_multipliers:
            raise UsageError("--preset sets depth, width and resolution itself: give it alone, "
                             "without --strategy/--alpha/--flops or multipliers")
        names = _split(preset, "--preset")
        for name in names:
            _checked(preset_multipliers, name)
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
        named = [(name, _checked(parse_strategy, name)) for name in _split(strategy, "--strategy")]
    else:
        named = [(f"alpha={a}", _checked(alpha_weights, _checked(float, a)))
                 for a in _split(alpha, "--alpha")]
    targets = [(text, _checked(parse_flops, text)) for text in _split(flops_target, "--flops")]
    return [Job(strategy=name, weights=weights, flops=text, target=target,
                search=not no_search, tolerance=tolerance, strict=strict)
            for name, weights in named for text, target in targets]


def parse_tolerance(text: str) -> float:
    """``1.5%`` or ``0.015`` -> 0.015 (finite, positive, below 100%)."""
    import math

    spec = text.strip()
    value = float(spec[:-1]) / 100 if spec.endswith("%") else float(spec)
    if not (math.isfinite(value) and 0 < value < 1):
        raise ValueError(f"--tolerance '{text}': give a fraction in (0, 1) or a percentage "
                         f"like 1.5%")
    return value


def _checked(parse, text):
    """Run a strategy-module parser, turning its ValueError into a usage error."""
    from .errors import UsageError

    try:
        return parse(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _split(text: str, flag: str) -> list[str]:
    from .errors import UsageError

    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UsageError(f"{flag} '{text}': empty entry in the comma-separated list")
    if len(set(parts)) != len(parts):
        raise UsageError(f"{flag} '{text}': an entry is repeated")
    return parts


def _scale_grid(model, shapes, jobs, options, output, verify, as_json) -> None:
    """Plan every job (refusing the grid before writing anything if one is unreachable),
    then write them all; a progress bar on stderr, one summary table."""
    from pathlib import Path

    from rich.console import Console
    from rich.progress import Progress

    from .model import load_model
    from .scaling.job import grid_output, plan_job, write_job
    from .scaling.pipeline import Planner

    folder = Path(output) if output else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OnnxscaleError(f"{folder}: a grid writes one file per combination; -o must be "
                             f"a folder, and this is a file")
    loaded = load_model(model, lazy=True)
    planner = Planner(loaded.proto, shapes)
    results, console = [], Console(stderr=True)
    with Progress(console=console, transient=True, disable=as_json) as progress:
        task = progress.add_task("planning", total=2 * len(jobs))
        planned = []
        for job in jobs:
            progress.update(task, description=f"planning {job.label}")
            try:
                planned.append(plan_job(planner, job, options))
            except OnnxscaleError as exc:
                raise type(exc)(f"{job.label}: {exc} (nothing written)") from exc
            progress.advance(task)
        del planner
        folder.mkdir(parents=True, exist_ok=True)
        for item in planned:
            progress.update(task, description=f"writing {item.job.label}")
            target = grid_output(loaded.source, item.job, folder)
            results.append(write_job(loaded, shapes, item, target, verify))
            progress.advance(task)
    if as_json:
        print_json(results)
        return
    from .render import print_scale_grid

    print_scale_grid(results)


# ---- sweep ------------------------------------------------------------------------------------

@main.command()
@click.argument("models", nargs=-1, required=True, metavar="MODEL [MODEL ...]")
@click.option("--strategy", "-s", default="d,w,r,dw,dwr,dWr", show_default=True,
              help="Strategies, comma-separated (pycls syntax, as for scale).")
@click.option("--alpha", help="Fast compound scaling alphas, comma-separated (added to the "
                               "strategies).")
@click.option("--flops", "flops_spec", default="1x,2x,4x,8x,16x", show_default=True,
              help="Flops factors; 1x is the base model, measured once for every strategy.")
@click.option("--tolerance", default="1.5%", show_default=True,
              help="Largest accepted miss of a flops target; other cells are stored as failed.")
@click.option("--provider", "-p", "provider_spec", default="cpu", show_default=True,
              help="Execution providers, comma-separated (as for bench).")
@click.option("--batch", "-b", "batch_spec", default="1", show_default=True, metavar="1,64",
              help="Batch sizes.")
@click.option("--threads", default=None, metavar="N", help="Intra-op threads (as for bench).")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
              show_default=True)
@click.option("--warmup", default="auto", show_default=True, metavar="auto|N")
@click.option("--runs", default=None, metavar="N", help="Timed runs per cell.")
@click.option("--seconds", default=None, metavar="S",
              help="Time budget per cell instead of --runs (default 3 s).")
@click.option("--io-binding/--no-io-binding", default=None)
@click.option("--cuda-graph", is_flag=True)
@click.option("--provider-option", "provider_options", multiple=True,
              metavar="[PROVIDER:]KEY=VALUE")
@input_shape_option
@click.option("--cache-dir", default=None, metavar="DIR", help="TensorRT caches.")
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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
@click.pass_context
def sweep(ctx, models, strategy, alpha, flops_spec, tolerance, provider_spec, batch_spec,
          threads, precision, warmup, runs, seconds, io_binding, cuda_graph, provider_options,
          input_shapes, cache_dir, db_path, keep_models, retry_failed, ray_address,
          each_machine, accelerator_types, as_json) -> None:
    """Scale each model with every strategy to every flops factor and time every result.

    Cells (model, strategy, factor, provider, batch, options, machine) are stored one by one
    in the results database with the scaling facts; rerunning the same command skips the
    finished ones, and a killed sweep loses at most the cell in flight.

    Example: onnxscale sweep zoo:regnety-400mf --strategy d,w,dWr --flops 1x,2x,4x --runs 20
    """
    from pathlib import Path

    from .bench import parse_providers
    from .store import ResultStore, default_db_path
    from .sweep import Sweep, parse_factors

    debug = bool(ctx.obj and ctx.obj.get("debug"))
    strategies = _sweep_strategies(strategy, alpha)
    factors = parse_factors(flops_spec)
    providers = parse_providers(provider_spec)
    batches = _parse_batches(batch_spec)
    settings = _bench_settings(threads, precision, warmup, runs, seconds, io_binding, cuda_graph,
                               provider_options, input_shapes, cache_dir, providers, debug)
    tol = _checked(parse_tolerance, tolerance)
    keep = Path(keep_models) if keep_models else None
    if keep is not None and keep.exists() and not keep.is_dir():
        raise OnnxscaleError(f"{keep}: --keep-models needs a folder, and this is a file")
    path = Path(db_path) if db_path else default_db_path()
    types = [t.strip() for t in accelerator_types.split(",") if t.strip()] \
        if accelerator_types else []
    if (each_machine or types) and not ray_address:
        raise UsageError("--each-machine and --accelerator-type need --ray")
    if ray_address and keep is not None:
        raise UsageError("--keep-models is for local sweeps: with --ray, scaled models are "
                         "made on the node that measures them")
    from . import render

    with ResultStore(path) as store, render.sweep_progress(not as_json) as progress:
        common = dict(tolerance=tol, retry_failed=retry_failed, progress=progress)
        if ray_address:
            from .cluster import RaySweep

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


@main.command()
@db_option
@click.option("-o", "--output", required=True, type=click.Path(),
              help="Folder for the plots, summary.json, summary.md and index.html.")
@result_filters("base models")
@click.option("--reference", metavar="ID", help="Machine the others are compared to "
              "(fingerprint id prefix; default: the first stored).")
@click.option("--json", "as_json", is_flag=True, help="Print summary.json's findings on stdout.")
def report(db_path, output, model_filter, provider_spec, machine_filter, reference,
           as_json) -> None:
    """Analyze stored sweeps: runtime against flops, params and acts per provider and machine.

    Writes plots (PNG, SVG), summary.json, summary.md and a self-contained index.html.

    Example: onnxscale report -o report/ && open report/index.html
    """
    from pathlib import Path

    from .bench import fingerprint as fingerprint_mod
    from .bench import parse_providers
    from .report import summarize, write_report
    from .store import ResultStore, default_db_path

    path = Path(db_path) if db_path else default_db_path()
    if not path.exists():
        raise OnnxscaleError(f"{path}: no results database; run `onnxscale sweep` first")
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise OnnxscaleError(f"{folder}: -o needs a folder for the report, and this is a file")
    with ResultStore(path) as store:
        cells = store.cells(base=model_filter, fingerprint=machine_filter)
        machines = {fid: f"{fingerprint_mod.label(fp)} [{fid[:8]}]"
                    for fid, fp in store.fingerprints().items()}
    if provider_spec:
        wanted = set(parse_providers(provider_spec))
        cells = [c for c in cells if c["provider"] in wanted]
    if not any(c.get("status") == "ok" for c in cells):
        raise OnnxscaleError(f"{path}: no timed sweep cells match; run `onnxscale sweep` first")
    if reference and not any(fid.startswith(reference) for fid in machines):
        raise UsageError(f"--reference {reference}: no stored machine's fingerprint id starts "
                         f"with it (machines: {', '.join(f[:8] for f in machines) or 'none'})")
    summary = summarize(cells, machines, reference)
    written = write_report(summary, folder)
    if as_json:
        print_json({"output": str(folder), "files": [str(p) for p in written],
                    "findings": [p["finding"] for p in summary["panels"]],
                    "machines": [c["finding"] for c in summary["machines_compared"]],
                    "exponents": summary["exponents"]})
        return
    for panel in summary["panels"]:
        click.echo(panel["finding"])
    for compared in summary["machines_compared"]:
        click.echo(compared["finding"])
    click.echo(f"report written to {folder}/index.html ({len(written)} files)")


def _sweep_strategies(strategy: str | None, alpha: str | None) -> list:
    from .scaling.strategy import alpha_weights, parse_strategy
    from .sweep import Strategy

    out = [Strategy(name, _checked(parse_strategy, name))
           for name in (_split(strategy, "--strategy") if strategy else [])]
    for text in _split(alpha, "--alpha") if alpha else []:
        value = _checked(float, text)
        out.append(Strategy(f"alpha={text}", _checked(alpha_weights, value), value))
    if not out:
        from .errors import UsageError

        raise UsageError("give at least one --strategy or --alpha")
    return out


# ---- zoo --------------------------------------------------------------------------------------

@main.group()
def zoo() -> None:
    """Built-in base models (pycls architectures, random weights), usable as zoo:NAME."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def zoo_list(as_json: bool) -> None:
    """List the built-in models.

    Example: onnxscale zoo list
    """
    from . import zoo as zoo_models

    entries = [{"name": name, "description": zoo_models.describe(name)}
               for name in zoo_models.names()]
    if as_json:
        print_json({"models": entries})
        return
    from .render import print_zoo

    print_zoo(entries)


@zoo.command("export")
@click.argument("name")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output file "
              "(default: NAME.onnx in the current folder).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
def zoo_export(name: str, output: str | None, seed: int) -> None:
    """Write built-in model NAME as an .onnx file.

    Example: onnxscale zoo export resnet-50 -o resnet50.onnx
    """
    from pathlib import Path

    from . import zoo as zoo_models
    from .model import save_model

    name = name[4:] if name.startswith("zoo:") else name
    target = save_model(zoo_models.build(name, seed=seed), Path(output or f"{name}.onnx"))
    click.echo(f"wrote {target}")


# ---- blocks -----------------------------------------------------------------------------------

@main.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def blocks(model: str, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """List MODEL's stages and blocks, and which blocks depth scaling can repeat.

    Example: onnxscale blocks zoo:efficientnet-b0
    """
    from .scaling.depth.blocks import describe, find_blocks

    loaded, graph = load_graph(model, input_shapes)
    result = {"model": loaded.source,
              "inputs": {name: list(dims) for name, dims in graph.inputs.items()},
              **describe(find_blocks(graph))}
    if as_json:
        print_json(result)
        return
    from .render import print_blocks

    print_blocks(result)


# ---- groups -----------------------------------------------------------------------------------

@main.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def groups(model: str, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """List MODEL's channel groups: the channels width scaling must change together.

    Each group shows its width, the layers that produce and read it, and whether it can be
    widened (graph inputs, graph outputs and unsupported ops pin a group, with the reason).

    Example: onnxscale groups zoo:regnety-400mf
    """
    from .scaling.width.rules import find_groups

    loaded, graph = load_graph(model, input_shapes)
    found = find_groups(graph).groups()
    result = {"model": loaded.source,
              "inputs": {name: list(dims) for name, dims in graph.inputs.items()},
              "scalable": sum(group.scalable for group in found),
              "groups": [group.to_json() for group in found]}
    if as_json:
        print_json(result)
        return
    from .render import print_groups

    print_groups(result)
