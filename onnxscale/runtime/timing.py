"""Timing loops and their statistics: an adaptive warm-up that stops once the median
settles, timed runs (each alone, GC off), percentiles, and the process's peak host memory."""

from __future__ import annotations

import gc
import sys
import time
from typing import Callable

import numpy as np

from .settings import DEFAULT_SECONDS, MAX_RUNS, MIN_RUNS, WARMUP_MAX_RUNS, WARMUP_MAX_SECONDS, \
    WARMUP_TOLERANCE


def settled(times: list[float], window: int, tolerance: float = WARMUP_TOLERANCE) -> bool:
    """True when the median of the last ``window`` times is within ``tolerance`` of the median
    of the ``window`` before them."""
    if window < 1 or len(times) < 2 * window:
        return False
    recent = float(np.median(times[-window:]))
    before = float(np.median(times[-2 * window:-window]))
    return abs(recent - before) <= tolerance * before


def warmup_window(last_run_s: float) -> int:
    """Runs per comparison window: fewer for slow runs so warm-up stays short."""
    if last_run_s < 0.05:
        return 5
    if last_run_s < 0.5:
        return 3
    return 2


def warm_up(run: Callable[[], object], fixed: int | None, max_seconds: float = WARMUP_MAX_SECONDS,
            max_runs: int = WARMUP_MAX_RUNS, tick: Callable[[], None] | None = None
            ) -> tuple[list[float], bool]:
    """Run until times settle (or exactly ``fixed`` times); returns (times, settled?)."""
    perf = time.perf_counter
    times: list[float] = []
    if fixed is not None:
        for _ in range(fixed):
            t0 = perf()
            run()
            times.append(perf() - t0)
        return times, True
    start = last_tick = perf()
    while True:
        t0 = perf()
        run()
        t1 = perf()
        times.append(t1 - t0)
        if settled(times, warmup_window(times[-1])):
            return times, True
        if len(times) >= max_runs or t1 - start > max_seconds:
            return times, False
        if tick is not None and t1 - last_tick > 0.25:
            tick()
            last_tick = perf()


def time_runs(run: Callable[[], object], runs: int | None, seconds: float | None,
              min_runs: int = MIN_RUNS, tick: Callable[[int, float], None] | None = None
              ) -> list[float]:
    """Time each call of ``run`` alone; ``runs`` exactly, or until ``seconds`` have passed and
    at least ``min_runs`` were made.  ``tick(done, elapsed)`` is called about 4 times a second,
    between runs, outside any timed interval."""
    perf = time.perf_counter
    times: list[float] = []
    append = times.append
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = last_tick = perf()
        if runs is not None:
            for _ in range(runs):
                t0 = perf()
                run()
                t1 = perf()
                append(t1 - t0)
                if tick is not None and t1 - last_tick > 0.25:
                    tick(len(times), t1 - start)
                    last_tick = perf()
        else:
            budget = DEFAULT_SECONDS if seconds is None else seconds
            deadline = start + budget
            while True:
                t0 = perf()
                run()
                t1 = perf()
                append(t1 - t0)
                if (t1 >= deadline and len(times) >= min_runs) or len(times) >= MAX_RUNS:
                    break
                if tick is not None and t1 - last_tick > 0.25:
                    tick(len(times), t1 - start)
                    last_tick = perf()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def summarize(times_s: list[float], batch: int) -> dict:
    """Statistics of per-run times (seconds) in milliseconds; throughput in items/s from the
    mean (sustained rate)."""
    a = np.asarray(times_s, dtype=np.float64) * 1000.0
    n = int(a.size)
    if n == 0:
        raise ValueError("no timed runs")
    p50, p90, p95, p99 = (float(v) for v in np.percentile(a, [50, 90, 95, 99]))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    return {
        "p50_ms": p50, "p90_ms": p90, "p95_ms": p95, "p99_ms": p99, "mean_ms": mean, "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0, "min_ms": float(a.min()), "max_ms": float(a.max()),
        "throughput": batch * 1000.0 / mean if mean > 0 else None, "runs": n,
    }


def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak_memory() -> bool:
    """Reset the process's peak RSS (Linux ≥ 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    except (ImportError, OSError):  # pragma: no cover
        return None
