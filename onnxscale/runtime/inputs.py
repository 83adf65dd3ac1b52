"""The inputs a configuration is timed on: the model's real input dtypes and shapes at the
requested batch (rewriting a fixed batch where the graph allows it), random values, and the
fp16 copy of the model that providers other than TensorRT run for ``--precision fp16``."""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import OnnxscaleError, UsageError
from ..feeds import random_feeds
from ..graph import contradicts, declared_dims, format_dims, name_overrides, with_input_dims


_NUMPY_TYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT16: np.int16,
    TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}


ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
}


@dataclass
class InputSpec:
    """One graph input as it will be fed."""

    name: str
    elem_type: int
    dims: list[int]
    batched: bool

    @property
    def dtype(self):
        return _NUMPY_TYPES[self.elem_type]

    @property
    def type_name(self) -> str:
        return TensorProto.DataType.Name(self.elem_type).lower()


@dataclass
class PreparedModel:
    """A model ready to feed at one batch: input specs and the graph to give onnxruntime."""

    proto: onnx.ModelProto
    specs: list[InputSpec]
    batch: int
    rebatched: bool                          # the graph's fixed input dims were rewritten
    batch_outputs: list[str]                 # outputs whose dim 0 must follow the batch
    _payloads: dict = field(default_factory=dict, repr=False)

    @property
    def shapes(self) -> dict[str, list[int]]:
        """Every fed input's dims, as `graph.Graph` takes them (symbolic dims resolved)."""
        return {spec.name: list(spec.dims) for spec in self.specs}

    def payload(self, fp16: bool) -> bytes | str:
        """Serialized model (fp16-converted if asked), cached; a path for >1.8 GB models."""
        if fp16 not in self._payloads:
            proto = to_fp16(self.proto) if fp16 else self.proto
            self._payloads[fp16] = serialize(proto)
        return self._payloads[fp16]

    def feed_specs(self, fp16: bool) -> list[InputSpec]:
        if not fp16:
            return self.specs
        return [InputSpec(s.name, TensorProto.FLOAT16 if s.elem_type == TensorProto.FLOAT
                          else s.elem_type, s.dims, s.batched) for s in self.specs]


def graph_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Inputs that need feeding (old exporters also list initializers as inputs)."""
    inits = {t.name for t in proto.graph.initializer}
    return [i for i in proto.graph.input if i.name not in inits]


def prepare(proto: onnx.ModelProto, batch: int | None, shapes: dict[str, list[int]],
            source: str) -> PreparedModel:
    """Decide the shape of every input at ``batch`` (None: the model's own batch).

    Raises `OnnxscaleError` / `UsageError` for things the user must fix: a symbolic dim with no
    ``--input-shape``, an ``--input-shape`` naming no input, a non-tensor or unsupported dtype.
    """
    inputs = graph_inputs(proto)
    if not inputs:
        raise OnnxscaleError(f"{source}: the model has no inputs to feed")
    names = [i.name for i in inputs]
    shapes = name_overrides(shapes, names)

    model_dims: dict[str, list | None] = {}
    for value in inputs:
        kind = value.type.WhichOneof("value")
        if kind != "tensor_type":
            raise OnnxscaleError(f"{source}: input '{value.name}' is a {kind or 'typeless value'}, "
                                 f"not a tensor; bench feeds tensors only")
        elem = value.type.tensor_type.elem_type
        if elem not in _NUMPY_TYPES:
            raise OnnxscaleError(f"{source}: input '{value.name}' has type "
                                 f"{TensorProto.DataType.Name(elem).lower()}; bench can only make "
                                 f"random numeric and bool inputs")
        dims = declared_dims(value)
        if dims is not None and value.name in shapes and len(shapes[value.name]) != len(dims):
            raise UsageError(f"--input-shape {value.name}: {len(shapes[value.name])} dims given, "
                             f"the input has {len(dims)} {format_dims(dims)}")
        model_dims[value.name] = dims

    # The model's fixed batch: dim 0 of the first input of rank >= 2 whose dim 0 is a number.
    fixed_batch = next((d[0] for d in model_dims.values()
                        if d is not None and len(d) >= 2 and isinstance(d[0], int)), None)
    dynamic = any(d is not None and len(d) >= 1 and not isinstance(d[0], int)
                  for d in model_dims.values())

    def is_batched(name: str) -> bool:
        d = model_dims[name]
        if d is None:
            return len(shapes.get(name, [])) >= 1
        if not d:
            return False
        if not isinstance(d[0], int):
            return True
        return not dynamic and len(d) >= 2 and d[0] == fixed_batch

    batched = {n: is_batched(n) for n in names}
    if batch is not None and batch != 1 and not any(batched.values()):
        listed = ", ".join(f"{n} {format_dims(model_dims[n] or [])}" for n in names)
        raise OnnxscaleError(f"{source}: no input has a batch dimension ({listed}); "
                             f"--batch {batch} cannot apply")
    if batch is None:
        explicit = [shapes[n][0] for n in names if batched[n] and n in shapes]
        batch = explicit[0] if explicit else (fixed_batch if fixed_batch and not dynamic else 1)

    specs: list[InputSpec] = []
    rewrite: dict[str, list[int]] = {}
    for value in inputs:
        name = value.name
        dims = list(shapes.get(name) or model_dims[name] or [])
        if model_dims[name] is None and name not in shapes:
            raise OnnxscaleError(f"{source}: input '{name}' has no shape in the graph; give it "
                                 f"with --input-shape {name}:DxDx...")
        if batched[name]:
            dims[0] = batch
        if any(not isinstance(d, int) for d in dims):
            example = "x".join(str(d) if isinstance(d, int) else
                               (d if d and re.fullmatch(r"[A-Za-z_]\w{0,7}", d) else "D")
                               for d in dims)
            raise OnnxscaleError(f"{source}: input '{name}' has symbolic dims "
                                 f"{format_dims(model_dims[name])}; fix them with --input-shape "
                                 f"{name}:{example}")
        if contradicts(model_dims[name], dims):
            rewrite[name] = dims
        specs.append(InputSpec(name, value.type.tensor_type.elem_type, dims, batched[name]))

    batch_outputs: list[str] = []
    fed = proto
    if rewrite:
        fed = with_input_dims(proto, rewrite)
        if fixed_batch is not None and batch != fixed_batch:
            for out in proto.graph.output:
                d = declared_dims(out)
                if d and d[0] == fixed_batch:
                    batch_outputs.append(out.name)
    return PreparedModel(fed, specs, int(batch), bool(rewrite), batch_outputs)


def random_inputs(specs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Random tensors of the specs' dtypes and dims (`feeds`: the rule ``--verify`` uses)."""
    return random_feeds((spec.name, list(spec.dims), spec.dtype) for spec in specs)


# (op, input index) that must stay float32 whatever the model's precision.
_FP32_SLOTS = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy: float32 weights, constants, casts and graph inputs/outputs become float16
    (inputs are then fed as float16).  Resize/Upsample scales stay float32."""
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    keep = {node.input[i] for node in graph.node for (op, i) in _FP32_SLOTS
            if node.op_type == op and len(node.input) > i and node.input[i]}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in keep:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16),
                                                  init.name))
    for node in graph.node:
        if any(o in keep for o in node.output):
            continue
        for attr in node.attribute:
            if node.op_type in ("Constant", "ConstantOfShape") and attr.name == "value" and \
                    attr.t.data_type == TensorProto.FLOAT:
                attr.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attr.t).astype(np.float16), attr.t.name))
            elif node.op_type == "Constant" and attr.name in ("value_float", "value_floats"):
                values = [attr.f] if attr.name == "value_float" else list(attr.floats)
                arr = np.array(values if attr.name == "value_floats" else values[0], np.float16)
                node.ClearField("attribute")
                node.attribute.add().CopyFrom(onnx.helper.make_attribute(
                    "value", numpy_helper.from_array(arr)))
                break
            elif node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT:
                attr.i = TensorProto.FLOAT16
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT and value.name not in keep:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    return out


def serialize(proto: onnx.ModelProto) -> bytes | str:
    if proto.ByteSize() < 1_800_000_000:
        return proto.SerializeToString()
    folder = tempfile.mkdtemp(prefix="onnxscale-bench-")
    path = os.path.join(folder, "model.onnx")
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    return path


def is_dynamic(proto: onnx.ModelProto, name: str) -> bool:
    for value in proto.graph.input:
        if value.name == name:
            dims = declared_dims(value)
            return dims is None or any(not isinstance(d, int) for d in dims)
    return False


def static_output_shapes(prepared: PreparedModel, fp16: bool) -> list[list[int]] | None:
    """Output shapes from ONNX shape inference at the fed input shapes, if all are known."""
    proto = onnx.ModelProto()
    proto.CopyFrom(to_fp16(prepared.proto) if fp16 else prepared.proto)
    specs = {s.name: s.dims for s in prepared.specs}
    for value in proto.graph.input:
        if value.name in specs:
            shape = value.type.tensor_type.shape
            del shape.dim[:]
            for d in specs[value.name]:
                shape.dim.add().dim_value = d
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        return None
    shapes = []
    for out in inferred.graph.output:
        d = declared_dims(out)
        if d is None or any(not isinstance(x, int) for x in d):
            return None
        shapes.append(d)
    return shapes
