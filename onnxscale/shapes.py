"""Shape propagation: every tensor's shape (and small values) from the inputs' concrete dims.

One short rule per op family covers what CNN exporters emit; shape arithmetic on small integer
tensors (Shape -> Gather -> Concat -> Reshape, as torch and Paddle export it) is folded with
numpy so Reshape targets and Resize sizes resolve exactly.  An op with no rule is handed to
onnx's own shape inference as a one-node model (cheap: only that node's inputs are serialized).

Shapes that contradict the weights (a Conv whose weight expects other input channels, a Gemm
whose inner dims differ) raise `OnnxscaleError` naming the node, instead of being ignored.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .errors import OnnxscaleError
from .hollow import SMALL as MAX_FOLD_ELEMENTS

if TYPE_CHECKING:  # the graph builds on this module (it propagates shapes when indexed)
    from .graph import Graph

Shape = tuple[int, ...]
T = onnx.TensorProto

UNARY = {
    "Relu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Exp", "Log", "Sqrt", "Abs", "Neg", "Erf", "Clip", "Identity",
    "Dropout", "BatchNormalization", "InstanceNormalization", "LRN", "Softmax", "LogSoftmax",
    "Gelu", "Mish", "Floor", "Ceil", "Round", "Not", "Sign", "Reciprocal", "QuantizeLinear",
    "DequantizeLinear", "CumSum", "Hardmax", "ThresholdedRelu", "Shrink", "IsNaN", "IsInf",
    "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh",
    "Cast", "CastLike", "MeanVarianceNormalization", "LpNormalization", "Swish",
    "Trilu", "ReverseSequence", "GroupNormalization", "Bernoulli",
}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Mean", "Sum", "Equal", "Less",
             "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "Mod",
             "BitShift", "PRelu", "BitwiseAnd", "BitwiseOr", "BitwiseXor"}
BOOL_OUT = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Not",
            "IsNaN", "IsInf"}
INT64_OUT = {"Shape", "Size", "ArgMax", "ArgMin", "NonZero", "NonMaxSuppression"}
POOLS = {"MaxPool", "AveragePool", "LpPool"}
GLOBAL_POOLS = {"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"}
NO_TENSOR_INPUT = {"Constant", "ConstantOfShape", "Range", "SequenceAt", "ConcatFromSequence",
                   "SequenceConstruct"}
REDUCES = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}


def propagate(graph: Graph) -> None:
    """Fill ``graph.shapes``, ``graph.dtypes`` and small ``graph.values`` for every node."""
    for node in graph.nodes:
        try:
            propagate_node(graph, node)
        except OnnxscaleError:
            raise
        except Exception as exc:  # a malformed node: report which one
            raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): cannot infer its output "
                                 f"shape ({type(exc).__name__}: {exc})") from exc


def propagate_node(graph: Graph, node: onnx.NodeProto, overwrite: bool = False) -> None:
    """Shapes, dtypes and small values of one node's outputs.

    ``overwrite``: replace shapes already known (a rewrite re-propagating a changed input
    size); otherwise an unknown result never hides one found before.
    """
    shapes = infer_node(graph, node)
    dtypes = infer_dtypes(graph, node)
    for index, name in enumerate(node.output):
        if not name:
            continue
        shape = tuple(int(d) for d in shapes[index]) if (
            index < len(shapes) and shapes[index] is not None) else None
        if shape is not None or overwrite:
            graph.shapes[name] = shape
        else:
            graph.shapes.setdefault(name, None)
        if index < len(dtypes) and dtypes[index]:
            graph.dtypes.setdefault(name, dtypes[index])
    fold(graph, node)


# ---- per-op shape rules ---------------------------------------------------------------------

def infer_node(graph: Graph, node: onnx.NodeProto) -> list[Shape | None]:
    op = node.op_type
    ins = [graph.shapes.get(name) if name else None for name in node.input]
    if node.domain == "com.microsoft" and op in MICROSOFT_RULES and ins[0] is not None:
        return MICROSOFT_RULES[op](graph, node, ins)
    if node.domain not in ("", "ai.onnx"):
        return fallback(graph, node)
    rule = RULES.get(op)
    if rule is None:
        if op in UNARY:
            rule = unary_rule
        elif op in BROADCAST:
            rule = broadcast_rule
        elif op in POOLS:
            rule = pool_rule
        elif op in GLOBAL_POOLS:
            rule = global_pool_rule
        elif op in REDUCES:
            rule = reduce_rule
    if rule is None:
        return fallback(graph, node)
    if any(s is None for s in ins[:1]) and op not in NO_TENSOR_INPUT:
        return fallback(graph, node)
    return rule(graph, node, ins)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def unary_rule(graph, node, ins):
    out = [ins[0]]
    if node.op_type == "Dropout" and len(node.output) > 1:
        out.append(ins[0])
    if node.op_type == "BatchNormalization" and len(node.output) > 1:
        c = (ins[0][1],)
        out += [c] * (len(node.output) - 1)
    return out


def broadcast_rule(graph, node, ins):
    shapes = [s for s in ins if s is not None]
    if len(shapes) != len([n for n in node.input if n]):
        return fallback(graph, node)
    try:
        return [broadcast(*shapes)]
    except ValueError:
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): inputs "
                             f"{', '.join(str(list(s)) for s in shapes)} do not broadcast") from None


def broadcast(*shapes: Shape) -> Shape:
    rank = max(len(s) for s in shapes)
    out = []
    for axis in range(rank):
        dims = {s[axis - rank + len(s)] for s in shapes if axis - rank + len(s) >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ValueError("incompatible")
        out.append(dims.pop() if dims else 1)
    return tuple(out)


def spatial_output(size: int, kernel: int, stride: int, dilation: int, pad_begin: int,
                   pad_end: int, ceil_mode: bool = False) -> int:
    effective = (kernel - 1) * dilation + 1
    span = size + pad_begin + pad_end - effective
    out = (math.ceil(span / stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad_begin:
        out -= 1  # the last window must start inside the input or the left padding
    return out


def window_params(node, spatial_in: Shape, kernel: list[int]):
    """Strides, dilations, begin/end pads of a conv or pool, auto_pad resolved."""
    a = attrs(node)
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    pads = list(a.get("pads", [0] * (2 * n)))
    auto_pad = a.get("auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * n)
        for i in range(n):
            out = math.ceil(spatial_in[i] / strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                        - spatial_in[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[i + n] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * n)
    return strides, dilations, pads


def conv_rule(graph, node, ins, w_index=1):
    """Conv, ConvInteger, and QLinearConv (weight at input 3)."""
    x, w = ins[0], ins[w_index]
    if w is None:
        return fallback(graph, node)
    a = attrs(node)
    group = a.get("group", 1)
    kernel = list(a.get("kernel_shape", w[2:]))
    if len(x) != len(w):
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): input {list(x)} and weight "
                             f"{list(w)} "
                             f"have different ranks")
    if x[1] != w[1] * group:
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): input '{node.input[0]}' has "
                             f"{x[1]} channels but weight '{node.input[w_index]}' {list(w)} with group "
                             f"{group} expects {w[1] * group}")
    if w[0] % group:
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): {w[0]} output channels are not "
                             f"divisible by group {group}")
    strides, dilations, pads = window_params(node, x[2:], kernel)
    n = len(kernel)
    spatial = [spatial_output(x[2 + i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n])
               for i in range(n)]
    if any(d <= 0 for d in spatial):
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): input {list(x)} is too small for "
                             f"kernel {kernel}")
    return [(x[0], w[0], *spatial)]


def conv_transpose_rule(graph, node, ins):
    x, w = ins[0], ins[1]
    if w is None:
        return fallback(graph, node)
    a = attrs(node)
    group = a.get("group", 1)
    if x[1] != w[0]:
        raise OnnxscaleError(f"node '{node.name}' (ConvTranspose): input has {x[1]} channels "
                             f"but weight {list(w)} expects {w[0]}")
    kernel = list(a.get("kernel_shape", w[2:]))
    n = len(kernel)
    strides = list(a.get("strides", [1] * n))
    dilations = list(a.get("dilations", [1] * n))
    out_pad = list(a.get("output_padding", [0] * n))
    if "output_shape" in a:
        spatial = list(a["output_shape"])[-n:]
    else:
        pads = list(a.get("pads", [0] * (2 * n)))
        auto_pad = a.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            spatial = [x[2 + i] * strides[i] for i in range(n)]
        else:
            spatial = [strides[i] * (x[2 + i] - 1) + out_pad[i] + (kernel[i] - 1) * dilations[i]
                       + 1 - pads[i] - pads[i + n] for i in range(n)]
    return [(x[0], w[1] * group, *spatial)]


def pool_rule(graph, node, ins):
    x = ins[0]
    a = attrs(node)
    kernel = list(a["kernel_shape"])
    strides, dilations, pads = window_params(node, x[2:], kernel)
    n = len(kernel)
    ceil_mode = bool(a.get("ceil_mode", 0))
    spatial = tuple(spatial_output(x[2 + i], kernel[i], strides[i], dilations[i], pads[i],
                                   pads[i + n], ceil_mode) for i in range(n))
    out = (x[0], x[1], *spatial)
    return [out, out] if len(node.output) > 1 else [out]


def global_pool_rule(graph, node, ins):
    x = ins[0]
    return [(x[0], x[1], *[1] * (len(x) - 2))]


def gemm_rule(graph, node, ins):
    a_shape, b_shape = ins[0], ins[1]
    if b_shape is None:
        return fallback(graph, node)
    a = attrs(node)
    m, k = (a_shape[1], a_shape[0]) if a.get("transA", 0) else (a_shape[0], a_shape[1])
    k2, n = (b_shape[1], b_shape[0]) if a.get("transB", 0) else (b_shape[0], b_shape[1])
    if k != k2:
        raise OnnxscaleError(f"node '{node.name}' (Gemm): input '{node.input[0]}' "
                             f"{list(a_shape)} has {k} features but weight '{node.input[1]}' "
                             f"{list(b_shape)} expects {k2}")
    return [(m, n)]


def matmul_rule(graph, node, ins, b_index=1):
    """MatMul, MatMulInteger, and QLinearMatMul (B at input 3)."""
    a, b = ins[0], ins[b_index]
    if b is None:
        return fallback(graph, node)
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): inner dims differ: "
                             f"{list(a)} x {list(b)}")
    batch = broadcast(a2[:-2], b2[:-2]) if len(a2) > 2 or len(b2) > 2 else ()
    out = (*batch, a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return [out]


def recurrent_rule(graph, node, ins):
    """LSTM, GRU, RNN: X's feature size must be what W was trained for (W: [dirs, k*hidden,
    input]); a resolution change that reshapes a feature map into X (a CRNN) would break it."""
    x, w = ins[0], ins[1]
    if w is None or len(x) != 3:
        return fallback(graph, node)
    if x[2] != w[2]:
        raise OnnxscaleError(f"node '{node.name}' ({node.op_type}): input '{node.input[0]}' "
                             f"{list(x)} has {x[2]} features but weight '{node.input[1]}' "
                             f"{list(w)} expects {w[2]}")
    a = attrs(node)
    hidden = a.get("hidden_size", w[1] // {"LSTM": 4, "DynamicQuantizeLSTM": 4, "GRU": 3}.get(node.op_type, 1))
    direction = a.get("direction", b"forward")
    dirs = 2 if (direction.decode() if isinstance(direction, bytes) else direction) \
        == "bidirectional" else 1
    if a.get("layout", 0):
        batch, seq = x[0], x[1]
        y, state = (batch, seq, dirs, hidden), (batch, dirs, hidden)
    else:
        seq, batch = x[0], x[1]
        y, state = (seq, dirs, batch, hidden), (dirs, batch, hidden)
    return [y, state, state][:len(node.output)]


def flatten_rule(graph, node, ins):
    x = ins[0]
    axis = attrs(node).get("axis", 1)
    axis = axis + len(x) if axis < 0 else axis
    return [(int(np.prod(x[:axis])), int(np.prod(x[axis:])))]


def reshape_rule(graph, node, ins):
    x = ins[0]
    if graph.opset < 5:
        target = list(attrs(node)["shape"])
    else:
        value = graph.small_value(node.input[1])
        if value is None:
            return fallback(graph, node)
        target = [int(v) for v in value.reshape(-1)]
    allowzero = attrs(node).get("allowzero", 0)
    out = [x[i] if (d == 0 and not allowzero) else d for i, d in enumerate(target)]
    total = int(np.prod(x))
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        if known == 0 or total % known:
            raise OnnxscaleError(f"node '{node.name}' (Reshape): cannot reshape {list(x)} "
                                 f"to {target}")
        out[out.index(-1)] = total // known
    elif int(np.prod(out)) != total:
        raise OnnxscaleError(f"node '{node.name}' (Reshape): cannot reshape {list(x)} "
                             f"({total} elements) to {target}")
    return [tuple(out)]


def transpose_rule(graph, node, ins):
    x = ins[0]
    perm = attrs(node).get("perm", list(reversed(range(len(x)))))
    return [tuple(x[p] for p in perm)]


def concat_rule(graph, node, ins):
    if any(s is None for s in ins):
        return fallback(graph, node)
    axis = attrs(node)["axis"]
    axis = axis + len(ins[0]) if axis < 0 else axis
    for s in ins[1:]:
        if len(s) != len(ins[0]) or any(s[i] != ins[0][i] for i in range(len(s)) if i != axis):
            raise OnnxscaleError(f"node '{node.name}' (Concat): inputs "
                                 f"{', '.join(str(list(t)) for t in ins)} differ off axis {axis}")
    out = list(ins[0])
    out[axis] = sum(s[axis] for s in ins)
    return [tuple(out)]


def split_sizes(graph, node, x: Shape) -> tuple[int, list[int]] | None:
    """Axis and output sizes of a Split, whichever opset form it uses."""
    a = attrs(node)
    axis = a.get("axis", 0)
    axis = axis + len(x) if axis < 0 else axis
    sizes = a.get("split")
    if sizes is None and len(node.input) > 1 and node.input[1]:
        value = graph.small_value(node.input[1])
        if value is None:
            return None
        sizes = [int(v) for v in value]
    if sizes is None:
        parts = a.get("num_outputs", len(node.output))
        chunk = math.ceil(x[axis] / parts)
        sizes = [min(chunk, x[axis] - i * chunk) for i in range(parts)]
    return axis, list(sizes)


def split_rule(graph, node, ins):
    found = split_sizes(graph, node, ins[0])
    if found is None:
        return fallback(graph, node)
    axis, sizes = found
    if sum(sizes) != ins[0][axis]:
        raise OnnxscaleError(f"node '{node.name}' (Split): sizes {sizes} do not add up to "
                             f"{ins[0][axis]}")
    return [tuple(s if i != axis else size for i, s in enumerate(ins[0])) for size in sizes]


def slice_params(graph, node, x: Shape):
    """(axes, starts, ends, steps) of a Slice, attribute (opset < 10) or input form."""
    if graph.opset < 10:
        a = attrs(node)
        starts, ends = list(a["starts"]), list(a["ends"])
        axes = list(a.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        values = [graph.small_value(name) if name else None for name in node.input[1:5]]
        if values[0] is None or values[1] is None:
            return None
        if len(values) > 2 and node.input[3] and values[2] is None:
            return None
        if len(values) > 3 and node.input[4] and values[3] is None:
            return None
        starts, ends = [int(v) for v in values[0]], [int(v) for v in values[1]]
        axes = [int(v) for v in values[2]] if len(values) > 2 and values[2] is not None \
            else list(range(len(starts)))
        steps = [int(v) for v in values[3]] if len(values) > 3 and values[3] is not None \
            else [1] * len(starts)
    axes = [a + len(x) if a < 0 else a for a in axes]
    return axes, starts, ends, steps


def slice_rule(graph, node, ins):
    x = ins[0]
    params = slice_params(graph, node, x)
    if params is None:
        return fallback(graph, node)
    out = list(x)
    for axis, start, end, step in zip(*params):
        out[axis] = len(range(x[axis])[slice(start, end, step)])
    return [tuple(out)]


def axes_of(graph, node, attr_opset: int) -> list[int] | None:
    """Axes from the attribute (before ``attr_opset``) or the second input (from it)."""
    if graph.opset < attr_opset:
        return attrs(node).get("axes")
    if len(node.input) > 1 and node.input[1]:
        value = graph.small_value(node.input[1])
        return None if value is None else [int(v) for v in value.reshape(-1)]
    return attrs(node).get("axes")


def squeeze_rule(graph, node, ins):
    x = ins[0]
    axes = axes_of(graph, node, 13)
    if axes is None and len(node.input) > 1 and node.input[1]:
        return fallback(graph, node)
    axes = [a + len(x) if a < 0 else a for a in axes] if axes else \
        [i for i, d in enumerate(x) if d == 1]
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


def unsqueeze_rule(graph, node, ins):
    x = ins[0]
    axes = axes_of(graph, node, 13)
    if axes is None:
        return fallback(graph, node)
    rank = len(x) + len(axes)
    axes = sorted(a + rank if a < 0 else a for a in axes)
    out, it = [], iter(x)
    for i in range(rank):
        out.append(1 if i in axes else next(it))
    return [tuple(out)]


def pad_rule(graph, node, ins):
    x = ins[0]
    if graph.opset < 11:
        pads = list(attrs(node)["pads"])
        axes = list(range(len(x)))
    else:
        value = graph.small_value(node.input[1])
        if value is None:
            return fallback(graph, node)
        pads = [int(v) for v in value]
        axes = list(range(len(x)))
        if len(node.input) > 3 and node.input[3]:
            axes_value = graph.small_value(node.input[3])
            if axes_value is None:
                return fallback(graph, node)
            axes = [int(a) + len(x) if a < 0 else int(a) for a in axes_value]
    n = len(axes)
    out = list(x)
    for i, axis in enumerate(axes):
        out[axis] = x[axis] + pads[i] + pads[i + n]
    return [tuple(out)]


def resize_rule(graph, node, ins):
    x = ins[0]
    a = attrs(node)
    if node.op_type == "Upsample" and "scales" in a:
        return [tuple(int(math.floor(d * s)) for d, s in zip(x, a["scales"]))]
    inputs = list(node.input) + [""] * 4
    if node.op_type == "Upsample" or graph.opset == 10:
        scales_name, sizes_name = inputs[1], ""
    else:
        scales_name, sizes_name = inputs[2], inputs[3]
    axes = list(a.get("axes", range(len(x))))
    axes = [ax + len(x) if ax < 0 else ax for ax in axes]
    out = list(x)
    if sizes_name:
        sizes = graph.small_value(sizes_name)
        if sizes is None:
            return fallback(graph, node)
        for axis, size in zip(axes, sizes):
            out[axis] = int(size)
        policy = a.get("keep_aspect_ratio_policy", b"stretch")
        if policy not in (b"stretch", "stretch"):
            return fallback(graph, node)
        return [tuple(out)]
    scales = graph.small_value(scales_name) if scales_name else None
    if scales is None or scales.size == 0:
        return fallback(graph, node)
    for axis, scale in zip(axes, scales):
        out[axis] = int(math.floor(x[axis] * float(scale)))
    return [tuple(out)]


def gather_rule(graph, node, ins):
    data, indices = ins[0], ins[1]
    if indices is None:
        return fallback(graph, node)
    axis = attrs(node).get("axis", 0)
    axis = axis + len(data) if axis < 0 else axis
    return [tuple(data[:axis]) + tuple(indices) + tuple(data[axis + 1:])]


def shape_rule(graph, node, ins):
    a = attrs(node)
    start, end = a.get("start", 0), a.get("end", len(ins[0]))
    return [(len(ins[0][slice(start, end)]),)]


def expand_rule(graph, node, ins):
    target = graph.small_value(node.input[1])
    if target is None:
        return fallback(graph, node)
    return [broadcast(ins[0], tuple(int(v) for v in target))]


def tile_rule(graph, node, ins):
    repeats = graph.small_value(node.input[1])
    if repeats is None:
        return fallback(graph, node)
    return [tuple(d * int(r) for d, r in zip(ins[0], repeats))]


def constant_of_shape_rule(graph, node, ins):
    target = graph.small_value(node.input[0])
    return [None if target is None else tuple(int(v) for v in target)]


def reduce_rule(graph, node, ins):
    x = ins[0]
    a = attrs(node)
    attr_opset = 13 if node.op_type == "ReduceSum" else 18
    axes = axes_of(graph, node, attr_opset)
    if axes is None and len(node.input) > 1 and node.input[1]:
        return fallback(graph, node)
    if not axes:
        if a.get("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(len(x)))
    axes = [ax + len(x) if ax < 0 else ax for ax in axes]
    if a.get("keepdims", 1):
        return [tuple(1 if i in axes else d for i, d in enumerate(x))]
    return [tuple(d for i, d in enumerate(x) if i not in axes)]


def argmax_rule(graph, node, ins):
    x = ins[0]
    a = attrs(node)
    axis = a.get("axis", 0)
    axis = axis + len(x) if axis < 0 else axis
    if a.get("keepdims", 1):
        return [tuple(1 if i == axis else d for i, d in enumerate(x))]
    return [tuple(d for i, d in enumerate(x) if i != axis)]


def depth_space_rule(graph, node, ins):
    n, c, h, w = ins[0]
    b = attrs(node)["blocksize"]
    if node.op_type == "DepthToSpace":
        return [(n, c // (b * b), h * b, w * b)]
    return [(n, c * b * b, h // b, w // b)]


def layer_norm_rule(graph, node, ins):
    x = ins[0]
    axis = attrs(node).get("axis", -1)
    axis = axis + len(x) if axis < 0 else axis
    stat = tuple(d if i < axis else 1 for i, d in enumerate(x))
    return [x] + [stat] * (len(node.output) - 1)


def topk_rule(graph, node, ins):
    k = graph.small_value(node.input[1]) if graph.opset >= 10 else \
        np.array([attrs(node)["k"]])
    if k is None:
        return fallback(graph, node)
    x = list(ins[0])
    axis = attrs(node).get("axis", -1)
    x[axis] = int(k.reshape(-1)[0])
    return [tuple(x), tuple(x)]


def range_rule(graph, node, ins):
    values = [graph.small_value(name) for name in node.input]
    if any(v is None for v in values):
        return fallback(graph, node)
    start, limit, delta = (float(v.reshape(-1)[0]) for v in values)
    return [(max(0, math.ceil((limit - start) / delta)),)]


def einsum_rule(graph, node, ins):
    return fallback(graph, node)


# Sequences (the dynamo exporter writes torch.chunk/split as SplitToSequence + SequenceAt):
# their element shapes live in ``graph.sequences``; the sequence itself has no tensor shape.

def split_to_sequence_rule(graph, node, ins):
    x = ins[0]
    a = attrs(node)
    axis = a.get("axis", 0)
    axis = axis + len(x) if axis < 0 else axis
    split = graph.small_value(node.input[1]) if len(node.input) > 1 and node.input[1] else None
    if len(node.input) > 1 and node.input[1] and split is None:
        return [None]
    if split is None:
        sizes, keep = [1] * x[axis], bool(a.get("keepdims", 1))
    elif split.ndim == 0:
        chunk = int(split)
        sizes, keep = [min(chunk, x[axis] - i) for i in range(0, x[axis], chunk)], True
    else:
        sizes, keep = [int(v) for v in split], True
    shapes = []
    for size in sizes:
        shape = list(x)
        shape[axis] = size
        shapes.append(tuple(shape) if keep else tuple(shape[:axis] + shape[axis + 1:]))
    graph.sequences[node.output[0]] = shapes
    return [None]


def sequence_at_rule(graph, node, ins):
    shapes = graph.sequences.get(node.input[0])
    position = graph.small_value(node.input[1])
    if shapes is None or position is None:
        return fallback(graph, node)
    return [shapes[int(position)]]


def sequence_construct_rule(graph, node, ins):
    if any(s is None for s in ins):
        return [None]
    graph.sequences[node.output[0]] = list(ins)
    return [None]


def concat_from_sequence_rule(graph, node, ins):
    shapes = graph.sequences.get(node.input[0])
    if not shapes:
        return fallback(graph, node)
    a = attrs(node)
    axis = a["axis"]
    if a.get("new_axis", 0):
        axis = axis + len(shapes[0]) + 1 if axis < 0 else axis
        out = list(shapes[0])
        out.insert(axis, len(shapes))
        return [tuple(out)]
    axis = axis + len(shapes[0]) if axis < 0 else axis
    out = list(shapes[0])
    out[axis] = sum(s[axis] for s in shapes)
    return [tuple(out)]


RULES = {
    "Conv": conv_rule, "ConvTranspose": conv_transpose_rule, "Gemm": gemm_rule,
    "MatMul": matmul_rule, "Flatten": flatten_rule, "Reshape": reshape_rule,
    "Transpose": transpose_rule, "Concat": concat_rule, "Split": split_rule, "Slice": slice_rule,
    "Squeeze": squeeze_rule, "Unsqueeze": unsqueeze_rule, "Pad": pad_rule,
    "Resize": resize_rule, "Upsample": resize_rule, "Gather": gather_rule, "Shape": shape_rule,
    "Size": lambda g, n, i: [()], "Expand": expand_rule, "Tile": tile_rule,
    "ConstantOfShape": constant_of_shape_rule, "ArgMax": argmax_rule, "ArgMin": argmax_rule,
    "DepthToSpace": depth_space_rule, "SpaceToDepth": depth_space_rule,
    "LayerNormalization": layer_norm_rule, "TopK": topk_rule, "Range": range_rule,
    "GatherElements": lambda g, n, i: [i[1]], "Einsum": einsum_rule,
    "SplitToSequence": split_to_sequence_rule, "SequenceAt": sequence_at_rule,
    "SequenceConstruct": sequence_construct_rule,
    "ConcatFromSequence": concat_from_sequence_rule,
    "LSTM": recurrent_rule, "GRU": recurrent_rule, "RNN": recurrent_rule,
    # quantized forms check the same weight dims as their float ops
    "ConvInteger": conv_rule, "QLinearConv": functools.partial(conv_rule, w_index=3),
    "MatMulInteger": matmul_rule, "QLinearMatMul": functools.partial(matmul_rule, b_index=3),
}


def _qlinear_binary(graph, node, ins):
    """QLinearAdd/QLinearMul: (A, A_scale, A_zp, B, B_scale, B_zp, C_scale, C_zp)."""
    if ins[3] is None:
        return [None]
    return [broadcast(ins[0], ins[3])]


def _qlinear_concat(graph, node, ins):
    """QLinearConcat: (Y_scale, Y_zp, then (X, X_scale, X_zp) per input)."""
    return concat_rule(graph, node, ins[2::3])


def _dynamic_quantize_lstm(graph, node, ins):
    """DynamicQuantizeLSTM (quantize_dynamic's LSTM): an LSTM whose W and R are stored
    transposed, [dirs, input, 4*hidden]."""
    w = ins[1]
    return recurrent_rule(graph, node, [ins[0], None if w is None else (w[0], w[2], w[1])])


# onnxruntime's quantized ops (what its quantizer writes in QOperator format); onnx's own
# shape inference does not know this domain.
MICROSOFT_RULES = {
    "DynamicQuantizeLSTM": _dynamic_quantize_lstm,
    "QLinearAdd": _qlinear_binary, "QLinearMul": _qlinear_binary,
    "QLinearGlobalAveragePool": lambda g, n, i: [
        (i[0][0], *[1] * (len(i[0]) - 2), i[0][-1]) if any(
            a.name == "channels_last" and a.i for a in n.attribute) else
        (i[0][0], i[0][1], *[1] * (len(i[0]) - 2))],
    "QLinearAveragePool": pool_rule, "QLinearConcat": _qlinear_concat,
    "QLinearSigmoid": unary_rule, "QLinearLeakyRelu": unary_rule, "QLinearSoftmax": unary_rule,
    "QuantizeLinear": unary_rule, "DequantizeLinear": unary_rule,
    "QGemm": lambda g, n, i: gemm_rule(g, n, [i[0], i[3]]),
}


# ---- dtypes -----------------------------------------------------------------------------------

def infer_dtypes(graph: Graph, node: onnx.NodeProto) -> list[int]:
    op = node.op_type
    a = None
    first = graph.dtypes.get(node.input[0], 0) if node.input else 0
    if op in INT64_OUT:
        return [T.INT64] * len(node.output)
    if op in BOOL_OUT:
        return [T.BOOL]
    if op == "Cast":
        return [attrs(node)["to"]]
    if op == "CastLike":
        return [graph.dtypes.get(node.input[1], 0)]
    if op == "ConstantOfShape":
        a = attrs(node)
        return [a["value"].data_type if "value" in a else T.FLOAT]
    if op == "Where":
        return [graph.dtypes.get(node.input[1], 0)]
    if op == "TopK":
        return [first, T.INT64]
    if op == "QuantizeLinear":
        zero = node.input[2] if len(node.input) > 2 else ""
        return [graph.dtypes.get(zero, T.UINT8) if zero else T.UINT8]
    if op == "DequantizeLinear":
        return [graph.dtypes.get(node.input[1], T.FLOAT)]
    if op in ("ConvInteger", "MatMulInteger"):
        return [T.INT32]
    if op in ("QLinearConv", "QLinearMatMul"):  # the output's zero point says its type
        return [graph.dtypes.get(node.input[7], T.UINT8) if len(node.input) > 7 else T.UINT8]
    if op in ("MaxPool",) and len(node.output) > 1:
        return [first, T.INT64]
    if op == "Dropout" and len(node.output) > 1:
        return [first, T.BOOL]
    return [first] * len(node.output)


# ---- constant folding of small shape arithmetic ----------------------------------------------

def _np_binary(fn):
    return lambda node, v: [fn(v[0], v[1])]


def _int_div(a, b):
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return np.trunc(a / b).astype(a.dtype)
    return (a / b).astype(a.dtype)


def _fold_slice(graph, node, v):
    params = slice_params(graph, node, v[0].shape)
    if params is None:
        return None
    index = [slice(None)] * v[0].ndim
    for axis, start, end, step in zip(*params):
        index[axis] = slice(start, end, step)
    return [v[0][tuple(index)]]


def _fold_concat(node, v):
    return [np.concatenate([np.atleast_1d(x) if x.ndim == 0 else x for x in v],
                           axis=attrs(node)["axis"])]


FOLDERS = {
    "Add": _np_binary(np.add), "Sub": _np_binary(np.subtract), "Mul": _np_binary(np.multiply),
    "Div": _np_binary(_int_div), "Equal": _np_binary(np.equal), "Min": _np_binary(np.minimum),
    "Max": _np_binary(np.maximum), "Less": _np_binary(np.less), "Greater": _np_binary(np.greater),
    "Mod": _np_binary(np.mod), "Pow": _np_binary(lambda a, b: np.power(a, b).astype(a.dtype)),
    "Neg": lambda node, v: [-v[0]], "Abs": lambda node, v: [np.abs(v[0])],
    "Floor": lambda node, v: [np.floor(v[0])], "Ceil": lambda node, v: [np.ceil(v[0])],
    "Sqrt": lambda node, v: [np.sqrt(v[0])], "Identity": lambda node, v: [v[0]],
    "Not": lambda node, v: [np.logical_not(v[0])],
    "Cast": lambda node, v: [v[0].astype(onnx.helper.tensor_dtype_to_np_dtype(attrs(node)["to"]))],
    "Concat": _fold_concat,
    "Where": lambda node, v: [np.where(v[0], v[1], v[2])],
    "Range": lambda node, v: [np.arange(v[0], v[1], v[2]).astype(v[0].dtype)],
    "ReduceProd": lambda node, v: [np.prod(v[0], keepdims=bool(attrs(node).get("keepdims", 1)))],
}


def fold(graph: Graph, node: onnx.NodeProto) -> None:
    """Compute small output values (shape arithmetic) when all inputs are known."""
    op = node.op_type
    out = node.output[0] if node.output else ""
    if not out:
        return
    if op == "Shape":
        shape = graph.shapes.get(node.input[0])
        if shape is not None:
            a = attrs(node)
            dims = shape[slice(a.get("start", 0), a.get("end", len(shape)))]
            graph.values[out] = np.array(dims, dtype=np.int64)
        return
    if op == "Size":
        shape = graph.shapes.get(node.input[0])
        if shape is not None:
            graph.values[out] = np.array(int(np.prod(shape)), dtype=np.int64)
        return
    if op == "ConstantOfShape":
        shape = graph.shapes.get(out)
        if shape is not None and int(np.prod(shape)) <= MAX_FOLD_ELEMENTS:
            a = attrs(node)
            fill = numpy_helper.to_array(a["value"]).reshape(-1)[0] if "value" in a \
                else np.float32(0)
            graph.values[out] = np.full(shape, fill)
        return
    named = [name for name in node.input if name]
    if not named or any(name not in graph.values and name not in graph.consts
                        for name in named):
        return  # most nodes read a computed tensor: nothing to fold, decided without decoding
    values = [graph.small_value(name) if name else None for name in node.input]
    present = [v for name, v in zip(node.input, values) if name]
    if not present or any(v is None for v in present):
        return
    try:
        result = _fold_structural(graph, node, values)
        if result is None and op in FOLDERS:
            result = FOLDERS[op](node, values)
    except Exception:
        return  # folding is an optimisation; the shape rules already ran
    if result is None:
        return
    for name, value in zip(node.output, result):
        value = np.asarray(value)
        if name and value.size <= MAX_FOLD_ELEMENTS:
            graph.values[name] = value


def _fold_structural(graph, node, v):
    op = node.op_type
    if op in ("Gather",):
        return [np.take(v[0], v[1].astype(np.int64), axis=attrs(node).get("axis", 0))]
    if op in ("Unsqueeze", "Squeeze", "Reshape", "Flatten", "Expand", "Transpose", "Tile"):
        shape = graph.shapes.get(node.output[0])
        if shape is None:
            return None
        if op == "Transpose":
            return [np.transpose(v[0], attrs(node).get("perm"))]
        if op == "Expand":
            return [np.broadcast_to(v[0], shape).copy()]
        if op == "Tile":
            return [np.tile(v[0], v[1])]
        return [v[0].reshape(shape)]
    if op == "Slice":
        return _fold_slice(graph, node, v)
    return None


# ---- fallback: onnx shape inference on a one-node model -------------------------------------

def fallback(graph: Graph, node: onnx.NodeProto) -> list[Shape | None]:
    """Ask onnx's shape inference about one node, its inputs given as typed graph inputs."""
    inputs, initializers = [], []
    for name in node.input:
        if not name:
            continue
        small = graph.small_value(name)
        dtype = graph.dtypes.get(name, T.FLOAT)
        if small is not None:
            initializers.append(numpy_helper.from_array(np.asarray(small), name))
        shape = graph.shapes.get(name)
        inputs.append(helper.make_tensor_value_info(name, dtype, shape))
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    mini = helper.make_graph([node], "one_node", inputs, outputs, initializers)
    model = helper.make_model(mini, opset_imports=list(graph.model.opset_import),
                              ir_version=graph.model.ir_version)
    for function in graph.model.functions:
        model.functions.append(function)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:
        return [None] * len(node.output)
    known: dict[str, tuple[int, ...] | None] = {}
    for value in inferred.graph.output:
        tensor_type = value.type.tensor_type
        if not tensor_type.HasField("shape"):
            known[value.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        known[value.name] = None if None in dims else tuple(dims)
        if tensor_type.elem_type:
            graph.dtypes.setdefault(value.name, tensor_type.elem_type)
    return [known.get(name) for name in node.output]
