"""Dense blocks (DenseNet): layers whose outputs are concatenated, found and deepened exactly.

In a dense block every layer reads the concatenation of the block input and all earlier
layer outputs, and the block's output concatenates them all.  On the graph: a Concat ``F``
with inputs ``t0, t1, ..., tn`` where each ``ti`` (i >= 2) is computed only from a Concat of
exactly ``t0 .. t(i-1)`` (``t1`` may read ``t0`` directly).

Deepening appends layers: a new layer reads a new Concat of everything so far, is a copy of
the last layer whose input path (BatchNorm, per-channel constants, up to the first conv) is
widened by the growth, and its output joins ``F``.  Every reader of ``F`` gets the new
channels through the same kind of path, ending in a conv or linear layer whose weights for
them are zero, so the deeper network computes exactly what the base did.  Shrinking drops
the last layers and the channels they fed to ``F``'s readers (not exact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from ...graph import Graph
from ...hollow import Hollow
from ..ops import CHANNEL_PASS, data_inputs, spatial_layer, weight_of
from .structure import Block, Stage

# BatchNormalization inputs and the value that leaves a new channel alone
BN_FILLS = ((1, 1.0), (2, 0.0), (3, 0.0), (4, 1.0))


@dataclass(frozen=True)
class ChannelEdit:
    """Input ``index`` of node ``node`` holds one value per channel of the concat along
    ``axis``; new channels get ``fill``."""

    node: str
    index: int
    axis: int
    fill: float
    target: bool = False  # a Reshape's target shape: its dim 1 is the channel count

    def apply(self, array, channels: int):
        """``array`` resized along ``axis`` to ``channels`` entries (new ones ``fill``)."""
        if self.target:
            array = np.array(array, copy=True)
            array[1] = channels
            return array
        have = array.shape[self.axis]
        if channels >= have:
            return widened(array, self.axis, channels - have, self.fill)
        return narrowed(array, self.axis, channels)


def find_dense_stages(graph: Graph, first_index: int) -> list[Stage]:
    """One stage per dense block; each layer's own Concat (a prefix of the block's) is not
    a block of its own."""
    concats = []
    for node in graph.nodes:
        rank = len(graph.shapes.get(node.output[0]) or ())
        if node.op_type == "Concat" and rank == 4 and _axis(node) % rank == 1:
            concats.append(node)
    prefixes = {tuple(node.input[:k]) for node in concats for k in range(1, len(node.input))}
    stages = []
    for node in concats:
        if tuple(node.input) in prefixes:
            continue
        stage = _dense_stage(graph, node, first_index + len(stages))
        if stage is not None:
            stages.append(stage)
    return stages


def _dense_stage(graph: Graph, final: onnx.NodeProto, index: int) -> Stage | None:
    inputs = list(final.input)
    shape = graph.shapes.get(final.output[0])
    if len(inputs) < 3 or shape is None or len(shape) != 4:
        return None
    layers = []
    for i in range(1, len(inputs)):
        layer = _layer(graph, inputs[:i], inputs[i])
        if layer is None:
            return None
        layers.append(layer)
    readers = channel_readers(graph, final.output[0])
    template = channel_readers(graph, layers[-1].input)
    stage = Stage(index, layers, mode="dense")
    if isinstance(readers, str) or isinstance(template, str):
        stage.mode, stage.reason = "", readers if isinstance(readers, str) else template
    stage.dense = final.name
    return stage


def _layer(graph: Graph, before: list[str], output: str) -> Block | None:
    """Layer ``output`` if it is computed from a Concat of exactly ``before`` (or from the
    single tensor ``before[0]``) alone; its nodes from that Concat on."""
    found, stack, seen, start = [], [output], set(), None
    while stack:
        t = stack.pop()
        node = graph.producer.get(t)
        if t in before and len(before) == 1:
            start = t
            continue
        if node is None:
            return None
        if node.op_type == "Concat" and list(node.input) == before:
            start = node.output[0]
            found.append(node.name)
            continue
        if node.name in seen:
            continue
        seen.add(node.name)
        found.append(node.name)
        if len(found) > 200:
            return None
        stack.extend(data_inputs(graph, node))
    if start is None or not any(spatial_layer(graph, graph.node(n)) for n in found):
        return None
    order = {n.name: i for i, n in enumerate(graph.nodes)}
    nodes = sorted(set(found), key=order.__getitem__)
    body = [n for n in nodes if graph.node(n).output[0] != start]
    block = Block("dense", start, output, body, graph.shapes.get(start), graph.shapes.get(output))
    block.first, block.last = nodes[0], nodes[-1]
    return block


def channel_readers(graph: Graph, tensor: str) -> list[ChannelEdit] | str:
    """What holds one value per channel of ``tensor`` up to (and including) the next conv or
    linear layers, or why a channel cannot be added there."""
    edits: list[ChannelEdit] = []
    stack, seen = [tensor], set()
    while stack:
        t = stack.pop()
        for node in graph.consumers.get(t, []):
            if node.name in seen or node.op_type in ("Shape", "Size") or (
                    node.op_type == "CastLike" and node.input[0] != t):
                continue  # metadata: reads the type or shape, not the values
            seen.add(node.name)
            step = _reader(graph, node, t)
            if isinstance(step, str):
                return step
            more, goes_on = step
            edits += more
            if goes_on:
                stack.append(node.output[0])
    return edits


def _reader(graph: Graph, node: onnx.NodeProto, t: str):
    op, name = node.op_type, node.name
    refuse = f"'{name}' ({op}) reads the concatenated channels in a way a new layer cannot join"
    shape = graph.shapes.get(t)
    if op == "BatchNormalization":
        return [ChannelEdit(name, i, 0, fill) for i, fill in BN_FILLS if i < len(node.input)], True
    if op in CHANNEL_PASS or (op == "CastLike" and node.input[0] == t):
        return [], True
    if op in ("ReduceMean", "ReduceMax"):  # a global pool: channels stay on axis 1
        out = graph.shapes.get(node.output[0])
        if shape and out and len(out) >= 2 and out[1] == shape[1] and out[0] == shape[0]:
            return [], True
        return refuse
    if op in ("Flatten", "Reshape"):
        out = graph.shapes.get(node.output[0])
        if not (shape and out and len(out) == 2 and math.prod(shape[2:]) == 1
                and out[1] == shape[1]):
            return refuse
        target = graph.small_value(node.input[1]) if op == "Reshape" else None
        if target is not None and int(np.asarray(target).reshape(-1)[1]) == shape[1]:
            return [ChannelEdit(name, 1, 0, 0.0, target=True)], True
        return [], True
    if op in ("Mul", "Add", "Sub", "Div") and len(data_inputs(graph, node)) == 1:
        const = next((i for i, x in enumerate(node.input) if weight_of(graph, x)), None)
        dims = graph.shapes.get(node.input[const]) if const is not None else None
        if dims is None or not shape:
            return refuse
        if math.prod(dims) == 1:
            return [], True
        axis = len(dims) - (len(shape) - 1)
        if axis < 0 or dims[axis] != shape[1] or math.prod(dims) != shape[1]:
            return refuse
        return [ChannelEdit(name, const, axis, 1.0 if op in ("Mul", "Div") else 0.0)], True
    if op == "Conv" and node.input[0] == t and _group(node) == 1:
        return [ChannelEdit(name, 1, 1, 0.0)], False
    if op == "Gemm" and node.input[0] == t and weight_of(graph, node.input[1]):
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return [ChannelEdit(name, 1, 1 if trans_b else 0, 0.0)], False
    if op == "MatMul" and node.input[0] == t and weight_of(graph, node.input[1]):
        return [ChannelEdit(name, 1, 0, 0.0)], False
    return refuse


def widened(array, axis: int, count: int, fill: float):
    """``array`` with ``count`` entries of ``fill`` appended along ``axis`` (planning: shape)."""
    shape = list(array.shape)
    shape[axis] += count
    if isinstance(array, Hollow):
        return Hollow(shape, array.dtype)
    extra = list(array.shape)
    extra[axis] = count
    return np.concatenate([array, np.full(extra, fill, array.dtype)], axis=axis)


def narrowed(array, axis: int, keep: int):
    """The first ``keep`` entries of ``array`` along ``axis``."""
    return np.take(array, np.arange(keep), axis=axis)


def _axis(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _group(node: onnx.NodeProto) -> int:
    return next((a.i for a in node.attribute if a.name == "group"), 1)
