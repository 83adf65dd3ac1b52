#!/usr/bin/env python
"""How repeatable is ``onnxscale bench`` on CPU across separate invocations?

Runs ``python -m onnxscale bench MODEL --provider cpu --json`` REPEATS times for each setting
(threads x intra-op spinning x pinning), round-robin so slow drift of the machine spreads over
all settings, and reports for each setting the p50 of every call, the CV of those p50s across
calls (the repeatability), and the median within-call CV.

    python scripts/bench_repeatability.py                        # zoo:resnet-18, 5 repeats
    python scripts/bench_repeatability.py --model zoo:efficientnet-b0 --seconds 2

Pinning: 1 thread -> ``taskset -c <last cpu>``; 2+ threads -> main thread on the first CPU with
``taskset`` and onnxruntime's worker threads on the next ones with
``session.intra_op_thread_affinities``.  Spinning: ``session.intra_op.allow_spinning`` 1
(onnxruntime's default) or 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@dataclass
class Setting:
    threads: int
    spinning: bool
    pinned: bool
    p50s: list[float] = field(default_factory=list)
    cvs: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return (f"threads={self.threads} spin={'on' if self.spinning else 'off'} "
                f"pin={'on' if self.pinned else 'off'}")

    def command(self, model: str, seconds: float, cpus: list[int]) -> list[str]:
        cmd = [sys.executable, "-m", "onnxscale", "bench", model, "--provider", "cpu",
               "--threads", str(self.threads), "--seconds", str(seconds), "--no-save", "--json"]
        if not self.spinning:
            cmd += ["--provider-option", "session.intra_op.allow_spinning=0"]
        if self.pinned:
            if self.threads == 1:
                return ["taskset", "-c", str(cpus[-1])] + cmd
            workers = ";".join(str(c + 1) for c in cpus[1:self.threads])  # 1-based ids
            cmd += ["--provider-option", f"session.intra_op_thread_affinities={workers}"]
            return ["taskset", "-c", str(cpus[0])] + cmd
        return cmd


def cv(values: list[float]) -> float:
    a = np.asarray(values, dtype=float)
    return float(a.std(ddof=1) / a.mean()) if a.size > 1 else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="zoo:resnet-18")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--threads", default=None,
                        help="comma-separated thread counts (default: 1 and all usable cores)")
    args = parser.parse_args()

    cpus = sorted(os.sched_getaffinity(0))
    threads = [int(t) for t in args.threads.split(",")] if args.threads else \
        sorted({1, len(cpus)})
    can_pin = shutil.which("taskset") is not None
    settings = [Setting(t, spin, pin) for t, spin, pin in itertools.product(
        threads, (True, False), (False, True) if can_pin else (False,))
        if t <= len(cpus)]

    model = args.model
    folder = tempfile.mkdtemp(prefix="onnxscale-repeat-")
    if model.startswith("zoo:"):  # build once, so every call times the very same file
        from onnxscale.model import load_model, save_model

        path = Path(folder) / (model[4:] + ".onnx")
        save_model(load_model(model).proto, path)
        model = str(path)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))

    print(f"model {args.model}, {args.repeats} calls per setting, --seconds {args.seconds}, "
          f"CPUs {cpus}; round-robin over {len(settings)} settings\n", flush=True)
    for rep in range(args.repeats):
        for s in settings:
            proc = subprocess.run(s.command(model, args.seconds, cpus), capture_output=True,
                                  text=True, env=env, timeout=600)
            if proc.returncode != 0:
                print(f"{s.name}: bench failed: {proc.stderr.strip()}", file=sys.stderr)
                return 1
            row = json.loads(proc.stdout)["results"][0]
            if not row["available"]:
                print(f"{s.name}: {row['reason']}", file=sys.stderr)
                return 1
            s.p50s.append(row["p50_ms"])
            s.cvs.append(row["cv"])
            print(f"  call {rep + 1}  {s.name:<32} p50 {row['p50_ms']:8.3f} ms  "
                  f"within-call CV {row['cv'] * 100:5.2f}%", flush=True)

    print(f"\n{'setting':<32} {'mean p50 ms':>11} {'CV of p50':>10} {'median in-call CV':>18}"
          f"  p50 per call (ms)")
    for s in settings:
        print(f"{s.name:<32} {np.mean(s.p50s):>11.3f} {cv(s.p50s) * 100:>9.2f}% "
              f"{np.median(s.cvs) * 100:>17.2f}%  " + ", ".join(f"{p:.2f}" for p in s.p50s))
    best = min(settings, key=lambda s: cv(s.p50s))
    print(f"\nmost repeatable: {best.name} (CV of p50 {cv(best.p50s) * 100:.2f}% over "
          f"{len(best.p50s)} calls)")
    print("command:", " ".join(best.command(args.model, args.seconds, cpus))
          .replace(sys.executable, "python"))
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
