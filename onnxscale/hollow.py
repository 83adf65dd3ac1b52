"""Weights without values, so a scaling plan costs what its structure costs.

The solver tries many candidate models to hit a flops target.  Their complexity depends only
on shapes, yet a rewrite with real weights gathers, copies or draws every value of every
candidate (7 of 14 s of EfficientNet-B0 x16 went to drawing random weights that were thrown
away).  A *hollow* model keeps every small tensor (shape arithmetic, per-channel constants up
to `SMALL` elements) and replaces each larger float weight by a TensorProto with
its dims and dtype but no data.  The rewrite steps run unchanged on it: where they compute a
weight they get a `Hollow` stand-in that follows the same shape rules (take, reshape,
transpose, fills), so the planned model has exactly the graph, shapes and complexity the real
rewrite will have, and only the chosen plan is materialized with weights.

Hollow tensors are marked in their ``doc_string``; a hollow model must never be written
(`assert_solid` guards the writer).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

MARK = "onnxscale:hollow"
# tensors at most this large are shape arithmetic or per-channel constants: they stay real
# (cheap, and a rewrite may read their values); `graph.Graph` folds exactly these
SMALL = 4096
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16,
               onnx.TensorProto.DOUBLE}


class Hollow:
    """A weight's shape and dtype, standing in for its values during planning.

    Supports the numpy operations the rewrite steps apply to weights: ``np.take``,
    ``np.transpose``, ``np.full_like``/``zeros_like``/``ones_like``, ``reshape``, ``astype``,
    in-place scaling (``w *= s``), each giving the shape numpy would give.
    """

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def reshape(self, *shape) -> "Hollow":
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        shape = [int(d) for d in shape]
        if -1 in shape:
            known = math.prod(d for d in shape if d != -1)
            shape[shape.index(-1)] = self.size // max(known, 1)
        if math.prod(shape) != self.size:
            raise ValueError(f"cannot reshape {self.shape} into {tuple(shape)}")
        return Hollow(shape, self.dtype)

    def astype(self, dtype, copy: bool = True) -> "Hollow":
        return Hollow(self.shape, dtype)

    def transpose(self, *perm) -> "Hollow":
        if len(perm) == 1 and isinstance(perm[0], (tuple, list)):
            perm = tuple(perm[0])
        perm = perm or tuple(reversed(range(self.ndim)))
        return Hollow([self.shape[p] for p in perm], self.dtype)

    def take(self, indices, axis: int) -> "Hollow":
        shape = list(self.shape)
        shape[axis:axis + 1] = list(np.shape(indices))
        return Hollow(shape, self.dtype)

    def copy(self) -> "Hollow":
        return Hollow(self.shape, self.dtype)

    def __imul__(self, other) -> "Hollow":
        return self

    __itruediv__ = __iadd__ = __isub__ = __imul__

    def __array_function__(self, func, types, args, kwargs):
        handler = _FUNCTIONS.get(func)
        if handler is None:
            return NotImplemented
        return handler(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Hollow({self.shape}, {self.dtype})"


def _like(a: Hollow, *args, dtype=None, shape=None, **kwargs) -> Hollow:
    return Hollow(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


_FUNCTIONS = {
    np.take: lambda a, indices, axis=None, **kw: a.take(indices, axis),
    np.transpose: lambda a, axes=None: a.transpose(axes or ()),
    np.reshape: lambda a, shape, **kw: a.reshape(shape),
    np.full_like: lambda a, fill_value, dtype=None, **kw: _like(a, dtype=dtype, **kw),
    np.zeros_like: _like,
    np.ones_like: _like,
    np.empty_like: _like,
    np.ascontiguousarray: lambda a, dtype=None, **kw: _like(a, dtype=dtype),
    np.copy: lambda a, **kw: a.copy(),
}


# ---- tensors ---------------------------------------------------------------------------------

def is_hollow(tensor: onnx.TensorProto) -> bool:
    return tensor.doc_string == MARK


def hollow_tensor(name: str, shape, data_type: int) -> onnx.TensorProto:
    """A TensorProto with ``shape`` and ``data_type`` and no data."""
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = data_type
    tensor.dims.extend(int(d) for d in shape)
    tensor.doc_string = MARK
    return tensor


def fill_hollow(tensor: onnx.TensorProto, name: str, array: Hollow) -> None:
    tensor.Clear()
    tensor.CopyFrom(hollow_tensor(name, array.shape,
                                  helper.np_dtype_to_tensor_dtype(array.dtype)))


def as_hollow(tensor: onnx.TensorProto) -> Hollow:
    return Hollow(tensor.dims, helper.tensor_dtype_to_np_dtype(tensor.data_type))


def _hollowed(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` itself if it stays real, else its hollow stand-in."""
    if tensor.data_type in FLOAT_TYPES and math.prod(tensor.dims) > SMALL:
        return hollow_tensor(tensor.name, tensor.dims, tensor.data_type)
    return tensor


# ---- models ----------------------------------------------------------------------------------

def hollow_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` whose large float weights (initializers and Constant nodes) have
    no data: everything a plan needs, at the cost of the graph's structure alone."""
    model = onnx.ModelProto()
    copy_fields(proto, model, exclude={"graph"})
    graph = model.graph
    copy_fields(proto.graph, graph, exclude={"initializer", "node"})
    graph.initializer.extend(_hollowed(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        graph.node.append(_hollow_node(node))
    return model


def _hollow_node(node: onnx.NodeProto) -> onnx.NodeProto:
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return node
    value = next((a for a in node.attribute if a.name == "value"), None)
    if value is None or value.t is None or _hollowed(value.t) is value.t:
        return node
    copy = onnx.NodeProto()
    copy_fields(node, copy, exclude={"attribute"})
    for attr in node.attribute:
        if attr is value:
            copy.attribute.append(helper.make_attribute("value", _hollowed(attr.t)))
        else:
            copy.attribute.append(attr)
    return copy


def copy_fields(source, target, exclude: set[str]) -> None:
    """Copy every set field of protobuf message ``source`` but ``exclude`` into ``target``."""
    for fd, value in source.ListFields():
        if fd.name in exclude:
            continue
        if fd.is_repeated:
            getattr(target, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(target, fd.name).CopyFrom(value)
        else:
            setattr(target, fd.name, value)


def assert_solid(proto: onnx.ModelProto) -> None:
    """Refuse to go on with a model that still holds hollow weights (a bug, never the user's)."""
    for tensor in proto.graph.initializer:
        if is_hollow(tensor):
            raise AssertionError(f"internal: weight '{tensor.name}' is hollow (a planning "
                                 f"stand-in) in a model about to be written")
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.name == "value" and attr.HasField("t") and is_hollow(attr.t):
                raise AssertionError(f"internal: Constant '{node.name}' is hollow in a model "
                                     f"about to be written")
