"""Shape propagation checked against what ONNX Runtime actually produces, op by op."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxscale.errors import OnnxscaleError
from onnxscale.graph import Graph

from .conftest import ort_run

F = TensorProto.FLOAT


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def build(nodes, inits, x_shape, opset=17):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, x_shape)],
                              [helper.make_tensor_value_info(nodes[-1].output[0], F, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def assert_shapes_match_runtime(model, x_shape):
    """Expose every intermediate tensor as an output, run ORT, compare with our shapes."""
    graph = Graph(model)
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    names = [o for node in exposed.graph.node for o in node.output
             if o and node.op_type != "Constant" and o != exposed.graph.output[0].name]
    for name in names:
        exposed.graph.output.append(helper.make_empty_tensor_value_info(name))
    results = ort_run(exposed, {"x": np.random.default_rng(0).standard_normal(x_shape)
                                .astype(np.float32)})
    outputs = [o.name for o in exposed.graph.output]
    for name, value in zip(outputs, results):
        assert graph.shapes[name] == value.shape, name
    return graph


WINDOWS = [
    dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(kernel_shape=[4, 4], strides=[3, 3], auto_pad="SAME_LOWER"),
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0], dilations=[2, 2]),
    dict(kernel_shape=[5, 3], auto_pad="VALID"),
]


@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
def test_window_ops(op, window):
    window = dict(window)
    kernel = window["kernel_shape"]
    if op == "Conv":
        inits = [const("w", np.ones((4, 3, *kernel), np.float32))]
        node = helper.make_node("Conv", ["x", "w"], ["y"], **window)
    else:
        inits = []
        if op == "AveragePool":
            window.pop("dilations", None)
        node = helper.make_node(op, ["x"], ["y"], **window)
    assert_shapes_match_runtime(build([node], inits, [1, 3, 17, 22]), [1, 3, 17, 22])


@pytest.mark.parametrize("ceil_mode", [0, 1])
def test_pool_ceil_mode(ceil_mode):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                            ceil_mode=ceil_mode)
    assert_shapes_match_runtime(build([node], [], [1, 2, 14, 15]), [1, 2, 14, 15])


def test_grouped_and_transposed_convs():
    inits = [const("wg", np.ones((8, 2, 3, 3), np.float32)),
             const("wt", np.ones((8, 3, 3, 3), np.float32))]
    nodes = [helper.make_node("Conv", ["x", "wg"], ["g"], group=4, pads=[1, 1, 1, 1]),
             helper.make_node("ConvTranspose", ["g", "wt"], ["t"], strides=[2, 2],
                              output_padding=[1, 0], pads=[1, 1, 1, 1])]
    assert_shapes_match_runtime(build(nodes, inits, [1, 8, 9, 10]), [1, 8, 9, 10])


def test_shape_arithmetic_and_data_movement():
    """Shape -> Gather -> Concat -> Reshape, Slice with negative steps, Split, Resize, Pad."""
    i64 = np.int64
    inits = [const("idx", np.array([0, 1], i64)), const("minus1", np.array([-1], i64)),
             const("starts", np.array([-1, 1], i64)), const("ends", np.array([-100, 7], i64)),
             const("axes", np.array([2, 3], i64)), const("steps", np.array([-2, 3], i64)),
             const("split", np.array([1, 3], i64)), const("pads", np.array([0, 0, 1, 2, 0, 0, 3, 4], i64)),
             const("scales", np.array([1, 1, 2, 1.5], np.float32)),
             const("sizes", np.array([1, 3, 5, 7], i64)), const("roi", np.array([], np.float32)),
             const("shape4", np.array([1, 1, 1, 1], i64))]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "idx"], ["nc"]),
        helper.make_node("Concat", ["nc", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["flat"]),
        helper.make_node("Slice", ["x", "starts", "ends", "axes", "steps"], ["sl"]),
        helper.make_node("Split", ["sl", "split"], ["a", "b"], axis=1),
        helper.make_node("Pad", ["b", "pads"], ["p"]),
        helper.make_node("Resize", ["p", "roi", "scales"], ["up"], mode="nearest"),
        helper.make_node("Resize", ["up", "", "", "sizes"], ["sz"], mode="linear"),
        helper.make_node("Transpose", ["sz"], ["tr"], perm=[0, 2, 3, 1]),
        helper.make_node("Flatten", ["tr"], ["fl"], axis=2),
        helper.make_node("Unsqueeze", ["fl", "idx"], ["un"]),
        helper.make_node("Squeeze", ["un", "idx"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["rm"], axes=[1], keepdims=0),
        helper.make_node("Expand", ["x", "shape4"], ["ex"]),
        helper.make_node("GlobalAveragePool", ["ex"], ["gap"]),
    ]
    assert_shapes_match_runtime(build(nodes, inits, [1, 4, 12, 9]), [1, 4, 12, 9])


def test_old_opset_attribute_forms():
    """Opset 9: Upsample with a scales input, Pad/Slice/Squeeze/Unsqueeze with attributes."""
    inits = [const("scales", np.array([1, 1, 2, 2], np.float32))]
    nodes = [helper.make_node("Upsample", ["x", "scales"], ["up"], mode="nearest"),
             helper.make_node("Pad", ["up"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1]),
             helper.make_node("Slice", ["p"], ["s"], starts=[1], ends=[-1], axes=[2]),
             helper.make_node("Unsqueeze", ["s"], ["u"], axes=[0]),
             helper.make_node("Squeeze", ["u"], ["q"], axes=[0])]
    assert_shapes_match_runtime(build(nodes, inits, [1, 2, 5, 6], opset=9), [1, 2, 5, 6])


def test_matmul_and_gemm_heads():
    inits = [const("wm", np.ones((6, 5), np.float32)), const("wg", np.ones((7, 30), np.float32)),
             const("b", np.ones((7,), np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "wm"], ["m"]),
             helper.make_node("Flatten", ["m"], ["f"]),
             helper.make_node("Gemm", ["f", "wg", "b"], ["y"], transB=1)]
    graph = assert_shapes_match_runtime(build(nodes, inits, [1, 2, 3, 6]), [1, 2, 3, 6])
    assert graph.shapes["y"] == (1, 7)


def test_unknown_op_falls_back_to_onnx_inference():
    nodes = [helper.make_node("Einsum", ["x", "x"], ["e"], equation="bchw,bchw->bc"),
             helper.make_node("Relu", ["e"], ["y"])]
    graph = Graph(build(nodes, [], [2, 3, 4, 5]))
    assert graph.shapes["y"] == (2, 3)


def test_inconsistent_weights_are_reported_by_node():
    inits = [const("w", np.ones((7, 30), np.float32))]
    model = build([helper.make_node("Flatten", ["x"], ["f"]),
                   helper.make_node("Gemm", ["f", "w"], ["y"], transB=1, name="fc")],
                  inits, [1, 2, 3, 6])
    with pytest.raises(OnnxscaleError, match="'fc'.*36 features.*expects 30"):
        Graph(model)


def test_nhwc_input_fixed_batch_and_networkx_view():
    """A TF-style graph: NHWC input transposed to NCHW before the first conv."""
    inits = [const("w", np.ones((4, 3, 3, 3), np.float32))]
    nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
             helper.make_node("Conv", ["nchw", "w"], ["c"], strides=[2, 2], name="conv"),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    graph = assert_shapes_match_runtime(build(nodes, inits, [2, 33, 31, 3]), [2, 33, 31, 3])
    assert graph.inputs == {"x": [2, 33, 31, 3]}  # a fixed batch of 2 stays 2
    view = graph.nx
    assert list(view.successors("x")) == ["to_nchw"]
    assert view.edges["to_nchw", "conv", "nchw"]["shape"] == (2, 3, 33, 31)
    assert view.nodes["conv"]["op"] == "Conv" and "w" not in view  # weights are not nodes
    assert list(view.successors("relu")) == ["output:y"]
