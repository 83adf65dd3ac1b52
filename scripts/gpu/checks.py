#!/usr/bin/env python3
"""The GPU check's questions, in the order that makes each answer mean something, each bounded
by one deadline.  Writes ``OUT/checks.json`` (one record per check: ok, detail, seconds) and
prints one line per check.  Run by ``check.sh`` (which sets the deadline and the loader path);
on a machine without a GPU (``--dry-run``) every CUDA check says why it could not run.

    python3 scripts/gpu/checks.py OUT --deadline EPOCH_SECONDS [--prefix DIR] [--dry-run]

1. onnxruntime is imported from the private prefix (not the image's CPU build);
2. CUDA is first in a CUDA session's ``get_providers()``;
3. every node of ResNet-50 and EfficientNet-B0 runs on CUDA (0 on CPU), fp32 and fp16, and
   their outputs agree with CPU fp32 (the fp16 error is reported);
4. IO binding: outputs live on ``cuda`` and equal a plain run's;
5. CUDA graphs: replayed outputs equal a non-graph run's;
6. TensorRT: a row or a reason, within seconds;
7. CUDA vs CPU: the speedup on ResNet-50 at batch 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np

MODELS = ("zoo:resnet-50", "zoo:efficientnet-b0")
CUDA = "CUDAExecutionProvider"


class Checks:
    def __init__(self, out: Path, deadline: float):
        self.out, self.deadline, self.records = out, deadline, []

    def run(self, name: str, check, reserve: float = 10.0) -> None:
        left = self.deadline - time.time()
        if left < reserve:
            self._record(name, None, f"skipped: {left:.0f} s left before the deadline", 0.0)
            return
        t0 = time.time()
        try:
            ok, detail = check()
        except Exception as exc:  # a check that crashes is a failed check, not a crashed run
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:600]
            traceback.print_exc(file=sys.stderr)
        self._record(name, ok, detail, time.time() - t0)

    def _record(self, name, ok, detail, seconds) -> None:
        self.records.append({"check": name, "ok": ok, "detail": detail,
                             "seconds": round(seconds, 1)})
        mark = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        print(f"[{mark}] {name} ({seconds:.0f} s): {detail}", flush=True)
        (self.out / "checks.json").write_text(json.dumps(self.records, indent=2) + "\n")


def _cuda_session(model: str, **options):
    import onnxruntime as ort

    from onnxscale.model import load_model

    proto = load_model(model).proto
    so = ort.SessionOptions()
    so.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), so,
                                   providers=[(CUDA, options), "CPUExecutionProvider"])
    return session, proto


def _feeds(session, batch: int = 1) -> dict:
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([batch] + list(i.shape[1:])).astype(np.float32)
            for i in session.get_inputs()}


def check_prefix(prefix: str | None, dry: bool):
    import onnxruntime as ort

    where = ort.__file__
    if dry or not prefix:
        return None if dry else False, f"onnxruntime {ort.__version__} from {where} (no prefix)"
    return where.startswith(prefix), f"onnxruntime {ort.__version__} from {where}"


def check_cuda_first():
    session, _ = _cuda_session(MODELS[0])
    used = session.get_providers()
    return used[0] == CUDA, f"get_providers() = {used}"


def check_placement_and_agreement(records: list):
    import onnxscale

    lines, ok = [], True
    for model in MODELS:
        for precision in ("fp32", "fp16"):
            row = onnxscale.bench(model, "cuda", precision=precision, seconds=1)[0]
            records.append(row.to_dict())
            if not row.available:
                return False, f"{model} {precision}: {row.reason}"
            on_cpu = (row.placement or {}).get("nodes", {}).get("cpu", 0)
            check = row.output_check or {}
            ok &= on_cpu == 0 and bool(check.get("ok"))
            lines.append(f"{model} {precision}: {on_cpu} nodes on CPU, rel L2 "
                         f"{check.get('rel_l2', float('nan')):.1e}, p50 {row.p50_ms:.2f} ms")
    return ok, "; ".join(lines)


def check_io_binding():
    import onnxruntime as ort

    session, _ = _cuda_session(MODELS[0])
    feeds = _feeds(session)
    plain = session.run(None, feeds)[0]
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0))
    out_name = session.get_outputs()[0].name
    binding.bind_output(out_name, "cuda", 0)
    session.run_with_iobinding(binding)
    value = binding.get_outputs()[0]
    device = value.device_name()
    diff = float(np.abs(value.numpy() - plain).max())
    return device.lower() == "cuda" and diff <= 1e-4 * max(1.0, float(np.abs(plain).max())), \
        f"outputs on {device}, max |bound - plain| = {diff:.2e}"


def check_cuda_graph():
    from onnxscale.runtime.session import Runner

    session, _ = _cuda_session(MODELS[0])
    feeds = _feeds(session)
    plain = session.run(None, feeds)[0]
    graphed, _ = _cuda_session(MODELS[0], enable_cuda_graph="1")
    shapes = [list(plain.shape)]
    runner = Runner(graphed, feeds, "cuda", 0, True, shapes)  # outputs bound before run 1
    first = runner.first_run()[0]
    for _ in range(3):
        runner.call()  # replays
    replayed = runner.binding.get_outputs()[0].numpy()
    diff = max(float(np.abs(first - plain).max()), float(np.abs(replayed - plain).max()))
    return diff <= 1e-3, f"max |graph - plain| = {diff:.2e} over a capture and 3 replays"


def check_tensorrt(records: list):
    import onnxscale

    t0 = time.time()
    row = onnxscale.bench(MODELS[0], "tensorrt", seconds=1)[0]
    records.append(row.to_dict())
    took = time.time() - t0
    if row.available:
        return True, (f"ran: p50 {row.p50_ms:.2f} ms, engine build {row.engine_build_ms:.0f} ms, "
                      f"{row.placement and row.placement.get('nodes')}")
    return took < 60, f"unavailable after {took:.0f} s: {row.reason}"


def check_speedup(records: list):
    import onnxscale

    rows = onnxscale.bench(MODELS[0], "cpu,cuda", seconds=1)
    records.extend(r.to_dict() for r in rows)
    cpu, cuda = rows
    if not cuda.available:
        return False, f"cuda: {cuda.reason}"
    return cuda.p50_ms < cpu.p50_ms, (f"p50 cpu {cpu.p50_ms:.2f} ms, cuda {cuda.p50_ms:.2f} ms: "
                                      f"{cpu.p50_ms / cuda.p50_ms:.1f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--deadline", type=float, required=True, help="epoch seconds")
    parser.add_argument("--prefix", default=None)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    checks = Checks(args.out, args.deadline)
    rows: list = []
    checks.run("onnxruntime from the private prefix", lambda: check_prefix(args.prefix,
                                                                         args.dry_run), 0)
    checks.run("CUDA first in get_providers()", check_cuda_first)
    checks.run("every node on CUDA, outputs agree (fp32, fp16)",
               lambda: check_placement_and_agreement(rows), 60)
    checks.run("IO binding: outputs on cuda, equal to a plain run", check_io_binding)
    checks.run("CUDA graph: replays equal a plain run", check_cuda_graph)
    checks.run("TensorRT: a row or its reason within seconds", lambda: check_tensorrt(rows), 30)
    checks.run("CUDA vs CPU speedup (ResNet-50, batch 1)", lambda: check_speedup(rows), 20)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
