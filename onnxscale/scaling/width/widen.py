"""Width scaling: multiply every scalable channel group's width by W and rewrite the model.

`plan_widths` decides the new widths (pure arithmetic on the groups of `groups.py`):

- a group's width becomes ``round_width(W * width, divisor)`` (pycls: multiples of 8);
- grouped convs keep their group width unless ``g`` scales it (pycls's ``round_group_width``),
  so the number of groups grows; the widths they tie move to the nearest multiple of the group
  width, as pycls's ``adjust_block_compatibility`` does; depthwise convs stay depthwise because
  their input and output are one group;
- a Squeeze-Excite bottleneck scales with the channels it gates, with plain rounding (pycls:
  ``round(se_ratio * w_in)``, no divisor).

`rewrite.Rewrite` then writes the model: layers, per-channel tensors, ``group`` attributes
and shape constants (Reshape targets, Split sizes, Slice bounds, Resize sizes), with weights
from `init.py`.  New channel j of a group copies old channel ``j % old_width``: a deterministic map
that also keeps whole conv groups together, so grouped convs stay exact.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import onnx

from ...errors import OnnxscaleError
from ...graph import Graph
from .channels import Pieces
from .groups import ChannelGroups, Group
from .rules import find_groups
from ..init import policy
from ..plan import Edit, ScaleOptions
from ..strategy import round_group_width, round_width, scaled_width
from .rewrite import Rewrite


def scale_width(proto: onnx.ModelProto, graph: Graph, w: float, g: float,
                options: ScaleOptions, found: ChannelGroups | None = None) -> Edit:
    """Widen ``proto`` by ``w`` (group widths of grouped convs by ``g``); see the module doc.
    ``found``: ``graph``'s channel groups when the caller has them (a planner does)."""
    found = found if found is not None else find_groups(graph)
    plan = plan_widths(found, w, g, options.divisor, options.rounding)
    groups = found.groups()
    if all(not plan.scalable(group.root) for group in groups):
        first = next((r for group in groups for r in plan.reasons[group.root]), "no channels")
        raise OnnxscaleError(f"nothing to widen: all {len(groups)} channel groups keep their "
                             f"width (e.g. {first}); see 'onnxscale groups MODEL'")
    if not plan.changed():
        raise OnnxscaleError(f"--width {w:g} --group-width {g:g} leaves every channel group "
                             f"as it is after rounding to multiples of {options.divisor}")
    rewrite = Rewrite(proto, found, plan, policy(options.init, options.seed))
    model = rewrite.run()
    inexact = plan.inexact(rewrite.inexact_layers, options.init)
    details = [_group_json(group, plan, inexact, options.init) for group in groups]
    notes = _notes(plan, groups, inexact, options.init)
    exact = options.init == "preserve" and not any(inexact.values())
    # the rewrite indexed the widened model already (Graph ignores value_info): reuse it
    return Edit("width", model, exact, {"groups": details}, notes, graph=rewrite.graph)


# ---- planning -------------------------------------------------------------------------------

@dataclass
class WidthPlan:
    """Old and new width of every group (by class root) and how to map channels."""

    found: ChannelGroups
    old: dict[int, int]
    new: dict[int, int]
    reasons: dict[int, list[str]]          # why a group keeps its width
    new_groups: dict[str, int] = field(default_factory=dict)  # grouped conv -> groups
    _cache: dict[str, np.ndarray | None] = field(default_factory=dict)

    def scalable(self, root: int) -> bool:
        return not self.reasons[root]

    def changed(self) -> bool:
        return any(self.new[r] != self.old[r] for r in self.old) or \
            any(tie.groups != self.new_groups.get(tie.node, tie.groups)
                for tie in self.found.ties)

    def positions(self, tensor: str) -> np.ndarray | None:
        """For each new channel position of ``tensor``, the old position it copies (None when
        the tensor keeps its channels)."""
        if tensor not in self._cache:
            layout = self.found.layouts.get(tensor)
            self._cache[tensor] = None if layout is None else self.map(layout.pieces)
        return self._cache[tensor]

    def map(self, pieces: Pieces) -> np.ndarray | None:
        parts, offset, changed = [], 0, False
        for piece in self.found.atoms.expand(pieces):
            root = self.found.atoms.find(piece.atom)
            old, new = self.old[root], self.new[root]
            changed |= old != new
            channels = np.arange(new) % old
            if piece.inner > 1:
                channels = (channels[:, None] * piece.inner + np.arange(piece.inner)).ravel()
            parts.append(channels + offset)
            offset += old * piece.inner
        return np.concatenate(parts) if changed else None

    def size(self, pieces: Pieces) -> int:
        """New number of positions along a channel axis."""
        atoms = self.found.atoms
        return sum(self.new[atoms.find(p.atom)] * p.inner for p in atoms.expand(pieces))

    def offset(self, pieces: Pieces, old_offset: int) -> int:
        """The new position of a piece boundary given by its old position."""
        atoms, old, new = self.found.atoms, 0, 0
        for piece in atoms.expand(pieces):
            if old >= old_offset:
                break
            root = atoms.find(piece.atom)
            old += self.old[root] * piece.inner
            new += self.new[root] * piece.inner
        return new

    def inexact(self, layers: dict[str, str], init: str) -> dict[int, list[str]]:
        """Why each group's rewrite does not preserve the function (empty lists: it does)."""
        found, atoms = self.found, self.found.atoms
        out: dict[int, list[str]] = defaultdict(list)
        for root in self.old:
            old, new = self.old[root], self.new[root]
            if new == old:
                continue
            if init == "random":
                out[root].append("fresh random weights")
            if new < old:
                out[root].append(f"narrowed from {old} to {new} channels")
            out[root].extend(atoms.flags.get(root, []))
        for pieces, reason in found.uniform:
            roots = found.roots_of(pieces)
            ratios = {self.new[r] / self.old[r] for r in roots}
            if len(ratios) > 1 or any(self.new[r] % self.old[r] for r in roots):
                for root in roots:
                    if self.new[root] != self.old[root]:
                        out[root].append(f"{reason}, replicated unevenly")
        for use in found.layers:
            if use.node in layers and use.y in found.layouts:
                for root in found.roots_of(found.layouts[use.y].pieces):
                    out[root].append(layers[use.node])
        return {root: out.get(root, []) for root in self.old}


def plan_widths(found: ChannelGroups, w: float, g: float, divisor: int,
                rounding: str = "pycls") -> WidthPlan:
    """New width of every group; see the module docstring for the rules.

    A channel shuffle needs its total width to stay a multiple of its group count; when a fixed
    piece breaks that, the shuffled groups keep their width too (and the widths are redone).
    ``rounding="efficientnet"`` (the presets) rounds as EfficientNet does, and an
    inverted-residual expansion (a layer widening its input k times into a depthwise conv)
    follows its block's new input width times k, as EfficientNet builds it."""
    rules = _Constraints(found, w, g, divisor, rounding)
    while True:
        plan = rules.assign()
        uneven = [(pieces, k) for pieces, k in found.multiples if plan.size(pieces) % k]
        if not uneven:
            return plan
        for pieces, k in uneven:
            for root in found.roots_of(pieces):
                if not rules.reasons[root]:
                    rules.reasons[root].append(f"a channel shuffle needs a multiple of {k} "
                                               f"channels")


class _Constraints:
    """What the widths must satisfy: fixed groups, group widths of grouped convs (which tie
    groups into components that scale together) and SE bottlenecks."""

    def __init__(self, found: ChannelGroups, w: float, g: float, divisor: int,
                 rounding: str = "pycls"):
        atoms = found.atoms
        self.found, self.w, self.divisor, self.rounding = found, w, divisor, rounding
        self.old = {r: atoms.width[atoms.members(r)[0]] for r in atoms.roots()}
        self.reasons = {r: list(atoms.pinned(r)) for r in self.old}
        self.need: dict[int, int] = defaultdict(lambda: 1)
        for pieces, multiple in found.multiples:
            for root in found.roots_of(pieces):
                self.need[root] = math.lcm(self.need[root], multiple)
        self.parent = {r: r for r in self.old}
        self.ties = [self._tie(tie, g) for tie in found.ties if not tie.broken]
        self.se = {}
        for bottleneck, gated in found.se:
            for root in found.roots_of(bottleneck):
                self.se.setdefault(root, found.roots_of(gated)[0])
        self.expansions = _expansions(found, self.old) if rounding == "efficientnet" else {}

    def _tie(self, tie, g: float) -> tuple[str, list[int], int]:
        """Link the groups of a grouped conv; return (node, input groups, new group width)."""
        pairs = list(zip(self.found.roots_of(tie.x), self.found.roots_of(tie.y)))
        gw_in, gw_out = tie.gw_in, tie.gw_out
        first = pairs[0][0]
        if g != 1 and gw_in == gw_out > 1 and len(pairs) == 1 and \
                self.old[first] == self.old[pairs[0][1]]:
            gw_in = gw_out = round_group_width(g, gw_in,
                                               round_width(self.w, self.old[first], self.divisor))
        for x, y in pairs:
            self.need[x] = math.lcm(self.need[x], gw_in)
            self.need[y] = math.lcm(self.need[y], gw_out)
            self.parent[_find(self.parent, y)] = _find(self.parent, x)
            self.parent[_find(self.parent, x)] = _find(self.parent, first)
        return tie.node, [x for x, _ in pairs], gw_in

    def assign(self) -> WidthPlan:
        components = defaultdict(list)
        for root in self.old:
            components[_find(self.parent, root)].append(root)
        new: dict[int, int] = {}
        for members in components.values():
            if any(self.reasons[r] for r in members):
                for root in members:
                    new[root] = self.old[root]
                    if not self.reasons[root]:
                        self.reasons[root].append("tied by a grouped conv to a fixed group")
            elif not (len(members) == 1 and members[0] in self.se):
                solved = _solve(members, self.old, self.need, self.w, self.divisor,
                                self.rounding)
                if solved is None:
                    for root in members:
                        self.reasons[root].append("no width fits its grouped convs")
                    return self.assign()
                new.update(solved)
        for root, (source, ratio) in self.expansions.items():
            if not self.reasons[root] and not self.reasons[source]:
                new[root] = new[source] * ratio
        for root, ref in self.se.items():
            if self.reasons[ref] and not self.reasons[root]:
                self.reasons[root].append("squeeze-excite bottleneck of a fixed group")
            new.setdefault(root, max(1, round(self.old[root] * new[ref] / self.old[ref])))
        plan = WidthPlan(self.found, self.old, new, self.reasons)
        plan.new_groups = {node: sum(new[x] for x in xs) // gw for node, xs, gw in self.ties}
        return plan


def _find(parent: dict[int, int], root: int) -> int:
    while parent[root] != root:
        root = parent[root]
    return root


def _expansions(found: ChannelGroups, old: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Inverted-residual expansions: group -> (the group it expands, integer ratio >= 2), for
    dense layers on a feature map (not a Squeeze-Excite's 1x1 gate) whose output is read by
    a depthwise conv (MBConv's 1x1 expansion)."""
    depthwise_inputs = {root for use in found.layers if use.kind == "depthwise"
                        for root in found.roots_of(found.layouts[use.x].pieces)}
    shapes = found.graph.shapes
    out = {}
    for use in found.layers:
        if use.kind != "dense" or use.x not in found.layouts or use.y not in found.layouts:
            continue
        x_shape = shapes.get(use.x)
        if not x_shape or len(x_shape) != 4 or x_shape[2] * x_shape[3] == 1:
            continue
        xs = found.roots_of(found.layouts[use.x].pieces)
        ys = found.roots_of(found.layouts[use.y].pieces)
        if len(xs) == 1 and len(ys) == 1 and ys[0] in depthwise_inputs and \
                old[ys[0]] % old[xs[0]] == 0 and old[ys[0]] // old[xs[0]] >= 2:
            out[ys[0]] = (xs[0], old[ys[0]] // old[xs[0]])
    return out


def _solve(members: list[int], old: dict[int, int], need: dict[int, int], w: float,
           divisor: int, rounding: str = "pycls") -> dict[int, int] | None:
    """Widths for groups tied by grouped convs: all scale by one factor, each a multiple of
    what its convs need (the group width), the largest close to ``round_width(w * width)``."""
    leader = max(members, key=lambda r: old[r])
    target = scaled_width(w, old[leader], divisor, rounding)
    if all(old[r] == old[leader] for r in members):
        multiple = math.lcm(*(need[r] for r in members))
        width = target if target % multiple == 0 else \
            max(multiple, round(target / multiple) * multiple)
        return {r: width for r in members}
    for step in range(4 * target):
        for t in (target - step, target + step):
            widths = {r: old[r] * t // old[leader] for r in members}
            if t > 0 and all(old[r] * t % old[leader] == 0 and widths[r] % need[r] == 0
                             for r in members):
                return widths
    return None


# ---- reporting -------------------------------------------------------------------------------

def _group_json(group: Group, plan: WidthPlan, inexact: dict[int, list[str]], init: str) -> dict:
    old, new = plan.old[group.root], plan.new[group.root]
    if new == old:
        how = "unchanged"
    elif init == "random":
        how = "random"
    else:
        how = "copied" if new > old else "truncated"
    entry = {"id": group.id, "old": old, "new": new, "kind": group.kind, "init": how,
             "exact": not inexact[group.root]}
    why = plan.reasons[group.root] or inexact[group.root]
    if why:
        entry["reason"] = "; ".join(why)
    return entry


def _notes(plan: WidthPlan, groups: list[Group], inexact: dict[int, list[str]],
           init: str) -> list[str]:
    """One line per distinct reason the function is not preserved, naming the groups."""
    by_reason: dict[str, list[int]] = defaultdict(list)
    ids = {group.root: group.id for group in groups}
    for root, reasons in inexact.items():
        for reason in reasons:
            key = "narrowed groups lose channels" if reason.startswith("narrowed") else reason
            by_reason[key].append(ids[root])
    notes = []
    if init == "random":
        notes.append("--init random: widened layers get fresh He-normal weights; outputs "
                     "differ from the base model")
        by_reason.pop("fresh random weights", None)
    for reason, numbers in by_reason.items():
        listed = ", ".join(str(i) for i in sorted(numbers)[:8]) + \
            (" ..." if len(numbers) > 8 else "")
        notes.append(f"not exact: {reason} (group{'s' if len(numbers) > 1 else ''} {listed})")
    fixed = [root for root in plan.old if plan.reasons[root]]
    if fixed:
        why = list(dict.fromkeys(plan.reasons[root][0] for root in fixed))
        listed = "; ".join(why[:3]) + ("; ..." if len(why) > 3 else "")
        notes.append(f"{len(fixed)} of {len(plan.old)} channel groups keep their width: {listed}")
    return notes
