#!/usr/bin/env python
"""Depth-scaling speed: the whole `onnxscale scale --depth 4` process on zoo ResNet-50, and
block discovery on a generated ~7,000-node deep ResNet.

    python scripts/bench_depth.py [--runs 3]

Targets (issue 4): the whole process <= 3 s; block discovery <= 1 s.  The process time is
split into its steps (build, rewrite + re-analysis, onnx checker, save) from one in-process
run, so a regression can be placed.  Times are medians; this machine is shared, so compare
runs taken together, not across days.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_analyze import deep_resnet  # the same ~7,000-node generated ResNet

REPO = Path(__file__).resolve().parents[1]


def time_discovery(runs: int) -> None:
    from onnxscale.graph import Graph
    from onnxscale.scaling.blocks import find_blocks

    model = deep_resnet()
    index, discovery = [], []
    for _ in range(runs):
        start = time.perf_counter()
        graph = Graph(model)
        middle = time.perf_counter()
        found = find_blocks(graph)
        index.append(middle - start)
        discovery.append(time.perf_counter() - middle)
    blocks = sum(len(stage.blocks) for stage in found.stages)
    print(f"deep ResNet, {len(model.graph.node)} nodes: {blocks} blocks in "
          f"{len(found.stages)} stage(s)")
    print(f"  block discovery (find_blocks)   {statistics.median(discovery):6.3f} s   "
          f"(target <= 1 s)")
    print(f"  graph index + shapes (Graph)    {statistics.median(index):6.3f} s")


def time_process(runs: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "r50-d4.onnx"
        command = [sys.executable, "-m", "onnxscale", "scale", "zoo:resnet-50", "--depth", "4",
                   "-o", str(out), "--json"]
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=REPO)
            times.append(time.perf_counter() - start)
        size = out.stat().st_size / 1e6
    print(f"onnxscale scale zoo:resnet-50 --depth 4 ({size:.0f} MB written)")
    print(f"  whole process                   {statistics.median(times):6.3f} s   "
          f"(target <= 3 s)")
    _steps()


def _steps() -> None:
    """Where the process spends its time (one in-process run)."""
    from onnxscale import zoo
    from onnxscale.model import save_model
    from onnxscale.scaling.pipeline import Multipliers, ScaleOptions, check, scale_model

    marks = [("build zoo:resnet-50", lambda: zoo.build("resnet-50"))]
    start = time.perf_counter()
    proto = marks[0][1]()
    steps = [(marks[0][0], time.perf_counter() - start)]
    start = time.perf_counter()
    outcome = scale_model(proto, {}, Multipliers(d=4), ScaleOptions())
    steps.append(("analyze + depth rewrite + re-analyze", time.perf_counter() - start))
    start = time.perf_counter()
    check(outcome.model)
    steps.append(("onnx checker", time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        save_model(outcome.model, Path(folder) / "x.onnx")
        steps.append(("save", time.perf_counter() - start))
    for name, seconds in steps:
        print(f"    {name:<36}{seconds:6.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    time_discovery(args.runs)
    time_process(args.runs)


if __name__ == "__main__":
    main()
