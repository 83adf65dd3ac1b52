"""Rich tables for the terminal (the ``--json`` forms carry the same data)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .complexity import Report


def human(value: int | float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (decimal prefixes, as papers report flops and params)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


def dims(shape) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)


def print_analysis(source: str, report: Report, show_layers: bool = False,
                   console: Console | None = None) -> None:
    console = console or Console()
    inputs = ", ".join(f"{name} {dims(shape)}" for name, shape in report.inputs.items())
    console.print(f"[bold]{source}[/]  opset {report.opset}, {report.nodes} nodes, "
                  f"inputs: {inputs}")
    if show_layers:
        console.print(_layer_table(report))
    console.print(_stage_table(report))
    if report.uncounted:
        listed = ", ".join(f"{op} x{count}" for op, count in report.uncounted.items())
        console.print(f"[dim]not counted (0 flops/acts by convention): {listed}[/]")


def _stage_table(report: Report) -> Table:
    table = Table(title="Complexity per stage (pycls convention)", title_justify="left")
    for column in ("stage", "resolution", "layers", "flops", "params", "acts"):
        table.add_column(column, justify="left" if column == "resolution" else "right")
    for stage in report.stages:
        table.add_row(str(stage.index), stage.resolution, str(stage.layers), human(stage.flops),
                      human(stage.params), human(stage.acts))
    table.add_section()
    table.add_row("total", "", str(sum(s.layers for s in report.stages)),
                  f"{human(report.flops)}\n{report.flops:,}",
                  f"{human(report.params)}\n{report.params:,}",
                  f"{human(report.acts)}\n{report.acts:,}", style="bold")
    return table


def _layer_table(report: Report) -> Table:
    table = Table(title="Layers", title_justify="left")
    for column in ("layer", "op", "output", "stage", "flops", "params", "acts"):
        table.add_column(column, justify="left" if column in ("layer", "op", "output")
                         else "right", overflow="fold")
    for layer in report.layers:
        table.add_row(layer.name, layer.op, dims(layer.output_shape), str(layer.stage),
                      f"{layer.flops:,}", f"{layer.params:,}", f"{layer.acts:,}")
    return table
