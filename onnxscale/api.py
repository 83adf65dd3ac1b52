"""onnxscale as a library: every command of the CLI as a function that returns dataclasses.

    >>> import onnxscale
    >>> onnxscale.analyze("zoo:resnet-50").flops
    4089184256
    >>> result = onnxscale.scale("zoo:resnet-50", strategy="dWr", flops="2x")
    >>> abs(result.scaled.flops / result.base.flops - 2) < 0.015   # within --tolerance
    True
    >>> path = result.save("resnet50-dWr-2x.onnx")      # doctest: +SKIP

A model is a path to an ``.onnx`` file, ``zoo:NAME`` (a built-in model), ``torchvision:NAME``
or ``timm:NAME`` (exported on first use; needs the ``torch`` extra), or an
``onnx.ModelProto``.  Every error a user can cause is an `onnxscale.Error` with a one-line
message; the CLI prints the same message.  Results have ``to_dict()``, which gives what the
command's ``--json`` prints.

Heavy modules (onnx, onnxruntime, the rewrites) are imported inside the functions, so
``import onnxscale`` stays cheap for the CLI that is built on this module.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from .errors import OnnxscaleError, UsageError

if TYPE_CHECKING:
    import onnx
    import pandas

    from .runtime.profiling import Profile
    from .runtime.row import Row
    from .complexity import Report
    from .model import LoadedModel
    from .scaling.job import Planned

ModelArg = "str | os.PathLike | onnx.ModelProto"
InputShapes = "Mapping[str, Sequence[int]] | Sequence[str] | None"

__all__ = ["Analysis", "Figures", "Prediction", "ScalePlan", "ScaleResult", "SweepSummary",
           "ReportSummary",
           "analyze", "plan", "scale", "bench", "profile", "predict", "sweep", "report",
           "load_results"]


# ---- results -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Figures:
    """A model's complexity as pycls counts it (flops are multiply-adds, acts the elements of
    every conv and linear layer's output) and its input dims."""

    flops: int
    params: int
    acts: int
    inputs: dict[str, list[int]]

    @classmethod
    def of(cls, report: Report) -> "Figures":
        return cls(report.flops, report.params, report.acts,
                   {name: list(dims) for name, dims in report.inputs.items()})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Analysis:
    """`analyze`'s result: totals, and every counted layer and stage."""

    model: str
    flops: int
    params: int
    acts: int
    inputs: dict[str, list[int]]
    layers: list[dict[str, Any]]
    stages: list[dict[str, Any]]
    notes: list[str]
    report: Report = field(repr=False)  # the full record (also uncounted ops, opset, outputs)

    def to_dict(self) -> dict[str, Any]:
        """What ``onnxscale analyze --json`` prints."""
        return {"model": self.model, **self.report.to_json()}


@dataclass
class ScalePlan:
    """A scaled model decided, not written: what it will count, and how it was found.

    ``multipliers`` are those searched (d, w, g, r); ``realized`` what the model got after
    rounding to whole blocks, channel multiples and accepted input sizes.  ``exact`` says
    whether the scaled model computes the base model's function (with ``init='preserve'``)."""

    model: str
    base: Figures
    scaled: Figures
    multipliers: dict[str, float]
    realized: dict[str, float]
    exact: bool
    weight_bytes: int
    strategy: dict[str, Any] | None = None
    preset: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "base": self.base.to_dict(),
                "scaled": self.scaled.to_dict(), "multipliers": self.multipliers,
                "realized": self.realized, "exact": self.exact,
                "weight_bytes": self.weight_bytes, "strategy": self.strategy,
                "preset": self.preset, "notes": self.notes}


@dataclass
class ScaleResult(ScalePlan):
    """`scale`'s result: the plan, and the model behind it.  Nothing is written until
    `save`; `proto` builds the scaled model in memory."""

    output: Path | None = None
    verified_rel_l2: float | None = None
    summary: dict[str, Any] | None = field(default=None, repr=False)  # scale --json, once saved
    _loaded: Any = field(default=None, repr=False, compare=False)
    _shapes: Any = field(default=None, repr=False, compare=False)
    _planned: Any = field(default=None, repr=False, compare=False)

    def save(self, path: str | os.PathLike | None = None, *, verify: bool = False) -> Path:
        """Write the scaled model atomically (default: beside the input, named after the
        multipliers), after onnx's checker and ONNX Runtime's own load accept it.  With
        ``verify``, run base and scaled model on the same inputs and keep the relative L2
        difference of their outputs in ``verified_rel_l2``.  The path written."""
        from .scaling.job import write_job

        summary = write_job(self._loaded, self._shapes, self._planned,
                            Path(path) if path is not None else None, verify)
        self.summary = summary
        self.output = Path(summary["output"])
        self.verified_rel_l2 = summary.get("verified_rel_l2")
        self.notes = list(summary["notes"])
        return self.output

    @property
    def proto(self) -> onnx.ModelProto:
        """The scaled model, built in memory (weights included; not checked or written)."""
        from .scaling.pipeline import apply_plan, stamp

        plan = self._planned.plan
        outcome = apply_plan(self._loaded.proto, self._shapes, plan)
        return stamp(outcome, self._loaded.source, plan.multipliers, plan.options)

    def to_dict(self) -> dict[str, Any]:
        """After `save`, what ``onnxscale scale --json`` prints; before, the plan's dict."""
        return dict(self.summary) if self.summary is not None else super().to_dict()


@dataclass
class SweepSummary:
    """`sweep`'s result: cells done now, skipped (stored before) and failed, and each cell."""

    db: Path
    done: int
    skipped: int
    failed: int
    cells: list[dict[str, Any]]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {"db": str(self.db), "done": self.done, "skipped": self.skipped,
                "failed": self.failed, "cells": self.cells, "notes": self.notes}


@dataclass
class Prediction:
    """`predict`'s result: the predicted p50 (ms) with its 95% interval over held-out models
    (``interval``: the factor f of [p50 / f, p50 · f]; ``interval_ms``: those bounds), why it
    may be less sure than that (``extrapolation``), the whole-model baselines (their
    intervals as factors), and the layers predicted to take longest."""

    model: str
    batch: int
    predicted_ms: float
    interval: float | None
    interval_ms: list[float] | None
    extrapolation: str | None
    models: int                       # profiled models the predictor was fitted on
    baselines: dict[str, float]
    baseline_intervals: dict[str, float]
    layers: list[dict]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ReportSummary:
    """`report`'s result: the findings in words, the files written, and the whole summary
    (``summary.json``'s content)."""

    output: Path
    files: list[Path]
    findings: list[str]
    machines: list[str]
    summary: dict[str, Any] = field(repr=False)
    providers: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.output), "files": [str(p) for p in self.files],
                "findings": self.findings, "machines": self.machines,
                "providers": self.providers, "exponents": self.summary["exponents"]}


# ---- analyze, plan, scale ------------------------------------------------------------------

def load(model: ModelArg, *, lazy: bool = True) -> LoadedModel:
    """Read a model argument (see the module doc).  ``lazy``: large external weights are read
    when needed, not now."""
    import onnx

    from .model import from_proto, load_model

    if isinstance(model, onnx.ModelProto):
        return from_proto(model)
    if isinstance(model, (str, os.PathLike)):
        return load_model(os.fspath(model), lazy=lazy)
    raise UsageError(f"a model is a path, zoo:NAME, torchvision:NAME, timm:NAME or an "
                     f"onnx.ModelProto, not {type(model).__name__}")


def input_shapes_of(shapes: InputShapes) -> dict[str, list[int]]:
    """``{"input": [1, 3, 224, 224]}`` or ``["input:1x3x224x224"]`` (as ``--input-shape``)."""
    from .model import parse_input_shapes

    if shapes is None:
        return {}
    if isinstance(shapes, Mapping):
        out = {}
        for name, dims in shapes.items():
            if not all(isinstance(d, int) and d > 0 for d in dims):
                raise UsageError(f"input shape of '{name}': dims must be positive integers, "
                                 f"not {list(dims)}")
            out[str(name)] = [int(d) for d in dims]
        return out
    if isinstance(shapes, str):
        shapes = [shapes]
    return parse_input_shapes(tuple(shapes))


def analyze(model: ModelArg, input_shapes: InputShapes = None) -> Analysis:
    """Count flops, params and activations per layer and stage (``onnxscale analyze``).

    A symbolic batch dim counts as 1; other symbolic dims need ``input_shapes``."""
    from .complexity import analyze as count
    from .graph import Graph

    loaded = load(model)
    report = count(Graph(loaded.proto, input_shapes_of(input_shapes)))
    as_json = report.to_json()
    return Analysis(loaded.source, report.flops, report.params, report.acts,
                    as_json["inputs"], as_json["layers"], as_json["stages"], list(report.notes),
                    report)


def plan(model: ModelArg, *, strategy: str | None = None, flops: str | float | None = None,
         alpha: float | None = None, width: float | None = None, depth: float | None = None,
         resolution: float | None = None, group_width: float | None = None,
         preset: str | None = None, search: bool = True, tolerance: str | float = 0.015,
         strict: bool = False, init: str = "preserve", divisor: int = 8,
         batch: str | int | None = None, seed: int = 0, max_size: str = "16G",
         input_shapes: InputShapes = None) -> ScalePlan:
    """Decide a scaled model without writing it (see `scale` for the arguments)."""
    return _planned(model, locals())[0]


def scale(model: ModelArg, *, strategy: str | None = None, flops: str | float | None = None,
          alpha: float | None = None, width: float | None = None, depth: float | None = None,
          resolution: float | None = None, group_width: float | None = None,
          preset: str | None = None, search: bool = True, tolerance: str | float = 0.015,
          strict: bool = False, init: str = "preserve", divisor: int = 8,
          batch: str | int | None = None, seed: int = 0, max_size: str = "16G",
          input_shapes: InputShapes = None) -> ScaleResult:
    """Scale a model's depth, width and resolution (``onnxscale scale``); `ScaleResult.save`
    writes it.

    Give one of:

    - ``strategy`` (``"dWr"``, ``"dw"``, ``"d1_w8_g8_r1"``, ...) or ``alpha`` with a
      ``flops`` target: a ratio (``"2x"`` or ``2``) or a count (``"4G"``); the strategy's
      scale factor is searched so the model lands within ``tolerance`` of the target
      (``search=False``: applied once, as pycls does);
    - multipliers ``width``, ``depth``, ``resolution``, ``group_width``;
    - ``preset``: EfficientNet's own compound scaling, ``"efficientnet-b1"`` ... ``b7``.

    ``init='preserve'`` keeps the base model's function where the rewrite allows it
    (``'random'``: fresh weights); channel counts become multiples of ``divisor``; ``batch``
    rewrites the batch dim (``"dynamic"`` or an int)."""
    result, planned, loaded, shapes = _planned(model, locals(), keep=True)
    return ScaleResult(**result.__dict__, _loaded=loaded, _shapes=shapes, _planned=planned)


def _planned(model: ModelArg, args: dict, keep: bool = False):
    """(ScalePlan, Planned, LoadedModel, input shapes) for `plan` and `scale`'s arguments."""
    from .scaling.job import make_jobs, parse_tolerance, plan_job, realized
    from .scaling.pipeline import Planner
    from .scaling.plan import ScaleOptions, parse_bytes

    flops = args["flops"]
    if isinstance(flops, (int, float)) and not isinstance(flops, bool):
        flops = f"{flops!r}x"
    alpha = None if args["alpha"] is None else str(args["alpha"])
    for key in ("width", "depth", "resolution", "group_width"):
        value = args[key]
        if value is not None and not (isinstance(value, (int, float)) and 0 < value < float("inf")):
            raise UsageError(f"{key}={value!r}: must be a finite positive number")
    if args["init"] not in ("preserve", "random"):
        raise UsageError(f"init={args['init']!r}: expected 'preserve' or 'random'")
    try:
        tolerance = parse_tolerance(args["tolerance"])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    batch = args["batch"]
    if batch is not None and batch != "dynamic" and not (isinstance(batch, int) and batch > 0):
        raise UsageError(f"batch={batch!r}: expected 'dynamic' or a positive integer")
    jobs = make_jobs(args["strategy"], alpha, flops, args["preset"], not args["search"],
                     (args["width"], args["depth"], args["resolution"], args["group_width"]),
                     tolerance, args["strict"])
    if len(jobs) != 1:
        raise UsageError("one strategy and one flops target per call (the CLI's "
                         "comma-separated grids: call once per combination)")
    options = ScaleOptions(init=args["init"], divisor=int(args["divisor"]), batch=batch,
                           seed=int(args["seed"]), max_bytes=parse_bytes(str(args["max_size"])))
    shapes = input_shapes_of(args["input_shapes"])
    loaded = load(model)
    planned = plan_job(Planner(loaded.proto, shapes), jobs[0], options)
    result = _plan_result(loaded.source, planned, realized)
    return (result, planned, loaded, shapes) if keep else (result, None, None, None)


def _plan_result(source: str, planned: Planned, realized: Callable) -> ScalePlan:
    plan_ = planned.plan
    details = {edit.kind: edit.details for edit in plan_.edits}
    base, scaled = Figures.of(plan_.base), Figures.of(plan_.scaled)
    rows = {"base": base.to_dict(), "scaled": scaled.to_dict(),
            "groups": details.get("width", {}).get("groups", []),
            "stages": details.get("depth", {}).get("stages", [])}
    strategy = None
    if planned.solution is not None:
        job = planned.job
        strategy = {"name": job.strategy, "weights": job.weights, "flops": job.flops,
                    **planned.solution.summary()}
    return ScalePlan(source, base, scaled, plan_.multipliers.as_dict(), realized(rows),
                     all(edit.exact for edit in plan_.edits), plan_.weight_bytes, strategy,
                     planned.job.preset, [note for edit in plan_.edits for note in edit.notes])


# ---- bench, sweep, report, results ---------------------------------------------------------

def _names(value: str | Iterable[str] | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return ",".join(str(v) for v in value)


def bench(models: ModelArg | Sequence[ModelArg], providers: str | Sequence[str] = "cpu", *,
          batch: int | Sequence[int] | None = None, threads: int | None = None,
          precision: str = "fp32", warmup: int | str | None = "auto", runs: int | None = None,
          seconds: float | None = None, io_binding: bool | None = None,
          cuda_graph: bool = False, provider_options: Sequence[str] = (),
          input_shapes: InputShapes = None, cache_dir: str | os.PathLike | None = None,
          db: str | os.PathLike | None = None, resume: bool = False,
          check_outputs: bool = True, output_tolerance: float | None = None,
          ep_libraries: Sequence[str] = (), rounds: int = 1,
          progress: Callable[[int, int, str, str, float | None], None] | None = None
          ) -> list[Row]:
    """Time models on ONNX Runtime execution providers (``onnxscale bench``): one `Row` per
    (model, batch, provider), unavailable providers included with their ``reason``.

    ``providers``: ``"cpu,cuda"`` or a list of short or full names.  ``provider_options``:
    ``"[PROVIDER:]KEY=VALUE"`` strings, as ``--provider-option`` takes them.  Rows are stored
    in the results database ``db`` when given (``resume``: reuse rows stored there).
    ``check_outputs``: compare outputs with the CPU fp32 reference (``Row.output_check``);
    ``ep_libraries``: plugin EP libraries to register beside the installed packages.
    ``rounds``: time each configuration this many times, interleaved (``Row.p50_ci_ms``)."""
    from .runtime import parse_providers, run_bench
    from .runtime.settings import make_settings, parse_batches
    from .store import ResultStore

    if resume and db is None:
        raise UsageError("resume reads the results database: give db=PATH")
    names = _names(providers)
    provider_names = parse_providers(names)
    settings = make_settings(provider_names, threads=threads, precision=precision,
                             warmup=warmup, runs=runs, seconds=seconds, io_binding=io_binding,
                             cuda_graph=cuda_graph, provider_options=provider_options,
                             input_shapes=input_shapes_of(input_shapes), cache_dir=cache_dir,
                             check_outputs=check_outputs, output_tolerance=output_tolerance,
                             ep_libraries=ep_libraries, rounds=rounds)
    import onnx

    items = [models] if isinstance(models, (str, os.PathLike, onnx.ModelProto)) \
        else list(models)
    loaded = [load(m, lazy=False) for m in items]
    store = ResultStore(db) if db is not None else None
    try:
        report = run_bench(loaded, provider_names, parse_batches(batch), settings, store=store,
                           resume=resume, progress=progress)
    finally:
        if store is not None:
            store.close()
    return report.rows


def profile(model: ModelArg, provider: str = "cpu", *, threads: int | None = None,
            batch: int | None = 1, precision: str = "fp32", runs: int = 20,
            input_shapes: InputShapes = None,
            db: str | os.PathLike | None = None) -> "Profile":
    """Per-layer runtime (``onnxscale profile``): the model's p50 by bench's method, then ONNX
    Runtime's profiler in a separate pass, each kernel mapped back to the layer it ran for.
    Stored in ``db`` (the default results database when None), where `predict` learns from
    it.  The `Profile` has ``layers`` (name, op, kind, ms, flops, params, acts, kernels,
    contains), ``p50_ms``, ``profiled_ms`` and ``unattributed_ms``."""
    from .calibration import profile_model
    from .runtime import parse_providers
    from .runtime.settings import make_settings
    from .store import ResultStore, default_db_path

    names = parse_providers(_names(provider))
    settings = make_settings(names, threads=threads, precision=precision,
                             input_shapes=input_shapes_of(input_shapes))
    with ResultStore(db if db is not None else default_db_path()) as store:
        return profile_model(load(model, lazy=False), names[0], settings, batch=batch,
                             store=store, runs=runs)


def predict(model: ModelArg, provider: str = "cpu", *, threads: int | None = None,
            batch: int = 1, precision: str = "fp32", input_shapes: InputShapes = None,
            db: str | os.PathLike | None = None) -> Prediction:
    """A model's p50 on this machine predicted from the profiles stored in ``db``
    (``onnxscale predict``): ``predicted_ms``, its 95% ``interval`` (a factor over held-out
    models; ``interval_ms``: the bounds), ``extrapolation`` where the model lies outside what
    was profiled, the whole-model ``baselines`` and the ``layers`` predicted to take longest.
    Raises `onnxscale.Error` saying what to run when too few models are profiled."""
    from .calibration import predict_model, predictor_in
    from .runtime import parse_providers
    from .runtime.settings import make_settings

    names = parse_providers(_names(provider))
    settings = make_settings(names, threads=threads, precision=precision)
    fitted = predictor_in(db, names[0], settings, batch=batch, interval=True)
    return Prediction(**predict_model(fitted, load(model, lazy=False), batch,
                                      input_shapes_of(input_shapes)))


def sweep(models: str | Sequence[str], strategies: str | Sequence[str] = "d,w,r,dw,dwr,dWr",
          flops: str | Sequence[str] = "1x,2x,4x,8x,16x", providers: str | Sequence[str] = "cpu",
          *, alpha: str | Sequence[float] | None = None, tolerance: str | float = 0.015,
          batch: int | Sequence[int] = 1, threads: int | None = None, precision: str = "fp32",
          warmup: int | str | None = "auto", runs: int | None = None,
          seconds: float | None = None, io_binding: bool | None = None,
          cuda_graph: bool = False, provider_options: Sequence[str] = (),
          input_shapes: InputShapes = None, cache_dir: str | os.PathLike | None = None,
          db: str | os.PathLike | None = None, keep_models: str | os.PathLike | None = None,
          retry_failed: bool = False, check_outputs: bool = True,
          output_tolerance: float | None = None, rounds: int = 1,
          progress=None) -> SweepSummary:
    """Scale each model with every strategy to every flops factor and time each result on
    every provider (``onnxscale sweep``).  Cells are stored one by one in ``db`` (default: the
    user's results database); a rerun skips the cells already there."""
    from .runtime import parse_providers
    from .runtime.settings import make_settings, parse_batches
    from .scaling.job import parse_tolerance
    from .store import ResultStore, default_db_path
    from .sweeps import Sweep, parse_factors, parse_strategies

    provider_names = parse_providers(_names(providers))
    settings = make_settings(provider_names, threads=threads, precision=precision,
                             warmup=warmup, runs=runs, seconds=seconds, io_binding=io_binding,
                             cuda_graph=cuda_graph, provider_options=provider_options,
                             input_shapes=input_shapes_of(input_shapes), cache_dir=cache_dir,
                             check_outputs=check_outputs, output_tolerance=output_tolerance,
                             rounds=rounds)
    try:
        tol = parse_tolerance(tolerance)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    chosen = parse_strategies(_names(strategies), _names(alpha))
    factors = parse_factors(_names(flops))
    path = Path(db) if db is not None else default_db_path()
    keep = Path(keep_models) if keep_models is not None else None
    if keep is not None and keep.exists() and not keep.is_dir():
        raise OnnxscaleError(f"{keep}: keep_models needs a folder, and this is a file")
    with ResultStore(path) as store:
        runner = Sweep(store, provider_names, parse_batches(batch), settings, keep_models=keep,
                       tolerance=tol, retry_failed=retry_failed, progress=progress)
        result = runner.run([models] if isinstance(models, str) else list(models), chosen,
                            factors)
    return SweepSummary(path, result.done, result.skipped, result.failed, result.cells,
                        result.notes)


def report(output: str | os.PathLike, *, db: str | os.PathLike | None = None,
           model: str | None = None, providers: str | Sequence[str] | None = None,
           machine: str | None = None, reference: str | None = None) -> ReportSummary:
    """Analyze the stored sweeps and write plots, ``summary.json``, ``summary.md`` and
    ``index.html`` to the folder ``output`` (``onnxscale report``)."""
    from .runtime import parse_providers
    from .reporting import build_report
    from .store import default_db_path

    path = Path(db) if db is not None else default_db_path()
    wanted = parse_providers(_names(providers)) if providers else None
    summary, written = build_report(path, Path(output), model=model, providers=wanted,
                                    machine=machine, reference=reference)
    return ReportSummary(Path(output), written, [p["finding"] for p in summary["panels"]],
                         [c["finding"] for c in summary["machines_compared"]], summary,
                         [c["finding"] for c in summary["providers_compared"]])


def load_results(db: str | os.PathLike | None = None, *, table: str = "bench"
                 ) -> pandas.DataFrame:
    """Stored results as a pandas DataFrame (needs pandas: ``pip install 'onnxscale[pandas]'``):
    ``table='bench'``, one row per measured configuration; ``'sweep'``, one per sweep cell."""
    try:
        import pandas as pd
    except ImportError:
        raise OnnxscaleError("load_results needs pandas: pip install 'onnxscale[pandas]'") \
            from None
    from .store import ResultStore, default_db_path

    path = Path(db) if db is not None else default_db_path()
    if not path.exists():
        raise OnnxscaleError(f"{path}: no results database yet; run `onnxscale bench` first")
    if table not in ("bench", "sweep"):
        raise UsageError(f"table={table!r}: expected 'bench' or 'sweep'")
    with ResultStore(path) as store:
        records = [row.to_dict() for row in store.rows()] if table == "bench" else \
            store.cells()
    return pd.DataFrame.from_records(records)
