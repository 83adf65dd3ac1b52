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
from .errors import OnnxscaleError

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class OnnxscaleGroup(click.Group):
    """A click group that turns exceptions into one-line messages."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
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


# ---- analyze ----------------------------------------------------------------------------------

def load_graph(model: str, input_shapes: tuple[str, ...]):
    """Load a model argument and index it with concrete input shapes."""
    from .graph import Graph
    from .model import load_model, parse_input_shapes

    shapes = parse_input_shapes(input_shapes)
    loaded = load_model(model)
    return loaded, Graph(loaded.proto, shapes)


@main.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--layers", "show_layers", is_flag=True, help="Also show every layer.")
def analyze(model: str, input_shapes: tuple[str, ...], as_json: bool, show_layers: bool) -> None:
    """Count flops, params and activations of MODEL (a .onnx path or zoo:NAME).

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
