"""The runtime predictor on synthetic layer timings with known coefficients, the profile's join
of kernels to layers on real exports, and profile/predict through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxscale import predictor as P
from onnxscale.cli import main
from onnxscale.complexity import analyze
from onnxscale.graph import Graph
from onnxscale.runtime_features import describe, owners

# per kind: (ms per MFLOP, ms per MB moved, ms per M light, ms per M heavy, ms per layer)
TRUE = {"conv-1x1": (0.02, 0.05, 0.0, 0.3, 0.004), "conv-dw": (0.10, 0.12, 0.0, 0.5, 0.01),
        "conv-kxk": (0.015, 0.03, 0.0, 0.2, 0.006), "gemm": (0.01, 0.08, 0.0, 0.0, 0.02)}
# the layers own 90% of the profiled time; bench's p50 runs 1.2x the profiled total
ATTRIBUTED, SPEED = 0.9, 1.2


def _synthetic_models(count: int, seed: int = 0, noise: float = 0.0):
    """Profiles of random models whose layer times follow ``TRUE`` exactly (plus noise)."""
    rng = np.random.default_rng(seed)
    profiles = []
    for index in range(count):
        layers = []
        for number in range(int(rng.integers(8, 40))):
            kind = str(rng.choice(list(TRUE)))
            flops, params, acts = (float(rng.uniform(1e5, 5e7)), float(rng.uniform(1e2, 1e6)),
                                   float(rng.uniform(1e3, 2e6)))
            heavy = float(rng.choice([0.0, acts, 2 * acts]))
            features = np.array([flops / 1e6, 4 * (params + 2 * acts) / 1e6, 0.0, heavy / 1e6,
                                 0.0, 0.0, 0.0, 1.0])
            ms = float(features[[0, 1, 2, 3, -1]] @ np.array(TRUE[kind])) * (
                1 + noise * rng.standard_normal())
            layers.append({"name": f"l{number}", "op": "Conv", "kind": kind, "flops": flops,
                           "params": params, "acts": acts, "ms": ms,
                           "detail": {"attached_light": 0, "attached_heavy": heavy}})
        total = sum(layer["ms"] for layer in layers)
        profiles.append({"model": f"m{index}", "model_hash": f"h{index}",
                         "profiled_ms": total / ATTRIBUTED,
                         "p50_ms": SPEED * total / ATTRIBUTED, "layers": layers,
                         "flops": sum(layer["flops"] for layer in layers),
                         "acts": sum(layer["acts"] for layer in layers)})
    return profiles


def test_the_predictor_recovers_known_coefficients():
    """Layer times are read as shares of bench's p50, so the per-kind coefficients come out
    in bench's time (x SPEED), and k restores what no layer owns (1 / ATTRIBUTED)."""
    profiles = _synthetic_models(12)
    samples = [P.sample_from_profile(p) for p in profiles]
    fitted = P.fit(samples)
    for kind, coefficients in TRUE.items():
        found = fitted.kinds[kind]
        # the light-attached and channel-block columns are all zero: their coefficients are
        # free; the others are exact
        for index, column in ((0, 0), (1, 1), (3, 3), (4, -1)):
            assert found[column] == pytest.approx(SPEED * coefficients[index], rel=1e-6,
                                                  abs=1e-9)
    assert fitted.scale == pytest.approx(1 / ATTRIBUTED, rel=1e-6)
    layers = [layer | layer["detail"] for layer in profiles[0]["layers"]]
    assert fitted.predict(layers) == pytest.approx(profiles[0]["p50_ms"], rel=1e-6)


def test_held_out_synthetic_models_are_predicted_and_the_baselines_are_worse():
    samples = [P.sample_from_profile(p) for p in _synthetic_models(15, seed=1, noise=0.02)]
    errors = P.leave_one_out(samples)
    assert len(errors) == 15
    assert P.within(errors, "layers", 0.05) == 1.0
    # whole-model flops cannot see the kind mix: it must do worse on these models
    assert P.within(errors, "flops", 0.05) < 1.0


@pytest.mark.parametrize("detail, off", [
    ({"groups": 162, "cin_g": 1, "cout": 162}, [1, 1, 1]),    # ReXNet's slow depthwise conv
    ({"groups": 432, "cin_g": 1, "cout": 432}, [0, 0, 0]),    # and its fast one
    ({"groups": 504, "cin_g": 1, "cout": 504}, [0, 0, 1]),
    ({"groups": 55, "cin_g": 8, "cout": 440}, [0, 0, 1]),     # RegNetY: 8 channels a group
    ({"groups": 13, "cin_g": 16, "cout": 208}, [0, 0, 0]),    # 16 a group: blocks fit
    ({"groups": 1, "cin_g": 3, "cout": 32}, [0, 0, 0]),       # a stem's 3 input channels
    ({"groups": 1, "cin_g": 36, "cout": 120}, [0, 1, 1]),
])
def test_channels_off_the_simd_blocks_get_their_own_terms(detail, off):
    layer = {"flops": 2e6, "params": 100, "acts": 1000,
             "detail": detail | {"attached_light": 0, "attached_heavy": 0}}
    features = P.layer_features(layer)
    assert len(features) == len(P.FEATURES)
    assert list(features[4:7]) == [2.0 * flag for flag in off]
    assert features[0] == 2.0 and features[-1] == 1.0


def test_the_interval_is_a_factor_and_never_goes_below_zero():
    """One model measured 3x faster than its layers say (overhead the others do not have):
    held out, it is overpredicted 3x, the interval's factor takes that in, and the interval
    stays positive (a ±200% interval once printed '-0.81-4.04 ms')."""
    profiles = _synthetic_models(12, seed=3)
    profiles[0]["p50_ms"] /= 3.0
    fitted = P.with_interval([P.sample_from_profile(p) for p in profiles])
    assert fitted.interval == pytest.approx(3.0, rel=1e-6)  # the 95th percentile: the outlier
    low, high = P.interval_ms(10.0, fitted.interval)
    assert (low, high) == pytest.approx((10 / 3, 30.0))
    assert "3.33-30.00 ms" in P.describe_interval(10.0, fitted.interval)
    assert "within x3.00" in P.describe_interval(10.0, fitted.interval)
    assert all(f >= 1.0 for f in fitted.baseline_intervals.values())


def test_a_model_outside_the_profiled_range_is_said_to_be_extrapolated():
    samples = [P.sample_from_profile(p) for p in _synthetic_models(6, seed=4)]
    fitted = P.fit(samples)
    low, high = fitted.flops_range
    assert low == min(s.flops for s in samples) and high == max(s.flops for s in samples)
    assert fitted.extrapolation(low) is None and fitted.extrapolation(high * 1.9) is None
    assert "fewer than any profiled model" in fitted.extrapolation(low / 3)
    assert "more than any profiled model" in fitted.extrapolation(high * 3)


def test_an_unseen_kind_borrows_the_fit_of_all_layers():
    samples = [P.sample_from_profile(p) for p in _synthetic_models(6, seed=2)]
    fitted = P.fit(samples)
    layer = {"name": "x", "op": "Foo", "kind": "foo", "flops": 1e6, "params": 10, "acts": 100,
             "attached_light": 0, "attached_heavy": 0}
    assert fitted.predict_layers([layer])[0] == pytest.approx(
        float(P.layer_features(layer) @ fitted.fallback))


def test_owners_map_fused_nodes_to_the_layer_they_follow(exports):
    """On a real torchvision export: BatchNormalization, Relu and the residual Add belong to
    the Conv they follow; every Conv owns itself."""
    proto = onnx.load(str(exports("resnet18", "legacy", 64)))
    graph = Graph(proto, {})
    report = analyze(graph)
    counted = {layer.name for layer in report.layers}
    owner = owners(graph.nodes, counted)
    by_name = {node.name: node for node in graph.nodes}
    for node in graph.nodes:
        if node.op_type == "Conv":
            assert owner[node.name] == node.name
        if node.op_type in ("Relu", "Add"):
            producer = node
            while producer.name not in counted:   # walk first data inputs back
                producer = next(n for n in graph.nodes if producer.input[0] in n.output)
            assert owner[node.name] == producer.name
    assert any(by_name[name].op_type == "Add" for name in owner)


def test_profile_join_maps_fused_kernels_back_to_layers(exports, tmp_path):
    """A real profile of a torchvision EfficientNet-B0 export (64x64): ONNX Runtime fuses
    Conv + SiLU and runs the squeeze-excitation as kernels of its own; every kernel lands on
    a layer or is counted apart, and the layers' times add up to the profiled total."""
    from onnxscale.model import load_model
    from onnxscale.runtime.inputs import prepare
    from onnxscale.runtime.profiling import profile
    from onnxscale.runtime.settings import make_settings

    loaded = load_model(str(exports("efficientnet_b0", "legacy", 64)))
    settings = make_settings(["CPUExecutionProvider"], threads=1)
    prepared = prepare(loaded.proto, 1, {}, loaded.source)
    found = profile(prepared, "CPUExecutionProvider", settings, model=loaded.source, runs=3)
    convs = [layer for layer in found.layers if layer.op == "Conv"]
    assert convs and all(layer.ms > 0 for layer in convs)
    assert sum(layer.ms for layer in found.layers) + found.unattributed_ms == pytest.approx(
        found.profiled_ms, rel=1e-6)
    assert found.unattributed_ms < 0.3 * found.profiled_ms
    # fused activations and the SE's Mul are named in the layer they were attributed to
    contained = {name for layer in found.layers for name in layer.contains}
    ops = {node.name: node.op_type for node in loaded.proto.graph.node}
    assert {"Sigmoid", "Mul"} <= {ops.get(name) for name in contained}
    kinds = {layer.kind for layer in convs}
    assert {"conv-dw", "conv-1x1", "conv-stem"} <= kinds
    described = {item["name"]: item for item in describe(Graph(prepared.proto, {}),
                                                         analyze(Graph(prepared.proto, {})))}
    depthwise = next(layer for layer in convs if layer.kind == "conv-dw")
    assert described[depthwise.name]["groups"] == described[depthwise.name]["cout"]
    assert described[depthwise.name]["attached_heavy"] > 0


CALIBRATION = ("zoo:regnetz-500mf", "zoo:regnety-400mf", "zoo:regnetx-400mf",
               "zoo:resnet-18", "zoo:efficientnet-b0")


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    """A results database with five zoo models profiled through the CLI (1 thread)."""
    db = str(tmp_path_factory.mktemp("calibrated") / "p.db")
    runner = CliRunner()
    refused = runner.invoke(main, ["predict", "zoo:regnety-800mf", "--threads", "1",
                                   "--db", db])
    assert refused.exit_code == 1
    assert "onnxscale calibrate --provider cpu --threads 1" in refused.output
    assert not Path(db).exists()  # a refused prediction leaves no empty database behind
    for model in CALIBRATION:
        done = runner.invoke(main, ["profile", model, "--threads", "1", "--runs", "3",
                                    "--db", db, "--json"])
        assert done.exit_code == 0, done.output
        data = json.loads(done.output)["profile"]
        assert data["p50_ms"] > 0 and data["layers"]
    return db


@pytest.mark.slow
def test_profile_predict_and_refusal_through_the_cli(calibrated):
    """profile stores what predict learns from; with too few stored models predict refuses,
    saying what to run (the fixture); with five it predicts a plausible p50."""
    result = CliRunner().invoke(main, ["predict", "zoo:regnety-800mf", "--threads", "1",
                                       "--db", calibrated, "--json"])
    assert result.exit_code == 0, result.output
    predicted = json.loads(result.output)
    assert predicted["models"] == 5
    assert 1.0 < predicted["predicted_ms"] < 500.0
    assert set(predicted["baselines"]) == set(P.BASELINES)
    assert predicted["layers"][0]["share"] >= predicted["layers"][-1]["share"]


@pytest.mark.slow
def test_scale_to_a_runtime_budget_measures_and_lands_within_tolerance(calibrated, tmp_path):
    """A real timed run: RegNetX-400MF scaled with dWr to 1.5x its measured p50 on this
    CPU; the written model loads in ONNX Runtime, its measured p50 is within the tolerance of
    the budget, and every model measured was profiled into the store."""
    import onnxruntime as ort

    from onnxscale.store import ResultStore

    out = tmp_path / "x.onnx"
    with ResultStore(calibrated) as store:
        before = len(store.profiles(provider="CPUExecutionProvider",
                                    options={"threads": 1, "precision": "fp32"}, batch=1,
                                    fingerprint=_fingerprint()))
    result = CliRunner().invoke(main, ["scale", "zoo:regnetx-400mf", "--strategy", "dWr",
                                       "--latency", "1.5x", "--latency-tolerance", "10%",
                                       "--threads", "1", "--db", calibrated, "-o", str(out),
                                       "--json"])
    assert result.exit_code == 0, result.output
    found = json.loads(result.output)["latency"]
    assert abs(found["measured_ms"] / found["budget_ms"] - 1) <= 0.10
    assert found["budget_ms"] == pytest.approx(1.5 * found["base_ms"])
    assert 1.0 < found["flops_factor"] < 4.0
    assert found["measurements"] and found["predicted_ms"] > 0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1] == 3
    with ResultStore(calibrated) as store:
        after = len(store.profiles(provider="CPUExecutionProvider",
                                   options={"threads": 1, "precision": "fp32"}, batch=1,
                                   fingerprint=_fingerprint()))
    assert after >= before + len(found["measurements"])


def _fingerprint() -> str:
    from onnxscale.runtime import fingerprint

    return fingerprint.collect()["id"]


@pytest.mark.slow
def test_profile_and_predict_in_python(calibrated):
    """The library under the CLI: a Profile dataclass, then a Prediction with to_dict()."""
    import onnxscale

    found = onnxscale.profile("zoo:regnety-800mf", "cpu", threads=1, runs=3, db=calibrated)
    assert found.p50_ms > 0 and any(layer.kind == "conv-group" for layer in found.layers)
    predicted = onnxscale.predict("zoo:regnety-800mf", "cpu", threads=1, db=calibrated)
    assert isinstance(predicted, onnxscale.Prediction)
    assert predicted.models >= 5 and predicted.to_dict()["predicted_ms"] > 0
    # the model is now in the store, so its own measurement is among what was fitted
    assert 0.5 < predicted.predicted_ms / found.p50_ms < 2.0


@pytest.mark.slow
def test_sweep_latency_compares_strategies_at_one_measured_runtime(calibrated, tmp_path):
    """sweep --latency scales each strategy to the budget by measurement and stores the
    cells; the report compares what they reached at that runtime; a rerun skips them."""
    args = ["sweep", "zoo:regnetx-400mf", "--strategy", "w,dWr", "--latency", "1.4x",
            "--latency-tolerance", "10%", "--threads", "1", "--db", calibrated, "--json"]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    done = json.loads(first.output)
    assert done["done"] + done["failed"] == 2
    cells = [c for c in done["cells"] if c["status"] == "ok"]
    assert cells, done["cells"]
    for cell in cells:
        assert cell["latency_budget"] == "1.4x"
        assert abs(cell["p50_ms"] / cell["latency_budget_ms"] - 1) <= 0.10
        assert cell["flops"] > 0 and cell["factor"] > 1
    again = json.loads(CliRunner().invoke(main, args).output)
    assert again["skipped"] == len(cells) and again["done"] == 0
    if len(cells) == 2:
        reported = CliRunner().invoke(main, ["report", "--db", calibrated, "-o",
                                             str(tmp_path / "r"), "--json"])
        assert reported.exit_code == 0, reported.output
        summary = json.loads((tmp_path / "r" / "summary.json").read_text())
        budgets = summary["at_budgets"]
        assert budgets and budgets[0]["budget"] == "1.4x"
        assert set(budgets[0]["by_strategy"]) == {"w", "dWr"}


@pytest.mark.parametrize("args", [
    ["--latency", "10ms", "--flops", "1x,2x"], ["--latency", "0ms"],
    ["--latency", "10ms", "--ray"], ["--latency", "10ms", "--rounds", "2"],
    ["--latency", "10ms", "--provider", "cpu,armnn"], ["--latency", "10ms", "--alpha", "0.5"],
])
def test_sweep_latency_bad_input_is_one_line_and_exit_2(tmp_path, args):
    db = tmp_path / "r.db"
    result = CliRunner().invoke(main, ["sweep", "zoo:resnet-18", "--strategy", "dWr", *args,
                                       "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not db.exists()


def test_validate_predictor_holds_out_each_model_and_its_family():
    """scripts/validate_predictor.py's protocol on synthetic profiles: a held-out model is
    never in its own training set (nor its scaled variants, nor with --family its family);
    the truth is the rounds' p50 and 'remeasured' the profile's own."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "validate_predictor.py"
    spec = importlib.util.spec_from_file_location("validate_predictor", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    assert script.base_of("zoo:regnety-400mf.d2x") == "zoo:regnety-400mf"
    assert script.family_of("zoo:resnet-50", {}) == "resnet"
    assert script.family_of("torchvision:resnet50", dict(script.VALIDATION)) == "resnet"
    assert len(script.VALIDATION) >= 20

    profiles = _synthetic_models(8, seed=3)
    names = ["torchvision:resnet18", "torchvision:resnet50", "timm:dla34", "zoo:resnet-18",
             "zoo:resnet-18.d2x", "zoo:efficientnet-b0", "timm:ghostnet_100", "zoo:regnetx-400mf"]
    samples = []
    for profile, name in zip(profiles, names):
        sample = P.sample_from_profile(profile | {"model": name})
        sample.group = script.family_of(script.base_of(name), dict(script.VALIDATION))
        sample.validation = name in dict(script.VALIDATION)
        samples.append(sample)
    truth = {s.model: s.p50_ms * 1.1 for s in samples}
    seen = []
    original = P.fit

    def spy(train):
        seen.append([s.model for s in train])
        return original(train)

    P.fit = spy
    try:
        by_model = script.held_out(samples, lambda held, s: script.base_of(s.model)
                                   == script.base_of(held.model), truth)
        by_family = script.held_out(samples, lambda held, s: s.group == held.group, truth)
    finally:
        P.fit = original
    assert [e["model"] for e in by_model] == ["torchvision:resnet18", "torchvision:resnet50",
                                               "timm:dla34", "timm:ghostnet_100"]
    for entry, train in zip(by_model + by_family, seen):
        assert entry["model"] not in train
    family_train = dict(zip([e["model"] for e in by_family], seen[len(by_model):]))
    assert not any("resnet" in name for name in family_train["torchvision:resnet50"])
    assert "zoo:resnet-18" in seen[1]           # model-out keeps the zoo ResNet
    for entry in by_model:
        assert entry["measured"] == pytest.approx(truth[entry["model"]])
        assert entry["remeasured"] == pytest.approx(truth[entry["model"]] / 1.1)
    # the synthetic layer times are exact: every held-out model is predicted within 10% of
    # the profile's p50, i.e. the truth's 1.1 factor shows as +-0.1 at most
    assert script.summary(by_model)["layers"]["within_10"] == 1.0


@pytest.mark.slow
def test_predict_takes_input_shapes_for_symbolic_dims(calibrated, tmp_path):
    """A model with symbolic height and width: predict says to fix them; at 160x160 it
    predicts less than at the native 224x224."""
    from onnxscale.model import load_model

    proto = load_model("zoo:regnetx-400mf").proto
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path / "dynamic.onnx"
    onnx.save(proto, str(path))
    name = proto.graph.input[0].name
    base = ["predict", str(path), "--threads", "1", "--db", calibrated, "--json"]
    refused = CliRunner().invoke(main, base)
    assert refused.exit_code != 0 and "--input-shape" in refused.output
    small = CliRunner().invoke(main, base + ["--input-shape", f"{name}:1x3x160x160"])
    large = CliRunner().invoke(main, base + ["--input-shape", f"{name}:1x3x224x224"])
    assert small.exit_code == 0 and large.exit_code == 0, small.output + large.output
    assert json.loads(small.output)["predicted_ms"] < json.loads(large.output)["predicted_ms"]
