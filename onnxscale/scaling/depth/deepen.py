"""Depth scaling: repeat or remove the blocks of each stage (pycls's rule, stage by stage).

Each stage found by `blocks.find_blocks` gets ``max(1, round(d * n))`` blocks:

- **grow**: new blocks are copies of the stage's last repeatable block, chained after it.  A
  plain block (no skip of its own, PP-LCNet) gets an identity skip in its copies.  A stage
  with a single non-residual block (EfficientNet's first and last stages, a RegNet stage of
  depth 1) grows the way EfficientNet and pycls build repeats: the block *instantiated* with
  stride 1, input width = output width and an identity skip.  Widths that pycls derives from
  the block's input width (Squeeze-Excite, MBConv expansion) follow the new input width;
  whether the expansion does is learnt from the network's other stages.
- **shrink**: the stage's last repeatable blocks are removed (never its transition).

With ``init='preserve'`` a new block starts as the identity (its branch's last conv, BN or
layer scale is zeroed, or its Squeeze-Excite gate closed), so the deeper network computes the
same outputs; with ``init='random'`` new weights are drawn afresh (runtime studies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from ...errors import OnnxscaleError
from ...graph import FLOAT_TYPES, Graph
from ...hollow import Hollow
from ..init import he_normal
from ..ops import spatial_layer, weight_of
from .blocks import channel_axes, find_blocks, instantiation_problem
from .dense import channel_readers
from .structure import Block, Stage
from ..plan import Edit, ScaleOptions
from ..protoedit import (Tensors, copy_model, prune_dead, remove_attribute, set_attribute,
                        update_value_info)
from ..strategy import stage_depth

WINDOW_OPS = {"Conv", "MaxPool", "AveragePool"}
METADATA_READERS = {"Shape", "Size", "Identity", "CastLike"}


def scale_depth(proto: onnx.ModelProto, graph: Graph, d: float, options: ScaleOptions,
                found=None) -> Edit:
    """Set every stage's block count to ``max(1, round(d * n))``; never mutates ``proto``.

    ``found``: the stages of ``graph`` when the caller already has them (`find_blocks`)."""
    found = found or find_blocks(graph)
    if not any(stage.mode for stage in found.stages):
        raise OnnxscaleError("depth: no repeatable blocks found (no residual blocks or stages "
                             "of repeated layers); see `onnxscale blocks MODEL`")
    editor = _Editor(copy_model(proto), graph, options, _expansion_tie(graph, found.stages))
    rows, notes = [], []
    for stage in found.stages:
        rows.append(editor.scale_stage(stage, d, notes))
    model = editor.finish()
    deeper = Graph(model, dict(graph.inputs))
    # a dense block's Concat and its readers grow: their declared shapes (dynamo exports
    # declare every intermediate) must follow, or ORT refuses the file
    update_value_info(model, graph.shapes, deeper.shapes)
    exact = all(row["exact"] for row in rows)
    if options.init == "random" and any(row["new"] > row["old"] for row in rows):
        notes.append("new blocks have random weights (--init random): outputs differ")
    return Edit("depth", model, exact, {"stages": rows}, notes, graph=deeper)


def depth_key(found, d: float, rounding: str = "pycls") -> tuple[int, ...]:
    """Block counts per stage for ``d``: equal keys give the same deepened model."""
    return tuple(stage_depth(d, len(stage.blocks), rounding) if stage.mode
                 else len(stage.blocks) for stage in found.stages)


class _Editor:
    """Accumulates block copies and removals on a copy of the model, then rebuilds its node
    list in topological order (new blocks right after the block they follow)."""

    def __init__(self, model: onnx.ModelProto, graph: Graph, options: ScaleOptions, tie: str):
        self.model, self.graph, self.options, self.tie = model, graph, options, tie
        self.tensors = Tensors(model)
        self.names = self.tensors.names
        self.nodes = {node.name: node for node in model.graph.node}
        self.after: dict[str, list[onnx.NodeProto]] = {}
        self.removed: set[str] = set()
        self.renamed: dict[str, str] = {}
        self.rng = np.random.default_rng(options.seed)

    # ---- per stage ----------------------------------------------------------------------
    def scale_stage(self, stage: Stage, d: float, notes: list[str]) -> dict:
        old = len(stage.blocks)
        wanted = stage_depth(d, old, self.options.rounding)
        new = wanted if stage.mode else old
        row = {"stage": stage.index, "resolution": stage.resolution if stage.shape else "-",
               "width": stage.width, "old": old, "new": new, "mode": stage.mode,
               "exact": True}
        if not stage.mode and wanted != old:
            notes.append(f"stage {stage.index} kept at {old} block(s): {stage.reason}")
        if stage.mode == "dense" and new != old:
            row["exact"] = self._dense_grow(stage, new - old) if new > old else \
                self._dense_shrink(stage, new)
            return row
        if new > old:
            row["new"], row["exact"] = self._grow(stage, new - old, notes)
        elif new < old:
            self._shrink(stage, new)
            row["exact"] = False
        return row

    def _grow(self, stage: Stage, count: int, notes: list[str]) -> tuple[int, bool]:
        """Chain ``count`` copies after the stage's last block: (new block count, exact)."""
        template = stage.repeats[-1] if stage.repeats else stage.blocks[0]
        plan = None
        if stage.mode == "instantiate":
            try:
                plan = _Instance(self.graph, template, self.tie)
            except OnnxscaleError as exc:
                notes.append(f"stage {stage.index} kept at {len(stage.blocks)} block(s): {exc}")
                return len(stage.blocks), True
            width = template.out_shape[1]
            notes.append(f"stage {stage.index}: its single block ({template.in_shape[1]}->"
                         f"{width} channels) was repeated as a stride-1 {width}->{width} "
                         f"instance with an identity skip")
        if template.kind == "module":
            notes.append(f"stage {stage.index}: its blocks have no skip to start a copy as the "
                         f"identity (Inception modules, ShuffleNet units), so {count} cop"
                         f"{'y' if count == 1 else 'ies'} of '{template.first}' .. "
                         f"'{template.last}' {'changes' if count == 1 else 'change'} the "
                         f"function")
        last = stage.blocks[-1]
        anchor = self.graph.producer[last.output].name
        first_input = self.names.fresh(last.output + ".in")
        _rename_output(self.nodes[anchor], last.output, first_input)
        source = first_input
        for copy in range(1, count + 1):
            target = last.output if copy == count else self.names.fresh(f"{last.output}.r{copy}")
            self.after.setdefault(anchor, []).extend(
                self._copy(template, source, target, plan, f".r{copy}"))
            source = target
        return len(stage.blocks) + count, (self.options.init == "preserve"
                                           and template.identity_copy)

    def _dense_grow(self, stage: Stage, count: int) -> bool:
        """Append ``count`` layers to a dense block (`dense.py`): each a copy of the last
        layer reading a new Concat of everything so far, its input path widened; the block
        Concat's readers get zero weights for the new channels (exact with preserve)."""
        graph, template = self.graph, stage.blocks[-1]
        final = graph.node(stage.dense)
        growth = template.out_shape[1]
        inside = channel_readers(graph, template.input)
        inputs = list(final.input)
        new_nodes: list[onnx.NodeProto] = []
        for copy in range(1, count + 1):
            tag = f".d{copy}"
            joined = self.names.fresh(f"{final.output[0]}{tag}.in")
            new_nodes.append(helper.make_node("Concat", list(inputs), [joined], axis=1,
                                              name=self.names.fresh(f"{final.name}{tag}")))
            target = self.names.fresh(template.output + tag)
            clones = self._copy(template, joined, target, None, tag)
            by_name = dict(zip(template.nodes, clones))
            for edit in inside:
                self._widen_input(by_name[edit.node], edit, copy * growth, tag, clones)
            new_nodes += clones
            inputs.append(target)
        self.after.setdefault(graph.producer[template.output].name, []).extend(new_nodes)
        self.nodes[final.name].input.extend(inputs[len(final.input):])
        channels = graph.shapes[final.output[0]][1] + count * growth
        for edit in channel_readers(graph, final.output[0]):
            self._reshape_weight(edit, channels)
        return self.options.init == "preserve"

    def _dense_shrink(self, stage: Stage, new: int) -> bool:
        """Drop a dense block's last layers and the channels they fed its readers."""
        final = self.graph.node(stage.dense)
        dropped = len(stage.blocks) - new
        keep = len(final.input) - dropped
        channels = sum(self.graph.shapes[t][1] for t in final.input[:keep])
        del self.nodes[final.name].input[keep:]
        for edit in channel_readers(self.graph, final.output[0]):
            self._reshape_weight(edit, channels)
        return False

    def _widen_input(self, clone: onnx.NodeProto, edit, count: int, tag: str,
                     clones: list[onnx.NodeProto]) -> None:
        """The copied layer's input path reads ``count`` more channels than the template's;
        every node of the copy that read the old weight (a CastLike reading its type) reads
        the widened one."""
        node = self.graph.node(edit.node)
        source = weight_of(self.graph, node.input[edit.index]) or node.input[edit.index]
        value = self.graph.value(source) if source in self.graph.consts else \
            self.graph.small_value(source)
        channels = (int(np.asarray(value).reshape(-1)[1]) if edit.target
                    else value.shape[edit.axis]) + count
        array = edit.apply(value, channels)
        if self.options.init == "random" and not edit.target:
            array = _random_like(node, edit.index, array, self.rng)
        old, new = clone.input[edit.index], self.tensors.add(array, source + tag)
        for other in clones:
            for i, t in enumerate(other.input):
                if t == old:
                    other.input[i] = new

    def _reshape_weight(self, edit, channels: int) -> None:
        """A reader of a dense block's Concat now sees ``channels`` channels."""
        node = self.graph.node(edit.node)
        source = weight_of(self.graph, node.input[edit.index])
        if source is None:  # a folded computation (a Reshape target built by Concat)
            value = edit.apply(self.graph.small_value(node.input[edit.index]), channels)
            self.nodes[edit.node].input[edit.index] = self.tensors.add(value, node.input[
                edit.index])
            return
        value = edit.apply(self.graph.value(source), channels)
        if _readers(self.graph, source) == [edit.node]:
            self.tensors.set(source, value)
        else:  # legacy exports share equal weights (BN scales at 1) among unrelated layers
            self.nodes[edit.node].input[edit.index] = self.tensors.add(value, source)

    def _shrink(self, stage: Stage, new: int) -> None:
        """Drop the stage's last blocks; what read the stage's output reads the kept one's."""
        kept, last = stage.blocks[new - 1].output, stage.blocks[-1].output
        for block in stage.blocks[new:]:
            self.removed.update(block.nodes)
        self.renamed[kept] = last

    # ---- copying one block ----------------------------------------------------------------
    def _copy(self, block: Block, source: str, target: str, plan: "_Instance | None",
              tag: str) -> list[onnx.NodeProto]:
        """Nodes of one copy of ``block`` reading ``source`` and producing ``target``."""
        graph = self.graph
        skip_added = plan is not None or block.kind == "plain"
        state = _CopyState({block.input: source}, plan, self._fills(block), _roles(graph, block),
                           tag)
        mapping = state.mapping
        dropped = set(block.shortcut) if plan is not None and block.kind == "projection" else set()
        out: list[onnx.NodeProto] = []
        for name in block.nodes:
            node = graph.node(name)
            if name in dropped:
                continue
            if plan is not None and name == block.merge:
                merged = self.names.fresh(node.output[0] + tag)
                out.append(helper.make_node("Add", [source, mapping[block.branch]], [merged],
                                            name=self.names.fresh(name + tag)))
                mapping[node.output[0]] = merged
                continue
            clone = onnx.NodeProto()
            clone.CopyFrom(node)
            clone.name = self.names.fresh(name + tag)
            for i, t in enumerate(node.input):
                clone.input[i] = self._input(node, i, t, state)
            for i, t in enumerate(node.output):
                final = t == block.output and not skip_added
                mapping[t] = clone.output[i] = target if final else (
                    self.names.fresh(t + tag) if t else "")
            if plan is not None:
                plan.adjust(clone, node)
            out.append(clone)
        if skip_added and block.kind != "projection":
            out.append(helper.make_node("Add", [source, mapping[block.output]], [target],
                                        name=self.names.fresh(f"{block.output}.skip{tag}")))
        elif skip_added:  # an instantiated projection block: its last op now makes ``target``
            producer = next(n for n in reversed(out) if mapping[block.output] in n.output)
            producer.output[list(producer.output).index(mapping[block.output])] = target
        return out

    def _fills(self, block: Block) -> dict:
        """Inputs a preserving copy overwrites: zeroed branch ends, unit skip gains; keyed by
        (node, input) and, for weights, by name (a weight's other readers see the same)."""
        if self.options.init != "preserve":
            return {}
        fills: dict = {(n, i): fill for n, i, fill in (block.zero or [])}
        fills.update({(n, i): 1.0 for n, i in block.gains})
        for (name, i), fill in list(fills.items()):
            source = weight_of(self.graph, self.graph.node(name).input[i])
            if source:
                fills[source] = fill
        return fills

    def _input(self, node: onnx.NodeProto, i: int, t: str, state: "_CopyState") -> str:
        """The name a copied node reads for input ``i`` (a copied or new weight, a tensor of
        the copy, or an outside tensor it shares)."""
        graph, mapping, plan, fills, made, tag = (self.graph, state.mapping, state.plan,
                                                  state.fills, state.made, state.tag)
        source = weight_of(graph, t) if t else None
        if source is None and t in mapping:
            return mapping[t]
        if source is None and (node.name, i) in fills:  # a computed bias to overwrite
            shape = plan.input_shape(node, i) if plan else graph.shapes[t]
            dtype = helper.tensor_dtype_to_np_dtype(graph.dtypes.get(t, onnx.TensorProto.FLOAT))
            return self.tensors.add(np.full(shape, fills[(node.name, i)], dtype), t + tag)
        if source is None or (node.op_type == "Identity" and t == source):
            return t  # a weight alias: its readers copy the source, the alias's copy dies
        tensor = graph.consts[source]
        if tensor.data_type not in FLOAT_TYPES:
            return t
        # a weight shared by layers that an instance widens differently (legacy exports share
        # equal biases through Identity nodes) needs one copy per new shape
        layer = (node, i) if node.op_type in SHAPED_BY_READER else state.roles.get(source,
                                                                                     (node, i))
        key = (source, plan.input_shape(*layer)) if plan is not None else (source, None)
        if key in made:
            return made[key]
        if source not in fills and plan is None and self.options.init == "preserve":
            made[key] = self._copy_tensor(tensor, source + tag)
            return made[key]
        array = graph.value(source)
        if plan is not None:
            array = plan.resize(key[1], array)
        if source in fills:
            array = np.full_like(array, fills[source])
        elif self.options.init == "random":
            array = _random_like(*state.roles.get(source, (node, i)), array, self.rng)
        made[key] = self.tensors.add(array, source + tag)
        return made[key]

    def _copy_tensor(self, tensor: onnx.TensorProto, base: str) -> str:
        """A byte copy of a weight under a new name (no numpy round trip: big models)."""
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = self.names.fresh(base)
        self.model.graph.initializer.append(copy)
        return copy.name

    # ---- rebuilding ------------------------------------------------------------------------
    def finish(self) -> onnx.ModelProto:
        graph, model = self.graph, self.model
        self._restore_needed()
        indexed = {node.name for node in graph.nodes}
        order = [node for node in model.graph.node if node.name not in indexed]  # Constants
        for node in graph.nodes:
            if node.name in self.removed:
                continue
            order.append(self.nodes[node.name])
            order.extend(self.after.get(node.name, []))
        for node in order:
            for i, t in enumerate(node.input):
                node.input[i] = self.renamed.get(t, t)
            for i, t in enumerate(node.output):
                node.output[i] = self.renamed.get(t, t)
        del model.graph.node[:]
        model.graph.node.extend(order)
        prune_dead(model)
        produced = {t for node in model.graph.node for t in node.output}
        kept = [v for v in model.graph.value_info if v.name in produced]
        del model.graph.value_info[:]
        model.graph.value_info.extend(kept)
        return model

    def _restore_needed(self) -> None:
        """Keep removed nodes whose results other nodes still read (shared shape arithmetic)."""
        while True:
            live = [n for n in self.graph.nodes if n.name not in self.removed]
            needed = {self.renamed.get(t, t) for n in live for t in n.input}
            needed |= set(self.graph.outputs)
            back = {n.name for n in self.graph.nodes if n.name in self.removed
                    and any(t in needed and t not in self.renamed.values() for t in n.output)}
            if not back:
                return
            self.removed -= back


@dataclass
class _CopyState:
    """What one copy of a block tracks: its tensor names, weights made, overwrites."""

    mapping: dict[str, str]             # original tensor -> the copy's tensor
    plan: "_Instance | None"            # new widths and strides (instantiated repeats)
    fills: dict                         # overwritten inputs (see `_Editor._fills`)
    roles: dict[str, tuple[onnx.NodeProto, int]]  # weight -> the layer input it is
    tag: str
    made: dict[tuple, str] = field(default_factory=dict)  # (weight, new shape) -> its copy


def _roles(graph: Graph, block: Block) -> dict[str, tuple[onnx.NodeProto, int]]:
    """Each weight's layer and input index (not the Shape or Identity nodes that also read
    it): what decides its new shape and its random initialisation."""
    roles: dict[str, tuple[onnx.NodeProto, int]] = {}
    for name in block.nodes:
        node = graph.node(name)
        if node.op_type in METADATA_READERS or name in block.shortcut:
            continue
        for i, t in enumerate(node.input):
            source = weight_of(graph, t) if t else None
            if source:
                roles.setdefault(source, (node, i))
    return roles


def _rename_output(node: onnx.NodeProto, old: str, new: str) -> None:
    for i, t in enumerate(node.output):
        if t == old:
            node.output[i] = new


def _readers(graph: Graph, weight: str) -> list[str]:
    """The nodes that read ``weight``'s values, directly or through Identity nodes (Shape
    readers follow it: dynamo exports compute a zero bias from a weight's shape)."""
    found, stack = [], [weight]
    while stack:
        for node in graph.consumers.get(stack.pop(), []):
            if node.op_type == "Identity":
                stack.append(node.output[0])
            elif node.op_type not in ("Shape", "Size"):
                found.append(node.name)
    return found


# ---- random weights --------------------------------------------------------------------------

def _random_like(node: onnx.NodeProto, index: int, array: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Fresh weights of the same shape: He-normal conv/linear weights, unit BatchNorm, zero
    biases; other constants (activation parameters, layer scales) are kept."""
    op, dtype = node.op_type, array.dtype
    if isinstance(array, Hollow):  # planning: same shape, no values
        return array
    if op in ("Conv", "ConvTranspose", "Gemm", "MatMul") and array.ndim >= 2 and index == 1:
        fan_in = int(np.prod(array.shape[1:])) if op != "MatMul" else array.shape[0]
        return he_normal(rng, array.shape, fan_in, dtype)
    if op in ("Conv", "ConvTranspose", "Gemm") and index == 2:
        return np.zeros_like(array)
    if op == "BatchNormalization":
        return np.full_like(array, 1.0 if index in (1, 4) else 0.0)
    return array


# ---- instantiating a single block as a repeat -------------------------------------------------

# layers whose weight shapes `_Instance.input_shape` derives from the layer itself
SHAPED_BY_READER = ("Conv", "BatchNormalization")


class _Instance:
    """New channel widths and strides for a block re-instantiated with input width = output
    width and stride 1 (the repeat EfficientNet and pycls build for ``depth > 1``)."""

    def __init__(self, graph: Graph, block: Block, tie: str):
        self.graph, self.block = graph, block
        problem = instantiation_problem(graph, block)
        if problem:
            raise OnnxscaleError(problem)
        self.axes = channel_axes(graph, block)  # NHWC exports: axis 3 between Transposes
        self.c_in, self.c_out = self.channels(block.input), self.channels(block.output)
        self.width = self._widths(tie)
        self.groups = self._groups()

    def channels(self, tensor: str) -> int:
        """The channel count of a 4-D tensor of the block, on its own channel axis."""
        return int(self.graph.shapes[tensor][self.axes.get(tensor, 1)])

    def _widths(self, tie: str) -> dict[str, int]:
        """New channel count of every 4-D tensor of the block, by channel group."""
        graph, block = self.graph, self.block
        parent: dict[str, str] = {}

        def find(t: str) -> str:
            while parent.get(t, t) != t:
                t = parent[t]
            return t

        origin: dict[str, onnx.NodeProto] = {}
        skipped = set(block.shortcut)
        for name in block.nodes:
            node = graph.node(name)
            out = node.output[0]
            if name in skipped or not _is_map(graph, out):
                continue
            if node.op_type == "Conv" and not _depthwise(graph, node):
                origin[out] = node
                continue
            for t in node.input:
                if t and t not in graph.consts and _is_map(graph, t) and self.channels(t) > 1:
                    a, b = find(t), find(out)
                    if a != b:
                        parent[a] = b
        widths: dict[str, int] = {}
        roots: dict[str, int] = {find(block.input): self.c_out}
        final = block.branch if block.kind == "projection" else block.output
        roots[find(final)] = self.c_out
        for t, conv in origin.items():
            root = find(t)
            if root in roots:
                continue
            old = self.channels(t)
            pooled = all(d == 1 for d in graph.shapes[conv.input[0]][2:])
            scaled = pooled or tie == "input"
            roots[root] = max(1, round(old * self.c_out / self.c_in)) if scaled else old
        for name in block.nodes:
            for t in list(graph.node(name).input) + list(graph.node(name).output):
                if t and _is_map(graph, t) and t not in graph.consts:
                    widths[t] = roots.get(find(t), self.channels(t))
        return widths

    def _groups(self) -> dict[str, int]:
        """Group counts of the block's convs: depthwise stays depthwise, grouped convs keep
        their group width."""
        graph, groups = self.graph, {}
        for name in self.block.nodes:
            node = graph.node(name)
            if node.op_type != "Conv" or name in self.block.shortcut:
                continue
            c_in, c_out = self.width[node.input[0]], self.width[node.output[0]]
            group = _attr(node, "group", 1)
            if _depthwise(graph, node):
                if c_out != c_in:
                    raise OnnxscaleError(f"depthwise conv '{name}' changes the width")
                group = c_in
            elif group > 1:
                per_group = graph.shapes[node.input[0]][1] // group
                if c_in % per_group or (c_in // per_group and c_out % (c_in // per_group)):
                    raise OnnxscaleError(f"grouped conv '{name}' cannot keep its group width "
                                         f"at {c_in} channels")
                group = c_in // per_group
            groups[name] = group
        return groups

    def input_shape(self, node: onnx.NodeProto, index: int) -> tuple[int, ...]:
        """The new shape of ``node``'s input ``index`` (weights and per-channel constants)."""
        graph = self.graph
        old = tuple(graph.shapes[node.input[index]])
        if node.op_type == "Conv" and index == 1:
            c_in, c_out = self.width[node.input[0]], self.width[node.output[0]]
            return (c_out, c_in // self.groups[node.name]) + old[2:]
        if node.op_type == "Conv" and index == 2:
            return (self.width[node.output[0]],)
        if node.op_type == "BatchNormalization":
            return (self.width[node.input[0]],)
        out = node.output[0]
        if out not in self.width:
            return old
        # a per-channel constant broadcast against the output: [C, 1, 1] under NCHW, [C]
        # under NHWC (aligned from the right)
        axis = len(old) - (4 - self.axes.get(out, 1))
        if 0 <= axis < len(old) and old[axis] == self.channels(out) > 1:
            return old[:axis] + (self.width[out],) + old[axis + 1:]
        return old

    def resize(self, shape: tuple[int, ...], array: np.ndarray) -> np.ndarray:
        """A weight cut or tiled (cyclically) to ``shape``: copies of trained filters."""
        for axis, (new, old) in enumerate(zip(shape, array.shape)):
            if new != old:
                array = np.take(array, np.arange(new) % old, axis=axis)
        return array

    def adjust(self, clone: onnx.NodeProto, node: onnx.NodeProto) -> None:
        """Group count, stride 1 and 'same' padding of a copied conv or pool (an explicit
        Pad before a strided one, as TensorFlow exports write, goes: the copy pads itself)."""
        if node.name in self.groups:
            set_attribute(clone, "group", self.groups[node.name])
        if node.op_type == "Pad" and self._pads_strided(node):
            clone.op_type = "Identity"
            del clone.input[1:]
            del clone.attribute[:]
            return
        if node.op_type not in WINDOW_OPS:
            return
        strides = _attr(node, "strides", None)
        shapes = self.graph.shapes
        keeps_size = shapes[node.input[0]][2:] == shapes[node.output[0]][2:]
        if (not strides or max(strides) == 1) and keeps_size:
            return  # already stride 1 with 'same' padding (a 'valid' conv is not)
        kernel = (_attr(node, "kernel_shape", None)
                  or list(self.graph.shapes[node.input[1]][2:]))
        dilations = _attr(node, "dilations", [1] * len(kernel))
        totals = [d * (k - 1) for k, d in zip(kernel, dilations)]
        set_attribute(clone, "strides", [1] * len(kernel))
        remove_attribute(clone, "auto_pad")
        set_attribute(clone, "pads", [t // 2 for t in totals] + [t - t // 2 for t in totals])


    def _pads_strided(self, pad: onnx.NodeProto) -> bool:
        """Whether ``pad`` feeds (through Transposes) a strided conv or pool of the block."""
        inside = set(self.block.nodes)
        readers = list(self.graph.consumers.get(pad.output[0], []))
        while readers:
            node = readers.pop()
            if node.name not in inside:
                continue
            if node.op_type == "Transpose":
                readers += self.graph.consumers.get(node.output[0], [])
            elif node.op_type in WINDOW_OPS:
                return max(_attr(node, "strides", None) or [1]) > 1
        return False


def _is_map(graph: Graph, tensor: str) -> bool:
    shape = graph.shapes.get(tensor)
    return shape is not None and len(shape) == 4


def _depthwise(graph: Graph, node: onnx.NodeProto) -> bool:
    group = _attr(node, "group", 1)
    weight = graph.shapes.get(node.input[1])
    return group > 1 and weight is not None and weight[1] == 1 and \
        graph.shapes[node.input[0]][1] == group


def _attr(node: onnx.NodeProto, name: str, default):
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _expansion_tie(graph: Graph, stages: list[Stage]) -> str:
    """Whether a block's expansion width follows its input width (MBConv: exp = w_in * ratio)
    or its output width (bottlenecks: w_b = w_out * ratio), learnt from stages that have
    both a transition and repeats; otherwise guessed from divisibility."""
    votes = {"input": 0, "output": 0}
    fallback = "input"
    for stage in stages:
        first, repeat = stage.transition, (stage.repeats or [None])[-1]
        width_t = _expansion(graph, first) if first else None
        if width_t is None:
            continue
        c_in, c_out = first.in_shape[1], first.out_shape[1]
        fallback = "output" if width_t % c_out == 0 else "input"
        width_r = _expansion(graph, repeat) if repeat else None
        if width_r is None or c_in == c_out:
            continue
        if width_r == width_t:
            votes["output"] += 1
        elif width_r * c_in == width_t * c_out:
            votes["input"] += 1
    if votes["input"] == votes["output"]:
        return fallback
    return max(votes, key=votes.get)


def _expansion(graph: Graph, block: Block) -> int | None:
    """Output width of the first dense conv reading the block's input on its main branch."""
    for name in block.nodes:
        node = graph.node(name)
        if (node.op_type == "Conv" and node.input[0] == block.input and name not in
                block.shortcut and spatial_layer(graph, node) and not _depthwise(graph, node)):
            return int(graph.shapes[node.output[0]][1])
    return None
