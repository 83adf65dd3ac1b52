"""Tests for `onnxscale bench`: provider names and options, inputs, the timing method, rows for
unavailable providers, the CLI (CliRunner and a real subprocess) and Ctrl-C mid-run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxscale.runtime import BenchSettings, run_bench
from onnxscale.runtime import providers as P
from onnxscale.runtime.inputs import prepare, random_inputs, to_fp16
from onnxscale.runtime.runner import measure
from onnxscale.runtime.timing import settled, summarize, time_runs, warm_up
from onnxscale.cli import main
from onnxscale.errors import OnnxscaleError, UsageError

REPO = Path(__file__).resolve().parent.parent
FAST = BenchSettings(threads=1, runs=3, warmup=1)


# -- tiny models ---------------------------------------------------------------------------------

def _save(graph, path: Path) -> Path:
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def cnn(path: Path, batch="N", seed: int = 0, reshape_to: list[int] | None = None,
        hw=(16, 16)) -> Path:
    """Conv-Relu-GlobalAveragePool-Flatten(or Reshape)-MatMul, input x [batch,3,H,W]."""
    rng = np.random.default_rng(seed)
    inits = [nh.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             nh.from_array(rng.standard_normal((4, 5)).astype(np.float32), "fc")]
    nodes = [h.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"]),
             h.make_node("GlobalAveragePool", ["r"], ["p"])]
    if reshape_to is not None:
        inits.append(nh.from_array(np.array(reshape_to, np.int64), "shape"))
        nodes.append(h.make_node("Reshape", ["p", "shape"], ["f"]))
    else:
        nodes.append(h.make_node("Flatten", ["p"], ["f"]))
    nodes.append(h.make_node("MatMul", ["f", "fc"], ["y"]))
    graph = h.make_graph(nodes, "cnn", [h.make_tensor_value_info("x", T.FLOAT, [batch, 3, *hw])],
                         [h.make_tensor_value_info("y", T.FLOAT, [batch, 5])], inits)
    return _save(graph, path)


def two_inputs(path: Path) -> Path:
    """y = x + float(idx) with x float [N,4] and idx int64 [N,4], plus a bool mask input."""
    nodes = [h.make_node("Cast", ["idx"], ["idxf"], to=T.FLOAT),
             h.make_node("Add", ["x", "idxf"], ["s"]),
             h.make_node("Cast", ["mask"], ["maskf"], to=T.FLOAT),
             h.make_node("Mul", ["s", "maskf"], ["y"])]
    graph = h.make_graph(nodes, "two", [h.make_tensor_value_info("x", T.FLOAT, ["N", 4]),
                                        h.make_tensor_value_info("idx", T.INT64, ["N", 4]),
                                        h.make_tensor_value_info("mask", T.BOOL, ["N", 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 4])])
    return _save(graph, path)


@pytest.fixture
def tiny(tmp_path) -> Path:
    return cnn(tmp_path / "tiny.onnx")


def _proto(path: Path) -> onnx.ModelProto:
    return onnx.load(str(path))


def _cuda_works() -> bool:
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover
        return False
    if P.CUDA not in ort.get_available_providers():
        return False
    graph = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, [1])],
                         [h.make_tensor_value_info("y", T.FLOAT, [1])])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    from onnxscale.runtime.session import capture_native_output

    try:
        with capture_native_output():
            session = ort.InferenceSession(model.SerializeToString(), providers=[P.CUDA])
        return session.get_providers()[0] == P.CUDA
    except Exception:
        return False


CUDA_WORKS = _cuda_works()
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA_WORKS, reason="no working CUDA execution provider")
no_cuda = pytest.mark.skipif(CUDA_WORKS, reason="CUDA really works here")


# -- provider names and options --------------------------------------------------------------------

@pytest.mark.parametrize("name, full", [
    ("cpu", "CPUExecutionProvider"), ("CUDA", "CUDAExecutionProvider"),
    ("tensorrt", "TensorrtExecutionProvider"), ("trt", "TensorrtExecutionProvider"),
    ("openvino", "OpenVINOExecutionProvider"), ("dml", "DmlExecutionProvider"),
    ("coreml", "CoreMLExecutionProvider"), ("rocm", "ROCMExecutionProvider"),
    ("migraphx", "MIGraphXExecutionProvider"), ("xnnpack", "XnnpackExecutionProvider"),
    ("CUDAExecutionProvider", "CUDAExecutionProvider"),
    ("cudaexecutionprovider", "CUDAExecutionProvider"),
    ("MyVendorExecutionProvider", "MyVendorExecutionProvider"),
])
def test_resolve_provider(name, full):
    assert P.resolve_provider(name) == full


def test_unknown_provider_suggests():
    with pytest.raises(UsageError, match="did you mean cuda"):
        P.resolve_provider("cdua")
    with pytest.raises(UsageError, match="unknown execution provider"):
        P.resolve_provider("quantum")


def test_parse_providers_and_short_names():
    assert P.parse_providers("cpu, cuda,cpu,CUDAExecutionProvider") == [P.CPU, P.CUDA]
    assert P.parse_providers(("cpu", "tensorrt")) == [P.CPU, P.TENSORRT]
    assert [P.short_name(p) for p in (P.CPU, P.TENSORRT, "FooExecutionProvider")] == \
        ["cpu", "tensorrt", "foo"]
    with pytest.raises(UsageError):
        P.parse_providers("cpu,,cuda")


def test_parse_provider_options():
    per, session = P.parse_provider_options(
        ["cuda:device_id=1", "tensorrt:trt_fp16_enable=1", "session.intra_op.allow_spinning=0",
         "tensorrt:trt_engine_cache_path=/c:/x=y"], [P.CPU, P.CUDA, P.TENSORRT])
    assert per == {P.CUDA: {"device_id": "1"},
                   P.TENSORRT: {"trt_fp16_enable": "1", "trt_engine_cache_path": "/c:/x=y"}}
    assert session == {"session.intra_op.allow_spinning": "0"}
    # a bare option goes to the one non-CPU provider ...
    assert P.parse_provider_options(["device_id=1"], [P.CPU, P.CUDA]) == (
        {P.CUDA: {"device_id": "1"}}, {})
    # ... and is refused where it would reach several: onnxruntime refuses keys a provider
    # does not know (CUDA has no trt_fp16_enable), so the session would fail
    with pytest.raises(UsageError, match="exactly one non-CPU provider.*write cuda:"):
        P.parse_provider_options(["trt_fp16_enable=1"], [P.CPU, P.CUDA, P.TENSORRT])
    assert P.parse_provider_options(["cpu:arena=0"], [P.CPU]) == ({P.CPU: {"arena": "0"}}, {})


def test_tensorrt_options_are_what_onnxruntime_takes(tiny, tmp_path):
    """TensorRT's switches are True/False (its Python binding refuses 1/0, which CUDA's take);
    CUDA follows TensorRT in the chain; the engine cache is named after the model's content,
    input dims and precision (TensorRT names engines after node names, which width-scaled
    variants share)."""
    from onnxscale.runtime.session import provider_chain

    settings = BenchSettings(precision="fp16", cuda_graph=True, cache_dir=tmp_path,
                             provider_options={P.TENSORRT: {"trt_dump_subgraphs_enable": "1",
                                                            "trt_max_workspace_size": "1"}})
    prepared = prepare(_proto(tiny), 2, {}, "t")
    chain, options = provider_chain(P.TENSORRT, prepared, settings, "hash-a")
    assert [name for name, _ in chain] == [P.TENSORRT, P.CUDA, P.CPU]
    switches = {k: v for k, v in options.items() if k.endswith("_enable")}
    assert switches == {"trt_engine_cache_enable": "True", "trt_timing_cache_enable": "True",
                        "trt_fp16_enable": "True", "trt_cuda_graph_enable": "True",
                        "trt_dump_subgraphs_enable": "True"}
    assert options["trt_max_workspace_size"] == "1"  # not a switch: as given
    prefix = options["trt_engine_cache_prefix"]
    assert provider_chain(P.TENSORRT, prepared, settings, "hash-a")[1][
        "trt_engine_cache_prefix"] == prefix
    fp32 = BenchSettings(cache_dir=tmp_path)
    others = [provider_chain(P.TENSORRT, prepared, settings, "hash-b")[1],
              provider_chain(P.TENSORRT, prepare(_proto(tiny), 4, {}, "t"), settings,
                             "hash-a")[1],
              provider_chain(P.TENSORRT, prepared, fp32, "hash-a")[1]]
    assert len({prefix, *(o["trt_engine_cache_prefix"] for o in others)}) == 4
    cuda_chain, cuda = provider_chain(P.CUDA, prepared, settings, "hash-a")
    assert [name for name, _ in cuda_chain] == [P.CUDA, P.CPU]
    assert cuda == {"enable_cuda_graph": "1"}  # CUDA's options take 1


@pytest.mark.parametrize("spec, message", [
    ("device_id", "expected \\[PROVIDER:\\]KEY=VALUE"),
    ("=1", "is not an option name"),
    ("cuda:=1", "is not an option name"),
    ("bogus:key=1", "unknown execution provider"),
    ("tensorrt:key=1", "not among --provider"),
    ("key=1", "needs exactly one non-CPU provider"),
    ("cpu:session.x=1", "session option"),
])
def test_bad_provider_options(spec, message):
    with pytest.raises(UsageError, match=message):
        P.parse_provider_options([spec], [P.CPU])


def test_availability_and_fallback_reason():
    assert P.availability(P.CPU) is None
    reason = P.availability("OpenVINOExecutionProvider")
    assert "not in this onnxruntime" in reason
    log = ("\x1b[1;31m2026 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
           "/src/provider_bridge_ort.cc:2043 onnxruntime::Provider& Get() [ONNXRuntimeError] : "
           "1 : FAIL : Failed to load library /x/y/libonnxruntime_providers_cuda.so with error: "
           "libcublasLt.so.13: cannot open shared object file: No such file or directory\n"
           "[W:onnxruntime:Default, pybind_state.cc:1295 Create] Failed to create "
           "CUDAExecutionProvider. Require cuDNN 9.* and CUDA 13.*. Please install all deps\n")
    text = P.fallback_reason(P.CUDA, [P.CPU], log)
    assert text.startswith("cuda failed to initialise; the session fell back to cpu: ")
    assert "libonnxruntime_providers_cuda.so with error: libcublasLt.so.13" in text
    assert "/x/y" not in text and "Require cuDNN 9.* and CUDA 13.*" in text
    assert "gave no reason" in P.fallback_reason(P.CUDA, [P.CPU], "")


# -- timing method ---------------------------------------------------------------------------------

def test_summarize():
    stats = summarize([0.001, 0.002, 0.003, 0.004], batch=8)
    assert stats["p50_ms"] == pytest.approx(2.5)
    assert stats["mean_ms"] == pytest.approx(2.5)
    assert stats["min_ms"] == pytest.approx(1.0)
    assert stats["std_ms"] == pytest.approx(np.std([1, 2, 3, 4], ddof=1))
    assert stats["cv"] == pytest.approx(stats["std_ms"] / 2.5)
    assert stats["throughput"] == pytest.approx(8 / 0.0025)
    assert stats["runs"] == 4 and stats["p90_ms"] <= stats["p99_ms"] <= 4.0


def test_settled_and_warm_up():
    assert not settled([1.0] * 9, 5)
    assert settled([1.0] * 10, 5)
    assert not settled([3, 3, 3, 3, 3, 1, 1, 1, 1, 1], 5)
    # a run that gets fast after 6 slow calls: warm-up continues until the windows agree
    calls = []

    def run():
        calls.append(1)
        time.sleep(0.004 if len(calls) <= 6 else 0.0005)

    times, ok = warm_up(run, None, max_seconds=5)
    assert ok and 12 <= len(times) < 200  # medians: more than half of both windows fast
    times, ok = warm_up(run, 3)
    assert ok and len(times) == 3
    times, ok = warm_up(lambda: time.sleep(0.002 * np.random.rand() ** 8), None, max_seconds=0.05)
    assert len(times) >= 1


def test_time_runs():
    assert len(time_runs(lambda: None, 7, None)) == 7
    times = time_runs(lambda: time.sleep(0.001), None, 0.05, min_runs=5)
    assert len(times) >= 5 and sum(times) >= 0.04
    assert len(time_runs(lambda: time.sleep(0.02), None, 0.001, min_runs=3)) == 3


# -- inputs ----------------------------------------------------------------------------------------

def test_prepare_dynamic_and_fixed_batch(tmp_path):
    dyn = _proto(cnn(tmp_path / "d.onnx"))
    p = prepare(dyn, 8, {}, "d")
    assert p.specs[0].dims == [8, 3, 16, 16] and not p.rebatched and p.batch == 8
    assert prepare(dyn, None, {}, "d").batch == 1

    fixed = _proto(cnn(tmp_path / "f.onnx", batch=1))
    p = prepare(fixed, None, {}, "f")
    assert p.batch == 1 and not p.rebatched
    p = prepare(fixed, 4, {}, "f")
    assert p.rebatched and p.specs[0].dims == [4, 3, 16, 16] and p.batch_outputs == ["y"]
    fed_dims = [d.dim_value for d in p.proto.graph.input[0].type.tensor_type.shape.dim]
    assert fed_dims == [4, 3, 16, 16]
    assert fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1  # original intact
    # a model whose fixed batch is 2 defaults to batch 2
    assert prepare(_proto(cnn(tmp_path / "f2.onnx", batch=2)), None, {}, "f2").batch == 2


def test_prepare_symbolic_dims_need_input_shape(tmp_path):
    proto = _proto(cnn(tmp_path / "hw.onnx", hw=("H", "W")))
    expected = r"symbolic dims \[N, 3, H, W\]; fix them with --input-shape x:1x3xHxW"
    with pytest.raises(OnnxscaleError, match=expected):
        prepare(proto, 1, {}, "hw")
    p = prepare(proto, 2, {"": [1, 3, 24, 20]}, "hw")
    assert p.specs[0].dims == [2, 3, 24, 20]
    assert prepare(proto, None, {"x": [3, 3, 8, 8]}, "hw").batch == 3
    with pytest.raises(UsageError, match="'nope', which is not an input"):
        prepare(proto, 1, {"nope": [1, 3, 8, 8]}, "hw")
    with pytest.raises(UsageError, match="3 dims given"):
        prepare(proto, 1, {"x": [1, 8, 8]}, "hw")


def test_prepare_several_inputs_and_dtypes(tmp_path):
    proto = _proto(two_inputs(tmp_path / "two.onnx"))
    p = prepare(proto, 3, {}, "two")
    assert [(s.name, s.dims, s.type_name) for s in p.specs] == [
        ("x", [3, 4], "float"), ("idx", [3, 4], "int64"), ("mask", [3, 4], "bool")]
    feeds = random_inputs(p.specs)
    assert feeds["x"].dtype == np.float32 and feeds["idx"].dtype == np.int64
    assert feeds["mask"].dtype == np.bool_ and feeds["idx"].min() >= 0
    with pytest.raises(UsageError, match="this one has 3: x, idx, mask"):
        prepare(proto, 1, {"": [1, 4]}, "two")


def test_prepare_unbatched_inputs():
    graph = h.make_graph([h.make_node("Relu", ["v"], ["w"])], "g",
                         [h.make_tensor_value_info("v", T.FLOAT, [5])],
                         [h.make_tensor_value_info("w", T.FLOAT, [5])])
    model = h.make_model(graph)
    assert prepare(model, None, {}, "v").batch == 1
    assert prepare(model, 1, {}, "v").specs[0].dims == [5]
    with pytest.raises(OnnxscaleError, match="no input has a batch dimension"):
        prepare(model, 4, {}, "v")


def test_prepare_rejects_string_inputs():
    graph = h.make_graph([h.make_node("Identity", ["s"], ["t"])], "g",
                         [h.make_tensor_value_info("s", T.STRING, [1])],
                         [h.make_tensor_value_info("t", T.STRING, [1])])
    with pytest.raises(OnnxscaleError, match="type string"):
        prepare(h.make_model(graph), 1, {}, "str")


def test_to_fp16(tmp_path):
    proto = _proto(cnn(tmp_path / "m.onnx"))
    half = to_fp16(proto)
    assert all(t.data_type == T.FLOAT16 for t in half.graph.initializer if t.name != "shape")
    assert half.graph.input[0].type.tensor_type.elem_type == T.FLOAT16
    assert half.graph.output[0].type.tensor_type.elem_type == T.FLOAT16
    assert proto.graph.input[0].type.tensor_type.elem_type == T.FLOAT  # original untouched


# -- measuring -------------------------------------------------------------------------------------

def test_measure_cpu_row(tiny):
    proto = _proto(tiny)
    row = measure(prepare(proto, 2, {}, "t"), P.CPU, FAST, model="t", model_hash="h")
    assert row.available and row.status == "ok" and row.reason is None
    assert row.runs == 3 and row.warmup_runs == 1 and row.batch == 2
    for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "std_ms", "cv", "min_ms", "throughput",
                "session_create_ms", "first_run_ms", "peak_host_mb"):
        assert isinstance(getattr(row, key), float) and getattr(row, key) >= 0, key
    assert row.providers_used[0] == P.CPU and row.inputs == {"x": [2, 3, 16, 16]}
    assert json.loads(json.dumps(row.to_dict()))["p50_ms"] == row.p50_ms


def test_measure_io_binding_on_cpu_and_adaptive_warmup(tiny):
    settings = BenchSettings(threads=1, runs=3, warmup=None, io_binding=True)
    row = measure(prepare(_proto(tiny), 1, {}, "t"), P.CPU, settings, model="t", model_hash="h")
    assert row.available and row.io_binding is True and row.warmup_runs >= 10


def test_measure_several_inputs_with_int64(tmp_path):
    proto = _proto(two_inputs(tmp_path / "two.onnx"))
    row = measure(prepare(proto, 5, {}, "two"), P.CPU, FAST, model="two", model_hash="h")
    assert row.available, row.reason
    assert row.inputs == {"x": [5, 4], "idx": [5, 4], "mask": [5, 4]}


def test_measure_fixed_batch_model(tmp_path):
    ok = _proto(cnn(tmp_path / "fixed.onnx", batch=1))
    row = measure(prepare(ok, 3, {}, "fixed"), P.CPU, FAST, model="fixed", model_hash="h")
    assert row.available and row.batch == 3
    assert any("rewritten" in n for n in row.notes)

    baked = _proto(cnn(tmp_path / "baked.onnx", batch=1, reshape_to=[1, 4]))
    assert measure(prepare(baked, 1, {}, "b"), P.CPU, FAST, model="b", model_hash="h").available
    row = measure(prepare(baked, 2, {}, "b"), P.CPU, FAST, model="b", model_hash="h")
    assert not row.available and row.status == "failed"
    assert "fixes its batch" in row.reason and "\n" not in row.reason

    # a Reshape to [1, -1] runs at any batch but silently un-batches the output: caught
    silent = _proto(cnn(tmp_path / "silent.onnx", batch=1, reshape_to=[1, -1]))
    graph = silent.graph
    fc = nh.from_array(np.ones((8, 5), np.float32), "fc")
    graph.initializer[1].CopyFrom(fc)  # [1, 4*2] @ [8, 5] works at batch 2
    row = measure(prepare(silent, 2, {}, "s"), P.CPU, FAST, model="s", model_hash="h")
    assert row.status == "failed" and "output 'y' has shape [1, 5] at batch 2" in row.reason


def test_measure_unavailable_provider(tiny):
    row = measure(prepare(_proto(tiny), 1, {}, "t"), "OpenVINOExecutionProvider", FAST,
                  model="t", model_hash="h")
    assert row.available is False and row.status == "unavailable"
    assert "not in this onnxruntime" in row.reason and row.p50_ms is None


@no_cuda
def test_measure_detects_silent_cpu_fallback(tiny):
    import onnxruntime as ort

    if P.CUDA not in ort.get_available_providers():
        pytest.skip("this onnxruntime build has no CUDA provider to fall back from")
    row = measure(prepare(_proto(tiny), 1, {}, "t"), P.CUDA, FAST, model="t", model_hash="h")
    assert row.available is False and row.status == "unavailable"
    assert "fell back to cpu" in row.reason or "cannot run" in row.reason


def test_measure_fp16_on_cpu_never_raises(tiny):
    settings = BenchSettings(threads=1, runs=3, warmup=1, precision="fp16")
    row = measure(prepare(_proto(tiny), 1, {}, "t"), P.CPU, settings, model="t", model_hash="h")
    assert row.status in ("ok", "failed")
    if row.status == "failed":
        assert "fp16" in row.reason
    else:
        assert row.precision == "fp16"


def test_high_ir_version_is_lowered(tmp_path):
    path = cnn(tmp_path / "ir.onnx")
    proto = _proto(path)
    proto.ir_version = 99
    row = measure(prepare(proto, 1, {}, "ir"), P.CPU, FAST, model="ir", model_hash="h")
    assert row.available, row.reason


# -- CLI -------------------------------------------------------------------------------------------

def _invoke(*args, env=None):
    runner = CliRunner()
    return runner.invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_bench_json(tiny, tmp_path):
    db = tmp_path / "r.db"
    result = _invoke("bench", str(tiny), "--provider", "cpu", "--batch", "1,2", "--runs", "3",
                     "--warmup", "1", "--threads", "1", "--db", str(db), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) >= {"results", "fingerprint"}
    rows = data["results"]
    assert [(r["provider"], r["batch"], r["available"]) for r in rows] == [("cpu", 1, True),
                                                                          ("cpu", 2, True)]
    for key in ("model", "provider", "batch", "available", "reason", "p50_ms", "p90_ms", "p99_ms",
                "mean_ms", "std_ms", "cv", "throughput", "runs"):
        assert key in rows[0]
    fp = data["fingerprint"]
    assert fp["cpu_logical_cores"] >= 1 and fp["ort_version"] and "gpus" in fp and fp["id"]
    assert sqlite3.connect(db).execute("SELECT COUNT(*) FROM results").fetchone()[0] == 2
    units = data["units"]  # every figure says what it is measured in
    assert units["p50_ms"] == units["p95_ms"] == "ms" and units["throughput"] == "items/s"
    assert units["peak_host_mb"] == "MiB"
    assert rows[0]["p50_ms"] <= rows[0]["p95_ms"] <= rows[0]["max_ms"]
    # results --csv: every stored row, one line each, the same figures
    import csv
    import io

    result = _invoke("results", "--db", str(db), "--csv")
    assert result.exit_code == 0
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [int(r["batch"]) for r in table] == [1, 2]
    assert float(table[0]["p50_ms"]) == pytest.approx(rows[0]["p50_ms"])
    assert table[0]["outputs_ok"] == "True" and table[0]["nodes_total"]
    result = _invoke("results", "--db", str(db), "--csv", "--json")
    assert result.exit_code != 0


@no_cuda
def test_cli_cpu_cuda_tensorrt_on_cpu_machine(tiny, tmp_path):
    result = _invoke("bench", str(tiny), "--provider", "cpu,cuda,tensorrt", "--runs", "3",
                     "--warmup", "1", "--db", str(tmp_path / "r.db"), "--json",
                     "--cache-dir", str(tmp_path / "cache"))
    assert result.exit_code == 0, result.output
    rows = {r["provider"]: r for r in json.loads(result.stdout)["results"]}
    assert rows["cpu"]["available"] and rows["cpu"]["p50_ms"] > 0
    for name in ("cuda", "tensorrt"):
        assert rows[name]["available"] is False and rows[name]["reason"]
    # the table view says the same
    result = _invoke("bench", str(tiny), "--provider", "cpu,cuda", "--runs", "3", "--warmup", "1",
                     "--no-save")
    assert result.exit_code == 0 and "unavailable" in result.stdout


def test_cli_table_and_results(tiny, tmp_path):
    db = tmp_path / "r.db"
    result = _invoke("bench", str(tiny), "-p", "cpu", "-b", "1", "--runs", "3", "--warmup", "1",
                     "--db", str(db))
    assert result.exit_code == 0 and "onnxscale bench" in result.stdout
    _invoke("bench", str(tiny), "-p", "cpu", "-b", "1", "--runs", "3", "--warmup", "1",
            "--io-binding", "--db", str(db))
    result = _invoke("results", "--db", str(db), "--json")
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert len(data["results"]) == 2 and len(data["fingerprints"]) == 1
    (entry,) = data["providers"]
    assert set(entry["p50_ms"]) == {"cpu", "cpu+iob"} and entry["speedup"]["cpu"] == 1.0
    result = _invoke("results", "--db", str(db))
    assert result.exit_code == 0 and "cpu+iob" in result.stdout
    result = _invoke("results", "--db", str(tmp_path / "none.db"))
    assert result.exit_code == 1 and "no results database" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--provider", "cdua"], "unknown execution provider"),
    (["--provider-option", "device_id"], "expected [PROVIDER:]KEY=VALUE"),
    (["--provider", "cpu", "--provider-option", "cuda:device_id=0"], "not among --provider"),
    (["--batch", "0"], "--batch '0': must be at least 1"),
    (["--batch", "1,x"], "--batch 'x'"),
    (["--threads", "two"], "expected a whole number"),
    (["--runs", "3", "--seconds", "1"], "one or the other"),
    (["--seconds", "-1"], "positive"),
    (["--warmup", "soon"], "--warmup 'soon'"),
    (["--input-shape", "x:1x3"], "2 dims given"),
])
def test_cli_bad_input_one_line(tiny, args, message):
    result = _invoke("bench", str(tiny), "--no-save", *args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_cli_missing_model(tmp_path):
    result = _invoke("bench", str(tmp_path / "missing.onnx"), "--no-save")
    assert result.exit_code == 1
    assert result.stderr.strip() == f"error: {tmp_path / 'missing.onnx'}: no such file"


def _env(tmp_path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["ONNXSCALE_DB"] = str(tmp_path / "env.db")
    env["ONNXSCALE_CACHE_DIR"] = str(tmp_path / "cache")
    return env


def test_subprocess_bench_json(tiny, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "onnxscale", "bench", str(tiny), "--runs", "3",
                           "--warmup", "1", "--json"], capture_output=True, text=True,
                          env=_env(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # stdout is exactly one JSON object
    assert data["results"][0]["available"] and data["db"] == str(tmp_path / "env.db")
    assert (tmp_path / "env.db").exists()


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: pytest-xdist's workers ignore SIGINT, and an ignored
    signal stays ignored in the processes they start (so bench would never see it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "term", "kill-9"])
@pytest.mark.slow
def test_interrupt_keeps_finished_rows(tmp_path, sig):
    # enough models that a loaded machine (a parallel suite) cannot finish them all between
    # the poll that sees two rows and the signal
    models = [str(cnn(tmp_path / f"m{i}.onnx", seed=i)) for i in range(12)]
    db = tmp_path / "int.db"
    proc = subprocess.Popen([sys.executable, "-m", "onnxscale", "bench", *models, "--seconds",
                             "0.7", "--warmup", "1", "--threads", "1", "--db", str(db), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(tmp_path), preexec_fn=_default_sigint)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                done = sqlite3.connect(db, timeout=5).execute(
                    "SELECT COUNT(*) FROM results").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 2:
                break
        time.sleep(0.1)
    assert proc.poll() is None, "bench finished before it could be interrupted"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 130, err
        assert "Traceback" not in err and out == ""
        assert err.strip().splitlines() == [err.strip().splitlines()[-1]]
        assert err.strip().startswith("error: interrupted: ") and "saved to" in err
    rows = sqlite3.connect(db).execute("SELECT model, available FROM results").fetchall()
    assert 2 <= len(rows) < len(models) and all(available == 1 for _, available in rows)
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_run_bench_orders_and_dedupes_batches(tiny):
    report = run_bench([str(tiny)], [P.CPU, "ArmNNExecutionProvider"], [1, 1, None], FAST)
    assert [(r.batch, r.provider) for r in report.rows] == [(1, "cpu"), (1, "armnn")]
    assert report.planned == 2 and report.fingerprint["id"] == report.rows[0].fingerprint


# -- GPU -------------------------------------------------------------------------------------------

@gpu
@needs_cuda
def test_gpu_cuda_io_binding_device_resident(tiny):
    row = measure(prepare(_proto(tiny), 4, {}, "t"), P.CUDA, FAST, model="t", model_hash="h")
    assert row.available, row.reason
    assert row.io_binding is True and row.providers_used[0] == P.CUDA


@gpu
@needs_cuda
def test_gpu_cuda_graph(tiny):
    settings = BenchSettings(runs=5, warmup=3, cuda_graph=True)
    row = measure(prepare(_proto(tiny), 2, {}, "t"), P.CUDA, settings, model="t", model_hash="h")
    assert row.status in ("ok", "failed"), row
    if row.status == "ok":
        assert row.cuda_graph is True and row.provider_options_effective[
            "enable_cuda_graph"] == "1"


@gpu
@needs_cuda
def test_gpu_fp16_cuda(tiny):
    settings = BenchSettings(runs=3, warmup=1, precision="fp16")
    row = measure(prepare(_proto(tiny), 2, {}, "t"), P.CUDA, settings, model="t", model_hash="h")
    assert row.available, row.reason


@gpu
@needs_cuda
def test_gpu_tensorrt_caches(tiny, tmp_path):
    settings = BenchSettings(runs=3, warmup=1, cache_dir=tmp_path / "cache", precision="fp16")
    row = measure(prepare(_proto(tiny), 1, {}, "t"), P.TENSORRT, settings, model="t",
                  model_hash="h")
    if not row.available:
        pytest.skip(f"TensorRT not usable here: {row.reason}")
    assert row.engine_build_ms is not None
    assert row.provider_options_effective["trt_fp16_enable"] == "True"
    assert any((tmp_path / "cache" / "tensorrt").iterdir())


def test_a_machine_name_is_part_of_the_fingerprint_only_when_set(monkeypatch):
    """$ONNXSCALE_MACHINE tells apart machines the hardware fields cannot (a Ray node, a
    container with a CPU quota); unset, the id is the one stores already hold."""
    from onnxscale.runtime import fingerprint

    monkeypatch.delenv(fingerprint.MACHINE_NAME_ENV, raising=False)
    plain = fingerprint.collect()
    assert "name" not in plain and fingerprint.fingerprint_id(plain) == plain["id"]
    monkeypatch.setenv(fingerprint.MACHINE_NAME_ENV, " a10-cap150 ")
    named = fingerprint.collect()
    assert named["name"] == "a10-cap150" and named["id"] != plain["id"]
    assert fingerprint.label(named).startswith("a10-cap150 / ")
    assert {k: v for k, v in named.items() if k not in ("name", "id")} == \
        {k: v for k, v in plain.items() if k != "id"}
