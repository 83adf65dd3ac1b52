"""Providers beyond this process's onnxruntime build: isolated environments (a real OpenVINO
one, made once), plugin EPs (the real onnxruntime-ep-openvino wheel), where nodes ran, and
whether outputs agree with the CPU fp32 reference."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxscale.errors import UsageError
from onnxscale.runtime import agreement, environments, locate, placement, plugins
from onnxscale.runtime import providers as P
from onnxscale.runtime.session import create_session, no_fallback

from .conftest import CACHE, run_cli

OV = "OpenVINOExecutionProvider"
LINUX_X86 = environments.this_platform() == "linux-x86_64"


def conv_model(path: Path) -> Path:
    """A small conv net (conv, relu, pool, gemm): enough nodes for placement to mean something."""
    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 3, 3, 3],
                           rng.standard_normal((8, 3, 3, 3)).astype(np.float32).ravel())
    fc = helper.make_tensor("fc", TensorProto.FLOAT, [8, 4],
                            rng.standard_normal((8, 4)).astype(np.float32).ravel())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc")]
    graph = helper.make_graph(
        nodes, "small", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])], [w, fc])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def clean_cache(tmp_path, monkeypatch):
    """A cache with no environments in it."""
    monkeypatch.setenv("ONNXSCALE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# --- what a provider that is nowhere says ---------------------------------------------------

def test_missing_provider_says_how_to_get_it_without_breaking_the_install(clean_cache):
    """The advice was `pip install onnxruntime-openvino`, which replaces onnxruntime-gpu."""
    route = locate.route(OV)
    assert route.kind is None or route.kind == locate.PLUGIN
    if route.kind is None:
        if LINUX_X86:
            assert "onnxscale providers add openvino" in route.reason
        assert "pip install onnxruntime-openvino" not in route.reason
    rocm = locate.route("ROCMExecutionProvider")
    assert rocm.kind is None and "migraphx" in rocm.reason
    for provider in P.SHORT_NAMES.values():
        hint = P.install_hint(provider) or ""
        assert not any(f"install {flavour.package}" in hint
                       for flavour in environments.FLAVOURS.values()), provider


def test_flavours_refused_where_they_have_no_wheel():
    with pytest.raises(UsageError, match="no wheel for"):
        environments.resolve_package("directml" if sys.platform != "win32" else "cann", None)
    with pytest.raises(UsageError, match="not a known flavour.*--package"):
        environments.resolve_package("tpu", None)
    assert environments.resolve_package("mine", "onnxruntime==1.24.1") == (
        "mine", "onnxruntime==1.24.1")
    with pytest.raises(UsageError, match="a name is"):
        environments.resolve_package("../x", "onnxruntime")


def test_cli_providers_lists_and_refuses_in_one_line(clean_cache):
    env = {**os.environ, "ONNXSCALE_CACHE_DIR": str(clean_cache)}
    import subprocess

    out = subprocess.run([sys.executable, "-m", "onnxscale", "providers", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    entries = json.loads(out.stdout)["providers"]
    cpu = [e for e in entries if e["provider"] == "cpu"]
    assert cpu and cpu[0]["usable"] and cpu[0]["where"] == "in-process"
    if LINUX_X86:
        assert any(e["where"] == "can be added" and e["provider"] == "openvino"
                   for e in entries)
    for args, message in ((["providers", "remove", "nothing"], "no such environment"),
                          (["providers", "add", "tpu"], "not a known flavour")):
        bad = subprocess.run([sys.executable, "-m", "onnxscale", *args], capture_output=True,
                             text=True, env=env, timeout=120)
        assert bad.returncode == 2 and message in bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1 and "Traceback" not in bad.stderr


# --- onnxruntime's own behaviour, fixed -----------------------------------------------------

def test_enable_fallback_is_passed_only_where_onnxruntime_has_it(monkeypatch):
    """``enable_fallback=0`` exists from 1.23; an older onnxruntime must not get it."""
    import onnxruntime as ort

    assert no_fallback("1.22.1") == {} and no_fallback("1.18.0") == {}
    assert no_fallback("1.23.0") == {"enable_fallback": 0}
    assert no_fallback("1.31.1") == {"enable_fallback": 0}
    seen = {}

    class Recorder:
        def __init__(self, payload, so, **kwargs):
            seen.update(kwargs)

    monkeypatch.setattr(ort, "InferenceSession", Recorder)
    monkeypatch.setattr(ort, "__version__", "1.22.0")
    create_session(b"", None, [(P.CPU, {})], capture=False)
    assert "enable_fallback" not in seen and seen["providers"] == [(P.CPU, {})]
    seen.clear()
    create_session(b"", None, None, capture=False)  # plugin devices: providers in the options
    assert seen == {}


def test_openvino_gets_the_thread_count(tmp_path):
    """OpenVINO runs its own thread pool; --threads must reach it as num_of_threads."""
    from onnxscale.runtime.inputs import prepare
    from onnxscale.runtime.session import provider_chain
    from onnxscale.runtime.settings import BenchSettings

    prepared = prepare(onnx.load(conv_model(tmp_path / "m.onnx")), 1, {}, "t")
    _, options = provider_chain(OV, prepared, BenchSettings(threads=1), "h")
    assert options["num_of_threads"] == "1"
    _, options = provider_chain(OV, prepared, BenchSettings(), "h")
    assert "num_of_threads" not in options


# --- agreement ------------------------------------------------------------------------------

def test_agreement_finds_known_errors():
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((4, 1000)).astype(np.float32)
    same = agreement.compare([ref.copy()], [ref], ["y"], "fp32")
    assert same["ok"] and same["rel_l2"] == 0.0
    noisy = ref + 0.01 * rng.standard_normal(ref.shape).astype(np.float32)  # ~1% rel L2
    fp32 = agreement.compare([noisy], [ref], ["y"], "fp32")
    assert not fp32["ok"] and 0.005 < fp32["rel_l2"] < 0.02
    assert agreement.compare([noisy], [ref], ["y"], "fp16")["ok"]  # 1e-2 for fp16
    assert agreement.compare([noisy], [ref], ["y"], "fp32", tolerance=0.05)["ok"]
    bad = noisy.copy()
    bad[0, 0] = np.nan
    check = agreement.compare([bad], [ref], ["y"], "fp16")
    assert not check["ok"] and check["nonfinite"] and "NaN" in agreement.describe(check)
    shape = agreement.compare([ref[:2]], [ref], ["y"], "fp32")
    assert not shape["ok"] and shape["shape_mismatch"]
    stats = fp32["outputs"]["y"]
    assert stats["max_abs"] >= stats["mean_abs"] >= 0 and stats["median_abs"] <= stats["max_abs"]


# --- placement ------------------------------------------------------------------------------

class _Node:
    def __init__(self, name, op):
        self.name, self.op_type = name, op


class _Subgraph:
    def __init__(self, ep, nodes):
        self.ep_name, self._nodes = ep, nodes

    def get_nodes(self):
        return self._nodes


class _Session:
    def __init__(self, subgraphs):
        self._subgraphs = subgraphs

    def get_provider_graph_assignment_info(self):
        return self._subgraphs


def test_placement_counts_nodes_and_names_the_ones_that_fell_back():
    session = _Session([_Subgraph(P.CUDA, [_Node("conv", "Conv"), _Node("fc", "Gemm")]),
                        _Subgraph(P.CPU, [_Node("resize", "Resize")])])
    summary = placement.summarize(session, P.CUDA)
    assert summary["nodes"] == {"cuda": 2, "cpu": 1} and summary["partial"]
    assert summary["elsewhere"] == [{"name": "resize", "op": "Resize", "provider": "cpu"}]
    summary["flops_share"] = placement.flops_share(summary, {"conv": 90.0, "fc": 5.0,
                                                             "resize": 5.0})
    assert summary["flops_share"] == pytest.approx(0.95)
    assert placement.describe(summary, P.CUDA) == "2/3 nodes, 95% of flops; 1 on cpu: Resize"
    whole = placement.summarize(_Session([_Subgraph(P.CUDA, [_Node("a", "Conv")])]), P.CUDA)
    assert not whole["partial"] and placement.describe(whole, P.CUDA) == "all nodes"
    assert placement.summarize(object(), P.CUDA) is None  # an onnxruntime older than 1.24


def test_bench_rows_carry_placement_and_agreement(tmp_path):
    """On the real CPU provider: every node on CPU, outputs equal to the reference."""
    import onnxscale

    rows = onnxscale.bench(str(conv_model(tmp_path / "m.onnx")), "cpu", batch=2, runs=5,
                           warmup=1)
    row = rows[0]
    assert row.available and row.placement is not None
    assert row.placement["partial"] is False and row.placement["nodes"]["cpu"] >= 1
    assert row.output_check["ok"] and row.output_check["rel_l2"] == 0.0
    assert row.p95_ms is not None and row.p50_ms <= row.p95_ms <= row.max_ms
    unchecked = onnxscale.bench(str(tmp_path / "m.onnx"), "cpu", batch=2, runs=5, warmup=1,
                                check_outputs=False)[0]
    assert unchecked.output_check is None


def test_fp16_outputs_are_checked_against_fp32(tmp_path):
    import onnxscale

    row = onnxscale.bench(str(conv_model(tmp_path / "m.onnx")), "cpu", precision="fp16",
                          runs=5, warmup=1)[0]
    if not row.available:
        pytest.skip(f"no fp16 kernels on CPU here: {row.reason}")
    check = row.output_check
    assert check["tolerance"] == 1e-2 and 0 < check["rel_l2"] < 1e-2 and check["ok"]


# --- plugins --------------------------------------------------------------------------------

def test_plugin_library_that_is_not_one_is_reported(tmp_path, monkeypatch):
    fake = tmp_path / "libnot_a_plugin.so"
    fake.write_bytes(b"not a shared library")
    monkeypatch.setattr(plugins, "_EXTRA", [str(fake)])
    monkeypatch.setattr(plugins, "_FOUND", {})
    found = [p for p in plugins.discover() if p.library == str(fake)]
    assert found and found[0].reason and "registering" in found[0].reason
    with pytest.raises(UsageError, match="no such file"):
        from onnxscale.runtime.settings import make_settings

        make_settings([P.CPU], ep_libraries=[str(tmp_path / "absent.so")])


def test_real_openvino_plugin_is_found_and_says_whether_it_has_a_device(clean_cache):
    """onnxruntime-ep-openvino registers beside onnxruntime-gpu; on a CPU OpenVINO does not
    support (this AMD machine) it offers no device, which must be the row's reason."""
    pytest.importorskip("onnxruntime_ep_openvino")
    found = plugins.for_provider(OV)
    assert found, "the installed onnxruntime-ep-openvino package was not discovered"
    plugin = found[0]
    assert plugin.package == "onnxruntime-ep-openvino" and plugin.version
    route = locate.route(OV)
    if plugin.offers(OV):
        assert route.kind == locate.PLUGIN
    else:
        assert "offers no device" in plugin.reason
        assert route.kind is None and "offers no device" in route.reason
        import onnxscale

        row = onnxscale.bench("zoo:resnet-18", "openvino", runs=5)[0]
        assert not row.available and "offers no device" in row.reason


# --- a real isolated environment ------------------------------------------------------------

OV_CACHE = CACHE / "openvino-cache"  # its own onnxscale cache: other tests must not see it


@pytest.fixture(scope="session")
def openvino_made():
    """onnxruntime-openvino in an environment of its own, made once (and kept under the test
    cache, so later runs reuse it); xdist workers wait for whichever makes it."""
    if not LINUX_X86:
        pytest.skip("onnxruntime-openvino has wheels for linux-x86_64 and Windows only")
    OV_CACHE.mkdir(parents=True, exist_ok=True)
    saved = os.environ.get("ONNXSCALE_CACHE_DIR")
    os.environ["ONNXSCALE_CACHE_DIR"] = str(OV_CACHE)
    try:
        with open(OV_CACHE / "make.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            env = environments.get("openvino")
            if env is None or env.problem() is not None:
                env = environments.create("openvino", force=True)
    finally:
        os.environ["ONNXSCALE_CACHE_DIR"] = saved or ""
    return env


@pytest.fixture
def openvino_env(openvino_made, monkeypatch):
    """The environment, visible to this test (and the commands it starts)."""
    monkeypatch.setenv("ONNXSCALE_CACHE_DIR", str(OV_CACHE))
    return openvino_made


@pytest.mark.slow
def test_openvino_environment_times_beside_cpu(openvino_env, tmp_path):
    """Two real rows, each in its own onnxruntime: OpenVINO runs every node, its outputs
    agree with CPU's, and the row says where it ran."""
    import onnxscale

    assert OV in openvino_env.providers and openvino_env.ort_version
    model = conv_model(tmp_path / "m.onnx")
    rows = onnxscale.bench(str(model), "cpu,openvino", threads=1, runs=20, warmup=2,
                           db=tmp_path / "r.db")
    cpu, ov = rows
    assert cpu.available and ov.available, ov.reason
    assert ov.environment == "openvino" and cpu.environment is None
    assert ov.ort_version == openvino_env.ort_version  # timed in its own onnxruntime
    assert ov.providers_used[0] == OV
    assert ov.placement["partial"] is False and ov.placement["nodes"]["openvino"] >= 1
    assert ov.output_check["ok"], ov.output_check
    assert ov.provider_options_effective.get("num_of_threads") == "1"
    stored = onnxscale.load_results(tmp_path / "r.db") if _has_pandas() else None
    if stored is not None:
        assert set(stored["provider"]) == {"cpu", "openvino"}


@pytest.mark.slow
def test_openvino_environment_through_the_cli(openvino_env, tmp_path):
    model = conv_model(tmp_path / "m.onnx")
    out = run_cli("bench", str(model), "--provider", "cpu,openvino", "--threads", "1",
                  "--runs", "10", "--db", str(tmp_path / "r.db"), "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["results"]
    assert [r["provider"] for r in rows] == ["cpu", "openvino"]
    assert all(r["available"] for r in rows) and rows[1]["environment"] == "openvino"
    listed = run_cli("providers", "--json")
    entries = json.loads(listed.stdout)["providers"]
    assert any(e["where"] == "environment" and e["provider"] == "openvino" and e["usable"]
               for e in entries)


def test_a_worker_that_dies_gives_a_row_with_its_last_words(tmp_path):
    """An environment whose interpreter fails: a failed row naming the environment and the
    worker's last message, never an exception."""
    from onnxscale.runtime.settings import BenchSettings
    from onnxscale.runtime.worker import measure_in

    fake = tmp_path / "venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text("#!/bin/sh\necho 'ImportError: libopenvino.so: cannot open' >&2\nexit 3\n")
    fake.chmod(0o755)
    env = environments.Environment(name="broken", path=tmp_path, package="x",
                                   providers=[OV])
    model = conv_model(tmp_path / "m.onnx")
    row, outputs = measure_in(env, model, source="m", model_hash="h", batch=1, provider=OV,
                              settings=BenchSettings(runs=5), want_outputs=True)
    assert not row.available and outputs is None
    assert "environment 'broken'" in row.reason and "libopenvino.so" in row.reason


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


def test_fp16_reaches_each_provider_as_it_can():
    """CUDA and TensorRT-RTX run an fp16 model (TensorRT-RTX has no fp16 flag: given the
    fp32 model its row said fp16 and ran fp32); TensorRT gets its builder flag, with a note."""
    from onnxscale.runtime.settings import BenchSettings, precision_note, uses_fp16_model

    half = BenchSettings(precision="fp16")
    assert uses_fp16_model(P.CUDA, half) and uses_fp16_model(P.TENSORRT_RTX, half)
    assert uses_fp16_model(OV, half) and not uses_fp16_model(P.TENSORRT, half)
    assert "deprecated in TensorRT 10.12" in precision_note(P.TENSORRT, half)
    assert precision_note(P.CUDA, half) is None
    assert not uses_fp16_model(P.CUDA, BenchSettings())
