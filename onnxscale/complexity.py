"""Complexity in the pycls convention (docs/concepts.md): flops, params, acts per layer and stage.

- flops: multiply-adds of Conv, ConvTranspose, Gemm and MatMul (bias adds, BN, activations,
  pooling and residual adds are 0);
- params: elements of the float weight tensors the graph consumes (initializers or Constant
  nodes), each counted once, at its first consumer, plus the integer weights of quantized
  layers (QLinearConv, ConvInteger, ..., or DequantizeLinear in QDQ graphs); BatchNormalization's
  running mean and variance are statistics, not parameters;
- acts: elements of the outputs of Conv, ConvTranspose, Gemm, MatMul and MaxPool (and their
  quantized forms).

Every other op type is listed in `Report.uncounted`, so nothing is silently counted as zero.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import onnx

from .errors import OnnxscaleError
from .graph import FLOAT_TYPES, Graph

COUNTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool",
               # quantized forms: the same multiply-adds on integers
               "QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")
# Inputs that are not learned parameters, by op type: BN statistics, quantization scales and
# zero points.
NOT_PARAMS = {"BatchNormalization": (3, 4), "QuantizeLinear": (1, 2),
              "DequantizeLinear": (1, 2), "QLinearConv": (1, 2, 4, 5, 6, 7),
              "QLinearMatMul": (1, 2, 4, 5, 6, 7), "ConvInteger": (2, 3),
              "MatMulInteger": (2, 3), "QGemm": (1, 2, 4, 5, 7, 8),
              "DynamicQuantizeLSTM": (8, 9, 10, 11)}
# Integer tensors that are learned parameters: quantized weights and biases, by op type and
# input index (scales and zero points are not).
QUANTIZED_WEIGHTS = {"QLinearConv": (3, 8), "ConvInteger": (1,), "QLinearMatMul": (3,),
                     "MatMulInteger": (1,), "DequantizeLinear": (0,), "QGemm": (3, 6),
                     "DynamicQuantizeLSTM": (1, 2)}
# onnxruntime's own quantized layers (domain com.microsoft), counted like the standard ones.
MICROSOFT_COUNTED = ("QGemm",)
# Where each counted conv reads its weight.
WEIGHT_INPUT = {"QLinearConv": 3}


@dataclass
class Layer:
    name: str
    op: str
    output_shape: list[int] | None
    flops: int = 0
    params: int = 0
    acts: int = 0
    stage: int = 0


@dataclass
class Stage:
    index: int
    resolution: str
    layers: int = 0
    flops: int = 0
    params: int = 0
    acts: int = 0


@dataclass
class Report:
    flops: int
    params: int
    acts: int
    inputs: dict[str, list[int]]
    outputs: dict[str, list[int] | None]
    layers: list[Layer]
    stages: list[Stage]
    uncounted: dict[str, int]
    nodes: int
    opset: int
    constants: int = 0  # float scalars consumed by elementwise ops (e.g. the 6 of HardSwish)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def numel(shape) -> int:
    return math.prod(int(d) for d in shape) if shape is not None else 0


def _require(graph: Graph, node: onnx.NodeProto, index: int) -> tuple[int, ...]:
    name = node.input[index]
    shape = graph.shapes.get(name)
    if shape is None:
        source = graph.producer.get(name)
        origin = f", produced by {source.op_type} node '{source.name}'" if source else ""
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): the shape of its input "
                             f"'{name}' is unknown{origin}; cannot count it")
    return shape


def _output(graph: Graph, node: onnx.NodeProto) -> tuple[int, ...]:
    shape = graph.shapes.get(node.output[0])
    if shape is None:
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): its output shape is "
                             f"unknown; cannot count it")
    return shape


def conv_flops(graph: Graph, node: onnx.NodeProto) -> int:
    # weight [C_out, C_in/groups, k_h, k_w]
    weight = _require(graph, node, WEIGHT_INPUT.get(node.op_type, 1))
    return numel(_output(graph, node)) * numel(weight[1:])


def conv_transpose_flops(graph: Graph, node: onnx.NodeProto) -> int:
    # every input pixel scatters a [C_out/groups, k_h, k_w] patch per input channel
    weight = _require(graph, node, 1)  # [C_in, C_out/groups, k_h, k_w]
    return numel(_require(graph, node, 0)) * numel(weight[1:])


def gemm_flops(graph: Graph, node: onnx.NodeProto) -> int:
    a = _require(graph, node, 0)
    trans_a = any(at.name == "transA" and at.i for at in node.attribute)
    inner = a[0] if trans_a else a[1]
    return numel(_output(graph, node)) * inner


def matmul_flops(graph: Graph, node: onnx.NodeProto) -> int:
    a = _require(graph, node, 0)
    return numel(_output(graph, node)) * a[-1]


FLOP_COUNTERS = {"Conv": conv_flops, "ConvTranspose": conv_transpose_flops,
                 "Gemm": gemm_flops, "MatMul": matmul_flops, "QLinearConv": conv_flops,
                 "ConvInteger": conv_flops, "QLinearMatMul": matmul_flops,
                 "MatMulInteger": matmul_flops, "QGemm": gemm_flops}


def is_counted(node: onnx.NodeProto) -> bool:
    if node.domain == "com.microsoft":
        return node.op_type in MICROSOFT_COUNTED
    return node.op_type in COUNTED_OPS and node.domain in ("", "ai.onnx")


def analyze(graph: Graph) -> Report:
    """Count flops, params and acts of every layer, and group layers into stages."""
    param_owner, constants = _attribute_params(graph)
    layers: list[Layer] = []
    uncounted: Counter[str] = Counter()
    for node in graph.nodes:
        counter = FLOP_COUNTERS.get(node.op_type)
        counted = is_counted(node)
        params = param_owner.get(node.name, 0)
        if not counted:
            uncounted[node.op_type] += 1
            if not params:
                continue
        shape = graph.shapes.get(node.output[0]) if node.output else None
        layer = Layer(node.name, node.op_type, list(shape) if shape is not None else None,
                      params=params)
        if counted:
            layer.flops = counter(graph, node) if counter else 0
            layer.acts = numel(_output(graph, node))
        layers.append(layer)
    stages = _group_stages(layers)
    return Report(
        flops=sum(layer.flops for layer in layers), params=sum(param_owner.values()),
        acts=sum(layer.acts for layer in layers),
        inputs={name: list(dims) for name, dims in graph.inputs.items()},
        outputs={name: _as_list(graph.shapes.get(name)) for name in graph.outputs},
        layers=layers, stages=stages, uncounted=dict(sorted(uncounted.items())),
        nodes=len(graph.nodes), opset=graph.opset, constants=constants)


def _as_list(shape):
    return list(shape) if shape is not None else None


def _attribute_params(graph: Graph) -> tuple[dict[str, int], int]:
    """Params per consuming node (each weight at its first consumer) and the scalar count.

    A float scalar read by an elementwise op (HardSwish's 6, a 0.5 in GELU) is a constant of
    the formula, not a learned parameter: pycls would not count it, so we report it apart.
    """
    owner: dict[str, int] = {}
    constants = 0
    for name, tensor in graph.consts.items():
        consumers = graph.consumers.get(name, [])
        if tensor.data_type not in FLOAT_TYPES and not _is_quantized_weight(name, consumers):
            continue
        learned = [node for node in consumers if not _is_statistic(node, name)]
        if not learned:
            continue
        size = numel(tensor.dims)
        if size <= 1 and not any(is_counted(node) for node in learned):
            constants += size
            continue
        first = _real_consumer(graph, learned[0]).name
        owner[first] = owner.get(first, 0) + size
    return owner, constants


def _real_consumer(graph: Graph, node: onnx.NodeProto) -> onnx.NodeProto:
    """Look through the Identity nodes torch's legacy exporter puts between weights and ops,
    and the DequantizeLinear of QDQ-quantized weights."""
    while node.op_type in ("Identity", "DequantizeLinear"):
        consumers = graph.consumers.get(node.output[0], [])
        if not consumers:
            break
        node = consumers[0]
    return node


def _is_quantized_weight(name: str, consumers: list[onnx.NodeProto]) -> bool:
    return any(i < len(node.input) and node.input[i] == name
               for node in consumers for i in QUANTIZED_WEIGHTS.get(node.op_type, ()))


def _is_statistic(node: onnx.NodeProto, name: str) -> bool:
    positions = NOT_PARAMS.get(node.op_type, ())
    return any(i < len(node.input) and node.input[i] == name for i in positions)


def _layer_resolution(layer: Layer, current: str | None) -> str:
    """The spatial size a layer works at; 1x1 layers (SE, pooled heads) inherit the current."""
    shape = layer.output_shape
    if shape is None or len(shape) < 3:
        return "head"
    # MatMul/Gemm work on the last axis (channels-last, as in ConvNeXt's MLPs): [N, H, W, C]
    spatial = shape[1:-1] if layer.op in ("MatMul", "Gemm") else shape[2:]
    if numel(spatial) <= 1 and current not in (None, "head"):
        return current
    return "x".join(str(d) for d in spatial)


def _group_stages(layers: list[Layer]) -> list[Stage]:
    """Stages are the sets of layers at one spatial resolution, in order of first appearance.

    Grouping by resolution (not by consecutive runs) keeps multi-branch blocks, such as an
    Inception reduction whose branches reach the lower resolution at different depths, whole.
    """
    stages: dict[str, Stage] = {}
    current: str | None = None
    for layer in layers:
        resolution = _layer_resolution(layer, current)
        if resolution != "head":
            current = resolution
        stage = stages.get(resolution)
        if stage is None:
            stage = stages[resolution] = Stage(index=len(stages), resolution=resolution)
        layer.stage = stage.index
        stage.layers += 1
        stage.flops += layer.flops
        stage.params += layer.params
        stage.acts += layer.acts
    return list(stages.values())
