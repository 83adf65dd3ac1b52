#!/usr/bin/env python
"""Every model the test suite exports, through the five commands a user runs first.

For each export of ``tests/test_runs.py`` (torchvision and timm with both torch exporters,
local families) and the three PaddleOCR models of the rapidocr wheel: ``analyze``,
``scale --depth 2``, ``--width 2``, ``--resolution 1.5`` and ``--strategy dWr --flops 4x``, each
as a fresh ``python -m onnxscale`` process; every written model is run once in ONNX Runtime at
its new input size.  Prints one row per model: "ran" (with dWr's flops ratio) or the exit code
of a refusal, and counts internal errors (there must be none) and models ORT could not run.
Uses the suite's export cache (``~/.cache/onnxscale-tests``); needs the test extras.

    python scripts/check_every_export.py [--only NAME]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.conftest import CACHE, Exports  # noqa: E402
from tests.test_runs import EXPORTS, PADDLE_SHAPES  # noqa: E402

COMMANDS = {"depth": ["--depth", "2"], "width": ["--width", "2"],
            "resolution": ["--resolution", "1.5"], "dWr 4x": ["--strategy", "dWr", "--flops", "4x"]}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxscale", *args], capture_output=True,
                          text=True, cwd=REPO, timeout=900)


def runs(path: Path, inputs: dict[str, list[int]]) -> bool:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    outputs = session.run(None, {name: rng.standard_normal(dims).astype(np.float32)
                                 for name, dims in inputs.items()})
    return all(np.isfinite(o).all() for o in outputs)


def check(label: str, path: Path, extra: list[str], folder: Path, totals: dict) -> None:
    cells = []
    result = cli("analyze", str(path), *extra, "--json")
    cells.append("ok" if result.returncode == 0 else f"exit {result.returncode}")
    totals["internal"] += "internal error" in result.stderr
    for kind, args in COMMANDS.items():
        out = folder / f"{kind.split()[0]}.onnx"
        result = cli("scale", str(path), *args, *extra, "-o", str(out), "--json")
        if "internal error" in result.stderr:
            totals["internal"] += 1
            cells.append("INTERNAL ERROR")
            print(f"  {label} {kind}: {result.stderr.strip()}", file=sys.stderr)
            continue
        if result.returncode != 0:
            cells.append(f"refused ({result.returncode})")
            totals["refused"] += 1
            continue
        summary = json.loads(result.stdout)
        ok = runs(out, summary["scaled"]["inputs"])
        totals["written"] += 1
        totals["failed to run"] += not ok
        ratio = summary["scaled"]["flops"] / summary["base"]["flops"]
        cells.append(("ran" if ok else "DID NOT RUN") + (f" x{ratio:.3f}" if "4x" in kind else ""))
        out.unlink()
    print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None)
    args = parser.parse_args()
    exports = Exports(CACHE / "exports")
    totals = {"internal": 0, "refused": 0, "written": 0, "failed to run": 0}
    print("| model | analyze | " + " | ".join(COMMANDS) + " |")
    print("|---" * (len(COMMANDS) + 2) + "|")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name, exporter, res in EXPORTS:
            if args.only and args.only not in name:
                continue
            path = exports(name, exporter, res or 224)
            check(f"{name} ({exporter}, {res or 'own size'})", path, [], folder, totals)
        wheel = CACHE / "rapidocr-1.4.4" / "rapidocr_onnxruntime" / "models"
        files = {"det": "ch_PP-OCRv4_det_infer.onnx", "rec": "ch_PP-OCRv4_rec_infer.onnx",
                 "cls": "ch_ppocr_mobile_v2.0_cls_infer.onnx"}
        for which, dims in PADDLE_SHAPES.items():
            if (wheel / files[which]).exists() and not args.only:
                shape = "x".join(map(str, dims))
                check(f"PaddleOCR {which} ({shape})", wheel / files[which],
                      ["--input-shape", f"x:{shape}"], folder, totals)
    print(f"\n{totals}")
    if totals["internal"] or totals["failed to run"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
