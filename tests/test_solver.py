"""Reaching a flops target with a strategy (the main job), against pycls's rounding."""

from __future__ import annotations

import json

import pytest

from onnxscale import zoo
from onnxscale.scaling.pipeline import ScaleOptions
from onnxscale.scaling.solver import solve
from onnxscale.scaling.strategy import parse_strategy

from .conftest import run_cli


@pytest.mark.parametrize("strategy,ratio", [("dWr", 16), ("dwr", 4), ("d", 3), ("w", 0.5),
                                            ("r", 2), ("dw", 1.5)])
def test_hits_the_target_where_pycls_misses(strategy, ratio):
    base = zoo.build("efficientnet-b0")
    solution = solve(base, {}, parse_strategy(strategy), "ratio", ratio, ScaleOptions(init="random"))
    achieved = solution.outcome.scaled.flops / solution.outcome.base.flops
    assert achieved == pytest.approx(ratio, rel=0.01)
    # the strategy's shape is kept: depth and resolution come from the strategy's path
    for key, value in solution.multipliers.as_dict().items():
        if parse_strategy(strategy)[key] == 0 and key != "g":
            assert value == 1


def test_no_search_is_pycls_rounding():
    """One rewrite at s = target, as pycls: EfficientNet-B0 x16 with dWr lands ~11% short."""
    base = zoo.build("efficientnet-b0")
    once = solve(base, {}, parse_strategy("dWr"), "ratio", 16, ScaleOptions(init="random"),
                 search=False)
    assert len(once.evaluations) == 1
    assert once.outcome.scaled.flops / (16 * once.outcome.base.flops) == pytest.approx(0.89,
                                                                                        abs=0.01)


def test_cli_strategy_json(tmp_path):
    out = tmp_path / "b0x2.onnx"
    result = json.loads(run_cli("scale", "zoo:efficientnet-b0", "--strategy", "dWr", "--flops",
                                "2x", "-o", str(out), "--json", check=True).stdout)
    assert result["output"] == str(out) and out.exists()
    assert result["scaled"]["flops"] == pytest.approx(2 * result["base"]["flops"], rel=0.01)
    strategy = result["strategy"]
    assert strategy["name"] == "dWr" and abs(strategy["error"]) < 0.01
    assert strategy["evaluations"] and result["multipliers"]["w"] > result["multipliers"]["d"] > 1
    absolute = json.loads(run_cli("scale", "zoo:regnety-400mf", "--alpha", "1", "--flops",
                                  "800M", "-o", str(tmp_path / "y.onnx"), "--json",
                                  check=True).stdout)
    assert absolute["scaled"]["flops"] == pytest.approx(800e6, rel=0.01)
    assert absolute["multipliers"]["d"] == 1 and absolute["multipliers"]["r"] == 1


@pytest.mark.parametrize("args,message", [
    (["--strategy", "dWr"], "--flops"),
    (["--flops", "2x"], "--strategy"),
    (["--strategy", "dWr", "--flops", "2x", "--width", "2"], "not both"),
    (["--strategy", "dWr", "--alpha", "0.8", "--flops", "2x"], "not both"),
    (["--strategy", "dqr", "--flops", "2x"], "unknown strategy"),
    (["--strategy", "dWr", "--flops", "lots"], "--flops"),
    (["--alpha", "1.5", "--flops", "2x"], "alpha"),
])
def test_strategy_usage_errors(tmp_path, args, message):
    result = run_cli("scale", "zoo:resnet-18", *args, "-o", str(tmp_path / "x.onnx"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "x.onnx").exists()
