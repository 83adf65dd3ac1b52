"""Execution providers: names, command-line options, and whether one can really run here.

Users name providers by short names (``cpu``, ``cuda``, ``tensorrt``) or by ONNX Runtime's full
names (``CUDAExecutionProvider``).  ``--provider-option`` values are ``[PROVIDER:]KEY=VALUE``:
a prefixed option goes to that provider, a bare one to the one requested non-CPU provider
(refused when there are several: onnxruntime refuses keys a provider does not know), and a
key with a dot (``session.intra_op.allow_spinning=0``) is a session configuration entry.

Availability has two layers.  A provider missing from ``get_available_providers()`` is not in
this onnxruntime build.  A listed one can still fail to load (onnxruntime-gpu lists CUDA and
TensorRT on machines without the CUDA libraries or a GPU) and then the session silently runs on
CPU; the runner detects that from ``session.get_providers()`` and `fallback_reason` explains it
from the messages onnxruntime logged while creating the session.
"""

from __future__ import annotations

import difflib
import re

from ..errors import UsageError

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
TENSORRT_RTX = "NvTensorRTRTXExecutionProvider"
DML = "DmlExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"

# Short name -> ONNX Runtime name.  The first short name of each provider is its display name.
SHORT_NAMES: dict[str, str] = {
    "cpu": CPU,
    "cuda": CUDA,
    "tensorrt": TENSORRT,
    "trt": TENSORRT,
    "tensorrt-rtx": TENSORRT_RTX,
    "trt-rtx": TENSORRT_RTX,
    "nv": TENSORRT_RTX,
    "openvino": "OpenVINOExecutionProvider",
    "ov": "OpenVINOExecutionProvider",
    "dml": DML,
    "directml": DML,
    "coreml": "CoreMLExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dnnl": "DnnlExecutionProvider",
    "onednn": "DnnlExecutionProvider",
    "xnnpack": "XnnpackExecutionProvider",
    "qnn": "QNNExecutionProvider",
    "nnapi": "NnapiExecutionProvider",
    "acl": "ACLExecutionProvider",
    "armnn": "ArmNNExecutionProvider",
    "cann": "CANNExecutionProvider",
    "vitisai": "VitisAIExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
    "webnn": "WebNNExecutionProvider",
    "js": "JsExecutionProvider",
    "rknpu": "RknpuExecutionProvider",
    "vsinpu": "VSINPUExecutionProvider",
    "azure": "AzureExecutionProvider",
    "tvm": "TvmExecutionProvider",
    "snpe": "SNPEExecutionProvider",
}

_DISPLAY: dict[str, str] = {}
for _short, _full in SHORT_NAMES.items():
    _DISPLAY.setdefault(_full, _short)

# Where an IO-bound tensor lives for each device provider: (OrtValue device type, device id
# option).  Providers not listed here get host buffers (CPU and host-memory EPs).
DEVICE_MEMORY: dict[str, str] = {
    CUDA: "cuda",
    TENSORRT: "cuda",
    TENSORRT_RTX: "cuda",
    DML: "dml",
    "CANNExecutionProvider": "cann",
    "WebGpuExecutionProvider": "webgpu",
}

# Provider option that turns on CUDA-graph capture and replay.
CUDA_GRAPH_OPTION: dict[str, str] = {
    CUDA: "enable_cuda_graph",
    TENSORRT: "trt_cuda_graph_enable",
    TENSORRT_RTX: "enable_cuda_graph",
}

# What to do when a provider is in neither this build, a plugin nor an environment.  Never
# "pip install onnxruntime-X" into the main environment: every flavour is the import package
# `onnxruntime` and replaces the one onnxscale runs on.  Flavours that can live beside it are
# offered by `locate` as `onnxscale providers add NAME`.
_INSTALL_HINTS: dict[str, str] = {
    CUDA: "it needs onnxruntime-gpu (onnxscale's default on Linux and Windows x86-64) with CUDA "
          "12/13 and cuDNN 9, e.g. pip install 'onnxruntime-gpu[cuda,cudnn]'",
    TENSORRT: "it needs onnxruntime-gpu and TensorRT 10 (pip install tensorrt-cu12 or "
              "tensorrt-cu13) on an NVIDIA GPU",
    TENSORRT_RTX: "it is a plugin: pip install onnxruntime-ep-nv-tensorrt-rtx beside onnxscale",
    "CoreMLExecutionProvider": "it comes with onnxruntime on macOS",
    "ROCMExecutionProvider": "ROCm's provider is gone from onnxruntime (1.31 has none); "
                             "AMD GPUs run on MIGraphX: `onnxscale providers add migraphx`",
    "WebGpuExecutionProvider": "it is a plugin: pip install onnxruntime-ep-webgpu beside "
                               "onnxscale",
}


def install_hint(provider: str) -> str | None:
    """How to get ``provider`` without breaking the install (None when we know no way)."""
    return _INSTALL_HINTS.get(provider)


_FULL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*ExecutionProvider$")


def _known_full_names() -> dict[str, str]:
    """Lower-cased full name -> canonical spelling, for every provider we or onnxruntime know."""
    names = {full.lower(): full for full in SHORT_NAMES.values()}
    try:
        import onnxruntime as ort

        for full in ort.get_all_providers():
            names[full.lower()] = full
    except Exception:  # pragma: no cover - onnxruntime missing or broken
        pass
    return names


def resolve_provider(name: str) -> str:
    """Map a short or full provider name to ONNX Runtime's name; raise `UsageError` if unknown."""
    raw = name.strip()
    key = raw.lower().replace("_", "-")
    if key in SHORT_NAMES:
        return SHORT_NAMES[key]
    known = _known_full_names()
    if raw.lower() in known:
        return known[raw.lower()]
    if _FULL_RE.match(raw):  # a plugin EP onnxruntime may know by a name we have never seen
        return raw
    choices = sorted(set(SHORT_NAMES))
    close = difflib.get_close_matches(key, choices, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(choices)}"
    raise UsageError(f"--provider '{raw}': unknown execution provider{hint}")


def parse_providers(spec: str | tuple[str, ...] | list[str]) -> list[str]:
    """Parse ``cpu,cuda`` (or repeated values) into unique full provider names, in order."""
    parts = [spec] if isinstance(spec, str) else list(spec)
    names: list[str] = []
    for part in parts:
        for item in part.split(","):
            if not item.strip():
                raise UsageError(f"--provider '{part}': empty provider name")
            full = resolve_provider(item)
            if full not in names:
                names.append(full)
    if not names:
        raise UsageError("--provider: give at least one provider, e.g. cpu,cuda")
    return names


def short_name(provider: str) -> str:
    """The display name of a provider (``cuda`` for ``CUDAExecutionProvider``)."""
    if provider in _DISPLAY:
        return _DISPLAY[provider]
    return provider[: -len("ExecutionProvider")].lower() if provider.endswith(
        "ExecutionProvider") else provider


def parse_provider_options(specs: tuple[str, ...] | list[str], providers: list[str]
                           ) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Parse ``--provider-option [PROVIDER:]KEY=VALUE`` values.

    Returns ``({provider: {key: value}}, {session config key: value})``.  A bare key goes to
    the one requested provider other than CPU; a key containing a dot is a session configuration
    entry (``session.intra_op.allow_spinning``).  Values stay strings, as onnxruntime wants.
    """
    per_provider: dict[str, dict[str, str]] = {p: {} for p in providers}
    session: dict[str, str] = {}
    for spec in specs:
        if "=" not in spec:
            raise UsageError(f"--provider-option '{spec}': expected [PROVIDER:]KEY=VALUE, "
                             f"e.g. cuda:device_id=0")
        left, value = spec.split("=", 1)
        left, value = left.strip(), value.strip()
        target: str | None = None
        if ":" in left:
            prefix, key = left.split(":", 1)
            target = resolve_provider(prefix)
            key = key.strip()
        else:
            key = left
        if not key or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key):
            raise UsageError(f"--provider-option '{spec}': '{key}' is not an option name")
        if "." in key:
            if target is not None:
                raise UsageError(f"--provider-option '{spec}': '{key}' is a session option; "
                                 f"give it without a provider prefix")
            session[key] = value
            continue
        if target is not None:
            if target not in per_provider:
                raise UsageError(f"--provider-option '{spec}': provider {short_name(target)} is "
                                 f"not among --provider {','.join(map(short_name, providers))}")
            per_provider[target][key] = value
            continue
        targets = [p for p in providers if p != CPU]
        if len(targets) != 1:
            # onnxruntime refuses a key its provider does not know, so a bare option cannot
            # go to several providers; and CPU takes almost none.
            which = "no non-CPU provider was" if not targets else \
                f"{', '.join(map(short_name, targets))} were"
            example = short_name(targets[0]) if targets else "cpu"
            raise UsageError(f"--provider-option '{spec}': a bare KEY=VALUE needs exactly one "
                             f"non-CPU provider and {which} requested; write "
                             f"{example}:{key}={value}")
        per_provider[targets[0]][key] = value
    return {p: o for p, o in per_provider.items() if o}, session


def availability(provider: str) -> str | None:
    """Why ``provider`` cannot run in this onnxruntime build, or None if it is listed.

    Listed is necessary, not sufficient: the runner still checks the session's providers.
    """
    try:
        import onnxruntime as ort
    except Exception as exc:  # pragma: no cover
        return f"onnxruntime cannot be imported ({exc})"
    available = ort.get_available_providers()
    if provider in available:
        return None
    listed = ", ".join(short_name(p) for p in available)
    return f"not in this onnxruntime {ort.__version__} build (it has {listed})"


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")
_LIB_PATH_RE = re.compile(r"(?:/[^\s/]+)+/((?:lib)?[^\s/]+\.(?:so|dll|dylib)[\w.]*)")


def _clean(line: str) -> str:
    line = _ANSI_RE.sub("", line).strip()
    return _LIB_PATH_RE.sub(r"\1", line)


def log_messages(log: str) -> list[str]:
    """The lines of onnxruntime's native log that explain a provider failure, cleaned up.

    The useful lines look like ``... FAIL : Failed to load library libonnxruntime_providers_cuda.so
    with error: libcublasLt.so.13: cannot open shared object file`` and ``Failed to create
    CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*. Please install ...``.
    """
    messages: list[str] = []
    for raw in log.splitlines():
        line = _clean(raw)
        if not line:
            continue
        if "FAIL : " in line:
            messages.append(line.rsplit("FAIL : ", 1)[1].strip())
        elif re.search(r"Failed to create \w+ExecutionProvider", line):
            text = line.split("] ", 1)[-1] if "] " in line else line
            messages.append(text.split(" Please install")[0].strip())
        elif re.search(r"(?i)(cuda|cudnn|tensorrt|nvinfer|cublas)\w* (error|failure)", line):
            messages.append(line.split("] ", 1)[-1].strip())
    return list(dict.fromkeys(m for m in messages if m))


def fallback_reason(provider: str, used: list[str], log: str, captured: bool = True) -> str:
    """Explain why a session asked for ``provider`` runs on ``used`` instead, from what
    onnxruntime logged while the session was created."""
    messages = log_messages(log)
    ran_on = ", ".join(short_name(p) for p in used) or "nothing"
    head = f"{short_name(provider)} failed to initialise; the session fell back to {ran_on}"
    if messages:
        return head + ": " + "; ".join(messages)[:600]
    if not captured:
        return head + " (see onnxruntime's log above)"
    return head + " (onnxruntime gave no reason; run with --debug to see its log)"
