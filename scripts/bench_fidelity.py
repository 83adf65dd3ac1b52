#!/usr/bin/env python
"""Does the harness measure what a bare ``session.run`` loop measures?

For each model, in one process, alternately (ABBA order per round) time

* the harness: ``onnxscale.runtime`` (its own session, adaptive warm-up, per-run timing), and
* a bare loop: one ``InferenceSession`` with the same thread count, a fixed warm-up, then
  ``t0 = perf_counter(); session.run(None, feeds); times.append(perf_counter() - t0)``,

and report harness p50 / bare p50 per round and overall (median of the harness p50s over the
median of the bare p50s).  The harness passes if the overall ratio is within ±10%.

    python scripts/bench_fidelity.py                       # zoo ResNet-18, EfficientNet-B0
    python scripts/bench_fidelity.py --source torchvision  # torchvision exports instead
    python scripts/bench_fidelity.py --source both --rounds 6 --runs 60

Models: ``zoo:resnet-18`` / ``zoo:efficientnet-b0`` (onnxscale's own builders) or torchvision's
``resnet18`` / ``efficientnet_b0`` exported with ``torch.onnx.export(dynamo=False, opset 17)``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from onnxscale.runtime import BenchSettings, model_hash  # noqa: E402
from onnxscale.runtime.inputs import prepare, random_inputs  # noqa: E402
from onnxscale.runtime.runner import measure  # noqa: E402
from onnxscale.model import LoadedModel, load_model  # noqa: E402

ZOO = {"ResNet-18": "zoo:resnet-18", "EfficientNet-B0": "zoo:efficientnet-b0"}
TORCHVISION = {"ResNet-18": "resnet18", "EfficientNet-B0": "efficientnet_b0"}


def torchvision_export(arch: str, folder: Path) -> Path:
    """Export a torchvision classifier (random weights) to ONNX; cached in ``folder``."""
    path = folder / f"tv_{arch}.onnx"
    if path.exists():
        return path
    # torchvision's CUDA wheel registers ops that fail on CPU-only torch (docs/design.md, Test material)
    for name in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(name, types.ModuleType(name))
    import warnings

    import torch
    import torchvision

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # legacy exporter on purpose

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def bare_session(loaded: LoadedModel, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(loaded.proto.SerializeToString(), so,
                                providers=["CPUExecutionProvider"])


def bare_p50(session, feeds: dict, runs: int, warmup: int) -> float:
    perf = time.perf_counter
    for _ in range(warmup):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        t0 = perf()
        session.run(None, feeds)
        times.append(perf() - t0)
    return float(np.median(times)) * 1000.0


def harness_p50(loaded: LoadedModel, digest: str, settings: BenchSettings) -> float:
    prepared = prepare(loaded.proto, 1, {}, loaded.source)
    row = measure(prepared, "CPUExecutionProvider", settings, model=loaded.source,
                  model_hash=digest)
    if not row.available:
        raise SystemExit(f"harness failed on {loaded.source}: {row.reason}")
    return row.p50_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=["zoo", "torchvision", "both"], default="zoo")
    parser.add_argument("--rounds", type=int, default=4, help="ABBA rounds per model")
    parser.add_argument("--runs", type=int, default=40, help="timed runs per measurement")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", help="folder for torchvision exports",
                        default=os.path.join(tempfile.gettempdir(), "onnxscale-fidelity"))
    args = parser.parse_args()

    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    models: list[tuple[str, LoadedModel]] = []
    if args.source in ("zoo", "both"):
        for title, spec in ZOO.items():
            models.append((f"{title} (zoo)", load_model(spec)))
    if args.source in ("torchvision", "both"):
        for title, arch in TORCHVISION.items():
            path = torchvision_export(arch, cache)
            models.append((f"{title} (torchvision)", load_model(str(path))))

    settings = BenchSettings(threads=args.threads, runs=args.runs, warmup=None)
    print(f"CPU, {args.threads} thread(s), {args.runs} timed runs per measurement, "
          f"{args.rounds} ABBA rounds; ratio = harness p50 / bare session.run p50\n")
    print(f"{'model':<31} {'round':>5} {'harness ms':>11} {'bare ms':>9} {'ratio':>7}")
    summary = []
    for title, loaded in models:
        digest = model_hash(loaded)
        session = bare_session(loaded, args.threads)
        feeds = random_inputs(prepare(loaded.proto, 1, {}, loaded.source).specs)
        bare_p50(session, feeds, runs=5, warmup=10)  # first-touch warm-up of the bare session
        harness, bare = [], []
        for r in range(args.rounds):
            order = ("harness", "bare") if r % 2 == 0 else ("bare", "harness")
            got = {}
            for which in order:
                if which == "harness":
                    got[which] = harness_p50(loaded, digest, settings)
                else:
                    got[which] = bare_p50(session, feeds, args.runs, warmup=10)
            harness.append(got["harness"])
            bare.append(got["bare"])
            print(f"{title:<31} {r + 1:>5} {got['harness']:>11.3f} {got['bare']:>9.3f} "
                  f"{got['harness'] / got['bare']:>7.3f}", flush=True)
        ratio = float(np.median(harness) / np.median(bare))
        summary.append((title, float(np.median(harness)), float(np.median(bare)), ratio))
        del session

    print(f"\n{'model':<31} {'harness p50':>12} {'bare p50':>9} {'ratio':>7}  verdict")
    ok = True
    for title, h, b, ratio in summary:
        verdict = "ok (within ±10%)" if abs(ratio - 1) <= 0.10 else "OUT OF RANGE"
        ok &= abs(ratio - 1) <= 0.10
        print(f"{title:<31} {h:>12.3f} {b:>9.3f} {ratio:>7.3f}  {verdict}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
