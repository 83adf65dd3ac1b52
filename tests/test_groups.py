"""Channel groups found on the ONNX graph: small hand-built graphs (one coupling rule each), the
real exports, and the ``onnxscale groups`` command."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxscale.graph import Graph
from onnxscale.scaling.width.rules import find_groups

from .conftest import run_cli


class Net:
    """A tiny CNN written with onnx.helper: random weights, shapes tracked per tensor."""

    def __init__(self, channels: int = 3, size: int = 6, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shape = {"x": (1, channels, size, size)}
        self.count = 0
        self.x = "x"

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}{self.count}"

    def const(self, array: np.ndarray, base: str = "w") -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        self.shape[name] = tuple(np.shape(array))
        return name

    def op(self, op: str, inputs: list[str], shape, outputs: int = 1, **attrs) -> str:
        names = [self._name(op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, names, name=names[0], **attrs))
        for name, dims in zip(names, shape if outputs > 1 else [shape]):
            self.shape[name] = tuple(dims)
        return names if outputs > 1 else names[0]

    def weights(self, *shape) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) or 1
        return (self.rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)

    # ---- layers ------------------------------------------------------------------------------
    def conv(self, x: str, c_out: int, k: int = 1, group: int = 1) -> str:
        n, c, h, w = self.shape[x]
        weight = self.const(self.weights(c_out, c // group, k, k))
        bias = self.const(self.rng.standard_normal(c_out).astype(np.float32) * 0.1, "b")
        return self.op("Conv", [x, weight, bias], (n, c_out, h, w), kernel_shape=[k, k],
                       pads=[(k - 1) // 2] * 4, group=group)

    def bn(self, x: str) -> str:
        c = self.shape[x][1]
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.normal(0, 0.1, c),
                  self.rng.normal(0, 0.1, c), self.rng.uniform(0.5, 1.5, c)]
        names = [self.const(p.astype(np.float32), "bn") for p in params]
        return self.op("BatchNormalization", [x, *names], self.shape[x])

    def act(self, x: str, op: str = "Relu") -> str:
        return self.op(op, [x], self.shape[x])

    def binary(self, op: str, a: str, b: str) -> str:
        shape = np.broadcast_shapes(self.shape[a], self.shape[b])
        return self.op(op, [a, b], shape)

    def concat(self, xs: list[str], axis: int = 1) -> str:
        shape = list(self.shape[xs[0]])
        shape[axis] = sum(self.shape[x][axis] for x in xs)
        return self.op("Concat", xs, shape, axis=axis)

    def split(self, x: str, sizes: list[int]) -> list[str]:
        shapes = [(self.shape[x][0], s, *self.shape[x][2:]) for s in sizes]
        split = self.const(np.array(sizes, dtype=np.int64), "split")
        return self.op("Split", [x, split], shapes, outputs=len(sizes), axis=1)

    def slice(self, x: str, start: int, end: int) -> str:
        n, _, h, w = self.shape[x]
        ints = [self.const(np.array([v], dtype=np.int64), "s") for v in (start, end, 1)]
        return self.op("Slice", [x, *ints], (n, end - start, h, w))

    def gap(self, x: str) -> str:
        return self.op("GlobalAveragePool", [x], self.shape[x][:2] + (1, 1))

    def flatten(self, x: str) -> str:
        n, *rest = self.shape[x]
        return self.op("Flatten", [x], (n, int(np.prod(rest))), axis=1)

    def gemm(self, x: str, m: int) -> str:
        weight = self.const(self.weights(m, self.shape[x][1]))
        bias = self.const(np.zeros(m, np.float32), "b")
        return self.op("Gemm", [x, weight, bias], (self.shape[x][0], m), transB=1)

    def se(self, x: str, squeeze: int) -> str:
        """Squeeze-Excite: x * sigmoid(conv(relu(conv(pool(x)))))."""
        gate = self.act(self.conv(self.act(self.conv(self.gap(x), squeeze)), self.shape[x][1]),
                        "Sigmoid")
        return self.binary("Mul", x, gate)

    def transpose(self, x: str, perm: list[int]) -> str:
        return self.op("Transpose", [x], tuple(self.shape[x][p] for p in perm), perm=perm)

    def layernorm(self, x: str) -> str:
        c = self.shape[x][-1]
        scale = self.const(self.rng.uniform(0.5, 1.5, c).astype(np.float32), "ln")
        bias = self.const(self.rng.normal(0, 0.1, c).astype(np.float32), "ln")
        return self.op("LayerNormalization", [x, scale, bias], self.shape[x], axis=-1)

    def linear(self, x: str, m: int) -> str:
        """Channels-last linear layer: MatMul with a [K, M] weight, then a bias Add."""
        k = self.shape[x][-1]
        y = self.op("MatMul", [x, self.const(self.weights(m, k).T.copy())],
                    self.shape[x][:-1] + (m,))
        return self.binary("Add", y, self.const(self.rng.normal(0, 0.1, m).astype(np.float32)))

    def shuffle(self, x: str, groups: int) -> str:
        """ShuffleNet's channel shuffle: Reshape, Transpose, Reshape."""
        n, c, h, w = self.shape[x]
        five = self.const(np.array([n, groups, c // groups, h, w], np.int64), "shape")
        y = self.op("Reshape", [x, five], (n, groups, c // groups, h, w))
        y = self.op("Transpose", [y], (n, c // groups, groups, h, w), perm=[0, 2, 1, 3, 4])
        four = self.const(np.array([n, c, h, w], np.int64), "shape")
        return self.op("Reshape", [y, four], (n, c, h, w))

    def model(self, *outputs: str) -> onnx.ModelProto:
        inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape["x"])]
        outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, self.shape[o])
                for o in outputs]
        graph = helper.make_graph(self.nodes, "net", inputs, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def groups_of(net: Net, *outputs: str):
    found = find_groups(Graph(net.model(*outputs)))
    return found, found.groups()


def ids(found, tensor: str) -> list[int]:
    """The group ids of a tensor's channel pieces."""
    number = {group.root: group.id for group in found.groups()}
    return [number[root] for root in found.roots_of(found.layouts[tensor].pieces)]


def head(net: Net, x: str) -> str:
    return net.gemm(net.flatten(net.gap(x)), 5)


# ---- one coupling rule at a time ------------------------------------------------------------------

def test_residual_add_ties_its_inputs_and_inputs_outputs_are_pinned():
    net = Net()
    a = net.conv(net.x, 8)
    b = net.conv(net.act(a), 8)
    y = net.binary("Add", a, b)
    logits = head(net, y)
    found, groups = groups_of(net, logits)
    assert ids(found, a) == ids(found, b) == ids(found, y)
    shared = groups[ids(found, y)[0]]
    assert shared.scalable and shared.width == 8 and len(shared.producers) == 2
    assert groups[ids(found, "x")[0]].reasons == ["graph input 'x'"]
    assert groups[ids(found, logits)[0]].reasons == [f"feeds graph output '{logits}'"]


def test_concat_places_ranges_and_split_refines_the_groups_it_cuts():
    net = Net()
    a, b = net.conv(net.x, 8), net.conv(net.x, 8)
    left, right = net.split(net.concat([a, b]), [4, 12])
    d = net.conv(net.x, 12)
    y = net.binary("Add", right, d)  # d must be cut like right: a[4:8] then b
    found, groups = groups_of(net, head(net, net.concat([net.conv(left, 4), y])))
    assert len(ids(found, a)) == 2 and len(ids(found, d)) == 2
    assert ids(found, right) == ids(found, d) == [ids(found, a)[1], ids(found, b)[0]]
    assert [groups[i].width for i in ids(found, d)] == [4, 8]
    assert ids(found, left) == [ids(found, a)[0]]


def test_slice_of_a_concat_and_ghost_style_full_slice():
    net = Net()
    a, b = net.conv(net.x, 6), net.conv(net.x, 6)
    y = net.slice(net.concat([a, b]), 0, 12)
    z = net.slice(y, 3, 9)
    found, groups = groups_of(net, head(net, y), head(net, z))
    assert ids(found, y) == ids(found, a) + ids(found, b)
    assert [groups[i].width for i in ids(found, z)] == [3, 3]
    assert [u.kind for u in found.shape_uses] == ["slice", "slice"]


def test_depthwise_conv_keeps_its_group_and_grouped_conv_ties_two():
    net = Net()
    a = net.conv(net.x, 8)
    dw = net.conv(a, 8, k=3, group=8)
    gc = net.conv(a, 16, k=3, group=4)
    found, groups = groups_of(net, head(net, dw), head(net, gc))
    assert ids(found, dw) == ids(found, a)
    assert ids(found, gc) != ids(found, a)
    assert groups[ids(found, gc)[0]].kind == groups[ids(found, a)[0]].kind == "grouped"
    (tie,) = found.ties
    assert (tie.gw_in, tie.gw_out, tie.groups) == (2, 4, 4)


def test_squeeze_excite_bottleneck_is_its_own_kind():
    net = Net()
    a = net.act(net.conv(net.x, 16))
    y = net.se(a, 4)
    found, groups = groups_of(net, head(net, y))
    assert ids(found, y) == ids(found, a)  # the gate [N,C,1,1] * [N,C,H,W] ties C
    kinds = {g.width: g.kind for g in groups if g.scalable}
    assert kinds == {16: "channels", 4: "se"}


def test_flatten_before_gemm_makes_each_channel_h_times_w_features():
    net = Net(size=3)
    a = net.conv(net.x, 8)
    flat = net.flatten(a)
    found, groups = groups_of(net, net.gemm(flat, 5))
    (piece,) = found.layouts[flat].pieces
    assert piece.inner == 9 and ids(found, flat) == ids(found, a)


def test_channel_shuffle_keeps_widths_but_is_flagged():
    net = Net()
    a, b = net.conv(net.x, 8), net.conv(net.x, 8)
    y = net.shuffle(net.concat([a, b]), 2)
    found, groups = groups_of(net, head(net, y))
    assert ids(found, y) == ids(found, a) + ids(found, b)
    assert all("channel shuffle" in groups[i].inexact[0] for i in ids(found, y))


def test_channels_last_section_as_in_convnext():
    net = Net()
    a = net.conv(net.x, 8)
    t = net.transpose(net.conv(a, 8, k=3, group=8), [0, 2, 3, 1])
    mlp = net.linear(net.act(net.linear(net.layernorm(t), 32), "Erf"), 8)
    y = net.binary("Add", a, net.transpose(mlp, [0, 3, 1, 2]))
    found, groups = groups_of(net, head(net, y))
    assert found.layouts[t].axis == 3
    assert ids(found, mlp) == ids(found, a) == ids(found, y)
    assert sorted(g.width for g in groups if g.scalable) == [8, 32]
    assert "LayerNormalization" in found.uniform[0][1]


def test_broadcast_single_channel_map_is_pinned():
    net = Net()
    a = net.conv(net.x, 8)
    attention = net.act(net.conv(a, 1), "Sigmoid")
    y = net.binary("Mul", a, attention)
    found, groups = groups_of(net, head(net, y))
    reasons = groups[ids(found, attention)[0]].reasons
    assert reasons and reasons[0].startswith("broadcast along channels at node")
    assert groups[ids(found, y)[0]].scalable


def test_unsupported_op_pins_what_it_touches():
    net = Net()
    a = net.conv(net.x, 8)
    n, c, h, w = net.shape[a]
    moved = net.op("SpaceToDepth", [a], (n, c * 4, h // 2, w // 2), blocksize=2)
    found, groups = groups_of(net, head(net, net.conv(moved, 8)))
    reason = groups[ids(found, a)[0]].reasons[0]
    assert reason == f"unsupported op SpaceToDepth at node {moved}"


# ---- real models --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["efficientnet_b0", "shufflenet_v2_x1_0", "timm.ghostnet_100",
                                  "convnext_tiny", "densenet121"])
def test_real_exports_pin_only_the_input_and_the_logits(exports, name):
    for exporter in ("legacy", "dynamo") if name == "efficientnet_b0" else ("legacy",):
        groups = find_groups(Graph(onnx.load(exports(name, exporter, 96)))).groups()
        pinned = [g.reasons[0] for g in groups if not g.scalable]
        assert len(pinned) == 2, pinned
        assert pinned[0].startswith("graph input") and pinned[1].startswith("feeds graph output")


def test_groups_command_lists_kinds_and_reasons():
    result = run_cli("groups", "zoo:regnety-400mf", "--json", check=True)
    listing = json.loads(result.stdout)
    groups = listing["groups"]
    assert listing["scalable"] == len(groups) - 2
    assert groups[0]["reason"] == "graph input 'input'" and not groups[0]["scalable"]
    assert groups[-1]["reason"] == "feeds graph output 'logits'"
    kinds = {g["kind"] for g in groups}
    assert kinds == {"channels", "grouped", "se"}
    se = next(g for g in groups if g["kind"] == "se")
    assert se["producers"][0].endswith("se.fc1") and se["consumers"][0].endswith("se.fc2")
    table = run_cli("groups", "zoo:efficientnet-b0", check=True).stdout
    assert "graph input" in table and "groups can be widened" in table


def test_groups_command_needs_concrete_shapes(paddleocr_models):
    result = run_cli("groups", str(paddleocr_models["det"]))
    assert result.returncode != 0 and "--input-shape" in result.stderr
    result = run_cli("groups", str(paddleocr_models["det"]), "--input-shape", "x:1x3x320x320",
                     "--json", check=True)
    assert json.loads(result.stdout)["scalable"] == len(json.loads(result.stdout)["groups"]) - 2
