"""What every command shares: the JSON contract, the common options, loading a model.

`timing_options` declares bench's timing flags once, for ``bench`` and ``sweep`` alike, so
their names, defaults and help texts cannot drift apart."""

from __future__ import annotations

import json
import math
import sys

import click


def print_json(obj) -> None:
    """Print one JSON object on stdout (the contract of every ``--json`` flag)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def debug_enabled(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj and ctx.find_root().obj.get("debug"))


input_shape_option = click.option(
    "--input-shape", "input_shapes", multiple=True, metavar="NAME:1x3x224x224",
    help="Fix an input's dims (repeatable). A symbolic batch dim defaults to 1.")
db_option = click.option(
    "--db", "db_path", default=None, metavar="PATH",
    help="Results database (default: $ONNXSCALE_DB or the user data folder).")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print one JSON object on stdout instead of tables.")


def apply_options(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def result_filters(what: str):
    """--model / --provider / --machine, as `results` and `report` filter stored rows."""
    return lambda command: apply_options(command, (
        click.option("--model", "model_filter", default=None, metavar="TEXT",
                     help=f"Only {what} whose name contains TEXT (or whose hash starts with "
                          f"it)."),
        click.option("--provider", "-p", "provider_spec", default=None, metavar="LIST",
                     help="Only these providers (comma-separated)."),
        click.option("--machine", "machine_filter", default=None, metavar="ID",
                     help="Only results from the machine whose fingerprint id starts with "
                          "ID.")))


def timing_options(default_batch: str | None, batch_help: str):
    """How to time: providers, batches, threads, precision, warm-up, runs, IO binding, CUDA
    graphs, provider options, input shapes and the TensorRT cache (``bench``, ``sweep``)."""
    return lambda command: apply_options(command, (
        click.option("--provider", "-p", "provider_spec", default="cpu", show_default=True,
                     help="Execution providers, comma-separated: cpu, cuda, tensorrt, "
                          "openvino, dml, coreml, migraphx, ... or any full "
                          "...ExecutionProvider name."),
        click.option("--batch", "-b", "batch_spec", default=default_batch,
                     show_default=default_batch is not None, metavar="1,8,64", help=batch_help),
        click.option("--threads", default=None, metavar="N",
                     help="Intra-op threads (default: onnxruntime's, one per physical core)."),
        click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32",
                     show_default=True,
                     help="fp16: TensorRT builds fp16 engines; other providers run an fp16 "
                          "copy of the model with fp16 inputs."),
        click.option("--warmup", default="auto", show_default=True, metavar="auto|N",
                     help="Warm-up runs; auto = until the recent median settles."),
        click.option("--runs", default=None, metavar="N",
                     help="Timed runs per configuration."),
        click.option("--rounds", default="1", show_default=True, metavar="N",
                     help="Time every configuration N times, each a fresh session, rounds "
                          "interleaved A B B A so drift in the machine's speed does not land "
                          "on one; the p50's 95% interval covers the rounds' spread."),
        click.option("--seconds", default=None, metavar="S",
                     help="Time budget per configuration instead of --runs (default 3 s, "
                          ">= 5 runs)."),
        click.option("--io-binding/--no-io-binding", default=None,
                     help="Bind inputs/outputs once to device buffers (default: on for GPU "
                          "providers)."),
        click.option("--cuda-graph", is_flag=True,
                     help="Capture and replay CUDA graphs (CUDA, TensorRT; implies "
                          "--io-binding)."),
        click.option("--provider-option", "provider_options", multiple=True,
                     metavar="[PROVIDER:]KEY=VALUE",
                     help="Provider option (repeatable); a bare KEY=VALUE goes to the one "
                          "non-CPU provider, a dotted key (session.intra_op.allow_spinning=0) "
                          "to the session."),
        click.option("--check-outputs/--no-check-outputs", default=True, show_default=True,
                     help="Compare each configuration's outputs with the CPU fp32 reference "
                          "on the same inputs (untimed)."),
        click.option("--output-tolerance", default=None, metavar="REL_L2",
                     help="Largest relative L2 error that agrees (default 1e-4 fp32, 1e-2 "
                          "fp16)."),
        click.option("--ep-library", "ep_libraries", multiple=True, metavar="PATH",
                     help="Register a plugin execution provider library (repeatable); "
                          "installed onnxruntime-ep-* packages are found by themselves."),
        input_shape_option,
        click.option("--cache-dir", default=None, metavar="DIR",
                     help="TensorRT engine and timing caches (default: ~/.cache/onnxscale).")))


def settings_from(providers: list[str], values: dict, debug: bool):
    """`BenchSettings` from the values of `timing_options`."""
    from ..runtime.settings import make_settings

    return make_settings(providers, threads=values["threads"], precision=values["precision"],
                         warmup=values["warmup"], runs=values["runs"],
                         seconds=values["seconds"], io_binding=values["io_binding"],
                         cuda_graph=values["cuda_graph"],
                         provider_options=values["provider_options"],
                         input_shapes=values["input_shapes"], cache_dir=values["cache_dir"],
                         check_outputs=values["check_outputs"],
                         output_tolerance=values["output_tolerance"],
                         ep_libraries=values["ep_libraries"], rounds=values["rounds"],
                         debug=debug)


def positive_multiplier(ctx, param, value):
    """A multiplier: finite and positive (click's float type lets nan and inf through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter("must be a finite positive number")
    return value


def load_graph(model: str, input_shapes: tuple[str, ...]):
    """Load a model argument and index it with concrete input shapes."""
    from ..graph import Graph
    from ..model import load_model, parse_input_shapes

    shapes = parse_input_shapes(input_shapes)
    loaded = load_model(model, lazy=True)  # dims are all it needs: external data stays
    return loaded, Graph(loaded.proto, shapes)
