"""The same 20-cell CPU sweep run locally and with --ray on a local one-node cluster, side
by side: wall time ratio (target <= 1.3) and the p50 of each cell in both runs (target: the
median ratio within 5%, placement does not disturb timing).

    python scripts/bench_cluster.py [--runs 20] [--rounds 8]

Cells: zoo:resnet-18 at 96x96, strategies d, w, r, dwr, dWr x factors 2, 4, 8, 16 = 20 cells,
CPU, batch 1 (tolerance 12%, so every cell is made: r cannot land within 1.5% of 2x on the
model's 32-pixel grid).

This machine drifts by several percent over minutes, so the two executors run interleaved in
A B B A blocks (``--rounds 8``: four blocks, about 30 minutes here), and each cell's p50 is the
median over its rounds.  One block alone lands anywhere within about +-4% of the answer on a
shared 2-core VM, so fewer rounds do not settle a 5% target there; the script prints each
block's ratio to show that spread.  Each round prints its median p50 against round 1's and
the CPU the hypervisor stole meanwhile; at the end each executor is set against itself (its
last run over its first), the noise floor the ray / local ratio should be read against.
The wall time of ``--ray`` includes importing Ray and starting the local cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODEL = ["zoo:resnet-18", "--input-shape", "input:1x3x96x96"]
CELLS = ["--strategy", "d,w,r,dwr,dWr", "--flops", "2x,4x,8x,16x", "--tolerance", "12%"]


def sweep(db: Path, runs: int, ray: bool) -> tuple[float, dict]:
    args = [sys.executable, "-m", "onnxscale", "sweep", *MODEL, *CELLS, "--runs", str(runs),
            "--warmup", "2", "--db", str(db), "--json"] + (["--ray"] if ray else [])
    start = time.perf_counter()
    result = subprocess.run(args, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    cells = json.loads(result.stdout)["cells"]
    return wall, {(c["strategy"], c["factor"], c["batch"]): c["p50_ms"] for c in cells
                  if c["status"] == "ok"}


def steal_seconds() -> float | None:
    """CPU time the hypervisor gave to other guests so far (Linux /proc/stat), all cores
    together: a round that lost much of it was disturbed from outside."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
        return int(fields[8]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def order(rounds: int) -> list[bool]:
    """A B B A per two rounds (False: local, True: --ray): linear drift cancels."""
    return [ray for pair in range(rounds // 2 + rounds % 2)
            for ray in (False, True, True, False)][:2 * rounds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8, help="runs of each executor")
    args = parser.parse_args()
    walls: dict[bool, list[float]] = {False: [], True: []}
    p50s: dict[bool, dict] = {False: {}, True: {}}
    rounds: list[tuple[bool, dict]] = []
    first: dict = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, ray in enumerate(order(args.rounds)):
            stolen = steal_seconds()
            wall, cells = sweep(Path(folder) / f"{index}.db", args.runs, ray)
            stolen = steal_seconds() - stolen if stolen is not None else None
            walls[ray].append(wall)
            rounds.append((ray, cells))
            for key, p50 in cells.items():
                p50s[ray].setdefault(key, []).append(p50)
            first = first or cells
            drift = statistics.median(cells[k] / first[k] for k in cells if k in first)
            print(f"round {index + 1}: {'--ray' if ray else 'local'} {wall:.1f} s, "
                  f"{len(cells)} cells, p50 / round 1's: median {drift:.3f}"
                  + (f", hypervisor stole {stolen / wall:.1%} of a core"
                     if stolen is not None else ""), flush=True)
    local = {k: statistics.median(v) for k, v in p50s[False].items()}
    remote = {k: statistics.median(v) for k, v in p50s[True].items()}
    common = sorted(set(local) & set(remote))
    ratios = [remote[k] / local[k] for k in common]
    local_wall, ray_wall = statistics.median(walls[False]), statistics.median(walls[True])
    print(f"cells: {len(local)} local, {len(remote)} with --ray, {len(common)} in both")
    print(f"wall (median of {args.rounds}): local {local_wall:.1f} s, --ray {ray_wall:.1f} s, "
          f"ratio {ray_wall / local_wall:.2f} (target <= 1.3)")
    print(f"p50 ratio (ray / local) per cell: median {statistics.median(ratios):.3f}, "
          f"min {min(ratios):.3f}, max {max(ratios):.3f} (target: median within 5%)")
    blocks = block_ratios(rounds)
    if len(blocks) > 1:
        print(f"p50 ratio per A B B A block (drift within a block cancels): "
              f"{', '.join(f'{r:.3f}' for r in blocks)}")
    for ray in (False, True):  # the machine's own noise: one executor against itself
        repeat = noise_floor(p50s[ray])
        if repeat is not None:
            print(f"noise floor, {'--ray' if ray else 'local'} against itself (its last run / "
                  f"its first, per cell): median {repeat:.3f}")


def block_ratios(rounds: list[tuple[bool, dict]]) -> list[float]:
    """For each A B B A block of four rounds, the median over cells of the geometric mean of
    its two --ray p50s over that of its two local ones: the spread of these says how far one
    block's answer can be trusted on this machine."""
    ratios = []
    for start in range(0, len(rounds) - 3, 4):
        block = rounds[start:start + 4]
        local = [cells for ray, cells in block if not ray]
        remote = [cells for ray, cells in block if ray]
        keys = set.intersection(*(set(cells) for cells in local + remote))
        ratios.append(statistics.median(
            (remote[0][k] * remote[1][k] / (local[0][k] * local[1][k])) ** 0.5
            for k in keys))
    return ratios


def noise_floor(p50s: dict) -> float | None:
    """Median over cells of (last run's p50 / first run's p50): how far the same executor
    moves between its own runs on this machine, the yardstick for the ray / local ratio."""
    ratios = [values[-1] / values[0] for values in p50s.values() if len(values) > 1]
    return statistics.median(ratios) if ratios else None


if __name__ == "__main__":
    main()
