"""Timing one configuration: a model, an execution provider, a batch size.

The method (DESIGN.md §5):

1. **Inputs.** Random tensors of the model's real dtypes and shapes.  The batch dimension (dim 0
   of every batched input) is set to the requested batch; a model whose batch is fixed in the
   graph gets its input dims rewritten (and is rejected with a reason if the graph bakes the batch
   in elsewhere, e.g. a Reshape to ``[1, -1]``).  Other symbolic dims need ``--input-shape``.
2. **Session.** Full graph optimisation, the requested provider first and CPU behind it, no
   onnxruntime fallback.  Session creation is timed on its own, with onnxruntime's own log
   captured so a provider that failed to load can be reported with the reason.  If the session's
   providers do not include the requested one, the row is "unavailable", not a CPU timing.
3. **First run** timed on its own (TensorRT builds its engine here unless its cache hits; cuDNN
   searches conv algorithms).  TensorRT engines and timing caches live in a cache folder.
4. **Warm-up** until the median of the last few runs is within 5% of the median of the few before
   (or a fixed count with ``--warmup N``), capped in runs and seconds.
5. **Timing**: each run timed alone with ``perf_counter`` (GC off), for ``--runs N`` runs or
   ``--seconds S`` (at least 5 runs).  On device providers, inputs and outputs are bound once to
   device-resident buffers (IO binding) so host/device copies are not timed; with
   ``--cuda-graph`` the outputs are pre-allocated so the captured graph can be replayed.

`measure` returns a row dict (see `empty_row`), never raises for provider or model failures:
those become rows with ``available: false`` and a ``reason``.
"""

from __future__ import annotations

import contextlib
import gc
import io
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ..errors import OnnxscaleError, UsageError
from ..graph import contradicts, declared_dims, format_dims, name_overrides, with_input_dims
from . import providers as P

# -- settings ------------------------------------------------------------------------------------

DEFAULT_SECONDS = 3.0
MIN_RUNS = 5
MAX_RUNS = 1_000_000
WARMUP_TOLERANCE = 0.05
WARMUP_MAX_RUNS = 200
WARMUP_MAX_SECONDS = 15.0


@dataclass
class BenchSettings:
    """How to measure; one object for a whole ``bench`` invocation."""

    threads: int | None = None           # intra-op threads; None = onnxruntime's default
    precision: str = "fp32"               # fp32 | fp16
    warmup: int | None = None             # None = adaptive
    runs: int | None = None               # exact number of timed runs, or
    seconds: float | None = None          # a time budget (default DEFAULT_SECONDS)
    io_binding: bool | None = None        # None = on for device providers only
    cuda_graph: bool = False
    provider_options: dict[str, dict[str, str]] = field(default_factory=dict)
    session_config: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    cache_dir: Path | None = None
    seed: int = 0
    capture_log: bool = True              # swallow onnxruntime's native log (reasons parsed)
    warmup_max_seconds: float = WARMUP_MAX_SECONDS
    min_runs: int = MIN_RUNS


def default_cache_dir() -> Path:
    """``$ONNXSCALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxscale`` or ``~/.cache/onnxscale``."""
    env = os.environ.get("ONNXSCALE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "onnxscale" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "onnxscale"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxscale"


# -- inputs --------------------------------------------------------------------------------------

_NUMPY_TYPES = {
    TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT16: np.int16,
    TensorProto.INT8: np.int8, TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16,
    TensorProto.UINT32: np.uint32, TensorProto.UINT64: np.uint64, TensorProto.BOOL: np.bool_,
}
_ORT_TYPES = {
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

    def payload(self, fp16: bool) -> bytes | str:
        """Serialized model (fp16-converted if asked), cached; a path for >1.8 GB models."""
        if fp16 not in self._payloads:
            proto = to_fp16(self.proto) if fp16 else self.proto
            self._payloads[fp16] = _serialize(proto)
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
    """Random tensors: floats ~N(0,1), uint8 0..255, bool 50/50, other ints 0..3 (safe as
    indices into small tables)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        dtype = spec.dtype
        if np.issubdtype(dtype, np.floating):
            arr = rng.standard_normal(spec.dims, dtype=np.float32).astype(dtype)
        elif dtype == np.bool_:
            arr = rng.random(spec.dims) < 0.5
        elif dtype == np.uint8:
            arr = rng.integers(0, 256, size=spec.dims, dtype=np.uint8)
        else:
            arr = rng.integers(0, 4, size=spec.dims).astype(dtype)
        feeds[spec.name] = np.ascontiguousarray(arr)
    return feeds


# -- fp16 ----------------------------------------------------------------------------------------

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


def _serialize(proto: onnx.ModelProto) -> bytes | str:
    if proto.ByteSize() < 1_800_000_000:
        return proto.SerializeToString()
    folder = tempfile.mkdtemp(prefix="onnxscale-bench-")
    path = os.path.join(folder, "model.onnx")
    onnx.save_model(proto, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx.data")
    return path


# -- native log capture --------------------------------------------------------------------------

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


# -- timing --------------------------------------------------------------------------------------

def settled(times: list[float], window: int, tolerance: float = WARMUP_TOLERANCE) -> bool:
    """True when the median of the last ``window`` times is within ``tolerance`` of the median
    of the ``window`` before them."""
    if window < 1 or len(times) < 2 * window:
        return False
    recent = float(np.median(times[-window:]))
    before = float(np.median(times[-2 * window:-window]))
    return abs(recent - before) <= tolerance * before


def warmup_window(last_run_s: float) -> int:
    """Runs per comparison window: fewer for slow runs so warm-up stays short."""
    if last_run_s < 0.05:
        return 5
    if last_run_s < 0.5:
        return 3
    return 2


def warm_up(run: Callable[[], object], fixed: int | None, max_seconds: float = WARMUP_MAX_SECONDS,
            max_runs: int = WARMUP_MAX_RUNS, tick: Callable[[], None] | None = None
            ) -> tuple[list[float], bool]:
    """Run until times settle (or exactly ``fixed`` times); returns (times, settled?)."""
    perf = time.perf_counter
    times: list[float] = []
    if fixed is not None:
        for _ in range(fixed):
            t0 = perf()
            run()
            times.append(perf() - t0)
        return times, True
    start = last_tick = perf()
    while True:
        t0 = perf()
        run()
        t1 = perf()
        times.append(t1 - t0)
        if settled(times, warmup_window(times[-1])):
            return times, True
        if len(times) >= max_runs or t1 - start > max_seconds:
            return times, False
        if tick is not None and t1 - last_tick > 0.25:
            tick()
            last_tick = perf()


def time_runs(run: Callable[[], object], runs: int | None, seconds: float | None,
              min_runs: int = MIN_RUNS, tick: Callable[[int, float], None] | None = None
              ) -> list[float]:
    """Time each call of ``run`` alone; ``runs`` exactly, or until ``seconds`` have passed and
    at least ``min_runs`` were made.  ``tick(done, elapsed)`` is called about 4 times a second,
    between runs, outside any timed interval."""
    perf = time.perf_counter
    times: list[float] = []
    append = times.append
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = last_tick = perf()
        if runs is not None:
            for _ in range(runs):
                t0 = perf()
                run()
                t1 = perf()
                append(t1 - t0)
                if tick is not None and t1 - last_tick > 0.25:
                    tick(len(times), t1 - start)
                    last_tick = perf()
        else:
            budget = DEFAULT_SECONDS if seconds is None else seconds
            deadline = start + budget
            while True:
                t0 = perf()
                run()
                t1 = perf()
                append(t1 - t0)
                if (t1 >= deadline and len(times) >= min_runs) or len(times) >= MAX_RUNS:
                    break
                if tick is not None and t1 - last_tick > 0.25:
                    tick(len(times), t1 - start)
                    last_tick = perf()
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def summarize(times_s: list[float], batch: int) -> dict:
    """Statistics of per-run times (seconds) in milliseconds; throughput in items/s from the
    mean (sustained rate)."""
    a = np.asarray(times_s, dtype=np.float64) * 1000.0
    n = int(a.size)
    if n == 0:
        raise ValueError("no timed runs")
    p50, p90, p99 = (float(v) for v in np.percentile(a, [50, 90, 99]))
    mean = float(a.mean())
    std = float(a.std(ddof=1)) if n > 1 else 0.0
    return {
        "p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "mean_ms": mean, "std_ms": std,
        "cv": std / mean if mean > 0 else 0.0, "min_ms": float(a.min()), "max_ms": float(a.max()),
        "throughput": batch * 1000.0 / mean if mean > 0 else None, "runs": n,
    }


# -- host memory ---------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def reset_peak_memory() -> bool:
    """Reset the process's peak RSS (Linux ≥ 4.0); False where that is impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb() -> float | None:
    kb = _status_kb("VmHWM")
    if kb is not None:
        return kb / 1024.0
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0
    except (ImportError, OSError):  # pragma: no cover
        return None


# -- one configuration ---------------------------------------------------------------------------

_METRIC_KEYS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "cv", "min_ms", "max_ms",
                "throughput", "runs")
_PROVIDER_ERROR_RE = re.compile(r"ExecutionProvider|EP Error|EPFail|CUDA|cuda|cuDNN|cudnn|TensorRT|"
                                r"tensorrt|nvinfer|libonnxruntime_providers|TRT|device")
_MAX_IR: list[int] = []  # the highest IR version this onnxruntime accepts, once learned


def effective_io_binding(provider: str, settings: BenchSettings) -> bool:
    if settings.cuda_graph and provider in P.CUDA_GRAPH_OPTION:
        return True  # graph replay needs fixed buffer addresses
    if settings.io_binding is None:
        return provider in P.DEVICE_MEMORY
    return settings.io_binding


def effective_cuda_graph(provider: str, settings: BenchSettings) -> bool:
    return settings.cuda_graph and provider in P.CUDA_GRAPH_OPTION


def uses_fp16_model(provider: str, settings: BenchSettings) -> bool:
    """fp16 on TensorRT is a builder flag on the fp32 model; elsewhere we convert the model."""
    return settings.precision == "fp16" and provider not in (P.TENSORRT, P.TENSORRT_RTX)


def key_options(provider: str, prepared: PreparedModel, settings: BenchSettings) -> dict:
    """What identifies a configuration beyond model, provider, batch and machine."""
    return {
        "threads": settings.threads,
        "precision": settings.precision,
        "io_binding": effective_io_binding(provider, settings),
        "cuda_graph": effective_cuda_graph(provider, settings),
        "provider_options": dict(sorted(settings.provider_options.get(provider, {}).items())),
        "session_config": dict(sorted(settings.session_config.items())),
        "inputs": {s.name: list(s.dims) for s in prepared.specs},
    }


def empty_row(model: str, model_hash: str, provider: str, batch: int, options: dict) -> dict:
    row = {
        "model": model, "model_hash": model_hash, "provider": P.short_name(provider),
        "provider_name": provider, "batch": batch, "available": False, "status": "unavailable",
        "reason": None,
    }
    row.update({k: None for k in _METRIC_KEYS})
    row.update({
        "warmup_runs": None, "warmup_settled": None, "session_create_ms": None,
        "first_run_ms": None, "engine_build_ms": None, "peak_host_mb": None,
        "threads": options["threads"], "precision": options["precision"],
        "io_binding": options["io_binding"], "cuda_graph": options["cuda_graph"],
        "provider_options": options["provider_options"],
        "session_config": options["session_config"],
        "inputs": options["inputs"], "providers_used": None, "options": options, "notes": [],
    })
    return row


def _first_line(exc: BaseException) -> str:
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


def _session_options(settings: BenchSettings):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if settings.threads:
        so.intra_op_num_threads = settings.threads
        so.inter_op_num_threads = 1
    so.log_severity_level = 3
    for key, value in settings.session_config.items():
        so.add_session_config_entry(key, value)
    return so


def _provider_chain(provider: str, prepared: PreparedModel, settings: BenchSettings
                    ) -> tuple[list, dict[str, str]]:
    options: dict[str, str] = {}
    if provider == P.TENSORRT:
        cache = Path(settings.cache_dir or default_cache_dir()) / "tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        options.update({
            "trt_engine_cache_enable": "1", "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "1", "trt_timing_cache_path": str(cache),
        })
        if settings.precision == "fp16":
            options["trt_fp16_enable"] = "1"
        dynamic = [s for s in prepared.specs if _is_dynamic(prepared.proto, s.name)]
        if dynamic and all(re.fullmatch(r"[\w./\-]+", s.name) for s in dynamic):
            shapes = ",".join(f"{s.name}:{'x'.join(map(str, s.dims))}" for s in dynamic)
            for key in ("trt_profile_min_shapes", "trt_profile_opt_shapes",
                        "trt_profile_max_shapes"):
                options[key] = shapes
    elif provider == P.TENSORRT_RTX and settings.precision == "fp16":
        pass  # TensorRT-RTX picks precisions itself
    if effective_cuda_graph(provider, settings):
        options[P.CUDA_GRAPH_OPTION[provider]] = "1"
    options.update(settings.provider_options.get(provider, {}))
    chain: list = [(provider, options)]
    if provider != P.CPU:
        chain.append((P.CPU, {}))
    return chain, options


def _is_dynamic(proto: onnx.ModelProto, name: str) -> bool:
    for value in proto.graph.input:
        if value.name == name:
            dims = declared_dims(value)
            return dims is None or any(not isinstance(d, int) for d in dims)
    return False


def _create_session(payload, so, chain, capture: bool):
    """(session, seconds, captured log); retries once with a lower IR version if this
    onnxruntime is older than the exporter.  Errors carry the captured log as ``ort_log``."""
    import onnxruntime as ort

    if _MAX_IR and isinstance(payload, bytes):
        payload = _with_ir(payload, _MAX_IR[0])
    retried = False
    while True:
        session = error = None
        with capture_native_output(capture) as log:
            t0 = time.perf_counter()
            try:
                session = ort.InferenceSession(payload, so, providers=chain, enable_fallback=0)
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


def _static_output_shapes(prepared: PreparedModel, fp16: bool) -> list[list[int]] | None:
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


class _Runner:
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
            dtypes = [_ORT_TYPES.get(o.type, np.float32) for o in session.get_outputs()]
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

    def first_run(self) -> list[tuple[int, ...]]:
        """Run once; return the output shapes.  With IO binding, outputs that onnxruntime
        allocated are then replaced by pre-allocated buffers, so later runs allocate nothing and
        a captured CUDA graph always writes to the same addresses."""
        if not self.io_binding:
            outputs = self.session.run(self.output_names, self.feeds)
            return [tuple(np.shape(o)) for o in outputs]
        self.call()
        values = self.binding.get_outputs()
        shapes = [tuple(v.shape()) for v in values]
        if not self._fixed_outputs:
            dtypes = [_ORT_TYPES.get(v.data_type(), np.float32) for v in values]
            self._bind_fixed_outputs([list(s) for s in shapes], dtypes)
        return shapes


def measure(prepared: PreparedModel, provider: str, settings: BenchSettings, *, model: str,
            model_hash: str, progress: Callable[[str, float | None], None] | None = None) -> dict:
    """Measure one configuration; always returns a row (see module doc)."""
    import onnxruntime as ort

    options = key_options(provider, prepared, settings)
    row = empty_row(model, model_hash, provider, prepared.batch, options)
    row["ort_version"] = ort.__version__
    notes: list[str] = row["notes"]
    if settings.cuda_graph and not options["cuda_graph"]:
        notes.append(f"--cuda-graph ignored: {P.short_name(provider)} has no CUDA graphs")
    if prepared.rebatched:
        notes.append("input dims rewritten from the graph's fixed dims")

    def report(phase: str, fraction: float | None = None) -> None:
        if progress is not None:
            progress(phase, fraction)

    reason = P.availability(provider)
    if reason:
        row["reason"] = reason
        return row

    fp16 = uses_fp16_model(provider, settings)
    feed_specs = prepared.feed_specs(fp16)
    feeds = random_inputs(feed_specs, settings.seed)
    so = _session_options(settings)
    try:
        chain, effective = _provider_chain(provider, prepared, settings)
    except OSError as exc:
        row["reason"] = f"cannot create the cache folder ({exc})"
        row["status"] = "failed"
        return row
    row["provider_options_effective"] = effective

    report("creating session")
    payload = prepared.payload(fp16)  # serialize before the memory peak is reset
    memory_ok = reset_peak_memory()
    if not memory_ok:
        notes.append("peak host memory is the process peak (cannot reset it here)")
    if provider in (P.CUDA, P.TENSORRT, P.TENSORRT_RTX):
        _preload_cuda_libraries(settings.capture_log)
    try:
        session, create_s, log = _create_session(payload, so, chain, settings.capture_log)
    except Exception as exc:
        message = _first_line(exc)
        log = getattr(exc, "ort_log", "")
        logged = [m for m in P.log_messages(log) if m not in message]
        if provider != P.CPU and (_PROVIDER_ERROR_RE.search(message) or logged):
            row["reason"] = "; ".join([f"{P.short_name(provider)} cannot run: {message}"]
                                      + logged)[:800]
        else:
            row["status"] = "failed"
            row["reason"] = f"session creation failed: {message}"
            if fp16 and provider == P.CPU:
                row["reason"] += " (fp16 kernels are missing on this provider)"
        return row
    used = list(session.get_providers())
    row["providers_used"] = used
    row["session_create_ms"] = create_s * 1000.0
    if provider not in used:
        row["reason"] = P.fallback_reason(provider, used, log, settings.capture_log)
        return row

    device = P.DEVICE_MEMORY.get(provider)
    device_id = int(settings.provider_options.get(provider, {}).get("device_id", 0) or 0)
    io_binding = options["io_binding"]
    if io_binding and device is None and provider != P.CPU:
        notes.append(f"io binding uses host buffers: {P.short_name(provider)} has no device "
                     f"memory type in onnxruntime's Python API")
    output_shapes = None
    if options["cuda_graph"]:
        output_shapes = _static_output_shapes(prepared, fp16)
        if output_shapes is None:
            notes.append("output shapes unknown before the first run; outputs re-bound after it")

    try:
        runner = _Runner(session, feeds, device, device_id, io_binding, output_shapes)
        report("first run (engine build)" if provider in (P.TENSORRT, P.TENSORRT_RTX)
               else "first run")
        with capture_native_output(settings.capture_log) as first_log:
            t0 = time.perf_counter()
            out_shapes = runner.first_run()
            first_s = time.perf_counter() - t0
    except Exception as exc:
        message = _first_line(exc)
        if provider != P.CPU and _PROVIDER_ERROR_RE.search(message):
            row["reason"] = f"{P.short_name(provider)} failed at the first run: {message}"
        else:
            row["status"] = "failed"
            row["reason"] = f"first run failed: {message}"
            if prepared.batch_outputs:
                row["reason"] += (f" (the graph fixes its batch; it may not run at batch "
                                  f"{prepared.batch})")
            elif prepared.rebatched:
                dims = ", ".join(f"{s.name} {s.dims}" for s in prepared.specs)
                row["reason"] += f" (the graph fixes its input dims; it may not run at {dims})"
        return row
    del first_log
    row["first_run_ms"] = first_s * 1000.0
    if provider in (P.TENSORRT, P.TENSORRT_RTX):
        row["engine_build_ms"] = first_s * 1000.0
    names = runner.output_names
    for name in prepared.batch_outputs:
        shape = out_shapes[names.index(name)] if name in names else None
        if shape is not None and (not shape or shape[0] != prepared.batch):
            row["status"] = "failed"
            row["reason"] = (f"the graph fixes its batch: output '{name}' has shape "
                             f"{list(shape)} at batch {prepared.batch}; export the model with a "
                             f"dynamic batch dim")
            return row

    try:
        report("warm-up")
        warm, warm_ok = warm_up(runner.call, settings.warmup, settings.warmup_max_seconds,
                                tick=lambda: report("warm-up"))
        report("timing", 0.0)
        budget = settings.seconds

        def tick(done: int, elapsed: float) -> None:
            if settings.runs:
                report("timing", done / settings.runs)
            else:
                report("timing", min(1.0, elapsed / (budget or DEFAULT_SECONDS)))

        times = time_runs(runner.call, settings.runs, settings.seconds, settings.min_runs, tick)
    except Exception as exc:
        row["status"] = "failed"
        row["reason"] = f"run failed: {_first_line(exc)}"
        return row
    row.update(summarize(times, prepared.batch))
    row["warmup_runs"] = len(warm)
    row["warmup_settled"] = warm_ok
    if not warm_ok:
        notes.append(f"warm-up did not settle within {len(warm)} runs")
    row["peak_host_mb"] = peak_memory_mb()
    row["available"] = True
    row["status"] = "ok"
    del runner, session
    return row


_PRELOADED: list[bool] = []


def _preload_cuda_libraries(quiet: bool) -> None:
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
