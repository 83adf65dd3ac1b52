"""Where the numbers of a computed shape come from: which tensor's which axis.

A dynamic export computes a Reshape's target with Shape ops: ``y.view(B, C, H, W)`` reads C
off ``Shape(t)[1]``.  Widen t's channels and C changes at run time, so the Reshape's output
channels must be widened alike or the graph breaks: in ultralytics' attention (YOLO11's
C2PSA) C is read off the block's input while the data comes from a heads x head_dim split.
The channel grouping (`rules`) asks this tracker, at each Reshape, which (tensor, axis)
sizes each number of the target is made of.

Only small integer tensors computed from shapes are tracked (Shape, Size, Gather, Slice,
Concat, Unsqueeze and arithmetic on them); anything else is not, and its Reshape is left to
the usual rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from ...graph import Graph
from ...shapes import attrs, slice_params
from ..ops import SHAPE_VALUE_PASS

ARITHMETIC = {"Mul", "Add", "Sub", "Div", "Mod", "Max", "Min", "Floor", "Ceil"}


@dataclass(frozen=True)
class Source:
    """What one number of a shape vector is made of."""

    axes: frozenset[tuple[str, int]]   # the (tensor, axis) sizes it is computed from
    exact: bool                        # it *is* the size of the one (tensor, axis) in axes


CONSTANT = Source(frozenset(), False)


class ShapeValues:
    """Sources of every shape number computed so far; `visit` nodes in graph order."""

    def __init__(self, graph: Graph):
        self.g = graph
        self.sources: dict[str, list[Source]] = {}

    def of(self, name: str) -> list[Source] | None:
        """The sources of ``name``'s numbers, or None when it is not a tracked shape value
        (a constant is not tracked: it reads no tensor's size)."""
        return self.sources.get(name)

    def visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op == "Shape":
            found = self._shape(node)
        elif op == "Size":
            rank = len(self.g.shapes.get(node.input[0]) or ())
            found = [Source(frozenset((node.input[0], i) for i in range(rank)), False)]
        elif op == "Gather":
            found = self._gather(node)
        elif op == "Slice":
            found = self._slice(node)
        elif op == "Concat":
            found = self._concat(node)
        elif op in SHAPE_VALUE_PASS:
            found = self.sources.get(node.input[0])
        elif op in ARITHMETIC:
            found = self._arithmetic(node)
        else:
            found = None
        if found is not None and any(s.axes for s in found):
            self.sources[node.output[0]] = found

    def _shape(self, node: onnx.NodeProto) -> list[Source] | None:
        shape = self.g.shapes.get(node.input[0])
        if shape is None:
            return None
        given = attrs(node)  # start/end clamp as a Python slice does (as `shapes.fold`)
        axes = range(len(shape))[slice(given.get("start", 0), given.get("end", len(shape)))]
        return [Source(frozenset({(node.input[0], i)}), True) for i in axes]

    def _elements(self, name: str) -> list[Source] | None:
        """A tracked value's sources, or constants for a small known value."""
        if name in self.sources:
            return self.sources[name]
        value = self.g.small_value(name)
        return None if value is None else [CONSTANT] * max(1, value.size)

    def _gather(self, node: onnx.NodeProto) -> list[Source] | None:
        data, index = self.sources.get(node.input[0]), self.g.small_value(node.input[1])
        if data is None or index is None or attrs(node).get("axis", 0) != 0:
            return None
        try:
            return [data[int(i)] for i in index.reshape(-1)]
        except IndexError:
            return None

    def _slice(self, node: onnx.NodeProto) -> list[Source] | None:
        data = self.sources.get(node.input[0])
        params = slice_params(self.g, node, [len(data)]) if data is not None else None
        if params is None or params[0] != [0]:
            return None
        (_, (start,), (end,), (step,)) = params
        return data[slice(start, end, step)]  # Python's slice clamps as ONNX's does

    def _concat(self, node: onnx.NodeProto) -> list[Source] | None:
        found: list[Source] = []
        for name in node.input:
            elements = self._elements(name)
            if elements is None:
                return None
            found += elements
        return found

    def _arithmetic(self, node: onnx.NodeProto) -> list[Source] | None:
        operands = [self._elements(name) for name in node.input if name]
        if any(o is None for o in operands):
            return None
        length = max(len(o) for o in operands)
        if any(len(o) not in (1, length) for o in operands):
            return None
        return [Source(frozenset().union(*(o[i if len(o) > 1 else 0].axes for o in operands)),
                       False) for i in range(length)]
