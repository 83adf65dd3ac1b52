#!/usr/bin/env python
"""Block discovery speed on a generated ~7,000-node deep ResNet (target, issue 4: <= 1 s).

    python scripts/bench_depth.py [--runs 3]

The whole `scale --depth 4` process on ResNet-50 is a row of scripts/bench_scale.py.  Times
are medians; this machine is shared, so compare runs taken together, not across days.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from bench_analyze import deep_resnet  # the same ~7,000-node generated ResNet

REPO = Path(__file__).resolve().parents[1]


def time_discovery(runs: int) -> None:
    from onnxscale.graph import Graph
    from onnxscale.scaling.depth.blocks import find_blocks

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    time_discovery(args.runs)
    print("whole `scale --depth 4` processes: python scripts/bench_scale.py --only d4 --steps")


if __name__ == "__main__":
    main()
