"""The ``onnxscale`` command line: parse arguments, call the library, print.

Every command prints a rich table by default and one JSON object on stdout with ``--json``.
User errors (`OnnxscaleError`) become ``error: <one line>`` on stderr and a non-zero exit code;
unexpected exceptions become ``internal error: ...`` and show a traceback only with ``--debug``.
One module per command family: `analyze` (analyze, blocks, groups), `scale`, `bench` (bench,
results), `sweep` (sweep, report), `zoo`, `export`,
`providers` (providers, add, remove), `predict` (profile, predict,
calibrate); `common` holds the shared options.
"""

from __future__ import annotations

import traceback

import click

from ..errors import OnnxscaleError
from ..version import __version__
from . import analyze, bench, export, predict, providers, scale, sweep, zoo

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
        except BrokenPipeError:  # `onnxscale ... | head`: the reader left; nothing to say
            import os
            import sys

            # further writes to the closed stdout (at exit) must not raise again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(141)
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


for command in (analyze.analyze, bench.bench, bench.results, scale.scale, sweep.sweep,
                sweep.report, zoo.zoo, analyze.blocks, analyze.groups, export.export,
                providers.providers, predict.profile, predict.predict, predict.calibrate):
    main.add_command(command)
