"""Resolution and batch scaling: a new input size, and every constant baked to the old one.

Exporters with a fixed input size freeze sizes into the graph: Reshape targets (``[1, 25088]``
before a classifier, ``[1, 3, 85, 13, 13]`` in a YOLO head), Resize ``sizes``, pooling kernels
that act as global pooling, Expand / ConstantOfShape / Slice constants.  We re-propagate shapes
from the new input size node by node (with the same per-op rules as the analysis) and, at each
node whose constants no longer fit, derive the new constant from how the node mapped its old
input to its old output:

- Reshape: dims are matched in groups of equal products (1:1, merged, split), so a flatten
  stays a flatten and a channel split stays a channel split;
- Resize ``sizes`` keep their ratio to the input; a pool whose kernel covered its whole input
  covers the new one;
- spatial values in Expand / ConstantOfShape targets and Slice ends follow the old -> new map of
  spatial sizes seen so far;
- a classifier that reads a flattened C x H x W map (VGG, AlexNet) gets the average pooling an
  adaptive pool would do, back to the trained H x W, when the new map is a multiple of it; it
  is refused, naming the node, otherwise.

Symbolic (dynamic) spatial dims of an input stay symbolic in the written model, which already
runs at any size; the size scaled is the one the model is analyzed at (``--input-shape``).
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import OnnxscaleError
from ...graph import Graph, declared_dims
from ...shapes import propagate_node
from ..ops import VALUE_PASS, weight_of
from ..plan import Edit, ScaleOptions
from ..protoedit import Tensors, copy_model, prune_dead, set_attribute
from ..strategy import round_resolution

DENSE = ("Gemm", "MatMul")
BATCH_PARAM = "batch"


def scale_resolution(proto: onnx.ModelProto, graph: Graph, r: float,
                     options: ScaleOptions, in_place: bool = False,
                     sizes: dict[str, list[int]] | None = None) -> Edit:
    """Input spatial size times ``r`` (on the grid of sizes the model accepts,
    ``options.input_sizes``, else multiples of ``options.resolution_divisor``) and/or a new
    batch (``options.batch``: an int or "dynamic"), or exactly the input dims ``sizes``;
    never mutates ``proto`` unless ``in_place`` (the pipeline's own intermediate model:
    copying a widened model's weights only to drop the original costs a second of a big
    scale)."""
    inputs = sizes if sizes is not None else _new_inputs(graph, r, options)
    model = proto if in_place else copy_model(proto)
    rewriter = _Rewriter(model, graph, inputs, options)
    rewriter.run()
    notes = list(rewriter.notes)
    if options.input_sizes is not None and r != 1 and sizes is None:
        notes += options.input_sizes.notes(options.resolution_divisor)
    _declare(model, graph, rewriter.view, options)
    prune_dead(model)
    _check_batch(model, graph, rewriter.view, inputs, options)
    details = {"inputs": {name: {"old": list(graph.inputs[name]), "new": dims}
                          for name, dims in inputs.items()},
               "rewritten": rewriter.rewritten, "batch": options.batch}
    symbolic = [name for name in inputs if _symbolic_spatial(graph, name)]
    if symbolic:
        notes.append(f"input(s) {', '.join(symbolic)} keep their symbolic height/width; the "
                     f"analysis size was scaled")
    return Edit("resolution", model, exact=r == 1, details=details, notes=notes, inputs=inputs)


def _new_inputs(graph: Graph, r: float, options: ScaleOptions) -> dict[str, list[int]]:
    """New concrete dims of every input: spatial dims of image inputs (rank >= 3) scaled,
    batch replaced (analysis batch stays 1 when the batch becomes dynamic)."""
    divisor = options.resolution_divisor
    accepted = options.input_sizes
    if accepted is not None and r != 1 and accepted.axes and not accepted.smallest_step():
        raise OnnxscaleError(f"resolution: the model accepts no other input size: "
                             f"{accepted.fixed()[0].describe()}")
    scaled = accepted.new_dims(graph.inputs, r) if accepted is not None and r != 1 else None
    new = {}
    for name, dims in graph.inputs.items():
        dims = list(dims)
        if scaled is not None:
            dims = list(scaled[name])
        elif len(dims) >= 3 and r != 1:
            for axis in spatial_axes(dims):
                dims[axis] = max(divisor, round_resolution(r, dims[axis], divisor))
        if isinstance(options.batch, int) and len(dims) >= 2:
            dims[0] = options.batch
        new[name] = dims
    return new


def spatial_axes(dims: list[int]) -> list[int]:
    """H and W of NCHW, or of NHWC when the last dim looks like colour channels."""
    if len(dims) == 4 and dims[-1] in (1, 3, 4) and dims[1] > 4:
        return [1, 2]
    return list(range(2, len(dims)))


def _symbolic_spatial(graph: Graph, name: str) -> bool:
    value = next(v for v in graph.model.graph.input if v.name == name)
    dims = declared_dims(value) or []
    return any(not isinstance(d, int) for d in dims[1:])


class FlattenedHeadSize(OnnxscaleError):
    """A classifier reading a flattened map gets a size that pooling cannot bring back to its
    trained map.  Such heads accept bands of sizes around multiples of the trained map, not a
    lattice, so size probing (`sizes.py`) does not hold them against an axis: the solver skips
    the sizes they refuse, and an explicit --resolution is refused with this message."""


class _Rewriter:
    """Re-propagates shapes from the new inputs, fixing baked constants on the way."""

    def __init__(self, model: onnx.ModelProto, graph: Graph, inputs: dict[str, list[int]],
                 options: ScaleOptions):
        self.model, self.old, self.options = model, graph, options
        self.tensors = Tensors(model)
        self.nodes = {node.name: node for node in model.graph.node}
        self.view = _fresh_view(graph, inputs)
        self.dim_map: dict[int, int | None] = {}
        self.before: dict[str, list[onnx.NodeProto]] = {}
        self.rewritten: list[dict] = []
        self.notes: list[str] = []
        self._fixed: dict[str, bool] = {}
        for name in inputs:
            self._learn(name)

    def run(self) -> None:
        for node in self.old.nodes:
            current = self.nodes[node.name]
            for extra in self._fix(node, current):
                self._propagate(extra)
            self._propagate(current)
        self._rebuild()

    def _propagate(self, node: onnx.NodeProto) -> None:
        try:
            propagate_node(self.view, node, overwrite=True)
        except OnnxscaleError as exc:
            raise OnnxscaleError(f"resolution: {exc}; this node depends on the input size in a "
                                 f"way onnxscale cannot rewrite") from exc
        for name in node.output:
            if name:
                self._learn(name)

    def _learn(self, name: str) -> None:
        """Record old -> new spatial sizes (None when one old size got two new ones)."""
        old, new = self.old.shapes.get(name), self.view.shapes.get(name)
        if old is None or new is None or len(old) != 4 or len(new) != 4:
            return
        for a, b in zip(old[2:], new[2:]):
            if self.dim_map.get(a, b) != b:
                self.dim_map[a] = None
            elif a not in self.dim_map:
                self.dim_map[a] = b

    def _rebuild(self) -> None:
        order = []
        for node in self.model.graph.node:
            order.extend(self.before.get(node.name, []))
            order.append(node)
        del self.model.graph.node[:]
        self.model.graph.node.extend(order)

    # ---- per-op fixes ---------------------------------------------------------------------
    def _fix(self, old: onnx.NodeProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Rewrite ``node`` (the model's copy) in place; return nodes to insert before it."""
        op = old.op_type
        if op in ("Flatten", "Reshape"):
            extra = self._head(old, node)
            if extra:
                return extra
        if op == "Reshape":
            self._reshape(old, node)
        elif op in ("Resize", "Upsample"):
            self._resize(old, node)
        elif op in ("MaxPool", "AveragePool", "LpPool"):
            self._global_pool(old, node)
        elif op in ("Expand", "ConstantOfShape"):
            self._spatial_constant(old, node, 1 if op == "Expand" else 0)
        elif op == "Slice":
            self._slice(old, node)
        return []

    def _reshape(self, old: onnx.NodeProto, node: onnx.NodeProto) -> None:
        x_old, x_new = self.old.shapes[old.input[0]], self.view.shapes.get(old.input[0])
        out_old = self.old.shapes.get(old.output[0])
        dynamic = self.options.batch == "dynamic"
        if x_new is None or out_old is None or (tuple(x_new) == tuple(x_old) and not dynamic):
            return
        target = regroup(x_old, out_old, x_new, self.dim_map)
        if target is None:
            raise OnnxscaleError(f"resolution: Reshape '{old.name}' maps {list(x_old)} to "
                                 f"{list(out_old)}; cannot tell what it becomes for "
                                 f"{list(x_new)}")
        current = self.view.small_value(old.input[1])
        baked = self._constant(old.input[1])
        if dynamic and baked and x_old[0] == out_old[0] and current is not None and \
                int(current.reshape(-1)[0]) > 0:
            target[0] = 0  # copy the (now dynamic) batch from the input
            set_attribute(node, "allowzero", 0)
        elif current is not None and _reshaped(x_new, current) == tuple(target):
            return  # right as it is (computed from the input's shape, or a -1)
        self._set_constant(node, 1, np.array(target, dtype=np.int64), old, "target")

    def _resize(self, old: onnx.NodeProto, node: onnx.NodeProto) -> None:
        """Baked ``sizes`` keep their ratio to the input (FPN: 2x the coarser map)."""
        if old.op_type != "Resize" or len(old.input) < 4 or not old.input[3]:
            return
        x_old, x_new = self.old.shapes[old.input[0]], self.view.shapes[old.input[0]]
        sizes_old = self.old.small_value(old.input[3])
        sizes_now = self.view.small_value(old.input[3])
        dynamic = self.options.batch == "dynamic"
        if sizes_old is None or (tuple(x_old) == tuple(x_new) and not dynamic) or (
                sizes_now is not None and not np.array_equal(sizes_now, sizes_old)):
            return
        axes = _attr(old, "axes", list(range(len(x_old))))
        sizes = [_ratio(int(s), x_old[a], x_new[a], self.dim_map)
                 for a, s in zip(axes, sizes_old.reshape(-1))]
        if not dynamic:
            self._set_constant(node, 3, np.array(sizes, dtype=np.int64), old, "sizes")
            return
        scales = np.array([s / x_new[a] for a, s in zip(axes, sizes)], dtype=np.float32)
        if any(int(np.floor(x_new[a] * float(c))) != s for a, c, s in zip(axes, scales, sizes)):
            raise OnnxscaleError(f"resolution: Resize '{old.name}' has sizes baked for batch "
                                 f"{x_old[0]} that no scale reproduces; give --batch N")
        self._set_constant(node, 2, scales, old, "scales")
        node.input[3] = ""

    def _global_pool(self, old: onnx.NodeProto, node: onnx.NodeProto) -> None:
        """A pool whose kernel covered its whole input keeps covering it."""
        kernel = _attr(old, "kernel_shape", None)
        x_old, x_new = self.old.shapes[old.input[0]], self.view.shapes[old.input[0]]
        if not kernel or list(kernel) != list(x_old[2:]) or tuple(x_old) == tuple(x_new):
            return
        if any(_attr(old, "pads", [0]) or [0]):
            return
        set_attribute(node, "kernel_shape", list(x_new[2:]))
        set_attribute(node, "strides", list(x_new[2:]))
        self._record(old, "kernel", kernel, list(x_new[2:]))

    def _spatial_constant(self, old: onnx.NodeProto, node: onnx.NodeProto, index: int) -> None:
        """Expand / ConstantOfShape targets: spatial values follow the new sizes."""
        value = self.old.small_value(old.input[index]) if len(old.input) > index else None
        if value is None or value.ndim != 1 or len(value) < 3:
            return
        new = [int(v) for v in value]
        for axis in range(2, len(new)):
            mapped = self.dim_map.get(new[axis])
            if mapped:
                new[axis] = mapped
        if new != [int(v) for v in value]:
            self._set_constant(node, index, np.array(new, dtype=np.int64), old, "shape")

    def _slice(self, old: onnx.NodeProto, node: onnx.NodeProto) -> None:
        """Slice ends that were the old full size become the new full size."""
        if len(old.input) < 4:
            return
        x_old, x_new = self.old.shapes[old.input[0]], self.view.shapes[old.input[0]]
        ends = self.old.small_value(old.input[2])
        axes = self.old.small_value(old.input[3]) if old.input[3:4] and old.input[3] else None
        if ends is None or tuple(x_old) == tuple(x_new):
            return
        axes = list(range(len(ends))) if axes is None else [int(a) % len(x_old) for a in axes]
        new = [x_new[a] if int(e) == x_old[a] and x_old[a] != x_new[a] else int(e)
               for a, e in zip(axes, ends.reshape(-1))]
        if new != [int(e) for e in ends.reshape(-1)]:
            self._set_constant(node, 2, np.array(new, dtype=ends.dtype), old, "ends")

    def _head(self, old: onnx.NodeProto, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Average-pool a flattened classifier's input back to its trained size."""
        dense = self._dense_reader(old.output[0])
        x_old, x_new = self.old.shapes[old.input[0]], self.view.shapes.get(old.input[0])
        if dense is None or x_new is None or len(x_old) != 4 or x_old[2:] == x_new[2:]:
            return []
        (h, w), (h2, w2) = x_old[2:], x_new[2:]
        if h2 < h or w2 < w or h2 % h or w2 % w:
            raise FlattenedHeadSize(
                f"resolution: {dense.op_type} '{dense.name}' reads the flattened "
                f"{x_old[1]}x{h}x{w} feature map; at the new resolution it is {h2}x{w2}, which "
                f"average pooling cannot bring back to {h}x{w} (it must be a multiple); choose "
                f"a resolution whose feature map is a multiple of {h}x{w}")
        pooled = self.tensors.names.fresh(old.input[0] + ".pooled")
        pool = helper.make_node("AveragePool", [node.input[0]], [pooled],
                                name=self.tensors.names.fresh(old.name + ".adaptive_pool"),
                                kernel_shape=[h2 // h, w2 // w], strides=[h2 // h, w2 // w])
        node.input[0] = pooled
        self.before.setdefault(old.name, []).append(pool)
        self.notes.append(f"'{dense.name}' reads a flattened {h}x{w} map: an average pool "
                          f"{h2 // h}x{w2 // w} was added before '{old.name}' (what adaptive "
                          f"pooling to {h}x{w} computes)")
        self._record(old, "input pooled to the trained size", [h2, w2], [h, w])
        return [pool]

    def _dense_reader(self, tensor: str) -> onnx.NodeProto | None:
        """The Gemm/MatMul with a weight that reads ``tensor`` (through Identity, Dropout)."""
        for _ in range(8):
            readers = self.old.consumers.get(tensor, [])
            if len(readers) != 1:
                return None
            reader = readers[0]
            if reader.op_type in VALUE_PASS:
                tensor = reader.output[0]
                continue
            if reader.op_type in DENSE and reader.input[0] == tensor and \
                    weight_of(self.old, reader.input[1]):
                return reader
            return None
        return None

    # ---- helpers ----------------------------------------------------------------------------
    def _constant(self, tensor: str) -> bool:
        """Whether ``tensor`` is fixed at export time (computed from weights only, no Shape)."""
        if tensor in self._fixed:
            return self._fixed[tensor]
        node = self.old.producer.get(tensor)
        if tensor in self.old.consts or node is None or self.old.small_value(tensor) is None:
            fixed = tensor in self.old.consts  # data never counts: only folded shape values
        else:
            fixed = node.op_type not in ("Shape", "Size") and all(
                self._constant(t) for t in node.input if t)
        self._fixed[tensor] = fixed
        return fixed

    def _set_constant(self, node: onnx.NodeProto, index: int, value: np.ndarray,
                      old: onnx.NodeProto, what: str) -> None:
        before = self.old.small_value(old.input[index])
        name = self.tensors.add(value, f"{old.name}.{what}")
        node.input[index] = name
        self.view.consts[name] = numpy_helper.from_array(value, name)
        self.view.shapes[name] = tuple(value.shape)
        self.view.values[name] = value
        self._record(old, what, None if before is None else before.tolist(), value.tolist())

    def _record(self, old: onnx.NodeProto, what: str, before, after) -> None:
        self.rewritten.append({"node": old.name, "op": old.op_type, "what": what,
                               "old": before, "new": after})


def _fresh_view(graph: Graph, inputs: dict[str, list[int]]) -> Graph:
    """A Graph sharing ``graph``'s index (nodes, producers, weights) with only the inputs'
    shapes known: the propagation loop fills in the rest."""
    view = copy.copy(graph)
    view.consts = dict(graph.consts)
    view.shapes = {name: tuple(t.dims) for name, t in graph.consts.items()}
    view.dtypes = dict(graph.dtypes)
    view.values, view.sequences = {}, {}
    view.inputs = {name: list(dims) for name, dims in inputs.items()}
    for name, dims in inputs.items():
        view.shapes[name] = tuple(dims)
    return view


def regroup(old_in, old_out, new_in, dim_map) -> list[int] | None:
    """The new output shape of a reshape that mapped ``old_in`` to ``old_out``, for input
    ``new_in``: dims are paired 1:1 or in groups of equal products (a flatten merges, a
    channel split splits); a split group that grew is split with the map of spatial sizes."""
    out: list[int] = []
    i = j = 0
    while i < len(old_in) or j < len(old_out):
        if i < len(old_in) and j < len(old_out) and old_in[i] == old_out[j]:
            out.append(new_in[i])
            i, j = i + 1, j + 1
        elif j < len(old_out) and old_out[j] == 1:
            out.append(1)
            j += 1
        elif i < len(old_in) and old_in[i] == 1 and new_in[i] == 1:
            i += 1
        else:
            group = _group(old_in, old_out, i, j)
            if group is None:
                return None
            gi, gj = group
            grown = int(np.prod([new_in[k] for k in gi]))
            dims = [old_out[k] for k in gj]
            if len(dims) == 1:
                dims = [grown]
            elif grown != int(np.prod(dims)):
                dims = _split_grown(dims, grown, old_in, gi, dim_map)
                if dims is None:
                    return None
            out.extend(dims)
            i, j = gi[-1] + 1, gj[-1] + 1
    return out


def _split_grown(dims: list[int], grown: int, old_in, gi: list[int], dim_map) -> list[int] | None:
    """The new sizes of ``dims``, a split of input dims ``gi`` that now hold ``grown``
    elements: each split size mapped as the spatial sizes were (H*W back into H, W), or, for
    a spatial axis cut into blocks (space-to-depth: TResNet's [.., 160, ..] -> [.., 40, 4,
    ..]), the blocks keep their size and their count grows."""
    mapped = [dim_map.get(d) or d for d in dims]
    if int(np.prod(mapped)) == grown:
        return mapped
    block = int(np.prod(dims[1:]))
    if len(gi) == 1 and dim_map.get(old_in[gi[0]]) == grown and grown % block == 0:
        return [grown // block] + list(dims[1:])
    return None


def _group(old_in, old_out, i, j) -> tuple[list[int], list[int]] | None:
    """The shortest runs from ``i`` and ``j`` with equal products."""
    gi, gj = [i], [j]
    if i >= len(old_in) or j >= len(old_out):
        return None
    pi, pj = old_in[i], old_out[j]
    while pi != pj:
        if pi < pj and gi[-1] + 1 < len(old_in):
            gi.append(gi[-1] + 1)
            pi *= old_in[gi[-1]]
        elif pj < pi and gj[-1] + 1 < len(old_out):
            gj.append(gj[-1] + 1)
            pj *= old_out[gj[-1]]
        else:
            return None
    return gi, gj


def _reshaped(x, target) -> tuple[int, ...] | None:
    """What a Reshape with ``target`` gives for input ``x`` (None when it cannot)."""
    out = [x[k] if d == 0 else int(d) for k, d in enumerate(np.asarray(target).reshape(-1))]
    total = int(np.prod(x))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known <= 0 or total % known:
            return None
        out[out.index(-1)] = total // known
    return tuple(out) if int(np.prod(out)) == total else None


def _ratio(size: int, old: int, new: int, dim_map) -> int:
    if size == old:
        return new
    if size % old == 0:
        return new * (size // old)
    if old % size == 0 and new % (old // size) == 0:
        return new // (old // size)
    return dim_map.get(size) or max(1, round(size * new / old))


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


# ---- declared input / output shapes ------------------------------------------------------------

def _declare(model: onnx.ModelProto, graph: Graph, view: Graph, options: ScaleOptions) -> None:
    """Write the new input and output dims (symbolic dims stay symbolic; a dynamic batch
    becomes the ``batch`` dim parameter) and drop the declared intermediate shapes."""
    for value in model.graph.input:
        if value.name in view.inputs:
            _set_dims(value, view.inputs[value.name], options, batch_axis=True)
    for value in model.graph.output:
        shape = view.shapes.get(value.name)
        if shape is not None:
            _set_dims(value, list(shape), options,
                      batch_axis=_batch_output(value, graph))
    del model.graph.value_info[:]  # stale sizes (and batch); runtimes infer them again


def _check_batch(model: onnx.ModelProto, graph: Graph, view: Graph,
                 inputs: dict[str, list[int]], options: ScaleOptions) -> None:
    """Refuse a batch the model cannot honour (a batch of 1 baked into an index, a
    flattening of the whole tensor): some output would not follow the input batch."""
    if options.batch is None:
        return
    expected, shapes = options.batch, view.shapes
    if options.batch == "dynamic":
        expected = 2
        probe = {name: [2] + dims[1:] if len(dims) >= 2 else dims for name, dims in inputs.items()}
        try:
            shapes = Graph(model, probe).shapes
        except OnnxscaleError as exc:
            raise OnnxscaleError(f"--batch dynamic: the rewritten model fails at batch 2 "
                                 f"({exc})") from exc
    for value in model.graph.output:
        shape = shapes.get(value.name)
        if _batch_output(value, graph) and shape and shape[0] != expected:
            raise OnnxscaleError(f"--batch {options.batch}: output '{value.name}' keeps batch "
                                 f"{shape[0]}; the model bakes its batch size somewhere (an "
                                 f"index or a reshape of the whole tensor) that onnxscale "
                                 f"cannot rewrite")


def _batch_output(value: onnx.ValueInfoProto, graph: Graph) -> bool:
    dims = declared_dims(value) or []
    old = graph.shapes.get(value.name)
    batch = next(iter(graph.inputs.values()))[0] if graph.inputs else 1
    return bool(dims) and (not isinstance(dims[0], int) or (old and old[0] == batch))


def _set_dims(value: onnx.ValueInfoProto, dims: list[int], options: ScaleOptions,
              batch_axis: bool) -> None:
    declared = declared_dims(value)
    if declared is None or len(declared) != len(dims):
        return
    shape = value.type.tensor_type.shape
    for axis, (dim, new) in enumerate(zip(shape.dim, dims)):
        if axis == 0 and batch_axis and options.batch == "dynamic":
            dim.Clear()
            dim.dim_param = BATCH_PARAM
        elif axis == 0 and batch_axis and isinstance(options.batch, int):
            dim.Clear()
            dim.dim_value = options.batch
        elif isinstance(declared[axis], int):
            dim.Clear()
            dim.dim_value = int(new)
