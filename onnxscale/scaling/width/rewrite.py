"""Writing a widened model: new weights, ``group`` attributes and shape constants.

`Rewrite` copies the input model (without the weights it replaces) and applies a `WidthPlan`:
every layer, per-channel tensor and shape constant recorded by `rules.find_groups` gets the
values its new channels need, from the weight policy of `init.py`.  Weights read only by their
layer are replaced under their own name (dynamo exports compute a zero bias from the weight's
shape, which then follows); shared or computed ones get a fresh constant.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import onnx

from ...graph import Graph
from .channels import Pieces
from ..ops import const_value
from .groups import ChannelGroups, LayerUse, ParamUse, ShapeUse
from ..init import Preserve
from ..protoedit import Tensors, copy_model, prune_dead, remove_attribute, set_attribute, \
    update_value_info

if TYPE_CHECKING:
    from .widen import WidthPlan


class Rewrite:
    """Write the widened model: a copy of the input with new weights and shape constants."""

    def __init__(self, proto: onnx.ModelProto, found: ChannelGroups, plan: WidthPlan,
                 init: Preserve):
        self.proto, self.found, self.plan, self.init = proto, found, plan, init
        self.g = found.graph
        self.inexact_layers: dict[str, str] = {}
        # names a weight cannot be replaced under (old IR versions list weights as inputs)
        self.declared = {v.name for v in proto.graph.input} | set(self.g.outputs)

    def run(self) -> onnx.ModelProto:
        edits = [(n, i, make, self._inplace(n, i)) for n, i, make in self._weight_edits()]
        replaced = {self.g.node(n).input[i] for n, i, _, inplace in edits if inplace}
        initializers = {t.name for t in self.proto.graph.initializer}
        self.model = copy_model(self.proto, skip=replaced & initializers)
        self.nodes = {node.name: node for node in self.model.graph.node}
        self.tensors = Tensors(self.model)
        for node, index, make, inplace in edits:
            self._write(node, index, make(), inplace)
        for use in self.found.shape_uses:
            self._shape(use)
        prune_dead(self.model)
        self.graph = Graph(self.model, {k: list(v) for k, v in self.g.inputs.items()})
        update_value_info(self.model, self.g.shapes, self.graph.shapes)
        return self.model

    # ---- weights ------------------------------------------------------------------------------
    def _weight_edits(self) -> list[tuple[str, int, object]]:
        """(node, input index, function making the new value) for every weight to rewrite."""
        edits = []
        for use in self.found.layers:
            edits.extend(self._layer_edits(use))
        for use in self.found.params:
            pos = self.plan.positions(use.tensor)
            if pos is not None:
                edits.append((use.node, use.index, self._param_maker(use, pos)))
        return edits

    def _layer_edits(self, use: LayerUse) -> list:
        out_pos = self.plan.positions(use.y)
        in_pos = self.plan.positions(use.x)
        regrouped = self.plan.new_groups.get(use.node, use.groups) != use.groups
        if out_pos is None and in_pos is None and not regrouped:
            return []
        if regrouped:
            out_pos = out_pos if out_pos is not None else np.arange(self.g.shapes[use.y][1])
            in_pos = in_pos if in_pos is not None else np.arange(self.g.shapes[use.x][1])
        groups = len(in_pos) if use.kind == "depthwise" else \
            self.plan.new_groups.get(use.node, use.groups)
        edits = [(use.node, use.weight,
                  lambda: self._layer_weight(use, out_pos, in_pos, groups))]
        if use.bias is not None and out_pos is not None:
            edits.append((use.node, use.bias, self._param_maker(
                ParamUse(use.node, use.bias, 0, use.y), out_pos)))
        if use.kind != "dense":
            edits.append((use.node, -1, lambda: groups))
        return edits

    def _layer_weight(self, use: LayerUse, out_pos, in_pos, groups: int) -> np.ndarray:
        weight = const_value(self.g, self.g.node(use.node).input[use.weight])
        if use.kind == "dense":
            value, exact = self.init.layer(weight, use.out_axis, out_pos, use.in_axis, in_pos)
        else:
            value, exact = self.init.grouped(weight, out_pos, in_pos, use.groups, groups)
        if not exact and self.init.name == "preserve":
            self.inexact_layers[use.node] = (
                f"{use.node} no longer reads every input channel" if use.kind == "dense" else
                f"{use.kind} conv {use.node}: its new groups miss input channels")
        return value

    def _param_maker(self, use: ParamUse, pos: np.ndarray):
        def make() -> np.ndarray:
            value = const_value(self.g, self.g.node(use.node).input[use.index])
            return self.init.param(value, use.axis, pos)
        return make

    def _inplace(self, node_name: str, index: int) -> bool:
        """Replace a weight under its own name when only this node reads it (Shape readers
        included: dynamo computes a zero bias from the weight's shape)."""
        if index < 0:
            return False
        name = self.g.node(node_name).input[index]
        if name not in self.g.consts or name in self.declared:
            return False
        readers = [n for n in self.g.consumers.get(name, []) if n.op_type != "Shape"]
        return all(n.name == node_name for n in readers) and \
            list(self.g.node(node_name).input).count(name) == 1

    def _write(self, node_name: str, index: int, value, inplace: bool) -> None:
        node = self.nodes[node_name]
        if index < 0:
            set_attribute(node, "group", int(value))
        elif inplace:
            self.tensors.set(node.input[index], value)
        else:
            node.input[index] = self.tensors.add(value, node.input[index] or node_name)

    # ---- shape constants --------------------------------------------------------------------
    def _shape(self, use: ShapeUse) -> None:
        node = self.nodes[use.node]
        if use.kind == "split":
            self._split(node, use)
            return
        pieces = self.found.layouts[use.tensors[0]].pieces
        if use.kind == "slice":
            self._slice(node, use, pieces)
            return
        size = self.plan.size(pieces)
        if use.kind == "gather":
            shape = list(self.g.shapes[node.input[1]])
            shape[use.position] = size
            self._input(node, 1, np.arange(size, dtype=np.int64).reshape(shape))
            return
        index = 1 if use.kind == "reshape" else 3
        if self.g.small_value(node.input[index]).reshape(-1)[use.position] > 0:  # not 0 or -1
            self._entry(use.node, index, use.position, size // use.divide)

    def _split(self, node: onnx.NodeProto, use: ShapeUse) -> None:
        if node.op_type == "SplitToSequence":
            elements = self.found.sequences[use.tensors[0]]
            sizes = [self.plan.size(e.pieces) for e in elements]
        else:
            sizes = [self.plan.size(self.found.layouts[t].pieces) for t in use.tensors]
        sizes = np.array(sizes, dtype=np.int64)
        if node.op_type == "Split" and self.g.opset < 13:
            set_attribute(node, "split", [int(s) for s in sizes])
            return
        if node.op_type == "Split" and (len(node.input) < 2 or not node.input[1]):
            chunk = -(-int(sizes.sum()) // len(sizes))
            if all(s == min(chunk, sizes.sum() - i * chunk) for i, s in enumerate(sizes)):
                return
            remove_attribute(node, "num_outputs")
        self._input(node, 1, sizes)

    def _slice(self, node: onnx.NodeProto, use: ShapeUse, pieces: Pieces) -> None:
        begin, stop = use.bounds
        width = self.found.atoms.size(pieces)
        new_begin = self.plan.offset(pieces, begin)
        new_stop = self.plan.offset(pieces, stop)
        if self.g.opset < 10:
            starts = list(onnx.helper.get_attribute_value(_attr(node, "starts")))
            ends = list(onnx.helper.get_attribute_value(_attr(node, "ends")))
            starts[use.position] = new_begin
            if not (stop == width and ends[use.position] > width):
                ends[use.position] = new_stop
            set_attribute(node, "starts", starts)
            set_attribute(node, "ends", ends)
            return
        self._entry(use.node, 1, use.position, new_begin)
        end = self.g.small_value(node.input[2]).reshape(-1)[use.position]
        if not (stop == width and end > width):  # an open end (INT_MAX) stays open
            self._entry(use.node, 2, use.position, new_stop)

    def _entry(self, node_name: str, index: int, position: int, value: int) -> None:
        """Make entry ``position`` of the shape vector read by input ``index`` of a node equal
        ``value``.  The constant it comes from is replaced (found through Concat, Unsqueeze,
        ...), so the rest of a computed shape, such as a dynamic batch, stays computed; a value
        computed from the shapes of rewritten tensors follows them by itself."""
        current = self.g.small_value(self.g.node(node_name).input[index])
        if current.reshape(-1)[position] == value:
            return
        node_name, index, position = self._source(node_name, index, position)
        name = self.g.node(node_name).input[index]
        if name not in self.g.consts and _reads_shapes(self.g, name):
            return
        array = np.array(self.g.small_value(name)).copy()
        array.reshape(-1)[position] = value
        self._input(self.nodes[node_name], index, array)

    def _source(self, node_name: str, index: int, position: int) -> tuple[str, int, int]:
        """The node input that holds entry ``position`` of a shape vector (following Concat
        and single-input reshapes back to a constant or a computed value)."""
        name = self.g.node(node_name).input[index]
        producer = self.g.producer.get(name)
        if name in self.g.consts or producer is None:
            return node_name, index, position
        if producer.op_type == "Concat":
            for part_index, part in enumerate(producer.input):
                size = math.prod(self.g.shapes[part] or ())
                if position < size:
                    return self._source(producer.name, part_index, position)
                position -= size
        if producer.op_type in ("Unsqueeze", "Squeeze", "Identity", "Cast", "Reshape"):
            return self._source(producer.name, 0, position)
        return node_name, index, position

    def _input(self, node: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Point input ``index`` of ``node`` at a new constant (shape constants are often
        shared, so they are never edited in place)."""
        while len(node.input) <= index:
            node.input.append("")
        base = node.input[index] or f"{node.name}_shape"
        node.input[index] = self.tensors.add(np.asarray(value), base)


def _reads_shapes(graph: Graph, name: str) -> bool:
    """Whether a computed value depends on the runtime shape of some tensor."""
    pending, seen = [name], set()
    while pending:
        node = graph.producer.get(pending.pop())
        if node is None or node.name in seen:
            continue
        if node.op_type in ("Shape", "Size"):
            return True
        seen.add(node.name)
        pending.extend(i for i in node.input if i)
    return False


def _attr(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    return next(a for a in node.attribute if a.name == name)
