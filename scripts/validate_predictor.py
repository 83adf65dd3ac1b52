#!/usr/bin/env python
"""Check the runtime predictor on models it never saw: leave-one-out over torchvision and timm
exports of different families, beside the paper's whole-model baselines.

Calibrates this machine (`onnxscale calibrate`: zoo models and scaled variants), profiles each
validation model (`onnxscale profile`; everything is stored and reused, so a rerun only fits),
then for every validation model fits the predictor on all the *other* stored models and
predicts its p50.  Two protocols:

- **leave-one-model-out**: the model and its scaled variants are left out;
- **leave-one-family-out** (stricter): every model of its architecture family is left out as
  well (torchvision ResNet-50 is predicted without any ResNet, zoo or torchvision).

The truth is each model's p50 by bench over 3 interleaved rounds.  Prints, per protocol, the
share of held-out models predicted within ±10% and ±5% by the layer-level predictor and by the
flops-only, acts-only and flops+acts baselines, and by *remeasuring*: the single p50 taken
with the model's profile, which says how far one measurement on this machine is from another
(no predictor can do better than the machine repeats itself).

    python scripts/validate_predictor.py [--db FILE] [--threads 1] [--calibrate-budget 10m]
        [--models torchvision:resnet18,...] [--json]

Needs torch, torchvision and timm (the test extra) to export the validation models.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (model, family): families group architectures that share their building blocks.
VALIDATION = (
    ("torchvision:alexnet", "alexnet"), ("torchvision:vgg11_bn", "vgg"),
    ("torchvision:googlenet", "inception"), ("torchvision:inception_v3", "inception"),
    ("torchvision:densenet121", "densenet"), ("torchvision:squeezenet1_0", "squeezenet"),
    ("torchvision:resnet18", "resnet"), ("torchvision:resnet50", "resnet"),
    ("torchvision:resnext50_32x4d", "resnet"), ("torchvision:mobilenet_v2", "mobilenet"),
    ("torchvision:mobilenet_v3_small", "mobilenet"),
    ("torchvision:mobilenet_v3_large", "mobilenet"), ("torchvision:mnasnet1_0", "mnasnet"),
    ("torchvision:shufflenet_v2_x1_0", "shufflenet"),
    ("torchvision:efficientnet_b0", "efficientnet"),
    ("torchvision:regnet_x_400mf", "regnetx"), ("torchvision:regnet_y_400mf", "regnety"),
    ("torchvision:convnext_tiny", "convnext"), ("timm:cs3darknet_s", "darknet"),
    ("timm:dla34", "dla"), ("timm:ghostnet_100", "ghostnet"),
    ("timm:regnety_008", "regnety"), ("timm:hrnet_w18_small", "hrnet"),
    ("timm:res2net50_14w_8s", "resnet"), ("timm:rexnet_100", "rexnet"),
    ("timm:mixnet_s", "efficientnet"),
)
# the calibration set's models, by family
ZOO_FAMILIES = {"zoo:resnet": "resnet", "zoo:efficientnet": "efficientnet",
                "zoo:regnetx": "regnetx", "zoo:regnety": "regnety", "zoo:regnetz": "regnetz"}
PREDICTORS = ("layers", "flops", "acts", "flops+acts", "remeasured")


def family_of(model: str, families: dict[str, str]) -> str:
    if model in families:
        return families[model]
    for prefix, family in ZOO_FAMILIES.items():
        if model.startswith(prefix):
            return family
    return model


def base_of(model: str) -> str:
    """A scaled variant's base model (``zoo:regnety-400mf.d2x`` -> ``zoo:regnety-400mf``)."""
    return model.split(".", 1)[0] if model.startswith("zoo:") else model


def held_out(samples, excluded, truth: dict[str, float]) -> list[dict]:
    """Per validation sample: measured p50 (``truth``: bench's p50 over interleaved rounds)
    and each predictor's prediction, fitted without the samples ``excluded(held, other)``
    says to leave out; ``remeasured`` is the single p50 taken with the profile: how well a
    second measurement agrees, the ceiling of any predictor on this machine."""
    from onnxscale import predictor as P

    out = []
    for held in samples:
        if not held.validation:
            continue
        train = [s for s in samples if not excluded(held, s)]
        fitted = P.fit(train)
        entry = {"model": held.model, "family": held.group,
                 "measured": truth.get(held.model, held.p50_ms), "remeasured": held.p50_ms,
                 "layers": fitted.scale * sum(fitted.layer_ms(k, f) for k, f, _ in held.layers),
                 "train": len(train)}
        for name in P.BASELINES:
            entry[name] = fitted.baseline(name, held.flops, held.acts)
        out.append(entry)
    return out


def profile_validation(models, provider, settings, store, say) -> list[str]:
    """Profile every validation model the store lacks; the ones that failed, with why."""
    from onnxscale.calibration import predictor_options, profile_model
    from onnxscale.errors import OnnxscaleError
    from onnxscale.model import load_model
    from onnxscale.runtime import fingerprint, model_hash

    fp = fingerprint.collect()
    failed = []
    for spec, family in models:
        try:
            loaded = load_model(spec)
            have = store.profiles(provider=provider, options=predictor_options(settings),
                                  batch=1, fingerprint=fp["id"], model_hash=model_hash(loaded))
            if have:
                continue
            say(f"profiling {spec}")
            profile_model(loaded, provider, settings, batch=1, store=store, family=family)
        except OnnxscaleError as exc:
            failed.append(f"{spec}: {exc}")
    return failed


def bench_truth(models, provider, settings, store, say) -> dict[str, float]:
    """Each validation model's p50 by bench over 3 interleaved rounds (stored; a rerun reuses
    them): the truth predictions are judged against."""
    import dataclasses

    from onnxscale.errors import OnnxscaleError
    from onnxscale.model import load_model
    from onnxscale.runtime import run_bench

    loaded = []
    for spec, _ in models:
        try:
            loaded.append(load_model(spec))
        except OnnxscaleError:
            continue
    say(f"timing {len(loaded)} models, 3 interleaved rounds")
    report = run_bench(loaded, [provider], [1], dataclasses.replace(settings, rounds=3),
                       store=store, resume=True)
    return {row.model: row.p50_ms for row in report.rows if row.available and row.p50_ms}


def summary(rows: list[dict]) -> dict:
    from onnxscale import predictor as P

    return {name: {"within_10": P.within(rows, name, 0.10), "within_5": P.within(rows, name, 0.05)}
            for name in PREDICTORS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="results database (default: onnxscale's)")
    parser.add_argument("--provider", default="cpu")
    parser.add_argument("--threads", default="1")
    parser.add_argument("--calibrate-budget", default="15m")
    parser.add_argument("--models", help="comma-separated subset of the validation models")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from onnxscale import predictor as P
    from onnxscale.calibration import calibrate, predictor_options
    from onnxscale.cli.predict import _duration
    from onnxscale.runtime import fingerprint, parse_providers
    from onnxscale.runtime.settings import make_settings
    from onnxscale.store import ResultStore, default_db_path

    console = Console(stderr=args.json)
    provider = parse_providers(args.provider)[0]
    settings = make_settings([provider], threads=args.threads)
    models = VALIDATION if not args.models else [
        (m, dict(VALIDATION).get(m, m)) for m in args.models.split(",")]
    families = dict(models)
    start = time.time()
    with ResultStore(args.db or default_db_path()) as store:
        with console.status("calibrating ...") as status:
            calibrate(provider, settings, store=store, batch=1,
                      budget_s=_duration(args.calibrate_budget), progress=status.update)
            failed = profile_validation(models, provider, settings, store, status.update)
            truth = bench_truth(models, provider, settings, store, status.update)
        samples = P.load(store, provider=provider, options=predictor_options(settings), batch=1,
                         fingerprint=fingerprint.collect()["id"])
    for sample in samples:
        sample.group = family_of(base_of(sample.model), families)
        sample.validation = sample.model in families
    by_model = held_out(samples, lambda held, s: base_of(s.model) == base_of(held.model),
                        truth)
    by_family = held_out(samples, lambda held, s: s.group == held.group, truth)
    result = {"models": len(by_model), "stored": len(samples), "failed": failed,
              "leave_one_model_out": summary(by_model),
              "leave_one_family_out": summary(by_family),
              "per_model": [a | {f"{k}_family_out": b[k] for k in PREDICTORS}
                            for a, b in zip(by_model, by_family)],
              "seconds": time.time() - start}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    table = Table(title=f"held-out models ({provider}, {settings.threads or 'default'} "
                        f"thread(s), batch 1): error of the predicted p50, model out / family out",
                  title_justify="left")
    for name in ("model", "family", "p50 ms") + PREDICTORS:
        table.add_column(name, justify="left" if name in ("model", "family") else "right")
    for a, b in zip(by_model, by_family):
        table.add_row(a["model"], a["family"], f"{a['measured']:.2f}",
                      *[f"{a[k] / a['measured'] - 1:+.0%} / {b[k] / b['measured'] - 1:+.0%}"
                        for k in PREDICTORS])
    console.print(table)
    for label, rows in (("leave-one-model-out", by_model), ("leave-one-family-out", by_family)):
        shares = summary(rows)
        console.print(f"{label}, {len(rows)} models: within ±10%: " + ", ".join(
            f"{k} {shares[k]['within_10']:.0%}" for k in PREDICTORS) + "; within ±5%: " +
            ", ".join(f"{k} {shares[k]['within_5']:.0%}" for k in PREDICTORS), highlight=False)
    for failure in failed:
        console.print(f"[yellow]not profiled:[/] {failure}", highlight=False)
    console.print(f"({len(samples)} stored profiles; {result['seconds']:.0f} s)", highlight=False)


if __name__ == "__main__":
    main()
