"""`onnxscale report`: the paper's analysis of stored sweeps (fit, correlation, exponents,
fastest strategy), plots and a self-contained page."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from onnxscale import zoo
from onnxscale.reporting import exponents, nonnegative_fit, runtime_fit
from onnxscale.scaling.pipeline import Planner
from onnxscale.scaling.plan import ScaleOptions
from onnxscale.scaling.solver import Unreachable, solve
from onnxscale.scaling.strategy import exponents as expected_exponents
from onnxscale.scaling.strategy import parse_strategy
from onnxscale.store import ResultStore

from .conftest import run_cli

STRATEGIES = ("d", "w", "r", "dw", "dwr", "dWr")


def test_fit_recovers_known_coefficients():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        flops, acts = rng.uniform(0.2e9, 8e9), rng.uniform(2e6, 60e6)
        rows.append({"strategy": "dw"[i % 2], "flops": flops, "acts": acts,
                     "p50_ms": 3.0 * flops / 1e9 + 0.5 * acts / 1e6 + 1.25})
    fit = runtime_fit(rows)
    assert fit["ms_per_gflop"] == pytest.approx(3.0, rel=1e-6)
    assert fit["ms_per_mact"] == pytest.approx(0.5, rel=1e-6)
    assert fit["overhead_ms"] == pytest.approx(1.25, rel=1e-6)
    assert fit["r2"] == pytest.approx(1.0)
    assert all(error < 1e-6 for error in fit["left_out_error"].values())


def test_fit_never_goes_negative():
    """Runtime that falls with acts has no non-negative explanation through acts: b = 0, and
    the fit is the best one with a, c >= 0 (checked against a brute-force grid)."""
    x = np.array([[1, 10, 1], [2, 8, 1], [3, 6, 1], [4, 4, 1], [5, 2, 1]], float)
    y = 2 * x[:, 0] - 0.3 * x[:, 1] + 4
    coef = nonnegative_fit(x, y)
    assert (coef >= 0).all() and coef[1] == 0
    best = min(float(np.sum((x[:, [0, 2]] @ np.array([a, c]) - y) ** 2))
               for a in np.linspace(0, 4, 201) for c in np.linspace(0, 8, 201))
    assert float(np.sum((x @ coef - y) ** 2)) <= best + 1e-9


@pytest.mark.slow
def test_exponents_of_efficientnet_b0_match_the_paper():
    """acts and params growth with flops, fitted over x2..x16 plans of each strategy, within
    +-0.1 of docs/concepts.md (Strategies) (dWr acts ~ s^0.6, dwr s^0.83, ...)."""
    planner = Planner(zoo.build("efficientnet-b0"), {})
    base = planner.base
    rows = [{"model": "b0", "strategy": "base", "flops_factor": 1.0, "flops": base.flops,
             "params": base.params, "acts": base.acts}]
    for strategy in STRATEGIES:
        for factor in (2, 4, 8, 16):
            try:
                plan = solve(None, {}, parse_strategy(strategy), "ratio", factor,
                             ScaleOptions(init="random"), planner=planner).plan
            except Unreachable:
                continue
            rows.append({"model": "b0", "strategy": strategy, "flops_factor": float(factor),
                         "flops": plan.scaled.flops, "params": plan.scaled.params,
                         "acts": plan.scaled.acts})
    found = exponents(rows)
    for strategy in STRATEGIES:
        want = expected_exponents(parse_strategy(strategy))
        got = found[f"b0 {strategy}"]
        assert got["points"] >= 4
        assert got["acts"] == pytest.approx(want["acts"], abs=0.1), strategy
        assert got["params"] == pytest.approx(want["params"], abs=0.1), strategy


def stored_sweep(db, machines=("m1", "m2")):
    """A small sweep in a database: 2 machines, cpu, 3 strategies x 1/2/4x, runtimes that
    follow acts on m1 and flops on m2."""
    with ResultStore(db) as store:
        for machine in machines:
            store.save_fingerprint({"id": machine, "hostname": f"host-{machine}",
                                    "cpu": "Test CPU", "cpu_usable_cores": 4, "gpus": []})
            for strategy, growth in (("base", (1, 1, 1)), ("d", (1, 1, 1)), ("w", (1, 2, 0.5)),
                                     ("r", (1, 0, 1))):
                for factor in ((1.0,) if strategy == "base" else (2.0, 4.0)):
                    flops = 1e9 * factor
                    params = 5e6 * factor ** growth[1] if growth[1] else 5e6
                    acts = 6e6 * factor ** growth[2]
                    p50 = 2 * acts / 1e6 + 1 if machine == "m1" else 10 * flops / 1e9 + 1
                    key = {"base_hash": "h", "strategy": strategy, "factor": factor,
                           "provider": "CPUExecutionProvider", "batch": 1, "options": "{}",
                           "fingerprint": machine}
                    store.save_cell(key | {"base": "zoo:test", "status": "ok", "p50_ms": p50,
                                           "flops": int(flops), "params": int(params),
                                           "acts": int(acts)})
            store.save_cell({"base_hash": "h", "strategy": "d", "factor": 1.3,
                             "provider": "CPUExecutionProvider", "batch": 1, "options": "{}",
                             "fingerprint": machine, "base": "zoo:test", "status": "failed",
                             "reason": "cannot reach"})


def test_report_from_a_stored_sweep(tmp_path):
    db = tmp_path / "r.db"
    stored_sweep(db)
    out = tmp_path / "report"
    result = json.loads(run_cli("report", "--db", str(db), "-o", str(out), "--json",
                                check=True).stdout)
    for name in ("runtime", "complexity", "relative"):
        assert (out / f"{name}.png").stat().st_size > 10_000
        assert (out / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    summary = json.loads((out / "summary.json").read_text())
    assert {"rows", "exponents", "panels", "correlation", "fit", "fastest"} <= summary.keys()
    assert len(summary["correlation"]) == len(summary["fit"]) == 2
    assert {"flops", "params", "acts", "machine"} <= summary["correlation"][0].keys()
    panels = {p["machine"].split(" [")[1].rstrip("]"): p for p in summary["panels"]}
    assert set(panels) == {"m1", "m2"}  # machines side by side
    m1, m2 = panels["m1"]["correlation"], panels["m2"]["correlation"]
    assert m1["acts"] == pytest.approx(1.0, abs=1e-3) and m1["acts"] > m1["flops"] + 0.05
    assert m2["flops"] == pytest.approx(1.0, abs=1e-3) and m2["flops"] > m2["acts"] + 0.05
    assert panels["m1"]["fit"]["ms_per_mact"] == pytest.approx(2.0, rel=1e-6)
    assert panels["m2"]["fit"]["ms_per_gflop"] == pytest.approx(10.0, rel=1e-6)
    fastest = {f["flops_factor"]: f for f in panels["m1"]["fastest"]}
    assert fastest[4.0]["fastest"] == "w" and fastest[4.0]["slowest"] in ("d", "r")  # a tie
    assert fastest[4.0]["speedup"] == pytest.approx((2 * 24 + 1) / (2 * 12 + 1))
    assert "runtime follows acts" in result["findings"][0] or \
        "runtime follows acts" in result["findings"][1]
    assert summary["exponents"]["zoo:test w"]["acts"] == pytest.approx(0.5)
    compared = summary["machines_compared"]  # the hardware question, m2 against m1
    assert len(compared) == 1 and compared[0]["reference"].endswith("[m1]")
    m2 = compared[0]["machines"][1]
    # p50 on m2 / on m1 over the 7 cells: 11/13, 21/25 (d, r at 2x), 41/49 (d, r at 4x),
    # 21/17.97 and 41/25 (w): median 21/25, range 41/49 .. 41/25
    assert m2["time_vs_reference"] == pytest.approx(21 / 25)
    assert m2["ratio_range"] == pytest.approx([41 / 49, 41 / 25])
    assert [m["follows"] for m in compared[0]["machines"]] == ["acts", "flops"]
    differs = compared[0]["fastest_differs_at"]  # w on m1; on m2 all tie, the first wins
    assert [d["flops_factor"] for d in differs] == [2.0, 4.0]
    assert [set(d["fastest"].values()) for d in differs] == [{"w", "d"}, {"w", "d"}]
    assert result["machines"] == [compared[0]["finding"]]
    assert "0.84x the time of" in result["machines"][0]
    # 7 noise-free cells: each panel cannot tell its two metrics apart (resamples of only w's
    # cells fit both perfectly), and the comparison says no more than the panels do
    assert "runtime follows acts or flops (not told apart) on" in result["machines"][0]
    assert "the fastest strategy differs at 2 factor(s)" in result["machines"][0]
    assert (out / "machines.png").stat().st_size > 10_000
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 4 and "Machines compared" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Test CPU" in page and "| model |" in (out / "summary.md").read_text()
    only = json.loads(run_cli("report", "--db", str(db), "-o", str(tmp_path / "m2"),
                              "--machine", "m2", "--json", check=True).stdout)
    assert len(only["findings"]) == 1 and only["machines"] == []
    against_m2 = json.loads(run_cli("report", "--db", str(db), "-o", str(tmp_path / "r2"),
                                    "--reference", "m2", "--json", check=True).stdout)
    assert against_m2["machines"][0].count("takes 1.19x the time of host-m2") == 1  # 25/21
    wrong = run_cli("report", "--db", str(db), "-o", str(tmp_path / "r3"), "--reference", "zz")
    assert wrong.returncode == 2 and "--reference zz: no stored machine" in wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m2" / "machines.png").exists()


@pytest.mark.parametrize("case,message", [("missing", "no results database"),
                                          ("file", "needs a folder"),
                                          ("empty", "no timed sweep cells")])
def test_report_bad_input(tmp_path, case, message):
    db = tmp_path / "r.db"
    out = tmp_path / "out"
    if case != "missing":
        with ResultStore(db):
            pass
    if case == "file":
        stored_sweep(db)
        out.write_text("not a folder")
    result = run_cli("report", "--db", str(db), "-o", str(out))
    assert result.returncode == 1 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert case != "file" or out.read_text() == "not a folder"


def test_nothing_is_nan_in_a_one_point_panel(tmp_path):
    db = tmp_path / "r.db"
    stored_sweep(db, machines=("m1",))
    summary = json.loads(run_cli("report", "--db", str(db), "-o", str(tmp_path / "o"),
                                 "--json", check=True).stdout)
    for values in summary["exponents"].values():
        assert values["acts"] is None or math.isfinite(values["acts"])


def test_log_axes_label_a_narrow_range_with_several_numbers():
    """A 2x sweep's runtimes (80-160 ms) hold a single 1-2-5 tick (100): the axis would read
    as one number.  Under 3x the ticks are finer; wide ranges keep 1, 2, 5 per decade."""
    from onnxscale.reporting import _nice_log_locator

    def ticks(low, high):
        return [float(t) for t in _nice_log_locator().tick_values(low, high) if low <= t <= high]

    assert ticks(80, 160) == [80, 100, 120, 150]
    assert ticks(1, 1000) == [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    assert ticks(3.1, 8.4) == [4, 5, 6, 8]


def test_providers_compared_and_empty_sections_left_out(tmp_path):
    """One machine, two providers: the providers are compared (ratio, metric, fastest per
    factor, where it differs); 'Machines compared' has nothing to show and is not on the page;
    rows.csv carries every row."""
    import csv

    from onnxscale.reporting import build_report

    db = tmp_path / "r.db"
    stored_sweep(db, machines=("m1",))
    with ResultStore(db) as store:  # the same sweep on OpenVINO: follows flops, 0.5x the time
        for cell in [c for c in store.cells() if c["status"] == "ok"]:
            p50 = 0.5 * (10 * cell["flops"] / 1e9 + 1)
            store.save_cell({k: cell[k] for k in ("base_hash", "strategy", "factor", "batch",
                                                  "options", "fingerprint", "base", "flops",
                                                  "params", "acts")}
                            | {"provider": "OpenVINOExecutionProvider", "status": "ok",
                               "p50_ms": p50})
    summary, written = build_report(db, tmp_path / "out")
    assert summary["machines_compared"] == []
    (entry,) = summary["providers_compared"]
    assert entry["reference"] == "cpu" and [p["provider"] for p in entry["providers"]] == [
        "cpu", "openvino"]
    assert [p["follows"] for p in entry["providers"]] == ["acts", "flops"]
    assert [d["flops_factor"] for d in entry["fastest_differs_at"]] == [2.0, 4.0]
    assert "2 providers" in entry["finding"]
    assert "runtime follows acts or flops (not told apart) on cpu" in entry["finding"]
    page = (tmp_path / "out" / "index.html").read_text()
    assert "Providers compared" in page and "Machines compared" not in page
    assert "<table><tr></tr>" not in page
    with open(tmp_path / "out" / "rows.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(summary["rows"]) and {"p50_ms", "provider", "flops"} <= rows[0].keys()


def test_equal_runtime_interpolates_each_strategy_at_matched_measured_runtime():
    """Two strategies with known power laws: runtime = 10 ms · f^0.5 (cheap per flop) and
    10 ms · f^1; at 2x and 4x the base runtime the first reaches f = 4 and 16, the second
    f = 2 and 4, so it gives the most flops; 8x the base runtime lies beyond the second's
    curve, so that level is left out."""
    from onnxscale.reporting import equal_runtime

    def row(strategy, factor, ms):
        return {"strategy": strategy, "flops_factor": factor, "p50_ms": ms,
                "flops": 1e9 * factor, "params": 1e6 * factor, "acts": 1e6 * factor}

    rows = [row("base", 1.0, 10.0)]
    for factor in (2.0, 4.0, 8.0, 16.0):
        rows.append(row("w", factor, 10.0 * factor ** 0.5))
        rows.append(row("d", factor, 10.0 * factor))
    found = equal_runtime(rows)
    assert [e["runtime_factor"] for e in found] == [2.0, 4.0, 8.0, 16.0][:len(found)]
    assert [e["runtime_factor"] for e in found] == [2.0, 4.0]
    first, second = found
    assert first["by_strategy"]["w"]["flops"] == pytest.approx(4e9)
    assert first["by_strategy"]["d"]["flops"] == pytest.approx(2e9)
    assert second["by_strategy"]["w"]["flops"] == pytest.approx(16e9)
    assert second["most_flops"] == "w" and second["least_flops"] == "d"
    assert second["flops_ratio"] == pytest.approx(4.0)
    assert second["ties"] == []
    # measured with wide intervals, the same curves cannot be told apart
    for item in rows:
        item["p50_ci"] = [item["p50_ms"] / 2, item["p50_ms"] * 2]
    assert equal_runtime(rows)[1]["ties"] == ["d"]


def test_a_comparison_does_not_claim_what_its_panels_cannot_tell():
    """Each provider's panel said 'cannot tell acts and params apart'; the comparison once
    said 'runtime follows acts on cpu, params on openvino' all the same."""
    from onnxscale.reporting import comparison_finding

    def member(name, follows, alike):
        return {"provider": name, "follows": follows, "follows_alike": alike,
                "time_vs_reference": 1.0, "ratio_range": [1.0, 1.0], "ratio_interval": None}

    entry = {"model": "m", "machine": "vm", "batch": 1, "reference": "cpu",
             "fastest_differs_at": [],
             "providers": [member("cpu", "acts", ["acts", "params"]),
                           member("openvino", "params", ["params", "flops"])]}
    text = comparison_finding(entry, "provider")
    assert ("runtime follows acts or params (not told apart) on cpu, params or flops (not "
            "told apart) on openvino") in text
    entry["providers"] = [member("cpu", "flops", []), member("openvino", "flops", [])]
    assert "runtime follows flops on all" in comparison_finding(entry, "provider")
