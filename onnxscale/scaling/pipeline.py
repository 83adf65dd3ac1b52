"""One rewrite pipeline for depth, width and resolution: plan -> apply -> verify -> write.

Each step is a function ``step(proto, graph, ..., options) -> Edit`` that returns a *new*
ModelProto (the input is never mutated) and says whether it preserved the function
(``exact``) and what it did (``details``, for ``--json``).  The order is fixed: depth first
(new blocks are clones at the base width), then width (widens old and new blocks alike), then
resolution and batch (they only touch the input and what is baked to its size).

The steps run twice, on two kinds of model: `plan_scale` runs them on a hollow model (large
weights have shapes, no values: `onnxscale.hollow`) and gives a `Plan` with the exact
complexity and weight bytes of the result at the cost of its structure alone; `apply_plan`
runs them on the real model, once, for the plan chosen.  The solver searches plans.

The strategy math (`strategy.py`) decides the multipliers; nothing here decides how much to
scale.
"""

from __future__ import annotations

import dataclasses
import json
import os
import weakref
from pathlib import Path

import numpy as np
import onnx

from .. import external
from ..version import __version__
from ..complexity import Report, analyze
from ..errors import OnnxscaleError, UsageError, first_line
from ..export import is_hub_model
from ..feeds import random_feeds
from ..graph import Graph, contradicts, declared_dims, with_input_dims
from ..hollow import hollow_model
from ..model import model_stem
from .depth.deepen import scale_depth
from .plan import (INIT_POLICIES, Edit, Multipliers, Plan, ScaleOptions, ScaleOutcome,
                   format_bytes)
from .resolution.resize import FlattenedHeadSize, scale_resolution, spatial_axes
from .resolution.sizes import InputSizes, find_sizes
from .width.groups import ChannelGroups
from .width.widen import scale_width

__all__ = ["Multipliers", "ScaleOptions", "ScaleOutcome", "Plan", "Edit", "Planner",
           "scale_model", "plan_scale", "apply_plan", "stamp", "check", "default_output",
           "random_inputs", "compare_outputs"]

# Up-front refusal: a plan itself costs time and memory in proportion to the model it
# describes (``--depth 1e9`` is a billion hollow blocks), so multipliers whose rough size
# estimate exceeds the limit this many times over are refused before planning.
ESTIMATE_SLACK = 4
CHECK_IN_MEMORY_BYTES = 2**31 - 2**24  # protobuf's 2 GiB limit, with room to spare
PLAN_CACHE = 256  # plans a Planner keeps (figures and edit records, no model: small)


class Planner:
    """The hollow base model, indexed and analyzed once, to plan many candidates cheaply."""

    def __init__(self, proto: onnx.ModelProto, input_shapes: dict[str, list[int]]):
        self.hollow = hollow_model(proto)
        self.graph = Graph(self.hollow, input_shapes)
        self.base = analyze(self.graph)
        self.input_shapes = input_shapes
        self.cache = _DepthCache()
        self._sizes: dict[int, InputSizes] = {}
        self._plans: dict[tuple, Plan] = {}

    def plan(self, multipliers: Multipliers, options: ScaleOptions) -> Plan:
        if multipliers.r != 1 and options.input_sizes is None:
            options = dataclasses.replace(options, input_sizes=self.sizes(options))
        key = self._realization(multipliers, options)
        if key in self._plans:  # other multipliers, the same model after rounding
            return dataclasses.replace(self._plans[key], multipliers=multipliers,
                                       options=options)
        plan = plan_scale(self.hollow, self.input_shapes, multipliers, options,
                          (self.graph, self.base), self.cache)
        if key is not None:
            if len(self._plans) >= PLAN_CACHE:
                self._plans.pop(next(iter(self._plans)))
            self._plans[key] = plan
        return plan

    def _realization(self, m: Multipliers, options: ScaleOptions) -> tuple | None:
        """What a plan is made of once every multiplier is rounded: block counts per stage,
        every channel group's new width (and grouped convs' groups), the new input dims.
        Equal keys give equal plans, and a search meets the same rounded model many times
        (multiples of 8 channels, whole blocks), so a plan is made once per key.  None when
        a step would refuse (the plan itself then says why)."""
        from .depth.deepen import depth_key
        from .resolution.resize import _new_inputs
        from .width.widen import plan_widths

        try:
            _refuse_estimate(self.base, m, options)  # --depth 1e9: refused before building
            depth, graph = None, self.graph
            if m.d != 1:
                _, _, graph = self.cache.deepen(self.hollow, self.graph, m.d, options)
                depth = depth_key(self.cache.found, m.d, options.rounding)
            width = None
            if m.w != 1 or m.g != 1:
                widths = plan_widths(self.cache.groups(graph), m.w, m.g, options.divisor,
                                     options.rounding)
                width = (tuple(sorted(widths.new.items())),
                         tuple(sorted(widths.new_groups.items())))
            inputs = _new_inputs(self.graph, m.r, options)
        except OnnxscaleError:
            return None
        return (depth, width, tuple((name, tuple(dims)) for name, dims in inputs.items()),
                m.d != 1, m.w != 1 or m.g != 1, m.r != 1, options.init, options.seed,
                options.divisor, options.rounding, options.batch, options.max_bytes)

    def sizes(self, options: ScaleOptions) -> InputSizes:
        """The input sizes this model accepts (`sizes.find_sizes`), probed once."""
        divisor = options.resolution_divisor
        if divisor not in self._sizes:
            probe = dataclasses.replace(options, batch=None, input_sizes=None)

            def accepts(dims: dict[str, list[int]]) -> str | None:
                try:
                    scale_resolution(self.hollow, self.graph, 2.0, probe, sizes=dims)
                except FlattenedHeadSize:
                    return None  # bands of sizes, not a lattice: see FlattenedHeadSize
                except OnnxscaleError as exc:  # said under "resolution:" already
                    return str(exc.__cause__ or exc).removeprefix("resolution: ")
                return None

            self._sizes[divisor] = find_sizes(accepts, self.graph.inputs, spatial_axes, divisor)
        return self._sizes[divisor]

    def unavailable(self, letters: str, options: ScaleOptions) -> dict[str, str]:
        """The dimensions among ``letters`` (of d, w, r) this model cannot scale at all, with
        the reason: a plan doubling that dimension alone fails (no repeatable blocks, no
        channel group to widen, an input size baked in).  A plan too large for the size
        limit still counts as possible."""
        probes = {"d": Multipliers(d=2.0), "w": Multipliers(w=2.0), "r": Multipliers(r=2.0)}
        found = {}
        for letter in letters:
            try:
                self.plan(probes[letter], options)
            except TooLarge:
                continue
            except OnnxscaleError as exc:
                found[letter] = str(exc)
        return found


class _DepthCache:
    """Deepened hollow models by block counts per stage (and init policy).

    Depth moves in whole blocks, so a search over s meets the same deepened model again and
    again (d = s^0.1 for dWr); its width and resolution steps then differ."""

    def __init__(self):
        self.found = None
        self.models: dict[tuple, tuple[onnx.ModelProto, Edit, Graph]] = {}
        # channel groups of the base and the deepened graphs: the plan key and the width step
        # both need them (weak: a graph the depth cache drops takes its groups along)
        self._groups: weakref.WeakKeyDictionary[Graph, ChannelGroups] = \
            weakref.WeakKeyDictionary()

    def groups(self, graph: Graph) -> ChannelGroups:
        from .width.rules import find_groups

        if graph not in self._groups:
            self._groups[graph] = find_groups(graph)
        return self._groups[graph]

    def deepen(self, proto, graph, d: float, options: ScaleOptions):
        from .depth.blocks import find_blocks
        from .depth.deepen import depth_key

        if self.found is None:
            self.found = find_blocks(graph)
        key = (depth_key(self.found, d, options.rounding), options.init, options.seed)
        if key not in self.models:
            edit = scale_depth(proto, graph, d, options, found=self.found)
            model, deeper, edit.model, edit.graph = edit.model, edit.graph, None, None
            if len(self.models) >= 8:  # hollow models are small, but a search is long
                self.models.pop(next(iter(self.models)))
            self.models[key] = (model, edit, deeper)
        return self.models[key]


def scale_model(proto: onnx.ModelProto, input_shapes: dict[str, list[int]],
                multipliers: Multipliers, options: ScaleOptions) -> ScaleOutcome:
    """Plan, check the plan's size against ``options.max_bytes``, then apply it."""
    plan = Planner(proto, input_shapes).plan(multipliers, options)
    return apply_plan(proto, input_shapes, plan)


def plan_scale(hollow: onnx.ModelProto, input_shapes: dict[str, list[int]],
               multipliers: Multipliers, options: ScaleOptions,
               prepared: tuple[Graph, Report], cache: "_DepthCache | None" = None) -> Plan:
    """Run the steps on a hollow model: the scaled structure and its exact complexity.

    ``prepared`` is the hollow model's graph and report (built once by `Planner`).  Raises a
    `UsageError` when the result's weights or batch-1 activations exceed ``options.max_bytes``.
    """
    _check_options(options)
    multipliers.validate()
    graph, base = prepared
    if multipliers.d != 1 or multipliers.w != 1 or multipliers.g != 1:
        _refuse_quantized(graph)
    _refuse_estimate(base, multipliers, options)
    # no r=1 step to declare overridden input dims: the figures are the same without it
    model, edits, graph, inputs = _run_steps(hollow, graph, multipliers, options, cache,
                                             declare_inputs=False)
    scaled = analyze(graph)
    plan = Plan(multipliers, options, base, scaled, inputs, _planned_weight_bytes(graph), edits,
                graph)
    _refuse_plan(plan)
    return plan


def apply_plan(proto: onnx.ModelProto, input_shapes: dict[str, list[int]],
               plan: Plan) -> ScaleOutcome:
    """Write the planned model with real weights; its complexity must equal the plan's."""
    graph = Graph(proto, input_shapes)
    model, edits, graph, inputs = _run_steps(proto, graph, plan.multipliers, plan.options)
    scaled = analyze(graph)
    planned = (plan.scaled.flops, plan.scaled.params, plan.scaled.acts)
    if (scaled.flops, scaled.params, scaled.acts) != planned:
        raise AssertionError(f"internal: the written model (flops, params, acts) = "
                             f"{(scaled.flops, scaled.params, scaled.acts)} differs from its "
                             f"plan {planned}")
    return ScaleOutcome(model, edits, plan.base, scaled, inputs)


def _run_steps(proto: onnx.ModelProto, graph: Graph, multipliers: Multipliers,
               options: ScaleOptions, cache: _DepthCache | None = None,
               declare_inputs: bool = True):
    shapes = {name: list(dims) for name, dims in graph.inputs.items()}
    edits: list[Edit] = []
    current, owned = proto, False  # owned: an intermediate model no one else holds
    for kind, needed in (("depth", multipliers.d != 1),
                         ("width", multipliers.w != 1 or multipliers.g != 1),
                         ("resolution", multipliers.r != 1 or options.batch is not None
                          or declare_inputs and _declares_other_dims(proto, shapes))):
        if not needed:
            continue
        if kind == "depth" and cache is not None:
            current, edit, graph = cache.deepen(current, graph, multipliers.d, options)
            edits.append(edit)
            continue
        found = cache.groups(graph) if kind == "width" and cache is not None else None
        edit = _run_step(kind, current, graph, multipliers, options, owned, found)
        owned = True
        edits.append(edit)
        current, edit.model = edit.model, None  # the outcome holds the one final model
        if edit.inputs is not None:
            shapes = edit.inputs
        graph = edit.graph if edit.graph is not None else Graph(current, shapes)
        edit.graph = None
    if not edits:
        raise OnnxscaleError("nothing to do: give --width, --depth, --resolution, --batch or "
                             "--strategy with --flops")
    return current, edits, graph, shapes


def _declares_other_dims(proto: onnx.ModelProto, shapes: dict[str, list[int]]) -> bool:
    """True when an input declares fixed dims other than those it is scaled at (--input-shape
    over a fixed 224): the resolution step, at r=1, then writes the dims the figures are for,
    so the file agrees with what `scale` reports."""
    return any(contradicts(declared_dims(value), shapes[value.name])
               for value in proto.graph.input if value.name in shapes)


def _run_step(kind: str, proto: onnx.ModelProto, graph: Graph, m: Multipliers,
              options: ScaleOptions, owned: bool, found: ChannelGroups | None = None) -> Edit:
    if kind == "depth":
        return scale_depth(proto, graph, m.d, options)
    if kind == "width":
        return scale_width(proto, graph, m.w, m.g, options, found)
    return scale_resolution(proto, graph, m.r, options, in_place=owned)


def _check_options(options: ScaleOptions) -> None:
    if options.init not in INIT_POLICIES:
        raise OnnxscaleError(f"--init must be one of {', '.join(INIT_POLICIES)}")


def _refuse_estimate(base: Report, m: Multipliers, options: ScaleOptions) -> None:
    """Refuse multipliers far beyond the size limit before spending time planning them.

    params grow about d*w^2 and acts d*w*r^2 (docs/concepts.md, Strategies); the plan then
    checks exactly."""
    params = 4.0 * max(base.params, 1) * max(m.d, 1) * max(m.w, 1) ** 2 * max(m.g, 1)
    acts = 4.0 * max(base.acts, 1) * max(m.d, 1) * max(m.w, 1) * max(m.r, 1) ** 2
    limit = ESTIMATE_SLACK * options.max_bytes
    if params > limit:
        raise UsageError(f"multipliers d={m.d:g} w={m.w:g} would need about "
                         f"{format_bytes(params)} of weights (limit "
                         f"{format_bytes(options.max_bytes)}; raise it with --max-size)")
    if acts > limit:
        raise UsageError(f"multipliers d={m.d:g} w={m.w:g} r={m.r:g} would need about "
                         f"{format_bytes(acts)} of activations at batch 1 (limit "
                         f"{format_bytes(options.max_bytes)}; raise it with --max-size)")


def _refuse_plan(plan: Plan) -> None:
    limit = plan.options.max_bytes
    if plan.weight_bytes > limit:
        raise TooLarge(f"the scaled model would need {format_bytes(plan.weight_bytes)} of "
                       f"weights (limit {format_bytes(limit)}; raise it with --max-size)")
    if plan.activation_bytes > limit:
        raise TooLarge(f"the scaled model would need {format_bytes(plan.activation_bytes)} "
                       f"of activations at batch 1 (limit {format_bytes(limit)}; raise it "
                       f"with --max-size)")


# the ops onnxruntime's quantizer writes (QOperator, QDQ and dynamic formats)
QUANTIZED_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QGemm",
                 "DynamicQuantizeLinear", "QuantizeLinear", "DequantizeLinear")


class QuantizedModel(OnnxscaleError):
    """Depth or width asked of a quantized model (refused up front, with the way there)."""


def _refuse_quantized(graph: Graph) -> None:
    """New blocks and channels need float weights and calibrated scales for each new tensor;
    rather than write a model whose quantization does not match its data, say how to get
    there.  Resolution and batch keep every weight, so they work on quantized models."""
    node = next((n for n in graph.nodes if n.op_type in QUANTIZED_OPS), None)
    if node is not None:
        raise QuantizedModel(
            f"node '{node.name}' ({node.op_type}): the model is quantized, and onnxscale changes "
            f"depth and width of float models only; scale the float model, then quantize the "
            f"result (onnxruntime.quantization.quantize_dynamic or quantize_static); "
            f"--resolution and --batch work on quantized models as they are")


class TooLarge(UsageError):
    """A plan beyond the size limit (the solver treats it as 'too big', not as a failure)."""


def _planned_weight_bytes(graph: Graph) -> int:
    """Bytes of every weight (initializers and Constant nodes) of a (possibly hollow) model,
    from dims and dtypes alone: what the planned model will hold in memory."""
    total = 0
    for tensor in graph.consts.values():
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        except (KeyError, TypeError, ValueError):
            itemsize = 4
        total += int(np.prod(tensor.dims, dtype=np.int64)) * itemsize
    return total


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
    if isinstance(model, (str, Path)) and os.path.getsize(model) < CHECK_IN_MEMORY_BYTES \
            and not os.path.exists(f"{model}.data"):
        # onnx checks a file by path 2-3x slower than the same bytes read by us
        model = Path(model).read_bytes()
    try:
        onnx.checker.check_model(model, full_check=full)
    except Exception as exc:
        raise OnnxscaleError(f"the scaled model fails onnx's checker: {first_line(exc)}") \
            from exc


def check_base(proto: onnx.ModelProto, source: str) -> None:
    """Raise when the *given* model already fails onnx's checker, the likelier cause of a
    scaled model failing it: exporters do write invalid models (torch's dynamo exporter at
    opset 17 keeps opset 18's ``num_outputs`` on Split), and scaling keeps every node it does
    not resize as it is.  Run only after the scaled model failed: a clean input costs nothing."""
    try:
        onnx.checker.check_model(proto)
    except ValueError:  # over protobuf's 2 GiB in memory: no answer, keep the scaled error
        return
    except Exception as exc:
        raise OnnxscaleError(f"{source} fails onnx's checker before any change "
                             f"({first_line(exc)}); "
                             f"fix or re-export it: nodes that are not scaled stay as they "
                             f"are") from exc


def default_output(source: str, multipliers: Multipliers, options: ScaleOptions) -> Path:
    """``MODEL.w2.onnx`` beside the input (models by name: in the current folder)."""
    parts = [f"{key}{_fmt(value)}" for key, value in multipliers.as_dict().items() if value != 1]
    if options.batch is not None:
        parts.append(f"b{options.batch}")
    suffix = "." + ".".join(parts) if parts else ".scaled"
    name = model_stem(source) + suffix + ".onnx"
    if source.startswith("zoo:") or is_hub_model(source):
        return Path(name)
    return Path(source).with_name(name)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def random_inputs(graph: Graph, seed: int = 0) -> dict[str, np.ndarray]:
    """Random feeds of the right dtype and shape for every graph input (`feeds`)."""
    return random_feeds((name, dims, onnx.helper.tensor_dtype_to_np_dtype(
        graph.dtypes.get(name, onnx.TensorProto.FLOAT))) for name, dims in graph.inputs.items())


def compare_outputs(base: onnx.ModelProto, scaled: onnx.ModelProto | bytes | str,
                    input_shapes: dict[str, list[int]], seed: int = 0) -> float:
    """Largest relative L2 difference between the two models' outputs on the same inputs.

    ``scaled`` may be a ModelProto, its serialized bytes or a saved file's path.  Only
    meaningful when the inputs and output shapes are unchanged (no resolution change).
    """
    import onnxruntime as ort

    graph = Graph(base, input_shapes)
    feeds = random_inputs(graph, seed)
    base = external.materialized_model(base)  # ORT reads it from bytes: no data file path
    if _declares_other_dims(base, graph.inputs):  # --input-shape over fixed dims: run at those
        base = with_input_dims(base, graph.inputs)
    results = []
    for model in (base, scaled):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        # two runs to compare, not a timing: idle threads sleep instead of spinning (spinning
        # threads take the CPU from whatever else runs, a parallel test suite included)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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
