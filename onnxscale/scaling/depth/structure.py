"""What depth scaling knows of a model: its stages, and the blocks each is made of.

`blocks.find_blocks` and `dense.find_dense_stages` find them; `deepen` repeats them.  The
records live apart from the finders so that both finders can build them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

IDEMPOTENT = {"Relu", "Clip", "Identity", "Dropout"}      # f(f(x)) == f(x): copies stay exact
REPEATABLE = ("residual", "plain", "module", "dense")  # block kinds a stage can repeat


@dataclass
class Block:
    """A piece of the spine: a block (residual, plain, projection, chain) or stem/head/other."""

    kind: str                       # residual | plain | projection | chain | stem | head | other
    input: str
    output: str
    nodes: list[str]                # data nodes in topological order, then side nodes
    in_shape: tuple | None
    out_shape: tuple | None
    layers: int = 0                 # conv/linear layers on the longest path (SE convs excluded)
    merge: str | None = None        # the Add joining skip (or shortcut) and branch
    branch: str | None = None       # the tensor f(x) entering the merge
    shortcut: list[str] = field(default_factory=list)  # projection-shortcut or skip-gain nodes
    gains: list[tuple[str, int]] = field(default_factory=list)  # skip gains (set to 1 in copies)
    post: list[str] = field(default_factory=list)       # ops after the merge (ResNet's ReLU)
    post_ops: list[str] = field(default_factory=list)   # op types of ``post``
    zero: list[tuple[str, int, float]] | None = None    # (node, input, fill) making f(x) == 0
    first: str = ""                 # first and last data node (what a listing shows)
    last: str = ""
    note: str = ""

    @property
    def identity_copy(self) -> bool:
        """Whether a copy with ``zero`` applied computes exactly its input: the branch can be
        zeroed and what follows the skip add is idempotent (ReLU after ReLU)."""
        return self.zero is not None and all(op in IDEMPOTENT for op in self.post_ops)


@dataclass
class Stage:
    """Blocks with one output shape; ``blocks[0]`` may be a transition (shape change)."""

    index: int
    blocks: list[Block]
    mode: str = ""        # clone (repeat the last repeatable block) | instantiate | "" (fixed)
    reason: str = ""
    nested: bool = False  # residual blocks inside a branch, off the spine (CSP)
    dense: str = ""       # dense stages: the Concat that joins the layers' outputs
    channel_axis: int = 1  # of the stage's output: 3 where an NHWC export transposes back

    @property
    def shape(self) -> tuple | None:
        return self.blocks[-1].out_shape

    @property
    def resolution(self) -> str:
        """``HxW`` of the stage's output, whichever its layout (NCHW, or NHWC exports)."""
        shape = self.shape
        if not shape or len(shape) < 3:
            return "?"
        return "x".join(str(d) for i, d in enumerate(shape[1:], 1) if i != self.channel_axis)

    @property
    def width(self) -> int | None:
        shape = self.shape
        return int(shape[self.channel_axis]) if shape and len(shape) > 1 else None

    @property
    def repeats(self) -> list[Block]:
        return [b for b in self.blocks if b.kind in REPEATABLE]

    @property
    def transition(self) -> Block | None:
        first = self.blocks[0]
        return None if first.kind in REPEATABLE else first


@dataclass
class BlockMap:
    stages: list[Stage]
    pieces: list[Block]              # every piece of the spine, in order
    spine: list[str]
