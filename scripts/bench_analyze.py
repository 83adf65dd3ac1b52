#!/usr/bin/env python
"""Whole-process `onnxscale analyze` time against onnx-tool (load + shape_infer + profile).

Both tools run as fresh subprocesses on the same files, interleaved, N times each; the table
shows medians and the ratio onnx-tool / onnxscale measured side by side in this one run.
Files: a generated ~7,000-node deep ResNet (onnx.helper), and torchvision DenseNet-121 and
EfficientNet-B0 exported with the legacy exporter (needs the test extras: torch, torchvision).

    pip install onnx-tool && python scripts/bench_analyze.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_TOOL = ("import sys, onnx_tool; m = onnx_tool.Model(sys.argv[1]); "
             "m.graph.shape_infer(); m.graph.profile(); print(int(m.graph.macs[0]))")


def deep_resnet(blocks: int = 1000, width: int = 16, res: int = 32) -> onnx.ModelProto:
    """A stem plus ``blocks`` basic residual blocks (7 nodes each): ~7,000 nodes."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []

    def conv(x, cin, cout, name):
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((cout, cin, 3, 3)) * 0.05).astype(np.float32), f"{name}.w"))
        for suffix, value in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
            inits.append(numpy_helper.from_array(np.full(cout, value, np.float32),
                                                 f"{name}.bn.{suffix}"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.c"], name=name,
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.c"] + [
            f"{name}.bn.{s}" for s in "sbmv"], [f"{name}.y"], name=f"{name}.bn"))
        return f"{name}.y"

    x = conv("input", 3, width, "stem")
    for i in range(blocks):
        a = conv(x, width, width, f"b{i}.a")
        nodes.append(helper.make_node("Relu", [a], [f"b{i}.r"], name=f"b{i}.relu_a"))
        b = conv(f"b{i}.r", width, width, f"b{i}.b")
        nodes.append(helper.make_node("Add", [x, b], [f"b{i}.sum"], name=f"b{i}.add"))
        nodes.append(helper.make_node("Relu", [f"b{i}.sum"], [f"b{i}.out"], name=f"b{i}.relu"))
        x = f"b{i}.out"
    graph = helper.make_graph(
        nodes, "deep_resnet", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                             [1, 3, res, res])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def torchvision_export(name: str, folder: Path) -> Path:
    import torch

    for module in ("torchvision._meta_registrations", "torchvision._autograd_registrations"):
        sys.modules.setdefault(module, types.ModuleType(module))
    import torchvision

    path = folder / f"{name}.onnx"
    model = getattr(torchvision.models, name)().eval()
    torch.onnx.export(model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False,
                      opset_version=17)
    return path


# Both tools run with bytecode caching on, as installed packages do (pip compiles onnx-tool's
# .pyc files at install; an editable onnxscale writes its own on the first, untimed run).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} failed: {result.stderr[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_analyze."))
    deep = folder / "deep_resnet.onnx"
    onnx.save(deep_resnet(), str(deep))
    files = {"deep ResNet (7,004 nodes)": deep,
             "DenseNet-121": torchvision_export("densenet121", folder),
             "EfficientNet-B0": torchvision_export("efficientnet_b0", folder)}
    rows = []
    for label, path in files.items():
        ours, theirs = [], []
        for _ in range(args.runs + 1):  # interleaved: both tools see the same machine load
            ours.append(timed([sys.executable, "-m", "onnxscale", "analyze", str(path),
                               "--json"]))
            theirs.append(timed([sys.executable, "-c", ONNX_TOOL, str(path)]))
        rows.append((label, statistics.median(ours[1:]), statistics.median(theirs[1:])))
    print(f"{'model':28} {'onnxscale s':>12} {'onnx-tool s':>12} {'onnx-tool/onnxscale':>20}")
    for label, ours, theirs in rows:
        print(f"{label:28} {ours:12.2f} {theirs:12.2f} {theirs / ours:19.1f}x")
    print(f"(medians of {args.runs} interleaved whole-process runs each, after one warm-up)")


if __name__ == "__main__":
    main()
