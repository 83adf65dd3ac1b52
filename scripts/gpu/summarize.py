#!/usr/bin/env python3
"""Summarize a GPU check (`check.sh`): each check in order with its verdict, which providers
really ran and which did not (and why), and every measured row.  Writes ``WORK/summary.json``.

    python3 scripts/gpu/summarize.py WORK     # the folder checks.py wrote to
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _load(path: Path, default):
    try:
        return json.loads(path.read_text() or "null") or default
    except (OSError, json.JSONDecodeError):
        return default


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("work", nargs="?", default=".gpu/out", type=Path)
    work = parser.parse_args().work
    if not work.is_dir():
        raise SystemExit(f"{work}: not a folder")
    checks = _load(work / "checks.json", [])
    rows = _load(work / "rows.json", [])
    ran = sorted({r["provider"] for r in rows if r.get("available")})
    missing = {}
    for r in rows:
        if not r.get("available"):
            missing.setdefault(r["provider"], r.get("reason") or r.get("status"))
    summary = {"checks": checks, "providers_ran": ran, "providers_unavailable": missing,
               "rows": rows}
    (work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not checks:
        err = work / "checks.err"
        last = err.read_text().strip().splitlines()[-1:] if err.exists() else []
        print(f"no checks ran ({last[0] if last else 'no output'})")
    for check in checks:
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[check["ok"]]
        print(f"[{mark}] {check['check']} ({check['seconds']} s): {check['detail']}")
    print(f"providers that really ran: {', '.join(ran) or 'none'}")
    for provider, reason in missing.items():
        print(f"unavailable: {provider}: {str(reason)[:300]}")
    for r in rows:
        if r.get("p50_ms"):
            print(f"  {r['model']:22} {r['provider']:9} {r['precision']:5} b{r['batch']:<3} "
                  f"p50 {r['p50_ms']:8.3f} ms  p95 {r.get('p95_ms') or 0:8.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
