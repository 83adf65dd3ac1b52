"""A read-only view of an ONNX graph with every tensor's shape known.

`Graph` indexes the model once: producers and consumers of each tensor, weights (initializers
*and* Constant nodes, since PaddlePaddle and some other exporters keep weights in Constant
nodes), graph inputs with their concrete dims, and the shape and dtype of every tensor, found by
`onnxscale.shapes.propagate` (our own per-op rules plus small-integer constant folding, with
onnx's shape inference as a per-node fallback).  We never run onnx's whole-model
``infer_shapes``: it serializes every weight and takes seconds on big models.

The networkx view (`Graph.nx`, ops as nodes, tensors as edges) is built on demand for the
structural algorithms (channel groups, blocks); the complexity counters only need the index.
"""

from __future__ import annotations

import math
from collections import defaultdict
from functools import cached_property

import numpy as np
import onnx
from onnx import numpy_helper

from . import external
from .errors import OnnxscaleError, UsageError
from .hollow import FLOAT_TYPES, as_hollow, is_hollow  # noqa: F401 (FLOAT_TYPES: re-exported)
from .hollow import SMALL as MAX_FOLD_ELEMENTS
from .model import default_opset
from .shapes import propagate

# Folding constants keeps shape arithmetic (Shape -> Gather -> Concat -> Reshape) exact; we only
# materialize small tensors (at most MAX_FOLD_ELEMENTS) so a weight never gets converted to
# numpy just to be looked at.


class Graph:
    """Index of an ONNX model's main graph: tensors, weights, shapes, producers, consumers."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, list[int]] | None = None):
        self.model = model
        self.opset = default_opset(model)
        graph = model.graph
        self.consts: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self.nodes: list[onnx.NodeProto] = []
        self._name_nodes(graph)
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.dtypes: dict[str, int] = {}
        self.values: dict[str, np.ndarray] = {}
        self.sequences: dict[str, list[tuple[int, ...]]] = {}  # element shapes of sequences
        for name, tensor in self.consts.items():
            self.shapes[name] = tuple(tensor.dims)
            self.dtypes[name] = tensor.data_type
        self.inputs = resolve_input_shapes(graph, self.consts, input_shapes or {})
        for value in graph.input:
            if value.name in self.inputs:
                self.shapes[value.name] = tuple(self.inputs[value.name])
                self.dtypes[value.name] = value.type.tensor_type.elem_type
        self.outputs = [value.name for value in graph.output]
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.output:
                if name:
                    self.producer[name] = node
            for name in node.input:
                if name:
                    self.consumers[name].append(node)
        propagate(self)

    # ---- construction -------------------------------------------------------------------
    def _name_nodes(self, graph: onnx.GraphProto) -> None:
        """Collect nodes in topological order; give unnamed or duplicate nodes unique names.

        Constant nodes become weights (``consts``), not ops: an exporter's choice between an
        initializer and a Constant node should not change any figure we report.
        """
        seen: set[str] = set()
        for index, node in enumerate(graph.node):
            if not node.name or node.name in seen:
                node.name = f"{node.op_type}_{index}"
            seen.add(node.name)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                tensor = constant_tensor(node)
                if tensor is not None:
                    tensor.name = node.output[0]
                    self.consts[node.output[0]] = tensor
                    continue
            self.nodes.append(node)
        self.nodes = topological_order(self.nodes, set(self.consts)
                                       | {v.name for v in graph.input})

    # ---- queries ------------------------------------------------------------------------
    def shape(self, name: str) -> tuple[int, ...] | None:
        return self.shapes.get(name)

    def value(self, name: str) -> np.ndarray | None:
        """The value of a constant or folded tensor (weights are converted on demand; a
        hollow weight of a planning model gives its `Hollow` stand-in)."""
        if name in self.values:
            return self.values[name]
        tensor = self.consts.get(name)
        if tensor is None:
            return None
        if is_hollow(tensor):
            return as_hollow(tensor)
        array = external.array(tensor)  # reads a deferred weight from its data file
        if array.size <= MAX_FOLD_ELEMENTS:
            self.values[name] = array
        return array

    def small_value(self, name: str) -> np.ndarray | None:
        """The value of ``name`` if it is known and small (shape arithmetic), else None."""
        if name in self.values:
            return self.values[name]
        tensor = self.consts.get(name)
        if tensor is not None and math.prod(tensor.dims) <= MAX_FOLD_ELEMENTS \
                and not is_hollow(tensor):
            return self.value(name)
        return None

    def is_weight(self, name: str) -> bool:
        return name in self.consts

    def node(self, name: str) -> onnx.NodeProto:
        return self._nodes_by_name[name]

    @cached_property
    def _nodes_by_name(self) -> dict[str, onnx.NodeProto]:
        return {node.name: node for node in self.nodes}

    @cached_property
    def nx(self):
        """Ops as nodes (plus ``Input``/``Output`` pseudo-nodes), tensors as keyed edges.

        A ``networkx.MultiDiGraph``; networkx is imported here because analysis alone does
        not need it and importing it costs a tenth of a second on every command.
        """
        import networkx

        view = networkx.MultiDiGraph()
        for name in self.inputs:
            view.add_node(name, op="Input")
        for node in self.nodes:
            view.add_node(node.name, op=node.op_type)
        for node in self.nodes:
            for tensor in node.input:
                if not tensor or tensor in self.consts:
                    continue
                source = self.producer[tensor].name if tensor in self.producer else tensor
                if source in view:
                    view.add_edge(source, node.name, key=tensor, shape=self.shapes.get(tensor))
        for tensor in self.outputs:
            sink = f"output:{tensor}"
            view.add_node(sink, op="Output")
            source = self.producer[tensor].name if tensor in self.producer else tensor
            view.add_edge(source, sink, key=tensor, shape=self.shapes.get(tensor))
        return view


def constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The tensor a Constant node produces, whatever attribute form it uses."""
    for attr in node.attribute:
        if attr.name == "value":
            tensor = onnx.TensorProto()
            tensor.CopyFrom(attr.t)
            return tensor
        if attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            values = onnx.helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            return numpy_helper.from_array(np.asarray(values, dtype=dtype))
    return None  # sparse_value / string constants: left as ordinary ops


def topological_order(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Return ``nodes`` in topological order (most models already are; a few are not)."""
    ready = set(available) | {""}
    if all(_inputs_ready(node, ready, add=True) for node in nodes):
        return nodes
    ready = set(available) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        remaining = [node for node in pending if not _inputs_ready(node, ready)]
        progressed = [node for node in pending if _inputs_ready(node, ready)]
        if not progressed:
            missing = next(t for t in remaining[0].input if t not in ready)
            raise OnnxscaleError(f"node '{remaining[0].name}' ({remaining[0].op_type}) reads "
                                 f"tensor '{missing}', which nothing produces (or a cycle)")
        for node in progressed:
            ordered.append(node)
            ready.update(node.output)
        pending = remaining
    return ordered


def _inputs_ready(node: onnx.NodeProto, ready: set[str], add: bool = False) -> bool:
    ok = all(name in ready for name in node.input) or node.op_type in ("Loop", "If", "Scan")
    if ok and add:
        ready.update(node.output)
    return ok


def resolve_input_shapes(graph: onnx.GraphProto, consts: dict[str, onnx.TensorProto],
                         overrides: dict[str, list[int]]) -> dict[str, list[int]]:
    """Concrete dims of every real graph input.

    ``overrides`` come from ``--input-shape``; a symbolic batch (first) dim defaults to 1; any
    other symbolic dim without an override is an error naming the input and the flag.
    """
    real = [value for value in graph.input if value.name not in consts]
    overrides = name_overrides(overrides, [value.name for value in real])
    shapes: dict[str, list[int]] = {}
    for value in real:
        if not value.type.HasField("tensor_type"):
            raise OnnxscaleError(f"input '{value.name}' is not a tensor; only tensor inputs "
                                 f"are supported")
        declared = declared_dims(value)
        if value.name in overrides:
            dims = overrides[value.name]
            if declared is not None and len(declared) != len(dims):
                raise OnnxscaleError(f"--input-shape {value.name}: gives {len(dims)} dims but "
                                     f"the input has rank {len(declared)} "
                                     f"({format_dims(declared)})")
            shapes[value.name] = list(dims)
            continue
        if declared is None:
            raise OnnxscaleError(f"input '{value.name}' has no declared shape; give it with "
                                 f"--input-shape {value.name}:1x3x224x224")
        dims = [1 if (i == 0 and not isinstance(d, int)) else d for i, d in enumerate(declared)]
        if any(not isinstance(d, int) for d in dims):
            example = "x".join(str(d) if isinstance(d, int) else "224" for d in dims)
            raise OnnxscaleError(f"input '{value.name}' has symbolic dims "
                                 f"{format_dims(declared)}; fix them with --input-shape, "
                                 f"e.g. --input-shape {value.name}:{example}")
        shapes[value.name] = dims
    return shapes


def name_overrides(overrides: dict[str, list[int]], names: list[str]) -> dict[str, list[int]]:
    """``--input-shape`` values keyed by input: a bare one (key "") goes to the only input;
    a name that is not an input is a usage error listing the inputs."""
    overrides = {name: list(dims) for name, dims in overrides.items()}
    if "" in overrides:
        if len(names) != 1:
            raise UsageError(f"--input-shape without a name needs a model with one input; "
                             f"this one has {len(names)}: {', '.join(names)}")
        overrides[names[0]] = overrides.pop("")
    for name in overrides:
        if name not in names:
            raise UsageError(f"--input-shape names '{name}', which is not an input of the "
                             f"model (inputs: {', '.join(names)})")
    return overrides


def declared_dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    """An input's dims as declared: ints, or the dim_param name ('?' when anonymous)."""
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str] = []
    for dim in tensor_type.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(dim.dim_value)
        else:
            dims.append(dim.dim_param or "?")
    return dims


def contradicts(declared: list[int | str] | None, dims: list[int]) -> bool:
    """True when ``declared`` (`declared_dims`) fixes a dim to another value than ``dims``:
    the model must be given those dims (`with_input_dims`) to run or be written at them."""
    return declared is not None and any(isinstance(f, int) and f != d
                                        for f, d in zip(declared, dims))


def with_input_dims(proto: onnx.ModelProto, new_dims: dict[str, list[int]]) -> onnx.ModelProto:
    """A copy of ``proto`` whose named inputs have ``new_dims``; stale shapes forgotten."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    for value in out.graph.input:
        if value.name in new_dims:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in new_dims[value.name]:
                shape.dim.add().dim_value = int(d)
    del out.graph.value_info[:]
    for value in out.graph.output:
        if value.type.tensor_type.HasField("shape"):
            for dim in value.type.tensor_type.shape.dim:
                dim.Clear()
    return out


def format_dims(dims) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"
