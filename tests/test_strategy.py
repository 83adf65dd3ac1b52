"""Strategy math (docs/concepts.md, Strategies): strategy strings, alpha, multipliers, flops targets."""

from __future__ import annotations

import math

import pytest

from onnxscale import zoo
from onnxscale.complexity import analyze
from onnxscale.graph import Graph
from onnxscale.scaling.strategy import (alpha_weights, exponents, multipliers, parse_flops,
                                        parse_strategy)

# docs/concepts.md (Strategies): strategy -> exponents of (d, w, r, params, acts) in s
TABLE = {
    "d": (1, 0, 0, 1, 1),
    "w": (0, 1 / 2, 0, 1, 1 / 2),
    "r": (0, 0, 1 / 2, 0, 1),
    "dw": (1 / 2, 1 / 4, 0, 1, 3 / 4),
    "dwr": (1 / 3, 1 / 6, 1 / 6, 2 / 3, 5 / 6),
    "dWr": (0.1, 0.4, 0.05, 0.9, 0.6),
}


@pytest.mark.parametrize("name", list(TABLE))
def test_design_table(name):
    e = exponents(parse_strategy(name))
    assert [e[k] for k in ("d", "w", "r", "params", "acts")] == pytest.approx(TABLE[name])
    m = multipliers(parse_strategy(name), 16)
    assert m["d"] * m["w"] ** 2 * m["r"] ** 2 == pytest.approx(16)


def test_dWr_is_d1_w8_g8_r1_and_alpha_08():
    assert parse_strategy("dWr") == parse_strategy("d1_w8_g8_r1")
    assert multipliers(parse_strategy("dWr"), 4) == pytest.approx(multipliers(alpha_weights(0.8), 4))
    assert exponents(alpha_weights(1 / 3)) == pytest.approx(exponents(parse_strategy("dwr")))
    assert exponents(alpha_weights(0.8))["acts"] == pytest.approx(1 - 0.8 / 2)
    # g is scaled only when named
    assert multipliers(parse_strategy("dwr"), 4)["g"] == 1
    assert multipliers(parse_strategy("dWr"), 4)["g"] == pytest.approx(4 ** 0.4)


@pytest.mark.parametrize("bad", ["", "x", "dd", "d1_d2", "w-1", "g", "d1_w"])
def test_bad_strategies(bad):
    with pytest.raises(ValueError):
        parse_strategy(bad)


@pytest.mark.parametrize("text,expected", [
    ("2x", ("ratio", 2.0)), ("x0.5", ("ratio", 0.5)), ("4G", ("absolute", 4e9)),
    ("800M", ("absolute", 8e8)), ("1.5GF", ("absolute", 1.5e9)), ("4e9", ("absolute", 4e9)),
    ("385825092", ("absolute", 385825092.0))])
def test_parse_flops(text, expected):
    assert parse_flops(text) == expected


@pytest.mark.parametrize("bad", ["", "abc", "0x", "2y", "-1G"])
def test_bad_flops(bad):
    with pytest.raises(ValueError):
        parse_flops(bad)


def test_pycls_misses_the_target_that_we_hit():
    """docs/concepts.md (Strategies): EfficientNet-B0 x16 with dWr, pycls's rounding reaches 5.48 GF, not 6.17."""
    m = multipliers(parse_strategy("dWr"), 16)
    spec = zoo.spec("efficientnet-b0").scaled(**m)
    flops = analyze(Graph(zoo.build_spec(spec))).flops
    assert flops == pytest.approx(5.48e9, rel=2e-3)
    assert math.isclose(16 * 385.8e6, 6.17e9, rel_tol=1e-3)
