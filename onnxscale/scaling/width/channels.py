"""Channel ranges and the equalities between them: the algebra behind channel groups.

An *atom* is a run of channels created by one layer (a conv's output channels, a graph input's
channels).  A tensor's channel axis is a sequence of *pieces*: an atom in which every channel
spans ``inner`` consecutive positions (1 for feature maps; H*W after a Flatten, where channel c
becomes the features c*H*W ... c*H*W + H*W - 1).

Ops that add, multiply or compare tensors make atoms *equal*: when widened they must get the
same width and the same channel mapping.  Concat, Split and Slice move ranges around, which may
*refine* an atom into sub-atoms (a Split in the middle of a conv's output).  A refinement is
applied to the whole class of equal atoms, so equal atoms stay equal piece by piece.  The final
classes of equal leaf atoms are the channel groups.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Piece:
    atom: int
    inner: int = 1


Pieces = tuple[Piece, ...]


class Atoms:
    """Atoms, their refinements, and a union-find over leaf atoms with per-class notes."""

    def __init__(self) -> None:
        self.width: list[int] = []
        self.origin: list[str] = []
        self.children: dict[int, tuple[int, int]] = {}
        self._parent: list[int] = []
        self._members: dict[int, list[int]] = {}
        self.pins: dict[int, list[str]] = {}     # class root -> why it cannot be widened
        self.flags: dict[int, list[str]] = {}    # class root -> why widening is not exact

    # ---- atoms and classes ----------------------------------------------------------
    def new(self, width: int, origin: str) -> int:
        atom = len(self.width)
        self.width.append(int(width))
        self.origin.append(origin)
        self._parent.append(atom)
        self._members[atom] = [atom]
        return atom

    def find(self, atom: int) -> int:
        parent = self._parent
        while parent[atom] != atom:
            parent[atom] = parent[parent[atom]]
            atom = parent[atom]
        return atom

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if len(self._members[ra]) < len(self._members[rb]):
            ra, rb = rb, ra
        self._parent[rb] = ra
        self._members[ra].extend(self._members.pop(rb))
        for notes in (self.pins, self.flags):
            moved = notes.pop(rb, [])
            if moved:
                _note(notes, ra, moved)

    def leaves(self, atom: int) -> list[int]:
        if atom not in self.children:
            return [atom]
        first, second = self.children[atom]
        return self.leaves(first) + self.leaves(second)

    def expand(self, pieces: Pieces) -> Pieces:
        """The same channel axis written with leaf atoms only."""
        if not any(p.atom in self.children for p in pieces):
            return tuple(pieces)
        return tuple(Piece(leaf, p.inner) for p in pieces for leaf in self.leaves(p.atom))

    def roots(self) -> list[int]:
        """Every class (by root), in creation order of its oldest leaf."""
        seen: dict[int, None] = {}
        for atom in range(len(self.width)):
            if atom not in self.children:
                seen.setdefault(self.find(atom), None)
        return list(seen)

    def members(self, root: int) -> list[int]:
        return self._members[root]

    # ---- refinement ---------------------------------------------------------------------
    def split(self, atom: int, offset: int) -> None:
        """Split leaf ``atom`` (and every atom equal to it) after ``offset`` channels."""
        root = self.find(atom)
        firsts, seconds = [], []
        for member in list(self._members[root]):
            first = self.new(offset, self.origin[member])
            second = self.new(self.width[member] - offset, self.origin[member])
            self.children[member] = (first, second)
            firsts.append(first)
            seconds.append(second)
        for part in (firsts, seconds):
            for other in part[1:]:
                self.union(part[0], other)
            for notes in (self.pins, self.flags):
                if root in notes:
                    _note(notes, self.find(part[0]), notes[root])

    def cut(self, pieces: Pieces, position: int) -> bool:
        """Make ``position`` a piece boundary; False if it falls inside one channel."""
        start = 0
        for piece in self.expand(pieces):
            size = self.width[piece.atom] * piece.inner
            if start < position < start + size:
                local = position - start
                if local % piece.inner:
                    return False
                self.split(piece.atom, local // piece.inner)
                return True
            start += size
        return True

    def take(self, pieces: Pieces, start: int, stop: int) -> Pieces | None:
        """The pieces covering positions [start, stop), refining atoms at both ends."""
        if not (self.cut(pieces, start) and self.cut(pieces, stop)):
            return None
        out, offset = [], 0
        for piece in self.expand(pieces):
            size = self.width[piece.atom] * piece.inner
            if start <= offset and offset + size <= stop:
                out.append(piece)
            offset += size
        return tuple(out)

    def unify(self, a: Pieces, b: Pieces) -> bool:
        """Make two channel axes equal piece by piece; False if they cannot be."""
        if self.size(a) != self.size(b):
            return False
        while True:
            ea, eb = self.expand(a), self.expand(b)
            ba, bb = self._bounds(ea), self._bounds(eb)
            if ba == bb:
                break
            for position in sorted(ba ^ bb):
                if not (self.cut(a, position) and self.cut(b, position)):
                    return False
        if any(pa.inner != pb.inner for pa, pb in zip(ea, eb)):
            return False
        for pa, pb in zip(ea, eb):
            self.union(pa.atom, pb.atom)
        return True

    def size(self, pieces: Pieces) -> int:
        return sum(self.width[p.atom] * p.inner for p in self.expand(pieces))

    def _bounds(self, pieces: Pieces) -> set[int]:
        bounds, offset = set(), 0
        for piece in pieces:
            offset += self.width[piece.atom] * piece.inner
            bounds.add(offset)
        return bounds

    # ---- notes ----------------------------------------------------------------------------
    def pin(self, pieces: Pieces, reason: str) -> None:
        for piece in self.expand(pieces):
            _note(self.pins, self.find(piece.atom), [reason])

    def flag(self, pieces: Pieces, reason: str) -> None:
        for piece in self.expand(pieces):
            _note(self.flags, self.find(piece.atom), [reason])

    def pinned(self, root: int) -> list[str]:
        return self.pins.get(root, [])


def _note(notes: dict[int, list[str]], root: int, reasons: list[str]) -> None:
    current = notes.setdefault(root, [])
    for reason in reasons:
        if reason not in current and len(current) < 8:
            current.append(reason)
