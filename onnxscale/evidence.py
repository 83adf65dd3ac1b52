"""Claims tested against the noise: what `reporting` may say about a sweep, and how sure.

Every timed cell carries a 95% interval of its p50 (`runtime.uncertainty`).  From those:

- `fastest_at`: the fastest strategy at a flops factor, and every strategy whose interval
  overlaps the fastest one's: those *tie within the measured noise*, and a finding names them
  all instead of a winner;
- `correlation_gap`: whether runtime follows one complexity metric more than another, as a
  bootstrap interval of the difference of the two correlations (cells resampled, each cell's
  runtime drawn within its own interval); an interval that includes 0 means the sweep cannot
  tell them apart, with a rough count of the cells that would;
- `ratio_interval`: one machine's (or provider's) time over another's, median over shared
  cells with a bootstrap interval;
- `prediction_interval`: how far a fitted runtime model's prediction may miss, from its
  residuals;
- `noise_floor`: the machine's run-to-run spread, from cells timed in several rounds.
"""

from __future__ import annotations

import math

import numpy as np

DRAWS = 2000
Z95 = 1.959963984540054


def interval_of(row: dict) -> tuple[float, float]:
    """A cell's p50 interval; a cell without one (timed before intervals) is a point."""
    ci = row.get("p50_ci")
    return (float(ci[0]), float(ci[1])) if ci else (row["p50_ms"], row["p50_ms"])


def fastest_at(rows: list[dict]) -> dict:
    """At one factor: the fastest strategy, the strategies that tie with it within their
    intervals, the slowest, and the speedup of the fastest over the slowest with its range
    (worst case to best case over both intervals)."""
    best = min(rows, key=lambda r: r["p50_ms"])
    worst = max(rows, key=lambda r: r["p50_ms"])
    low, high = interval_of(best)
    ties = [r["strategy"] for r in rows if r is not best
            and interval_of(r)[0] <= high and low <= interval_of(r)[1]]
    worst_low, worst_high = interval_of(worst)
    return {"fastest": best["strategy"], "fastest_ms": best["p50_ms"],
            "slowest": worst["strategy"], "slowest_ms": worst["p50_ms"],
            "speedup": worst["p50_ms"] / best["p50_ms"],
            "speedup_range": [worst_low / high, worst_high / low] if low > 0 else None,
            "ties": ties}


def _log_sd(row: dict) -> float:
    """The spread of a cell's log runtime implied by its 95% interval."""
    low, high = interval_of(row)
    if low <= 0 or high <= low:
        return 0.0
    return (math.log(high) - math.log(low)) / (2 * Z95)


def correlation_gap(rows: list[dict], first: str, second: str, draws: int = DRAWS,
                    seed: int = 0) -> dict | None:
    """The difference r(log runtime, log ``first``) − r(log runtime, log ``second``) with a
    95% bootstrap interval; ``decided`` when the interval excludes 0; ``cells_needed``: about
    how many cells would shrink the interval to exclude the observed difference (the width
    falls as 1/sqrt(cells))."""
    usable = [r for r in rows if r.get(first) and r.get(second) and r["p50_ms"]]
    n = len(usable)
    if n < 4:
        return None
    x1 = np.log([r[first] for r in usable])
    x2 = np.log([r[second] for r in usable])
    y = np.log([r["p50_ms"] for r in usable])
    sd = np.array([_log_sd(r) for r in usable])

    def gap(idx, noise):
        yy = y[idx] + noise
        with np.errstate(invalid="ignore", divide="ignore"):
            r1 = _pearson_rows(x1[idx], yy)
            r2 = _pearson_rows(x2[idx], yy)
        return r1 - r2

    observed = float(gap(np.arange(n)[None, :], np.zeros((1, n)))[0])
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(draws, n))
    noise = rng.standard_normal((draws, n)) * sd[idx]
    samples = gap(idx, noise)
    samples = samples[np.isfinite(samples)]
    if samples.size < draws // 2:
        return None
    low, high = (float(v) for v in np.percentile(samples, [2.5, 97.5]))
    decided = low > 0 or high < 0
    needed = None
    if not decided and observed != 0:
        half = (high - low) / 2
        needed = int(math.ceil(n * (half / abs(observed)) ** 2))
    return {"metrics": [first, second], "difference": observed, "interval": [low, high],
            "decided": decided, "cells": n, "cells_needed": needed}


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of x with the same row of y."""
    xc = x - x.mean(axis=1, keepdims=True)
    yc = y - y.mean(axis=1, keepdims=True)
    return (xc * yc).sum(axis=1) / np.sqrt((xc ** 2).sum(axis=1) * (yc ** 2).sum(axis=1))


def ratio_interval(ratios: list[float], draws: int = DRAWS, seed: int = 0
                   ) -> list[float] | None:
    """95% bootstrap interval of the median of per-cell ratios."""
    if len(ratios) < 2:
        return None
    values = np.asarray(ratios, dtype=np.float64)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), (draws, len(values)))], axis=1)
    return [float(v) for v in np.percentile(medians, [2.5, 97.5])]


def prediction_interval(observed: np.ndarray, predicted: np.ndarray,
                        parameters: int = 3) -> float | None:
    """Half-width (relative) of a 95% prediction interval of a fitted runtime model: the
    residual spread of log(observed / predicted), corrected for the fitted parameters."""
    ok = (observed > 0) & (predicted > 0)
    if ok.sum() <= parameters:
        return None
    residual = np.log(observed[ok] / predicted[ok])
    dof = int(ok.sum()) - parameters
    spread = math.sqrt(float(np.sum(residual ** 2)) / dof)
    return math.exp(Z95 * spread) - 1


def noise_floor(rows: list[dict]) -> dict | None:
    """The run-to-run spread of the machine: the median, over cells timed in two or more
    rounds, of the coefficient of variation of their round p50s."""
    spreads = []
    for row in rows:
        p50s = [p for p in row.get("round_p50s") or [] if p]
        if len(p50s) >= 2:
            values = np.asarray(p50s)
            spreads.append(float(values.std(ddof=1) / values.mean()))
    if not spreads:
        return None
    return {"cv": float(np.median(spreads)), "cells": len(spreads)}
