"""`onnxscale sweep`: cells stored one by one, resumable, crash-safe, failed cells kept."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from onnxscale.errors import OnnxscaleError
from onnxscale.store import ResultStore
from onnxscale.sweeps import parse_factors

from .conftest import REPO, run_cli

FAST = ["--runs", "2", "--warmup", "0", "--threads", "1"]


def cells(db) -> dict[tuple, float]:
    """(strategy, factor, status) -> measured_at of every stored cell."""
    with sqlite3.connect(db) as conn:
        return {(s, f, st): t for s, f, st, t in conn.execute(
            "SELECT strategy, factor, status, measured_at FROM sweep_cells")}


@pytest.mark.slow
def test_sigkill_at_a_random_moment_then_rerun_gives_every_cell_once(tmp_path):
    """RegNetY-400MF, 5 strategies x 4 factors on the CPU: killed with SIGKILL while it runs,
    rerun, and the database holds exactly 20 cells; none that had finished is redone."""
    db = tmp_path / "sweep.db"
    args = [sys.executable, "-m", "onnxscale", "sweep", "zoo:regnety-400mf", "--strategy",
            "d,w,r,dw,dWr", "--flops", "1.5x,2x,3x,4x", "--db", str(db), *FAST]
    child = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and child.poll() is None:
        if db.exists() and len(_safe_cells(db)) >= 1:
            break
        time.sleep(0.2)
    time.sleep(random.uniform(0, 3))  # a random moment once some cells are done
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    before = _safe_cells(db)
    assert 1 <= len(before) < 20, len(before)
    rerun = json.loads(run_cli("sweep", "zoo:regnety-400mf", "--strategy", "d,w,r,dw,dWr",
                               "--flops", "1.5x,2x,3x,4x", "--db", str(db), *FAST, "--json",
                               check=True).stdout)
    after = cells(db)
    assert len(after) == 20
    assert rerun["skipped"] == len(before)
    assert rerun["done"] + rerun["failed"] == 20 - len(before)
    for key, measured_at in before.items():
        assert after[key] == measured_at  # not redone
    with ResultStore(db) as store:
        stored = store.cells()
    assert len({(c["strategy"], c["factor"]) for c in stored}) == 20
    for cell in stored:
        if cell["status"] == "ok":
            assert cell["p50_ms"] > 0 and cell["flops"] and cell["acts"] and cell["multipliers"]
            assert abs(cell["flops"] / cell["target_flops"] - 1) <= 0.015
        else:
            assert cell["status"] == "failed" and "cannot reach" in cell["reason"]


def _safe_cells(db):
    try:
        return cells(db)
    except sqlite3.OperationalError:  # the table is not there yet
        return {}


@pytest.mark.slow
def test_base_once_failed_cells_and_retry(tmp_path):
    db = tmp_path / "s.db"
    first = json.loads(run_cli("sweep", "zoo:resnet-18", "--strategy", "w,d", "--flops",
                               "1x,2x,1.3x", "--db", str(db), *FAST, "--json",
                               check=True).stdout)
    # factor 1 is the base, once for both strategies; d cannot land on x1.3 (whole blocks)
    assert (first["done"], first["failed"], first["skipped"]) == (4, 1, 0)
    stored = cells(db)
    assert ("base", 1.0, "ok") in stored and ("d", 1.3, "failed") in stored
    again = json.loads(run_cli("sweep", "zoo:resnet-18", "--strategy", "w,d", "--flops",
                               "1x,2x,1.3x", "--db", str(db), *FAST, "--json",
                               check=True).stdout)
    assert (again["done"], again["failed"], again["skipped"]) == (0, 0, 5)
    assert len(again["earlier"]) == 5 and again["cells"] == []
    # a rerun shows the whole sweep, not an empty table, and says why d x1.3 was not retried
    table = run_cli("sweep", "zoo:resnet-18", "--strategy", "w,d", "--flops", "1x,2x,1.3x",
                    "--db", str(db), *FAST, check=True).stdout
    rows = [line.split() for line in table.splitlines() if line.strip().startswith("zoo:")]
    assert sorted((r[1], r[2]) for r in rows) == [("base", "1x"), ("d", "1.3x"), ("d", "2x"),
                                                  ("w", "1.3x"), ("w", "2x")]
    assert [r[-1] for r in rows if r[1:3] == ["d", "1.3x"]] == ["failed"]
    assert "1 cell(s) stored as failed by an earlier run were not tried again" in table
    retried = json.loads(run_cli("sweep", "zoo:resnet-18", "--strategy", "w,d", "--flops",
                                 "1x,2x,1.3x", "--db", str(db), *FAST, "--json",
                                 "--retry-failed", "--tolerance", "30%", check=True).stdout)
    assert (retried["done"], retried["skipped"]) == (1, 4)
    assert ("d", 1.3, "ok") in cells(db) and len(cells(db)) == 5
    table = run_cli("sweep", "zoo:resnet-18", "--strategy", "w,d", "--flops", "1x,2x,1.3x",
                    "--db", str(db), *FAST, check=True).stdout
    assert "5 already done" in table and "not tried again" not in table


def test_store_cells_are_upserted_never_duplicated(tmp_path):
    key = {"base_hash": "abc", "strategy": "w", "factor": 2.0, "provider": "CPU",
           "batch": 1, "options": "{}", "fingerprint": "m1"}
    with ResultStore(tmp_path / "r.db") as store:
        assert store.cell_status(key) is None
        store.save_cell(key | {"base": "m", "status": "failed", "reason": "no"})
        store.save_cell(key | {"base": "m", "status": "ok", "p50_ms": 3.0})
        assert store.cell_status(key) == "ok"
        assert [c["p50_ms"] for c in store.cells()] == [3.0]
        assert store.cells(base="zzz") == []


def test_a_database_that_is_not_ours_is_refused_untouched(tmp_path):
    foreign = tmp_path / "theirs.db"
    with sqlite3.connect(foreign) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
        conn.execute("INSERT INTO notes VALUES ('keep me')")
    with pytest.raises(OnnxscaleError, match="did not create"):
        ResultStore(foreign)
    with sqlite3.connect(foreign) as conn:
        assert conn.execute("SELECT text FROM notes").fetchall() == [("keep me",)]
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {"notes"}


@pytest.mark.parametrize("args,message", [
    (["--strategy", "dqr"], "unknown strategy"),
    (["--flops", "0x,2x"], "above 0"),
    (["--flops", "2x,2x"], "repeated"),
    (["--flops", "lots"], "--flops"),
    (["--provider", "warp9"], "warp9"),
    (["--tolerance", "nan"], "--tolerance"),
])
def test_sweep_usage_errors(tmp_path, args, message):
    result = run_cli("sweep", "zoo:resnet-18", "--db", str(tmp_path / "s.db"), *args)
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_output_db_problems_are_one_line(tmp_path):
    folder = tmp_path / "a_folder.db"
    folder.mkdir()
    result = run_cli("sweep", "zoo:resnet-18", "--db", str(folder), "--flops", "2x", *FAST)
    assert result.returncode != 0 and "is a directory" in result.stderr
    keep = tmp_path / "file"
    keep.write_text("x")
    result = run_cli("sweep", "zoo:resnet-18", "--db", str(tmp_path / "s.db"), "--flops", "2x",
                     "--keep-models", str(keep), *FAST)
    assert result.returncode != 0 and "--keep-models" in result.stderr


def test_parse_factors():
    assert parse_factors("1x, 2x,4") == [1.0, 2.0, 4.0]
    for bad in ("0x", "-1x", "inf", "nanx", "2x,2"):
        with pytest.raises(OnnxscaleError):
            parse_factors(bad)


def test_the_sweep_table_has_a_column_per_machine_when_several_measured():
    """--ray --each-machine measures a cell on every machine kind: the table keeps them
    apart (one column per provider, batch and machine), named as $ONNXSCALE_MACHINE says."""
    from rich.console import Console

    from onnxscale import render
    from onnxscale.sweeps import SweepResult

    cell = {"base": "zoo:m", "strategy": "w", "factor": 2.0, "provider":
            "CPUExecutionProvider", "batch": 1, "status": "ok", "flops": 2.0, "acts": 1.4,
            "base_figures": {"flops": 1.0, "acts": 1.0}}
    result = SweepResult(done=2, cells=[cell | {"fingerprint": "aaaaaaaa11", "p50_ms": 3.25},
                                        cell | {"fingerprint": "bbbbbbbb22", "p50_ms": 7.5}])
    machines = {"aaaaaaaa11": {"hostname": "head"}, "bbbbbbbb22": {"name": "gpu-box"}}
    console = Console(width=200, record=True)
    render.print_sweep(result, "x.db", console, machines=machines)
    text = console.export_text()
    assert "head aaaaaa" in text and "gpu-box bbbbbb" in text
    row = next(line for line in text.splitlines() if "zoo:m" in line)
    assert "3.25" in row and "7.50" in row  # one row, both machines side by side
    single = Console(width=200, record=True)
    render.print_sweep(SweepResult(done=1, cells=result.cells[:1], notes=["timed niced"]),
                       "x.db", single, machines=machines)
    shown = single.export_text()
    assert "head" not in shown and "note: timed niced" in shown
