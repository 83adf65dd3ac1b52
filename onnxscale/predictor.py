"""A runtime predictor for one (machine, provider, precision, batch, threads), learned from
the per-layer profiles in the results database: no hand-tuned constant for any model.

**Layer level.** Each counted layer is described by `runtime_features.describe` (its kind,
geometry and attached uncounted work).  Per kind, a layer's time (the kernels attributed to
it, fused activations and BatchNormalizations included: `runtime.profiling`) is fitted as

    ms = a · MFLOPs + b · MB moved + c · M attached elements + d,   a, b, c, d ≥ 0,

with MB moved = 4 · (params + 2 · acts) / 1e6 and the attached elements split into what ONNX
Runtime fuses (light) and what it runs as kernels of its own (heavy), each with its own
coefficient (non-negative least squares; a kind seen in fewer than 3 layers borrows the fit of
all layers).  A layer's time is its *share* of the profiled run times bench's whole-model p50:
the profile and the p50 are taken minutes apart, and a shared machine changes speed in
between, so only the profile's shares are trusted.  A model's prediction is the sum over its
layers times ``k``, the median over the training models of p50 / predicted sum (what no
layer owns: layout reorders, copies, the run's own overhead).

**Baselines** (the paper's whole-model metrics): p50 against flops only, acts only, and
flops + acts, each ``a · x + c`` fitted over the same models.

**Interval**: the 95th percentile of the leave-one-family-out relative errors over the
training models, applied to the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MIN_MODELS = 5        # fewer stored profiles than this: refuse, and say what to run
MIN_LAYERS_PER_KIND = 3


def layer_features(layer: dict) -> np.ndarray:
    """(MFLOPs, MB moved, M light attached, M heavy attached, 1) of one described layer (a
    `runtime_features.describe` dict, or a stored profile's layer with its ``detail``)."""
    detail = layer.get("detail", layer)
    return np.array([layer["flops"] / 1e6, 4.0 * (layer["params"] + 2.0 * layer["acts"]) / 1e6,
                     detail.get("attached_light", 0) / 1e6,
                     detail.get("attached_heavy", 0) / 1e6, 1.0])


def _nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from .reporting import nonnegative_fit

    return nonnegative_fit(x, y)


@dataclass
class Sample:
    """One profiled model: its layers (kind, features, ms), totals and bench p50."""

    model: str
    model_hash: str
    p50_ms: float
    flops: float
    acts: float
    layers: list[tuple[str, np.ndarray, float]]
    family: str = ""        # models of one family leave the training set together


def sample_from_profile(data: dict) -> Sample:
    share = data["p50_ms"] / data["profiled_ms"] if data.get("profiled_ms") else 1.0
    layers = [(layer.get("kind") or layer["op"].lower(), layer_features(layer),
               float(layer["ms"]) * share) for layer in data["layers"]]
    return Sample(model=data["model"], model_hash=data.get("model_hash", ""),
                  p50_ms=float(data["p50_ms"]), flops=float(data.get("flops") or 0),
                  acts=float(data.get("acts") or 0), layers=layers,
                  family=data.get("family") or data.get("model_hash", data["model"]))


@dataclass
class Predictor:
    """Fitted per-kind layer models, the whole-model map, and the baselines."""

    kinds: dict[str, np.ndarray]
    fallback: np.ndarray
    scale: float                      # k: p50 / the sum of the layers' predictions
    baselines: dict[str, np.ndarray]
    models: int
    interval: float | None = None              # relative half-width (95%)
    baseline_intervals: dict[str, float] = field(default_factory=dict)

    def layer_ms(self, kind: str, features: np.ndarray) -> float:
        return float(features @ self.kinds.get(kind, self.fallback))

    def predict_layers(self, layers: list[dict]) -> list[float]:
        """Predicted ms of each described layer (`runtime_features.describe`)."""
        return [self.layer_ms(layer["kind"], layer_features(layer)) for layer in layers]

    def predict(self, layers: list[dict]) -> float:
        """The model's predicted p50 (ms) from its described layers."""
        return self.scale * sum(self.predict_layers(layers))

    def baseline(self, name: str, flops: float, acts: float) -> float:
        return float(_baseline_features(name, flops, acts) @ self.baselines[name])


BASELINES = ("flops", "acts", "flops+acts")


def _baseline_features(name: str, flops: float, acts: float) -> np.ndarray:
    parts = {"flops": [flops / 1e9], "acts": [acts / 1e6],
             "flops+acts": [flops / 1e9, acts / 1e6]}[name]
    return np.array(parts + [1.0])


def fit(samples: list[Sample]) -> Predictor:
    """Fit the layer models, the whole-model map and the baselines on ``samples``."""
    by_kind: dict[str, list[tuple[np.ndarray, float]]] = {}
    for sample in samples:
        for kind, features, ms in sample.layers:
            by_kind.setdefault(kind, []).append((features, ms))
    everything = [item for items in by_kind.values() for item in items]
    fallback = _nnls(np.array([f for f, _ in everything]), np.array([t for _, t in everything]))
    kinds = {}
    for kind, items in by_kind.items():
        if len(items) >= MIN_LAYERS_PER_KIND:
            kinds[kind] = _nnls(np.array([f for f, _ in items]), np.array([t for _, t in items]))
    partial = Predictor(kinds, fallback, 1.0, {}, len(samples))
    sums = np.array([sum(partial.layer_ms(k, f) for k, f, _ in s.layers) for s in samples])
    p50 = np.array([s.p50_ms for s in samples])
    scale = float(np.median(p50 / np.maximum(sums, 1e-9)))
    baselines = {name: _nnls(np.array([_baseline_features(name, s.flops, s.acts)
                                       for s in samples]), p50) for name in BASELINES}
    return Predictor(kinds, fallback, scale, baselines, len(samples))


def leave_one_out(samples: list[Sample]) -> list[dict]:
    """Per model: its measured p50 and what the predictor and each baseline, fitted without
    its family, predict for it."""
    out = []
    for sample in samples:
        train = [s for s in samples if s.family != sample.family]
        if len(train) < 3:
            continue
        model = fit(train)
        predicted = model.scale * sum(model.layer_ms(k, f) for k, f, _ in sample.layers)
        entry = {"model": sample.model, "measured": sample.p50_ms, "layers": predicted}
        for name in BASELINES:
            entry[name] = model.baseline(name, sample.flops, sample.acts)
        out.append(entry)
    return out


def within(errors: list[dict], key: str, tolerance: float) -> float:
    """Share of models whose ``key`` prediction is within ``tolerance`` of the measurement."""
    if not errors:
        return 0.0
    return sum(abs(e[key] / e["measured"] - 1) <= tolerance for e in errors) / len(errors)


def with_interval(samples: list[Sample]) -> Predictor:
    """The predictor on every sample, with its 95% interval from leave-one-out errors."""
    model = fit(samples)
    errors = leave_one_out(samples)
    if len(errors) >= 3:
        rel = [abs(e["layers"] / e["measured"] - 1) for e in errors]
        model.interval = float(np.percentile(rel, 95))
        for name in BASELINES:
            model.baseline_intervals[name] = float(np.percentile(
                [abs(e[name] / e["measured"] - 1) for e in errors], 95))
    return model


def load(store, *, provider: str, options: dict, batch: int, fingerprint: str) -> list[Sample]:
    """The samples stored for one configuration on one machine."""
    return [sample_from_profile(p) for p in store.profiles(
        provider=provider, options=options, batch=batch, fingerprint=fingerprint)
        if p.get("p50_ms")]


def describe_interval(estimate: float, interval: float | None) -> str:
    if interval is None or not math.isfinite(interval):
        return f"{estimate:.2f} ms"
    return (f"{estimate:.2f} ms (95% of held-out models within ±{interval:.0%}: "
            f"{estimate * (1 - interval):.2f}-{estimate * (1 + interval):.2f} ms)")
