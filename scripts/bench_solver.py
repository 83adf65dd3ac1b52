#!/usr/bin/env python
"""Whole-process time of the main job (`scale --strategy ... --flops ...`) in a fresh venv.

Rows (targets from issue 8):
- zoo EfficientNet-B0, dWr x16, --init random                      <= 3 s
- zoo EfficientNet-B0, 6 strategies x {2, 4, 16}x grid, one command <= 60 s
- torchvision ResNet-50 (legacy export), dWr x16, --init random     <= 10 s + writing its file

"writing" is measured apart in the same venv: a process that loads the written model and
saves it again with onnxscale's writer, minus that process's load time.  With
``--baseline-ref REF`` the same rows also run from a second fresh venv with onnxscale at git
ref REF installed, interleaved, and the table shows both and their ratio.

    python scripts/bench_solver.py [--runs 3] [--venv PATH] [--baseline-ref HEAD~5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_venv import REPO, FreshVenv  # noqa: E402

WRITE = ("import sys, time, onnx\n"
         "from onnxscale.model import save_model\n"
         "t = time.perf_counter(); m = onnx.load(sys.argv[1]); loaded = time.perf_counter()\n"
         "save_model(m, sys.argv[2]); done = time.perf_counter()\n"
         "print(done - loaded)")


def rows(folder: Path) -> list[tuple[str, list[str], float, str | None]]:
    """(label, onnxscale arguments, target seconds, output file whose writing is excluded)."""
    r50 = folder / "tv_resnet50.onnx"
    return [
        ("EfficientNet-B0 dWr x16", ["scale", "zoo:efficientnet-b0", "--strategy", "dWr",
                                     "--flops", "16x", "--init", "random", "-o",
                                     str(folder / "b0x16.onnx")], 3.0, None),
        ("EfficientNet-B0 6x3 grid", ["scale", "zoo:efficientnet-b0", "--strategy",
                                      "d,w,r,dw,dwr,dWr", "--flops", "2x,4x,16x", "--init",
                                      "random", "-o", str(folder / "grid")], 60.0, None),
        ("torchvision ResNet-50 dWr x16", ["scale", str(r50), "--strategy", "dWr", "--flops",
                                           "16x", "--init", "random", "-o",
                                           str(folder / "r50x16.onnx")], 10.0,
         str(folder / "r50x16.onnx")),
    ]


def export_resnet50(path: Path) -> None:
    """torchvision ResNet-50, legacy exporter, by this interpreter (needs the test extras)."""
    import types

    import torch

    for module in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(module, types.ModuleType(module))
    import torchvision

    model = torchvision.models.resnet50().eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                      opset_version=17)


def baseline_venv(ref: str) -> FreshVenv:
    """A fresh venv with onnxscale at git ``ref`` (checked out into a temporary worktree)."""
    tree = Path(tempfile.mkdtemp(prefix="onnxscale-ref.")) / "tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
                   check=True, capture_output=True)
    venv = Path(tempfile.mkdtemp(prefix="onnxscale-venv-ref."))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(tree)],
                   check=True)
    return FreshVenv(venv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--venv", type=Path, help="reuse this venv instead of creating one")
    parser.add_argument("--baseline-ref", help="also time onnxscale at this git ref")
    args = parser.parse_args()
    venv = FreshVenv(args.venv) if args.venv else FreshVenv.create()
    print("venv:", ", ".join(f"{k} {v}" for k, v in venv.versions(
        ["onnxscale", "onnx", "numpy", "ml_dtypes", "protobuf"]).items()))
    base = baseline_venv(args.baseline_ref) if args.baseline_ref else None
    folder = Path(tempfile.mkdtemp(prefix="bench_solver."))
    export_resnet50(folder / "tv_resnet50.onnx")
    venv.timed(["-m", "onnxscale", "--version"], cwd=folder)  # warm the bytecode caches
    header = f"{'row':31} {'median s':>9} {'write s':>8} {'s - write':>9} {'target':>7}"
    print(header + (f" {'at ' + args.baseline_ref:>12} {'speedup':>8}" if base else ""))
    for label, command, target, written in rows(folder):
        ours, theirs, writes = [], [], []
        for _ in range(args.runs):
            ours.append(venv.timed(["-m", "onnxscale", *command], cwd=folder))
            if written:
                out = subprocess.run([str(venv.python), "-c", WRITE, written,
                                      str(folder / "rewrite.onnx")], capture_output=True,
                                     text=True, check=True)
                writes.append(float(out.stdout))
            if base:
                try:
                    theirs.append(base.timed(["-m", "onnxscale", *command], cwd=folder))
                except SystemExit:  # an older onnxscale may lack the feature (grids)
                    pass
        seconds, write = statistics.median(ours), statistics.median(writes) if writes else 0.0
        verdict = "ok" if seconds - write <= target else "MISSED"
        line = (f"{label:31} {seconds:9.2f} {write:8.2f} {seconds - write:9.2f} "
                f"{target:6.0f}s {verdict}")
        if base and theirs:
            old = statistics.median(theirs)
            line += f" {old:12.2f} {old / seconds:7.1f}x"
        elif base:
            line += f" {'n/a':>12}"
        print(line, flush=True)
    print(f"(medians of {args.runs} whole-process runs; bytecode cached)")


if __name__ == "__main__":
    main()
