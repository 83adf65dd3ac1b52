#!/usr/bin/env python
"""What a sweep's orchestration costs: one `onnxscale sweep` against the same cells made and
timed by hand (`onnxscale scale` then `onnxscale bench`, one process each), side by side.

Target (issue 10): sweep wall time <= 1.2x the sum of the scale and bench times.

    python scripts/bench_sweep.py [--model zoo:regnety-400mf] [--strategy w,dWr]
        [--flops 2x,4x] [--runs 10] [--repeat 2]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(args: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "onnxscale", *args], cwd=REPO,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"onnxscale {' '.join(args[:3])} failed: {result.stderr[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="zoo:regnety-400mf")
    parser.add_argument("--strategy", default="w,dWr")
    parser.add_argument("--flops", default="2x,4x")
    parser.add_argument("--runs", default="10")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    timing = ["--runs", args.runs, "--warmup", "2", "--threads", "1"]
    sweeps, hands = [], []
    for _ in range(args.repeat):  # interleaved: both see the same machine load
        with tempfile.TemporaryDirectory() as folder:
            sweeps.append(timed(["sweep", args.model, "--strategy", args.strategy, "--flops",
                                 args.flops, "--db", f"{folder}/s.db", *timing]))
            total = 0.0
            for strategy in args.strategy.split(","):
                for factor in args.flops.split(","):
                    out = f"{folder}/{strategy}.{factor}.onnx"
                    total += timed(["scale", args.model, "--strategy", strategy, "--flops",
                                    factor, "--init", "random", "-o", out, "--json"])
                    total += timed(["bench", out, *timing, "--no-save", "--json"])
            hands.append(total)
    sweep, hand = statistics.median(sweeps), statistics.median(hands)
    cells = len(args.strategy.split(",")) * len(args.flops.split(","))
    print(f"{cells} cells of {args.model}: sweep {sweep:.1f} s, scale + bench by hand "
          f"{hand:.1f} s, ratio {sweep / hand:.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
