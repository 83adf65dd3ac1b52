"""``zoo list`` and ``zoo export``: the built-in base models."""

from __future__ import annotations

import click

from .common import print_json


@click.group()
def zoo() -> None:
    """Built-in base models (pycls architectures, random weights), usable as zoo:NAME."""


@zoo.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def zoo_list(as_json: bool) -> None:
    """List the built-in models.

    Example: onnxscale zoo list
    """
    from .. import zoo as zoo_models

    entries = [{"name": name, "description": zoo_models.describe(name)}
               for name in zoo_models.names()]
    if as_json:
        print_json({"models": entries})
        return
    from ..render import print_zoo

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

    from .. import zoo as zoo_models
    from ..model import save_model

    name = name[4:] if name.startswith("zoo:") else name
    target = save_model(zoo_models.build(name, seed=seed), Path(output or f"{name}.onnx"))
    click.echo(f"wrote {target}")
