"""A small helper that emits ONNX nodes and random weights for the zoo's CNN builders.

Layers follow pycls's conventions: convolutions have odd kernels, padding ``(k - 1) // 2`` and no
bias (BatchNormalization follows them), Squeeze-Excite convolutions and the classifier have a
bias.  Weights are drawn from a seeded numpy generator:

- conv / classifier weights: He-normal on fan-in (``std = sqrt(2 / fan_in)``), which keeps
  activations at a sane scale through deep random networks;
- BatchNormalization: scale in [0.5, 1.0], small bias and mean, variance in [0.5, 1.5]
  (always positive), epsilon 1e-5 as in pycls;
- biases: small random values (so that rewrites that mishandle a bias are visible).

Each layer is one node (two for SiLU: Sigmoid then Mul) whose output tensor has the node's name.
The builder tracks channels and spatial size so that callers can stay declarative.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
BN_EPS = 1e-5


@dataclass(frozen=True)
class Tensor:
    """A feature map in the graph being built: its name, channels and spatial size."""

    name: str
    channels: int
    h: int
    w: int


class GraphBuilder:
    """Accumulates nodes and initializers; `finish` turns them into a checked ModelProto."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    # ---------------------------------------------------------------- bookkeeping
    def _claim(self, name: str) -> str:
        if name in self._names:
            raise ValueError(f"duplicate node/tensor name {name!r}")
        self._names.add(name)
        return name

    def _init(self, name: str, array: np.ndarray) -> str:
        self._claim(name)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, np.float32), name))
        return name

    def _node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self._claim(name)
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def _normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)

    def _uniform(self, n: int, low: float, high: float) -> np.ndarray:
        return self.rng.uniform(low, high, n).astype(np.float32)

    # ---------------------------------------------------------------- layers
    def input(self, name: str, channels: int, h: int, w: int) -> Tensor:
        self._claim(name)
        self._input = helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, channels, h, w])
        return Tensor(name, channels, h, w)

    def conv(self, x: Tensor, name: str, c_out: int, k: int, stride: int = 1, groups: int = 1,
             bias: bool = False) -> Tensor:
        """k x k convolution, padding (k - 1) // 2 (pycls ``conv2d``)."""
        if k % 2 != 1:
            raise ValueError(f"{name}: only odd kernels are supported (got {k})")
        if x.channels % groups or c_out % groups:
            raise ValueError(f"{name}: {x.channels}->{c_out} channels not divisible by {groups} groups")
        c_in_g = x.channels // groups
        fan_in = k * k * c_in_g
        inputs = [x.name, self._init(f"{name}.weight", self._normal((c_out, c_in_g, k, k), (2.0 / fan_in) ** 0.5))]
        if bias:
            inputs.append(self._init(f"{name}.bias", self._normal((c_out,), 0.01)))
        p = (k - 1) // 2
        out = self._node("Conv", inputs, name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p], group=groups, dilations=[1, 1])
        return Tensor(out, c_out, (x.h - 1) // stride + 1, (x.w - 1) // stride + 1)

    def bn(self, x: Tensor, name: str) -> Tensor:
        c = x.channels
        inputs = [
            x.name,
            self._init(f"{name}.scale", self._uniform(c, 0.5, 1.0)),
            self._init(f"{name}.bias", self._normal((c,), 0.05)),
            self._init(f"{name}.mean", self._normal((c,), 0.05)),
            self._init(f"{name}.var", self._uniform(c, 0.5, 1.5)),
        ]
        out = self._node("BatchNormalization", inputs, name, epsilon=BN_EPS)
        return Tensor(out, c, x.h, x.w)

    def act(self, x: Tensor, name: str, kind: str) -> Tensor:
        """``relu`` (Relu), ``silu`` (Sigmoid then Mul, as opset 17 has no SiLU op), ``sigmoid``."""
        if kind == "relu":
            out = self._node("Relu", [x.name], name)
        elif kind == "sigmoid":
            out = self._node("Sigmoid", [x.name], name)
        elif kind == "silu":
            gate = self._node("Sigmoid", [x.name], f"{name}.sigmoid")
            out = self._node("Mul", [x.name, gate], name)
        else:
            raise ValueError(f"unknown activation {kind!r}")
        return Tensor(out, x.channels, x.h, x.w)

    def conv_bn_act(self, x: Tensor, name: str, c_out: int, k: int, stride: int = 1,
                    groups: int = 1, act: str | None = "relu", bn_name: str | None = None,
                    act_name: str | None = None) -> Tensor:
        y = self.conv(x, name, c_out, k, stride, groups)
        y = self.bn(y, bn_name or f"{name}_bn")
        return self.act(y, act_name or f"{name}_act", act) if act else y

    def se(self, x: Tensor, name: str, w_se: int, act: str) -> Tensor:
        """Squeeze-Excite: GlobalAveragePool, 1x1 conv (bias), act, 1x1 conv (bias), Sigmoid, Mul."""
        pooled = self.global_pool(x, f"{name}.pool")
        s = self.conv(pooled, f"{name}.fc1", w_se, 1, bias=True)
        s = self.act(s, f"{name}.act", act)
        s = self.conv(s, f"{name}.fc2", x.channels, 1, bias=True)
        s = self.act(s, f"{name}.gate", "sigmoid")
        out = self._node("Mul", [x.name, s.name], f"{name}.mul")
        return Tensor(out, x.channels, x.h, x.w)

    def add(self, a: Tensor, b: Tensor, name: str) -> Tensor:
        if (a.channels, a.h, a.w) != (b.channels, b.h, b.w):
            raise ValueError(f"{name}: cannot add {a} and {b}")
        return Tensor(self._node("Add", [a.name, b.name], name), a.channels, a.h, a.w)

    def max_pool(self, x: Tensor, name: str, k: int, stride: int) -> Tensor:
        p = (k - 1) // 2
        out = self._node("MaxPool", [x.name], name, kernel_shape=[k, k], strides=[stride, stride],
                         pads=[p, p, p, p])
        return Tensor(out, x.channels, (x.h - 1) // stride + 1, (x.w - 1) // stride + 1)

    def global_pool(self, x: Tensor, name: str) -> Tensor:
        return Tensor(self._node("GlobalAveragePool", [x.name], name), x.channels, 1, 1)

    def classifier(self, x: Tensor, name: str, num_classes: int, output: str = "logits") -> str:
        """GlobalAveragePool -> Flatten -> Gemm (weight [classes, C], transB=1, bias)."""
        pooled = self.global_pool(x, f"{name}.pool")
        flat = self._node("Flatten", [pooled.name], f"{name}.flatten", axis=1)
        c = x.channels
        w = self._init(f"{name}.fc.weight", self._normal((num_classes, c), (1.0 / c) ** 0.5))
        b = self._init(f"{name}.fc.bias", self._normal((num_classes,), 0.01))
        self._claim(f"{name}.fc")
        self._claim(output)
        self.nodes.append(helper.make_node("Gemm", [flat, w, b], [output], name=f"{name}.fc", transB=1))
        self._output = helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, num_classes])
        return output

    # ---------------------------------------------------------------- model
    def finish(self, graph_name: str, doc: str = "", metadata: dict[str, str] | None = None) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, [self._input], [self._output],
                                  initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="onnxscale", doc_string=doc)
        model.ir_version = IR_VERSION
        from ..version import __version__

        model.producer_version = __version__
        model.model_version = 1
        for key, value in (metadata or {}).items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        return model
