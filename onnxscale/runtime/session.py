"""An ONNX Runtime session for one configuration: session options, the provider chain and
its options, creation with onnxruntime's native log captured (the reason a provider did not
load is in it), and the call that is timed (`Runner`: plain runs or IO binding)."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from ..paths import default_cache_dir
from . import placement
from . import providers as P
from .inputs import ORT_TYPES, PreparedModel, is_dynamic
from .settings import BenchSettings, effective_cuda_graph


class _Captured:
    text = ""


@contextlib.contextmanager
def capture_native_output(enabled: bool = True):
    """Redirect file descriptors 1 and 2 (onnxruntime's C++ log) and Python's stdout (its Python
    fallback messages) into a buffer; ``.text`` holds it afterwards."""
    box = _Captured()
    if not enabled:
        yield box
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    try:
        sink = tempfile.TemporaryFile()
        saved = [os.dup(1), os.dup(2)]
    except OSError:
        yield box
        return
    py_out = io.StringIO()
    try:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        with contextlib.redirect_stdout(py_out):
            yield box
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sink.seek(0)
        box.text = sink.read().decode("utf-8", "replace") + py_out.getvalue()
        sink.close()


def ort_message(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [P._clean(line) for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else text
    # onnxruntime prefixes messages with a source location; keep the message
    for marker in (" : FAIL : ", " : INVALID_ARGUMENT : ", " : RUNTIME_EXCEPTION : ",
                   " : NOT_IMPLEMENTED : ", " : INVALID_GRAPH : ", " : EP_FAIL : "):
        if marker in line:
            line = line.rsplit(marker, 1)[1]
    # drop source locations and the failed C++ check that precede the actual message
    line = re.sub(r"(?:/\S+/)?[\w.]+\.(?:h|cc|cpp|cu|hpp):\d+ (?:[\w:~<>&*, ]+\([^()]*\) |\w+ )"
                  r"(?:\S+ (?:==|!=|<=|>=|<|>) \S+ was false\. )?", "", line)
    return line[:500]


def session_options(settings: BenchSettings):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if settings.threads:
        so.intra_op_num_threads = settings.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry(placement.CONFIG_KEY, "1")  # where nodes ran (ORT >= 1.24)
    for key, value in settings.session_config.items():
        so.add_session_config_entry(key, value)
    return so


def provider_chain(provider: str, prepared: PreparedModel, settings: BenchSettings,
                   model_hash: str = "") -> tuple[list, dict[str, str]]:
    """The providers a session is given, in order, with their options, and the requested
    provider's options.  TensorRT is followed by CUDA (what TensorRT cannot run goes to CUDA,
    as ONNX Runtime registers them) and every provider by CPU."""
    options: dict[str, str] = {}
    if provider == P.TENSORRT:
        options.update(tensorrt_options(prepared, settings, model_hash))
    if provider == P.OPENVINO and settings.threads:
        # OpenVINO runs its own thread pool: intra_op_num_threads does not reach it
        options["num_of_threads"] = str(settings.threads)
    if effective_cuda_graph(provider, settings):
        options[P.CUDA_GRAPH_OPTION[provider]] = "True" if provider == P.TENSORRT else "1"
    options.update(settings.provider_options.get(provider, {}))
    if provider == P.TENSORRT:
        options = {key: trt_value(key, value) for key, value in options.items()}
    chain: list = [(provider, options)]
    if provider == P.TENSORRT:
        chain.append((P.CUDA, {}))
    if provider != P.CPU:
        chain.append((P.CPU, {}))
    return chain, options


def tensorrt_options(prepared: PreparedModel, settings: BenchSettings,
                     model_hash: str) -> dict[str, str]:
    """Engine and timing caches, precision and shape profiles.  The engine cache's file names
    start with a prefix of the model's content, its input dims and the precision: TensorRT
    names cached engines after node names, which width-scaled variants of one model share."""
    import hashlib

    cache = Path(settings.cache_dir or default_cache_dir()) / "tensorrt"
    cache.mkdir(parents=True, exist_ok=True)
    dims = ";".join(f"{s.name}:{'x'.join(map(str, s.dims))}" for s in prepared.specs)
    key = hashlib.sha256(f"{model_hash}|{dims}|{settings.precision}".encode()).hexdigest()
    options = {"trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache),
               "trt_engine_cache_prefix": f"onnxscale_{key[:16]}",
               "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache)}
    if settings.precision == "fp16":
        options["trt_fp16_enable"] = "True"
    dynamic = [s for s in prepared.specs if is_dynamic(prepared.proto, s.name)]
    if dynamic and all(re.fullmatch(r"[\w./\-]+", s.name) for s in dynamic):
        shapes = ",".join(f"{s.name}:{'x'.join(map(str, s.dims))}" for s in dynamic)
        for name in ("trt_profile_min_shapes", "trt_profile_opt_shapes",
                     "trt_profile_max_shapes"):
            options[name] = shapes
    return options


def trt_value(key: str, value: str) -> str:
    """A TensorRT switch as ONNX Runtime's Python binding takes it: ``True`` or ``False``
    (it refuses ``1`` and ``0``, which CUDA's options take, so ``--provider-option
    tensorrt:trt_fp16_enable=1`` is written the way it works)."""
    if key.endswith("_enable") and value.strip().lower() in ("1", "0", "true", "false"):
        return "True" if value.strip().lower() in ("1", "true") else "False"
    return value


_MAX_IR: list[int] = []  # the highest IR version this onnxruntime accepts, once learned


def no_fallback(version: str) -> dict:
    """The keyword that stops onnxruntime from quietly re-creating a failed session on CPU.

    ``enable_fallback=0`` exists from 1.23; older releases ignore it, so there the fallback can
    happen and `runner.measure` finds it from ``get_providers()`` instead."""
    parts = [int(p) for p in re.findall(r"\d+", version)[:2]] + [0, 0]
    return {"enable_fallback": 0} if tuple(parts[:2]) >= (1, 23) else {}


def create_session(payload, so, chain, capture: bool):
    """(session, seconds, captured log); retries once with a lower IR version if this
    onnxruntime is older than the exporter.  Errors carry the captured log as ``ort_log``.
    ``chain`` None: the providers are already in ``so`` (plugin devices)."""
    import onnxruntime as ort

    kwargs = no_fallback(ort.__version__)
    if chain is not None:
        kwargs["providers"] = chain

    if _MAX_IR and isinstance(payload, bytes):
        payload = _with_ir(payload, _MAX_IR[0])
    retried = False
    while True:
        session = error = None
        with capture_native_output(capture) as log:
            t0 = time.perf_counter()
            try:
                session = ort.InferenceSession(payload, so, **kwargs)
            except Exception as exc:
                error = exc
            created = time.perf_counter() - t0
        if session is not None:
            return session, created, log.text
        match = re.search(r"Unsupported model IR version: (\d+), max supported IR version: (\d+)",
                          str(error))
        if match and not retried and isinstance(payload, bytes):
            retried = True
            _MAX_IR[:] = [int(match.group(2))]
            payload = _with_ir(payload, _MAX_IR[0])
            continue
        error.ort_log = log.text  # type: ignore[union-attr]
        raise error  # type: ignore[misc]


def _with_ir(payload: bytes, ir: int) -> bytes:
    proto = onnx.ModelProto()
    proto.ParseFromString(payload)
    if proto.ir_version <= ir:
        return payload
    proto.ir_version = ir
    return proto.SerializeToString()


class Runner:
    """The call to time: ``session.run`` on host arrays, or ``run_with_iobinding`` on bound
    (device-resident) buffers.  ``call`` is what the timing loops call."""

    def __init__(self, session, feeds: dict[str, np.ndarray], device: str | None, device_id: int,
                 io_binding: bool, output_shapes: list[list[int]] | None):
        import onnxruntime as ort

        self.session = session
        self.feeds = feeds
        self.output_names = [o.name for o in session.get_outputs()]
        self.io_binding = io_binding
        self._keep: list = []  # OrtValues the binding points at must outlive it
        self._fixed_outputs = False
        if not io_binding:
            names = self.output_names
            self.call = lambda: session.run(names, feeds)
            return
        self.where = device or "cpu"
        self.device_id = device_id
        binding = self.binding = session.io_binding()
        for name, arr in feeds.items():
            value = ort.OrtValue.ortvalue_from_numpy(arr, self.where, device_id)
            binding.bind_ortvalue_input(name, value)
            self._keep.append(value)
        if output_shapes is not None:
            dtypes = [ORT_TYPES.get(o.type, np.float32) for o in session.get_outputs()]
            self._bind_fixed_outputs(output_shapes, dtypes)
        else:
            for name in self.output_names:
                binding.bind_output(name, self.where, device_id)
        self.call = lambda: session.run_with_iobinding(binding)

    def _bind_fixed_outputs(self, shapes: list[list[int]], dtypes: list) -> None:
        import onnxruntime as ort

        self.binding.clear_binding_outputs()
        for name, shape, dtype in zip(self.output_names, shapes, dtypes):
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, self.where,
                                                              self.device_id)
            self.binding.bind_ortvalue_output(name, value)
            self._keep.append(value)
        self._fixed_outputs = True

    def first_run(self) -> list[np.ndarray]:
        """Run once; return the outputs (on the host).  With IO binding, outputs that
        onnxruntime allocated are then replaced by pre-allocated buffers, so later runs allocate
        nothing; with CUDA graphs they are bound before this run (`static_output_shapes`), so
        the graph captured now writes to the addresses every later replay reads."""
        if not self.io_binding:
            return [np.asarray(o) for o in self.session.run(self.output_names, self.feeds)]
        self.call()
        values = self.binding.get_outputs()
        arrays = [v.numpy() for v in values]
        if not self._fixed_outputs:
            dtypes = [ORT_TYPES.get(v.data_type(), np.float32) for v in values]
            self._bind_fixed_outputs([list(a.shape) for a in arrays], dtypes)
        return arrays


_PRELOADED: list[bool] = []


def preload_cuda_libraries(quiet: bool) -> None:
    """Let onnxruntime find CUDA/cuDNN from pip's nvidia-* wheels (once per process)."""
    if _PRELOADED:
        return
    _PRELOADED.append(True)
    try:
        import onnxruntime as ort

        if hasattr(ort, "preload_dlls"):
            with capture_native_output(quiet):
                ort.preload_dlls(directory="")
    except Exception:
        pass
