#!/usr/bin/env python
"""Time and peak memory of `analyze` and `scale` on a model with external data, this tree
against another revision, side by side in one run.

The model is ResNet-50 widened 5x (2.4 GB of weights in ``r50w5.onnx.data``, a 47 KB graph),
written once by this tree's `onnxscale scale zoo:resnet-50 --width 5`.  Each command runs as a
fresh subprocess of `python -m onnxscale`, from this tree and from a git worktree of
``--baseline`` (default: the revision before lazy external data), interleaved A B B A, ``--runs``
times each; the peak resident memory of each process comes from ``os.wait4``.  Prints medians
and the ratios new / baseline.

    python scripts/bench_external.py [--runs 2] [--baseline REV] [--folder DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "analyze": ["analyze", "{model}"],
    "scale --width 0.5 (0.6 GB out)": ["scale", "{model}", "--width", "0.5", "-o", "{out}"],
    "scale --width 1.05 (2.6 GB out)": ["scale", "{model}", "--width", "1.05", "-o", "{out}"],
}


def run(tree: Path, args: list[str]) -> tuple[float, float]:
    """(seconds, peak resident MB) of one `python -m onnxscale ARGS` run from ``tree``."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "onnxscale", *args], cwd=tree, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"{' '.join(args)} failed in {tree}: {process.stderr.read().decode()}")
    return seconds, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--baseline", default="5995b0c")
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="bench-external."))
    model = folder / "r50w5.onnx"
    if not model.exists():
        print(f"writing {model} (ResNet-50 --width 5) ...", flush=True)
        run(REPO, ["scale", "zoo:resnet-50", "--width", "5", "-o", str(model)])
    baseline = Path(tempfile.mkdtemp(prefix="bench-external-base.")) / "tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(baseline), args.baseline],
                   cwd=REPO, check=True, capture_output=True)
    trees = {"new": REPO, "baseline": baseline}
    try:
        print(f"model: {model} ({sum(p.stat().st_size for p in folder.glob('r50w5*')) / 1e9:.2f}"
              f" GB), baseline {args.baseline}, {args.runs} A B B A rounds")
        for label, template in COMMANDS.items():
            times = {name: [] for name in trees}
            memory = {name: [] for name in trees}
            for _ in range(args.runs):
                for name in ("new", "baseline", "baseline", "new"):
                    out = folder / f"out.{name}.onnx"
                    command = [part.format(model=model, out=out) for part in template]
                    seconds, mb = run(trees[name], command)
                    times[name].append(seconds)
                    memory[name].append(mb)
                    for path in folder.glob("out.*"):
                        path.unlink()
            t = {name: statistics.median(v) for name, v in times.items()}
            m = {name: statistics.median(v) for name, v in memory.items()}
            print(f"{label:34s} time {t['new']:7.2f} s vs {t['baseline']:7.2f} s "
                  f"(x{t['new'] / t['baseline']:.2f}); peak memory {m['new']:7.0f} MB vs "
                  f"{m['baseline']:7.0f} MB (x{m['new'] / m['baseline']:.2f})", flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(baseline)], cwd=REPO,
                       capture_output=True)


if __name__ == "__main__":
    main()
