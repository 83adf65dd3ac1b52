"""One rewrite pipeline for depth, width and resolution: plan -> edit -> verify -> write.

Each step is a function ``step(proto, graph, ..., options) -> Edit`` that returns a *new*
ModelProto (the input is never mutated) and says whether it preserved the function
(``exact``) and what it did (``details``, for ``--json``).  The order is fixed: depth first
(new blocks are clones at the base width), then width (widens old and new blocks alike), then
resolution and batch (they only touch the input and what is baked to its size).

The strategy math (`strategy.py`) decides the multipliers; nothing here decides how much to
scale.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from .. import __version__
from ..complexity import Report, analyze
from ..errors import OnnxscaleError
from ..graph import Graph

INIT_POLICIES = ("preserve", "random")


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


@dataclass
class ScaleOptions:
    init: str = "preserve"          # "preserve" (function-preserving) or "random"
    divisor: int = 8                # channel counts become multiples of this (pycls: 8)
    resolution_divisor: int = 4     # input sizes become multiples of this (pycls: 4)
    batch: str | int | None = None  # None: keep; "dynamic" or a positive int
    seed: int = 0


@dataclass
class Edit:
    """What one rewrite step did."""

    kind: str                        # "depth" | "width" | "resolution"
    model: onnx.ModelProto
    exact: bool
    details: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    inputs: dict[str, list[int]] | None = None  # new input dims, when the step changed them


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


def scale_model(proto: onnx.ModelProto, input_shapes: dict[str, list[int]],
                multipliers: Multipliers, options: ScaleOptions,
                prepared: tuple[Graph, Report] | None = None) -> ScaleOutcome:
    """Apply depth, width and resolution scaling in turn; analyze before and after.

    ``prepared`` is the base model's graph and report when the caller already has them (the
    solver rewrites one model many times; steps never modify the graph they are given).
    """
    if options.init not in INIT_POLICIES:
        raise OnnxscaleError(f"--init must be one of {', '.join(INIT_POLICIES)}")
    if prepared is None:
        graph = Graph(proto, input_shapes)
        prepared = graph, analyze(graph)
    graph, base = prepared
    shapes = {name: list(dims) for name, dims in graph.inputs.items()}
    edits: list[Edit] = []
    current = proto
    for kind, needed in (("depth", multipliers.d != 1),
                         ("width", multipliers.w != 1 or multipliers.g != 1),
                         ("resolution", multipliers.r != 1 or options.batch is not None)):
        if not needed:
            continue
        edit = _run_step(kind, current, graph, multipliers, options)
        edits.append(edit)
        current, edit.model = edit.model, None  # the outcome holds the one final model
        if edit.inputs is not None:
            shapes = edit.inputs
        graph = Graph(current, shapes)
    if not edits:
        raise OnnxscaleError("nothing to do: give --width, --depth, --resolution, --batch or "
                             "--strategy with --flops")
    return ScaleOutcome(current, edits, base, analyze(graph), shapes)


def _run_step(kind: str, proto: onnx.ModelProto, graph: Graph, m: Multipliers,
              options: ScaleOptions) -> Edit:
    if kind == "depth":
        from .depth import scale_depth

        return scale_depth(proto, graph, m.d, options)
    if kind == "width":
        from .width import scale_width

        return scale_width(proto, graph, m.w, m.g, options)
    from .resolution import scale_resolution

    return scale_resolution(proto, graph, m.r, options)


def stamp(outcome: ScaleOutcome, source: str, multipliers: Multipliers,
          options: ScaleOptions) -> onnx.ModelProto:
    """Record how the model was scaled in an ``onnxscale`` metadata entry (kept opset/IR)."""
    model = outcome.model
    entry = {"version": __version__, "source": Path(source).name, "multipliers":
             multipliers.as_dict(), "init": options.init, "exact": outcome.exact,
             "flops": {"base": outcome.base.flops, "scaled": outcome.scaled.flops}}
    kept = [p for p in model.metadata_props if p.key != "onnxscale"]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key="onnxscale", value=json.dumps(entry, sort_keys=True))
    return model


def check(model: onnx.ModelProto | bytes | str, full: bool = False) -> None:
    """onnx's checker; a failure here is our bug, reported with the checker's first line.

    Give the serialized bytes when you have them (a big model serializes in seconds), or the
    path of a model saved with external data.
    """
    try:
        onnx.checker.check_model(model, full_check=full)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnnxscaleError(f"the scaled model fails onnx's checker: {first}") from exc


def default_output(source: str, multipliers: Multipliers, options: ScaleOptions) -> Path:
    """``MODEL.w2.onnx`` beside the input (zoo models: in the current folder)."""
    parts = [f"{key}{_fmt(value)}" for key, value in multipliers.as_dict().items() if value != 1]
    if options.batch is not None:
        parts.append(f"b{options.batch}")
    suffix = "." + ".".join(parts) if parts else ".scaled"
    if source.startswith("zoo:"):
        return Path(source[4:] + suffix + ".onnx")
    path = Path(source)
    stem = path.name[:-5] if path.name.endswith(".onnx") else path.name
    return path.with_name(stem + suffix + ".onnx")


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of the right dtype and shape for every graph input."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, dims in graph.inputs.items():
        dtype = onnx.helper.tensor_dtype_to_np_dtype(graph.dtypes.get(name, 1))
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(dims).astype(dtype)
        elif dtype == np.bool_:
            feeds[name] = rng.integers(0, 2, dims).astype(dtype)
        else:
            feeds[name] = rng.integers(0, 4, dims).astype(dtype)
    return feeds


def compare_outputs(base: onnx.ModelProto, scaled: onnx.ModelProto | bytes | str,
                    input_shapes: dict[str, list[int]], seed: int = 0) -> float:
    """Largest relative L2 difference between the two models' outputs on the same inputs.

    ``scaled`` may be a ModelProto, its serialized bytes or a saved file's path.  Only
    meaningful when the inputs and output shapes are unchanged (no resolution change).
    """
    import onnxruntime as ort

    feeds = random_inputs(Graph(base, input_shapes), seed)
    results = []
    for model in (base, scaled):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else model
        session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        results.append(session.run(None, feeds))
    worst = 0.0
    for a, b in zip(*results):
        if a.shape != b.shape:
            return float("inf")
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        worst = max(worst, float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(a64), 1e-12)))
    return worst
