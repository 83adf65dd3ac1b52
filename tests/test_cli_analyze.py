"""The analyze/zoo commands as a user runs them, and every kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from .conftest import run_cli

PYCLS_TABLE = {  # docs/concepts.md, Complexity (flops within 0.1%: pycls adds SE/fc biases)
    "efficientnet-b0": (385_825_092, 5_288_548, 6_748_036, 224),
    "efficientnet-b1": (686_817_992, 7_794_184, 10_884_328, 240),
    "efficientnet-b2": (993_578_282, 9_109_994, 13_832_834, 260),
    "efficientnet-b3": (1_827_162_472, 12_233_232, 23_831_296, 300),
    "regnety-400mf": (401_849_056, 4_344_144, 3_892_496, 224),
    "regnety-800mf": (797_183_328, 6_263_168, 5_249_888, 224),
}


@pytest.mark.parametrize("name", list(PYCLS_TABLE))
def test_zoo_models_match_pycls(name):
    flops, params, acts, res = PYCLS_TABLE[name]
    result = run_cli("analyze", f"zoo:{name}", "--json", check=True)
    report = json.loads(result.stdout)
    assert report["params"] == params and report["acts"] == acts
    assert abs(report["flops"] - flops) / flops < 1e-3
    assert report["inputs"] == {"input": [1, 3, res, res]}
    first = report["layers"][0]
    assert set(first) >= {"name", "op", "output_shape", "flops", "params", "acts"}
    assert sum(layer["flops"] for layer in report["layers"]) == report["flops"]
    assert sum(stage["acts"] for stage in report["stages"]) == report["acts"]
    assert "Sigmoid" in report["uncounted"] or "Relu" in report["uncounted"]


def test_table_output_and_layers():
    result = run_cli("analyze", "zoo:regnety-400mf", "--layers", check=True)
    assert "Complexity per stage" in result.stdout and "s1.b1.f.a" in result.stdout.replace("\n", "")
    assert "401,842,848" in result.stdout
    assert "not counted" in result.stdout


def test_version_and_help():
    assert run_cli("--version").stdout.startswith("onnxscale, version")
    for command in (["--help"], ["analyze", "--help"], ["zoo", "list", "--help"],
                    ["zoo", "export", "--help"], ["scale", "--help"]):
        result = run_cli(*command)
        assert result.returncode == 0 and "Usage" in result.stdout


def test_zoo_list_and_export(tmp_path):
    listing = json.loads(run_cli("zoo", "list", "--json", check=True).stdout)
    names = [m["name"] for m in listing["models"]]
    assert {"efficientnet-b0", "efficientnet-b3", "regnety-400mf", "regnety-800mf",
            "regnetz-500mf", "resnet-50"} <= set(names)
    out = tmp_path / "r50.onnx"
    run_cli("zoo", "export", "resnet-50", "-o", str(out), check=True)
    onnx.checker.check_model(onnx.load(str(out)))
    report = json.loads(run_cli("analyze", str(out), "--json", check=True).stdout)
    assert report["params"] == 25_557_032


def small_conv_model(dims=("N", 3, "H", "W"), weight_in=3) -> onnx.ModelProto:
    weight = numpy_helper.from_array(np.ones((8, weight_in, 3, 3), np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv1")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], [weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_symbolic_dims_need_input_shape(tmp_path):
    path = tmp_path / "dyn.onnx"
    onnx.save(small_conv_model(), str(path))
    result = run_cli("analyze", str(path))
    assert result.returncode == 1
    assert "'x'" in result.stderr and "--input-shape" in result.stderr
    report = json.loads(run_cli("analyze", str(path), "--input-shape", "x:1x3x32x32", "--json",
                                check=True).stdout)
    assert report["flops"] == 8 * 27 * 32 * 32 and report["inputs"] == {"x": [1, 3, 32, 32]}
    # the batch dim alone may stay symbolic: it defaults to 1
    onnx.save(small_conv_model(("N", 3, 16, 16)), str(path))
    report = json.loads(run_cli("analyze", str(path), "--json", check=True).stdout)
    assert report["inputs"] == {"x": [1, 3, 16, 16]}


def write(path, data: bytes):
    path.write_bytes(data)
    return str(path)


def external_outside(tmp_path):
    model = small_conv_model((1, 3, 8, 8))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="../secret.bin")
    (tmp_path / "secret.bin").write_bytes(b"\0" * 8 * 27 * 4)
    folder = tmp_path / "model"
    folder.mkdir()
    return write(folder / "m.onnx", model.SerializeToString())


BAD_INPUTS = {
    "missing file": (lambda p: str(p / "nope.onnx"), "no such file"),
    "directory": (lambda p: str(p), "is a directory"),
    "empty file": (lambda p: write(p / "e.onnx", b""), "empty"),
    "random bytes": (lambda p: write(p / "r.onnx", np.random.default_rng(0).bytes(4096)),
                     "not an ONNX model"),
    "text": (lambda p: write(p / "t.onnx", b"hello, this is not a model\n" * 20),
             "not an ONNX model"),
    "truncated": (lambda p: write(p / "tr.onnx",
                                  small_conv_model((1, 3, 8, 8)).SerializeToString()[:150]),
                  "not an ONNX model"),
    "external data outside": (external_outside, "outside the model's folder"),
    "inconsistent shapes": (lambda p: write(p / "bad.onnx", small_conv_model(
        (1, 3, 8, 8), weight_in=4).SerializeToString()), "conv1"),
    "unknown zoo": (lambda p: "zoo:efficientnet-b9", "unknown zoo model"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_gives_one_line_error(tmp_path, case):
    make, expected = BAD_INPUTS[case]
    result = run_cli("analyze", make(tmp_path))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("spec", ["x:1x3xAx4", "x=1x3", "x:0x3x8x8", "x:"])
def test_malformed_input_shape(tmp_path, spec):
    path = tmp_path / "m.onnx"
    onnx.save(small_conv_model((1, 3, 8, 8)), str(path))
    result = run_cli("analyze", str(path), "--input-shape", spec)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "--input-shape" in result.stderr


def test_input_shape_errors_name_the_input(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(small_conv_model((1, 3, 8, 8)), str(path))
    wrong_name = run_cli("analyze", str(path), "--input-shape", "y:1x3x8x8")
    assert wrong_name.returncode == 2 and "'y'" in wrong_name.stderr and "x" in wrong_name.stderr
    wrong_rank = run_cli("analyze", str(path), "--input-shape", "x:1x3x8")
    assert wrong_rank.returncode == 1 and "rank 4" in wrong_rank.stderr


def test_debug_shows_traceback(tmp_path):
    result = run_cli("--debug", "analyze", str(tmp_path / "missing.onnx"))
    assert result.returncode == 1 and "Traceback" in result.stderr


def test_weights_in_constant_nodes_count_like_initializers(tmp_path):
    model = small_conv_model((1, 3, 8, 8))
    weight = model.graph.initializer.pop()
    model.graph.node.insert(0, helper.make_node("Constant", [], ["w"], value=weight))
    path = tmp_path / "const.onnx"
    onnx.save(model, str(path))
    report = json.loads(run_cli("analyze", str(path), "--json", check=True).stdout)
    assert report["params"] == 8 * 27 and report["flops"] == 8 * 27 * 64
