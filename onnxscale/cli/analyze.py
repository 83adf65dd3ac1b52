"""``analyze``, ``blocks`` and ``groups``: what a model is made of."""

from __future__ import annotations

import click

from .common import input_shape_option, load_graph, print_json


@click.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--layers", "show_layers", is_flag=True, help="Also show every layer.")
def analyze(model: str, input_shapes: tuple[str, ...], as_json: bool, show_layers: bool) -> None:
    """Count flops, params and activations per layer and stage.

    MODEL is a .onnx path or zoo:NAME.

    Example: onnxscale analyze zoo:efficientnet-b0 --layers
    """
    from ..api import analyze as run_analysis

    result = run_analysis(model, input_shapes)
    if as_json:
        print_json(result.to_dict())
        return
    from ..render import print_analysis

    print_analysis(result.model, result.report, show_layers=show_layers)


@click.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def blocks(model: str, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """List MODEL's stages and blocks, and which blocks depth scaling can repeat.

    Example: onnxscale blocks zoo:efficientnet-b0
    """
    from ..scaling.depth.blocks import describe, find_blocks

    loaded, graph = load_graph(model, input_shapes)
    result = {"model": loaded.source,
              "inputs": {name: list(dims) for name, dims in graph.inputs.items()},
              **describe(find_blocks(graph))}
    if as_json:
        print_json(result)
        return
    from ..render import print_blocks

    print_blocks(result)


@click.command()
@click.argument("model")
@input_shape_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def groups(model: str, input_shapes: tuple[str, ...], as_json: bool) -> None:
    """List MODEL's channel groups: the channels width scaling must change together.

    Each group shows its width, the layers that produce and read it, and whether it can be
    widened (graph inputs, graph outputs and unsupported ops pin a group, with the reason).

    Example: onnxscale groups zoo:regnety-400mf
    """
    from ..scaling.width.rules import find_groups

    loaded, graph = load_graph(model, input_shapes)
    found = find_groups(graph).groups()
    result = {"model": loaded.source,
              "inputs": {name: list(dims) for name, dims in graph.inputs.items()},
              "scalable": sum(group.scalable for group in found),
              "groups": [group.to_json() for group in found]}
    if as_json:
        print_json(result)
        return
    from ..render import print_groups

    print_groups(result)
