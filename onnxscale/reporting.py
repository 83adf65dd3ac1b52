"""The paper's analysis of stored sweeps: which complexity metric predicts runtime on which
hardware, and which strategy is fastest at a given flops.

Input: the ``sweep_cells`` rows of a results database.  A *panel* is one (base model,
provider, machine, batch): the cells measured together, one curve per strategy over the
flops factors (factor 1, the base model, belongs to every curve).  Per panel:

- ``correlation``: Pearson r of log runtime against log flops, log params and log acts;
- ``fit``: runtime ~ a*flops + b*acts + c with a, b, c >= 0 (the paper's model: compute plus
  memory traffic plus overhead), its R^2, and its error on each strategy when that strategy
  is left out of the fit;
- ``fastest``: at each factor, the fastest strategy and its speedup over the slowest;
- a plain-language ``finding``.

Per base model and strategy, ``exponents``: the growth of acts and params with flops
(log-log slopes; the paper: dWr acts ~ s^0.6, dwr s^0.83).  `write_report` renders it all:
matplotlib plots (PNG and SVG), ``summary.json``, ``rows.csv``, ``summary.md`` and one
self-contained ``index.html``.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from .evidence import (correlation_gap, fastest_at, interval_of, noise_floor,
                       prediction_interval, ratio_interval)

METRICS = ("flops", "params", "acts")
STRATEGY_ORDER = ("d", "w", "r", "dw", "dwr", "dWr")


# ---- rows and panels ------------------------------------------------------------------------

def flat_rows(cells: list[dict], machines: dict[str, str]) -> list[dict]:
    """One flat row per stored cell that has complexity figures (timed or not)."""
    from .runtime.providers import short_name

    rows = []
    for cell in cells:
        if not cell.get("flops"):
            continue
        bench = cell.get("bench") or {}
        check = bench.get("output_check") or {}
        placement = bench.get("placement") or {}
        rows.append({
            "model": cell["base"], "strategy": cell["strategy"], "alpha": cell.get("alpha"),
            "flops_factor": cell["factor"], "provider": short_name(cell["provider"]),
            "machine": machines.get(cell["fingerprint"], cell["fingerprint"]),
            "fingerprint": cell["fingerprint"], "batch": cell["batch"],
            "flops": cell["flops"], "params": cell["params"], "acts": cell["acts"],
            "p50_ms": cell.get("p50_ms") if cell.get("status") == "ok" else None,
            "status": cell["status"], "multipliers": cell.get("multipliers"),
            "inputs": cell.get("inputs"), "p95_ms": bench.get("p95_ms"), "cv": bench.get("cv"),
            "p50_ci": _interval(cell, bench),
            "round_p50s": [r.get("p50_ms") for r in bench.get("rounds") or []],
            "unstable": (bench.get("stability") or {}).get("unstable"),
            "environment": bench.get("environment"),
            "latency_budget": cell.get("latency_budget"),
            "nodes_partial": placement.get("partial"), "outputs_ok": check.get("ok"),
            "outputs_rel_l2": check.get("rel_l2")})
    return rows


def _interval(cell: dict, bench: dict) -> list[float] | None:
    """A cell's stored p50 interval, at least as wide as Student's t of its rounds (cells
    stored before bench widened it so)."""
    from .runtime.uncertainty import at_least_t

    ci = bench.get("p50_ci_ms")
    if cell.get("status") != "ok" or not ci or not cell.get("p50_ms"):
        return None
    rounds = [r.get("p50_ms") for r in bench.get("rounds") or []]
    return list(at_least_t(cell["p50_ms"], (ci[0], ci[1]), rounds))


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """The report's rows as CSV (lists and dicts as JSON), for a spreadsheet or pandas."""
    import csv

    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else
                             ("" if v is None else v) for k, v in row.items()})


def panels(rows: list[dict]) -> dict[tuple, list[dict]]:
    """Timed rows grouped by (model, provider, machine, batch)."""
    out: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        if row["p50_ms"]:
            out[(row["model"], row["provider"], row["machine"], row["batch"])].append(row)
    return dict(out)


def curves(rows: list[dict]) -> dict[str, list[dict]]:
    """Per strategy, its rows by factor, the base (factor 1) included in every curve."""
    base = [r for r in rows if r["strategy"] == "base"]
    out: dict[str, list[dict]] = {}
    for strategy in ordered({r["strategy"] for r in rows} - {"base"}):
        points = [r for r in rows if r["strategy"] == strategy] + base
        out[strategy] = sorted(points, key=lambda r: r["flops_factor"])
    return out


def ordered(strategies) -> list[str]:
    known = [s for s in STRATEGY_ORDER if s in strategies]
    return known + sorted(s for s in strategies if s not in STRATEGY_ORDER)


# ---- statistics ------------------------------------------------------------------------------

def slope(x: list[float], y: list[float]) -> float | None:
    """Least-squares slope of log y against log x (None with fewer than 2 distinct x)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if len(lx) < 2 or np.ptp(lx) == 0:
        return None
    return float(np.polyfit(lx, ly, 1)[0])


def pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3:
        return None
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    if np.std(lx) == 0 or np.std(ly) == 0:
        return None
    return float(np.corrcoef(lx, ly)[0, 1])


def nonnegative_fit(features: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least squares with every coefficient >= 0, for a handful of features.

    The optimum of a non-negative least-squares problem is the unconstrained optimum on its
    set of non-zero coefficients; with 3 features there are 7 such sets, so solving each
    and keeping the best feasible one is exact (no solver library needed for this size).
    Each set is solved on the Gram matrix (n x n, formed once), so the rows' count costs
    once, not once per set: the predictor's 8 features make 255 sets over thousands of
    layers."""
    n = features.shape[1]
    gram, moment = features.T @ features, features.T @ target
    total = float(target @ target)
    best, best_residual = np.zeros(n), total
    for size in range(1, n + 1):
        for subset in itertools.combinations(range(n), size):
            index = list(subset)
            coef, *_ = np.linalg.lstsq(gram[np.ix_(index, index)], moment[index], rcond=None)
            if np.any(coef < 0):
                continue
            # |X c - y|^2 = y.y - 2 c.(X'y) + c.(X'X)c
            residual = total - 2.0 * float(coef @ moment[index]) + float(
                coef @ gram[np.ix_(index, index)] @ coef)
            # equal residuals (collinear features): the smallest coefficients, as lstsq's
            # minimum-norm solution would choose
            tie = abs(residual - best_residual) <= 1e-9 * max(total, 1e-12)
            if (residual < best_residual and not tie) or (
                    tie and float(coef @ coef) < float(best @ best)):
                best = np.zeros(n)
                best[index] = coef
                best_residual = residual
    return best


def runtime_fit(rows: list[dict]) -> dict | None:
    """runtime_ms ~ a*flops + b*acts + c (a, b, c >= 0): coefficients, R^2, and the mean
    relative error on each strategy's points when that strategy is left out of the fit."""
    if len(rows) < 4:
        return None
    scale = {"flops": 1e9, "acts": 1e6}  # GFLOPs and M activations keep the system well scaled

    def design(part):
        return np.array([[r["flops"] / scale["flops"], r["acts"] / scale["acts"], 1.0]
                         for r in part])

    y = np.array([r["p50_ms"] for r in rows])
    coef = nonnegative_fit(design(rows), y)
    predicted = design(rows) @ coef
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else None
    held_out = {}
    for strategy in ordered({r["strategy"] for r in rows} - {"base"}):
        train = [r for r in rows if r["strategy"] != strategy]
        test = [r for r in rows if r["strategy"] == strategy]
        if len(train) < 3 or not test:
            continue
        c = nonnegative_fit(design(train), np.array([r["p50_ms"] for r in train]))
        errors = np.abs(design(test) @ c / np.array([r["p50_ms"] for r in test]) - 1)
        held_out[strategy] = float(errors.mean())
    return {"ms_per_gflop": float(coef[0]), "ms_per_mact": float(coef[1]),
            "overhead_ms": float(coef[2]), "r2": r2, "left_out_error": held_out,
            "prediction_interval": prediction_interval(y, predicted)}


def exponents(rows: list[dict]) -> dict[str, dict]:
    """Per model and strategy: acts and params growth exponents against flops."""
    out = {}
    by_model = defaultdict(list)
    seen = set()
    for row in rows:  # complexity does not depend on provider: one row per (model, cell)
        key = (row["model"], row["strategy"], row["flops_factor"])
        if key not in seen:
            seen.add(key)
            by_model[row["model"]].append(row)
    for model, model_rows in by_model.items():
        for strategy, points in curves(model_rows).items():
            flops = [p["flops"] for p in points]
            out[f"{model} {strategy}"] = {
                "model": model, "strategy": strategy,
                "acts": slope(flops, [p["acts"] for p in points]),
                "params": slope(flops, [p["params"] for p in points]),
                "points": len(points)}
    return out


def fastest(rows: list[dict]) -> list[dict]:
    """At each flops factor (not 1), the fastest strategy, the strategies that tie with it
    within the measured noise, and its speedup over the slowest (`evidence.fastest_at`)."""
    out = []
    for factor in sorted({r["flops_factor"] for r in rows} - {1.0}):
        at = [r for r in rows if r["flops_factor"] == factor]
        if len(at) < 2:
            continue
        out.append({"flops_factor": factor} | fastest_at(at))
    return out


def equal_runtime(rows: list[dict], levels: tuple[float, ...] = (2.0, 4.0, 8.0, 16.0)
                  ) -> list[dict]:
    """Strategies compared at matched *measured* runtime: at ``level`` times the base
    model's p50, the flops and params each strategy's model would have, interpolated in
    log-log along its measured curve (runtime grows with flops along a strategy); a level is
    kept only where every strategy's curve spans it.  The paper compares at equal flops; on
    a given machine what matters is which strategy gives the most model per millisecond."""
    base = [r for r in rows if r["strategy"] == "base" and r["p50_ms"]]
    if not base:
        return []
    base_ms = base[0]["p50_ms"]
    out = []
    for level in levels:
        target = base_ms * level
        at = {}
        for strategy, points in curves(rows).items():
            timed = sorted((p for p in points if p["p50_ms"]), key=lambda p: p["p50_ms"])
            times = [p["p50_ms"] for p in timed]
            if len(timed) < 2 or not times[0] <= target <= times[-1]:
                at = None
                break
            at[strategy] = _along(timed, target)
        if not at or len(at) < 2:
            continue
        best = max(at, key=lambda s: at[s]["flops"])
        least = min(at, key=lambda s: at[s]["flops"])
        ties = [s for s in at if s != best and at[s]["flops_interval"][1]
                >= at[best]["flops_interval"][0]]
        out.append({"runtime_factor": level, "runtime_ms": target, "by_strategy": at,
                    "most_flops": best, "least_flops": least, "ties": ties,
                    "flops_ratio": at[best]["flops"] / at[least]["flops"]})
    return out


def at_budgets(rows: list[dict]) -> list[dict]:
    """Cells of ``sweep --latency``, by budget: what each strategy reached when scaled to the
    same measured runtime (flops, params, acts, its measured p50), and which reached the most
    flops per measured millisecond (each met the budget within a tolerance).  Measured, not interpolated: the equal-runtime view where the sweep was asked
    for it."""
    out = []
    budgets = sorted({r["latency_budget"] for r in rows if r.get("latency_budget")},
                     key=lambda b: min(r["p50_ms"] for r in rows
                                       if r.get("latency_budget") == b and r["p50_ms"]))
    for budget in budgets:
        at = {r["strategy"]: {k: r[k] for k in ("flops", "params", "acts", "p50_ms",
                                                "flops_factor")}
              for r in rows if r.get("latency_budget") == budget and r["p50_ms"]}
        if len(at) < 2:
            continue
        # the budget is met within a tolerance: compare flops per measured millisecond
        rate = {s: v["flops"] / v["p50_ms"] for s, v in at.items()}
        best, least = max(rate, key=rate.get), min(rate, key=rate.get)
        out.append({"budget": budget, "by_strategy": at, "most_flops": best,
                    "least_flops": least, "flops_ratio": rate[best] / rate[least]})
    return out


def _along(timed: list[dict], target: float) -> dict:
    """Flops, params and acts at runtime ``target`` along one strategy's measured points
    (log-log interpolation), and the flops interval the points' 95% p50 intervals allow (the
    curve read at its interval's ends)."""
    def read(times: list[float], key: str) -> float:
        order = np.argsort(times)
        x = np.log(np.asarray(times)[order])
        y = np.log(np.asarray([p[key] for p in timed])[order])
        return float(np.exp(np.interp(math.log(target), x, y)))

    times = [p["p50_ms"] for p in timed]
    fast = [(p.get("p50_ci") or [p["p50_ms"]] * 2)[0] for p in timed]
    slow = [(p.get("p50_ci") or [p["p50_ms"]] * 2)[1] for p in timed]
    found = {key: read(times, key) for key in ("flops", "params", "acts")}
    # a slower reading of the curve reaches fewer flops in the same time
    return found | {"flops_interval": sorted([read(slow, "flops"), read(fast, "flops")])}


def analyze_panels(rows: list[dict]) -> list[dict]:
    out = []
    for (model, provider, machine, batch), panel in panels(rows).items():
        times = [r["p50_ms"] for r in panel]
        correlation = {m: pearson([r[m] for r in panel], times) for m in METRICS}
        top, runner_up = (ranked(correlation) + [None, None])[:2]
        entry = {"model": model, "provider": provider, "machine": machine, "batch": batch,
                 "cells": len(panel), "correlation": correlation,
                 "correlation_gap": correlation_gap(panel, top, runner_up)
                 if top and runner_up else None,
                 "fit": runtime_fit(panel), "fastest": fastest(panel),
                 "equal_runtime": equal_runtime([r for r in panel
                                                 if not r.get("latency_budget")]),
                 "at_budgets": at_budgets(panel), "noise": noise_floor(panel)}
        entry["finding"] = finding(entry)
        out.append(entry)
    return out


# beyond this many times a sweep's cells, "about N cells would tell" is an extrapolation
# nobody should act on: the two correlations are practically equal
HOPELESS_GROWTH = 10


def _cells_to_tell(gap: dict) -> str:
    """What more data would settle a correlation gap the sweep cannot decide."""
    needed = gap.get("cells_needed")
    if not needed:
        return ""
    if needed > HOPELESS_GROWTH * gap["cells"]:
        return ("; the two correlations differ by too little for more cells of this sweep "
                "to tell (strategies that move the two metrics apart would)")
    return f"; about {needed} cells (or tighter rounds) would tell"


def finding(panel: dict) -> str:
    """One plain-language sentence from the numbers of a panel."""
    where = f"on {panel['provider']} ({panel['machine']}), {panel['model']} batch {panel['batch']}"
    r = {m: v for m, v in panel["correlation"].items() if v is not None}
    top = follows(panel["correlation"])
    if top is None:
        return f"{where}: too few timed cells to correlate"
    gap = panel.get("correlation_gap")
    other = gap["metrics"][1] if gap else ("acts" if top != "acts" else "flops")
    if gap and not gap["decided"] and other in r:
        more = _cells_to_tell(gap)
        text = (f"{where}: runtime follows {top} (r = {r[top]:.3f}) and {other} "
                f"(r = {r[other]:.3f}) alike: this sweep cannot tell them apart (difference "
                f"{gap['difference']:.3f}, 95% interval {gap['interval'][0]:.3f} to "
                f"{gap['interval'][1]:.3f}){more}")
    else:
        text = f"{where}: runtime follows {top} (r = {r[top]:.3f})"
        if other in r:
            text += f" more than {other} (r = {r[other]:.3f})"
            if gap:
                text += (f", difference {gap['difference']:.3f} (95% interval "
                         f"{gap['interval'][0]:.3f} to {gap['interval'][1]:.3f})")
    if panel["fastest"]:
        text += "; " + fastest_words(panel["fastest"][-1])
    if panel.get("at_budgets"):
        measured = panel["at_budgets"][-1]
        text += (f"; scaled to a budget of {measured['budget']}, {measured['most_flops']} "
                 f"reached the most flops per millisecond, {measured['flops_ratio']:.2f}x "
                 f"{measured['least_flops']}'s")
    elif panel.get("equal_runtime"):
        level = panel["equal_runtime"][-1]
        text += (f"; at {level['runtime_factor']:g}x the base model's runtime "
                 f"{level['most_flops']} reaches the most flops, "
                 f"{level['flops_ratio']:.2f}x {level['least_flops']}'s"
                 + (f" (tie within the measured noise with {', '.join(level['ties'])})"
                    if level["ties"] else ""))
    if panel.get("noise"):
        text += (f" (noise floor: round-to-round CV {panel['noise']['cv']:.1%} over "
                 f"{panel['noise']['cells']} cells)")
    return text


def fastest_words(entry: dict) -> str:
    """``at 4x flops dWr is fastest, 1.07x faster than w`` or, where intervals overlap,
    ``at 4x flops dWr and w tie within the measured noise``."""
    at = f"at {entry['flops_factor']:g}x flops"
    if entry.get("ties"):
        names = [entry["fastest"], *entry["ties"]]
        listed = ", ".join(names[:-1]) + f" and {names[-1]}"
        text = f"{at} {listed} tie within the measured noise"
        if entry["slowest"] not in names:
            text += f" ({entry['fastest']} {entry['speedup']:.2f}x faster than " \
                    f"{entry['slowest']})"
        return text
    text = (f"{at} {entry['fastest']} is fastest, {entry['speedup']:.2f}x faster than "
            f"{entry['slowest']}")
    spread = entry.get("speedup_range")
    if spread and spread[1] > spread[0]:
        text += f" ({spread[0]:.2f}-{spread[1]:.2f}x within the intervals)"
    return text


def ranked(correlation: dict) -> list[str]:
    """The metrics by how well runtime follows them, best first."""
    r = {m: v for m, v in correlation.items() if v is not None}
    return sorted(r, key=r.get, reverse=True)


def follows(correlation: dict) -> str | None:
    """The metric runtime follows best (highest r), None when none could be correlated."""
    r = {m: v for m, v in correlation.items() if v is not None}
    return max(r, key=r.get) if r else None


# What stays fixed when machines are compared, and when providers are.
_HELD = {"machine": ("model", "provider", "batch"), "provider": ("model", "machine", "batch")}


def compare_along(rows: list[dict], analyzed: list[dict], axis: str,
                  reference: str | None = None) -> list[dict]:
    """The hardware question, along ``axis`` (``machine`` or ``provider``): per group of cells
    that differ only in it (timed on two or more), each member's runtime relative to the
    reference member's (median over the cells both timed, with the range: a wide one means
    strategies rank differently on the two), the metric its runtime follows, its fastest
    strategy per factor, and the factors where the members disagree on the fastest strategy.
    The reference is the first stored member, or for machines the one whose fingerprint id
    starts with ``reference``."""
    held = _HELD[axis]
    timed: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for row in rows:
        if row["p50_ms"]:
            timed[tuple(row[k] for k in held)].setdefault(row[axis], {})[
                (row["strategy"], row["flops_factor"])] = row["p50_ms"]
    by_panel = {(p["model"], p["provider"], p["machine"], p["batch"]): p for p in analyzed}
    ids = {row["machine"]: row["fingerprint"] for row in rows}
    plural = axis + "s"
    out = []
    for key, by_member in timed.items():
        if len(by_member) < 2:
            continue
        first = next((m for m in by_member if reference and axis == "machine"
                      and ids[m].startswith(reference)), next(iter(by_member)))
        by_member = {first: by_member[first]} | by_member
        entry = dict(zip(held, key)) | {"reference": first, plural: []}
        for member, cells in by_member.items():
            ratio = {k: cells[k] / by_member[first][k] for k in cells if k in by_member[first]}
            ratios = list(ratio.values())
            where = dict(zip(held, key)) | {axis: member}
            panel = by_panel[(where["model"], where["provider"], where["machine"],
                              where["batch"])]
            metric = follows(panel["correlation"])
            entry[plural].append({
                axis: member, "cells": len(cells),
                "time_vs_reference": float(np.median(ratios)) if ratios else None,
                "ratio_interval": ratio_interval(ratios) if member != first else None,
                "ratio_range": [min(ratios), max(ratios)] if ratios else None,
                "ratios": [{"strategy": s, "flops_factor": f, "ratio": v}
                           for (s, f), v in sorted(ratio.items(), key=lambda i: i[0][1])],
                "follows": metric, "r": panel["correlation"].get(metric),
                "follows_alike": _undecided(panel),
                "fastest": {f["flops_factor"]: f["fastest"] for f in panel["fastest"]}})
        entry["fastest_differs_at"] = _disagreements(entry[plural], axis)
        entry["finding"] = comparison_finding(entry, axis)
        out.append(entry)
    return out


def compare_machines(rows: list[dict], analyzed: list[dict],
                     reference: str | None = None) -> list[dict]:
    """One model on one provider across machines (`compare_along`)."""
    return compare_along(rows, analyzed, "machine", reference)


def compare_providers(rows: list[dict], analyzed: list[dict]) -> list[dict]:
    """One model on one machine across execution providers (`compare_along`)."""
    return compare_along(rows, analyzed, "provider")


def _disagreements(members: list[dict], axis: str) -> list[dict]:
    """Factors timed on every member whose fastest strategy is not the same on all."""
    shared = set.intersection(*(set(m["fastest"]) for m in members))
    return [{"flops_factor": f, "fastest": {m[axis]: m["fastest"][f] for m in members}}
            for f in sorted(shared) if len({m["fastest"][f] for m in members}) > 1]


def _undecided(panel: dict) -> list[str]:
    """The best-followed metric and its runner-up where the sweep cannot tell them apart
    (empty when it can): a comparison must not claim what each panel says it cannot."""
    gap = panel.get("correlation_gap")
    return list(gap["metrics"]) if gap and not gap["decided"] else []


def _followed_words(member: dict) -> str:
    alike = member.get("follows_alike")
    return f"{' or '.join(alike)} (not told apart)" if alike else str(member["follows"])


def comparison_finding(entry: dict, axis: str) -> str:
    """One sentence comparing the members of a group (machines, or providers)."""
    members = entry[axis + "s"]
    if axis == "machine":
        text = (f"{entry['model']} on {entry['provider']} batch {entry['batch']}, "
                f"{len(members)} machines:")
    else:
        text = (f"{entry['model']} on {entry['machine']} batch {entry['batch']}, "
                f"{len(members)} providers:")
    for m in members[1:]:
        if m["time_vs_reference"] is not None:
            low, high = m["ratio_range"]
            sure = m.get("ratio_interval")
            text += (f" {m[axis]} takes {m['time_vs_reference']:.2f}x the time of "
                     f"{entry['reference']}"
                     + (f" (95% interval {sure[0]:.2f}-{sure[1]:.2f}x;" if sure else " (")
                     + f" {low:.2f}-{high:.2f}x over the cells);")
    said = [_followed_words(m) for m in members]
    text += (f" runtime follows {said[0]} on all" if len(set(said)) == 1 else
             " runtime follows " + ", ".join(f"{words} on {m[axis]}"
                                            for words, m in zip(said, members)))
    differs = entry["fastest_differs_at"]
    if differs:
        at = differs[-1]
        text += (f"; the fastest strategy differs at {len(differs)} factor(s), at "
                 f"{at['flops_factor']:g}x: " + ", ".join(
                     f"{s} on {member}" for member, s in at["fastest"].items()))
    else:
        text += f"; the fastest strategy is the same on every {axis} at every factor"
    return text


def build_report(db_path: Path, folder: Path, *, model: str | None = None,
                 providers: list[str] | None = None, machine: str | None = None,
                 reference: str | None = None) -> tuple[dict, list[Path]]:
    """Read the stored sweep cells (filtered by base model name, provider names and machine
    id prefix), analyze them and write the report to ``folder``: (summary, files written)."""
    from .runtime import fingerprint as fingerprint_mod
    from .errors import OnnxscaleError, UsageError
    from .store import ResultStore

    if not db_path.exists():
        raise OnnxscaleError(f"{db_path}: no results database; run `onnxscale sweep` first")
    if folder.exists() and not folder.is_dir():
        raise OnnxscaleError(f"{folder}: -o needs a folder for the report, and this is a file")
    with ResultStore(db_path) as store:
        cells = store.cells(base=model, fingerprint=machine)
        machines = {fid: f"{fingerprint_mod.label(fp)} [{fid[:8]}]"
                    for fid, fp in store.fingerprints().items()}
    if providers:
        wanted = set(providers)
        cells = [c for c in cells if c["provider"] in wanted]
    if not any(c.get("status") == "ok" for c in cells):
        raise OnnxscaleError(f"{db_path}: no timed sweep cells match; run `onnxscale sweep` "
                             f"first")
    if reference and not any(fid.startswith(reference) for fid in machines):
        raise UsageError(f"--reference {reference}: no stored machine's fingerprint id starts "
                         f"with it (machines: {', '.join(f[:8] for f in machines) or 'none'})")
    summary = summarize(cells, machines, reference)
    return summary, write_report(summary, folder)


def summarize(cells: list[dict], machines: dict[str, str], reference: str | None = None) -> dict:
    """Everything the report shows: ``rows``, ``exponents``, ``panels`` (each with its
    correlation, fit, fastest and finding), the same per-panel figures as flat
    ``correlation``, ``fit`` and ``fastest`` lists keyed by model, provider, machine, batch,
    and ``machines_compared`` against the ``reference`` machine (a fingerprint id prefix)."""
    rows = flat_rows(cells, machines)
    analyzed = analyze_panels(rows)

    def keyed(panel: dict) -> dict:
        return {k: panel[k] for k in ("model", "provider", "machine", "batch")}

    return {"rows": rows, "exponents": exponents(rows), "panels": analyzed,
            "correlation": [keyed(p) | p["correlation"] for p in analyzed],
            "fit": [keyed(p) | (p["fit"] or {}) for p in analyzed],
            "fastest": [keyed(p) | f for p in analyzed for f in p["fastest"]],
            "equal_runtime": [keyed(p) | e for p in analyzed for e in p["equal_runtime"]],
            "at_budgets": [keyed(p) | b for p in analyzed for b in p["at_budgets"]],
            "findings": [p["finding"] for p in analyzed], "machines": machines,
            "machines_compared": compare_machines(rows, analyzed, reference),
            "providers_compared": compare_providers(rows, analyzed)}


# ---- rendering -------------------------------------------------------------------------------

def write_report(summary: dict, folder: Path) -> list[Path]:
    """Plots (PNG + SVG), summary.json, summary.md, index.html; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    plots = {"runtime": _plot_runtime, "complexity": _plot_complexity,
             "relative": _plot_relative, "machines": _plot_machines}
    images = {}
    for name, draw in plots.items():
        figure = draw(summary)
        if figure is None:
            continue
        for suffix in ("png", "svg"):
            path = folder / f"{name}.{suffix}"
            figure.savefig(path, dpi=110 if suffix == "png" else None, bbox_inches="tight")
            written.append(path)
        images[name] = folder / f"{name}.png"
        import matplotlib.pyplot as plt

        plt.close(figure)
    json_path = folder / "summary.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    csv_path = folder / "rows.csv"
    write_rows_csv(summary["rows"], csv_path)
    written.append(csv_path)
    md_path = folder / "summary.md"
    md_path.write_text(_markdown(summary))
    html_path = folder / "index.html"
    html_path.write_text(_html(summary, images))
    return written + [json_path, md_path, html_path]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _human(value: float, _pos=None) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:g}{unit}"
    return f"{value:g}"


def _log_axes(ax, x: bool = True) -> None:
    """Log-log axes labelled 400M, 1G, 20 ms (not 4x10^8), minor ticks included."""
    from matplotlib.ticker import FuncFormatter

    axes = (ax.xaxis, ax.yaxis) if x else (ax.yaxis,)
    if x:
        ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in axes:
        axis.set_major_locator(_nice_log_locator())
        axis.set_major_formatter(FuncFormatter(_human))
        axis.set_minor_formatter(FuncFormatter(lambda v, p: ""))


COARSE_TICKS = (1.0, 2.0, 5.0)
FINE_TICKS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)


def _nice_log_locator():
    """Ticks at 1, 2, 5 per decade; on an axis spanning under 3x (a 2x sweep's runtimes,
    80-160 ms) at 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, so it does not read as one number."""
    from matplotlib.ticker import LogLocator

    class NiceLogLocator(LogLocator):
        def tick_values(self, vmin, vmax):
            low, high = sorted((vmin, vmax))
            self.set_params(subs=FINE_TICKS if low > 0 and high / low < 3 else COARSE_TICKS)
            return super().tick_values(vmin, vmax)

    return NiceLogLocator(base=10, subs=COARSE_TICKS)


def _panel_title(entry: dict) -> str:
    return f"{entry['model']} · {entry['provider']} · batch {entry['batch']}\n{entry['machine']}"


def _plot_runtime(summary: dict):
    """The paper's runtime figure: p50 against flops, params, acts; a line per strategy."""
    groups = panels(summary["rows"])
    if not groups:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(groups), 3, figsize=(13, 3.6 * len(groups)), squeeze=False)
    for row_axes, (key, panel) in zip(axes, groups.items()):
        entry = next(p for p in summary["panels"]
                     if (p["model"], p["provider"], p["machine"], p["batch"]) == key)
        for ax, metric in zip(row_axes, METRICS):
            for strategy, points in curves(panel).items():
                ax.errorbar([p[metric] for p in points], [p["p50_ms"] for p in points],
                            yerr=_error_bars(points), fmt="o-", label=strategy, markersize=4,
                            capsize=2, elinewidth=1)
            r = entry["correlation"][metric]
            _log_axes(ax)
            ax.set_xlabel(metric)
            ax.set_ylabel("p50 runtime (ms)")
            ax.set_title(f"{_panel_title(entry)}\nr(log runtime, log {metric}) = "
                         f"{r:.3f}" if r is not None else _panel_title(entry), fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        row_axes[0].legend(fontsize=8)
    figure.tight_layout()
    return figure


def _error_bars(points: list[dict]) -> np.ndarray:
    """(below, above) distances of each point's p50 to its 95% interval's ends."""
    below, above = [], []
    for point in points:
        low, high = interval_of(point)
        below.append(max(0.0, point["p50_ms"] - low))
        above.append(max(0.0, high - point["p50_ms"]))
    return np.array([below, above])


def _plot_complexity(summary: dict):
    """The paper's complexity figure: acts and params against flops, fitted exponents."""
    by_model = defaultdict(list)
    for row in summary["rows"]:
        by_model[row["model"]].append(row)
    if not by_model:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(len(by_model), 2, figsize=(10, 3.8 * len(by_model)),
                                squeeze=False)
    for row_axes, (model, rows) in zip(axes, by_model.items()):
        unique = {(r["strategy"], r["flops_factor"]): r for r in rows}
        for ax, metric in zip(row_axes, ("acts", "params")):
            for strategy, points in curves(list(unique.values())).items():
                e = summary["exponents"].get(f"{model} {strategy}", {}).get(metric)
                label = f"{strategy} (s^{e:.2f})" if e is not None else strategy
                ax.plot([p["flops"] for p in points], [p[metric] for p in points], "o-",
                        label=label, markersize=4)
            _log_axes(ax)
            ax.set_xlabel("flops")
            ax.set_ylabel(metric)
            ax.set_title(f"{model}: {metric} against flops", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _plot_relative(summary: dict):
    """Each strategy's runtime relative to the fastest at every flops factor (cells of a
    flops sweep: those ``sweep --latency`` made sit at factors of their own)."""
    groups = {key: panel for key, panel in panels(
        [r for r in summary["rows"] if not r.get("latency_budget")]).items()
        if len({r["flops_factor"] for r in panel}) < len(panel)}  # some factor shared
    if not groups:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 3.8),
                                squeeze=False)
    for ax, (key, panel) in zip(axes[0], groups.items()):
        entry = next(p for p in summary["panels"]
                     if (p["model"], p["provider"], p["machine"], p["batch"]) == key)
        best = {}
        for row in panel:
            f = row["flops_factor"]
            best[f] = min(best.get(f, math.inf), row["p50_ms"])
        for strategy, points in curves(panel).items():
            scale = np.array([best[p["flops_factor"]] for p in points])
            ax.errorbar([p["flops_factor"] for p in points],
                        [p["p50_ms"] / best[p["flops_factor"]] for p in points],
                        yerr=_error_bars(points) / scale, fmt="o-", label=strategy,
                        markersize=4, capsize=2, elinewidth=1)
        for fastest_entry in entry["fastest"]:  # the band of the fastest one's own noise
            low, high = interval_of(next(r for r in panel
                                         if r["flops_factor"] == fastest_entry["flops_factor"]
                                         and r["strategy"] == fastest_entry["fastest"]))
            f = fastest_entry["flops_factor"]
            ax.fill_between([f / 1.08, f * 1.08], low / best[f], high / best[f],
                            color="0.8", alpha=0.6, linewidth=0)
        _factor_axis(ax, sorted(best))
        ax.set_ylabel("runtime / fastest at that factor\n(grey: the fastest one's 95% interval)")
        ax.set_title(_panel_title(entry), fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _plot_machines(summary: dict):
    """Per machine after the reference: each strategy's runtime over the reference's, at
    every factor.  Flat, equal lines: the machines rank strategies alike; crossing lines:
    the best strategy depends on the hardware."""
    pairs = [(entry, m) for entry in summary["machines_compared"] for m in entry["machines"][1:]]
    if not pairs:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(pairs), figsize=(5.5 * len(pairs), 3.8), squeeze=False)
    for ax, (entry, machine) in zip(axes[0], pairs):
        points = machine["ratios"]  # by factor; the base (factor 1) starts every curve
        base = [p for p in points if p["strategy"] == "base"]
        for strategy in ordered({p["strategy"] for p in points} - {"base"}):
            curve = sorted(base + [p for p in points if p["strategy"] == strategy],
                           key=lambda p: p["flops_factor"])
            ax.plot([p["flops_factor"] for p in curve], [p["ratio"] for p in curve], "o-",
                    label=strategy, markersize=4)
        _factor_axis(ax, sorted({p["flops_factor"] for p in points}))
        ax.set_ylabel("runtime / runtime on the reference machine")
        ax.set_title(f"{entry['model']} · {entry['provider']} · batch {entry['batch']}\n"
                     f"{machine['machine']}\nover {entry['reference']}", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    return figure


def _factor_axis(ax, factors: list[float]) -> None:
    """A log2 x axis with a tick at each flops factor, labelled 1x, 2x, ..."""
    from matplotlib.ticker import FixedLocator, FuncFormatter

    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(factors))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
    ax.set_xlabel("flops factor")


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _gap_cell(panel: dict) -> str:
    gap = panel.get("correlation_gap")
    if not gap:
        return "-"
    a, b = gap["metrics"]
    verdict = "" if gap["decided"] else " (cannot tell)"
    return (f"{a}−{b} {gap['difference']:.3f} [{gap['interval'][0]:.3f}, "
            f"{gap['interval'][1]:.3f}]{verdict}")


def _ratio_cell(member: dict) -> str:
    sure = member.get("ratio_interval")
    text = _fmt(member["time_vs_reference"], 2) + "x"
    return text + (f" [{sure[0]:.2f}, {sure[1]:.2f}]" if sure else "")


def _tables(summary: dict) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of every table, shared by Markdown and HTML."""
    tables = []
    tables.append(("Correlation of log runtime with log complexity (Pearson r)",
                   ["model", "provider", "machine", "batch", "cells", "flops", "params", "acts",
                    "best − next (95% interval)", "noise floor"],
                   [[p["model"], p["provider"], p["machine"], str(p["batch"]), str(p["cells"]),
                     *(_fmt(p["correlation"][m]) for m in METRICS), _gap_cell(p),
                     f"{p['noise']['cv']:.1%}" if p.get("noise") else "-"]
                    for p in summary["panels"]]))
    fit_rows = []
    for p in summary["panels"]:
        fit = p["fit"]
        if fit is None:
            continue
        left = ", ".join(f"{s} {e:.1%}" for s, e in fit["left_out_error"].items())
        pred = fit.get("prediction_interval")
        fit_rows.append([p["model"], p["provider"], p["machine"], str(p["batch"]),
                         _fmt(fit["ms_per_gflop"]), _fmt(fit["ms_per_mact"]),
                         _fmt(fit["overhead_ms"]), _fmt(fit["r2"]),
                         f"±{pred:.1%}" if pred is not None else "-", left])
    tables.append(("Fit: runtime ≈ a·GFLOPs + b·M acts + c (a, b, c ≥ 0)",
                   ["model", "provider", "machine", "batch", "a ms/GF", "b ms/Mact", "c ms",
                    "R²", "95% prediction", "error with the strategy left out"], fit_rows))
    tables.append(("Fastest strategy at each flops factor (ties: intervals overlap)",
                   ["model", "provider", "machine", "batch", "factor", "fastest", "ms",
                    "ties within noise", "slowest", "ms", "speedup"],
                   [[p["model"], p["provider"], p["machine"], str(p["batch"]),
                     f"{f['flops_factor']:g}x", f["fastest"], _fmt(f["fastest_ms"], 2),
                     ", ".join(f.get("ties") or []) or "-",
                     f["slowest"], _fmt(f["slowest_ms"], 2), f"{f['speedup']:.2f}x"]
                    for p in summary["panels"] for f in p["fastest"]]))
    tables.append(("At equal measured runtime: flops each strategy reaches (interpolated "
                   "along its measured curve)",
                   ["model", "provider", "machine", "batch", "runtime", "most flops",
                    "flops by strategy", "params by strategy"],
                   [[p["model"], p["provider"], p["machine"], str(p["batch"]),
                     f"{e['runtime_factor']:g}x base ({e['runtime_ms']:.1f} ms)",
                     f"{e['most_flops']} ({e['flops_ratio']:.2f}x {e['least_flops']})"
                     + (f"; ties: {', '.join(e['ties'])}" if e["ties"] else ""),
                     ", ".join(f"{s} {v['flops'] / 1e6:,.0f}M"
                               for s, v in e["by_strategy"].items()),
                     ", ".join(f"{s} {v['params'] / 1e6:.2f}M"
                               for s, v in e["by_strategy"].items())]
                    for p in summary["panels"] for e in p.get("equal_runtime", [])]))
    tables.append(("Scaled to a runtime budget (sweep --latency): what each strategy reached",
                   ["model", "provider", "machine", "batch", "budget", "most flops per ms",
                    "flops by strategy (measured ms)", "params by strategy"],
                   [[p["model"], p["provider"], p["machine"], str(p["batch"]), b["budget"],
                     f"{b['most_flops']} ({b['flops_ratio']:.2f}x {b['least_flops']})",
                     ", ".join(f"{s} {v['flops'] / 1e6:,.0f}M ({v['p50_ms']:.1f})"
                               for s, v in b["by_strategy"].items()),
                     ", ".join(f"{s} {v['params'] / 1e6:.2f}M"
                               for s, v in b["by_strategy"].items())]
                    for p in summary["panels"] for b in p.get("at_budgets", [])]))
    tables.append(_comparison_table(
        "Machines compared (time relative to the reference, the first of a group)",
        summary["machines_compared"], "machine", "provider"))
    tables.append(_comparison_table(
        "Providers compared (time relative to the first provider of a group)",
        summary.get("providers_compared", []), "provider", "machine"))
    tables.append(("Growth exponents against flops (paper: dWr acts s^0.6, dwr s^0.83)",
                   ["model", "strategy", "acts", "params", "points"],
                   [[e["model"], e["strategy"], _fmt(e["acts"], 2), _fmt(e["params"], 2),
                     str(e["points"])] for e in summary["exponents"].values()]))
    return [table for table in tables if table[2]]  # a section with nothing to show is left out


def _comparison_table(title: str, entries: list[dict], axis: str, held: str) -> tuple:
    """One row per member (machine or provider) of each compared group (`compare_along`)."""
    return (title, ["model", held, "batch", axis, "cells", "time vs first [95%]", "range",
                    "runtime follows", "fastest per factor"],
            [[e["model"], e[held], str(e["batch"]), m[axis], str(m["cells"]), _ratio_cell(m),
              "-" if not m["ratio_range"] else
              f"{m['ratio_range'][0]:.2f}-{m['ratio_range'][1]:.2f}x",
              f"{_followed_words(m)} (r = {_fmt(m['r'])})",
              ", ".join(f"{f:g}x {s}" for f, s in sorted(m["fastest"].items()))]
             for e in entries for m in e[axis + "s"]])


def _markdown(summary: dict) -> str:
    lines = ["# onnxscale report", ""]
    lines += [f"- {p['finding']}" for p in summary["panels"]]
    lines += [f"- {e['finding']}" for e in summary["machines_compared"]]
    lines += [f"- {e['finding']}" for e in summary.get("providers_compared", [])] + [""]
    for title, header, rows in _tables(summary):
        lines += [f"## {title}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    lines += ["Plots: runtime.png, complexity.png, relative.png, machines.png when machines "
              "are compared (and .svg)", ""]
    return "\n".join(lines)


def _html(summary: dict, images: dict[str, Path]) -> str:
    """One self-contained page: plots inlined as base64 PNG, no script, no network."""
    e = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>onnxscale report</title>",
             "<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
             "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;"
             "padding:3px 8px;font-size:13px;text-align:right}th{background:#f3f3f3}"
             "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
             "li{margin:0.3em 0}</style></head><body>",
             "<h1>onnxscale report</h1><h2>Findings</h2><ul>"]
    parts += [f"<li>{e(p['finding'])}</li>" for p in summary["panels"]]
    parts += [f"<li>{e(c['finding'])}</li>" for c in summary["machines_compared"]]
    parts += [f"<li>{e(c['finding'])}</li>" for c in summary.get("providers_compared", [])]
    parts.append("</ul>")
    captions = {"runtime": "Runtime against flops, params and acts (log-log), one line per "
                           "strategy",
                "relative": "Runtime relative to the fastest strategy at each flops factor",
                "complexity": "Activations and parameters against flops, with growth "
                              "exponents",
                "machines": "Runtime on each machine over the first machine's, per strategy"}
    for name, caption in captions.items():
        if name in images:
            data = base64.b64encode(images[name].read_bytes()).decode()
            parts.append(f"<h2>{e(caption)}</h2><img alt='{name}' "
                         f"src='data:image/png;base64,{data}'>")
    for title, header, rows in _tables(summary):
        parts.append(f"<h2>{e(title)}</h2><table><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
