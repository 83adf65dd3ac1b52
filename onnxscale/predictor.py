"""A runtime predictor for one (machine, provider, precision, batch, threads), learned from
the per-layer profiles in the results database: no hand-tuned constant for any model.

**Layer level.** Each counted layer is described by `runtime_features.describe` (its kind,
geometry and attached uncounted work).  Per kind, a layer's time (the kernels attributed to
it, fused activations and BatchNormalizations included: `runtime.profiling`) is fitted as

    ms = a · MFLOPs + b · MB moved + c · M light + d · M heavy
         + e4 · MFLOPs off 4-channel blocks + e8 · ... + e16 · ... + f,   all ≥ 0,

with MB moved = 4 · (params + 2 · acts) / 1e6; the attached elements split into what ONNX
Runtime fuses (light) and what it runs as kernels of its own (heavy); and a layer whose
channels are not a multiple of 4, 8 or 16 paying for the slower kernels that leaves
(`CHANNEL_BLOCKS`).  Non-negative least squares; a kind seen in fewer than 3 layers borrows
the fit of all layers.  A layer's time is its *share* of the profiled run times bench's
whole-model p50: the profile and the p50 are taken minutes apart, and a shared machine
changes speed in between, so only the profile's shares are trusted.  A model's prediction is the sum over its
layers times ``k``, the median over the training models of p50 / predicted sum (what no
layer owns: layout reorders, copies, the run's own overhead).

**Baselines** (the paper's whole-model metrics): p50 against flops only, acts only, and
flops + acts, each ``a · x + c`` fitted over the same models.

**Interval**: a factor ``f``: 95% of the training models, each predicted with its family
left out, were within ``f`` times of their measured p50 (the 95th percentile of
|log(predicted / measured)|).  The interval is [prediction / f, prediction · f]: a factor,
not a ± percentage, since runtimes are positive and a model overestimated three times would
otherwise get a negative lower bound.

**Range**: what the predictor was fitted on: the training models' flops, and per kind the
MFLOPs of its layers.  A model more than 2x outside the first, or whose predicted time comes
mostly from layers more than 2x outside their kind's (a 0.1x scaled variant's tiny convs: a
per-layer constant fitted on big layers dwarfs them), is extrapolated to, and
`extrapolation` says so.  Such models, when held out, are left out of the interval: it
speaks for models within range, the note for the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MIN_MODELS = 5        # fewer stored profiles than this: refuse, and say what to run
MIN_LAYERS_PER_KIND = 3
EXTRAPOLATION = 2.0   # flops beyond the training models' range by this factor: say so


# SIMD widths (in channels) CPU kernels block channels by: MLAS's NCHWc layout takes 8 or 16
# channels per block, its depthwise paths 4.  A conv whose channels are not a multiple of one
# runs on a slower path (a timm ReXNet's 162-channel depthwise conv takes 5x the time per
# flop of its 432-channel one), so the MFLOPs of such layers get coefficients of their own.
CHANNEL_BLOCKS = (4, 8, 16)
FEATURES = ("MFLOPs", "MB moved", "M light", "M heavy",
            *(f"MFLOPs off {b}-channel blocks" for b in CHANNEL_BLOCKS), "layer")


def layer_features(layer: dict) -> np.ndarray:
    """`FEATURES` of one described layer (a `runtime_features.describe` dict, or a stored
    profile's layer with its ``detail``): MFLOPs, MB moved, M light and heavy attached
    elements, the MFLOPs again once per channel block the layer's channels (a grouped conv's:
    per group) are not a multiple of, and 1 (the per-layer constant)."""
    detail = layer.get("detail", layer)
    mflops = layer["flops"] / 1e6
    cout, cin, groups = detail.get("cout") or 0, detail.get("cin_g") or 0, \
        detail.get("groups") or 1
    if groups > 1 and cin == 1:   # depthwise: its kernels block the channels themselves
        cin = groups
    elif groups > 1:              # grouped: one GEMM per group, blocked by the group's width
        cout //= groups
    off = [mflops if (cout % block or (cin > 4 and cin % block)) else 0.0
           for block in CHANNEL_BLOCKS]
    return np.array([mflops, 4.0 * (layer["params"] + 2.0 * layer["acts"]) / 1e6,
                     detail.get("attached_light", 0) / 1e6,
                     detail.get("attached_heavy", 0) / 1e6, *off, 1.0])


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
    flops_range: tuple[float, float] = (0.0, math.inf)   # of the training models
    layer_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # MFLOPs/kind
    interval: float | None = None              # factor f: 95% within [p / f, p * f]
    baseline_intervals: dict[str, float] = field(default_factory=dict)   # factors, too

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

    def extrapolation(self, flops: float, layers=()) -> str | None:
        """Why a model's prediction is less sure than the interval says, or None: its flops
        lie more than 2x outside the training models', or over half its predicted time comes
        from layers more than 2x outside the MFLOPs their kind was fitted on.  ``layers``:
        (kind, `layer_features`) pairs."""
        low, high = self.flops_range
        if not low / EXTRAPOLATION <= flops <= high * EXTRAPOLATION:
            side = "fewer" if flops < low else "more"
            return (f"{flops / 1e6:,.0f} Mflops: {side} than any profiled model "
                    f"({low / 1e6:,.0f}-{high / 1e6:,.0f} M), so the prediction "
                    f"extrapolates; `onnxscale profile` a model of this size to teach it")
        times = [(self.layer_ms(kind, f), self._outside(kind, f[0])) for kind, f in layers]
        total = sum(ms for ms, _ in times)
        outside = sum(ms for ms, out in times if out)
        if total > 0 and outside > 0.5 * total:
            return (f"{outside / total:.0%} of its predicted time is in layers far smaller or "
                    f"larger than any profiled layer of their kind, so the prediction "
                    f"extrapolates; `onnxscale profile` a model like it to teach it")
        return None

    def _outside(self, kind: str, mflops: float) -> bool:
        low, high = self.layer_ranges.get(kind, self.layer_ranges.get("*", (0.0, math.inf)))
        return mflops > 0 and not low / EXTRAPOLATION <= mflops <= high * EXTRAPOLATION


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
    flops = [s.flops for s in samples if s.flops > 0]
    span = (min(flops), max(flops)) if flops else (0.0, math.inf)
    ranges = {kind: _span([f[0] for f, _ in by_kind[kind]]) for kind in kinds}
    ranges["*"] = _span([f[0] for f, _ in everything])   # kinds that borrow the fallback
    return Predictor(kinds, fallback, scale, baselines, len(samples), span, ranges)


def _span(values: list[float]) -> tuple[float, float]:
    """(smallest, largest) of the positive values; layers without flops (pools, Mul) never
    count as out of range."""
    positive = [v for v in values if v > 0]
    return (min(positive), max(positive)) if positive else (0.0, math.inf)


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
        entry = {"model": sample.model, "measured": sample.p50_ms, "layers": predicted,
                 "extrapolated": model.extrapolation(
                     sample.flops, [(k, f) for k, f, _ in sample.layers]) is not None}
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
    # the interval speaks for models within range; the others get the extrapolation note
    errors = [e for e in leave_one_out(samples) if not e["extrapolated"]]
    if len(errors) >= 3:
        model.interval = _factor(errors, "layers")
        for name in BASELINES:
            model.baseline_intervals[name] = _factor(errors, name)
    return model


def _factor(errors: list[dict], key: str) -> float:
    """The factor 95% of held-out predictions were within of the measurement (a baseline
    that predicts a runtime of zero or less is off by an infinite factor)."""
    logs = [abs(math.log(e[key] / e["measured"])) if e[key] > 0 else math.inf for e in errors]
    return float(math.exp(np.percentile(logs, 95, method="higher")))


def load(store, *, provider: str, options: dict, batch: int, fingerprint: str) -> list[Sample]:
    """The samples stored for one configuration on one machine."""
    return [sample_from_profile(p) for p in store.profiles(
        provider=provider, options=options, batch=batch, fingerprint=fingerprint)
        if p.get("p50_ms")]


def interval_ms(estimate: float, factor: float | None) -> list[float] | None:
    """[estimate / factor, estimate * factor], or None without a finite factor."""
    if factor is None or not math.isfinite(factor):
        return None
    return [estimate / factor, estimate * factor]


def describe_factor(factor: float | None) -> str:
    """``within x1.26`` (a factor) in words a reader takes in at a glance."""
    if factor is None:
        return ""
    if not math.isfinite(factor):
        return "off by any factor"
    return f"within x{factor:.2f}" if factor < 10 else f"within x{factor:.0f}"


def describe_interval(estimate: float, factor: float | None) -> str:
    span = interval_ms(estimate, factor)
    if span is None:
        return f"{estimate:.2f} ms"
    return (f"{estimate:.2f} ms (95% interval {span[0]:.2f}-{span[1]:.2f} ms: 95% of held-out "
            f"models were {describe_factor(factor)})")
