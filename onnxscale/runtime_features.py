"""What a layer's runtime depends on, read off the graph: its kind, its geometry, and the
uncounted work attached to it.

A counted layer (`complexity`) is where a kernel of the model runs, but not all the time of
that kernel is its flops: ONNX Runtime fuses a Conv with its BatchNormalization and
activation, runs residual Adds and squeeze-excitation Muls as kernels of their own, and a
depthwise or grouped convolution runs far fewer flops per millisecond than a dense one.  So
each counted layer is described by

- ``kind``: the op, a Conv split by form (``conv-dw``: one input channel per group;
  ``conv-group``: grouped; ``conv-stem``: at most 4 input channels; ``conv-1x1``;
  ``conv-kxk``), Gemm and MatMul together as ``gemm`` (one row per image: a classifier) or
  ``gemm-rows`` (a channels-last MLP);
- its geometry: kernel elements, stride, groups, input channels per group, output channels,
  output pixels;
- ``attached``: output elements of the uncounted nodes it *owns* (the nodes downstream of it
  up to the next counted layer, walking back along first data inputs): ``attached_light``
  for what ONNX Runtime usually fuses into the layer's kernel (BatchNormalization, Relu, Clip
  and the like), ``attached_heavy`` for the rest (Sigmoid, Mul, Add, pools, ...).

`owners` is shared with `runtime.profiling`, which maps a profiled kernel to the layer that
owns the node it ran for, so a profiled layer's time and its description cover the same nodes.
"""

from __future__ import annotations

import math

from .complexity import numel

# Uncounted ops ONNX Runtime's CPU optimiser usually folds into the producing kernel.
LIGHT = {"BatchNormalization", "Relu", "Clip", "LeakyRelu", "Identity", "Dropout",
         "InstanceNormalization"}
# Counted ops that ONNX Runtime folds into the layer producing their input.
ABSORBED = {"BatchNormalization", "InstanceNormalization"}


def owners(nodes, counted: set[str]) -> dict[str, str]:
    """Every node name -> the counted layer it belongs to (itself when counted; otherwise the
    owner of the producer of its first data input; an absorbed op such as a counted
    BatchNormalization belongs to its producer's layer); nodes before any counted layer map
    to nothing."""
    nodes = list(nodes)
    producer = {out: node for node in nodes for out in node.output if out}
    owner: dict[str, str | None] = {}

    def leads(node) -> bool:  # a counted layer that is not absorbed by its producer
        return node.name in counted and not (node.op_type in ABSORBED and node.input
                                             and node.input[0] in producer)

    def find(node) -> None:
        chain = []
        while node.name not in owner and not leads(node) and len(chain) < 4096:
            chain.append(node)
            node = next((producer[name] for name in node.input if name in producer), None)
            if node is None:
                break
        found = None if node is None else owner.get(node.name, node.name if leads(node)
                                                    else None)
        if node is not None and leads(node):
            owner[node.name] = node.name
        for item in chain:
            owner[item.name] = found

    for node in nodes:
        if node.name and node.name not in owner:
            find(node)
    return {name: layer for name, layer in owner.items() if layer is not None}


def kind_of(op: str, geometry: dict) -> str:
    """The kind a layer's time is fitted by (see the module docstring)."""
    if op in ("Conv", "QLinearConv", "ConvInteger"):
        groups, cin_g = geometry.get("groups", 1), geometry.get("cin_g", 0)
        if groups > 1 and cin_g == 1:
            return "conv-dw"
        if groups > 1:
            return "conv-group"
        if 0 < cin_g <= 4:
            return "conv-stem"
        return "conv-1x1" if geometry.get("kernel", 1) == 1 else "conv-kxk"
    if op in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "QGemm"):
        # one row per image (a classifier) streams its weights; many rows (a channels-last
        # MLP, attention) are compute-bound like a 1x1 convolution
        return "gemm-rows" if geometry.get("rows", 1) > geometry.get("batch", 1) else "gemm"
    if op == "ConvTranspose":
        return "conv-transpose"
    if op in ("MaxPool",):
        return "pool"
    return op.lower()


def _attribute(node, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            if attribute.ints:
                return list(attribute.ints)
            return attribute.i
    return default


def geometry(graph, node) -> dict:
    """Kernel elements, stride, groups, input channels per group, output channels and output
    pixels of a Conv-like node; output rows of a Gemm or MatMul (what is known; empty for
    other ops)."""
    if node.op_type in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger", "QGemm"):
        out = graph.shapes.get(node.output[0])
        return {"rows": int(math.prod(out[:-1])), "batch": int(out[0])} if out else {}
    if node.op_type not in ("Conv", "ConvTranspose", "QLinearConv", "ConvInteger"):
        return {}
    weight = graph.shapes.get(node.input[3 if node.op_type == "QLinearConv" else 1])
    out = graph.shapes.get(node.output[0])
    if not weight or len(weight) < 3:
        return {}
    strides = _attribute(node, "strides", [1])
    return {"kernel": int(math.prod(weight[2:])), "stride": int(max(strides or [1])),
            "groups": int(_attribute(node, "group", 1)), "cin_g": int(weight[1]),
            "cout": int(weight[0]),
            "pixels": int(math.prod(out[2:])) if out and len(out) > 2 else 0}


def describe(graph, report) -> list[dict]:
    """One dict per counted layer of ``report``: name, op, kind, flops, params, acts, its
    geometry and the uncounted output elements attached to it."""
    counted = {layer.name for layer in report.layers}
    owner = owners(graph.nodes, counted)
    light: dict[str, int] = {}
    heavy: dict[str, int] = {}
    for node in graph.nodes:
        target = owner.get(node.name)
        if target is None or node.name in counted or not node.output:
            continue
        elements = numel(graph.shapes.get(node.output[0]))
        bucket = light if node.op_type in LIGHT else heavy
        bucket[target] = bucket.get(target, 0) + elements
    nodes = {node.name: node for node in graph.nodes}
    described = []
    for layer in report.layers:
        node = nodes.get(layer.name)
        shape = geometry(graph, node) if node is not None else {}
        described.append({"name": layer.name, "op": layer.op,
                          "kind": kind_of(layer.op, shape), "flops": int(layer.flops),
                          "params": int(layer.params), "acts": int(layer.acts),
                          "attached_light": light.get(layer.name, 0),
                          "attached_heavy": heavy.get(layer.name, 0)} | shape)
    return described
