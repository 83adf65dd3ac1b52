"""``export``: a torchvision or timm model as an ONNX file (torch needed)."""

from __future__ import annotations

import click


@click.command()
@click.argument("name", metavar="torchvision:NAME|timm:NAME")
@click.option("--size", type=click.IntRange(16, 4096), default=224, show_default=True,
              help="Input height and width.")
@click.option("--exporter", type=click.Choice(["legacy", "dynamo"]), default="legacy",
              show_default=True, help="torch.onnx's TorchScript exporter, or torch.export's.")
@click.option("--weights", type=click.Choice(["default", "random-bn", "pretrained"]),
              default="default", show_default=True,
              help="The framework's random initialisation; the same with random BatchNorm "
                   "statistics; or pretrained weights already on this machine (nothing is "
                   "downloaded).")
@click.option("--dynamic-batch", is_flag=True, help="Export with a symbolic batch dim.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output file (default: NAME.onnx in the current folder).")
def export(name: str, size: int, exporter: str, weights: str, dynamic_batch: bool,
           output: str | None) -> None:
    """Export a torchvision or timm model to ONNX (cached: a second export is a copy).

    The same names work wherever a model is expected: onnxscale analyze timm:regnety_008.

    Example: onnxscale export torchvision:resnet50 --size 224 -o resnet50.onnx
    """
    from pathlib import Path

    import onnx

    from ..export import exported, parse_spec
    from ..model import save_model

    target = parse_spec(name, size=size, exporter=exporter, init=weights,
                        dynamic_batch=dynamic_batch)
    written = save_model(onnx.load(str(exported(target))), Path(output or f"{target.name}.onnx"))
    click.echo(f"wrote {written} ({target.label}, {size}x{size}, {exporter} exporter, "
               f"{weights} weights)")
