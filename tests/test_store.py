"""Tests for the results store: keys, upserts (no duplicates), resume, WAL, concurrent writers
from two processes, bad files, and the provider / machine comparisons."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from onnxscale.runtime import BenchSettings, Row, run_bench
from onnxscale.errors import OnnxscaleError
from onnxscale.store import (ResultStore, compare_machines, compare_providers, default_db_path,
                             variant_label)

FP = {"id": "fp-a", "cpu": "Test CPU", "hostname": "a"}
FP_B = {"id": "fp-b", "cpu": "Other CPU", "hostname": "b"}


def row(**over) -> Row:
    base = {
        "model": "m.onnx", "model_hash": "abc", "provider": "cpu",
        "provider_name": "CPUExecutionProvider", "batch": 1, "available": True, "status": "ok",
        "reason": None, "p50_ms": 10.0, "p90_ms": 11.0, "p99_ms": 12.0, "mean_ms": 10.2,
        "std_ms": 0.5, "cv": 0.05, "min_ms": 9.5, "throughput": 98.0, "runs": 20,
        "session_create_ms": 5.0, "first_run_ms": 20.0, "peak_host_mb": 100.0, "threads": 1,
        "precision": "fp32", "io_binding": False, "cuda_graph": False, "provider_options": {},
        "session_config": {}, "inputs": {"x": [1, 3, 8, 8]}, "fingerprint": "fp-a",
        "measured_at": 1.0,
    }
    base.update(over)
    base["options"] = {k: base[k] for k in ("threads", "precision", "io_binding", "cuda_graph",
                                            "provider_options", "session_config", "inputs")}
    return Row.from_dict(base)


@pytest.fixture
def store(tmp_path):
    with ResultStore(tmp_path / "r.db") as s:
        s.save_fingerprint(FP)
        s.save_fingerprint(FP_B)
        yield s


def test_roundtrip_and_wal(store):
    store.save(row())
    got = store.get("abc", "CPUExecutionProvider", row().options, 1, "fp-a")
    assert got.p50_ms == 10.0 and got.model == "m.onnx"
    assert store.get("abc", "CPUExecutionProvider", row(threads=2).options, 1, "fp-a") is None
    mode = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert set(store.fingerprints()) == {"fp-a", "fp-b"}


def test_upsert_no_duplicates(store):
    store.save(row(p50_ms=10.0))
    store.save(row(p50_ms=8.0, measured_at=2.0))
    assert store.count() == 1
    assert store.rows()[0].p50_ms == 8.0
    # any key part that differs makes a new row
    store.save(row(batch=8))
    store.save(row(fingerprint="fp-b"))
    store.save(row(threads=2))
    store.save(row(provider="cuda", provider_name="CUDAExecutionProvider"))
    store.save(row(model_hash="def"))
    assert store.count() == 6
    # the same content under another file name is the same model
    store.save(row(model="copy-of-m.onnx", p50_ms=7.0))
    assert store.count() == 6


def test_filters(store):
    store.save(row())
    store.save(row(model="zoo:resnet-18", model_hash="fff", provider="cuda",
                   provider_name="CUDAExecutionProvider", available=False, status="unavailable",
                   p50_ms=None, reason="no GPU"))
    assert len(store.rows(model="resnet")) == 1 and len(store.rows(model="ff")) == 1
    assert len(store.rows(providers=["CPUExecutionProvider"])) == 1
    assert len(store.rows(available_only=True)) == 1
    assert len(store.rows(fingerprint="fp-")) == 2 and store.rows(fingerprint="zz") == []


def _writer(path: str, worker: int, count: int) -> None:
    with ResultStore(path) as s:
        s.save_fingerprint(FP)
        for i in range(count):
            s.save(row(model_hash=f"w{worker}-{i}", p50_ms=float(i)))


def test_concurrent_writers_two_processes(tmp_path):
    path = str(tmp_path / "shared.db")
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, w, 40)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 80
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_bad_files(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(OnnxscaleError, match="not a usable results database"):
        ResultStore(garbage)
    with pytest.raises(OnnxscaleError, match="is a directory"):
        ResultStore(tmp_path)
    newer = tmp_path / "newer.db"
    sqlite3.connect(newer).execute("PRAGMA user_version = 99")
    with pytest.raises(OnnxscaleError, match="newer onnxscale"):
        ResultStore(newer)
    nested = tmp_path / "a" / "b" / "r.db"
    ResultStore(nested).close()
    assert nested.exists()


def test_a_schema_2_database_gains_the_profiles_table_in_place(tmp_path):
    """A database written before profiles existed keeps its rows and takes profiles."""
    path = tmp_path / "old.db"
    ResultStore(path).close()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE profiles")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    key = {"model_hash": "h", "provider": "CPUExecutionProvider", "options": {"threads": 1},
           "batch": 1, "fingerprint": "f"}
    with ResultStore(path) as store:
        store.save_profile(key, {"model": "m", "p50_ms": 2.5, "layers": []})
        stored = store.profiles(provider="CPUExecutionProvider", options={"threads": 1},
                                batch=1, fingerprint="f")
    assert [p["p50_ms"] for p in stored] == [2.5]
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 3


def test_default_db_path(monkeypatch, tmp_path):
    monkeypatch.setenv("ONNXSCALE_DB", str(tmp_path / "x.db"))
    assert default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("ONNXSCALE_DB")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    import sys

    if sys.platform.startswith("linux"):
        assert default_db_path() == tmp_path / "data" / "onnxscale" / "results.db"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_db_path().name == "results.db"


def _tiny(path: Path, seed: int) -> str:
    rng = np.random.default_rng(seed)
    w = nh.from_array(rng.standard_normal((2, 3, 1, 1)).astype(np.float32), "w")
    graph = h.make_graph([h.make_node("Conv", ["x", "w"], ["y"])], "g",
                         [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, 4, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, ["N", 2, 4, 4])], [w])
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def test_resume_skips_finished_configurations(tmp_path):
    a, b = _tiny(tmp_path / "a.onnx", 0), _tiny(tmp_path / "b.onnx", 1)
    settings = BenchSettings(threads=1, runs=3, warmup=1)
    with ResultStore(tmp_path / "r.db") as store:
        first = run_bench([a], ["CPUExecutionProvider"], [1], settings, store=store)
        stamp = first.rows[0].measured_at
        # an "interrupted" earlier run measured a only; resuming measures b and reuses a
        second = run_bench([a, b], ["CPUExecutionProvider", "ArmNNExecutionProvider"], [1],
                           settings, store=store, resume=True)
        assert [r.cached for r in second.rows] == [True, False, False, False]
        assert second.rows[0].measured_at == stamp
        assert store.count() == 4  # a/cpu, a/armnn (unavailable), b/cpu, b/armnn
        # without resume the row is measured again and replaced, never duplicated
        third = run_bench([a], ["CPUExecutionProvider"], [1], settings, store=store)
        assert third.rows[0].measured_at > stamp and store.count() == 4
        # resume retries unavailable rows rather than trusting them
        fourth = run_bench([b], ["ArmNNExecutionProvider"], [1], settings, store=store,
                           resume=True)
        assert not fourth.rows[0].cached


def test_variant_labels():
    assert variant_label(row()) == "cpu"
    assert variant_label(row(io_binding=True)) == "cpu+iob"
    cuda = dict(provider="cuda", provider_name="CUDAExecutionProvider")
    assert variant_label(row(**cuda, io_binding=True)) == "cuda"
    assert variant_label(row(**cuda, io_binding=False)) == "cuda-iob"
    assert variant_label(row(**cuda, io_binding=True, cuda_graph=True)) == "cuda+graph"
    assert variant_label(row(**cuda, io_binding=True, provider_options={"a": "1"})) == "cuda[a=1]"


def test_compare_providers():
    cuda = dict(provider="cuda", provider_name="CUDAExecutionProvider", io_binding=True)
    rows = [row(p50_ms=10.0), row(**cuda, p50_ms=2.0),
            row(provider="tensorrt", provider_name="TensorrtExecutionProvider", io_binding=True,
                available=False, status="unavailable", reason="no TensorRT", p50_ms=None),
            row(batch=8, p50_ms=70.0), row(batch=8, **cuda, p50_ms=7.0)]
    by_batch = {e["batch"]: e for e in compare_providers(rows)}
    assert by_batch[1]["speedup"] == {"cpu": 1.0, "cuda": 5.0}
    assert by_batch[1]["unavailable"] == {"tensorrt": "no TensorRT"}
    assert by_batch[8]["speedup"]["cuda"] == pytest.approx(10.0)
    # a missing baseline falls back to the first measured provider
    (entry,) = compare_providers([row(**cuda, p50_ms=2.0)], baseline="cpu")
    assert entry["baseline"] == "cuda"
    # different thread counts are different groups
    assert len(compare_providers([row(), row(threads=2)])) == 2


def test_compare_machines():
    rows = [row(p50_ms=10.0), row(fingerprint="fp-b", p50_ms=5.0), row(batch=4, p50_ms=30.0)]
    (entry,) = compare_machines(rows)
    assert entry["p50_ms"] == {"fp-a": 10.0, "fp-b": 5.0}
    assert entry["ratio"] == {"fp-a": 1.0, "fp-b": 0.5}
