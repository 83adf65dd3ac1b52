"""Property test: random small CNNs mixing every coupling rule (residual adds, concats, splits,
slices, SE gates, depthwise and grouped convs, channel shuffles, channels-last sections, flatten
heads) widen into valid models that run, and compute the base's outputs when they say so."""

from __future__ import annotations

import numpy as np
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnxscale.errors import OnnxscaleError
from onnxscale.graph import Graph
from onnxscale.scaling.width.rules import find_groups
from onnxscale.scaling.pipeline import ScaleOptions, random_inputs
from onnxscale.scaling.width.widen import scale_width

from .conftest import ort_run
from .test_groups import Net

STEPS = ["conv", "residual", "concat", "split", "slice", "se", "depthwise", "grouped",
         "channels_last", "shuffle"]


def add_step(net: Net, x: str, step: str, rng: np.random.Generator) -> str:
    """Apply one building block to ``x`` (its width is ``net.shape[x][1]``)."""
    c = net.shape[x][1]
    pick = lambda *options: int(rng.choice(options))  # noqa: E731
    if step == "conv":
        y = net.conv(x, pick(4, 6, 8, 12), k=pick(1, 3))
        return net.act(net.bn(y)) if rng.random() < 0.5 else y
    if step == "residual":
        return net.binary("Add", x, net.conv(net.act(net.conv(x, pick(4, 8))), c, k=3))
    if step == "concat":
        return net.concat([net.conv(x, pick(2, 4, 6)), net.act(net.conv(x, pick(2, 4)))])
    if step == "split" and c > 1:
        first = pick(*range(1, c))
        left, right = net.split(x, [first, c - first])
        return net.concat([net.conv(left, pick(2, 4)), net.act(right)])
    if step == "slice" and c > 2:
        start = pick(*range(0, c - 1))
        return net.slice(x, start, pick(*range(start + 1, c + 1)))
    if step == "se":
        return net.se(x, pick(1, 2, 3))
    if step == "depthwise":
        return net.bn(net.conv(x, c, k=3, group=c))
    if step == "grouped":
        groups = [g for g in range(2, c + 1) if c % g == 0]
        if groups:
            group = pick(*groups)
            return net.act(net.conv(x, group * pick(1, 2), k=3, group=group))
    if step == "channels_last":
        t = net.layernorm(net.transpose(x, [0, 2, 3, 1]))
        t = net.linear(net.act(net.linear(t, 2 * c)), c)
        return net.binary("Add", x, net.transpose(t, [0, 3, 1, 2]))
    if step == "shuffle" and c % 2 == 0:
        return net.shuffle(x, 2)
    return net.act(x, "Sigmoid")


@st.composite
def networks(draw):
    steps = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=6))
    seed = draw(st.integers(0, 2**16))
    flatten_head = draw(st.booleans())
    rng = np.random.default_rng(seed)
    net = Net(size=4, seed=seed)
    x = net.conv(net.x, int(rng.choice([4, 6, 8])), k=3)
    for step in steps:
        x = add_step(net, x, step, rng)
    pooled = x if flatten_head else net.gap(x)
    return net.model(net.gemm(net.flatten(pooled), 5)), steps


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-12))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(networks(), st.sampled_from([2.0, 3.0, 1.5, 0.5]), st.sampled_from([1.0, 2.0]),
       st.sampled_from([1, 8]))
def test_random_networks_widen_validly_and_exactly(case, w, g, divisor):
    base, steps = case
    graph = Graph(base)
    found = find_groups(graph)
    for name, layout in found.layouts.items():  # layouts account for every channel
        assert found.atoms.size(layout.pieces) == graph.shapes[name][layout.axis], name
    try:
        edit = scale_width(base, graph, w, g, ScaleOptions(divisor=divisor))
    except OnnxscaleError as exc:  # everything pinned, or rounded back to its own width
        assert str(exc).startswith("nothing to widen") or \
            "leaves every channel group as it is" in str(exc)
        return
    onnx.checker.check_model(edit.model, full_check=True)
    feeds = random_inputs(graph)
    (expected,), (got,) = ort_run(base, feeds), ort_run(edit.model, feeds)
    assert got.shape == expected.shape
    if edit.exact:
        assert relative(expected, got) <= 1e-4, (steps, edit.notes)
    fixed = [g for g in found.groups() if not g.scalable]
    if divisor == 1 and w == int(w) and g == 1 and "shuffle" not in steps and len(fixed) == 2:
        # every group but the input and the logits grows by the same integer factor
        assert edit.exact, (steps, edit.notes)
