"""Every runtime with its uncertainty, every claim tested against the noise: intervals of a
p50 (one round and several), ties, the correlation gap, rounds interleaved and resumed."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from onnxscale import evidence
from onnxscale.runtime import uncertainty as U
from onnxscale.runtime.rounds import combine, first_round, round_times, run_order
from onnxscale.runtime.row import Row

from .conftest import run_cli


def series(median_ms: float, noise: float, runs: int = 200, seed: int = 0) -> np.ndarray:
    """Synthetic per-run times: lognormal around ``median_ms`` with relative spread ``noise``."""
    rng = np.random.default_rng(seed)
    return median_ms * np.exp(noise * rng.standard_normal(runs))


def cell(strategy: str, times: list[np.ndarray], factor: float = 4.0) -> dict:
    estimate, low, high = U.median_interval(times)
    return {"strategy": strategy, "flops_factor": factor, "p50_ms": estimate,
            "p50_ci": [low, high]}


# --- intervals --------------------------------------------------------------------------------

def test_interval_covers_the_true_median_about_95_percent_of_the_time():
    hits = 0
    for seed in range(200):
        _, low, high = U.median_interval([series(10.0, 0.05, 100, seed)], draws=500)
        hits += low <= 10.0 <= high
    assert 0.88 <= hits / 200 <= 0.995


@pytest.mark.parametrize("rounds", [2, 3])
def test_few_rounds_still_cover_what_varies_between_rounds(rounds):
    """Each round's machine speed differs (3%, as sessions here do) and runs within a round
    agree (1%): the interval still covers the true median about 95% of the time.  The
    bootstrap over rounds alone covered 62% (2 rounds) and 81% (3)."""
    hits = 0
    for seed in range(200):
        rng = np.random.default_rng(seed)
        centres = 10.0 * np.exp(0.03 * rng.standard_normal(rounds))
        _, low, high = U.median_interval(
            [c * np.exp(0.01 * rng.standard_normal(100)) for c in centres], draws=300)
        hits += low <= 10.0 <= high
    assert hits / 200 >= 0.9


def test_student_t_quantiles():
    assert U.student_t(0.95, 2) == 4.303 and U.student_t(0.95, 30) == 2.042
    assert U.student_t(0.95, 60) == pytest.approx(2.000, abs=0.002)
    assert U.student_t(0.90, 10) == pytest.approx(1.812, abs=0.01)


def test_rounds_that_disagree_widen_the_interval():
    """Three rounds at 10, 10.6 and 11.2 ms (a drifting machine): the hierarchical interval
    spans the rounds; pooling the same runs into one series would claim far more certainty."""
    rounds = [series(m, 0.02, 150, seed) for seed, m in enumerate((10.0, 10.6, 11.2))]
    estimate, low, high = U.median_interval(rounds)
    _, pooled_low, pooled_high = U.median_interval([np.concatenate(rounds)])
    assert estimate == pytest.approx(10.6, rel=0.02)
    assert high - low > 3 * (pooled_high - pooled_low)
    assert low < 10.3 and high > 10.9


def test_a_real_ten_percent_gap_is_found_and_a_one_percent_gap_under_noise_is_a_tie():
    fast, slow = cell("dWr", [series(10.0, 0.03, seed=1)]), cell("w", [series(11.0, 0.03,
                                                                            seed=2)])
    found = evidence.fastest_at([slow, fast])
    assert found["fastest"] == "dWr" and found["ties"] == []
    assert found["speedup"] == pytest.approx(1.10, rel=0.02)
    low, high = found["speedup_range"]
    assert 1.0 < low < 1.1 < high
    a = cell("dWr", [series(10.0, 0.05, 60, seed) for seed in (3, 4, 5)])
    b = cell("w", [series(10.1, 0.05, 60, seed) for seed in (6, 7, 8)])
    tie = evidence.fastest_at([a, b])
    assert tie["ties"] and {tie["fastest"], *tie["ties"]} == {"dWr", "w"}
    from onnxscale.reporting import fastest_words

    assert "tie within the measured noise" in fastest_words({"flops_factor": 4.0} | tie)


def test_pack_and_unpack_times():
    times = series(3.0, 0.1, 321)
    text = U.pack_times(times)
    assert len(text) < 321 * 4 * 1.5
    assert np.allclose(U.unpack_times(text), times.astype(np.float32))
    assert U.unpack_times(None).size == 0


def test_stability_names_its_reasons():
    steady = U.stability([series(10.0, 0.01)])
    assert not steady["unstable"] and steady["reasons"] == []
    drifting = np.concatenate([series(10.0, 0.01, 100), series(12.0, 0.01, 100, 1)])
    found = U.stability([drifting], steal=0.06)
    assert found["unstable"]
    text = "; ".join(found["reasons"])
    assert "drift: the second half ran 20% slower" in text and "steal" in text
    apart = U.stability([series(10.0, 0.01), series(11.0, 0.01, seed=3)])
    assert any("rounds disagree" in r for r in apart["reasons"])


def test_steal_share_from_proc_stat_readings():
    assert U.steal_share((10, 1000), (30, 2000)) == pytest.approx(0.02)
    assert U.steal_share(None, (1, 2)) is None
    reading = U.read_steal()
    assert reading is None or (reading[1] >= reading[0] >= 0)


# --- rounds -----------------------------------------------------------------------------------

def test_rounds_interleave_a_b_b_a():
    items = ["A", "B", "C"]
    assert [run_order(items, r) for r in range(4)] == [
        ["A", "B", "C"], ["C", "B", "A"], ["A", "B", "C"], ["C", "B", "A"]]


def test_combining_rounds_keeps_every_run():
    def measured(times, when):
        row = Row(model="m", model_hash="h", provider="cpu", provider_name="CPU", batch=1,
                  available=True, status="ok")
        return first_round(row, times, None, when)

    one, two = measured(series(10, 0.02, 50), 1.0), measured(series(12, 0.02, 70, 1), 2.0)
    merged = combine(Row.from_dict(json.loads(json.dumps(one.to_dict()))), two)
    assert [r["runs"] for r in merged.rounds] == [50, 70] and merged.runs == 120
    assert [len(t) for t in round_times(merged)] == [50, 70]
    assert merged.p50_ms == pytest.approx(np.median([one.p50_ms, two.p50_ms]))
    low, high = merged.p50_ci_ms
    assert low <= merged.p50_ms <= high
    assert [r["measured_at"] for r in merged.rounds] == [1.0, 2.0]


def test_bench_rounds_interval_and_order(tmp_path):
    """Two configurations, three rounds: each row holds three rounds and an interval around
    its p50; the rounds ran A B, B A, A B; the CSV and JSON carry the interval."""
    import onnxscale
    from onnxscale.runtime.dispatch import Dispatcher

    from .test_providers import conv_model

    order = []
    original = Dispatcher.measure

    def spy(self, loaded, digest, prepared, provider, progress=None):
        order.append(prepared.batch)
        return original(self, loaded, digest, prepared, provider, progress)

    model = str(conv_model(tmp_path / "m.onnx"))
    Dispatcher.measure = spy
    try:
        rows = onnxscale.bench(model, "cpu", batch=[1, 2], rounds=3, runs=8, warmup=1,
                               db=tmp_path / "r.db")
    finally:
        Dispatcher.measure = original
    assert order == [1, 2, 2, 1, 1, 2]
    for row in rows:
        assert len(row.rounds) == 3 and row.runs == 24
        low, high = row.p50_ci_ms
        assert low <= row.p50_ms <= high
        assert len(U.unpack_times(row.raw_times)) == 24
    out = run_cli("results", "--db", str(tmp_path / "r.db"), "--csv")
    table = list(csv.DictReader(io.StringIO(out.stdout)))
    assert table[0]["rounds_done"] == "3"
    assert float(table[0]["p50_ci_low_ms"]) <= float(table[0]["p50_ms"]) <= float(
        table[0]["p50_ci_high_ms"])
    # resuming with more rounds adds the missing ones only
    more = onnxscale.bench(model, "cpu", batch=[1, 2], rounds=4, runs=8, warmup=1,
                           db=tmp_path / "r.db", resume=True)
    assert [len(r.rounds) for r in more] == [4, 4]
    assert more[0].rounds[0]["measured_at"] == rows[0].rounds[0]["measured_at"]


@pytest.mark.slow
def test_a_resumed_sweep_keeps_its_rounds(tmp_path):
    """A sweep timed in one round, rerun with --rounds 2: every cell gains one round and keeps
    the first; the report's rows carry the intervals and it quotes the noise floor."""
    db = tmp_path / "s.db"
    args = ["sweep", "zoo:regnetx-400mf", "--strategy", "w,d", "--flops", "1x,2x",
            "--runs", "5", "--warmup", "1", "--threads", "1", "--db", str(db)]
    assert run_cli(*args).returncode == 0
    from onnxscale.store import ResultStore

    with ResultStore(db) as store:
        first = {(c["strategy"], c["factor"]): c for c in store.cells()}
    assert all(len(c["bench"]["rounds"]) == 1 for c in first.values())
    out = run_cli(*args, "--rounds", "2")
    assert out.returncode == 0, out.stderr
    with ResultStore(db) as store:
        second = {(c["strategy"], c["factor"]): c for c in store.cells()}
    assert set(second) == set(first) and len(second) == 3
    for key, stored in second.items():
        rounds = stored["bench"]["rounds"]
        assert len(rounds) == 2
        assert rounds[0]["measured_at"] == first[key]["bench"]["rounds"][0]["measured_at"]
        low, high = stored["bench"]["p50_ci_ms"]
        assert low <= stored["p50_ms"] <= high
    report = run_cli("report", "--db", str(db), "-o", str(tmp_path / "rep"), "--json")
    assert report.returncode == 0, report.stderr
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert all(r["p50_ci"] for r in summary["rows"] if r["p50_ms"])
    assert "noise floor" in json.loads(report.stdout)["findings"][0]


# --- the correlation gap -----------------------------------------------------------------------

def _cells(flops, acts, times, noise=0.0):
    return [{"flops": f, "acts": a, "p50_ms": t,
             "p50_ci": [t * (1 - noise), t * (1 + noise)]} for f, a, t in zip(flops, acts, times)]


def test_correlation_gap_decides_when_the_data_can_and_says_when_it_cannot():
    rng = np.random.default_rng(0)
    flops = np.exp(rng.uniform(0, 3, 40))
    acts = np.exp(rng.uniform(0, 3, 40))  # independent of flops
    clear = evidence.correlation_gap(_cells(flops, acts, flops * 2.0, 0.01), "flops", "acts")
    assert clear["decided"] and clear["difference"] > 0.5 and clear["interval"][0] > 0
    # acts almost equal to flops: 7 cells cannot tell which one runtime follows
    near = np.exp(np.log(flops[:7]) + 0.02 * rng.standard_normal(7))
    times = flops[:7] * np.exp(0.03 * rng.standard_normal(7))
    vague = evidence.correlation_gap(_cells(flops[:7], near, times, 0.03), "flops", "acts")
    assert not vague["decided"] and vague["interval"][0] < 0 < vague["interval"][1]
    assert vague["cells_needed"] is None or vague["cells_needed"] > 7


def _panel(gap: dict) -> dict:
    return {"model": "m", "provider": "cpu", "machine": "vm", "batch": 1,
            "correlation": {"flops": 0.982, "acts": 0.980, "params": 0.9},
            "correlation_gap": gap, "fastest": [], "noise": None}


@pytest.mark.parametrize("needed, words", [
    (40, "about 40 cells (or tighter rounds) would tell"),
    # 52,775 cells for a 7-cell sweep was once printed: an extrapolation nobody can act on
    (52775, "the two correlations differ by too little for more cells of this sweep to tell"),
])
def test_a_finding_that_cannot_tell_says_what_would(needed, words):
    from onnxscale.reporting import finding

    gap = {"metrics": ["flops", "acts"], "difference": 0.002, "interval": [-0.03, 0.4],
           "decided": False, "cells": 7, "cells_needed": needed}
    text = finding(_panel(gap))
    assert "this sweep cannot tell them apart" in text and words in text
    assert str(needed) not in text or needed == 40


def test_ratio_interval_and_prediction_interval():
    low, high = evidence.ratio_interval([0.8, 0.82, 0.85, 0.79, 0.81, 0.83])
    assert 0.79 <= low <= 0.815 <= high <= 0.85
    assert evidence.ratio_interval([1.0]) is None
    observed = np.array([10.0, 20.0, 30.0, 40.0, 50.0, 60.0])
    half = evidence.prediction_interval(observed, observed * np.array(
        [1.02, 0.98, 1.01, 0.99, 1.03, 0.97]))
    assert 0.02 < half < 0.1
    assert evidence.noise_floor([{"round_p50s": [10, 10.2]}, {"round_p50s": [5]}])["cells"] == 1


def test_the_report_widens_intervals_stored_before_the_t_rule():
    """A cell stored with a narrow bootstrap interval over three rounds at 10, 11 and 12 ms:
    the report reads it at least as wide as Student's t of the rounds (4.303 x 1 / sqrt 3)."""
    from onnxscale.reporting import _interval

    cell = {"status": "ok", "p50_ms": 11.0}
    bench = {"p50_ci_ms": [10.9, 11.1], "rounds": [{"p50_ms": m} for m in (10.0, 11.0, 12.0)]}
    low, high = _interval(cell, bench)
    assert (low, high) == pytest.approx((11 - 4.303 / 3 ** 0.5, 11 + 4.303 / 3 ** 0.5))
    one = {"p50_ci_ms": [10.9, 11.1], "rounds": [{"p50_ms": 11.0}]}
    assert _interval(cell, one) == [10.9, 11.1]          # one round: as stored
    assert _interval({"status": "failed"}, bench) is None
