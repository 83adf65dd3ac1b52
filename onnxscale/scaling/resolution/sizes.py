"""Which input sizes a model accepts, found on the graph before any size is chosen.

A plain classifier runs at any input size (pycls rounds to multiples of 4).  Other models do
not:

- an upsample-and-merge network (FPN, DLA, HRNet, a text detector, a YOLO neck) adds a map
  upsampled 2x to one that was never downsampled: the two agree only when the input is a
  multiple of the total stride (32 for most);
- a CRNN reshapes its feature map into an LSTM's features, so the input *height* is baked
  into trained weights while the width (the sequence length) is free;
- a classifier that flattens a C x H x W map into a Gemm accepts only sizes whose final map
  is a multiple of the trained one.

Rather than model each family, we ask the graph: the resolution step re-propagates shapes
from a candidate size through every node with the analysis's own strict rules (a Conv, Gemm,
MatMul or LSTM whose input no longer fits its weight, an Add of two maps of different sizes,
a Reshape that cannot be regrouped: each raises, naming the node).  A *step* t is accepted for
an axis when the base size moved by -t, +t and +2t is accepted; the smallest accepted step
among the resolution divisor times 1, 2, 4, ..., 32 is the axis's grid.  An axis with no
accepted step keeps its size, and the node that refused the coarsest step says why.
"""

from __future__ import annotations

from dataclasses import dataclass

#: steps tried, as multiples of the resolution divisor
STEP_FACTORS = (1, 2, 4, 8, 16, 32)
#: the base size moved by these multiples of a step must all be accepted
PROBE_SHIFTS = (1, 2, -1)


@dataclass(frozen=True)
class AxisSizes:
    """The sizes one spatial axis of one input accepts: ``base + k * step`` (k any integer
    keeping it positive), or only ``base`` when ``step`` is None (``reason`` says why)."""

    input: str
    axis: int
    base: int
    step: int | None
    reason: str = ""
    anchored: bool = False  # sizes are base + k*step, not multiples of step
    label: str = ""         # "height", "width", ...

    def scaled(self, r: float) -> int:
        """The accepted size nearest ``r * base``: multiples of the step (pycls's rounding),
        or the base's own grid when the step is coarser than the divisor and the base is not
        a multiple of it."""
        if self.step is None:
            return self.base
        if not self.anchored:
            size = round(r * self.base / self.step) * self.step
        else:
            size = self.base + round((r - 1) * self.base / self.step) * self.step
        return max(size, self.base % self.step if self.anchored else self.step)

    def describe(self) -> str:
        what = f"input '{self.input}' {self.label or f'axis {self.axis}'}"
        if self.step is None:
            return f"{what} keeps its size {self.base}: {self.reason}"
        return f"{what}: sizes {self.base} + k*{self.step}"


@dataclass(frozen=True)
class InputSizes:
    """Every scalable spatial axis of every image input, and the sizes each accepts."""

    axes: tuple[AxisSizes, ...]

    def new_dims(self, inputs: dict[str, list[int]], r: float) -> dict[str, list[int]]:
        new = {name: list(dims) for name, dims in inputs.items()}
        for axis in self.axes:
            new[axis.input][axis.axis] = axis.scaled(r)
        return new

    def fixed(self) -> list[AxisSizes]:
        return [axis for axis in self.axes if axis.step is None]

    def coarse(self, divisor: int) -> list[AxisSizes]:
        return [axis for axis in self.axes if axis.step is not None and axis.step != divisor]

    def smallest_step(self) -> tuple[int, int] | None:
        """(step, base) of the finest scalable axis, or None when every axis is fixed."""
        steps = [(axis.step / axis.base, axis.step, axis.base) for axis in self.axes
                 if axis.step is not None]
        return min(steps)[1:] if steps else None

    def notes(self, divisor: int) -> list[str]:
        notes = [axis.describe() for axis in self.fixed()]
        notes += [f"{axis.describe()} (smaller steps break the graph)"
                  for axis in self.coarse(divisor)]
        return notes


def find_sizes(accepts, inputs: dict[str, list[int]], spatial_axes, divisor: int) -> InputSizes:
    """Probe which sizes the model accepts.

    ``accepts(dims) -> None | str``: None when the model runs at input dims ``dims`` (every
    input), else the reason it does not.  ``spatial_axes(dims)`` names an input's H/W axes.
    All axes are tried together first (one grid for the whole model, the common case); only
    when that fails is each axis probed alone, so a CRNN keeps its height and scales its width.
    """
    candidates = [(name, axis, dims[axis]) for name, dims in inputs.items() if len(dims) >= 3
                  for axis in spatial_axes(dims)]
    labels = {(name, axis): label for name, dims in inputs.items() if len(dims) >= 3
              for axis, label in zip(spatial_axes(dims), _labels(len(spatial_axes(dims))))}
    if not candidates:
        return InputSizes(())
    joint, reason = _smallest_step(accepts, inputs, candidates, divisor)
    if joint is not None:
        return InputSizes(tuple(_axis(c, joint, "", divisor, labels) for c in candidates))
    alone = [_smallest_step(accepts, inputs, [candidate], divisor) for candidate in candidates]
    if not any(step for step, _ in alone):  # what pins all axes together says most: a lone
        alone = [(None, reason)] * len(candidates)  # axis may fail only for being alone
    return InputSizes(tuple(_axis(candidate, step, "" if step else why or reason, divisor,
                                  labels) for candidate, (step, why) in zip(candidates, alone)))


def _labels(count: int) -> tuple[str, ...]:
    return {1: ("length",), 2: ("height", "width"), 3: ("depth", "height", "width")}.get(
        count, ())


def _axis(candidate, step: int | None, reason: str, divisor: int, labels) -> AxisSizes:
    name, axis, base = candidate
    anchored = step is not None and step != divisor and base % step != 0
    return AxisSizes(name, axis, base, step, reason, anchored, labels.get((name, axis), ""))


def _smallest_step(accepts, inputs, candidates, divisor: int) -> tuple[int | None, str]:
    """The smallest accepted step, or None and the reason the *coarsest* step was refused:
    a fine step is often refused only for the grid (an upsample-and-merge off by a pixel),
    while what refuses every step is the node that pins the size (a YOLO head's reshape to
    its 8400 baked-in anchors), the one a user has to know about."""
    reason = ""
    for factor in STEP_FACTORS:
        step = divisor * factor
        reason = _probe(accepts, inputs, candidates, step)
        if reason is None:
            return step, ""
    return None, reason


def _probe(accepts, inputs, candidates, step: int) -> str | None:
    for shift in PROBE_SHIFTS:
        dims = {name: list(d) for name, d in inputs.items()}
        for name, axis, base in candidates:
            size = base + shift * step
            if size <= 0:
                break
            dims[name][axis] = size
        else:
            reason = accepts(dims)
            if reason is not None:
                return reason
    return None

