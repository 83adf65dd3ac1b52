"""The same 20-cell CPU sweep run locally and with --ray on a local one-node cluster, side
by side: wall time ratio (target <= 1.3) and the p50 of each cell in both runs (target: the
median ratio within 5%, placement does not disturb timing).

    python scripts/bench_cluster.py [--runs 20]

Cells: zoo:resnet-18 at 96x96, strategies d, w, r, dwr, dWr x factors 2, 4, 8, 16 = 20 cells,
CPU, batch 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = ["zoo:resnet-18", "--input-shape", "input:1x3x96x96"]


def sweep(db: Path, runs: int, ray: bool) -> tuple[float, dict]:
    args = [sys.executable, "-m", "onnxscale", "sweep", *MODEL, "--strategy",
            "d,w,r,dwr,dWr", "--flops", "2x,4x,8x,16x", "--runs", str(runs), "--warmup", "2",
            "--db", str(db), "--json"] + (["--ray"] if ray else [])
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    cells = json.loads(result.stdout)["cells"]
    return wall, {(c["strategy"], c["factor"], c["batch"]): c["p50_ms"] for c in cells
                  if c["status"] == "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        local_wall, local = sweep(Path(folder) / "local.db", args.runs, ray=False)
        ray_wall, remote = sweep(Path(folder) / "ray.db", args.runs, ray=True)
    common = sorted(set(local) & set(remote))
    ratios = [remote[k] / local[k] for k in common]
    print(f"cells: {len(local)} local, {len(remote)} with --ray, {len(common)} in both")
    print(f"wall: local {local_wall:.1f} s, --ray {ray_wall:.1f} s, ratio "
          f"{ray_wall / local_wall:.2f} (target <= 1.3)")
    print(f"p50 ratio (ray / local) per cell: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f} (target: median within 5%)")


if __name__ == "__main__":
    main()
