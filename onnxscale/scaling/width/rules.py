"""Channel groups: the op rules behind `find_groups`, what each ONNX op does to channels.

One pass over the ops in topological order gives every feature-map tensor a `Layout`; each rule
reads its inputs' layouts and writes its outputs', making atoms equal, refining them, tying
them (grouped convs) or pinning them (with the reason shown by ``onnxscale groups``).  Rules are
methods named after the op (``_conv``, ``_concat``, ...), one short method per op family, and
record what the width rewrite must change (`LayerUse`, `ParamUse`, `ShapeUse`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from ...graph import Graph
from ...shapes import UNARY, attrs, axes_of, slice_params, split_sizes
from ..ops import BROADCAST_OPS, LAYER_OPS, const_value, is_const
from .channels import Piece, Pieces
from .groups import ChannelGroups, LayerUse, Layout, ParamUse, ShapeUse, Tie
from .shapevalues import ShapeValues

PASS_OPS = (UNARY - {"BatchNormalization", "InstanceNormalization", "LRN", "Softmax",
                     "LogSoftmax", "Hardmax", "CumSum", "MeanVarianceNormalization",
                     "LpNormalization", "GroupNormalization", "Trilu", "ReverseSequence",
                     "QuantizeLinear", "DequantizeLinear"})
POOLS = {"MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool",
         "GlobalLpPool"}
SHAPE_ONLY = {"Shape", "Size"}
MULTI_INPUT = BROADCAST_OPS | {"Concat"}    # ops whose first input may have fixed channels
CHANNEL_STATISTICS = {"ReduceMean": True, "ReduceMax": False, "ReduceMin": False}
# Ops a Squeeze-Excite gate passes through between its last layer and the multiplication.
GATE_OPS = {"Sigmoid", "HardSigmoid", "Clip", "Relu", "HardSwish", "Identity", "Cast", "Add",
            "Mul", "Div", "Sub", "Reshape", "Unsqueeze", "Flatten", "Squeeze"}


def find_groups(graph: Graph) -> ChannelGroups:
    """Discover the channel groups of ``graph`` (see the module docstring)."""
    found = ChannelGroups(graph)
    Rules(found).run()
    return found


class Rules:
    """One pass over the graph applying an op rule per node."""

    def __init__(self, found: ChannelGroups):
        self.f = found
        self.g = found.graph
        self.atoms = found.atoms
        self.skip: set[str] = set()   # nodes already handled as part of a pattern
        self.shape_values = ShapeValues(self.g)

    def run(self) -> None:
        for name, dims in self.g.inputs.items():
            if len(dims) >= 2:
                self._fresh(name, 1, f"graph input '{name}'", origin=name)
        for node in self.g.nodes:
            self.shape_values.visit(node)
            if node.name not in self.skip:
                self._visit(node)
            if node.op_type == "Reshape":
                self._computed_target(node)
        for name in self.g.outputs:
            reason = f"feeds graph output '{name}'"
            if name in self.f.layouts:
                self.atoms.pin(self.f.layouts[name].pieces, reason)
            for element in self.f.sequences.get(name, []):
                if element is not None:
                    self.atoms.pin(element.pieces, reason)
        self._align_ties()
        self._find_se()

    def _align_ties(self) -> None:
        """Cut both sides of every grouped conv at the same conv-group boundaries (refining
        one tie can cut another, hence the loop)."""
        changed = True
        while changed:
            changed = False
            for tie in self.f.ties:
                if not tie.broken:
                    changed |= self._align(tie)

    def _align(self, tie: Tie) -> bool:
        xs, ys = self.atoms.expand(tie.x), self.atoms.expand(tie.y)
        units = set()
        for pieces, gw in ((xs, tie.gw_in), (ys, tie.gw_out)):
            offset = 0
            for piece in pieces:
                offset += self.atoms.width[piece.atom] * piece.inner
                if offset % gw or piece.inner != 1:
                    tie.broken = True
                    reason = f"grouped conv {tie.node}: a conv group straddles two channel groups"
                    self.atoms.pin(tie.x, reason)
                    self.atoms.pin(tie.y, reason)
                    return False
                units.add(offset // gw)
        for unit in sorted(units):  # multiples of the group widths: never inside a channel
            self.atoms.cut(tie.x, unit * tie.gw_in)
            self.atoms.cut(tie.y, unit * tie.gw_out)
        return (xs, ys) != (self.atoms.expand(tie.x), self.atoms.expand(tie.y))

    # ---- helpers --------------------------------------------------------------------------
    def _visit(self, node: onnx.NodeProto) -> None:
        op = node.op_type
        if op in LAYER_OPS and node.domain in ("", "ai.onnx"):
            getattr(self, "_" + op.lower())(node)
            return
        data = node.input[:1] if op == "CastLike" else node.input  # CastLike reads a type
        if op in SHAPE_ONLY or not any(self._has_layout(name) for name in data):
            return
        if node.domain not in ("", "ai.onnx"):
            self._opaque(node, f"unsupported op {node.domain}.{op} at node {node.name}")
            return
        if op not in MULTI_INPUT and not self._has_layout(node.input[0]):
            self._opaque(node, f"{op} at node {node.name} mixes channels with fixed-width data")
            return
        if op in PASS_OPS:
            self._same(node)
        elif op in BROADCAST_OPS:
            self._elementwise(node)
        elif op in POOLS:
            self._pool(node)
        else:
            rule = getattr(self, "_reduce" if op.startswith("Reduce") else "_" + op.lower(), None)
            if rule is None:
                self._opaque(node, f"unsupported op {op} at node {node.name}")
            else:
                rule(node)

    def _has_layout(self, name: str) -> bool:
        return name in self.f.layouts or name in self.f.sequences

    def _layout(self, name: str) -> Layout | None:
        return self.f.layouts.get(name)

    def _set(self, name: str, axis: int, pieces: Pieces) -> None:
        if name:
            self.f.layouts[name] = Layout(axis, tuple(pieces))

    def _fresh(self, name: str, axis: int, pin: str | None = None, origin: str = "") -> Pieces:
        """A new atom for all channels of ``name`` (pinned when ``pin`` gives a reason)."""
        shape = self.g.shapes.get(name)
        if not shape or axis >= len(shape):
            return ()
        pieces = (Piece(self.atoms.new(shape[axis], origin or name)),)
        if pin:
            self.atoms.pin(pieces, pin)
        self._set(name, axis, pieces)
        return pieces

    def _same(self, node: onnx.NodeProto, outputs=None) -> None:
        """Outputs keep the first input's layout (the op leaves the channel axis alone)."""
        layout = self._layout(node.input[0])
        for name in outputs if outputs is not None else node.output[:1]:
            self._set(name, layout.axis, layout.pieces)

    def _opaque(self, node: onnx.NodeProto, reason: str) -> None:
        """Pin everything ``node`` reads; its outputs get fixed-width channels."""
        for name in node.input:
            if name in self.f.layouts:
                self.atoms.pin(self.f.layouts[name].pieces, reason)
            for element in self.f.sequences.get(name, []):
                if element is not None:
                    self.atoms.pin(element.pieces, reason)
        for name in node.output:
            shape = self.g.shapes.get(name)
            if name and shape and len(shape) >= 2:
                self._fresh(name, 1, reason, origin=node.name)

    def _channel_axis_is_1(self, node: onnx.NodeProto, layout: Layout | None) -> bool:
        if layout is not None and layout.axis == 1:
            return True
        self._opaque(node, f"{node.op_type} at node {node.name} reads channels on another axis")
        return False

    def _const(self, name: str) -> bool:
        return bool(name) and is_const(self.g, name)

    # ---- layers ---------------------------------------------------------------------------
    def _conv(self, node: onnx.NodeProto) -> None:
        x, y = node.input[0], node.output[0]
        shape_x, shape_y = self.g.shapes.get(x), self.g.shapes.get(y)
        if not self._const(node.input[1]) or not shape_x or len(shape_x) < 3:
            self._opaque(node, f"Conv at node {node.name} has a computed weight")
            return
        groups = attrs(node).get("group", 1)
        c_in, c_out = shape_x[1], shape_y[1]
        layout = self._layout(x)
        if layout is not None and layout.axis != 1:
            self.atoms.pin(layout.pieces, f"Conv at node {node.name} reads another axis")
            layout = None
        use = LayerUse(node.name, x, y, 1, 0, 1, bias=self._bias(node, 2), groups=groups)
        if groups == 1:
            self._fresh(y, 1, origin=node.name)
        elif groups == c_in == c_out and layout is not None:
            use.kind = "depthwise"  # one group with its input: stays depthwise
            self._set(y, 1, layout.pieces)
        else:
            use.kind = "grouped"
            out = self._fresh(y, 1, origin=node.name)
            if layout is None:
                self.atoms.pin(out, f"grouped conv {node.name} reads fixed-width channels")
            else:
                self.f.ties.append(Tie(node.name, layout.pieces, out, c_in // groups,
                                       c_out // groups, groups))
        self.f.layers.append(use)
        self._computed_bias(node, y, c_out)

    def _convtranspose(self, node: onnx.NodeProto) -> None:
        if attrs(node).get("group", 1) != 1 or not self._const(node.input[1]):
            self._opaque(node, f"ConvTranspose at node {node.name} is grouped or has a "
                               f"computed weight")
            return
        x, y = node.input[0], node.output[0]
        layout = self._layout(x)
        if layout is not None and layout.axis != 1:
            self.atoms.pin(layout.pieces, f"ConvTranspose at node {node.name} reads another axis")
        self._fresh(y, 1, origin=node.name)
        self.f.layers.append(LayerUse(node.name, x, y, 1, 1, 0, bias=self._bias(node, 2)))

    def _gemm(self, node: onnx.NodeProto) -> None:
        a = attrs(node)
        x, y = node.input[0], node.output[0]
        layout = self._layout(x)
        bias = node.input[2] if len(node.input) > 2 else ""
        if a.get("transA", 0) or not self._const(node.input[1]) or \
                (bias and not self._const(bias)):
            self._opaque(node, f"Gemm at node {node.name} has a transposed input or computed "
                               f"weights")
            return
        if layout is not None and layout.axis != 1:
            self.atoms.pin(layout.pieces, f"Gemm at node {node.name} reads another axis")
        self._fresh(y, 1, origin=node.name)
        out_axis, in_axis = (0, 1) if a.get("transB", 0) else (1, 0)
        self.f.layers.append(LayerUse(node.name, x, y, 1, out_axis, in_axis))
        if bias and self.g.shapes[bias] and self.g.shapes[bias][-1] > 1:
            self.f.params.append(ParamUse(node.name, 2, len(self.g.shapes[bias]) - 1, y))

    def _matmul(self, node: onnx.NodeProto) -> None:
        x, w, y = node.input[0], node.input[1], node.output[0]
        shape_x, shape_w = self.g.shapes.get(x), self.g.shapes.get(w)
        if not self._const(w) or not shape_w or len(shape_w) != 2 or not shape_x:
            if self._has_layout(x) or self._has_layout(w):
                self._opaque(node, f"MatMul at node {node.name} multiplies two computed tensors")
            return
        layout = self._layout(x)
        last = len(shape_x) - 1
        if layout is not None and layout.axis < last:
            self._set(y, layout.axis, layout.pieces)  # mixes another axis, not the channels
            return
        if layout is not None and layout.axis != last:
            self.atoms.pin(layout.pieces, f"MatMul at node {node.name} reads another axis")
        self._fresh(y, len(self.g.shapes[y]) - 1, origin=node.name)
        self.f.layers.append(LayerUse(node.name, x, y, 1, 1, 0))

    def _computed_bias(self, node: onnx.NodeProto, y: str, c_out: int) -> None:
        """A bias computed by Expand (dynamo's zero bias): built from the weight's shape it
        follows the new weight; a target ORT's optimizer folded into a constant spells out
        the old channel count, and is rewritten with the output's width."""
        bias = node.input[2] if len(node.input) > 2 else ""
        producer = self.g.producer.get(bias) if bias and not self._const(bias) else None
        if producer is None:
            return
        target = self.g.small_value(producer.input[1]) if producer.op_type == "Expand" else None
        if target is None or target.size == 0 or int(target.reshape(-1)[-1]) != c_out:
            self.atoms.pin(self.f.layouts[y].pieces,
                           f"Conv at node {node.name} reads a computed bias of fixed length")
            return
        self.f.shape_uses.append(ShapeUse(producer.name, "reshape", (y,), target.size - 1))

    def _bias(self, node: onnx.NodeProto, index: int) -> int | None:
        """The index of a constant bias (a computed one, like dynamo's zero bias built from the
        weight's shape, follows the new weight by itself)."""
        if len(node.input) > index and self._const(node.input[index]):
            return index
        return None

    # ---- per-channel ops --------------------------------------------------------------------
    def _batchnormalization(self, node: onnx.NodeProto) -> None:
        self._per_channel(node, range(1, 5))

    def _instancenormalization(self, node: onnx.NodeProto) -> None:
        self._per_channel(node, range(1, 3))

    def _per_channel(self, node: onnx.NodeProto, indices) -> None:
        layout = self._layout(node.input[0])
        if not self._channel_axis_is_1(node, layout):
            return
        if not all(self._const(node.input[i]) for i in indices if i < len(node.input)):
            self._opaque(node, f"{node.op_type} at node {node.name} has computed parameters")
            return
        self._set(node.output[0], 1, layout.pieces)
        for index in indices:
            if index < len(node.input) and node.input[index]:
                self.f.params.append(ParamUse(node.name, index, 0, node.input[0]))

    def _layernormalization(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        layout, rank = self._layout(x), len(self.g.shapes[x])
        axis = attrs(node).get("axis", -1) % rank
        self._same(node)
        if layout.axis < axis:
            return
        self.f.uniform.append((layout.pieces, f"LayerNormalization at node {node.name} "
                                              f"normalizes over channels"))
        for index in (1, 2):
            if len(node.input) <= index or not node.input[index]:
                continue
            shape = self.g.shapes[node.input[index]]
            param_axis = layout.axis - (rank - len(shape))
            if not self._const(node.input[index]):
                self._opaque(node, f"LayerNormalization at node {node.name} has computed "
                                   f"parameters")
                return
            if 0 <= param_axis < len(shape) and shape[param_axis] > 1:
                self.f.params.append(ParamUse(node.name, index, param_axis, x))

    def _lrn(self, node: onnx.NodeProto) -> None:
        layout = self._layout(node.input[0])
        if self._channel_axis_is_1(node, layout):
            self._set(node.output[0], 1, layout.pieces)
            self.atoms.flag(layout.pieces, f"LRN at node {node.name} sums over neighbouring "
                                           f"channels")

    def _pool(self, node: onnx.NodeProto) -> None:
        if self._channel_axis_is_1(node, self._layout(node.input[0])):
            if len(node.output) > 1 and node.output[1]:
                self._opaque(node, f"{node.op_type} at node {node.name} returns indices")
                return
            self._same(node, outputs=node.output[:1])

    def _elementwise(self, node: onnx.NodeProto) -> None:
        out_shape = self.g.shapes.get(node.output[0])
        if not out_shape:
            self._opaque(node, f"{node.op_type} at node {node.name} has an unknown shape")
            return
        rank = len(out_shape)
        axes = {self.f.layouts[n].axis + rank - len(self.g.shapes[n])
                for n in node.input if n in self.f.layouts}
        if len(axes) != 1:
            self._opaque(node, f"{node.op_type} at node {node.name} combines different axes")
            return
        axis = axes.pop()
        pieces: Pieces | None = None
        for index, name in enumerate(node.input):
            if not name:
                continue
            shape = self.g.shapes[name]
            local = axis - (rank - len(shape))
            size = shape[local] if 0 <= local < len(shape) else 1
            if name in self.f.layouts:
                own = self.f.layouts[name].pieces
                if size != out_shape[axis]:
                    self.atoms.pin(own, f"broadcast along channels at node {node.name}")
                elif pieces is None:
                    pieces = own
                elif not self.atoms.unify(pieces, own):
                    reason = f"{node.op_type} at node {node.name} mixes incompatible channels"
                    self.atoms.pin(pieces, reason)
                    self.atoms.pin(own, reason)
            elif size > 1 and size == out_shape[axis]:
                if self._const(name):
                    self.f.params.append(ParamUse(node.name, index, local, node.output[0]))
                else:
                    self._opaque(node, f"{node.op_type} at node {node.name} mixes channels with "
                                       f"fixed-width tensor '{name}'")
                    return
        if pieces is not None:
            self._set(node.output[0], axis, pieces)
        else:
            self._fresh(node.output[0], axis, f"broadcast along channels at node {node.name}")

    # ---- reductions and normalizations over an axis ----------------------------------------------
    def _reduce(self, node: onnx.NodeProto) -> None:
        x, y = node.input[0], node.output[0]
        layout, rank = self._layout(x), len(self.g.shapes[x])
        a = attrs(node)
        axes = axes_of(self.g, node, 13 if node.op_type == "ReduceSum" else 18)
        if axes is None and len(node.input) > 1 and node.input[1]:
            self._opaque(node, f"{node.op_type} at node {node.name} has computed axes")
            return
        if not axes and a.get("noop_with_empty_axes", 0):
            self._same(node)
            return
        axes = [ax % rank for ax in axes] if axes else list(range(rank))
        if layout.axis not in axes:
            shift = 0 if a.get("keepdims", 1) else sum(ax < layout.axis for ax in axes)
            self._set(y, layout.axis - shift, layout.pieces)
            return
        reason = f"{node.op_type} over channels at node {node.name}"
        if node.op_type not in CHANNEL_STATISTICS:
            self.atoms.pin(layout.pieces, reason)
        elif CHANNEL_STATISTICS[node.op_type]:
            self.f.uniform.append((layout.pieces, reason))

    def _softmax(self, node: onnx.NodeProto) -> None:
        layout, rank = self._layout(node.input[0]), len(self.g.shapes[node.input[0]])
        axis = attrs(node).get("axis", 1 if self.g.opset < 13 else -1) % rank
        covered = layout.axis >= axis if self.g.opset < 13 else layout.axis == axis
        if covered:
            self._opaque(node, f"{node.op_type} at node {node.name} normalizes over channels")
        else:
            self._same(node)

    _logsoftmax = _hardmax = _softmax

    # ---- moving the channel axis ----------------------------------------------------------------
    def _transpose(self, node: onnx.NodeProto) -> None:
        layout = self._layout(node.input[0])
        rank = len(self.g.shapes[node.input[0]])
        perm = list(attrs(node).get("perm", range(rank - 1, -1, -1)))
        self._set(node.output[0], perm.index(layout.axis), layout.pieces)

    def _reshape(self, node: onnx.NodeProto) -> None:
        if self._shuffle(node):
            return
        axis = self._move(node)
        if axis is not None:
            self.f.shape_uses.append(ShapeUse(node.name, "reshape", (node.output[0],), axis))

    def _computed_target(self, node: onnx.NodeProto) -> None:
        """A Reshape whose target reads a tensor's channel count (a dynamic export's
        ``y.view(B, C, H, W)`` with C from ``Shape(t)``): at run time the output's channels
        at that position follow t's, so they are one group with t's channels, or, when they
        cannot be, both keep their width."""
        sources = self.shape_values.of(node.input[1]) if len(node.input) > 1 else None
        out = self._layout(node.output[0])
        for position, source in enumerate(sources or ()):
            for tensor, axis in sorted(source.axes):
                read = self._layout(tensor)
                if read is None or read.axis != axis:
                    continue  # not a channel count
                follows = out is not None and out.axis == position
                if source.exact and follows and self.atoms.unify(read.pieces, out.pieces):
                    continue
                reason = f"Reshape at node {node.name} takes its shape from the channels of " \
                         f"'{tensor}'"
                self.atoms.pin(read.pieces, reason)
                if follows:
                    self.atoms.pin(out.pieces, reason)

    def _flatten(self, node: onnx.NodeProto) -> None:
        self._move(node)

    def _squeeze(self, node: onnx.NodeProto) -> None:
        self._move(node)

    _unsqueeze = _squeeze

    def _move(self, node: onnx.NodeProto) -> int | None:
        """A reshape-like op: find where the channels land; return the output axis."""
        x, y = node.input[0], node.output[0]
        layout = self._layout(x)
        pieces = self.atoms.expand(layout.pieces)
        moved = reshape_axis(self.g.shapes[x], self.g.shapes[y], layout.axis,
                             {p.inner for p in pieces})
        if moved is None:
            self._opaque(node, f"{node.op_type} at node {node.name} splits or merges channels "
                               f"with another axis")
            return None
        axis, times, divide = moved
        self._set(y, axis, tuple(Piece(p.atom, p.inner * times // divide) for p in pieces))
        return axis

    def _shuffle(self, node: onnx.NodeProto) -> bool:
        """Reshape [N,C,H,W] -> [N,g,C/g,H,W], Transpose(0,2,1,...), Reshape back: a channel
        shuffle.  Its output keeps the input's pieces for the widths; the channel order
        differs, so widening it is not exact."""
        x = node.input[0]
        layout, s = self._layout(x), self.g.shapes[x]
        t = self.g.shapes[node.output[0]]
        if layout.axis != 1 or len(t) != len(s) + 1 or t[1] * t[2] != s[1] or \
                t[:1] != s[:1] or t[3:] != s[2:]:
            return False
        chain = self._single_chain(node.output[0], 4)
        if len(chain) < 2 or chain[0].op_type != "Transpose":
            return False
        perm = list(attrs(chain[0]).get("perm", []))
        if perm[:3] != [0, 2, 1] or perm[3:] != list(range(3, len(t))):
            return False
        last = next((n for n in chain[1:] if n.op_type != "Identity"), None)
        if last is None or last.op_type != "Reshape" or self.g.shapes[last.output[0]] != s:
            return False
        upto = chain.index(last)
        self.skip.update(n.name for n in chain[:upto + 1])
        groups = t[1]
        self.f.multiples.append((layout.pieces, groups))
        self.atoms.flag(layout.pieces, f"channel shuffle at node {node.name} interleaves "
                                       f"widened channels differently")
        self._set(last.output[0], 1, layout.pieces)
        self.f.shape_uses.append(ShapeUse(node.name, "reshape", (x,), 2, groups))
        self.f.shape_uses.append(ShapeUse(last.name, "reshape", (last.output[0],), 1))
        return True

    def _single_chain(self, tensor: str, length: int) -> list[onnx.NodeProto]:
        """The nodes reading ``tensor`` one after the other, while each is the only reader."""
        chain = []
        while len(chain) < length:
            readers = self.g.consumers.get(tensor, [])
            if len(readers) != 1 or tensor in self.g.outputs:
                break
            chain.append(readers[0])
            tensor = readers[0].output[0]
        return chain

    # ---- ranges of channels ----------------------------------------------------------------------
    def _concat(self, node: onnx.NodeProto) -> None:
        y = node.output[0]
        rank = len(self.g.shapes[y])
        axis = attrs(node)["axis"] % rank
        axes = {self.f.layouts[n].axis for n in node.input if n in self.f.layouts}
        if len(axes) != 1:
            self._opaque(node, f"Concat at node {node.name} joins different channel axes")
            return
        channel = axes.pop()
        if channel != axis:
            self._elementwise_like(node, channel)
            return
        pieces: list[Piece] = []
        for name in node.input:
            if name in self.f.layouts:
                pieces.extend(self.f.layouts[name].pieces)
                continue
            own = (Piece(self.atoms.new(self.g.shapes[name][channel], node.name)),)
            self.atoms.pin(own, f"Concat at node {node.name} appends fixed-width tensor '{name}'")
            pieces.extend(own)
        self._set(y, channel, tuple(pieces))

    def _elementwise_like(self, node: onnx.NodeProto, axis: int) -> None:
        """A Concat along another axis: all inputs share one layout."""
        pieces = None
        for name in node.input:
            layout = self._layout(name)
            if layout is None:
                self._opaque(node, f"Concat at node {node.name} joins fixed-width tensor "
                                   f"'{name}'")
                return
            if pieces is None:
                pieces = layout.pieces
            elif not self.atoms.unify(pieces, layout.pieces):
                self._opaque(node, f"Concat at node {node.name} joins incompatible channels")
                return
        self._set(node.output[0], axis, pieces)

    def _split(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        layout = self._layout(x)
        found = split_sizes(self.g, node, self.g.shapes[x])
        if found is None:
            self._opaque(node, f"Split at node {node.name} has computed sizes")
            return
        axis, sizes = found
        if axis != layout.axis:
            self._same(node, outputs=node.output)
            return
        outputs = self._ranges(node, layout, sizes)
        if outputs is None:
            return
        for name, pieces in zip(node.output, outputs):
            self._set(name, axis, pieces)
        self.f.shape_uses.append(ShapeUse(node.name, "split", tuple(node.output)))

    def _splittosequence(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        layout = self._layout(x)
        rank = len(self.g.shapes[x])
        a = attrs(node)
        axis = a.get("axis", 0) % rank
        elements = self.g.sequences.get(node.output[0])
        if elements is None or (not a.get("keepdims", 1) and len(node.input) < 2):
            self._opaque(node, f"SplitToSequence at node {node.name} drops the split axis")
            return
        if axis != layout.axis:
            self.f.sequences[node.output[0]] = [layout] * len(elements)
            return
        ranges = self._ranges(node, layout, [e[axis] for e in elements])
        if ranges is None:
            return
        self.f.sequences[node.output[0]] = [Layout(axis, p) for p in ranges]
        self.f.shape_uses.append(ShapeUse(node.name, "split", (node.output[0],)))

    def _sequenceat(self, node: onnx.NodeProto) -> None:
        elements = self.f.sequences.get(node.input[0])
        index = self.g.small_value(node.input[1])
        if elements is None or index is None:
            self._opaque(node, f"SequenceAt at node {node.name} has a computed position")
            return
        layout = elements[int(index.reshape(-1)[0])]
        if layout is not None:
            self._set(node.output[0], layout.axis, layout.pieces)

    def _ranges(self, node: onnx.NodeProto, layout: Layout, sizes) -> list[Pieces] | None:
        out, start = [], 0
        for size in sizes:
            pieces = self.atoms.take(layout.pieces, start, start + size)
            if pieces is None:
                self._opaque(node, f"{node.op_type} at node {node.name} cuts inside a channel")
                return None
            out.append(pieces)
            start += size
        return out

    def _slice(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        layout, shape = self._layout(x), self.g.shapes[x]
        params = slice_params(self.g, node, shape)
        if params is None:
            self._opaque(node, f"Slice at node {node.name} has computed bounds")
            return
        for position, (axis, start, end, step) in enumerate(zip(*params)):
            if axis != layout.axis:
                continue
            if step != 1:
                self._opaque(node, f"Slice at node {node.name} takes every {step}th channel")
                return
            begin, stop, _ = slice(start, end, step).indices(shape[axis])
            stop = max(begin, stop)
            pieces = self.atoms.take(layout.pieces, begin, stop)
            if pieces is None:
                self._opaque(node, f"Slice at node {node.name} cuts inside a channel")
                return
            self._set(node.output[0], axis, pieces)
            self.f.shape_uses.append(ShapeUse(node.name, "slice", (x,), position,
                                              bounds=(begin, stop)))
            return
        self._same(node)

    # ---- ops that must leave the channel axis alone ----------------------------------------------
    def _pad(self, node: onnx.NodeProto) -> None:
        layout, shape = self._layout(node.input[0]), self.g.shapes[node.input[0]]
        if self.g.shapes[node.output[0]][layout.axis] != shape[layout.axis]:
            self._opaque(node, f"Pad at node {node.name} pads the channels")
        else:
            self._same(node)

    def _resize(self, node: onnx.NodeProto) -> None:
        layout, shape = self._layout(node.input[0]), self.g.shapes[node.input[0]]
        if self.g.shapes[node.output[0]][layout.axis] != shape[layout.axis]:
            self._opaque(node, f"{node.op_type} at node {node.name} resizes the channels")
            return
        self._same(node, outputs=node.output[:1])
        sizes = node.input[3] if node.op_type == "Resize" and len(node.input) > 3 else ""
        if sizes and self.g.small_value(sizes) is not None and self.g.small_value(sizes).size:
            axes = list(attrs(node).get("axes", range(len(shape))))
            axes = [a % len(shape) for a in axes]
            if layout.axis in axes:
                self.f.shape_uses.append(ShapeUse(node.name, "resize", (node.input[0],),
                                                  axes.index(layout.axis)))

    _upsample = _resize

    def _expand(self, node: onnx.NodeProto) -> None:
        x, y = node.input[0], node.output[0]
        layout = self._layout(x)
        rank = len(self.g.shapes[y])
        axis = layout.axis + rank - len(self.g.shapes[x])
        if self.g.shapes[y][axis] != self.g.shapes[x][layout.axis]:
            self._opaque(node, f"Expand at node {node.name} broadcasts along channels")
            return
        target = self.g.small_value(node.input[1])
        local = axis - (rank - (target.size if target is not None else 0))
        if target is None or (0 <= local < target.size and target.reshape(-1)[local] != 1):
            self._opaque(node, f"Expand at node {node.name} spells out the channel count")
            return
        self._set(y, axis, layout.pieces)

    def _tile(self, node: onnx.NodeProto) -> None:
        layout = self._layout(node.input[0])
        repeats = self.g.small_value(node.input[1])
        if repeats is None or int(repeats.reshape(-1)[layout.axis]) != 1:
            self._opaque(node, f"Tile at node {node.name} repeats the channels")
        else:
            self._same(node)

    def _gather(self, node: onnx.NodeProto) -> None:
        x = node.input[0]
        layout = self._layout(x)
        if layout is None:
            self._opaque(node, f"Gather at node {node.name} indexes with channel data")
            return
        axis = attrs(node).get("axis", 0) % len(self.g.shapes[x])
        if axis == layout.axis:
            self._gather_all(node, layout)
            return
        extra = len(self.g.shapes[node.input[1]]) - 1
        self._set(node.output[0], layout.axis + (extra if layout.axis > axis else 0),
                  layout.pieces)

    def _gather_all(self, node: onnx.NodeProto, layout: Layout) -> None:
        """Gather of every channel in order along one axis of the indices (dynamo's
        ``as_strided`` in ConvNeXt's head): the channels move to that axis."""
        indices = node.input[1]
        value = const_value(self.g, indices) if self._const(indices) else None
        shape = self.g.shapes[indices]
        wide = [i for i, d in enumerate(shape) if d != 1]
        if value is None or len(wide) != 1 or \
                not np.array_equal(value.reshape(-1), np.arange(value.size)):
            self._opaque(node, f"Gather at node {node.name} picks channels")
            return
        self._set(node.output[0], layout.axis + wide[0], layout.pieces)
        self.f.shape_uses.append(ShapeUse(node.name, "gather", (node.input[0],), wide[0]))

    # ---- Squeeze-Excite ---------------------------------------------------------------------------
    def _find_se(self) -> None:
        """A gate ``x * f(pool(x))`` whose f ends in a layer: the layer's input is the SE
        bottleneck, whose width pycls ties to its block (no divisor rounding)."""
        for node in self.g.nodes:
            if node.op_type != "Mul" or len(node.input) != 2:
                continue
            found = [self._gate_input(node, i) for i in (0, 1)]
            for bottleneck, data in ((found[0], node.input[1]), (found[1], node.input[0])):
                if bottleneck is None or data not in self.f.layouts:
                    continue
                pieces = self.f.layouts[bottleneck].pieces
                if set(self.f.roots_of(pieces)) & set(self.f.roots_of(
                        self.f.layouts[data].pieces)):
                    continue
                self.f.se.append((pieces, self.f.layouts[data].pieces))

    def _gate_input(self, mul: onnx.NodeProto, index: int) -> str | None:
        gate, other = mul.input[index], mul.input[1 - index]
        if gate not in self.f.layouts or other not in self.f.layouts:
            return None
        if _spatial(self.g.shapes[gate], self.f.layouts[gate].axis) != 1 or \
                _spatial(self.g.shapes[other], self.f.layouts[other].axis) == 1:
            return None
        tensor = gate
        for _ in range(12):
            node = self.g.producer.get(tensor)
            if node is None:
                return None
            if node.op_type in ("Conv", "Gemm", "MatMul"):
                source = node.input[0]
                layout = self.f.layouts.get(source)
                if layout is None or _spatial(self.g.shapes[source], layout.axis) != 1:
                    return None
                return source
            if node.op_type not in GATE_OPS:
                return None
            data = [i for i in node.input if i in self.f.layouts]
            if len(data) != 1:
                return None
            tensor = data[0]
        return None


def _spatial(shape, axis: int) -> int:
    """Elements per channel of one sample (1 for SE vectors ``[N,C,1,1]`` and ``[N,C]``)."""
    return math.prod(d for i, d in enumerate(shape[1:], start=1) if i != axis)


def reshape_axis(s, t, axis: int, inners: set[int]) -> tuple[int, int, int] | None:
    """Where channel axis ``axis`` of shape ``s`` lands when reshaped to ``t``.

    Returns (output axis, factor, divisor): each channel now spans inner * factor / divisor
    positions (factor = H*W for a Flatten; divisor = H*W for the Reshape undoing it); None if
    the reshape splits channels or merges them with a preceding axis.
    """
    c = s[axis]
    before = math.prod(s[:axis])
    prefix, j = 1, 0
    while j < len(t) and prefix < before:
        prefix *= t[j]
        j += 1
    if prefix != before or c == 1:
        return None
    while j < len(t) and t[j] == 1:
        j += 1
    if j == len(t):
        return None
    if t[j] % c == 0:
        factor, acc, k = t[j] // c, 1, axis + 1
        while acc < factor and k < len(s):
            acc *= s[k]
            k += 1
        return (j, factor, 1) if acc == factor else None
    if c % t[j] == 0:
        divide, acc, k = c // t[j], 1, j + 1
        while acc < divide and k < len(t):
            acc *= t[k]
            k += 1
        if acc == divide and all(inner % divide == 0 for inner in inners):
            return j, 1, divide
    return None
