#!/usr/bin/env python
"""Whole-process `onnxscale analyze` time against onnx-tool (load + shape_infer + profile),
both installed in one fresh virtual environment, as a new user gets them.

The script creates the venv (`fresh_venv.py`: ``pip install . onnx-tool``, newest allowed
versions), then runs both tools as fresh subprocesses on the same files, interleaved, N times
each, and prints medians and the ratio onnxscale / onnx-tool measured side by side in this
one run.  Import time is reported apart: ``python -c pass``, ``import onnx, numpy`` (what both
tools pay) and onnxscale's own CLI import.  Files: a generated ~7,000-node deep ResNet
(onnx.helper), and torchvision DenseNet-121 and EfficientNet-B0 exported with the legacy
exporter by *this* interpreter (which needs the test extras: torch, torchvision).

    python scripts/bench_analyze.py [--runs 5] [--venv PATH (reuse one)]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fresh_venv import FreshVenv  # noqa: E402

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


IMPORTS = {
    "python -c pass": ["-c", "pass"],
    "import numpy, onnx (both tools)": ["-c", "import numpy, onnx"],
    "import onnxscale CLI + analysis": ["-c", "import onnxscale.cli, onnxscale.complexity"],
}


def median_runs(venv: FreshVenv, commands: dict[str, list[str]], runs: int) -> dict[str, float]:
    """Median seconds of each command, interleaved, after one untimed warm-up round."""
    times: dict[str, list[float]] = {label: [] for label in commands}
    for round_ in range(runs + 1):
        for label, args in commands.items():
            seconds = venv.timed(args)
            if round_:
                times[label].append(seconds)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--venv", type=Path, help="reuse this venv instead of creating one")
    args = parser.parse_args()
    venv = FreshVenv(args.venv) if args.venv else FreshVenv.create(extra=["onnx-tool"])
    versions = venv.versions(["onnxscale", "onnx", "onnx-tool", "numpy", "ml_dtypes",
                              "protobuf", "onnxruntime-gpu", "onnxruntime"])
    print("venv:", ", ".join(f"{k} {v}" for k, v in versions.items()))
    folder = Path(tempfile.mkdtemp(prefix="bench_analyze."))
    deep = folder / "deep_resnet.onnx"
    onnx.save(deep_resnet(), str(deep))
    files = {"deep ResNet (7,004 nodes)": deep,
             "DenseNet-121": torchvision_export("densenet121", folder),
             "EfficientNet-B0": torchvision_export("efficientnet_b0", folder)}
    imports = median_runs(venv, IMPORTS, args.runs)
    print(f"\n{'import (whole process)':34} {'median s':>9}")
    for label, seconds in imports.items():
        print(f"{label:34} {seconds:9.3f}")
    print(f"\n{'model':28} {'onnxscale s':>12} {'onnx-tool s':>12} {'onnxscale/onnx-tool':>20}")
    for label, path in files.items():
        result = median_runs(venv, {"ours": ["-m", "onnxscale", "analyze", str(path), "--json"],
                                    "theirs": ["-c", ONNX_TOOL, str(path)]}, args.runs)
        ours, theirs = result["ours"], result["theirs"]
        print(f"{label:28} {ours:12.2f} {theirs:12.2f} {ours / theirs:19.2f}x")
    print(f"(medians of {args.runs} interleaved whole-process runs each, after one warm-up; "
          f"bytecode cached)")


if __name__ == "__main__":
    main()
