"""Rich tables for the terminal (the ``--json`` forms carry the same data)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table
from rich import box

from .complexity import Report

if TYPE_CHECKING:
    from .runtime.row import Row


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


def print_scale(result: dict, console: Console | None = None) -> None:
    """Base vs scaled complexity, and what each rewrite did."""
    console = console or Console()
    table = Table(title=f"Scaled model written to {result['output']}", title_justify="left")
    for column in ("", "flops", "params", "acts", "inputs"):
        table.add_column(column, justify="left" if column in ("", "inputs") else "right")
    base, scaled = result["base"], result["scaled"]
    for label, figures in (("base", base), ("scaled", scaled)):
        inputs = ", ".join(f"{n} {dims(s)}" for n, s in figures["inputs"].items())
        table.add_row(label, human(figures["flops"]), human(figures["params"]),
                      human(figures["acts"]), inputs)
    table.add_row("ratio", *(f"x{scaled[k] / base[k]:.3f}" if base[k] else "-"
                             for k in ("flops", "params", "acts")), "", style="bold")
    console.print(table)
    multipliers = ", ".join(f"{k}={v:g}" for k, v in result["multipliers"].items())
    inexact = [edit["kind"] for edit in result["edits"] if not edit["exact"]]
    exact = "yes: outputs equal the base model's" if result["exact"] else \
        f"no ({', '.join(inexact)} changes the outputs; see notes)" if any(
            kind != "resolution" for kind in inexact) else \
        "no (a new input size changes the outputs)"
    got = result.get("realized", {})
    if any(abs(got.get(k, v) / v - 1) > 0.01 for k, v in result["multipliers"].items()
           if k in got and v):
        multipliers += " (searched; the model got " + ", ".join(
            f"{k}=x{got[k]:.3g}" for k in ("d", "w", "r")) + ")"
    console.print(f"multipliers: {multipliers}; function preserved: {exact}")
    if "verified_rel_l2" in result:
        console.print(f"verified in ONNX Runtime: relative L2 difference "
                      f"{result['verified_rel_l2']:.2e}")
    for note in result["notes"]:
        console.print(f"[dim]note: {note}[/]")


def print_scale_grid(results: list[dict], console: Console | None = None) -> None:
    """One row per model of a grid (``scale --strategy a,b --flops x,y``): ratios to the base."""
    from pathlib import Path

    console = console or Console()
    base = results[0]["base"]
    inputs = ", ".join(f"{n} {dims(s)}" for n, s in base["inputs"].items())
    folder = Path(results[0]["output"]).parent
    console.print(f"base: {human(base['flops'])} flops, {human(base['params'])} params, "
                  f"{human(base['acts'])} acts, {inputs}")
    names = Path(results[0]["output"]).name.split(".")[0]
    table = Table(title=f"{len(results)} models written to {folder}/{names}.STRATEGY.TARGET"
                        f".onnx (figures: ratios to the base)", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for column in ("strategy", "target", "flops", "error", "params", "acts", "d/w/r",
                   "size"):
        table.add_column(column, justify="left" if column == "strategy" else "right",
                         no_wrap=True)
    for result in results:
        scaled, m = result["scaled"], result["multipliers"]
        strategy = result.get("strategy")
        name = strategy["name"] if strategy else result.get("preset", "")
        sizes = [s[2:] for s in scaled["inputs"].values() if len(s) == 4]
        size = "-" if not sizes else str(sizes[0][0]) if sizes[0][0] == sizes[0][1] else \
            "x".join(str(d) for d in sizes[0])
        table.add_row(name, strategy["flops"] if strategy else "",
                      f"{scaled['flops'] / base['flops']:.3f}",
                      f"{strategy['error']:+.2%}" if strategy else "",
                      f"{scaled['params'] / base['params']:.2f}" if base["params"] else "-",
                      f"{scaled['acts'] / base['acts']:.2f}" if base["acts"] else "-",
                      f"{m['d']:.3g}/{m['w']:.3g}/{m['r']:.3g}", size)
    console.print(table)


class sweep_progress:
    """A rich progress bar on stderr for ``sweep`` (cell in progress, ETA); None when off.

    Used as a context manager that yields the progress callback of `sweep.Sweep`."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(stderr=True), transient=True)
        self.bar.start()
        task = self.bar.add_task("sweep", total=None)

        def update(done: int, total: int, what: str) -> None:
            self.bar.update(task, completed=done, total=total, description=what)
        return update

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.stop()


def print_sweep(result, db_path, console: Console | None = None,
                machines: dict[str, dict] | None = None) -> None:
    """One row per (model, strategy, factor): complexity ratios and p50 per provider/batch,
    and per machine when the cells come from several (``machines``: fingerprints by id)."""
    from .runtime.providers import short_name

    console = console or Console()
    cells = result.whole()   # this run's cells and those an earlier run finished
    several = len({c.get("fingerprint") for c in cells if c.get("factor")}) > 1
    distinct = {(c.get("base_hash", c["base"]), c["strategy"], c["factor"], c["provider"],
                 c["batch"], c.get("fingerprint")) for c in result.cells if c["status"] != "failed"}
    measured = (f"{result.done} cell(s) measured" if len(distinct) == result.done else
                f"{len(distinct)} cell(s) measured in {result.done} rounds in all")
    earlier = len(cells) - len(result.cells)
    table = Table(title=f"sweep: {measured}, {earlier} already done, {result.failed} failed",
                  title_justify="left", box=box.SIMPLE_HEAD)
    columns: list[tuple[str, str]] = []   # (provider and batch, machine or "")
    rows: dict[tuple, dict] = {}
    for cell in cells:
        if cell.get("factor") is None:   # a budget sweep --latency could not meet: below
            continue
        strategy = cell["strategy"] + (f" @{cell['latency_budget']}"
                                       if cell.get("latency_budget") else "")
        key = (cell["base"], strategy, cell["factor"])
        entry = rows.setdefault(key, {"cell": cell, "p50": {}})
        column = (f"{short_name(cell['provider'])} b{cell['batch']}",
                  _machine_name(cell.get("fingerprint"), machines or {}) if several else "")
        if column not in columns:
            columns.append(column)
        ci = (cell.get("bench") or {}).get("p50_ci_ms")
        spread = f" ±{(ci[1] - ci[0]) / 2:.2f}" if ci and cell.get("p50_ms") else ""
        entry["p50"][column] = (f"{cell['p50_ms']:.2f}{spread}" if cell.get("p50_ms") else
                                cell["status"])
    for name in ("model", "strategy", "factor", "flops", "acts"):
        table.add_column(name, justify="left" if name in ("model", "strategy") else "right")
    for head, machine in columns:
        table.add_column(f"{head} ms" + (f"\n{machine}" if machine else ""), justify="right")
    for (base, strategy, factor), entry in rows.items():
        cell = entry["cell"]
        figures = cell.get("base_figures") or {}
        ratio = (lambda k: f"{cell[k] / figures[k]:.2f}" if cell.get(k) and figures.get(k)
                 else "-")
        table.add_row(base, strategy, f"{factor:.4g}x", ratio("flops"), ratio("acts"),
                      *(entry["p50"].get(c, "") for c in columns))
    console.print(table)
    failed = [c for c in result.cells if c["status"] == "failed"]
    for reason in dict.fromkeys(c["reason"] for c in failed):
        console.print(f"[dim]failed: {reason}[/]")
    unsettled = [c for c in cells[len(result.cells):] if c.get("status") != "ok"]
    if unsettled:
        statuses = " or ".join(sorted({c["status"] for c in unsettled}))
        console.print(f"[dim]{len(unsettled)} cell(s) stored as {statuses} by an "
                      f"earlier run were not tried again: --retry-failed does (after changing "
                      f"--tolerance, for instance)[/]")
    for note in result.notes:
        console.print(f"[dim]note: {note}[/]")
    console.print(f"saved to {db_path}")


def _machine_name(fid: str | None, machines: dict[str, dict]) -> str:
    """A column-wide name for a machine: its $ONNXSCALE_MACHINE name or host, and its id."""
    found = machines.get(fid or "", {})
    return f"{found.get('name') or found.get('hostname') or '?'} {(fid or '?')[:6]}"


def print_zoo(entries: list[dict], console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title="Built-in models (use as zoo:NAME)", title_justify="left")
    table.add_column("name")
    table.add_column("description")
    for entry in entries:
        table.add_row(entry["name"], entry["description"])
    console.print(table)


def print_blocks(result: dict, console: Console | None = None) -> None:
    """Stages and their blocks (``onnxscale blocks``)."""
    console = console or Console()
    inputs = ", ".join(f"{name} {dims(shape)}" for name, shape in result["inputs"].items())
    console.print(f"[bold]{result['model']}[/]  inputs: {inputs}")
    table = Table(title="Stages and blocks", title_justify="left")
    for column in ("stage", "resolution", "width", "block", "kind", "nodes", "repeatable"):
        table.add_column(column, justify="right" if column in ("stage", "width", "block")
                         else "left", overflow="fold")
    for stage in result["stages"]:
        for number, block in enumerate(stage["blocks"], start=1):
            head = number == 1
            nodes = f"{block['first']} .. {block['last']} ({block['nodes']})"
            mark = "[green]yes[/]" if block["repeatable"] else "[yellow]no[/]"
            table.add_row(str(stage["index"]) if head else "", stage["resolution"] if head else "",
                          str(stage["width"]) if head else "", str(number), block["kind"], nodes,
                          f"{mark}: {block['why']}")
        table.add_section()
    console.print(table)
    others = [p for p in result["pieces"] if p["kind"] in ("stem", "head", "other")]
    for piece in others:
        console.print(f"[dim]{piece['kind']}: {piece['first']} .. {piece['last']} "
                      f"({piece['nodes']} nodes, {dims(piece['in_shape'])} -> "
                      f"{dims(piece['out_shape'])}), not a repeatable block[/]")


# ---- bench / results -----------------------------------------------------------------------

def short_model_names(models) -> dict[str, str]:
    """Model labels for tables: file names instead of paths, unless two files share a name."""
    from pathlib import PurePath

    models = list(dict.fromkeys(models))
    names = {m: PurePath(m).name if not m.startswith("zoo:") else m for m in models}
    if len(set(names.values())) < len(names):
        return {m: m for m in models}
    return names


def fmt_ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if value < 10 else f"{value:.2f}" if value < 1000 else f"{value:.0f}"


def bench_progress(enabled: bool):
    """A rich progress bar on stderr (so --json stdout stays one object); refreshed by the
    runner between timed runs, never by a background thread that would steal CPU time."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn,
                               TextColumn, TimeElapsedColumn)

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        return None
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                    MofNCompleteColumn(), TextColumn("{task.fields[phase]}"), TimeElapsedColumn(),
                    console=console, auto_refresh=False, transient=True)


def print_bench(rows: list[Row], fingerprint: dict, db_path) -> None:
    from .runtime.fingerprint import label
    from .store import compare_providers

    console = Console()
    wide = console.width >= 112  # narrow terminals get the core columns; --json has them all
    table = Table(title="onnxscale bench", title_justify="left", box=box.SIMPLE_HEAD,
                  padding=(0, 1))
    names = short_model_names(r.model for r in rows)
    table.add_column("model", overflow="fold",
                     min_width=min(24, max((len(n) for n in names.values()), default=10)))
    table.add_column("provider", overflow="fold",
                     min_width=max((len(_provider_cell(r)) for r in rows), default=8))
    columns = [("batch", lambda r: str(r.batch)), ("p50 ms", lambda r: fmt_ms(r.p50_ms)),
               ("± 95%", _interval_cell)]
    if any(r.rounds and len(r.rounds) > 1 for r in rows):
        columns.append(("rounds", lambda r: str(len(r.rounds or [None]))))
    if console.width >= 96:
        columns.append(("p90 ms", lambda r: fmt_ms(r.p90_ms)))
    if wide:
        columns += [("p95 ms", lambda r: fmt_ms(r.p95_ms)), ("max ms", lambda r: fmt_ms(r.max_ms))]
    columns += [("CV", lambda r: f"{r.cv * 100:.1f}%"),
                ("items/s", lambda r: f"{r.throughput:.1f}"), ("runs", lambda r: str(r.runs)),
                ("nodes", _nodes_cell), ("outputs", _outputs_cell)]
    if console.width >= 150:
        columns += [("create ms", lambda r: fmt_ms(r.session_create_ms)),
                    ("first ms", lambda r: fmt_ms(r.first_run_ms)),
                    ("peak MB", lambda r: f"{r.peak_host_mb:.0f}" if r.peak_host_mb
                     else "-")]
    for name, _ in columns:
        table.add_column(name, justify="right", no_wrap=True)
    problems: dict[tuple[str, str, str], list[str]] = {}
    for row in rows:
        model = names[row.model]
        if row.available:
            table.add_row(model, _provider_cell(row), *[fmt(row) for _, fmt in columns])
            if row.stability and row.stability.get("unstable"):
                key = (row.provider, "unstable", "; ".join(row.stability["reasons"]))
                problems.setdefault(key, []).append(f"{model} b{row.batch}")
            if row.placement and row.placement.get("partial"):
                from .runtime.placement import describe

                key = (row.provider, "partial", describe(row.placement, row.provider_name))
                problems.setdefault(key, []).append(f"{model} b{row.batch}")
        else:
            status = "n/a" if row.status == "unavailable" else row.status
            table.add_row(model, _provider_cell(row), str(row.batch), f"[yellow]{status}[/]",
                          *[""] * (len(columns) - 2))
            key = (row.provider, row.status, row.reason or "")
            problems.setdefault(key, []).append(f"{model} b{row.batch}")
    console.print(table)
    for (provider, status, reason), where in problems.items():
        scope = where[0] if len(where) == 1 else f"{len(where)} configurations"
        console.print(f"[yellow]{provider} {status}[/] ({scope}): {reason}", highlight=False,
                      soft_wrap=True)
    side = [e for e in compare_providers(rows) if len(e["p50_ms"]) + len(e["unavailable"]) > 1]
    if side:
        print_side_by_side(console, side)
    console.print(f"[dim]{label(fingerprint)} · onnxruntime {fingerprint.get('ort_version')} · "
                  f"machine {fingerprint.get('id')}"
                  + (f" · saved to {db_path}" if db_path else "") + "[/]", highlight=False,
                  soft_wrap=True)


def _provider_cell(row: Row) -> str:
    """The provider, and where it ran when not in this process (an environment, a plugin)."""
    if not row.environment:
        return row.provider
    return f"{row.provider} (plugin)" if row.environment.startswith("plugin:") else \
        f"{row.provider} (env)"


def _interval_cell(row: Row) -> str:
    """Half the width of the p50's 95% interval, and ``!`` when the row is unstable."""
    if not row.p50_ci_ms:
        return "-"
    low, high = row.p50_ci_ms
    text = f"{(high - low) / 2:.2f}" if high - low < 20 else f"{(high - low) / 2:.0f}"
    return f"[yellow]{text}![/]" if (row.stability or {}).get("unstable") else text


def _nodes_cell(row: Row) -> str:
    """How many of the session's nodes ran on the requested provider."""
    placement = row.placement
    if not placement:
        return "?"
    if not placement.get("partial"):
        return "all"
    return f"[yellow]{placement['on_provider']}/{placement['total']}[/]"


def _outputs_cell(row: Row) -> str:
    from .runtime.agreement import describe

    text = describe(row.output_check)
    return text if not row.output_check or row.output_check["ok"] else f"[red]{text}[/]"


def print_profile(profile, top: int, db_path, console: Console | None = None) -> None:
    """``onnxscale profile``: layers by time share, with their complexity."""
    console = console or Console()
    attributed = sum(layer.ms for layer in profile.layers) or 1.0
    table = Table(title=f"{profile.model} on {profile.provider}, batch {profile.batch}: "
                        f"p50 {fmt_ms(profile.p50_ms)} ms (bench), profiled kernels "
                        f"{profile.profiled_ms:.2f} ms a run", title_justify="left",
                  box=box.SIMPLE_HEAD)
    wide = console.width >= 110   # the kernels that ran: only where they fit
    names = ("layer", "kind", "ms", "share", "flops", "params", "acts") + (
        ("kernels",) if wide else ())
    for name in names:
        # long exporter names (/features/features.2/conv/...) wrap; the figures never do
        table.add_column(name, justify="left" if name in ("layer", "kind", "kernels")
                         else "right", no_wrap=name not in ("layer", "kernels"),
                         overflow="fold")
    for layer in sorted(profile.layers, key=lambda item: -item.ms)[:top]:
        table.add_row(layer.name, layer.kind or layer.op, f"{layer.ms:.3f}",
                      f"{layer.ms / attributed:.1%}", human(layer.flops), human(layer.params),
                      human(layer.acts), *([" ".join(layer.kernels)] if wide else []))
    console.print(table)
    console.print(f"{len(profile.layers)} layers; {profile.unattributed_ms:.3f} ms a run in "
                  f"kernels that match no layer (layout reorders, copies)", highlight=False)
    for note in profile.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"[dim]saved to {db_path}[/]", highlight=False)


def print_providers(entries: list[dict], console: Console | None = None) -> None:
    """``onnxscale providers``: one line per provider and where it lives."""
    console = console or Console()
    table = Table(title="execution providers", title_justify="left", box=box.SIMPLE_HEAD)
    for name in ("provider", "where", "version", "usable", "detail"):
        table.add_column(name, overflow="fold", no_wrap=name in ("provider", "usable"))
    for entry in entries:
        usable = "[green]yes[/]" if entry["usable"] else "[yellow]no[/]"
        table.add_row(entry["provider"], entry["where"], entry["version"] or "-", usable,
                      entry["detail"])
    console.print(table)


def settings_text(entry: dict) -> str:
    threads = entry.get("threads")
    return f"{threads if threads else 'auto'} {entry.get('precision') or 'fp32'}"


def print_side_by_side(console, entries: list[dict], machines: dict | None = None) -> None:
    from rich.table import Table

    order = {fid: i for i, fid in enumerate(machines or {})}
    entries = sorted(entries, key=lambda e: (e["model"], e["batch"], settings_text(e),
                                             order.get(e.get("fingerprint"), len(order))))
    labels: list[str] = []
    for entry in entries:
        for lbl in list(entry["p50_ms"]) + list(entry["unavailable"]):
            if lbl not in labels:
                labels.append(lbl)
    show_settings = len({settings_text(e) for e in entries}) > 1
    table = Table(title="p50 ms (speedup over baseline)", title_justify="left",
                  box=box.SIMPLE_HEAD, padding=(0, 1))
    table.add_column("model", overflow="fold")
    table.add_column("batch", justify="right")
    if show_settings:
        table.add_column("threads/prec")
    if machines is not None:
        table.add_column("machine", overflow="fold")
    for lbl in labels:
        table.add_column(lbl, justify="right")
    names = short_model_names(e["model"] for e in entries)
    for entry in entries:
        cells = [names[entry["model"]], str(entry["batch"])]
        if show_settings:
            cells.append(settings_text(entry))
        if machines is not None:
            cells.append(machines.get(entry["fingerprint"], entry["fingerprint"] or "?"))
        for lbl in labels:
            if lbl in entry["p50_ms"]:
                cell = fmt_ms(entry["p50_ms"][lbl])
                speedup = entry["speedup"].get(lbl)
                if speedup is not None and lbl != entry["baseline"]:
                    cell += f" ({speedup:.2f}x)"
                elif lbl == entry["baseline"] and len(entry["p50_ms"]) > 1:
                    cell += " (base)"
            elif lbl in entry["unavailable"]:
                cell = "[yellow]n/a[/]"
            else:
                cell = ""
            cells.append(cell)
        table.add_row(*cells)
    console.print(table)


def print_results(path, rows: list[Row], fingerprints: dict, side: list[dict], across: list[dict],
                  filtered: bool) -> None:
    """`onnxscale results`: providers side by side, then one model across machines."""
    from .runtime.fingerprint import label

    console = Console()
    if not rows:
        console.print(f"no results in {path}" + (" matching the filters" if filtered else ""))
        return
    machines = {fid: f"{fid[:8]} {label(fp)}" for fid, fp in fingerprints.items()}
    print_side_by_side(console, side, machines if len(
        {e["fingerprint"] for e in side}) > 1 else None)
    if across:
        ids = list(dict.fromkeys(fid for e in across for fid in e["p50_ms"]))

        table = Table(title="one model across machines: p50 ms (ratio to the first)",
                      title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1))
        for name in ("model", "batch", "provider", "threads/prec"):
            table.add_column(name, overflow="fold")
        for fid in ids:
            table.add_column(machines.get(fid, fid), justify="right")
        across.sort(key=lambda e: (e["model"], e["batch"], e["provider"], settings_text(e)))
        names = short_model_names(e["model"] for e in across)
        for entry in across:
            cells = [names[entry["model"]], str(entry["batch"]), entry["provider"],
                     settings_text(entry)]
            for fid in ids:
                if fid in entry["p50_ms"]:
                    cells.append(f"{fmt_ms(entry['p50_ms'][fid])} ({entry['ratio'][fid]:.2f}x)")
                else:
                    cells.append("")
            table.add_row(*cells)
        console.print(table)
    problems = [r for r in rows if not r.available]
    if problems:
        console.print(f"[dim]{len(problems)} configuration(s) unavailable or failed; "
                      f"--json lists their reasons[/]", highlight=False)
    console.print(f"[dim]{len(rows)} result(s) from {len(fingerprints)} machine(s) in {path}[/]",
                  highlight=False)


def print_groups(result: dict, console: Console | None = None) -> None:
    """Channel groups: width, producing and reading layers, scalable or why not."""
    console = console or Console()
    table = Table(title=f"Channel groups of {result['model']}", title_justify="left")
    for column in ("id", "width", "kind", "produced by", "read by", "scalable"):
        table.add_column(column, justify="right" if column in ("id", "width") else "left",
                         overflow="fold")
    for group in result["groups"]:
        scalable = "yes" if group["scalable"] else f"[yellow]no: {group['reason']}[/]"
        if group["scalable"] and group["caveats"]:
            scalable += f" [dim](not exact: {group['caveats'][0]})[/]"
        table.add_row(str(group["id"]), str(group["width"]), group["kind"],
                      _first(group["producers"]), _first(group["consumers"]), scalable)
    console.print(table)
    console.print(f"{result['scalable']} of {len(result['groups'])} groups can be widened")


def _first(names: list[str], shown: int = 2) -> str:
    """The first names of a list, and how many more."""
    text = ", ".join(names[:shown])
    return text + (f" +{len(names) - shown}" if len(names) > shown else "") or "-"
