"""Weights kept in an external data file, read only where a value is needed.

A model saved with external data (``model.onnx`` + ``model.onnx.data``) is mostly weights:
a widened ResNet-50 is a 47 KB graph and 2.4 GB of data.  Analysis, channel groups, blocks
and planning need only each tensor's dims and dtype, which the graph file holds; a rewrite
needs the values of the few weights it changes; a writer copies the rest.  So large external
tensors are *deferred*: they keep their ``location``/``offset``/``length`` entries plus the
absolute path of their (validated) data file under `PATH_KEY`, and their bytes are read when
`array` or `materialized` asks, one tensor at a time.  Small ones (shape arithmetic,
per-channel constants) are read at load time, so nothing else has to care.

A deferred tensor never leaves the process as it is: writers call `materialized` per tensor,
and anything handed to another library whole (ONNX Runtime, for ``--verify``) goes through
`materialized_model` first.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxscaleError

PATH_KEY = "onnxscale.path"  # the absolute data file of a deferred tensor
EAGER_ELEMENTS = 4096        # external tensors up to this size are read at load time


def defer(proto: onnx.ModelProto, model_path: Path) -> None:
    """Check every external tensor of ``proto`` (data file inside the model's folder, present,
    long enough); read the small ones, defer the large ones."""
    base = model_path.resolve().parent
    for tensor in _external_tensors(proto):
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        target = (base / location).resolve()
        if not location or os.path.isabs(location) or not target.is_relative_to(base):
            raise OnnxscaleError(
                f"{model_path}: tensor '{tensor.name}' stores its data at '{location}', "
                f"outside the model's folder; refusing to read it")
        if not target.is_file():
            raise OnnxscaleError(f"{model_path}: external data file '{location}' for tensor "
                                 f"'{tensor.name}' is missing")
        offset, length = int(entries.get("offset", 0)), _length(tensor, entries)
        if offset + length > target.stat().st_size:
            raise OnnxscaleError(f"{model_path}: tensor '{tensor.name}' needs bytes {offset}.."
                                 f"{offset + length} of '{location}', which is shorter")
        tensor.external_data.add(key=PATH_KEY, value=str(target))
        if math.prod(tensor.dims) <= EAGER_ELEMENTS:
            tensor.CopyFrom(materialized(tensor))


def is_deferred(tensor: onnx.TensorProto) -> bool:
    return tensor.data_location == onnx.TensorProto.EXTERNAL and any(
        e.key == PATH_KEY for e in tensor.external_data)


def any_deferred(proto: onnx.ModelProto) -> bool:
    return any(is_deferred(t) for t in _external_tensors(proto))


def data_bytes(tensor: onnx.TensorProto) -> int:
    """The bytes of ``tensor``'s data, without reading a deferred one."""
    if is_deferred(tensor):
        return _length(tensor, {e.key: e.value for e in tensor.external_data})
    return tensor.ByteSize()


def read(tensor: onnx.TensorProto) -> bytes:
    """The raw bytes of a deferred tensor, from its data file."""
    entries = {e.key: e.value for e in tensor.external_data}
    with open(entries[PATH_KEY], "rb") as handle:
        handle.seek(int(entries.get("offset", 0)))
        return handle.read(_length(tensor, entries))


def array(tensor: onnx.TensorProto) -> np.ndarray:
    """The value of any tensor, deferred or not."""
    if not is_deferred(tensor):
        return numpy_helper.to_array(tensor)
    return numpy_helper.to_array(materialized(tensor))


def materialized(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` with its data in ``raw_data`` (a copy; ``tensor`` itself when not
    deferred)."""
    if not is_deferred(tensor):
        return tensor
    copy = inline_shell(tensor)
    copy.raw_data = read(tensor)
    return copy


def inline_shell(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A copy of ``tensor`` without its external-data entries, data or location (cheap: a
    deferred tensor holds no data); what it is once its bytes are put inline."""
    copy = onnx.TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data",
                 "uint64_data", "string_data", "data_location"):
        copy.ClearField(name)
    return copy


def materialized_model(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``proto`` with every deferred tensor read (``proto`` itself when none is)."""
    if not any_deferred(proto):
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    load_all(model)
    return model


def load_all(proto: onnx.ModelProto) -> None:
    """Read every deferred tensor of ``proto`` into it, in place."""
    for tensor in _external_tensors(proto):
        if is_deferred(tensor):
            tensor.CopyFrom(materialized(tensor))


def _external_tensors(proto: onnx.ModelProto):
    from onnx import external_data_helper

    return [t for t in external_data_helper._get_all_tensors(proto)
            if external_data_helper.uses_external_data(t)]


def _length(tensor: onnx.TensorProto, entries: dict[str, str]) -> int:
    if "length" in entries:
        return int(entries["length"])
    itemsize = helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    return math.prod(tensor.dims) * itemsize


# ---- spilling: computed weights to a scratch file while a large model is written ----------

SPILL_BYTES = 1 << 20  # computed weights at least this large go to the spill file
_spill: "Spill | None" = None


class Spill:
    """A scratch data file beside the output: while it is active (``with Spill(folder):``),
    every computed weight of at least `SPILL_BYTES` is written there at once and its tensor
    becomes deferred, so rewriting a model of any size holds one weight in memory at a time.
    The file is removed when the block ends (after the writer has streamed from it)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path: Path | None = None
        self.handle = None

    def __enter__(self) -> "Spill":
        global _spill
        import tempfile

        fd, name = tempfile.mkstemp(prefix=".onnxscale-spill.", suffix=".data", dir=self.folder)
        self.path, self.handle = Path(name), os.fdopen(fd, "w+b")
        _spill = self
        return self

    def __exit__(self, *exc) -> None:
        global _spill
        _spill = None
        self.handle.close()
        self.path.unlink(missing_ok=True)

    def write(self, tensor: onnx.TensorProto, name: str, data: bytes | memoryview,
              dims, data_type: int) -> None:
        """Make ``tensor`` a deferred tensor whose bytes are ``data``, appended here."""
        self.handle.seek(0, os.SEEK_END)
        offset = self.handle.tell()
        self.handle.write(data)
        self.handle.flush()
        tensor.Clear()
        tensor.name, tensor.data_type = name, data_type
        tensor.dims.extend(int(d) for d in dims)
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", self.path.name), ("offset", str(offset)),
                           ("length", str(len(data))), (PATH_KEY, str(self.path))):
            tensor.external_data.add(key=key, value=value)


def active_spill() -> Spill | None:
    """The spill file of the model being written, if it is large enough to have one."""
    return _spill
