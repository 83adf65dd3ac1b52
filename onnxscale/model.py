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
from dataclasses import dataclass
from pathlib import Path

import onnx
from onnx import external_data_helper

from .errors import OnnxscaleError, UsageError
from .hollow import assert_solid

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


def load_model(spec: str, *, seed: int = 0) -> LoadedModel:
    """Load ``spec`` (a path or ``zoo:NAME``) and check it is an ONNX model we can read."""
    if spec.startswith(ZOO_PREFIX):
        from . import zoo

        return LoadedModel(zoo.build(spec[len(ZOO_PREFIX):], seed=seed), spec, None)
    path = Path(spec)
    proto = _read_proto(path)
    _load_external_data(proto, path)
    check_opset(proto, spec)
    return LoadedModel(proto, spec, path)


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


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Resolve external tensor data, refusing locations outside the model's folder."""
    base = path.resolve().parent
    tensors = [t for t in external_data_helper._get_all_tensors(proto)
               if external_data_helper.uses_external_data(t)]
    for tensor in tensors:
        info = external_data_helper.ExternalDataInfo(tensor)
        location = info.location
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise OnnxscaleError(
                f"{path}: tensor '{tensor.name}' stores its data at '{location}', outside the "
                f"model's folder; refusing to read it")
        if not target.is_file():
            raise OnnxscaleError(f"{path}: external data file '{location}' for tensor "
                                 f"'{tensor.name}' is missing")
    if tensors:
        try:
            external_data_helper.load_external_data_for_model(proto, str(base))
        except Exception as exc:
            raise OnnxscaleError(f"{path}: cannot read external data ({exc})") from exc


def default_opset(proto: onnx.ModelProto) -> int:
    """The version of the default (``ai.onnx``) operator set."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 0


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
        if _weight_bytes(proto) > EXTERNAL_DATA_THRESHOLD:
            data_name = out.name + ".data"
            tmp_data = folder / f".{data_name}.tmp"
            onnx.save_model(proto, tmp, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=tmp_data.name, size_threshold=1024)
            _rename_external_location(tmp, tmp_data.name, data_name)
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


def remove_model(out: Path) -> None:
    """Remove a model this run wrote after it proved unusable, so no invalid model is left to
    be taken for an output: ``OUT``, and ``OUT.data`` only when ``OUT`` keeps its weights
    there (an older file of that name is not ours to remove)."""
    out = Path(out)
    data = out.with_name(out.name + ".data")
    if data.exists() and data.name in _external_locations(out):
        data.unlink()
    out.unlink(missing_ok=True)


def _external_locations(model_file: Path) -> set[str]:
    saved = onnx.load(model_file, load_external_data=False)
    return {entry.value for entry in _location_entries(saved)}


def _location_entries(saved: onnx.ModelProto):
    """The ``location`` entries of every tensor that keeps its data in another file."""
    for tensor in external_data_helper._get_all_tensors(saved):
        for entry in tensor.external_data:
            if entry.key == "location":
                yield entry


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


_MODEL_GRAPH_FIELD, _GRAPH_INITIALIZER_FIELD = 7, 5  # field numbers in onnx.proto


def _write_streamed(proto: onnx.ModelProto, handle) -> None:
    """Write the protobuf encoding of ``proto`` without ever holding all of it in memory.

    A message's encoding is the concatenation of its fields' encodings, in any order: the
    model without its graph, then the graph field (tag, length, the graph without its
    initializers, then each initializer as its own length-delimited field).  Byte for byte
    what ``onnx.load`` reads; ``SerializeToString`` would peak at twice the model's size.
    """
    graph = proto.graph
    shell = _copy_without(graph, "initializer").SerializeToString()
    sizes = [tensor.ByteSize() for tensor in graph.initializer]
    tag = _varint(_GRAPH_INITIALIZER_FIELD << 3 | 2)
    graph_size = len(shell) + sum(len(tag) + len(_varint(n)) + n for n in sizes)
    handle.write(_copy_without(proto, "graph").SerializeToString())
    handle.write(_varint(_MODEL_GRAPH_FIELD << 3 | 2) + _varint(graph_size))
    handle.write(shell)
    for tensor, size in zip(graph.initializer, sizes):
        handle.write(tag + _varint(size))
        handle.write(tensor.SerializeToString())


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


def _weight_bytes(proto: onnx.ModelProto) -> int:
    return sum(tensor.ByteSize() for tensor in proto.graph.initializer)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _rename_external_location(model_file: str, old: str, new: str) -> None:
    """Point every external tensor of the saved model at its final data file name."""
    saved = onnx.load(model_file, load_external_data=False)
    for entry in _location_entries(saved):
        if entry.value == old:
            entry.value = new
    with open(model_file, "wb") as handle:
        handle.write(saved.SerializeToString())
