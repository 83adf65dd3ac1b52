"""Stages and repeatable blocks of a CNN, found on its ONNX graph alone.

Depth scaling needs what a model's source code would say: which layers form a block, which
blocks form a stage, and which blocks can be repeated.  We recover it from the data flow:

1. **Data flow.**  Edges that carry only metadata (``Shape``/``Size`` inputs, ``CastLike``'s
   type template) are ignored, so shape arithmetic never counts as a path between layers.
2. **Spine.**  On the dominator tree of the data flow (ops and tensors as vertices, rooted at the
   inputs) the tensors that dominate the deepest vertex are the *cut tensors* every path from
   the input to the network's deepest point goes through: block boundaries of a classifier, and
   the whole backbone of an FPN detector (whose taps end the global cuts early).  A DAG's
   immediate dominator is the lowest common ancestor of its predecessors', so one pass in
   topological order builds the tree.
3. **Segments** lie between consecutive spine tensors.  A segment whose output is
   ``Add(x, f(x))`` (or ``Add(x * g, f(x))``) with equal shapes is a *residual* block; one whose
   Add merges two computed branches (a projection shortcut) is a *projection* block.
   Elementwise segments right after the Add (ResNet's ReLU) belong to the block.
4. **Pieces and stages.**  Other segments are grouped into chain pieces: in residual networks
   a piece ends at a *linear* output (a conv or BN with no activation after it: where
   MobileNet/EfficientNet blocks end); in networks without residual blocks (PP-LCNet, VGG)
   blocks are the repeating period of the conv sequence.  A stage is a run of blocks with one
   output shape; its first block may be a transition (it changes the shape).

A *repeatable* block can be cloned (residual blocks; plain same-shape blocks get an identity
skip added) and a stage with a single non-residual block can be instantiated as a stride-1,
width-preserving repeat with an identity skip (EfficientNet's first and last stages).
"""

from __future__ import annotations

import numpy as np
import onnx

from ...graph import Graph
from ..ops import LAYER_OPS, POINTWISE, data_inputs, spatial_layer, weight_of
from .dense import find_dense_stages
from .structure import Block, BlockMap, Stage

MERGE_OPS = {"Add", "Sum"}
SKIP_OPS = {"Mul", "Div", "Identity", "Dropout"}          # a skip may carry a constant gain
AFFINE = {"BatchNormalization", "Identity", "Dropout", "Mul", "Add", "Sub", "Div"}
POOL_OPS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Flatten",
            "ReduceMean"}
# Ops that map an all-zero tensor to zeros: a zeroed branch stays zero through them.
ZERO_THROUGH = {"Identity", "Dropout", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze",
                "Relu", "LeakyRelu", "Tanh", "Gelu", "HardSwish", "Erf", "Slice", "Resize",
                "MaxPool", "AveragePool", "Mish", "Elu", "Selu", "Celu", "PRelu"}
ROOT = ("root",)
SATURATE = -1.0e4   # a gate's pre-activation bias that makes Sigmoid/HardSigmoid exactly 0
# Ops whose channel dimension an instantiated block may change (Transpose and Pad: NHWC
# exports wrap each conv in Transposes and pad explicitly before strided ones).
INSTANTIABLE = ({"Conv", "BatchNormalization", "GlobalAveragePool", "ReduceMean", "MaxPool",
                 "AveragePool", "Transpose", "Pad"} | POINTWISE)


class _Flow:
    """The data flow of a graph: on-path ops, dominator tree, spine and segments."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.pos = {node.name: i for i, node in enumerate(graph.nodes)}
        self.ins = {node.name: data_inputs(graph, node) for node in graph.nodes}
        self.reached, self.on_path = self._on_path()

    def _on_path(self) -> tuple[set[str], set[str]]:
        """Ops on some path from a graph input to a graph output (tensors reached, ops)."""
        graph, reached, forward = self.graph, set(self.graph.inputs), set()
        for node in graph.nodes:
            if any(t in reached for t in self.ins[node.name]):
                forward.add(node.name)
                reached.update(t for t in node.output if t)
        needed, ops = set(graph.outputs), set()
        for node in reversed(graph.nodes):
            if node.name in forward and any(t in needed for t in node.output):
                ops.add(node.name)
                needed.update(t for t in self.ins[node.name] if t in reached)
        return reached & needed, ops

    def spine(self) -> list[str]:
        """The spine's tensors, input first.

        The tensors dominating the graph's outputs are its global cuts: the spine of a
        classifier.  In a detector whose backbone feeds an FPN, the cuts stop at the first tap;
        there the tensors dominating the deepest vertex (the backbone, down to the top of the
        FPN) are the spine instead.  We take the deeper chain only when it goes on through a
        downsampling layer, so the branch of a classifier's last block never counts.
        """
        parent: dict[tuple, tuple] = {}
        depth: dict[tuple, int] = {ROOT: 0}
        for name in self.graph.inputs:
            parent[("t", name)], depth[("t", name)] = ROOT, 1
        deepest = ROOT
        for node in self.graph.nodes:
            if node.name not in self.on_path:
                continue
            key = ("o", node.name)
            top = self._common([("t", t) for t in self.ins[node.name] if ("t", t) in depth],
                               parent, depth)
            parent[key], depth[key] = top, depth[top] + 1
            for t in node.output:
                if t in self.reached:
                    parent[("t", t)], depth[("t", t)] = key, depth[key] + 1
                    if depth[("t", t)] >= depth[deepest]:
                        deepest = ("t", t)
        outputs = [("t", t) for t in self.graph.outputs if ("t", t) in depth]
        cuts = _tensor_chain(self._common(outputs, parent, depth), parent)
        deep = _tensor_chain(deepest, parent)
        common = len([1 for a, b in zip(cuts, deep) if a == b])
        if any(self._downsamples(t) for t in deep[common:]):
            return deep
        return cuts

    @staticmethod
    def _common(keys: list[tuple], parent: dict, depth: dict) -> tuple:
        """The nearest common dominator of ``keys`` (their lowest common ancestor)."""
        if not keys:
            return ROOT
        top = keys[0]
        for other in keys[1:]:
            top = _lca(top, other, parent, depth)
        return top

    def _downsamples(self, tensor: str) -> bool:
        node = self.graph.producer.get(tensor)
        if node is None or node.op_type not in ("Conv", "MaxPool", "AveragePool"):
            return False
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
        return max(strides) > 1

    def segment(self, start: str, end: str) -> list[str]:
        """Ops on paths from tensor ``start`` to tensor ``end`` (``start`` dominates ``end``)."""
        producer, found = self.graph.producer, []
        stack, seen = [producer[end].name], {producer[end].name}
        while stack:
            name = stack.pop()
            found.append(name)
            for t in self.ins[name]:
                if t == start or t not in self.reached or t not in producer:
                    continue
                source = producer[t].name
                if source not in seen:
                    seen.add(source)
                    stack.append(source)
        return sorted(found, key=self.pos.__getitem__)

    def side_nodes(self, owner: dict[str, int]) -> dict[int, list[str]]:
        """Off-path nodes (shape arithmetic, constant chains) by the segment that uses them."""
        side: dict[int, list[str]] = {}
        for node in reversed(self.graph.nodes):
            if node.name in owner:
                continue
            users = [owner[c.name] for t in node.output if t
                     for c in self.graph.consumers.get(t, []) if c.name in owner]
            if users:
                owner[node.name] = min(users)
                side.setdefault(owner[node.name], []).append(node.name)
        return {k: sorted(v, key=self.pos.__getitem__) for k, v in side.items()}


def _tensor_chain(key: tuple, parent: dict) -> list[str]:
    """The tensors dominating ``key`` (and ``key`` itself if a tensor), root first."""
    chain = []
    while key != ROOT:
        if key[0] == "t":
            chain.append(key[1])
        key = parent[key]
    return chain[::-1]


def _lca(u: tuple, v: tuple, parent: dict, depth: dict) -> tuple:
    while u != v:
        if depth[u] >= depth[v]:
            u = parent[u]
        else:
            v = parent[v]
    return u


# ---- segment classification ---------------------------------------------------------------

def skip_path(graph: Graph, tensor: str, start: str) -> list[onnx.NodeProto] | None:
    """The ops (constant gains, identities) from ``start`` to ``tensor``, or None."""
    ops: list[onnx.NodeProto] = []
    while tensor != start:
        node = graph.producer.get(tensor)
        if node is None or node.op_type not in SKIP_OPS:
            return None
        data = data_inputs(graph, node)
        if len(data) != 1 or (node.op_type == "Div" and node.input[0] != data[0]):
            return None
        ops.append(node)
        tensor = data[0]
    return ops[::-1]


def _merge(graph: Graph, start: str, end: str) -> dict | None:
    """How segment ``start -> end`` merges: a residual or projection Add, or None."""
    node = graph.producer[end]
    if node.op_type not in MERGE_OPS:
        return None
    data = data_inputs(graph, node)
    if len(data) != 2 or data[0] == data[1]:
        return None
    paths = [skip_path(graph, t, start) for t in data]
    skips = [i for i, p in enumerate(paths) if p is not None]
    if len(skips) == 1 and graph.shapes.get(start) == graph.shapes.get(end):
        gains = [(op.name, i) for op in paths[skips[0]] if op.op_type in ("Mul", "Div")
                 for i, t in enumerate(op.input) if t and weight_of(graph, t)]
        return {"kind": "residual", "merge": node.name, "branch": data[1 - skips[0]],
                "shortcut": [op.name for op in paths[skips[0]]], "gains": gains}
    if not skips:
        return {"kind": "projection", "merge": node.name, "inputs": data}
    return None


def _elementwise(graph: Graph, ops: list[str], start: str, end: str) -> bool:
    """A segment of activations only (it may follow a merge as the block's post-op)."""
    return (graph.shapes.get(start) == graph.shapes.get(end)
            and all(graph.node(n).op_type in POINTWISE for n in ops))


def linear_output(graph: Graph, tensor: str) -> bool:
    """Whether ``tensor`` is a conv/linear output through BN, affine constants or a
    Transpose (NHWC exports transpose every conv output back) only."""
    node = graph.producer.get(tensor)
    while node is not None and (node.op_type in AFFINE or node.op_type == "Transpose"):
        data = data_inputs(graph, node)
        if len(data) != 1:
            return False
        node = graph.producer.get(data[0])
    return node is not None and node.op_type in LAYER_OPS


# ---- zero plans: how to make a copy of a branch output exactly zero ------------------------

def zero_plan(graph: Graph, tensor: str, start: str, depth: int = 0
              ) -> list[tuple[str, int, float]] | None:
    """Inputs to overwrite (node, index, fill) so that ``tensor`` becomes all zeros.

    We walk back from the branch output through ops that keep zeros zero (ReLU, transposes,
    SiLU's multiply) to the last layer that has weights: a conv or linear layer (weight and bias
    to 0), a normalization (scale and bias to 0), a constant scale (ConvNeXt's layer scale), or
    a gate (Squeeze-Excite's sigmoid, driven to exactly 0 by a very negative bias).
    """
    node = graph.producer.get(tensor)
    if tensor == start or node is None or depth > 64:
        return None
    op = node.op_type
    consts = [i for i, t in enumerate(node.input) if t and weight_of(graph, t)]
    data = [i for i, t in enumerate(node.input) if t and i not in consts]
    if op in ("Conv", "ConvTranspose", "Gemm"):
        return [(node.name, i, 0.0) for i in range(1, len(node.input)) if node.input[i]]
    if op in ("BatchNormalization", "LayerNormalization", "InstanceNormalization",
              "GroupNormalization"):
        return [(node.name, i, 0.0) for i in (1, 2) if i < len(node.input) and node.input[i]]
    if op in ("Sigmoid", "HardSigmoid"):
        return _saturate(graph, node.input[0])
    if op in ("MatMul", "Mul") and consts:
        return [(node.name, consts[0], 0.0)]
    if op in ("Add", "Sub") and consts:
        inner = zero_plan(graph, node.input[data[0]], start, depth + 1) if data else []
        return None if inner is None else inner + [(node.name, consts[0], 0.0)]
    if op == "Concat" or (op in ("Add", "Sub", "Sum") and len(data) > 1):
        plans = [zero_plan(graph, node.input[i], start, depth + 1) for i in data]
        return None if any(p is None for p in plans) else [z for p in plans for z in p]
    if op in ("Mul", "MatMul"):
        for i in data:
            plan = zero_plan(graph, node.input[i], start, depth + 1)
            if plan is not None:
                return plan
        return None
    if op in ZERO_THROUGH or op == "Div" or (op == "Clip" and _clip_keeps_zero(graph, node)):
        return zero_plan(graph, node.input[0], start, depth + 1)
    return None


def _saturate(graph: Graph, tensor: str) -> list[tuple[str, int, float]] | None:
    """Drive a gate's input to a large negative value: weight 0, bias SATURATE."""
    node = graph.producer.get(tensor)
    if node is None or node.op_type not in ("Conv", "Gemm") or len(node.input) < 3:
        return None
    return [(node.name, 1, 0.0), (node.name, 2, SATURATE)]


def _clip_keeps_zero(graph: Graph, node: onnx.NodeProto) -> bool:
    bounds = [graph.small_value(t) if t else None for t in node.input[1:3]]
    low = -np.inf if not bounds or bounds[0] is None else float(np.asarray(bounds[0]))
    high = np.inf if len(bounds) < 2 or bounds[1] is None else float(np.asarray(bounds[1]))
    for attr in node.attribute:  # opset < 11 keeps the bounds as attributes
        if attr.name == "min":
            low = attr.f
        elif attr.name == "max":
            high = attr.f
    return low <= 0 <= high


# ---- discovery ------------------------------------------------------------------------------

def find_blocks(graph: Graph) -> BlockMap:
    """Stages, blocks and the other pieces (stem, head, transitions) of ``graph``'s spine."""
    flow = _Flow(graph)
    spine = flow.spine()
    segments = [flow.segment(a, b) for a, b in zip(spine, spine[1:])]
    owner = {name: k for k, ops in enumerate(segments) for name in ops}
    side = flow.side_nodes(owner)
    pieces = _pieces(graph, spine, segments)
    for piece in pieces:
        if piece.nodes:
            piece.first, piece.last = piece.nodes[0], piece.nodes[-1]
        piece.nodes = _with_side_nodes(piece, segments, side, owner, flow.pos)
        _finish(graph, piece)
    stages = _stages(graph, pieces)
    stages += _nested_stages(graph, flow, pieces, stages, len(stages))
    stages += find_dense_stages(graph, len(stages))
    if not any(stage.mode for stage in stages):
        modules = _modules(graph, spine, segments, side, owner, flow.pos)
        stages += _module_stages(graph, modules, len(stages))
    return BlockMap(stages, pieces, spine)


def _with_side_nodes(piece: Block, segments, side, owner, pos) -> list[str]:
    ks = sorted({owner[name] for name in piece.nodes})
    names = [n for k in ks for n in segments[k]] + [n for k in ks for n in side.get(k, [])]
    return sorted(names, key=pos.__getitem__)


def _pieces(graph: Graph, spine: list[str], segments: list[list[str]]) -> list[Block]:
    """Residual/projection pieces (with their post-ops) and chain pieces, in spine order."""
    merges = [_merge(graph, a, b) for a, b in zip(spine, spine[1:])]
    pieces: list[Block] = []
    run: list[int] = []
    k = 0
    while k < len(segments):
        if merges[k] is None:
            run.append(k)
            k += 1
            continue
        pieces += _chain_pieces(graph, spine, segments, run, first=not pieces)
        run = []
        end = k + 1
        while (end < len(segments) and merges[end] is None
               and _elementwise(graph, segments[end], spine[end], spine[end + 1])):
            end += 1
        pieces.append(_merge_piece(graph, spine, segments, k, end, merges[k]))
        k = end
    pieces += _chain_pieces(graph, spine, segments, run, first=not pieces, last=True)
    return pieces


def _merge_piece(graph, spine, segments, k, end, merge) -> Block:
    nodes = [n for j in range(k, end) for n in segments[j]]
    post = [n for j in range(k + 1, end) for n in segments[j]]
    piece = Block(merge["kind"], spine[k], spine[end], nodes, graph.shapes.get(spine[k]),
                  graph.shapes.get(spine[end]), merge=merge["merge"], post=post,
                  post_ops=[graph.node(n).op_type for n in post])
    if merge["kind"] == "residual":
        piece.branch, piece.shortcut, piece.gains = (merge["branch"], merge["shortcut"],
                                                     merge["gains"])
    else:
        piece.branch, piece.shortcut = _main_branch(graph, piece, merge["inputs"])
    return piece


def _main_branch(graph: Graph, piece: Block, inputs: list[str]) -> tuple[str, list[str]]:
    """The projection block's main branch (more layers) and its shortcut's nodes."""
    inside = set(piece.nodes)
    counts = _layer_counts(graph, piece.nodes)

    def layers(tensor: str) -> int:
        producer = graph.producer.get(tensor)
        return counts.get(producer.name, 0) if producer else 0

    main, other = sorted(inputs, key=layers, reverse=True)
    keep = _ancestors(graph, main, piece.input, inside)
    shortcut = [n for n in _ancestors(graph, other, piece.input, inside) if n not in keep]
    return main, shortcut


def _ancestors(graph: Graph, tensor: str, stop: str, inside: set[str]) -> set[str]:
    found, stack = set(), [tensor]
    while stack:
        t = stack.pop()
        node = graph.producer.get(t)
        if t == stop or node is None or node.name not in inside or node.name in found:
            continue
        found.add(node.name)
        stack.extend(node.input)
    return found


def _layer_counts(graph: Graph, names: list[str]) -> dict[str, int]:
    """Spatial layers on the longest path ending at each node (names in topological order)."""
    counts: dict[str, int] = {}
    for name in names:
        node = graph.node(name)
        before = [counts.get(graph.producer[t].name, 0) for t in node.input
                  if t in graph.producer]
        counts[name] = max(before, default=0) + spatial_layer(graph, node)
    return counts


def _chain_pieces(graph, spine, segments, run: list[int], first=False, last=False
                  ) -> list[Block]:
    """Pieces of a run of plain segments: the stem (the first layer and what follows it up to
    the next layer), repeating periods of layers, then pieces ending at linear outputs; the
    run that ends the spine ends in the head."""
    pieces: list[Block] = []
    if first and run and run[0] == 0:
        layered = [k for k in run if _has_layer(graph, segments[k])]
        size = run.index(layered[1]) if len(layered) > 1 else len(run)
        pieces.append(_piece(graph, "stem", spine, segments, run[:size]))
        run = run[size:]
    groups, run = _periodic(graph, spine, segments, run)
    pieces += [_piece(graph, "plain", spine, segments, ks) for ks in groups]
    cuts: list[list[int]] = []
    for k in run:
        if not cuts or (_has_layer(graph, segments[k]) and linear_output(graph, spine[k])):
            cuts.append([])
        cuts[-1].append(k)
    for i, ks in enumerate(cuts):
        kind = "head" if last and i == len(cuts) - 1 else "chain"
        pieces.append(_piece(graph, kind, spine, segments, ks))
    return pieces


def _piece(graph: Graph, kind: str, spine, segments, ks: list[int]) -> Block:
    start, end = spine[ks[0]], spine[ks[-1] + 1]
    return Block(kind, start, end, [n for k in ks for n in segments[k]],
                 graph.shapes.get(start), graph.shapes.get(end))


def _has_layer(graph: Graph, names: list[str]) -> bool:
    return any(spatial_layer(graph, graph.node(n)) for n in names)


def _periodic(graph: Graph, spine, segments, run: list[int]
              ) -> tuple[list[list[int]], list[int]]:
    """Blocks of networks without skips (PP-LCNet, VGG): the repeating period of their layer
    kinds (depthwise, pointwise, dense), at least three layers long, on feature maps (not
    past a global pool).  Returns the blocks (as segment indices) and the segments left."""
    maps = next((n for n, k in enumerate(run) if not _spatial_map(graph, spine[k + 1])),
                len(run))
    units: list[list[int]] = []
    for k in run[:maps]:
        if not units or _has_layer(graph, segments[k]):
            units.append([])
        units[-1].append(k)
    kinds = [_kind(graph, [n for k in u for n in segments[k]]) for u in units]
    best, covered = 1, 0
    for p in (1, 2, 3):
        n = 0
        while len(kinds[n:n + p]) == p and kinds[n:n + p] == kinds[:p] and () not in kinds[:p]:
            n += p
        if n >= max(3, 2 * p) and n > covered:
            best, covered = p, n
    groups = [[k for u in units[i:i + best] for k in u] for i in range(0, covered, best)]
    rest = [k for u in units[covered:] for k in u] + run[maps:]
    return groups, rest


def _spatial_map(graph: Graph, tensor: str) -> bool:
    shape = graph.shapes.get(tensor)
    return shape is not None and len(shape) == 4 and shape[2] * shape[3] > 1


def _kind(graph: Graph, unit: list[str]) -> tuple[str, ...]:
    """The unit's layers as depthwise / pointwise / dense convs (or op types)."""
    kinds = []
    for name in unit:
        node = graph.node(name)
        if not spatial_layer(graph, node):
            continue
        if node.op_type != "Conv":
            kinds.append(node.op_type)
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w = graph.shapes[node.input[1]]
        kinds.append("dw" if group > 1 and w[1] == 1 else "pw" if w[2:] == (1, 1) else "conv")
    return tuple(kinds)


def _finish(graph: Graph, piece: Block) -> None:
    """Layer count, zero plan and block-likeness of a piece."""
    counts = _layer_counts(graph, piece.nodes)
    tail = piece.branch if piece.branch else piece.output
    producer = graph.producer.get(tail)
    piece.layers = counts.get(producer.name, 0) if producer else 0
    if piece.kind == "chain" and not (piece.layers >= 2 and linear_output(graph, piece.output)):
        piece.kind = "other"
    if piece.kind == "residual" and piece.layers == 0:
        piece.kind, piece.note = "other", "residual attention without conv layers"
    if piece.kind == "plain" and piece.in_shape != piece.out_shape:
        piece.kind = "chain"
    if piece.kind in ("residual", "plain", "chain", "projection"):
        piece.zero = zero_plan(graph, tail, piece.input)


def _stages(graph: Graph, pieces: list[Block]) -> list[Stage]:
    """Runs of blocks with one output shape; a leading shape-changing block is a transition."""
    stages: list[Stage] = []
    current: Stage | None = None
    for piece in pieces:
        if piece.kind in ("stem", "head", "other"):
            current = None
            continue
        repeat = piece.kind in ("residual", "plain")
        if current is not None and repeat and piece.out_shape == current.shape:
            current.blocks.append(piece)
            continue
        current = Stage(len(stages), [piece])
        stages.append(current)
    for stage in stages:
        _stage_mode(graph, stage)
        last = stage.blocks[-1]
        stage.channel_axis = channel_axes(graph, last).get(last.output, 1) \
            if last.out_shape is not None and len(last.out_shape) == 4 else 1
    return stages


def _stage_mode(graph: Graph, stage: Stage) -> None:
    if stage.repeats:
        stage.mode = "clone"
        return
    block = stage.blocks[0]
    problem = instantiation_problem(graph, block)
    if problem:
        stage.reason = problem
        return
    stage.mode = "instantiate"


def instantiation_problem(graph: Graph, block: Block) -> str:
    """Why ``block`` cannot be re-instantiated as a stride-1 repeat ("" when it can)."""
    if block.in_shape is None or block.out_shape is None or len(block.out_shape) != 4:
        return "not a 4-D (NCHW) block"
    axes = channel_axes(graph, block)
    if block.input not in axes or block.output not in axes:
        return "its channel axis cannot be told (no conv fixes its layout)"
    if axes[block.input] != axes[block.output]:
        return (f"it reads channels on axis {axes[block.input]} and writes them on axis "
                f"{axes[block.output]} (a Transpose inside): a copy cannot read its output")
    shortcut = set(block.shortcut)
    for name in block.nodes:
        node = graph.node(name)
        if name in shortcut or name == block.merge or name in block.post:
            continue
        shape = graph.shapes.get(node.output[0]) if node.output else None
        if shape is not None and len(shape) == 4 and node.op_type not in INSTANTIABLE:
            return (f"its {node.op_type} node '{name}' cannot be rebuilt at another width "
                    f"or stride")
        if node.op_type == "Conv" and len(graph.shapes.get(node.input[1]) or ()) != 4:
            return f"conv '{name}' is not 2-D"
    if block.zero is None:
        return "no layer at its end can be zeroed for an identity start"
    return ""


def channel_axes(graph: Graph, block: Block) -> dict[str, int]:
    """The channel axis of every 4-D tensor of ``block``: 1 at every conv (NCHW), moved by
    each Transpose (NHWC exports wrap every conv in a pair), kept by every other op."""
    axes: dict[str, int] = {}
    nodes = [graph.node(name) for name in block.nodes]
    for node in nodes:
        if node.op_type == "Conv":
            axes[node.input[0]] = axes[node.output[0]] = 1
    for _ in range(len(nodes)):
        before = len(axes)
        for node in nodes:
            maps = [t for t in node.input[:1] if _rank(graph, t) == 4]
            out = node.output[0]
            if not maps or _rank(graph, out) != 4:
                continue
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if node.op_type == "Transpose" and perm:
                if maps[0] in axes:
                    axes.setdefault(out, perm.index(axes[maps[0]]))
                if out in axes:
                    axes.setdefault(maps[0], perm[axes[out]])
            elif node.op_type != "Conv":
                for t in node.input:
                    if _rank(graph, t) == 4 and (t in axes or out in axes):
                        axes.setdefault(out, axes.get(t, axes.get(out)))
                        axes.setdefault(t, axes[out])
        if len(axes) == before:
            break
    return axes


def _rank(graph: Graph, tensor: str) -> int:
    shape = graph.shapes.get(tensor) if tensor else None
    return len(shape) if shape is not None else -1


# ---- same-shape modules without a skip (Inception, ShuffleNet units) -----------------------

def _modules(graph: Graph, spine, segments, side, owner, pos) -> list[Block]:
    """Spans of the spine from one tensor of a 4-D shape to the next of the same shape that
    hold a spatial layer (spans without one join the span after them): an Inception module,
    a ShuffleNet unit with its channel shuffle.  Only looked for in networks with no other
    repeatable block, so the stages of networks that have them never change."""
    modules: list[Block] = []
    last_at: dict[tuple, int] = {}
    pending: dict[tuple, int] = {}
    for j, tensor in enumerate(spine):
        shape = graph.shapes.get(tensor)
        if shape is None or len(shape) != 4 or shape[2] * shape[3] <= 1:
            continue
        if shape in last_at:
            i = pending.get(shape, last_at[shape])
            ks = list(range(i, j))
            if any(_has_layer(graph, segments[k]) for k in ks):
                names = [n for k in ks for n in segments[k]] + \
                    [n for k in ks for n in side.get(k, [])]
                block = Block("module", spine[i], tensor, sorted(names, key=pos.__getitem__),
                              shape, shape)
                block.first, block.last = segments[ks[0]][0], segments[ks[-1]][-1]
                block.layers = max(_layer_counts(graph, block.nodes).values(), default=0)
                modules.append(block)
                pending.pop(shape, None)
            else:
                pending.setdefault(shape, last_at[shape])
        last_at[shape] = j
    return modules


def _module_stages(graph: Graph, modules: list[Block], first_index: int) -> list[Stage]:
    """Chains of modules (one's output the next one's input) with one shape: stages whose
    copies repeat the last module as it is (no skip to start it as the identity)."""
    stages: list[Stage] = []
    for block in modules:
        stage = stages[-1] if stages else None
        if stage is not None and stage.blocks[-1].output == block.input:
            stage.blocks.append(block)
        else:
            stages.append(Stage(first_index + len(stages), [block], mode="clone"))
    return stages


# ---- residual blocks nested inside a branch (CSP, YOLO C3/C2f) -----------------------------

NESTED_WALK_LIMIT = 400  # ops a branch may have before we stop looking for its skip


def _nested_stages(graph: Graph, flow: _Flow, pieces: list[Block], stages: list[Stage],
                   first_index: int) -> list[Stage]:
    """Residual blocks off the spine: ``Add(x, f(x))`` where ``x`` dominates ``f(x)`` inside
    a branch (a CSP stage's bottlenecks run on one half of its channels, then concatenate
    with the other half; the spine only sees the whole CSP stage).  Consecutive ones (one's
    output the next one's input) form a stage of their own, repeated in place like a spine
    stage: copies chain after its last block and what read that block's output reads the
    last copy's."""
    taken = {name for piece in pieces if piece.kind in ("residual", "projection")
             for name in (piece.merge,)}
    scaled = {name for stage in stages if stage.mode for block in stage.blocks
              for name in block.nodes}
    blocks = []
    for node in graph.nodes:
        if node.op_type not in MERGE_OPS or node.name in taken or node.name in scaled \
                or node.name not in flow.on_path:
            continue
        block = _nested_block(graph, flow, node)
        if block is not None and not scaled.intersection(block.nodes):
            blocks.append(block)
    by_input = {block.input: block for block in blocks}
    starts = [b for b in blocks if not any(o.output == b.input for o in blocks)]
    nested = []
    for start in starts:
        chain = [start]
        while chain[-1].output in by_input and len(chain) <= len(blocks):
            chain.append(by_input[chain[-1].output])
        stage = Stage(first_index + len(nested), chain, mode="clone", nested=True)
        nested.append(stage)
    return nested


def _nested_block(graph: Graph, flow: _Flow, merge: onnx.NodeProto) -> Block | None:
    data = data_inputs(graph, merge)
    if len(data) != 2 or data[0] == data[1]:
        return None
    for skip, branch in (data, data[::-1]):
        ops = _skip_ops(graph, skip)
        start = data_inputs(graph, ops[0])[0] if ops else skip
        if graph.shapes.get(start) != graph.shapes.get(merge.output[0]):
            continue
        inside = _dominated(graph, flow, start, branch)
        if inside is None or not any(spatial_layer(graph, graph.node(n)) for n in inside):
            continue
        post, end = _post_ops(graph, merge.output[0])
        nodes = sorted(set(inside) | {op.name for op in ops} | {merge.name} | set(post),
                       key=flow.pos.__getitem__)
        block = Block("residual", start, end, nodes, graph.shapes.get(start),
                      graph.shapes.get(end), merge=merge.name, branch=branch,
                      shortcut=[op.name for op in ops], post=post,
                      post_ops=[graph.node(n).op_type for n in post],
                      note="nested in a branch")
        block.gains = [(op.name, i) for op in ops if op.op_type in ("Mul", "Div")
                       for i, t in enumerate(op.input) if t and weight_of(graph, t)]
        block.first, block.last = nodes[0], nodes[-1]
        _finish(graph, block)
        return block if block.kind == "residual" else None
    return None


def _skip_ops(graph: Graph, tensor: str) -> list[onnx.NodeProto]:
    """Constant gains or identities a skip goes through (innermost first)."""
    ops = []
    node = graph.producer.get(tensor)
    while node is not None and node.op_type in SKIP_OPS and len(data_inputs(graph, node)) == 1:
        ops.append(node)
        node = graph.producer.get(data_inputs(graph, node)[0])
    return ops[::-1]


def _dominated(graph: Graph, flow: _Flow, start: str, end: str) -> list[str] | None:
    """The ops between ``start`` and ``end`` when every path into ``end`` comes from
    ``start`` (None otherwise, or past NESTED_WALK_LIMIT ops); the ops must not be read from
    outside (apart from ``end``), so a copy of them is self-contained."""
    found, stack, seen = [], [end], set()
    while stack:
        t = stack.pop()
        if t == start:
            continue
        node = graph.producer.get(t)
        if node is None:
            return None  # a graph input: ``start`` does not dominate ``end``
        if node.name in seen:
            continue
        seen.add(node.name)
        found.append(node.name)
        if len(found) > NESTED_WALK_LIMIT:
            return None
        stack.extend(flow.ins[node.name])
    for name in found:
        for t in graph.node(name).output:
            if t != end and any(c.name not in seen for c in graph.consumers.get(t, [])
                                if c.name in flow.on_path):
                return None
    return found


def _post_ops(graph: Graph, tensor: str) -> tuple[list[str], str]:
    """Elementwise single-input ops right after a merge (ResNet's ReLU): part of the block."""
    post = []
    while True:
        readers = graph.consumers.get(tensor, [])
        if len(readers) != 1 or readers[0].op_type not in POINTWISE or \
                len(data_inputs(graph, readers[0])) != 1 or \
                graph.shapes.get(readers[0].output[0]) != graph.shapes.get(tensor):
            return post, tensor
        post.append(readers[0].name)
        tensor = readers[0].output[0]


# ---- listing --------------------------------------------------------------------------------

def describe(found: BlockMap) -> dict:
    """A JSON-able view of the stages and pieces (``onnxscale blocks --json``)."""
    stages = []
    for stage in found.stages:
        stages.append({
            "index": stage.index, "resolution": stage.resolution, "width": stage.width,
            "depth": len(stage.blocks), "scalable": bool(stage.mode), "mode": stage.mode,
            "reason": stage.reason, "nested": stage.nested,
            "blocks": [_describe_block(stage, block) for block in stage.blocks]})
    return {"stages": stages, "pieces": [_piece_entry(p) for p in found.pieces],
            "spine_tensors": len(found.spine)}


def _piece_entry(block: Block) -> dict:
    entry = {"kind": block.kind, "first": block.first, "last": block.last,
             "nodes": len(block.nodes), "input": block.input, "output": block.output,
             "in_shape": list(block.in_shape) if block.in_shape else None,
             "out_shape": list(block.out_shape) if block.out_shape else None,
             "layers": block.layers}
    if block.note:
        entry["note"] = block.note
    return entry


def _describe_block(stage: Stage, block: Block) -> dict:
    entry = _piece_entry(block)
    entry["repeatable"], entry["why"] = _why(stage, block)
    entry["identity_copy"] = block.identity_copy
    return entry


def _why(stage: Stage, block: Block) -> tuple[bool, str]:
    """Whether depth scaling repeats this block, and why (not)."""
    if block.kind == "residual":
        how = ("copies start as the identity" if block.identity_copy else
               "copies cannot start as the identity (" + (
                   "non-idempotent op after the skip add" if block.zero is not None else
                   "no layer at the end of the branch can be zeroed") + ")")
        where = " nested in a branch (off the spine)" if block.note == "nested in a branch" \
            else ""
        return True, f"residual x + f(x){where}; {how}"
    if block.kind == "plain":
        return True, "same input and output shape; copies get an identity skip"
    if block.kind == "dense":
        return True, ("dense layer: a new layer reads every earlier output and joins the "
                      "concat; the concat's readers get zero weights for it: exact")
    if block.kind == "module":
        return True, ("same input and output shape, no skip: copies repeat it as it is "
                      "(the function changes)")
    if stage.mode == "instantiate":
        return True, ("single block of its stage: repeated as a stride-1, width-preserving "
                      "instance with an identity skip")
    if stage.mode == "clone":
        return False, "transition: changes the shape (stride or width), kept once"
    return False, stage.reason
