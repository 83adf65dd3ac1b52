"""The types every scaling step and the solver share: how much to scale, with which options,
what a step did, and the *plan* -- the scaled model's structure and exact complexity, known
before any weight is written.

Scaling is two phases (`pipeline.plan_scale`, `pipeline.apply_plan`): the steps first run on a
hollow copy of the model (`onnxscale.hollow`: large weights have shapes but no values), which
gives the new graph, shapes, flops, params, acts and the bytes its weights will take; then
only the chosen plan is applied to the real model, writing weights once.  This module imports
no step, so steps, pipeline and solver all build on it without import cycles.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import onnx

from ..complexity import Report
from ..errors import UsageError

INIT_POLICIES = ("preserve", "random")
#: default limit on the weights of a scaled model and on its batch-1 activations (bytes)
DEFAULT_MAX_BYTES = 16 * 10**9


@dataclass
class Multipliers:
    """Depth, width, group-width and resolution multipliers (pycls's d, w, g, r)."""

    d: float = 1.0
    w: float = 1.0
    g: float = 1.0
    r: float = 1.0

    def is_identity(self) -> bool:
        return self.d == 1 and self.w == 1 and self.g == 1 and self.r == 1

    def as_dict(self) -> dict[str, float]:
        return {"d": self.d, "w": self.w, "g": self.g, "r": self.r}

    def validate(self) -> None:
        """Every multiplier must be a finite positive number (a usage error otherwise)."""
        names = {"d": "--depth", "w": "--width", "g": "--group-width", "r": "--resolution"}
        for key, value in self.as_dict().items():
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"{names[key]} {value}: must be a finite positive number")


@dataclass
class ScaleOptions:
    init: str = "preserve"          # "preserve" (function-preserving) or "random"
    divisor: int = 8                # channel counts become multiples of this (pycls: 8)
    resolution_divisor: int = 4     # input sizes become multiples of this (pycls: 4)
    batch: str | int | None = None  # None: keep; "dynamic" or a positive int
    seed: int = 0
    max_bytes: int = DEFAULT_MAX_BYTES  # refuse plans whose weights or activations need more
    rounding: str = "pycls"         # "pycls" or "efficientnet" (the --preset rules)
    # the input sizes the model accepts (`sizes.find_sizes`), set by the Planner; None:
    # multiples of resolution_divisor
    input_sizes: object = None


@dataclass
class Edit:
    """What one rewrite step did."""

    kind: str                        # "depth" | "width" | "resolution"
    model: onnx.ModelProto | None
    exact: bool
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, list[int]] | None = None  # new input dims, when the step changed them
    graph: object = None  # the step's own index of its model (a Graph), when it built one


@dataclass
class Plan:
    """A scaled model decided but not written: multipliers, options, and what they give."""

    multipliers: Multipliers
    options: ScaleOptions
    base: Report
    scaled: Report
    inputs: dict[str, list[int]]
    weight_bytes: int                # bytes of every weight of the planned model
    edits: list[Edit]
    # the planned (hollow) graph, for what reads more than the report (`runtime_features`)
    graph: object = field(default=None, repr=False, compare=False)

    @property
    def activation_bytes(self) -> int:
        """Bytes of the counted activations at batch 1 (float32): a floor on run memory."""
        batch = max(1, max((dims[0] for dims in self.inputs.values() if dims), default=1))
        return 4 * self.scaled.acts // batch


@dataclass
class ScaleOutcome:
    model: onnx.ModelProto
    edits: list[Edit]
    base: Report
    scaled: Report
    inputs: dict[str, list[int]]

    @property
    def exact(self) -> bool:
        return all(edit.exact for edit in self.edits)


def format_bytes(count: float) -> str:
    if count >= 1e15:
        return f"{count:.2g} bytes"
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{int(count)} B"


def parse_bytes(text: str) -> int:
    """``16G``, ``500M``, ``2e9`` -> bytes (decimal units, as disks count)."""
    spec = text.strip().upper().rstrip("B")
    units = {"K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    scale = units.get(spec[-1:], 1)
    number = spec[:-1] if spec[-1:] in units else spec
    try:
        value = float(number) * scale
    except ValueError:
        raise UsageError(f"--max-size '{text}': expected a size like 16G or 500M") from None
    if not math.isfinite(value) or value <= 0:
        raise UsageError(f"--max-size '{text}': must be a positive size")
    return int(value)
