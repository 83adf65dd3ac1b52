"""Channel groups: the sets of channels that must be widened together, found on the ONNX graph.

One forward pass over the ops (in topological order) gives every feature-map tensor a *layout*:
the axis that carries its channels and the pieces (`channels.Piece`) that axis is made of.
Each op rule says what the op does to channels:

- conv / linear layers (Conv, ConvTranspose, Gemm, MatMul with a constant weight) create a new
  atom; depthwise convs keep their input's pieces (input and output are one group); grouped
  convs are *tied* (the number of groups links input and output widths);
- pass-through ops (BN, activations, pooling, Resize, Pad, Cast, Dropout, ...) keep the layout;
- elementwise ops with broadcasting (residual Add, Squeeze-Excite gates ``[N,C,1,1] * [N,C,H,W]``)
  make their inputs' pieces equal; a constant operand with a full channel dim is a per-channel
  parameter (bias, scale) to rewrite;
- Concat / Split / Slice / SplitToSequence place ranges; Flatten / Reshape / Squeeze /
  Unsqueeze / Transpose move the channel axis (Flatten before a Gemm turns channel c into
  features c*H*W ...); a Reshape-Transpose-Reshape channel shuffle keeps its input's pieces;
- LayerNorm or ReduceMean over channels (ConvNeXt's channels-last sections) keep the layout but
  are exact only under uniform replication;
- anything else pins what it touches ("unsupported op Foo at node bar"), as do graph inputs
  and graph outputs.

The rules (and `find_groups`) live in `rules.py`.  The result (`ChannelGroups`) lists the
groups and, for the rewrite (`widen.py`, `rewrite.py`), every weight, per-channel tensor and shape constant that depends on a
group.
"""

from __future__ import annotations

from dataclasses import dataclass, field


from ...graph import Graph
from .channels import Atoms, Pieces

@dataclass(frozen=True)
class Layout:
    """Where a tensor's channels are (``axis``) and what they are made of (``pieces``)."""

    axis: int
    pieces: Pieces


@dataclass
class LayerUse:
    """A conv or linear layer: its weight's output axis writes ``y``'s channels, its input
    axis reads ``x``'s."""

    node: str
    x: str
    y: str
    weight: int                 # input index of the weight
    out_axis: int               # axes of the weight as the layer reads it
    in_axis: int
    bias: int | None = None     # input index of a constant bias
    groups: int = 1
    kind: str = "dense"         # dense | depthwise | grouped


@dataclass
class ParamUse:
    """A constant per-channel operand (BN scale and statistics, bias, layer scale, PRelu slope)
    whose ``axis`` follows ``tensor``'s channels."""

    node: str
    index: int
    axis: int
    tensor: str


@dataclass
class ShapeUse:
    """A shape constant that encodes a channel count or offset.

    kind: ``reshape`` (target[position] = new size of ``tensors[0]``'s channel axis, divided by
    ``divide``), ``resize`` (sizes[position]), ``split`` (sizes of the outputs ``tensors``),
    ``slice`` (starts/ends[position] at the new offsets of ``bounds`` in ``tensors[0]``),
    ``gather`` (indices 0..C-1 along axis ``position``).
    """

    node: str
    kind: str
    tensors: tuple[str, ...]
    position: int = 0
    divide: int = 1
    bounds: tuple[int, int] = (0, 0)


@dataclass
class Tie:
    """A grouped conv: input and output widths are (groups x gw_in) and (groups x gw_out).

    After discovery both sides are cut at the same conv-group boundaries, so the i-th input
    piece and the i-th output piece hold the same conv groups (a grouped conv over a Concat
    is several grouped convs side by side)."""

    node: str
    x: Pieces
    y: Pieces
    gw_in: int
    gw_out: int
    groups: int
    broken: bool = False   # a conv group straddles two pieces: both sides keep their width


@dataclass
class Group:
    """One channel group, as listed by ``onnxscale groups``."""

    id: int
    root: int
    width: int
    producers: list[str]
    consumers: list[str]
    reasons: list[str]          # why it cannot be widened (empty: scalable)
    kind: str = "channels"      # channels | se | grouped
    inexact: list[str] = field(default_factory=list)

    @property
    def scalable(self) -> bool:
        return not self.reasons

    def to_json(self) -> dict:
        return {"id": self.id, "width": self.width, "kind": self.kind,
                "producers": self.producers, "consumers": self.consumers,
                "scalable": self.scalable, "reason": "; ".join(self.reasons) or None,
                "caveats": self.inexact}


class ChannelGroups:
    """Channel layouts of every tensor, the groups they form, and what depends on them."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.atoms = Atoms()
        self.layouts: dict[str, Layout] = {}
        self.sequences: dict[str, list[Layout | None]] = {}
        self.layers: list[LayerUse] = []
        self.params: list[ParamUse] = []
        self.shape_uses: list[ShapeUse] = []
        self.ties: list[Tie] = []
        self.multiples: list[tuple[Pieces, int]] = []
        self.uniform: list[tuple[Pieces, str]] = []
        self.se: list[tuple[Pieces, Pieces]] = []

    def roots_of(self, pieces: Pieces) -> list[int]:
        return [self.atoms.find(p.atom) for p in self.atoms.expand(pieces)]

    def groups(self) -> list[Group]:
        """The groups, numbered in order of first appearance in the graph."""
        return describe(self)


def describe(found: ChannelGroups) -> list[Group]:
    """Group records in order of first appearance (inputs, then ops in topological order)."""
    atoms = found.atoms
    order: dict[int, int] = {}
    tensors = list(found.graph.inputs) + [o for n in found.graph.nodes for o in n.output]
    for name in tensors:
        layout = found.layouts.get(name)
        if layout is not None:
            for root in found.roots_of(layout.pieces):
                order.setdefault(root, len(order))
    producers: dict[int, list[str]] = {}
    for root in order:
        origins = {atoms.origin[m] for m in atoms.members(root) if m not in atoms.children}
        producers[root] = sorted(origins)
    consumers: dict[int, set[str]] = {root: set() for root in order}
    for use in found.layers:
        if use.x in found.layouts:
            for root in found.roots_of(found.layouts[use.x].pieces):
                consumers.setdefault(root, set()).add(use.node)
    kinds = _kinds(found)
    groups = []
    for root, index in sorted(order.items(), key=lambda item: item[1]):
        leaf = atoms.members(root)[0]
        groups.append(Group(index, root, atoms.width[leaf], producers[root],
                            sorted(consumers.get(root, ())), list(atoms.pinned(root)),
                            kinds.get(root, "channels"), list(atoms.flags.get(root, []))))
    return groups


def _kinds(found: ChannelGroups) -> dict[int, str]:
    kinds: dict[int, str] = {}
    for bottleneck, _ in found.se:
        for root in found.roots_of(bottleneck):
            kinds[root] = "se"
    for tie in found.ties:
        for root in found.roots_of(tie.x) + found.roots_of(tie.y):
            kinds[root] = "grouped"
    return kinds
