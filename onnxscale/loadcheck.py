"""Would ONNX Runtime load this model?  Asked of its weightless twin, before it is written.

onnx's checker validates a model's structure, not its shapes: a rewrite that left one
BatchNormalization's scale at 256 channels while its input has 448 passes the checker, yet
ONNX Runtime refuses the file at load time ("Dimension mismatch in unification").  Such a
model must never be reported as a success, let alone as "function preserved".

The check runs onnx's strict shape inference, a look at every conv's bias (what ORT checks
only when it runs) and then ORT's own load (graph resolution and kernel creation, no
optimisation) on a *twin* of the model whose large float weights become
graph inputs of the same dtype and dims: the shapes, types and nodes are the model's, the
cost is that of its structure (milliseconds for a 1.5 GB model), and nothing big is copied.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from . import external
from .errors import OnnxscaleError, first_line
from .graph import Graph
from .hollow import copy_fields, hollow_model, is_hollow


class NotLoadable(OnnxscaleError):
    """A model that onnx's strict shape inference or ONNX Runtime's loader refuses."""


def weightless_twin(proto: onnx.ModelProto) -> onnx.ModelProto:
    """``proto`` with each large float weight turned into a graph input of its dtype and dims
    (small tensors, which shape arithmetic reads, stay as they are)."""
    hollow = hollow_model(proto)
    twin = onnx.ModelProto()
    copy_fields(hollow, twin, exclude={"graph"})
    copy_fields(hollow.graph, twin.graph, exclude={"initializer", "input", "node"})
    twin.graph.input.extend(hollow.graph.input)
    declared = {value.name for value in hollow.graph.input}
    for tensor in hollow.graph.initializer:
        if is_hollow(tensor) or external.is_deferred(tensor):  # no data to hand to ORT
            if tensor.name not in declared:
                twin.graph.input.append(helper.make_tensor_value_info(
                    tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            twin.graph.initializer.append(tensor)
    for node in hollow.graph.node:
        value = _hollow_constant(node)
        if value is None:
            twin.graph.node.append(node)
        else:  # a Constant node holding a large weight: an input of the same name
            twin.graph.input.append(helper.make_tensor_value_info(
                node.output[0], value.data_type, list(value.dims)))
    return twin


def _hollow_constant(node: onnx.NodeProto) -> onnx.TensorProto | None:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    value = next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
    return value if value is not None and is_hollow(value) else None


@dataclass
class Verdict:
    """What the load check found: why the scaled model must not be written, or what it could
    not judge (ONNX Runtime refuses the given model too: an IR version or op newer than the
    installed ORT knows is the model's matter, not the rewrite's)."""

    refused: str | None = None
    note: str | None = None


def verdict(proto: onnx.ModelProto, input_shapes: dict[str, list[int]],
            base: onnx.ModelProto | None = None,
            twin: onnx.ModelProto | None = None) -> Verdict:
    """Would onnx's strict shape inference, the conv-bias check or ONNX Runtime refuse
    ``proto`` (at ``input_shapes``)?

    ``base``: the model ``proto`` was made from.  onnx's inference is stricter than ORT in
    places (exporters do write such models, and ORT runs them), so its verdict counts only
    where it accepts the base; ORT's too.  ``twin``: ``proto``'s `weightless_twin`, when the
    caller has it already."""
    twin = twin if twin is not None else weightless_twin(proto)
    why = _onnx_refusal(twin)
    if why and not (base is not None and _onnx_refusal(weightless_twin(base))):
        return Verdict(why)
    why = _bias_refusal(Graph(hollow_model(proto), input_shapes))
    if why:
        return Verdict(why)
    why = _ort_refusal(twin)
    if why and base is not None:
        base_why = _ort_refusal(weightless_twin(base))
        if base_why:
            return Verdict(note=f"not load-checked: this ONNX Runtime refuses the given model "
                                f"as well ({base_why})")
    return Verdict(why)


def _onnx_refusal(twin: onnx.ModelProto) -> str | None:
    try:
        onnx.shape_inference.infer_shapes(twin, check_type=True, strict_mode=True,
                                          data_prop=True)
    except Exception as exc:  # onnx raises InferenceError, or ValidationError for types
        return f"onnx's strict shape inference refuses it: {first_line(exc)}"
    return None


def _bias_refusal(graph: Graph) -> str | None:
    """A Conv or ConvTranspose bias whose length is not the layer's output channels: neither
    onnx's inference nor ORT's load looks at it (a bias computed from a weight's shape, as
    dynamo exports do, is beyond onnx's data propagation); ORT's kernel refuses it at the
    first run."""
    for node in graph.nodes:
        if node.op_type not in ("Conv", "ConvTranspose") or len(node.input) < 3 \
                or not node.input[2]:
            continue
        weight, bias = graph.shapes.get(node.input[1]), graph.shapes.get(node.input[2])
        if not weight or bias is None:
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        out = weight[0] if node.op_type == "Conv" else weight[1] * group
        if tuple(bias) != (out,):
            return (f"node '{node.name}' ({node.op_type}): its bias has shape {list(bias)}, "
                    f"but the layer has {out} output channels")
    return None


def _ort_refusal(twin: onnx.ModelProto) -> str | None:
    try:
        import onnxruntime as ort
    except ImportError:  # onnx's own inference has spoken; ORT is not there to ask
        return None
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        ort.InferenceSession(twin.SerializeToString(), options,
                             providers=["CPUExecutionProvider"])
    except Exception as exc:
        return f"ONNX Runtime refuses to load it: {first_line(exc)}"
    return None
