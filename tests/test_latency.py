"""Scaling to a runtime budget: the search against a deterministic fake timer, the budget's
parsing, and the CLI's refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from onnxscale.cli import main
from onnxscale.errors import UsageError
from onnxscale.latency import Measured, parse_budget, search


class FakeTimer:
    """A model family whose runtime is ``base · f^slope`` ms at flops factor f; the predictor
    is off by ``bias`` (so the search must refine by measurement); measurements are counted."""

    def __init__(self, base=10.0, slope=0.8, bias=1.15, step=None):
        self.base, self.slope, self.bias, self.step = base, slope, bias, step
        self.measured: list[float] = []

    def true_ms(self, factor: float) -> float:
        if self.step:  # the strategy's rounding: only some factors make distinct models
            factor = self.step ** round(math.log(factor, self.step))
        return self.base * factor ** self.slope

    def predict(self, factor: float) -> float:
        return self.true_ms(factor) * self.bias

    def measure(self, factor: float) -> Measured:
        self.measured.append(factor)
        return Measured(factor, self.true_ms(factor), self.predict(factor))


@pytest.mark.parametrize("bias", [1.0, 1.15, 0.8, 1.6])
def test_search_lands_within_tolerance_with_few_measurements(bias):
    timer = FakeTimer(bias=bias)
    result = search(25.0, timer.predict, timer.measure, tolerance=0.05, low=1 / 16, high=64)
    assert result.chosen is not None, result.reason
    assert abs(result.chosen.ms / 25.0 - 1) <= 0.05
    assert len(timer.measured) <= 4
    # an exact predictor needs one measurement; a biased one refines
    assert (len(timer.measured) == 1) == (bias == 1.0)


def test_search_brackets_and_interpolates_between_both_sides():
    timer = FakeTimer(bias=1.4)
    result = search(40.0, timer.predict, timer.measure, tolerance=0.01)
    assert result.chosen is not None
    below = [m for m in result.measurements if m.ms < 40.0 * 0.99]
    assert below, "the biased predictor undershoots first"
    assert abs(result.chosen.ms / 40.0 - 1) <= 0.01


def test_search_refuses_below_the_smallest_model_naming_what_it_measured():
    timer = FakeTimer(base=10.0)
    result = search(0.5, timer.predict, timer.measure, low=0.25, high=16)
    assert result.chosen is None
    assert "below the smallest model" in result.reason
    assert timer.measured == [0.25]
    assert f"{timer.true_ms(0.25):.2f} ms at 0.25x" in result.reason


def test_search_refuses_above_the_largest_model():
    timer = FakeTimer(base=10.0)
    result = search(5000.0, timer.predict, timer.measure, low=0.25, high=16)
    assert result.chosen is None
    assert "above the largest model" in result.reason
    assert timer.measured == [16]


def test_search_stops_when_the_rounding_allows_nothing_between_two_models():
    timer = FakeTimer(base=10.0, slope=1.0, bias=1.0, step=2.0)   # 10, 20, 40 ms ...
    result = search(30.0, timer.predict, timer.measure, tolerance=0.05)
    assert result.chosen is None
    assert "no model lands within the tolerance" in result.reason
    assert len(timer.measured) <= 6
    assert "20.00 ms" in result.reason or "40.00 ms" in result.reason


@pytest.mark.parametrize("text, expected", [("25ms", ("absolute", 25.0)),
                                            ("0.5s", ("absolute", 500.0)),
                                            ("2x", ("ratio", 2.0)), (" 1.5X ", ("ratio", 1.5)),
                                            ("800us", ("absolute", 0.8))])
def test_parse_budget(text, expected):
    kind, value = parse_budget(text)
    assert kind == expected[0] and value == pytest.approx(expected[1])


@pytest.mark.parametrize("text", ["0ms", "0x", "-5ms", "nan", "nanms", "25", "inf ms", "fast",
                                  "1e999ms", ""])
def test_parse_budget_refuses(text):
    with pytest.raises(UsageError):
        parse_budget(text)


@pytest.mark.parametrize("args", [
    ["--latency", "0ms"], ["--latency", "-3ms"], ["--latency", "NaN"], ["--latency", "25"],
    ["--latency", "25ms", "--flops", "2x"], ["--latency", "25ms", "--provider", "armnn"],
    ["--latency", "25ms", "--width", "2"], ["--latency", "25ms", "--latency-tolerance", "150%"],
])
def test_scale_latency_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, args):
    out = tmp_path / "out.onnx"
    db = tmp_path / "r.db"
    result = CliRunner().invoke(main, ["scale", "zoo:resnet-18", "--strategy", "dWr", *args,
                                       "-o", str(out), "--db", str(db)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert not out.exists() and not db.exists()


def test_scale_latency_without_stored_profiles_says_what_to_run(tmp_path):
    result = CliRunner().invoke(main, ["scale", "zoo:resnet-18", "--strategy", "dWr",
                                       "--latency", "2x", "--threads", "1",
                                       "-o", str(tmp_path / "o.onnx"),
                                       "--db", str(tmp_path / "r.db")])
    assert result.exit_code != 0
    assert "onnxscale calibrate --provider cpu --threads 1" in result.output
    assert not (tmp_path / "o.onnx").exists()
