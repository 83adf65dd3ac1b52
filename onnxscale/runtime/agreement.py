"""Do a configuration's outputs agree with the CPU fp32 reference?  A provider that is fast
because it computes something else must show it.

Each timed configuration's first-run outputs, on the same seeded inputs as the reference, are
compared with what the CPU provider computes from the fp32 model (as Polygraphy compares
runners): per output the max, mean and median absolute error, the max relative error, the
relative L2 error ``‖a − b‖ / ‖b‖``, and whether NaN or Inf appeared that the reference does not
have.  A configuration agrees when every output's relative L2 error is within the tolerance
(default 1e-4 for fp32, 1e-2 for fp16) and no NaN/Inf is new.
"""

from __future__ import annotations

import numpy as np

TOLERANCE = {"fp32": 1e-4, "fp16": 1e-2}


def compare_output(got: np.ndarray, want: np.ndarray) -> dict:
    """Error statistics of one output against its reference."""
    a = np.asarray(got, dtype=np.float64)
    b = np.asarray(want, dtype=np.float64)
    if a.shape != b.shape:
        return {"shape": list(a.shape), "reference_shape": list(b.shape), "rel_l2": None,
                "nonfinite": False}
    finite = np.isfinite(a) & np.isfinite(b)
    new_nonfinite = bool(np.any(~np.isfinite(a) & np.isfinite(b)))
    diff = np.abs(a - b)[finite]
    ref = np.abs(b)[finite]
    if diff.size == 0:
        return {"max_abs": 0.0, "mean_abs": 0.0, "median_abs": 0.0, "max_rel": 0.0,
                "rel_l2": 0.0, "nonfinite": new_nonfinite}
    norm = float(np.linalg.norm(b[finite]))
    rel_l2 = float(np.linalg.norm((a - b)[finite])) / norm if norm > 0 else float(diff.max())
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "median_abs": float(np.median(diff)),
            "max_rel": float((diff / np.maximum(ref, 1e-12)).max()),
            "rel_l2": rel_l2, "nonfinite": new_nonfinite}


def compare(outputs: list[np.ndarray], reference: list[np.ndarray], names: list[str],
            precision: str, tolerance: float | None = None) -> dict:
    """The agreement record a row stores: per-output statistics, the worst relative L2
    error, the tolerance and whether it was met."""
    tol = TOLERANCE.get(precision, 1e-4) if tolerance is None else tolerance
    per_output = {}
    for name, got, want in zip(names, outputs, reference):
        if not (np.issubdtype(np.asarray(want).dtype, np.number)
                or np.asarray(want).dtype == np.bool_):
            continue
        per_output[name] = compare_output(got, want)
    worst = [o["rel_l2"] for o in per_output.values()]
    mismatch = any(v is None for v in worst)
    worst_value = max((v for v in worst if v is not None), default=0.0)
    nonfinite = any(o["nonfinite"] for o in per_output.values())
    ok = not mismatch and not nonfinite and worst_value <= tol and len(outputs) == len(reference)
    return {"reference": "cpu fp32", "tolerance": tol, "rel_l2": worst_value, "ok": ok,
            "nonfinite": nonfinite, "shape_mismatch": mismatch, "outputs": per_output}


def describe(check: dict | None) -> str:
    """One cell for tables: ``ok 3e-07`` or ``NO 0.21 (> 1e-04)``."""
    if not check:
        return "-"
    if check.get("shape_mismatch"):
        return "NO: shapes differ"
    text = f"{check['rel_l2']:.0e}"
    if check.get("nonfinite"):
        return f"NO: NaN/Inf ({text})"
    return f"ok {text}" if check["ok"] else f"NO {text} (> {check['tolerance']:.0e})"
