"""Graphs in the plain standard ops onnxscale's rules know: fused runtime ops and exporter
idioms rewritten into what they compute.

- **onnxruntime's fused ops** (domain ``com.microsoft``).  A model saved by ONNX Runtime's
  optimizer (``SessionOptions.optimized_model_filepath`` at ``ORT_ENABLE_EXTENDED``) holds ops
  no other tool knows: FusedConv (a Conv, an optional residual Add and an activation in one
  node), FusedGemm, FusedMatMul, QuickGelu, Gelu, BiasGelu, FastGelu.  Each is exactly a
  short chain of standard ops; the first node of the chain keeps the fused node's name (a
  per-layer table reads the same), and ONNX Runtime fuses the chain again when it loads a
  written model.
- **Exporter idioms**: tf2onnx writes Keras's PReLU as ``Relu(x) + c * Relu(-x)``, a
  two-branch Add that looks like a residual block; it is the single op ``PRelu(x, -c)``.

The pycls counts, channel groups, blocks and sizes then follow the rules of the standard
ops, with nothing to teach every rule twice.  Anything this module does not know is left as
it is (the analysis then says which node it cannot count and why).
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .scaling.protoedit import Names

MICROSOFT = "com.microsoft"
PRELU_IDIOM = "PReLU written as Relu(x) + c*Relu(-x)"


def standard_form(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int]]:
    """``proto`` with its known fused ops and idioms rewritten into standard ONNX, and how
    many of each were rewritten (``proto`` itself, unchanged, when there are none)."""
    prelus = _prelu_idioms(proto)
    if not prelus and not any(_rewriter(node) for node in proto.graph.node):
        return proto, {}
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    chain = _Chain(model)
    dropped = {name for idiom in prelus.values() for name in idiom[1]}
    nodes, done = [], {}
    for node in model.graph.node:
        if node.name in prelus:
            x, _, slope = prelus[node.name]
            nodes.append(helper.make_node("PRelu", [x, chain.negated(slope, node.name)],
                                          list(node.output), name=node.name))
            done[PRELU_IDIOM] = done.get(PRELU_IDIOM, 0) + 1
            continue
        if node.name in dropped:
            continue
        rewrite = _rewriter(node)
        if rewrite is None:
            nodes.append(node)
            continue
        nodes.extend(rewrite(chain, node))
        done[node.op_type] = done.get(node.op_type, 0) + 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(chain.constants)
    return model, done


def _prelu_idioms(proto: onnx.ModelProto) -> dict[str, tuple[str, list[str], onnx.TensorProto]]:
    """tf2onnx's PReLU, ``Add(Relu(x), Mul(Relu(Neg(x)), c))`` with a constant ``c``, by the
    Add's name: (x, the four other nodes, c)."""
    producer = {t: n for n in proto.graph.node for t in n.output}
    readers: dict[str, int] = {}
    for node in proto.graph.node:
        for t in node.input:
            readers[t] = readers.get(t, 0) + 1
    constants = {t.name: t for t in proto.graph.initializer}
    constants.update({n.output[0]: n.attribute[0].t for n in proto.graph.node
                      if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})

    def sole(tensor: str, op: str) -> onnx.NodeProto | None:
        node = producer.get(tensor)
        return node if node is not None and node.op_type == op and readers.get(tensor) == 1 \
            and node.domain in ("", "ai.onnx") else None

    found = {}
    for add in proto.graph.node:
        if add.op_type != "Add" or len(add.input) != 2 or not add.name:
            continue
        for relu_in, mul_in in (add.input, add.input[::-1]):
            relu, mul = sole(relu_in, "Relu"), sole(mul_in, "Mul")
            if relu is None or mul is None:
                continue
            slope = next((t for t in mul.input if t in constants), None)
            other = next((t for t in mul.input if t != slope), None)
            negative = sole(other, "Relu") if other else None
            neg = sole(negative.input[0], "Neg") if negative is not None else None
            if slope is None or neg is None or neg.input[0] != relu.input[0]:
                continue
            found[add.name] = (relu.input[0], [relu.name, mul.name, negative.name, neg.name],
                               constants[slope])
            break
    return found


def _rewriter(node: onnx.NodeProto):
    if node.domain != MICROSOFT:
        return None
    rewrite = REWRITES.get(node.op_type)
    if node.op_type == "FusedMatMul" and any(
            _attr(node, name, 0) for name in ("transBatchA", "transBatchB")):
        return None  # batch-transposed operands: no plain MatMul without their rank
    if node.op_type == "FusedMatMul" and _attr(node, "transA", 0):
        return None
    return rewrite


class _Chain:
    """Fresh names and scalar constants for the nodes that replace a fused one."""

    def __init__(self, model: onnx.ModelProto):
        self.names = Names(model)
        self.constants: list[onnx.TensorProto] = []
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)

    def tensor(self, base: str) -> str:
        return self.names.fresh(base)

    def negated(self, tensor: onnx.TensorProto, base: str) -> str:
        name = self.names.fresh(base + "_slope")
        self.constants.append(numpy_helper.from_array(-numpy_helper.to_array(tensor), name))
        return name

    def scalar(self, value: float, base: str) -> str:
        name = self.names.fresh(base)
        self.constants.append(numpy_helper.from_array(np.array(value, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, base: str, **attributes):
        return helper.make_node(op, inputs, [output], name=self.names.fresh(base), **attributes)


def _attr(node: onnx.NodeProto, name: str, default=None):
    found = next((a for a in node.attribute if a.name == name), None)
    return default if found is None else helper.get_attribute_value(found)


def _copied_attributes(node: onnx.NodeProto, drop: tuple[str, ...]) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute if a.name not in drop}


def _activation(chain: _Chain, name: str, params: list[float], x: str, y: str, base: str):
    """Nodes computing activation ``name`` (ORT's MLAS names) of ``x`` into ``y``."""
    name = name.decode() if isinstance(name, bytes) else name
    if name in ("Relu", "Sigmoid", "Tanh"):
        return [chain.node(name, [x], y, base)]
    if name == "LeakyRelu":
        return [chain.node(name, [x], y, base, alpha=params[0] if params else 0.01)]
    if name == "HardSigmoid":
        alpha, beta = _padded(params, (0.2, 0.5))
        return [chain.node(name, [x], y, base, alpha=alpha, beta=beta)]
    if name == "Clip":
        low, high = _padded(params, (-math.inf, math.inf))
        if chain.opset < 11:
            return [chain.node(name, [x], y, base, min=low, max=high)]
        return [chain.node(name, [x, chain.scalar(low, base + "_min"),
                                  chain.scalar(high, base + "_max")], y, base)]
    raise ValueError(f"activation {name}")


def _padded(params: list[float], defaults: tuple[float, ...]) -> list[float]:
    return list(params[:len(defaults)]) + list(defaults[len(params):])


def _fused_conv(chain: _Chain, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """FusedConv(X, W, B, Z) = activation(Conv(X, W, B) + Z)."""
    activation = _attr(node, "activation", b"")
    params = list(_attr(node, "activation_params", []))
    inputs = list(node.input)
    z = inputs[3] if len(inputs) > 3 and inputs[3] else None
    conv = helper.make_node("Conv", inputs[:3], [node.output[0]], name=node.name,
                            **_copied_attributes(node, ("activation", "activation_params")))
    nodes, current = [conv], node.output[0]
    if not activation and z is None:
        return nodes
    conv.output[0] = current = chain.tensor(node.output[0] + "_conv")
    if z is not None:
        summed = chain.tensor(node.output[0] + "_sum") if activation else node.output[0]
        nodes.append(chain.node("Add", [current, z], summed, node.name + "_add"))
        current = summed
    if activation:
        nodes += _activation(chain, activation, params, current, node.output[0],
                             node.name + "_act")
    return nodes


def _fused_gemm(chain: _Chain, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """FusedGemm = activation(Gemm(A, B, C))."""
    names = ("activation", "activation_alpha", "activation_beta", "activation_gamma")
    activation = _attr(node, "activation", b"")
    params = [p for p in (_attr(node, "activation_alpha"), _attr(node, "activation_beta"))
              if p is not None]
    gemm = helper.make_node("Gemm", list(node.input), [node.output[0]], name=node.name,
                            **_copied_attributes(node, names))
    if not activation:
        return [gemm]
    gemm.output[0] = chain.tensor(node.output[0] + "_gemm")
    return [gemm, *_activation(chain, activation, params, gemm.output[0], node.output[0],
                               node.name + "_act")]


def _fused_matmul(chain: _Chain, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """FusedMatMul(A, B) = alpha * MatMul(A, B^T if transB) (no batch transposes)."""
    alpha = _attr(node, "alpha", 1.0)
    a, b = node.input[0], node.input[1]
    nodes = []
    if _attr(node, "transB", 0):
        swapped = chain.tensor(b + "_t")
        nodes.append(chain.node("Transpose", [b], swapped, node.name + "_transB",
                                perm=[1, 0]))
        b = swapped
    matmul = helper.make_node("MatMul", [a, b], [node.output[0]], name=node.name)
    nodes.append(matmul)
    if alpha != 1.0:
        matmul.output[0] = chain.tensor(node.output[0] + "_matmul")
        nodes.append(chain.node("Mul", [matmul.output[0], chain.scalar(alpha, node.name + "_alpha")],
                                node.output[0], node.name + "_scale"))
    return nodes


def _quick_gelu(chain: _Chain, node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """QuickGelu(x) = x * sigmoid(alpha * x) (alpha 1: SiLU, as ORT fuses x * sigmoid(x))."""
    x, y = node.input[0], node.output[0]
    alpha = _attr(node, "alpha", 1.702)
    nodes, scaled = [], x
    if alpha != 1.0:
        scaled = chain.tensor(y + "_scaled")
        nodes.append(chain.node("Mul", [x, chain.scalar(alpha, node.name + "_alpha")], scaled,
                                node.name + "_scale"))
    gate = chain.tensor(y + "_gate")
    nodes.append(chain.node("Sigmoid", [scaled], gate, node.name))
    nodes.append(chain.node("Mul", [x, gate], y, node.name + "_mul"))
    return nodes


def _gelu(chain: _Chain, node: onnx.NodeProto, approximate: str = "none",
          bias: int | None = None) -> list[onnx.NodeProto]:
    """Gelu, BiasGelu (Gelu(A + B)) and FastGelu (the tanh form, optional bias)."""
    x, y, nodes = node.input[0], node.output[0], []
    if bias is not None and len(node.input) > bias and node.input[bias]:
        x = chain.tensor(y + "_biased")
        nodes.append(chain.node("Add", [node.input[0], node.input[bias]], x,
                                node.name + "_bias"))
    if chain.opset >= 20:
        return nodes + [chain.node("Gelu", [x], y, node.name, approximate=approximate)]
    base = node.name
    inner = chain.tensor(y + "_inner")
    if approximate == "tanh":  # sqrt(2/pi) * (x + 0.044715 x^3)
        cube, poly = chain.tensor(y + "_cube"), chain.tensor(y + "_poly")
        scaled_cube = chain.tensor(y + "_cube_scaled")
        nodes += [chain.node("Mul", [x, x], chain.tensor(y + "_sq"), base + "_sq")]
        nodes += [chain.node("Mul", [nodes[-1].output[0], x], cube, base + "_cube"),
                  chain.node("Mul", [cube, chain.scalar(0.044715, base + "_c")], scaled_cube,
                             base + "_cube_scale"),
                  chain.node("Add", [x, scaled_cube], poly, base + "_poly"),
                  chain.node("Mul", [poly, chain.scalar(math.sqrt(2 / math.pi), base + "_k")],
                             inner, base + "_inner")]
        squash = "Tanh"
    else:  # x / sqrt(2)
        nodes.append(chain.node("Div", [x, chain.scalar(math.sqrt(2.0), base + "_sqrt2")],
                                inner, base + "_inner"))
        squash = "Erf"
    squashed, one_plus, half = (chain.tensor(y + s) for s in ("_squash", "_1p", "_half"))
    nodes += [chain.node(squash, [inner], squashed, base),
              chain.node("Add", [squashed, chain.scalar(1.0, base + "_one")], one_plus,
                         base + "_1p"),
              chain.node("Mul", [x, chain.scalar(0.5, base + "_half_c")], half, base + "_half"),
              chain.node("Mul", [half, one_plus], y, base + "_mul")]
    return nodes


REWRITES = {
    "FusedConv": _fused_conv,
    "FusedGemm": _fused_gemm,
    "FusedMatMul": _fused_matmul,
    "QuickGelu": _quick_gelu,
    "Gelu": _gelu,
    "BiasGelu": lambda chain, node: _gelu(chain, node, bias=1),
    "FastGelu": lambda chain, node: _gelu(chain, node, "tanh", bias=1),
}
