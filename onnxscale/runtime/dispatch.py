"""One configuration measured wherever its provider lives, and checked once measured.

`Dispatcher` is what `run_bench` calls for every (model, batch, provider): it finds the
provider's route (`locate`: this process, a plugin, or an isolated environment's worker), has
the configuration timed there by the same `runner.measure`, then completes the row with what
needs the main process: where the nodes ran as a share of the model's flops (`placement`), and
whether the outputs agree with the CPU fp32 reference (`agreement`), computed once per model and
batch on the same seeded inputs, outside any timed interval.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from . import agreement, locate, placement
from . import providers as P
from .inputs import PreparedModel, random_inputs
from .row import Row
from .runner import measure
from .settings import BenchSettings


class Dispatcher:
    """Routes, model files for workers and reference outputs, kept for one bench run."""

    def __init__(self, settings: BenchSettings):
        self.settings = settings
        self._routes: dict[str, locate.Route] = {}
        self._files: dict[str, Path] = {}
        self._references: dict[tuple[str, int], list[np.ndarray] | str] = {}
        self._flops: dict[tuple[str, int], dict[str, float]] = {}
        self._folder: Path | None = None

    def route(self, provider: str) -> locate.Route:
        if provider not in self._routes:
            self._routes[provider] = locate.route(provider)
        return self._routes[provider]

    def measure(self, loaded, digest: str, prepared: PreparedModel, provider: str,
                progress: Callable[[str, float | None], None] | None = None) -> Row:
        """Time one configuration where its provider lives; the row is complete."""
        settings = self.settings
        route = self.route(provider)
        outputs: list | None = [] if settings.check_outputs else None
        if route.kind == locate.ENVIRONMENT:
            from .worker import measure_in

            if progress is not None:
                progress(f"timing in environment '{route.environment.name}'", None)
            row, got = measure_in(route.environment, self._model_file(loaded, digest),
                                  source=loaded.source, model_hash=digest, batch=prepared.batch,
                                  provider=provider, settings=settings,
                                  want_outputs=outputs is not None)
            row.provider = row.provider or P.short_name(provider)
            outputs = got
        else:
            row = measure(prepared, provider, settings, model=loaded.source, model_hash=digest,
                          progress=progress, outputs=outputs,
                          plugin=route.plugin if route.kind == locate.PLUGIN else None)
            if route.kind is None and not row.available and row.status == "unavailable":
                row.reason = route.reason
        row.environment = route.label
        if (row.available and outputs and provider == P.CPU and row.precision == "fp32"
                and route.kind == locate.IN_PROCESS):
            # the reference is this very computation: reuse it rather than run it again
            self._references.setdefault((digest, prepared.batch), list(outputs))
        if row.available:
            self._complete(row, loaded, digest, prepared, provider, outputs)
        return row

    def _complete(self, row: Row, loaded, digest: str, prepared: PreparedModel,
                  provider: str, outputs: list | None) -> None:
        if row.placement and row.placement.get("partial"):
            flops = self._layer_flops(digest, prepared)
            if flops:
                row.placement["flops_share"] = placement.flops_share(row.placement, flops)
        if outputs is None:
            return
        reference = self._reference(digest, prepared)
        if isinstance(reference, str):
            row.notes.append(f"outputs not checked: {reference}")
            return
        names = [o.name for o in prepared.proto.graph.output]
        row.output_check = agreement.compare(outputs, reference, names, row.precision,
                                             self.settings.output_tolerance)
        if not row.output_check["ok"]:
            row.notes.append(f"outputs disagree with CPU fp32: "
                             f"{agreement.describe(row.output_check)}")

    def _reference(self, digest: str, prepared: PreparedModel) -> list[np.ndarray] | str:
        """CPU fp32 outputs on the seeded inputs, or why there are none."""
        key = (digest, prepared.batch)
        if key not in self._references:
            self._references[key] = _cpu_outputs(prepared, self.settings)
        return self._references[key]

    def _layer_flops(self, digest: str, prepared: PreparedModel) -> dict[str, float]:
        key = (digest, prepared.batch)
        if key not in self._flops:
            try:
                from ..complexity import analyze
                from ..graph import Graph

                report = analyze(Graph(prepared.proto, {}))
                self._flops[key] = {layer.name: float(layer.flops) for layer in report.layers}
            except Exception:  # placement still stands on node counts alone
                self._flops[key] = {}
        return self._flops[key]

    def _model_file(self, loaded, digest: str) -> Path:
        """The model as one file a worker can load (external data inlined)."""
        if digest not in self._files:
            import onnx

            if self._folder is None:
                self._folder = Path(tempfile.mkdtemp(prefix="onnxscale-models-"))
            path = self._folder / f"{digest[:16]}.onnx"
            onnx.save(loaded.proto, str(path))
            self._files[digest] = path
        return self._files[digest]

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _cpu_outputs(prepared: PreparedModel, settings: BenchSettings) -> list[np.ndarray] | str:
    import onnxruntime as ort

    from .session import capture_native_output, ort_message

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    feeds = random_inputs(prepared.specs, settings.seed)
    try:
        with capture_native_output(settings.capture_log):
            session = ort.InferenceSession(prepared.payload(False), so,
                                           providers=[P.CPU])
            return [np.asarray(o) for o in session.run(None, feeds)]
    except Exception as exc:
        return f"the CPU reference failed: {ort_message(exc)}"

