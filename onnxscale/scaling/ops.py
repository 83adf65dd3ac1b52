"""Op sets and weight lookups shared by the width, depth and resolution rewrites.

Each set has one meaning, said by its name and comment; a module that needs a different set
defines it here under its own name rather than reusing a name with another meaning (there
were once three ``PASS_THROUGH`` sets and two ``ELEMENTWISE`` sets that disagreed).
"""

from __future__ import annotations

import numpy as np
import onnx

from ..graph import Graph
from ..shapes import attrs

# Layers: the ops with weights that width scaling resizes and depth scaling counts.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
# Ops that act on each element alone (activations and arithmetic with a constant): a block
# made of layers and these keeps its shape, and copies of it can be instantiated.
POINTWISE = frozenset({"Relu", "Clip", "LeakyRelu", "Elu", "Selu", "Celu", "HardSwish",
                       "HardSigmoid", "Sigmoid", "Tanh", "Softplus", "Mish", "Gelu", "Erf",
                       "Mul", "Div", "Add", "Sub", "Identity", "Dropout", "PRelu"})
# Ops whose inputs broadcast against each other: the channels of all inputs are tied.
BROADCAST_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum",
                           "Where", "PRelu", "Equal", "Less", "Greater", "LessOrEqual",
                           "GreaterOrEqual", "Mod"})
# Ops that hand a tensor's values on unchanged (between a flatten and its dense layer).
VALUE_PASS = frozenset({"Identity", "Dropout", "Cast"})
# Ops a shape vector flows through with its numbers unchanged.
SHAPE_VALUE_PASS = frozenset({"Identity", "Cast", "Unsqueeze", "Squeeze", "Reshape", "Flatten"})
# Ops that act on each channel alone, so a channel reaches the next layer as itself
# (a dense block's concatenated features on their way to the next conv).
CHANNEL_PASS = frozenset({"Relu", "LeakyRelu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
                          "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool",
                          "GlobalMaxPool", "Elu", "Selu", "Celu", "Tanh", "Mish", "Softplus",
                          "Gelu", "Erf"})
# Ops through which a weight may reach its layer (legacy exports share deduplicated weights
# through Identity; dynamo transposes Linear weights with a Transpose node).
CONST_THROUGH = frozenset({"Identity", "Transpose", "Cast", "Reshape", "Unsqueeze", "Squeeze"})
# Inputs that carry metadata, not data: a path through them is not a data path.
METADATA_INPUTS = {"Shape": {0}, "Size": {0}, "CastLike": {1}}


def data_inputs(graph: Graph, node: onnx.NodeProto) -> list[str]:
    """Inputs that carry feature data (not weights, not metadata such as Shape's input)."""
    skip = METADATA_INPUTS.get(node.op_type, ())
    return [t for i, t in enumerate(node.input) if t and t not in graph.consts and i not in skip]


def weight_of(graph: Graph, tensor: str) -> str | None:
    """The weight ``tensor`` is, looking through Identity only (torch's legacy exporter reads
    some weights through Identity nodes), or None for computed tensors.  The name it returns
    is a weight whose values are ``tensor``'s, so a rewrite may edit it in place of ``tensor``;
    `is_const` looks through more ops, for readers that only need the values."""
    while tensor not in graph.consts:
        node = graph.producer.get(tensor)
        if node is None or node.op_type != "Identity":
            return None
        tensor = node.input[0]
    return tensor


def is_const(graph: Graph, name: str, depth: int = 0) -> bool:
    """Whether ``name``'s values are known: a weight, possibly behind `CONST_THROUGH` nodes."""
    if name in graph.consts:
        return True
    node = graph.producer.get(name)
    if node is None or node.op_type not in CONST_THROUGH or depth > 8 or not node.input:
        return False
    rest = [i for i in node.input[1:] if i]
    return is_const(graph, node.input[0], depth + 1) and \
        all(graph.small_value(i) is not None for i in rest)


def const_value(graph: Graph, name: str) -> np.ndarray:
    """The value of a tensor for which `is_const` holds."""
    if name in graph.consts:
        return graph.value(name)
    node = graph.producer[name]
    value = const_value(graph, node.input[0])
    if node.op_type == "Transpose":
        perm = attrs(node).get("perm")
        return np.transpose(value, perm)
    if node.op_type == "Cast":
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(attrs(node)["to"]))
    if node.op_type == "Identity":
        return value
    return value.reshape(graph.shapes[name])


def spatial_layer(graph: Graph, node: onnx.NodeProto) -> bool:
    """A conv/linear layer over more than one position (not an SE or classifier 1x1)."""
    if node.op_type not in LAYER_OPS:
        return False
    shape = graph.shapes.get(node.output[0])
    return shape is not None and int(np.prod(shape)) > max(shape)
