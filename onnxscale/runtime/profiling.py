"""Per-layer runtime from ONNX Runtime's profiler, joined to each layer's flops, params and
acts.

The profile is a separate, untimed pass: profiling adds work around every kernel, so the
whole-model p50 still comes from `runner.measure`'s method, and the per-layer times are
read as *shares* of the profiled total.

ONNX Runtime runs an optimised graph: a Conv absorbs its BatchNormalization and activation,
NCHWc layout nodes (``ReorderInput``/``ReorderOutput``) appear, and kernels take names such as
``s1.b1.dwise_bn_nchwc``, ``fused /fc/Gemm`` or ``Gelu_token_7``.  `runtime_features.owners`
maps every node of the model to the counted layer it belongs to (itself, or for an uncounted
node such as an activation or a BatchNormalization, the layer that produces its input), and
`attribute` maps a kernel's name back to the longest node name it starts with: so a fused
kernel's time lands on the layer it grew from, with the names of the nodes it contains.  A kernel the optimiser named
anew (``Gelu_token_7``) goes to the layer of the kernel that ran just before it; layout
reorders and copies are kept apart as *unattributed*.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from . import providers as P


@dataclass
class LayerTime:
    """A counted layer with the kernels attributed to it."""

    name: str
    op: str
    flops: int
    params: int
    acts: int
    ms: float = 0.0                   # median per run over the profiled runs
    kernels: list[str] = field(default_factory=list)   # kernel ops that ran for it
    contains: list[str] = field(default_factory=list)  # model nodes fused into it
    kind: str = ""                    # `runtime_features.kind_of`
    detail: dict = field(default_factory=dict)  # geometry and attached work (`describe`)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class Profile:
    """One model's per-layer profile on one configuration."""

    model: str
    provider: str
    batch: int
    layers: list[LayerTime]
    unattributed_ms: float            # reorders, copies: kernels that match no node
    profiled_ms: float                # the sum of every kernel's median time
    runs: int
    fused_engine: bool = False        # TensorRT and the like report one kernel for the model
    p50_ms: float | None = None       # the whole model, by bench's method
    p50_ci_ms: list[float] | None = None  # its 95% interval
    flops: int = 0                    # the model's totals (`complexity`)
    params: int = 0
    acts: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        data = dict(self.__dict__)
        data["layers"] = [layer.to_dict() for layer in self.layers]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Profile":
        values = dict(data)
        values["layers"] = [LayerTime(**layer) for layer in data["layers"]]
        return cls(**values)


_SUFFIX = re.compile(r"_kernel_time$")
# kernels that move data between layouts or devices: kept apart as unattributed
LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "MemcpyToHost", "MemcpyFromHost"}


def attribute(kernel: str, names: set[str]) -> str | None:
    """The model node a kernel's name comes from: the longest node name the kernel name
    starts with, at a separator (``stem.bn_nchwc`` -> ``stem.bn``; ``fused /fc/Gemm`` ->
    ``/fc/Gemm``)."""
    base = _SUFFIX.sub("", kernel)
    base = base[6:] if base.startswith("fused ") else base
    if base in names:
        return base
    for end in range(len(base) - 1, 0, -1):
        if base[end] in "_/:" and base[:end] in names:
            return base[:end]
    return None


def parse_trace(events: list[dict], runs: int) -> dict[str, dict]:
    """Kernel name -> {op, provider, ms: median per run} from a profile's events."""
    times: dict[str, list[float]] = defaultdict(list)
    meta: dict[str, dict] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        name = event["name"]
        times[name].append(event.get("dur", 0) / 1000.0)
        args = event.get("args", {})
        meta[name] = {"op": args.get("op_name", "?"), "provider": args.get("provider", "?")}
    out = {}
    for name, values in times.items():
        # a kernel that runs k times per run: its per-run time is k times the median call
        per_run = len(values) / max(1, runs)
        out[name] = meta[name] | {"ms": float(np.median(values)) * per_run}
    return out


def join(graph, report, kernels: dict[str, dict]) -> tuple[list[LayerTime], float]:
    """Attribute kernels to the counted layers of ``report``; (layers, unattributed ms)."""
    from ..runtime_features import describe, owners

    counted = {layer.name for layer in report.layers}
    owner = owners(graph.nodes, counted)
    names = {node.name for node in graph.nodes if node.name}
    layers = {}
    for item in describe(graph, report):
        base = {key: item.pop(key) for key in ("name", "op", "flops", "params", "acts")}
        layers[base["name"]] = LayerTime(**base, kind=item.pop("kind"), detail=item)
    unattributed = 0.0
    previous = None   # the layer of the kernel that ran before (kernels come in run order)
    for kernel, info in kernels.items():
        node = attribute(kernel, names)
        target = owner.get(node) if node else None
        if target is None and node is None and info["op"] not in LAYOUT_OPS:
            target = previous   # a kernel the optimiser made and named anew (``Gelu_token_7``)
        if target is None or target not in layers:
            unattributed += info["ms"]
            continue
        previous = target
        layer = layers[target]
        layer.ms += info["ms"]
        if info["op"] not in layer.kernels:
            layer.kernels.append(info["op"])
        if node != target and node not in layer.contains:
            layer.contains.append(node)
    return list(layers.values()), unattributed


def profile(prepared, provider: str, settings, *, model: str, runs: int = 20) -> Profile:
    """Run ``prepared`` ``runs`` times under ONNX Runtime's profiler (after a short warm-up)
    and attribute every kernel's time to the model's layers."""
    import onnxruntime as ort

    from ..complexity import analyze
    from ..graph import Graph
    from .inputs import random_inputs
    from .session import capture_native_output, provider_chain, session_options

    so = session_options(settings)
    folder = tempfile.mkdtemp(prefix="onnxscale-profile-")
    so.enable_profiling = False
    chain, _ = provider_chain(provider, prepared, settings)
    feeds = random_inputs(prepared.specs, settings.seed)
    payload = prepared.payload(False)
    with capture_native_output(settings.capture_log):
        session = ort.InferenceSession(payload, so, providers=chain)
    for _ in range(3):  # warm-up, unprofiled
        session.run(None, feeds)
    del session
    so = session_options(settings)
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(folder, "profile")
    with capture_native_output(settings.capture_log):
        session = ort.InferenceSession(payload, so, providers=chain)
    session.run(None, feeds)  # profiled too; medians keep its allocations out
    for _ in range(runs):
        session.run(None, feeds)
    path = session.end_profiling()
    with open(path) as handle:
        events = json.load(handle)
    os.remove(path)
    os.rmdir(folder)
    kernels = parse_trace(events, runs + 1)
    graph = Graph(prepared.proto, prepared.shapes)
    report = analyze(graph)
    layers, unattributed = join(graph, report, kernels)
    fused = provider in (P.TENSORRT, P.TENSORRT_RTX) and len(kernels) <= 3
    notes = []
    if fused:
        notes.append(f"{P.short_name(provider)} runs the model as one fused engine: ONNX "
                     f"Runtime's profiler reports {len(kernels)} kernel(s), not layers")
    return Profile(model=model, provider=P.short_name(provider), batch=prepared.batch,
                   layers=layers, unattributed_ms=unattributed,
                   profiled_ms=float(sum(k["ms"] for k in kernels.values())), runs=runs,
                   fused_engine=fused, flops=int(report.flops), params=int(report.params),
                   acts=int(report.acts), notes=notes)
