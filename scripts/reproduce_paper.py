#!/usr/bin/env python
"""Reproduce the analysis of *Fast and Accurate Model Scaling* (Dollár et al., CVPR 2021) on
the providers of this machine.

Sweeps zoo EfficientNet-B0, RegNetY-400MF and RegNetZ-500MF with d, w, r, dw, dwr and dWr to
1, 2, 4, 8 and 16x flops on every available provider (`onnxscale sweep`, resumable: rerun to
go on), writes the report (`onnxscale report`), then says where the measurements agree with
the paper and where this hardware differs:

- growth exponents of activations and parameters against flops (docs/concepts.md (Strategies): dWr acts
  ~ s^0.6, dwr s^0.83, ...), within +-0.1;
- which complexity metric runtime follows, per provider (the paper: on GPUs, acts);
- which strategy is fastest at 16x flops.

    python scripts/reproduce_paper.py [--db paper.db] [-o paper-report] [--runs 10]
        [--rounds 3] [--threads 1] [--models zoo:efficientnet-b0,...] [--flops 1x,2x,...]

With ``--rounds N`` every cell is timed N times, interleaved, and each finding says how sure
it is: whether the metric runtime follows is told apart from the other at 95%, and which
strategies tie within the measured noise.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from onnxscale.scaling.strategy import exponents as paper_exponents  # noqa: E402
from onnxscale.scaling.strategy import parse_strategy  # noqa: E402

MODELS = "zoo:efficientnet-b0,zoo:regnety-400mf,zoo:regnetz-500mf"
STRATEGIES = "d,w,r,dw,dwr,dWr"


def available_providers() -> str:
    """Every provider this onnxruntime build lists; the sweep stores the ones that cannot
    really run (a CUDA build without CUDA libraries) as unavailable, with the reason."""
    import onnxruntime as ort

    names = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda",
             "TensorrtExecutionProvider": "tensorrt"}
    return ",".join(names[p] for p in reversed(ort.get_available_providers()) if p in names)


def onnxscale(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "onnxscale", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE)
    if result.returncode != 0:
        raise SystemExit(f"onnxscale {' '.join(args[:2])} failed (exit {result.returncode})")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="paper.db")
    parser.add_argument("-o", "--output", default="paper-report")
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--flops", default="1x,2x,4x,8x,16x")
    parser.add_argument("--runs", default="10")
    parser.add_argument("--rounds", default="1")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--provider", default=None, help="default: every available one")
    args = parser.parse_args()
    providers = args.provider or available_providers()
    print(f"sweeping {args.models} x {STRATEGIES} x {args.flops} on {providers} "
          f"(database {args.db}; rerun to resume)", flush=True)
    sweep = json.loads(onnxscale("sweep", *args.models.split(","), "--strategy", STRATEGIES,
                                 "--flops", args.flops, "--provider", providers, "--runs",
                                 args.runs, "--rounds", args.rounds, "--threads", args.threads,
                                 "--db", args.db, "--json"))
    print(f"cells: {sweep['done']} measured, {sweep['skipped']} already done, "
          f"{sweep['failed']} failed")
    onnxscale("report", "--db", args.db, "-o", args.output, "--json")
    summary = json.loads((Path(args.output) / "summary.json").read_text())
    compare(summary)
    print(f"\nreport: {args.output}/index.html")


def compare(summary: dict) -> None:
    """Measured against the paper: exponents, the metric runtime follows, the fastest."""
    print("\ngrowth exponents against flops, measured (paper, docs/concepts.md (Strategies)):")
    print(f"{'model':24} {'strategy':8} {'acts':>13} {'params':>13}  agrees (+-0.1)")
    for entry in summary["exponents"].values():
        want = paper_exponents(parse_strategy(entry["strategy"]))
        ok = all(entry[k] is not None and abs(entry[k] - want[k]) <= 0.1
                 for k in ("acts", "params"))
        cells = [f"{entry[k]:.2f} ({want[k]:.2f})" if entry[k] is not None else "-"
                 for k in ("acts", "params")]
        print(f"{entry['model']:24} {entry['strategy']:8} {cells[0]:>13} {cells[1]:>13}  "
              f"{'yes' if ok else 'NO'}")
    print("\nwhich metric runtime follows (the paper: acts, on GPUs):")
    for panel in summary["panels"]:
        r = {k: v for k, v in panel["correlation"].items() if v is not None}
        best = max(r, key=r.get) if r else None
        gpu = panel["provider"] in ("cuda", "tensorrt", "rocm", "migraphx", "dml")
        gap = panel.get("correlation_gap") or {}
        sure = "told apart at 95%" if gap.get("decided") else "NOT told apart at 95%"
        if best is None:
            verdict = "too few cells"
        elif gpu:
            verdict = ("agrees" if best == "acts" else f"differs: {best}, not acts") + \
                f"; {sure}"
        else:
            verdict = (f"not a GPU: the paper's finding does not apply; here {best} predicts "
                       f"best, {sure}")
        print(f"- {panel['finding']} [{verdict}]")
    print("\nfastest strategy per factor (ties: 95% intervals overlap):")
    for panel in summary["panels"]:
        for entry in panel["fastest"]:
            ties = entry.get("ties") or []
            print(f"  {panel['model']} {panel['provider']} {entry['flops_factor']:g}x: "
                  + (f"{entry['fastest']} tie with {', '.join(ties)}" if ties else
                     f"{entry['fastest']} ({entry['speedup']:.2f}x over {entry['slowest']})"))


if __name__ == "__main__":
    main()
