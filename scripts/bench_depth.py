#!/usr/bin/env python
"""Depth-scaling speed: the whole `onnxscale scale --depth 4` process on zoo ResNet-50, and
block discovery on a generated ~7,000-node deep ResNet.

    python scripts/bench_depth.py [--runs 3]

Targets (issue 4): the whole process <= 3 s; block discovery <= 1 s.  The process time is
split into its steps (build, rewrite + re-analysis, onnx checker, save) from one in-process
run, so a regression can be placed.  Times are medians; this machine is shared, so compare
runs taken together, not across days.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]


def deep_resnet(blocks: int = 1000, width: int = 16, res: int = 32) -> onnx.ModelProto:
    """A conv stem, ``blocks`` basic residual blocks of 7 nodes (conv, BN, ReLU, conv, BN, Add,
    ReLU) and a pooled classifier: about 7,000 nodes."""
    rng = np.random.default_rng(0)
    nodes, weights = [], []

    def conv_bn(x: str, c_in: int, name: str) -> str:
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((width, c_in, 3, 3)) * 0.05).astype(np.float32), f"{name}.w"))
        for key, fill in (("s", 1.0), ("b", 0.0), ("m", 0.0), ("v", 1.0)):
            weights.append(numpy_helper.from_array(np.full(width, fill, np.float32),
                                                   f"{name}.{key}"))
        nodes.append(helper.make_node("Conv", [x, f"{name}.w"], [f"{name}.conv"], name=name,
                                      pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("BatchNormalization", [f"{name}.conv"] + [
            f"{name}.{k}" for k in "sbmv"], [f"{name}.bn"], name=f"{name}.bn"))
        return f"{name}.bn"

    x = conv_bn("input", 3, "stem")
    for i in range(blocks):
        a = conv_bn(x, width, f"b{i}.a")
        nodes.append(helper.make_node("Relu", [a], [f"b{i}.ra"], name=f"b{i}.relu_a"))
        b = conv_bn(f"b{i}.ra", width, f"b{i}.b")
        nodes.append(helper.make_node("Add", [x, b], [f"b{i}.sum"], name=f"b{i}.add"))
        nodes.append(helper.make_node("Relu", [f"b{i}.sum"], [f"b{i}.out"], name=f"b{i}.relu"))
        x = f"b{i}.out"
    weights.append(numpy_helper.from_array(np.zeros((10, width), np.float32), "fc.w"))
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    nodes.append(helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc.w"], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        nodes, "deep_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, res, res])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], weights)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def time_discovery(runs: int) -> None:
    from onnxscale.graph import Graph
    from onnxscale.scaling.blocks import find_blocks

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


def time_process(runs: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "r50-d4.onnx"
        command = [sys.executable, "-m", "onnxscale", "scale", "zoo:resnet-50", "--depth", "4",
                   "-o", str(out), "--json"]
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True, cwd=REPO)
            times.append(time.perf_counter() - start)
        size = out.stat().st_size / 1e6
    print(f"onnxscale scale zoo:resnet-50 --depth 4 ({size:.0f} MB written)")
    print(f"  whole process                   {statistics.median(times):6.3f} s   "
          f"(target <= 3 s)")
    _steps()


def _steps() -> None:
    """Where the process spends its time (one in-process run)."""
    from onnxscale import zoo
    from onnxscale.model import save_model
    from onnxscale.scaling.pipeline import Multipliers, ScaleOptions, check, scale_model

    marks = [("build zoo:resnet-50", lambda: zoo.build("resnet-50"))]
    start = time.perf_counter()
    proto = marks[0][1]()
    steps = [(marks[0][0], time.perf_counter() - start)]
    start = time.perf_counter()
    outcome = scale_model(proto, {}, Multipliers(d=4), ScaleOptions())
    steps.append(("analyze + depth rewrite + re-analyze", time.perf_counter() - start))
    start = time.perf_counter()
    check(outcome.model)
    steps.append(("onnx checker", time.perf_counter() - start))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        save_model(outcome.model, Path(folder) / "x.onnx")
        steps.append(("save", time.perf_counter() - start))
    for name, seconds in steps:
        print(f"    {name:<36}{seconds:6.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    time_discovery(args.runs)
    time_process(args.runs)


if __name__ == "__main__":
    main()
