"""Stage and block discovery (issue 4): small graphs built with onnx.helper, the zoo, real
exports (torchvision, timm, PaddleOCR) and the `onnxscale blocks` command."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxscale import zoo
from onnxscale.graph import Graph
from onnxscale.scaling.depth.blocks import find_blocks

from .conftest import run_cli


class Net:
    """A tiny NCHW graph builder: convs with random weights, elementwise ops, residual adds."""

    def __init__(self, channels: int = 8, res: int = 16):
        self.rng = np.random.default_rng(0)
        self.nodes, self.weights, self.count = [], [], 0
        self.input = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, res, res])

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def weight(self, array: np.ndarray) -> str:
        name = self._name("w")
        self.weights.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def ints(self, values: list[int]) -> str:
        name = self._name("i")
        self.weights.append(numpy_helper.from_array(np.array(values, np.int64), name))
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1,
             group: int = 1) -> str:
        w = self.weight(self.rng.standard_normal((c_out, c_in // group, k, k)) * 0.1)
        b = self.weight(self.rng.standard_normal(c_out) * 0.1)
        p = (k - 1) // 2
        return self.op("Conv", [x, w, b], pads=[p] * 4, strides=[stride] * 2, group=group)

    def residual(self, x: str, c: int) -> str:
        f = self.op("Relu", [self.conv(x, c, c)])
        return self.op("Relu", [self.op("Add", [x, self.conv(f, c, c)])])

    def model(self, out: str, classes: int | None = 10, c: int = 8) -> onnx.ModelProto:
        if classes:
            pooled = self.op("GlobalAveragePool", [out])
            flat = self.op("Flatten", [pooled])
            w = self.weight(self.rng.standard_normal((classes, c)) * 0.1)
            out = self.op("Gemm", [flat, w], transB=1)
        graph = helper.make_graph(self.nodes, "net", [self.input],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                                  self.weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                 ir_version=8)


def kinds(found) -> list[list[str]]:
    return [[block.kind for block in stage.blocks] for stage in found.stages]


def test_residual_network_stages_and_transitions():
    net = Net()
    x = net.op("Relu", [net.conv("x", 3, 8, stride=2)])
    for _ in range(3):
        x = net.residual(x, 8)
    x = net.op("Relu", [net.conv(net.op("Relu", [net.conv(x, 8, 16, stride=2)]), 16, 16)])
    x = net.residual(x, 16)
    found = find_blocks(Graph(net.model(x, c=16)))
    assert kinds(found) == [["residual"] * 3, ["residual"]]
    first = found.stages[0].blocks[0]
    assert first.post_ops == ["Relu"] and first.identity_copy
    assert [p.kind for p in found.pieces][0] == "stem"
    assert found.pieces[-1].kind == "head"


def test_gated_skip_is_residual_with_a_gain():
    """``x * g + f(x)``: a copy resets the gain to 1 so it starts as the identity."""
    net = Net()
    x = net.op("Relu", [net.conv("x", 3, 8)])
    gained = net.op("Mul", [x, net.weight(np.full((1, 8, 1, 1), 0.5))])
    y = net.op("Add", [gained, net.conv(net.op("Relu", [net.conv(x, 8, 8)]), 8, 8)])
    found = find_blocks(Graph(net.model(y)))
    block = found.stages[0].blocks[0]
    assert block.kind == "residual" and len(block.gains) == 1


def test_plain_network_blocks_are_its_repeating_period():
    """No skips (PP-LCNet, VGG): blocks are the period of the layer kinds (dw, pw)."""
    net = Net()
    x = net.op("Relu", [net.conv("x", 3, 8, stride=2)])
    for c_in, c_out, stride in ((8, 16, 2), (16, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1)):
        x = net.op("Relu", [net.conv(x, c_in, c_in, stride=stride, group=c_in)])
        x = net.op("Relu", [net.conv(x, c_in, c_out, k=1)])
    found = find_blocks(Graph(net.model(x, c=32)))
    assert kinds(found) == [["chain", "plain", "plain"], ["chain", "plain"]]
    assert all(stage.mode == "clone" for stage in found.stages)


def test_spine_follows_the_backbone_past_an_fpn_tap():
    """A detector tapping its backbone: global cuts stop at the first tap, the spine does not."""
    net = Net(res=32)
    c2 = net.residual(net.op("Relu", [net.conv("x", 3, 8, stride=2)]), 8)
    c3 = net.op("Relu", [net.conv(c2, 8, 8, stride=2)])
    c3 = net.residual(net.residual(c3, 8), 8)
    up = net.op("Resize", [c3, "", net.weight(np.array([1, 1, 2, 2]))], mode="nearest")
    c2 = net.op("Relu", [net.conv(c2, 8, 8)])
    out = net.op("Add", [up, c2])
    found = find_blocks(Graph(net.model(out, classes=None)))
    assert kinds(found) == [["residual"], ["residual", "residual"]]


def test_shape_arithmetic_does_not_break_blocks():
    """``Shape`` edges carry no data: a flatten sized from the input keeps every cut."""
    net = Net()
    x = net.op("Relu", [net.conv("x", 3, 8)])
    for _ in range(2):
        x = net.residual(x, 8)
    batch = net.op("Slice", [net.op("Shape", ["x"]), net.ints([0]), net.ints([1])])
    target = net.op("Concat", [batch, net.ints([-1])], axis=0)
    flat = net.op("Reshape", [net.op("GlobalAveragePool", [x]), target])
    found = find_blocks(Graph(net.model(flat, classes=None)))
    assert kinds(found) == [["residual", "residual"]]


@pytest.mark.parametrize("name, depths, modes", [
    ("efficientnet-b0", [1, 2, 2, 3, 3, 4, 1], ["instantiate"] + ["clone"] * 5 + ["instantiate"]),
    ("regnety-400mf", [1, 3, 6, 6], ["instantiate"] + ["clone"] * 3),
    ("resnet-50", [3, 4, 6, 3], ["clone"] * 4),
])
def test_zoo_stage_depths_match_their_specs(name, depths, modes):
    found = find_blocks(Graph(zoo.build(name)))
    assert [len(stage.blocks) for stage in found.stages] == depths == list(zoo.spec(name).depths)
    assert [stage.mode for stage in found.stages] == modes


@pytest.mark.parametrize("name, exporter, depths", [
    ("resnet18", "legacy", [2, 2, 2, 2]),
    ("resnet18", "dynamo", [2, 2, 2, 2]),
    ("efficientnet_b0", "legacy", [1, 2, 2, 3, 3, 4, 1]),
    ("efficientnet_b0", "dynamo", [1, 2, 2, 3, 3, 4, 1]),
    ("mobilenet_v3_small", "legacy", [1, 2, 3, 2, 3]),
    ("convnext_tiny", "legacy", [3, 3, 9, 3]),
    ("regnet_y_400mf", "legacy", [1, 3, 6, 6]),
    ("timm.ghostnet_100", "legacy", [1, 2, 2, 4, 2, 5]),
])
@pytest.mark.slow
def test_exported_stage_depths(exports, name, exporter, depths):
    found = find_blocks(Graph(onnx.load(exports(name, exporter, res=96))))
    assert [len(stage.blocks) for stage in found.stages] == depths
    assert all(stage.mode for stage in found.stages)


def test_paddleocr_detector_backbone_is_found(paddleocr_models):
    """PP-LCNetV3 has no skips: its stages are runs of plain (dw, pw) blocks."""
    graph = Graph(onnx.load(paddleocr_models["det"]), {"": [1, 3, 128, 128]})
    found = find_blocks(graph)
    backbone = [stage for stage in found.stages if stage.repeats and
                stage.repeats[0].kind == "plain"]
    assert [len(stage.blocks) for stage in backbone] == [2, 2, 5, 4]


def test_blocks_cli_json_and_table():
    result = run_cli("blocks", "zoo:resnet-50", "--json", check=True)
    data = json.loads(result.stdout)
    assert [stage["depth"] for stage in data["stages"]] == [3, 4, 6, 3]
    first = data["stages"][0]["blocks"]
    assert first[0]["kind"] == "projection" and not first[0]["repeatable"]
    assert first[1]["kind"] == "residual" and first[1]["repeatable"]
    assert first[1]["identity_copy"] and first[1]["first"] == "s1.b2.f.a"
    assert {p["kind"] for p in data["pieces"]} >= {"stem", "head"}
    table = run_cli("blocks", "zoo:efficientnet-b0", check=True).stdout
    assert "residual" in table and "instance" in table


def test_blocks_cli_reports_user_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    result = run_cli("blocks", str(bad))
    assert result.returncode == 1
    assert result.stderr.startswith("error:") and len(result.stderr.strip().splitlines()) == 1
