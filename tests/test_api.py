"""The public Python API: the same figures as the CLI, results that round-trip, one error type."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

import onnxscale
from onnxscale.complexity import analyze as count
from onnxscale.graph import Graph

from .conftest import REPO, ort_run, run_cli


def test_import_is_cheap():
    """``import onnxscale`` loads neither onnx nor onnxruntime (the CLI pays only for what a
    command needs)."""
    code = "import sys, onnxscale; print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy') " \
           "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, check=True).stdout
    assert out.strip() == "[]"


def test_analyze_equals_the_cli():
    analysis = onnxscale.analyze("zoo:regnety-400mf")
    cli = json.loads(run_cli("analyze", "zoo:regnety-400mf", "--json", check=True).stdout)
    assert analysis.to_dict() == cli
    assert (analysis.flops, analysis.params, analysis.acts) == (cli["flops"], cli["params"],
                                                                cli["acts"])
    assert sum(layer["flops"] for layer in analysis.layers) == analysis.flops


def test_models_in_memory_and_input_shapes(tmp_path):
    proto = onnx.load(onnxscale.scale("zoo:resnet-18", width=0.5).save(tmp_path / "r.onnx"))
    proto.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    proto.graph.input[0].type.tensor_type.shape.dim[3].dim_param = "w"
    by_dict = onnxscale.analyze(proto, {"input": [1, 3, 160, 160]})
    by_text = onnxscale.analyze(proto, ["input:1x3x160x160"])
    assert by_dict.flops == by_text.flops and by_dict.inputs == {"input": [1, 3, 160, 160]}
    with pytest.raises(onnxscale.Error, match="dims must be positive"):
        onnxscale.analyze(proto, {"input": [1, 3, -1, 160]})


def test_plan_counts_what_scale_writes(tmp_path):
    planned = onnxscale.plan("zoo:efficientnet-b0", strategy="dWr", flops=2)
    result = onnxscale.scale("zoo:efficientnet-b0", strategy="dWr", flops="2x")
    assert planned.scaled == result.scaled and planned.multipliers == result.multipliers
    assert abs(result.scaled.flops / result.base.flops - 2) < 0.015
    path = result.save(tmp_path / "b0.onnx")
    written = count(Graph(onnx.load(path)))
    assert (written.flops, written.params, written.acts) == \
        (result.scaled.flops, result.scaled.params, result.scaled.acts)
    summary = result.to_dict()
    assert summary["output"] == str(path) and summary["strategy"]["name"] == "dWr"
    cli = json.loads(run_cli("scale", "zoo:efficientnet-b0", "--strategy", "dWr", "--flops",
                             "2x", "-o", str(tmp_path / "cli.onnx"), "--json",
                             check=True).stdout)
    assert {k: v for k, v in cli.items() if k != "output"} == \
        {k: v for k, v in summary.items() if k != "output"}


def test_scaled_model_in_memory_preserves_the_function():
    result = onnxscale.scale("zoo:resnet-18", depth=2, width=1.5)
    assert result.exact and result.output is None
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224),
                                                               dtype=np.float32)}
    base = ort_run(onnxscale.api.load("zoo:resnet-18").proto, feeds)[0]
    scaled = ort_run(result.proto, feeds)[0]
    assert np.linalg.norm(scaled - base) / np.linalg.norm(base) < 1e-4


@pytest.mark.parametrize("kwargs, message", [
    ({"width": -1.0}, "width=-1.0: must be a finite positive number"),
    ({"width": float("nan")}, "must be a finite positive number"),
    ({"strategy": "dWr"}, "need a flops target"),
    ({"strategy": "dWr,dw", "flops": "2x"}, "one strategy and one flops target per call"),
    ({"strategy": "dWr", "flops": "2x", "width": 2.0}, "not both"),
    ({"width": 2.0, "init": "zeros"}, "expected 'preserve' or 'random'"),
    ({"width": 2.0, "batch": 0}, "expected 'dynamic' or a positive integer"),
    ({"strategy": "dWr", "flops": "2x", "tolerance": 2}, "give a fraction in (0, 1)"),
])
def test_bad_arguments_raise_one_error_type(kwargs, message):
    with pytest.raises(onnxscale.UsageError) as error:
        onnxscale.plan("zoo:resnet-18", **kwargs)
    assert isinstance(error.value, onnxscale.Error) and message in str(error.value)
    assert "\n" not in str(error.value)


def test_a_model_that_is_not_one():
    with pytest.raises(onnxscale.Error, match="not int"):
        onnxscale.analyze(3)
    with pytest.raises(onnxscale.Error, match="no such file|does not exist|not found"):
        onnxscale.analyze("missing.onnx")


def test_bench_rows_and_load_results(tmp_path):
    db = tmp_path / "r.db"
    rows = onnxscale.bench(["zoo:resnet-18"], providers=["cpu", "armnn"], threads=1,
                           runs=3, warmup=1, db=db)
    assert [(r.provider, r.available) for r in rows] == [("cpu", True), ("armnn", False)]
    assert isinstance(rows[0], onnxscale.Row) and rows[0].p50_ms > 0
    assert json.loads(json.dumps(rows[0].to_dict()))["runs"] == 3
    assert onnxscale.Row.from_dict(rows[0].to_dict()) == rows[0]
    frame = onnxscale.load_results(db)
    assert list(frame["provider"]) == ["cpu", "armnn"] and frame["p50_ms"][0] > 0
    with pytest.raises(onnxscale.UsageError, match="give db=PATH"):
        onnxscale.bench("zoo:resnet-18", resume=True)


def test_no_submodule_shadows_an_api_function():
    """Importing a submodule binds it on its package: a module named like an API function
    (``onnxscale/bench/``) would replace the function after its first import."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages(onnxscale.__path__, "onnxscale."):
        if info.name.count(".") == 1:
            importlib.import_module(info.name)
    for name in onnxscale.api.__all__:
        assert getattr(onnxscale, name) is getattr(onnxscale.api, name), name
