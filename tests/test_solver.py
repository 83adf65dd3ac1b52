"""Reaching a flops target with a strategy (the main job): plans before weights, every target
met within the tolerance or refused with the reason, presets, grids, bad input."""

from __future__ import annotations

import json
import math
import tracemalloc

import onnx
import pytest

from onnxscale import zoo
from onnxscale.complexity import analyze
from onnxscale.graph import Graph
from onnxscale.scaling.pipeline import Planner, apply_plan
from onnxscale.scaling.plan import Multipliers, ScaleOptions
from onnxscale.scaling.solver import TOLERANCE, Unreachable, solve
from onnxscale.scaling.strategy import parse_strategy, preset_multipliers

from .conftest import run_cli

STRATEGIES = ("d", "w", "r", "dw", "dwr", "dWr")
RANDOM = ScaleOptions(init="random")


@pytest.fixture(scope="module")
def planners():
    cache = {}

    def get(name: str) -> Planner:
        if name not in cache:
            cache[name] = Planner(zoo.build(name), {})
        return cache[name]
    return get


def figures(report) -> tuple[int, int, int]:
    return report.flops, report.params, report.acts


@pytest.mark.parametrize("model", ["efficientnet-b0", "regnety-400mf", "resnet-50"])
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.slow
def test_every_strategy_hits_the_target_or_says_why(planners, model, strategy):
    """6 strategies x {0.5, 2, 4, 16}: within 1.5% of the target, or refused naming numbers;
    a strategy's unnamed dimensions stay at 1 (width never sneaks into a pure d strategy)."""
    planner, weights = planners(model), parse_strategy(strategy)
    reached = 0
    for ratio in (0.5, 2, 4, 16):
        try:
            solution = solve(None, {}, weights, "ratio", ratio, RANDOM, planner=planner,
                             name=strategy)
        except Unreachable as exc:
            assert "cannot reach" in str(exc) and "flops" in str(exc)
            continue
        reached += 1
        achieved = solution.plan.scaled.flops / planner.base.flops
        assert abs(achieved / ratio - 1) <= TOLERANCE, (ratio, achieved)
        for key, value in solution.multipliers.as_dict().items():
            if weights[key] == 0 and key != "g":
                assert value == 1, (key, value)
    # a refusal is the exception, not the rule; pure depth moves in whole blocks (ResNet-50
    # at x2: the nearest plans are -1.9% and +3.4%) and is refused more often
    assert reached >= (2 if strategy == "d" else 3)


@pytest.mark.slow
def test_refusals_explain_the_limit(planners):
    planner = planners("resnet-50")
    with pytest.raises(Unreachable, match=r"smallest model it makes here has"):
        solve(None, {}, parse_strategy("w"), "ratio", 1e-4, RANDOM, planner=planner, name="w")
    with pytest.raises(Unreachable, match=r"largest model it makes here has .*--max-size"):
        solve(None, {}, parse_strategy("dWr"), "ratio", 1e6, RANDOM, planner=planner,
              name="dWr")
    with pytest.raises(Unreachable, match=r"within 1\.5%: rounding makes the nearest"):
        # pure depth on ResNet-50 (3-4-6-3 blocks): whole blocks cannot land on x1.3
        solve(None, {}, parse_strategy("d"), "ratio", 1.3, RANDOM, planner=planner, name="d")
    # a larger tolerance accepts the nearest step
    loose = solve(None, {}, parse_strategy("d"), "ratio", 1.3, RANDOM, planner=planner,
                  name="d", tolerance=0.03)
    assert loose.multipliers.w == 1


@pytest.mark.parametrize("model", zoo.names())
@pytest.mark.slow
def test_plan_equals_the_written_model(model, tmp_path):
    """Every zoo model, every strategy at 2x: the plan's flops/params/acts (computed on a
    hollow model) equal the analysis of the model written with weights, read back from disk
    for one strategy."""
    from onnxscale.model import save_model

    base = zoo.build(model)
    planner = Planner(base, {})
    for index, strategy in enumerate(STRATEGIES):
        try:
            plan = solve(None, {}, parse_strategy(strategy), "ratio", 2, RANDOM,
                         planner=planner, name=strategy).plan
        except Unreachable:
            continue
        outcome = apply_plan(base, {}, plan)
        written = outcome.model
        if index == 0:
            path = save_model(written, tmp_path / "scaled.onnx")
            written = onnx.load(str(path))
        report = analyze(Graph(written, plan.inputs))
        assert figures(report) == figures(plan.scaled), (model, strategy)


@pytest.mark.parametrize("name,exporter", [("resnet18", "legacy"), ("efficientnet_b0", "dynamo"),
                                           ("timm.regnety_008", "legacy"),
                                           ("mobilenet_v3_small", "dynamo")])
@pytest.mark.slow
def test_exports_hit_targets_and_plans_match(exports, name, exporter):
    """Third-party exports: every strategy at 2x and 4x within the tolerance (or refused),
    and the written model's analysis equals its plan."""
    base = onnx.load(str(exports(name, exporter)))
    planner = Planner(base, {})
    reached = 0
    for strategy in STRATEGIES:
        for ratio in (2, 4):
            try:
                solution = solve(None, {}, parse_strategy(strategy), "ratio", ratio, RANDOM,
                                 planner=planner, name=strategy)
            except Unreachable:
                continue
            reached += 1
            assert abs(solution.error) <= TOLERANCE
            if ratio == 2:
                outcome = apply_plan(base, {}, solution.plan)
                assert figures(analyze(Graph(outcome.model, solution.plan.inputs))) == \
                    figures(solution.plan.scaled)
    assert reached >= 9


def test_planning_writes_no_weights(planners):
    """A plan of ResNet-50 x16 (width 4: 400 M params, 1.6 GB of weights) allocates a few MB:
    the weights are hollow."""
    planner = planners("resnet-50")
    tracemalloc.start()
    plan = planner.plan(Multipliers(w=4.0), RANDOM)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert plan.scaled.params > 300e6 and plan.weight_bytes > 1.2e9
    assert peak < 100e6, peak


def test_plans_over_the_size_limit_are_refused(planners):
    planner = planners("resnet-50")
    small = ScaleOptions(init="random", max_bytes=200 * 10**6)
    with pytest.raises(Exception, match=r"would need .* of weights .*--max-size"):
        planner.plan(Multipliers(w=2.0), small)
    with pytest.raises(Exception, match=r"activations .*--max-size"):
        planner.plan(Multipliers(r=30.0), ScaleOptions(init="random", max_bytes=10**9))


def test_no_search_is_pycls_rounding(planners):
    """One plan at s = target, as pycls: EfficientNet-B0 x16 with dWr lands ~11% short."""
    planner = planners("efficientnet-b0")
    once = solve(None, {}, parse_strategy("dWr"), "ratio", 16, RANDOM, search=False,
                 planner=planner)
    assert len(once.evaluations) == 1
    assert once.plan.scaled.flops / (16 * planner.base.flops) == pytest.approx(0.89, abs=0.01)


@pytest.mark.parametrize("preset", ["b1", "b2", "b3"])
def test_presets_equal_the_zoo_models(planners, preset):
    """EfficientNet's own coefficients and rounding on B0 give exactly pycls's EN-B1..B3."""
    options = ScaleOptions(init="random", rounding="efficientnet")
    plan = planners("efficientnet-b0").plan(Multipliers(**preset_multipliers(preset)), options)
    reference = analyze(Graph(zoo.build(f"efficientnet-{preset}"), {}))
    assert figures(plan.scaled) == figures(reference)
    assert plan.inputs == reference.inputs


def test_preset_command_writes_b2(tmp_path):
    out = tmp_path / "b2.onnx"
    result = json.loads(run_cli("scale", "zoo:efficientnet-b0", "--preset", "efficientnet-b2",
                                "--init", "random", "-o", str(out), "--json",
                                check=True).stdout)
    reference = analyze(Graph(zoo.build("efficientnet-b2"), {}))
    assert (result["scaled"]["flops"], result["scaled"]["params"]) == \
        (reference.flops, reference.params)
    assert result["preset"] == "efficientnet-b2" and out.exists()


def test_cli_strategy_json(tmp_path):
    out = tmp_path / "b0x2.onnx"
    result = json.loads(run_cli("scale", "zoo:efficientnet-b0", "--strategy", "dWr", "--flops",
                                "2x", "-o", str(out), "--json", check=True).stdout)
    assert result["output"] == str(out) and out.exists()
    assert result["scaled"]["flops"] == pytest.approx(2 * result["base"]["flops"], rel=0.015)
    strategy = result["strategy"]
    assert strategy["name"] == "dWr" and abs(strategy["error"]) < 0.015
    assert strategy["evaluations"] and result["multipliers"]["w"] > result["multipliers"]["d"] > 1
    absolute = json.loads(run_cli("scale", "zoo:regnety-400mf", "--alpha", "1", "--flops",
                                  "800M", "-o", str(tmp_path / "y.onnx"), "--json",
                                  check=True).stdout)
    assert absolute["scaled"]["flops"] == pytest.approx(800e6, rel=0.015)
    assert absolute["multipliers"]["d"] == 1 and absolute["multipliers"]["r"] == 1


@pytest.mark.slow
def test_grid_writes_every_combination(tmp_path):
    folder = tmp_path / "grid"
    results = json.loads(run_cli("scale", "zoo:resnet-18", "--strategy", "w,dWr", "--flops",
                                 "2x,3x", "--init", "random", "-o", str(folder), "--json",
                                 check=True).stdout)
    assert isinstance(results, list) and len(results) == 4
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["resnet-18.dWr.2x.onnx", "resnet-18.dWr.3x.onnx", "resnet-18.w.2x.onnx",
                     "resnet-18.w.3x.onnx"]
    for result in results:
        ratio = float(result["strategy"]["flops"].rstrip("x"))
        assert result["scaled"]["flops"] / result["base"]["flops"] == \
            pytest.approx(ratio, rel=0.015)
    table = run_cli("scale", "zoo:resnet-18", "--strategy", "w,dWr", "--flops", "2x",
                    "--init", "random", "-o", str(tmp_path / "t"), check=True).stdout
    assert "2 models written" in table and "dWr" in table


@pytest.mark.parametrize("args,message", [
    (["--strategy", "dWr"], "--flops"),
    (["--flops", "2x"], "--strategy"),
    (["--strategy", "dWr", "--flops", "2x", "--width", "2"], "not both"),
    (["--strategy", "dWr", "--alpha", "0.8", "--flops", "2x"], "not both"),
    (["--strategy", "dqr", "--flops", "2x"], "unknown strategy"),
    (["--strategy", "dWr", "--flops", "lots"], "--flops"),
    (["--alpha", "1.5", "--flops", "2x"], "alpha"),
    (["--strategy", "w", "--flops", "0.00001x"], "smallest model"),
    (["--strategy", "dWr", "--flops", "1e30"], "largest model"),
    (["--strategy", "w", "--flops", "2x,2x"], "repeated"),
    (["--strategy", "w", "--flops", "2x", "--tolerance", "200%"], "--tolerance"),
    (["--width", "nan"], "finite positive"),
    (["--width", "inf"], "finite positive"),
    (["--depth", "-2"], "finite positive"),
    (["--resolution", "0"], "finite positive"),
    (["--depth", "1e9"], "--max-size"),
    (["--width", "1e6"], "--max-size"),
    (["--resolution", "1e5"], "--max-size"),
    (["--width", "2", "--max-size", "10M"], "--max-size"),
    (["--width", "2", "--max-size", "lots"], "--max-size"),
    (["--preset", "efficientnet-b2", "--flops", "2x"], "--preset"),
    (["--preset", "efficientnet-b2", "--width", "2"], "--preset"),
    (["--preset", "efficientnet-b9"], "unknown preset"),
])
def test_usage_errors_write_nothing(tmp_path, args, message):
    result = run_cli("scale", "zoo:resnet-18", *args, "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_grid_with_an_unreachable_cell_writes_nothing(tmp_path):
    folder = tmp_path / "grid"
    result = run_cli("scale", "zoo:resnet-18", "--strategy", "w,d", "--flops", "2x,0.0001x",
                     "-o", str(folder))
    assert result.returncode == 2 and "nothing written" in result.stderr
    assert not folder.exists()


def test_multipliers_validate():
    for bad in (math.nan, math.inf, -1.0, 0.0):
        with pytest.raises(Exception, match="finite positive"):
            Multipliers(w=bad).validate()


def test_strategies_adapt_when_a_dimension_cannot_scale(exports, tmp_path):
    """A two-layer network has no repeatable block (a stem and a head): dWr scales w and r
    in dWr's proportions, says so, and --strict refuses instead."""
    base = _two_layer_net()
    path = tmp_path / "two_layers.onnx"
    onnx.save(base, str(path))
    planner = Planner(base, {})
    solution = solve(None, {}, parse_strategy("dWr"), "ratio", 2, RANDOM, planner=planner,
                     name="dWr")
    assert "d" in solution.unavailable and "repeatable" in solution.unavailable["d"]
    m = solution.multipliers
    assert m.d == 1 and m.w > 1 and abs(solution.error) <= TOLERANCE
    # width leads (w = s^(8/18), r = s^(1/18)); the refinements then move w and r in steps
    assert m.w > max(1.0, m.r)
    out = tmp_path / "g.onnx"
    result = json.loads(run_cli("scale", str(path), "--strategy", "dWr", "--flops", "2x",
                                "--init", "random", "-o", str(out), "--json",
                                check=True).stdout)
    assert "d" in result["strategy"]["unavailable"]
    assert any("cannot be scaled" in note for note in result["notes"])
    strict = run_cli("scale", str(path), "--strategy", "dWr", "--flops", "2x", "--strict",
                     "-o", str(tmp_path / "s.onnx"))
    assert strict.returncode == 2 and "--strict" in strict.stderr
    assert not (tmp_path / "s.onnx").exists()


def _two_layer_net() -> onnx.ModelProto:
    """conv 3->32, conv 32->64 (stride 2), global pool, linear: no stage to deepen."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": (32, 3, 3, 3), "w2": (64, 32, 3, 3), "fc": (10, 64)}
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in weights.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "two_layers",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                             [1, 3, 64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.slow
def test_wide_groups_close_the_last_gap_with_the_group_width_held(exports, tmp_path):
    """timm's RegNetV-040 (group width 64): w and g moving together jump a whole group per
    stage, so dWr 2x was refused at -3.0% / +2.8%; holding g and moving w alone lands."""
    from .conftest import scale_and_run_cli

    source = exports("timm.regnetv_040", "legacy", 224)
    summary = scale_and_run_cli(source, tmp_path / "rv.onnx", "--strategy", "dWr", "--flops",
                                "2x")
    assert abs(summary["scaled"]["flops"] / summary["base"]["flops"] / 2 - 1) <= 0.015
    assert any(row.get("refine") == "group width" for row in summary["strategy"]["evaluations"])
