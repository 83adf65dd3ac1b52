"""How sure a runtime is: confidence intervals of a p50, rounds that cancel drift, and the
reasons to distrust a measurement.

A p50 from one series of runs on a shared machine is one draw: the machine's speed drifts
between minutes (seen here: the same session at 17.3 ms, then 23 ms, then 17.3 ms again), so
runs within a series are not independent and a bootstrap over them alone is too confident.
onnxscale therefore times a configuration in *rounds* (``--rounds N``: each round a fresh
session, the configurations of a run interleaved A B B A) and bootstraps hierarchically:
resample rounds, then runs within each drawn round, take the median of the round medians.
With one round this is the plain bootstrap over runs; with several it widens by as much as
the rounds disagree.  A percentile bootstrap over 2 or 3 rounds cannot reach beyond the
rounds it saw (the true centre lies outside the range of 3 draws a quarter of the time;
simulated coverage of its "95%": 62% with 2 rounds, 81% with 3), so with several rounds the
interval also spans Student's t interval of the round medians (k - 1 degrees of freedom):
93-94% in the same simulation (tests/test_uncertainty.py).

Raw per-run times are kept with the row (float32, zlib, base64: ~1 KB for 300 runs), so any
statistic can be recomputed later.
"""

from __future__ import annotations

import base64
import math
import zlib

import numpy as np

LEVEL = 0.95
BOOTSTRAP = 2000
UNSTABLE_CV = 0.10        # a series whose CV is above this is marked unstable
DRIFT = 0.05              # halves of a series whose medians differ by more: drift
ROUNDS_SPREAD = 0.05      # rounds whose p50s differ by more: the machine moved between them
STEAL = 0.02              # hypervisor steal above this share of CPU time while timing
MAX_RESAMPLED = 2000      # runs per round the bootstrap resamples


def pack_times(times_ms) -> str:
    """Per-run times (ms) as compact text for the row: float32, zlib, base64."""
    raw = np.asarray(times_ms, dtype=np.float32).tobytes()
    return base64.b64encode(zlib.compress(raw, 6)).decode("ascii")


def unpack_times(text: str | None) -> np.ndarray:
    if not text:
        return np.zeros(0, dtype=np.float64)
    raw = zlib.decompress(base64.b64decode(text))
    return np.frombuffer(raw, dtype=np.float32).astype(np.float64)


def median_interval(rounds: list, level: float = LEVEL, draws: int = BOOTSTRAP,
                    seed: int = 0) -> tuple[float, float, float]:
    """(estimate, low, high) of the median runtime from one or more rounds of per-run times.

    Estimate: the median of the round medians (one round: its median).  Interval: the
    hierarchical percentile bootstrap described in the module doc."""
    series = [np.asarray(r, dtype=np.float64) for r in rounds if len(r)]
    if not series:
        raise ValueError("no timed runs")
    rng = np.random.default_rng(seed)
    medians = [float(np.median(t)) for t in series]
    # tens of thousands of sub-millisecond runs: bootstrap a random subset (memory stays
    # ~30 MB; the interval is a little wider, never narrower)
    series = [t if len(t) <= MAX_RESAMPLED else rng.choice(t, MAX_RESAMPLED, replace=False)
              for t in series]
    # per round, `draws` bootstrap medians of its runs
    per_round = np.empty((len(series), draws))
    for i, times in enumerate(series):
        picks = rng.integers(0, len(times), size=(draws, len(times)))
        per_round[i] = np.median(times[picks], axis=1)
    estimate = float(np.median(medians))
    if len(series) == 1:
        estimates = per_round[0]
    else:
        chosen = rng.integers(0, len(series), size=(draws, len(series)))
        estimates = np.median(per_round[chosen, np.arange(draws)[:, None]], axis=1)
        # resampling k rounds underestimates their spread by (k - 1) / k in variance: widen
        # the draws about the estimate by the usual small-sample correction
        k = len(series)
        estimates = estimate + (estimates - estimate) * math.sqrt(k / (k - 1))
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(estimates, [tail, 100 - tail])
    low, high = at_least_t(estimate, (float(low), float(high)), medians, level)
    return estimate, float(min(low, estimate)), float(max(high, estimate))


def at_least_t(estimate: float, interval: tuple[float, float], round_p50s: list[float],
               level: float = LEVEL) -> tuple[float, float]:
    """``interval`` widened to span Student's t interval of the round medians about
    ``estimate`` (several rounds: a bootstrap over few of them undercovers what varies
    between them); unchanged with fewer than two rounds.  The report applies it to cells
    stored before intervals were widened this way."""
    medians = [float(m) for m in round_p50s if m]
    if len(medians) < 2:
        return interval
    half = student_t(level, len(medians) - 1) * float(np.std(medians, ddof=1)) / math.sqrt(
        len(medians))
    return min(interval[0], estimate - half), max(interval[1], estimate + half)


# Student's t two-sided 95% quantiles, degrees of freedom 1-30
_T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def student_t(level: float, df: int) -> float:
    """The two-sided ``level`` quantile of Student's t with ``df`` degrees of freedom: the
    table at 95% up to 30, else the normal quantile with the Cornish-Fisher correction."""
    from statistics import NormalDist

    if level == 0.95 and 1 <= df <= len(_T95):
        return _T95[df - 1]
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def intervals_overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether two intervals (low, high) share any value."""
    return a[0] <= b[1] and b[0] <= a[1]


def read_steal() -> tuple[int, int] | None:
    """(steal, total) CPU jiffies so far, from /proc/stat; None where the OS does not say."""
    try:
        with open("/proc/stat") as handle:
            fields = handle.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    return values[7], sum(values[:8])


def steal_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """The share of CPU time the hypervisor took between two `read_steal` readings."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def stability(rounds: list, steal: float | None = None) -> dict:
    """Whether a measurement is unstable, and the reasons to suspect it: a high CV, drift
    within a series (its halves' medians differ), rounds that disagree, steal time."""
    reasons = []
    for i, times in enumerate(np.asarray(r, dtype=np.float64) for r in rounds):
        label = f"round {i + 1}: " if len(rounds) > 1 else ""
        if len(times) >= 2:
            cv = float(times.std(ddof=1) / times.mean())
            if cv > UNSTABLE_CV:
                reasons.append(f"{label}CV {cv:.0%} (above {UNSTABLE_CV:.0%})")
        if len(times) >= 10:
            half = len(times) // 2
            first, second = float(np.median(times[:half])), float(np.median(times[half:]))
            if abs(second - first) > DRIFT * first:
                reasons.append(f"{label}drift: the second half ran "
                               f"{abs(second / first - 1):.0%} "
                               f"{'slower' if second > first else 'faster'} than the first")
    medians = [float(np.median(r)) for r in rounds if len(r)]
    if len(medians) > 1 and max(medians) > (1 + ROUNDS_SPREAD) * min(medians):
        reasons.append(f"rounds disagree: p50 from {min(medians):.2f} to {max(medians):.2f} ms")
    if steal is not None and steal > STEAL:
        reasons.append(f"the hypervisor took {steal:.0%} of CPU time (steal)")
    return {"unstable": bool(reasons), "reasons": reasons, "steal": steal}
