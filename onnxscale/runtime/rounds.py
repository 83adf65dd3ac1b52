"""Rounds: one configuration timed several times, each a fresh session, so that slow minutes
of the machine do not all land on one configuration (``--rounds N``).

`run_order` interleaves a run's configurations A B B A: forward in even rounds, backward in
odd ones, so a drift in the machine's speed weighs on every configuration alike.  `combine`
merges a new round into what a row already holds (stored rows keep their raw times, so a
resumed sweep or ``bench --resume`` adds rounds rather than starting over).

A combined row's ``p50_ms`` is the median of its rounds' medians (the estimate the interval
in `uncertainty` is about); the other percentiles, mean, CV, min and max are over all runs.
"""

from __future__ import annotations

import dataclasses

from .row import Row
from .timing import summarize
from .uncertainty import median_interval, pack_times, stability, unpack_times


def run_order(items: list, round_index: int) -> list:
    """The order of one round: forward in even rounds, backward in odd ones."""
    return list(items) if round_index % 2 == 0 else list(reversed(items))


def round_times(row: Row) -> list:
    """The per-run times (ms) of each round a row holds."""
    pooled = unpack_times(row.raw_times)
    out, start = [], 0
    for entry in row.rounds or []:
        out.append(pooled[start:start + entry["runs"]])
        start += entry["runs"]
    return out


def first_round(row: Row, times_ms, steal: float | None, measured_at: float) -> Row:
    """A row's statistics from its one round of per-run times (ms)."""
    import numpy as np

    times = np.asarray(times_ms, dtype=np.float64)
    cv = float(times.std(ddof=1) / times.mean()) if len(times) > 1 else 0.0
    row.rounds = [{"p50_ms": float(np.median(times)), "runs": int(len(times)), "cv": cv,
                   "steal": steal, "measured_at": measured_at}]
    return finish(row, [times])


def finish(row: Row, rounds: list) -> Row:
    """Fill a row's statistics from its rounds of per-run times (ms), ``row.rounds`` set."""
    import numpy as np

    pooled = np.concatenate(rounds)
    row.update_metrics(summarize(list(pooled / 1000.0), row.batch))
    estimate, low, high = median_interval(rounds)
    row.p50_ms = estimate
    row.p50_ci_ms = [low, high]
    row.raw_times = pack_times(pooled)
    steals = [r.get("steal") for r in row.rounds or [] if r.get("steal") is not None]
    row.stability = stability(rounds, max(steals) if steals else None)
    return row


def combine(stored: Row, new: Row) -> Row:
    """``stored`` with ``new``'s round added (both available rows of one configuration)."""
    rounds = round_times(stored) + round_times(new)
    merged = dataclasses.replace(new, rounds=(stored.rounds or []) + (new.rounds or []),
                                 notes=list(dict.fromkeys(stored.notes + new.notes)),
                                 cached=False)
    return finish(merged, rounds)
