#!/usr/bin/env python3
"""Summarize a GPU check (`check.sh`): which providers really ran, which fell back and why,
p50 per configuration, and the comparisons the check is for.  Writes ``OUT/summary.json``.

    python3 scripts/gpu/summarize.py OUT
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("bench-*.json")):
        label = path.stem.removeprefix("bench-")
        try:
            data = json.loads(path.read_text() or "{}")
        except json.JSONDecodeError:
            data = {}
        if not data.get("results"):
            err = path.with_suffix(".err")
            reason = err.read_text().strip().splitlines()[-1:] if err.exists() else []
            rows.append({"label": label, "status": "no output",
                         "reason": reason[0] if reason else "no output (timed out?)"})
            continue
        for row in data["results"]:
            rows.append({"label": label, **{k: row.get(k) for k in (
                "model", "provider", "batch", "precision", "io_binding", "cuda_graph",
                "available", "status", "reason", "p50_ms", "p90_ms", "cv", "runs",
                "providers_used", "engine_build_ms", "session_create_ms")}})
    return rows


def p50(rows, **match) -> float | None:
    for row in rows:
        if row.get("p50_ms") and all(row.get(k) == v for k, v in match.items()):
            return row["p50_ms"]
    return None


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=".gpu/out", type=Path,
                        help="the check's output folder (bench-*.json)")
    out = parser.parse_args().out
    if not out.is_dir():
        raise SystemExit(f"{out}: not a folder")
    rows = load(out)
    ran = sorted({r["provider"] for r in rows if r.get("available")})
    fell_back = {}
    for r in rows:
        if r.get("provider") and not r.get("available"):
            fell_back.setdefault(r["provider"], r.get("reason") or r.get("status"))
    comparisons = {}
    for model in sorted({r["model"] for r in rows if r.get("model")}):
        for batch in sorted({r["batch"] for r in rows if r.get("batch")}):
            cpu = p50(rows, label="fp32", model=model, batch=batch, provider="cpu")
            cuda = p50(rows, label="fp32", model=model, batch=batch, provider="cuda")
            half = p50(rows, label="fp16", model=model, batch=batch, provider="cuda")
            bound = p50(rows, label="iobinding", model=model, batch=batch, provider="cuda")
            graph = p50(rows, label="cudagraph", model=model, batch=batch, provider="cuda")
            trt = p50(rows, label="fp16", model=model, batch=batch, provider="tensorrt")
            comparisons[f"{model} b{batch}"] = {
                "cpu_fp32_ms": cpu, "cuda_fp32_ms": cuda, "cuda_fp16_ms": half,
                "cuda_iobinding_ms": bound, "cuda_graph_ms": graph, "tensorrt_fp16_ms": trt,
                "cuda_speedup_over_cpu": cpu / cuda if cpu and cuda else None}
    summary = {"providers_ran": ran, "providers_fell_back": fell_back,
               "comparisons": comparisons, "rows": rows}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"providers that really ran: {', '.join(ran) or 'none'}")
    for provider, reason in fell_back.items():
        print(f"unavailable or fell back: {provider}: {str(reason)[:300]}")
    print(f"\n{'label':10} {'model':22} {'provider':9} {'batch':>5} {'p50 ms':>9} {'cv':>6}  status")
    for r in rows:
        if not r.get("provider"):
            print(f"{r['label']:10} {'-':22} {'-':9} {'-':>5} {'-':>9} {'-':>6}  {r['reason']}")
            continue
        value = f"{r['p50_ms']:9.3f}" if r.get("p50_ms") else f"{'n/a':>9}"
        cv = f"{r['cv']:6.1%}" if r.get("cv") is not None else f"{'':>6}"
        print(f"{r['label']:10} {str(r['model']):22} {r['provider']:9} {r['batch']:>5} "
              f"{value} {cv}  {r['status']}")
    print()
    for key, c in comparisons.items():
        parts = [f"{name} {value:.3f} ms" for name, value in c.items()
                 if value is not None and name.endswith("_ms")]
        speedup = c["cuda_speedup_over_cpu"]
        print(f"{key}: " + ", ".join(parts) +
              (f"; cuda {speedup:.1f}x faster than cpu" if speedup else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
