"""Loading and saving models safely.

A model argument is either a path to an ``.onnx`` file or ``zoo:NAME`` for a built-in model.
Loading validates everything a user can get wrong (missing file, garbage bytes, external data
pointing outside the model's folder, unsupported opset) and turns it into an `OnnxscaleError`.
Saving is atomic (write to a temporary file in the target folder, then rename) and refuses to
overwrite the model it was loaded from.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from . import external
from .errors import OnnxscaleError, UsageError
from .export import is_hub_model
from .hollow import assert_solid
from .standardform import standard_form

ZOO_PREFIX = "zoo:"
MIN_OPSET, MAX_OPSET = 9, 23
# protobuf cannot serialize a message over 2 GiB; above this we write weights as external data.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


@dataclass
class LoadedModel:
    """A model plus where it came from (``path`` is None for zoo models)."""

    proto: onnx.ModelProto
    source: str
    path: Path | None
    # fused ops and exporter idioms read as the standard ops they compute (`standardform`)
    rewritten: dict[str, int] = field(default_factory=dict)


def model_stem(source: str) -> str:
    """The name files made from ``source`` start with: ``zoo:NAME``, ``torchvision:NAME`` and
    ``timm:NAME`` give NAME (a colon in a file name breaks Windows, and ``scp``/``rsync`` read
    ``host:path``), a path its file name without ``.onnx``."""
    if source.startswith(ZOO_PREFIX) or is_hub_model(source):
        name = source.split(":", 1)[1]
    else:
        name = Path(source).name.removesuffix(".onnx")
    return re.sub(r"[^\w.+-]", "-", name) or "model"


def load_model(spec: str, *, seed: int = 0, lazy: bool = False) -> LoadedModel:
    """Load ``spec`` (a path, ``zoo:NAME``, ``torchvision:NAME`` or ``timm:NAME``) and check
    it is an ONNX model we can read.

    ``lazy``: large weights in an external data file are not read (`external`): analysis
    and planning need their dims only, and writing streams them one at a time."""
    if spec.startswith(ZOO_PREFIX):
        from . import zoo

        return LoadedModel(zoo.build(spec[len(ZOO_PREFIX):], seed=seed), spec, None)
    if is_hub_model(spec):  # torchvision:NAME, timm:NAME: exported once, then cached
        from .export import exported

        path = exported(spec)
        return from_proto(_read_proto(path), spec, path)
    path = Path(spec)
    proto = _read_proto(path)
    external.defer(proto, path)  # checks every data file; reads the small tensors
    if not lazy:
        external.load_all(proto)
    return from_proto(proto, spec, path)


def from_proto(proto: onnx.ModelProto, source: str = "<ModelProto>",
               path: Path | None = None) -> LoadedModel:
    """A model already in memory, checked as `load_model` checks a file (opset, layout ops)
    and read in standard form (`standardform`).  ``proto`` itself is not changed."""
    check_opset(proto, source)
    _refuse_layout_ops(proto, source)
    proto, rewritten = standard_form(proto)
    return LoadedModel(proto, source, path, rewritten)


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise OnnxscaleError(f"{path}: no such file")
    if path.is_dir():
        raise OnnxscaleError(f"{path}: is a directory, expected an .onnx file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise OnnxscaleError(f"{path}: cannot read ({exc.strerror})") from exc
    if not data:
        raise OnnxscaleError(f"{path}: file is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning subclasses, ...
        raise OnnxscaleError(f"{path}: not an ONNX model (protobuf parse failed: {exc})") from exc
    if not proto.HasField("graph") or len(proto.graph.node) == 0:
        raise OnnxscaleError(f"{path}: not an ONNX model (no graph or an empty graph)")
    if proto.ir_version <= 0 or not proto.opset_import:
        raise OnnxscaleError(f"{path}: not an ONNX model (no IR version or opset import; truncated?)")
    return proto


def default_opset(proto: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) operator set."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


def _refuse_layout_ops(proto: onnx.ModelProto, source: str) -> None:
    """ORT_ENABLE_ALL saves NCHWc layout ops with weights reordered for this machine's
    vector width: no other runtime reads them, and they hide the model's real layers."""
    node = next((n for n in proto.graph.node if n.domain == "com.microsoft.nchwc"), None)
    if node is not None:
        raise OnnxscaleError(
            f"{source}: node '{node.name}' ({node.op_type}, domain com.microsoft.nchwc) is one "
            f"of ONNX Runtime's machine-specific layout ops (a model saved at ORT_ENABLE_ALL); "
            f"use the original model, or one saved at ORT_ENABLE_EXTENDED")


def check_opset(proto: onnx.ModelProto, source: str) -> None:
    version = default_opset(proto)
    if not MIN_OPSET <= version <= MAX_OPSET:
        raise OnnxscaleError(f"{source}: opset {version} is not supported "
                             f"(onnxscale reads opsets {MIN_OPSET}-{MAX_OPSET})")


_SHAPE_RE = re.compile(r"^(?P<name>.+):(?P<dims>\d+(?:x\d+)*)$")


def parse_input_shapes(specs: tuple[str, ...] | list[str]) -> dict[str, list[int]]:
    """Parse repeated ``--input-shape NAME:1x3x224x224`` values into ``{name: dims}``.

    A bare ``1x3x224x224`` (no name) applies to the model's only input and is stored under "".
    """
    shapes: dict[str, list[int]] = {}
    for spec in specs:
        spec = spec.strip()
        match = _SHAPE_RE.match(spec)
        if match:
            name, dims = match["name"], match["dims"]
        elif re.fullmatch(r"\d+(?:x\d+)*", spec):
            name, dims = "", spec
        else:
            raise UsageError(f"--input-shape '{spec}': expected NAME:DxDxD, e.g. "
                             f"input:1x3x224x224")
        values = [int(d) for d in dims.split("x")]
        if any(v <= 0 for v in values):
            raise UsageError(f"--input-shape '{spec}': every dimension must be positive")
        if name in shapes:
            raise UsageError(f"--input-shape given twice for '{name or 'the input'}'")
        shapes[name] = values
    return shapes


def save_model(proto: onnx.ModelProto, out: Path, *, protect: Path | None = None) -> Path:
    """Write ``proto`` to ``out`` atomically; never overwrite ``protect`` (the input model).

    Weights are streamed tensor by tensor (`_write_streamed`), so writing costs no second
    copy of the model in memory.  Models too large for one protobuf (2 GiB) get their weights
    as external data in ``OUT.data``.
    """
    out = Path(out)
    assert_solid(proto)
    if protect is not None and out.exists() and out.resolve() == Path(protect).resolve():
        raise OnnxscaleError(f"{out}: refusing to overwrite the input model; choose another -o")
    if out.is_dir():
        raise OnnxscaleError(f"{out}: is a directory, expected an output file name")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise OnnxscaleError(f"{out}: folder '{folder}' does not exist")
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        if _stored_initializer_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
            data_name = out.name + ".data"
            tmp_data = folder / f".{data_name}.tmp"
            with open(tmp_data, "wb") as data:
                shells = _external_shells(proto, data, data_name)
            with open(tmp, "wb") as handle:
                _write_streamed(proto, handle, shells)
            os.chmod(tmp_data, 0o666 & ~_umask())  # an ordinary file, like the model's
            os.replace(tmp_data, folder / data_name)
        else:
            with open(tmp, "wb") as handle:
                _write_streamed(proto, handle)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs are ordinary
        os.replace(tmp, out)
    except OSError as exc:
        raise OnnxscaleError(f"{out}: cannot write ({exc.strerror})") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def to_pieces(proto: onnx.ModelProto) -> tuple[bytes, list[bytes]]:
    """The model as pieces that each fit protobuf's 2 GiB limit: the model without its
    weights, then each initializer.  ``SerializeToString`` of the whole model fails above
    2 GiB; this is how a model of any size travels (Ray's object store, `cluster`)."""
    shell = _copy_without(proto, "graph")
    shell.graph.CopyFrom(_copy_without(proto.graph, "initializer"))
    return shell.SerializeToString(), [t.SerializeToString() for t in proto.graph.initializer]


def from_pieces(shell: bytes, tensors: list[bytes]) -> onnx.ModelProto:
    """The model `to_pieces` took apart."""
    proto = onnx.ModelProto()
    proto.ParseFromString(shell)
    for data in tensors:
        proto.graph.initializer.add().ParseFromString(data)
    return proto


_MODEL_GRAPH_FIELD, _GRAPH_INITIALIZER_FIELD, _RAW_DATA_FIELD = 7, 5, 9  # in onnx.proto


def _write_streamed(proto: onnx.ModelProto, handle, shells: list | None = None) -> None:
    """Write the protobuf encoding of ``proto`` without ever holding all of it in memory.

    A message's encoding is the concatenation of its fields' encodings, in any order: the
    model without its graph, then the graph field (tag, length, the graph without its
    initializers, then each initializer as its own length-delimited field).  Byte for byte
    what ``onnx.load`` reads; ``SerializeToString`` would peak at twice the model's size.
    A deferred weight (`external`) is read from its data file when its turn comes, and
    ``shells`` (`_external_shells`) stand in for initializers written to a data file.
    """
    graph = proto.graph
    shell = _copy_without(graph, "initializer").SerializeToString()
    tensors = shells if shells is not None else list(graph.initializer)
    sizes = [_encoded_size(tensor) for tensor in tensors]
    tag = _varint(_GRAPH_INITIALIZER_FIELD << 3 | 2)
    graph_size = len(shell) + sum(len(tag) + len(_varint(n)) + n for n in sizes)
    handle.write(_copy_without(proto, "graph").SerializeToString())
    handle.write(_varint(_MODEL_GRAPH_FIELD << 3 | 2) + _varint(graph_size))
    handle.write(shell)
    for tensor, size in zip(tensors, sizes):
        handle.write(tag + _varint(size))
        handle.write(external.materialized(tensor).SerializeToString())


def _encoded_size(tensor: onnx.TensorProto) -> int:
    """The encoded size of ``tensor`` with its data inline, without reading a deferred one:
    the tensor less its external entries, plus the raw_data field (tag, length, bytes)."""
    if not external.is_deferred(tensor):
        return tensor.ByteSize()
    shell = external.inline_shell(tensor)
    length = external.data_bytes(tensor)
    return shell.ByteSize() + len(_varint(_RAW_DATA_FIELD << 3 | 2)) + len(_varint(length)) \
        + length


def _external_shells(proto: onnx.ModelProto, data, location: str) -> list[onnx.TensorProto]:
    """Write every initializer over 1 KB to the open ``data`` file, one at a time, and return
    the initializers as the model file holds them (those written: location, offset, length)."""
    shells = []
    for tensor in proto.graph.initializer:
        if external.data_bytes(tensor) <= 1024:
            shells.append(external.materialized(tensor))
            continue
        raw = external.read(tensor) if external.is_deferred(tensor) else \
            _inline_raw(tensor).raw_data
        offset = data.tell()
        data.write(raw)
        shell = external.inline_shell(tensor)
        shell.data_location = onnx.TensorProto.EXTERNAL
        for key, value in (("location", location), ("offset", str(offset)),
                           ("length", str(len(raw)))):
            shell.external_data.add(key=key, value=value)
        shells.append(shell)
        del raw
    return shells


def _inline_raw(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """``tensor`` with its values in ``raw_data`` (exporters also use the typed fields)."""
    if tensor.HasField("raw_data"):
        return tensor
    from onnx import numpy_helper

    return numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name)


def _copy_without(message, skipped: str):
    """A copy of ``message`` with every field but ``skipped`` (a cheap shell, no weights)."""
    copy = type(message)()
    for field, value in message.ListFields():
        if field.name == skipped:
            continue
        target = getattr(copy, field.name)
        repeated = field.is_repeated if hasattr(field, "is_repeated") else \
            field.label == field.LABEL_REPEATED  # protobuf < 5.28 has only ``label``
        if repeated:
            target.extend(value)
        elif field.type == field.TYPE_MESSAGE:
            target.CopyFrom(value)
        else:
            setattr(copy, field.name, value)
    return copy


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _stored_initializer_bytes(proto: onnx.ModelProto) -> int:
    """Bytes the initializers' data take as stored (what decides external data)."""
    return sum(external.data_bytes(tensor) for tensor in proto.graph.initializer)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
