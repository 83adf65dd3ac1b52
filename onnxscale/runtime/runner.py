"""Timing one configuration: a model, an execution provider, a batch size.

The method:

1. **Inputs.** Random tensors of the model's real dtypes and shapes.  The batch dimension (dim 0
   of every batched input) is set to the requested batch; a model whose batch is fixed in the
   graph gets its input dims rewritten (and is rejected with a reason if the graph bakes the batch
   in elsewhere, e.g. a Reshape to ``[1, -1]``).  Other symbolic dims need ``--input-shape``.
2. **Session.** Full graph optimisation, the requested provider first and CPU behind it (CUDA
   between TensorRT and CPU, as ONNX Runtime registers them), no onnxruntime fallback.
   Session creation is timed on its own, with onnxruntime's own log captured so a provider
   that failed to load can be reported with the reason.  If the session's providers do not
   include the requested one, the row is "unavailable", not a CPU timing.
3. **First run** timed on its own (cuDNN searches conv algorithms; TensorRT builds its engine
   here or, when every shape is known, while the session is created: ``engine_build_ms`` is
   both together).  Where every node ran is read from the session (`placement`) and the first
   run's outputs are kept for the agreement check (`agreement`).  TensorRT engines and timing caches live in a cache folder,
   engines named after the model's content, input dims and precision.
4. **Warm-up** until the median of the last few runs is within 5% of the median of the few before
   (or a fixed count with ``--warmup N``), capped in runs and seconds.
5. **Timing**: each run timed alone with ``perf_counter`` (GC off), for ``--runs N`` runs or
   ``--seconds S`` (at least 5 runs).  On device providers, inputs and outputs are bound once to
   device-resident buffers (IO binding) so host/device copies are not timed; with
   ``--cuda-graph`` the outputs are pre-allocated so the captured graph can be replayed.

`measure` returns a `Row`, never raises for provider or model failures:
those become rows with ``available: false`` and a ``reason``.
The steps live in `inputs` (1), `session` (2, 3) and `timing` (4, 5); this module runs them
in order for one configuration.
"""

from __future__ import annotations

import re
import time
from typing import Callable

import numpy as np

from . import placement
from . import providers as P
from .inputs import PreparedModel, random_inputs, static_output_shapes
from .row import Row
from .session import (Runner, capture_native_output, create_session, ort_message,
                      preload_cuda_libraries, provider_chain, session_options)
from .settings import (DEFAULT_SECONDS, BenchSettings, key_options, precision_note,
                       uses_fp16_model)
from .rounds import first_round
from .timing import peak_memory_mb, reset_peak_memory, time_runs, warm_up
from .uncertainty import read_steal, steal_share


_PROVIDER_ERROR_RE = re.compile(r"ExecutionProvider|EP Error|EPFail|CUDA|cuda|cuDNN|cudnn|TensorRT|"
                                r"tensorrt|nvinfer|libonnxruntime_providers|TRT|device")


def measure(prepared: PreparedModel, provider: str, settings: BenchSettings, *, model: str,
            model_hash: str, progress: Callable[[str, float | None], None] | None = None,
            plugin=None, outputs: list | None = None) -> Row:
    """Measure one configuration; always returns a row (see module doc).

    ``plugin``: a `plugins.Plugin` offering ``provider`` (its devices are given to the
    session).  ``outputs``: a list the first run's outputs are appended to (host arrays),
    for the agreement check."""
    import onnxruntime as ort

    options = key_options(provider, prepared, settings)
    row = Row.empty(model, model_hash, provider, P.short_name(provider), prepared.batch,
                    options)
    row.ort_version = ort.__version__
    notes = row.notes
    if settings.cuda_graph and not options["cuda_graph"]:
        notes.append(f"--cuda-graph ignored: {P.short_name(provider)} has no CUDA graphs")
    if prepared.rebatched:
        notes.append("input dims rewritten from the graph's fixed dims")

    def report(phase: str, fraction: float | None = None) -> None:
        if progress is not None:
            progress(phase, fraction)

    reason = None if plugin is not None else P.availability(provider)
    if reason:
        row.reason = reason
        return row

    fp16 = uses_fp16_model(provider, settings)
    note = precision_note(provider, settings)
    if note:
        notes.append(note)
    feed_specs = prepared.feed_specs(fp16)
    feeds = random_inputs(feed_specs, settings.seed)
    so = session_options(settings)
    try:
        chain, effective = provider_chain(provider, prepared, settings, model_hash)
    except OSError as exc:
        row.reason = f"cannot create the cache folder ({exc})"
        row.status = "failed"
        return row
    row.provider_options_effective = effective
    if plugin is not None:
        from .plugins import add_to_session

        add_to_session(so, provider, effective)
        chain = None

    report("creating session")
    payload = prepared.payload(fp16)  # serialize before the memory peak is reset
    memory_ok = reset_peak_memory()
    if not memory_ok:
        notes.append("peak host memory is the process peak (cannot reset it here)")
    if provider in (P.CUDA, P.TENSORRT, P.TENSORRT_RTX):
        preload_cuda_libraries(settings.capture_log)
    try:
        session, create_s, log = create_session(payload, so, chain, settings.capture_log)
    except Exception as exc:
        message = ort_message(exc)
        log = getattr(exc, "ort_log", "")
        logged = [m for m in P.log_messages(log) if m not in message]
        if provider != P.CPU and (_PROVIDER_ERROR_RE.search(message) or logged):
            row.reason = "; ".join([f"{P.short_name(provider)} cannot run: {message}"]
                                      + logged)[:800]
        else:
            row.status = "failed"
            row.reason = f"session creation failed: {message}"
            if fp16 and provider == P.CPU:
                row.reason += " (fp16 kernels are missing on this provider)"
        return row
    used = list(session.get_providers())
    row.providers_used = used
    row.session_create_ms = create_s * 1000.0
    if provider not in used:
        row.reason = P.fallback_reason(provider, used, log, settings.capture_log)
        return row
    applied = session.get_provider_options().get(provider)
    if applied:  # what the session applied, defaults included (OpenVINO reports nothing)
        row.provider_options_effective = dict(applied)
    row.placement = placement.summarize(session, provider)

    device = P.DEVICE_MEMORY.get(provider)
    device_id = int(settings.provider_options.get(provider, {}).get("device_id", 0) or 0)
    io_binding = options["io_binding"]
    if io_binding and device is None and provider != P.CPU:
        notes.append(f"io binding uses host buffers: {P.short_name(provider)} has no device "
                     f"memory type in onnxruntime's Python API")
    output_shapes = None
    if options["cuda_graph"]:
        output_shapes = static_output_shapes(prepared, fp16)
        if output_shapes is None:
            notes.append("output shapes unknown before the first run; outputs re-bound after it")

    try:
        runner = Runner(session, feeds, device, device_id, io_binding, output_shapes)
        report("first run (engine build)" if provider in (P.TENSORRT, P.TENSORRT_RTX)
               else "first run")
        with capture_native_output(settings.capture_log) as first_log:
            t0 = time.perf_counter()
            first_outputs = runner.first_run()
            first_s = time.perf_counter() - t0
    except Exception as exc:
        message = ort_message(exc)
        if provider != P.CPU and _PROVIDER_ERROR_RE.search(message):
            row.reason = f"{P.short_name(provider)} failed at the first run: {message}"
        else:
            row.status = "failed"
            row.reason = f"first run failed: {message}"
            if prepared.batch_outputs:
                row.reason += (f" (the graph fixes its batch; it may not run at batch "
                                  f"{prepared.batch})")
            elif prepared.rebatched:
                dims = ", ".join(f"{s.name} {s.dims}" for s in prepared.specs)
                row.reason += f" (the graph fixes its input dims; it may not run at {dims})"
        return row
    del first_log
    row.first_run_ms = first_s * 1000.0
    if provider in (P.TENSORRT, P.TENSORRT_RTX):
        # TensorRT builds while the session is created when every shape is known (static
        # inputs or explicit profiles), else at the first run: the build is in one or the other.
        row.engine_build_ms = (create_s + first_s) * 1000.0
    out_shapes = [tuple(np.shape(o)) for o in first_outputs]
    if outputs is not None:
        outputs.extend(first_outputs)
    del first_outputs
    names = runner.output_names
    for name in prepared.batch_outputs:
        shape = out_shapes[names.index(name)] if name in names else None
        if shape is not None and (not shape or shape[0] != prepared.batch):
            row.status = "failed"
            row.reason = (f"the graph fixes its batch: output '{name}' has shape "
                             f"{list(shape)} at batch {prepared.batch}; export the model with a "
                             f"dynamic batch dim")
            return row

    steal_before = read_steal()
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
        row.status = "failed"
        row.reason = f"run failed: {ort_message(exc)}"
        return row
    first_round(row, [t * 1000.0 for t in times], steal_share(steal_before, read_steal()),
                time.time())
    row.warmup_runs = len(warm)
    row.warmup_settled = warm_ok
    if not warm_ok:
        notes.append(f"warm-up did not settle within {len(warm)} runs")
    row.peak_host_mb = peak_memory_mb()
    row.available = True
    row.status = "ok"
    del runner, session
    return row
