"""Small, shared edits of ModelProtos for the rewrite steps.

Weights live either in initializers or in Constant nodes (PaddlePaddle exports); `Tensors`
replaces either kind in place, so a rewrite never has to care which one it met.  `copy_model`
copies a model while leaving out the initializers that are about to be replaced: copying a
ResNet-50's 100 MB of weights only to overwrite them would double the peak memory of a
rewrite.  Rewrites always work on such a copy; the input proto is never mutated.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterable

import numpy as np
import onnx
from onnx import helper

from .. import external
from ..hollow import Hollow, copy_fields, fill_hollow


def copy_model(proto: onnx.ModelProto, skip: Iterable[str] = ()) -> onnx.ModelProto:
    """A deep copy of ``proto`` without the initializers named in ``skip``."""
    skip = set(skip)
    model = onnx.ModelProto()
    copy_fields(proto, model, exclude={"graph"})
    copy_fields(proto.graph, model.graph, exclude={"initializer"})
    model.graph.initializer.extend(t for t in proto.graph.initializer if t.name not in skip)
    return model


class Names:
    """Every tensor and node name of a model, to mint fresh unique ones."""

    def __init__(self, model: onnx.ModelProto):
        graph = model.graph
        self.taken = {t.name for t in graph.initializer} | {v.name for v in graph.input}
        self.taken |= {v.name for v in graph.output} | {v.name for v in graph.value_info}
        for node in graph.node:
            self.taken.add(node.name)
            self.taken.update(node.input)
            self.taken.update(node.output)

    def fresh(self, base: str) -> str:
        name, index = base, 1
        while name in self.taken:
            name, index = f"{base}_{index}", index + 1
        self.taken.add(name)
        return name


class Tensors:
    """Replace or add weights of a model in place, whether initializers or Constant nodes."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.names = Names(model)
        self._init = {t.name: t for t in model.graph.initializer}
        self._const = {node.output[0]: node for node in model.graph.node
                       if node.op_type == "Constant" and node.domain in ("", "ai.onnx")}

    def set(self, name: str, array: np.ndarray) -> None:
        """Give weight ``name`` new contents (its name, and so every reader, stays)."""
        node = self._const.get(name)
        if node is not None:
            del node.attribute[:]
            tensor = onnx.TensorProto()
            fill_tensor(tensor, name, array)
            node.attribute.append(helper.make_attribute("value", tensor))
            return
        if name not in self._init:
            self._init[name] = self.model.graph.initializer.add()
        fill_tensor(self._init[name], name, array)

    def add(self, array: np.ndarray, base: str) -> str:
        """A new initializer holding ``array``, under a fresh name derived from ``base``."""
        name = self.names.fresh(base)
        self.set(name, array)
        return name


def fill_tensor(tensor: onnx.TensorProto, name: str, array: np.ndarray) -> None:
    """Write ``array`` into ``tensor`` as raw data, copying the bytes once (weights of a
    widened ResNet-50 are 400 MB: every extra copy shows in time and peak memory).  A planning
    stand-in (`Hollow`) makes a hollow tensor: dims and dtype, no data."""
    if isinstance(array, Hollow):
        fill_hollow(tensor, name, array)
        return
    array = np.asarray(array)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    spill = external.active_spill()
    if spill is not None and array.nbytes >= external.SPILL_BYTES:  # a large model: to disk
        spill.write(tensor, name, memoryview(np.ascontiguousarray(array)).cast("B"),
                    array.shape, helper.np_dtype_to_tensor_dtype(array.dtype))
        return
    tensor.Clear()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.raw_data = np.ascontiguousarray(array).tobytes()


def set_attribute(node: onnx.NodeProto, name: str, value) -> None:
    """Set (or add) attribute ``name`` of ``node``."""
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            break
    node.attribute.append(helper.make_attribute(name, value))


def remove_attribute(node: onnx.NodeProto, name: str) -> None:
    for index, attr in enumerate(node.attribute):
        if attr.name == name:
            del node.attribute[index]
            return


def prune_dead(model: onnx.ModelProto) -> int:
    """Remove nodes (and initializers) whose outputs nothing reads; return how many nodes.

    Rewrites leave dead code behind when they replace a computed input (a Reshape target
    built by Shape/Concat, a weight reached through Identity or Transpose) by a constant.
    """
    graph = model.graph
    used = {v.name for v in graph.output}
    readers: dict[str, int] = defaultdict(int)
    for node in graph.node:
        for name in _node_reads(node):
            readers[name] += 1
    dead = []
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        if any(readers[o] or o in used for o in node.output if o):
            continue
        dead.append(index)
        for name in _node_reads(node):
            readers[name] -= 1
    for index in dead:  # descending, so earlier indices stay valid
        del graph.node[index]
    used |= {v.name for v in graph.input}  # old IR versions list initializers as inputs
    unused = [i for i, t in enumerate(graph.initializer) if not readers[t.name]
              and t.name not in used]
    for index in reversed(unused):
        del graph.initializer[index]
    return len(dead)


def _node_reads(node: onnx.NodeProto) -> list[str]:
    """Tensors a node reads, including outer-scope names used inside its subgraphs."""
    names = [name for name in node.input if name]
    for attr in node.attribute:
        graphs = [attr.g] if attr.HasField("g") else list(attr.graphs)
        for sub in graphs:
            for inner in sub.node:
                names.extend(_node_reads(inner))
    return names


def update_value_info(model: onnx.ModelProto, old: dict[str, tuple[int, ...] | None],
                      new: dict[str, tuple[int, ...] | None]) -> None:
    """Bring declared intermediate shapes in line with a rewrite (onnx's full check fails on
    contradictions).  Only dims whose size changed are rewritten, so symbolic dims (a dynamic
    batch) stay symbolic; entries whose rank changed or that are now unknown are dropped."""
    graph = model.graph
    stale = []
    for index, value in enumerate(graph.value_info):
        before, after = old.get(value.name), new.get(value.name)
        if before is not None and before == after:
            continue
        dims = value.type.tensor_type.shape.dim if value.type.HasField("tensor_type") else []
        if after is None or before is None or not len(before) == len(after) == len(dims):
            stale.append(index)
            continue
        for dim, was, now in zip(dims, before, after):
            if was != now:
                dim.Clear()
                dim.dim_value = int(now)
    for index in reversed(stale):
        del graph.value_info[index]
