"""Profiles in the results database: one model profiled and stored (`profile_model`), and a
standard set profiled within a time budget so a new machine gets a usable runtime predictor
(`calibrate`).

A stored profile is keyed like a bench row, by model content, provider, batch and machine, and
by the options a predictor is specific to (threads, precision); it holds the per-layer times
(`runtime.profiling`), the model's totals and its whole-model p50 by bench's method.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from .errors import OnnxscaleError, UsageError
from .model import LoadedModel, load_model

# The standard set: every zoo family, then scaled variants of three of them (strategies
# and factors that move flops, acts and depth apart), so the fit sees each layer kind over a
# wide range of sizes.
STANDARD_MODELS = ("zoo:resnet-18", "zoo:efficientnet-b0", "zoo:regnetx-400mf",
                   "zoo:regnety-400mf", "zoo:regnetz-500mf", "zoo:resnet-34", "zoo:resnet-50",
                   "zoo:regnety-800mf", "zoo:efficientnet-b1", "zoo:efficientnet-b2")
# (model, strategy, flops factor, channel divisor).  pycls widths are multiples of 8; the
# divisor-2 variants give channel counts that are not, so the predictor sees the slower
# kernels such layers run on (`predictor.CHANNEL_BLOCKS`) before a user's model has them.
STANDARD_VARIANTS = (("zoo:efficientnet-b0", "dWr", 2.0, 8), ("zoo:efficientnet-b0", "w", 0.5, 8),
                     ("zoo:regnety-400mf", "d", 2.0, 8), ("zoo:regnety-400mf", "w", 2.0, 8),
                     ("zoo:resnet-18", "r", 0.5, 8), ("zoo:resnet-18", "dWr", 4.0, 8),
                     ("zoo:regnetx-400mf", "dwr", 2.0, 8), ("zoo:efficientnet-b0", "d", 4.0, 8),
                     ("zoo:efficientnet-b0", "w", 1.5, 2), ("zoo:regnetx-400mf", "w", 1.5, 2),
                     ("zoo:resnet-18", "w", 0.7, 2))


def predictor_options(settings) -> dict:
    """What a predictor (and a stored profile) is specific to, beyond provider and batch."""
    return {"threads": settings.threads, "precision": settings.precision}


def stored_predictor(store, provider: str, settings, *, batch: int, interval: bool = False):
    """The runtime predictor fitted on what ``store`` holds for this machine and
    configuration (``interval``: with its leave-one-family-out interval); refused, saying
    what to run, below `predictor.MIN_MODELS` profiled models."""
    from . import predictor as P
    from .runtime import fingerprint as fingerprint_mod

    samples = P.load(store, provider=provider, options=predictor_options(settings),
                     batch=batch, fingerprint=fingerprint_mod.collect()["id"])
    if len(samples) < P.MIN_MODELS:
        raise too_few_profiles(len(samples), provider, settings, batch)
    return P.with_interval(samples) if interval else P.fit(samples)


def predictor_in(db, provider: str, settings, *, batch: int, interval: bool = False):
    """`stored_predictor` of the results database at ``db`` (None: the default one), which
    only reads: a database that is not there is refused like an empty one, and not made."""
    from .store import ResultStore, default_db_path

    path = Path(db).expanduser() if db is not None else default_db_path()
    if not path.exists():
        raise too_few_profiles(0, provider, settings, batch)
    with ResultStore(path) as store:
        return stored_predictor(store, provider, settings, batch=batch, interval=interval)


def too_few_profiles(count: int, provider: str, settings, batch: int) -> OnnxscaleError:
    """The refusal of a prediction, with the command that fixes it."""
    from . import predictor as P
    from .runtime.providers import short_name

    flags = (f" --threads {settings.threads}" if settings.threads else "") + (
        f" --batch {batch}" if batch != 1 else "") + (
        f" --precision {settings.precision}" if settings.precision != "fp32" else "")
    return OnnxscaleError(
        f"the store has {count} profiled model(s) for {short_name(provider)} "
        f"({settings.threads or 'default'} threads, batch {batch}, {settings.precision}) "
        f"on this machine and a runtime prediction needs {P.MIN_MODELS}: run `onnxscale "
        f"calibrate --provider {short_name(provider)}{flags}` first")


def predict_model(fitted, loaded: LoadedModel, batch: int | None,
                  input_shapes: dict[str, list[int]] | None = None) -> dict:
    """A model's predicted p50 by the layer-level predictor and the whole-model baselines,
    with the ten layers predicted to take longest."""
    from . import predictor as P
    from .complexity import analyze
    from .graph import Graph
    from .runtime.inputs import prepare
    from .runtime_features import describe

    prepared = prepare(loaded.proto, batch, input_shapes or {}, loaded.source)
    graph = Graph(prepared.proto, prepared.shapes)
    report = analyze(graph)
    layers = describe(graph, report)
    per_layer = fitted.predict_layers(layers)
    total = sum(per_layer) or 1.0
    ranked = sorted(zip(layers, per_layer), key=lambda item: -item[1])[:10]
    predicted = fitted.scale * sum(per_layer)   # what fitted.predict(layers) gives
    return {"model": loaded.source, "batch": prepared.batch,
            "predicted_ms": predicted, "interval": fitted.interval,
            "interval_ms": P.interval_ms(predicted, fitted.interval),
            "extrapolation": fitted.extrapolation(
                report.flops, [(layer["kind"], P.layer_features(layer)) for layer in layers]),
            "models": fitted.models,
            "baselines": {name: fitted.baseline(name, report.flops, report.acts)
                          for name in P.BASELINES},
            "baseline_intervals": fitted.baseline_intervals,
            "layers": [{"name": layer["name"], "op": layer["op"], "kind": layer["kind"],
                        "ms": ms, "share": ms / total} for layer, ms in ranked]}


def profile_model(loaded: LoadedModel, provider: str, settings, *, batch: int | None,
                  store=None, runs: int = 20, family: str | None = None):
    """Measure the model's p50 by bench's method, then profile it in a separate pass; store
    both (when ``store``); return the `Profile`."""
    from .runtime import fingerprint as fingerprint_mod
    from .runtime import locate, model_hash
    from .runtime.inputs import prepare
    from .runtime.profiling import profile
    from .runtime.providers import short_name
    from .runtime.runner import measure

    route = locate.route(provider)
    if route.kind != locate.IN_PROCESS:
        raise UsageError(f"--provider {short_name(provider)}: profiles are taken in this "
                         f"process's onnxruntime, which does not have it"
                         + (f" ({route.reason})" if route.reason else ""))
    prepared = prepare(loaded.proto, batch, settings.input_shapes, loaded.source)
    digest = model_hash(loaded)
    row = measure(prepared, provider, settings, model=loaded.source, model_hash=digest)
    if not row.available:
        raise OnnxscaleError(f"{loaded.source}: {short_name(provider)} cannot run it: "
                             f"{row.reason}")
    found = profile(prepared, provider, settings, model=loaded.source, runs=runs)
    found.p50_ms, found.p50_ci_ms = row.p50_ms, row.p50_ci_ms
    if store is not None:
        fp = fingerprint_mod.collect()
        store.save_fingerprint(fp)
        key = {"model_hash": digest, "provider": provider, "options": predictor_options(settings),
               "batch": prepared.batch, "fingerprint": fp["id"]}
        store.save_profile(key, found.to_dict() | {"model_hash": digest,
                                                   "family": family or digest})
    return found


def calibrate(provider: str, settings, *, store, batch: int | None, budget_s: float,
              progress: Callable[[str], None] | None = None) -> dict:
    """Profile the standard set (skipping what is stored) until done or out of budget."""
    from .runtime import fingerprint as fingerprint_mod
    from .runtime import model_hash

    start = time.time()
    fp = fingerprint_mod.collect()
    done, skipped, failed = [], [], []
    for spec, strategy, factor, divisor in [(m, None, None, 8) for m in STANDARD_MODELS] + list(
            STANDARD_VARIANTS):
        if time.time() - start > budget_s:
            break
        label = spec if strategy is None else f"{spec} {strategy} {factor:g}x" + (
            f" divisor {divisor}" if divisor != 8 else "")
        base = load_model(spec, seed=settings.seed)
        loaded = base if strategy is None else _scaled(base, strategy, factor, settings,
                                                       divisor)
        if loaded is None:
            failed.append(label)
            continue
        digest = model_hash(loaded)
        have = store.profiles(provider=provider, options=predictor_options(settings),
                              batch=batch or 1, fingerprint=fp["id"], model_hash=digest)
        if have:
            skipped.append(label)
            continue
        if progress is not None:
            progress(f"profiling {label}")
        try:
            profile_model(loaded, provider, settings, batch=batch, store=store,
                          family=spec)
            done.append(label)
        except OnnxscaleError as exc:
            failed.append(f"{label}: {exc}")
    left = len(STANDARD_MODELS) + len(STANDARD_VARIANTS) - len(done) - len(skipped) - \
        len(failed)
    return {"profiled": done, "already_stored": skipped, "failed": failed,
            "left_for_next_time": left, "seconds": time.time() - start}


def _scaled(base: LoadedModel, strategy: str, factor: float, settings,
            divisor: int = 8) -> LoadedModel | None:
    """``base`` scaled by ``strategy`` to ``factor`` times its flops, channels rounded to
    multiples of ``divisor`` (random weights)."""
    from .scaling.job import Job, plan_job
    from .scaling.pipeline import Planner, apply_plan
    from .scaling.plan import ScaleOptions
    from .scaling.strategy import parse_strategy

    try:
        planner = Planner(base.proto, settings.input_shapes)
        job = Job(strategy=strategy, weights=parse_strategy(strategy), flops=f"{factor:g}x",
                  target=("ratio", factor))
        planned = plan_job(planner, job, ScaleOptions(init="random", seed=settings.seed,
                                                      divisor=divisor))
        outcome = apply_plan(base.proto, settings.input_shapes, planned.plan)
    except OnnxscaleError:
        return None
    name = f"{base.source}.{strategy}{factor:g}x" + (f".div{divisor}" if divisor != 8 else "")
    return LoadedModel(outcome.model, name, None)
