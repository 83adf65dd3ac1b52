"""Sweeps on a Ray cluster (issue 11): a local multi-node cluster on this machine, no network.

Cells spread over nodes; CUDA cells go only to the node that advertises a (logical) GPU, which
then honestly reports CUDA unavailable; --each-machine measures every cell on both machine
kinds (the GPU node is named apart with $ONNXSCALE_MACHINE) and the report shows them side by
side; a node removed mid-sweep loses no cell and duplicates none; a driver killed with SIGKILL
resumes; units time at nice 0 (Ray starts its workers at 15) and a niced node is named; bad
addresses, missing accelerator types and a missing Ray give one-line errors; without --ray,
Ray is never imported.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from .conftest import REPO, run_cli

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

QUICK = ["--runs", "2", "--warmup", "0"]
CUDA = "CUDAExecutionProvider"
GPU_BOX = "gpu-box"   # $ONNXSCALE_MACHINE of the GPU node: a second machine kind


@pytest.fixture(scope="module")
def cluster():
    """A head and two workers of one CPU each, the last advertising one logical GPU and
    named apart, so the cluster has two machine kinds: two plain nodes and the GPU box."""
    port = _free_port()
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "ray_client_server_port": port})
    made.client_port = port  # where ray:// clients connect
    made.add_node(num_cpus=1)
    made.add_node(num_cpus=1, num_gpus=1, env_vars={"ONNXSCALE_MACHINE": GPU_BOX})
    made.wait_for_nodes()
    yield made
    made.shutdown()


def _named(db, name: str) -> str:
    """The fingerprint id of the machine named ``name`` ($ONNXSCALE_MACHINE) in ``db``."""
    with sqlite3.connect(db) as conn:
        found = [fid for fid, data in conn.execute("SELECT id, data FROM fingerprints")
                 if json.loads(data).get("name") == name]
    assert len(found) == 1, f"one machine named {name} expected, found {found}"
    return found[0]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cells(db) -> list[dict]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT data FROM sweep_cells").fetchall()
    return [json.loads(row[0]) for row in rows]


@pytest.mark.slow
def test_cells_spread_over_nodes_and_cuda_goes_to_the_gpu_node(cluster, tmp_path):
    db = tmp_path / "sweep.db"
    result = run_cli("sweep", "zoo:resnet-18", "--strategy", "w,dWr", "--flops", "1x,2x",
                     "--provider", "cpu,cuda", "--input-shape", "input:1x3x64x64", *QUICK,
                     "--ray", cluster.address, "--db", str(db), "--json", check=True)
    summary = json.loads(result.stdout)
    found = cells(db)
    assert len(found) == summary["done"] + summary["failed"] == 3 * 2  # base + 2 at 2x, 2 EPs
    cpu = [c for c in found if c["provider"] == "CPUExecutionProvider"]
    assert all(c["status"] == "ok" and c["p50_ms"] > 0 for c in cpu)
    assert len({c["node"] for c in cpu}) >= 2, "CPU cells should spread over the nodes"
    gpu_box = _named(db, GPU_BOX)
    assert len({c["fingerprint"] for c in cpu}) == 1 and cpu[0]["fingerprint"] != gpu_box, \
        "CPU cells stay on one kind, the one without GPUs: no curve mixes hardware"
    gpu_nodes = [n["NodeID"] for n in ray_nodes(cluster) if n["Resources"].get("GPU")]
    cuda = [c for c in found if c["provider"] == CUDA]
    assert cuda and all(c["node"] in gpu_nodes for c in cuda)
    assert all(c["status"] == "unavailable" and c["reason"] for c in cuda)
    assert all(c["nice"] == 0 for c in found) and not summary["notes"], \
        "units time at nice 0, not at the nice 15 Ray gives its workers"
    rerun = json.loads(run_cli("sweep", "zoo:resnet-18", "--strategy", "w,dWr", "--flops",
                               "1x,2x", "--provider", "cpu,cuda", "--input-shape",
                               "input:1x3x64x64", *QUICK, "--ray", cluster.address, "--db",
                               str(db), "--json", check=True).stdout)
    assert rerun["done"] == 0 and rerun["skipped"] == 6


@pytest.mark.slow
def test_each_machine_measures_every_cell_on_every_kind_and_the_report_compares_them(
        cluster, tmp_path):
    db = tmp_path / "sweep.db"
    args = ["sweep", "zoo:resnet-18", "--strategy", "w,dWr", "--flops", "1x,2x,4x",
            "--input-shape", "input:1x3x64x64", *QUICK, "--ray", cluster.address,
            "--each-machine", "--db", str(db), "--json"]
    summary = json.loads(run_cli(*args, check=True).stdout)
    found = cells(db)
    assert summary["done"] == len(found) == 2 * 5  # base + 2 strategies x 2 factors, per kind
    assert all(c["status"] == "ok" for c in found)
    by_kind: dict[str, set] = {}
    for cell in found:
        by_kind.setdefault(cell["fingerprint"], set()).add((cell["strategy"], cell["factor"]))
    assert len(by_kind) == 2 and len(set(map(frozenset, by_kind.values()))) == 1
    gpu_box = _named(db, GPU_BOX)
    gpu_nodes = [n["NodeID"] for n in ray_nodes(cluster) if n["Resources"].get("GPU")]
    for cell in found:  # a row's fingerprint is the machine that measured it
        assert (cell["fingerprint"] == gpu_box) == (cell["node"] in gpu_nodes)
    rerun = json.loads(run_cli(*args, check=True).stdout)
    assert rerun["done"] == 0 and rerun["skipped"] == 10
    across = json.loads(run_cli("results", "--db", str(db), "--json", check=True).stdout)
    assert len(across["results"]) == 10 and len({r["fingerprint"] for r in across["results"]}) == 2
    assert across["machines"], "results compares one model across the two machines"
    report = json.loads(run_cli("report", "--db", str(db), "-o", str(tmp_path / "report"),
                                "--json", check=True).stdout)
    assert len(report["findings"]) == 2
    assert sum(GPU_BOX in finding for finding in report["findings"]) == 1
    assert len(report["machines"]) == 1 and "2 machines" in report["machines"][0]


@pytest.mark.slow
def test_ray_without_an_address_starts_its_own_cluster_even_beside_one(cluster, tmp_path):
    """`--ray` alone starts a new local cluster: it never joins one already running here
    (Ray's default for no address), even when $RAY_ADDRESS names it."""
    db = tmp_path / "sweep.db"
    env = dict(os.environ, RAY_ADDRESS=cluster.address)
    result = subprocess.run([sys.executable, "-m", "onnxscale", "sweep", "zoo:resnet-18",
                             "--strategy", "w", "--flops", "2x", "--input-shape",
                             "input:1x3x64x64", *QUICK, "--ray", "--db", str(db)], cwd=REPO,
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    found = cells(db)
    existing = {n["NodeID"] for n in ray_nodes(cluster)}
    assert len(found) == 1 and found[0]["status"] == "ok" and found[0]["node"] not in existing
    assert found[0]["nice"] == 0


@pytest.mark.slow
def test_a_client_connects_with_ray_url(cluster, tmp_path):
    """ray://HOST:PORT: the driver is a Ray client outside the cluster (the head's client
    server); cells are measured on the cluster's nodes and stored here."""
    port = cluster.client_port
    db = tmp_path / "sweep.db"
    summary = json.loads(run_cli(
        "sweep", "zoo:resnet-18", "--strategy", "w", "--flops", "1x,2x", "--input-shape",
        "input:1x3x64x64", *QUICK, "--ray", f"ray://127.0.0.1:{port}", "--db", str(db),
        "--json", check=True).stdout)
    found = cells(db)
    assert summary["done"] == len(found) == 2 and all(c["status"] == "ok" for c in found)
    alive = {n["NodeID"] for n in ray_nodes(cluster)}
    assert all(c["node"] in alive for c in found)


def ray_nodes(cluster) -> list[dict]:
    script = ("import json, ray; ray.init(address=%r, log_to_driver=False); "
              "print(json.dumps(ray.nodes()))" % cluster.address)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    return [n for n in json.loads(out.strip().splitlines()[-1]) if n["Alive"]]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renices through /proc")
@pytest.mark.slow
def test_a_node_whose_ray_runs_niced_is_named_in_a_note(tmp_path):
    """Workers inherit their raylet's niceness (RAY_worker_niceness=0 only stops Ray adding
    15 to it): a cell timed niced stores its niceness and the sweep names the node."""
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    db = tmp_path / "sweep.db"
    try:
        raylet = made.head_node.all_processes["raylet"][0].process.pid
        for thread in os.listdir(f"/proc/{raylet}/task"):  # Linux nices threads one by one
            os.setpriority(os.PRIO_PROCESS, int(thread), 5)
        summary = json.loads(run_cli(
            "sweep", "zoo:resnet-18", "--strategy", "w", "--flops", "2x", "--input-shape",
            "input:1x3x64x64", *QUICK, "--ray", made.address, "--db", str(db), "--json",
            check=True).stdout)
        assert [c["nice"] for c in cells(db)] == [5]
        assert len(summary["notes"]) == 1 and "at nice 5" in summary["notes"][0]
    finally:
        made.shutdown()


@pytest.mark.slow
def test_a_node_removed_mid_sweep_loses_and_duplicates_no_cell(tmp_path):
    """A worker is removed once the first cell is stored: its unit (if any) runs again on a
    node that is left; every cell is stored exactly once, none failed."""
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    worker = made.add_node(num_cpus=1)
    made.wait_for_nodes()
    db = tmp_path / "sweep.db"
    try:
        args = [sys.executable, "-m", "onnxscale", "sweep", "zoo:resnet-18", "--strategy",
                "d,w,dWr", "--flops", "1x,2x", "--input-shape", "input:1x3x64x64", "--runs",
                "20", "--warmup", "0", "--ray", made.address, "--db", str(db), "--json"]
        threading.Thread(target=_remove_after_first_cell, args=(made, worker, db),
                         daemon=True).start()
        process = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                                 check=False)
        assert process.returncode == 0, process.stderr
        assert worker not in made.list_all_nodes(), "the worker was never removed"
        found = cells(db)
        keys = [(c["strategy"], c["factor"], c["provider"], c["batch"]) for c in found]
        assert len(keys) == len(set(keys)) == 4  # base + 3 strategies at 2x
        assert all(c["status"] == "ok" for c in found)
    finally:
        made.shutdown()


@pytest.mark.slow
def test_a_kind_whose_only_node_dies_gets_its_cells_stored_failed_with_the_reason(tmp_path):
    """--each-machine over a head and one named worker; the worker is removed once a cell is
    stored: its unfinished cells are stored failed (no other node of its kind is left),
    every cell of the head's kind is measured, and no cell is stored twice."""
    made = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    doomed = made.add_node(num_cpus=1, env_vars={"ONNXSCALE_MACHINE": "doomed"})
    made.wait_for_nodes()
    db = tmp_path / "sweep.db"
    try:
        args = [sys.executable, "-m", "onnxscale", "sweep", "zoo:resnet-18", "--strategy",
                "w,dWr", "--flops", "1x,2x", "--input-shape", "input:1x3x64x64", "--runs",
                "30", "--warmup", "0", "--ray", made.address, "--each-machine", "--db",
                str(db), "--json"]
        threading.Thread(target=_remove_after_first_cell, args=(made, doomed, db),
                         daemon=True).start()
        process = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                                 check=False)
        assert process.returncode == 0, process.stderr
        found = cells(db)
        keys = [(c["fingerprint"], c["strategy"], c["factor"]) for c in found]
        assert len(keys) == len(set(keys)) == 2 * 3
        doomed_kind = _named(db, "doomed")
        failed = [c for c in found if c["status"] == "failed"]
        assert failed and all(c["fingerprint"] == doomed_kind for c in failed)
        assert all("died while measuring and no other node of this machine kind is left"
                   in c["reason"] for c in failed)
        assert all(c["status"] == "ok" for c in found if c["fingerprint"] != doomed_kind)
    finally:
        made.shutdown()


def _remove_after_first_cell(made, node, db) -> None:
    """Remove ``node`` from the cluster ``made`` once ``db`` holds a cell."""
    deadline = time.time() + 300
    while time.time() < deadline:
        if db.exists() and _count(db) >= 1:
            made.remove_node(node)
            return
        time.sleep(0.2)


def _count(db) -> int:
    try:
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT COUNT(*) FROM sweep_cells").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_driver_killed_with_sigkill_resumes_without_duplicates(tmp_path):
    """--ray with no address starts a local cluster; the driver is killed once a cell is
    stored, and the same command finishes the rest."""
    db = tmp_path / "sweep.db"
    args = [sys.executable, "-m", "onnxscale", "sweep", "zoo:resnet-18", "--strategy", "w,dWr",
            "--flops", "1x,2x,4x", "--input-shape", "input:1x3x64x64", *QUICK, "--ray",
            "--db", str(db), "--json"]
    process = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None and _count(db) < 1:
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = _count(db)
    assert 1 <= first < 5
    result = json.loads(subprocess.run(args, cwd=REPO, capture_output=True, text=True,
                                       timeout=600, check=True).stdout)
    assert result["skipped"] == first and result["done"] + first == 5
    found = cells(db)
    assert len(found) == 5 and all(c["status"] == "ok" for c in found)


@pytest.mark.parametrize("args, message", [
    (["--ray", "127.0.0.1:9"], "nothing answers at 127.0.0.1:9"),
    (["--ray", "ray://127.0.0.1:9"], "nothing answers at 127.0.0.1:9"),
    (["--ray", "nonsense"], "expected auto, HOST:PORT or ray://HOST:PORT"),
    (["--each-machine"], "need --ray"),
])
def test_bad_addresses_are_one_line_errors(tmp_path, args, message):
    result = run_cli("sweep", "zoo:resnet-18", "--strategy", "w", "--flops", "2x", *args,
                     "--db", str(tmp_path / "s.db"))
    assert result.returncode != 0 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_a_missing_accelerator_type_is_a_one_line_error(cluster, tmp_path):
    result = run_cli("sweep", "zoo:resnet-18", "--strategy", "w", "--flops", "2x", "--ray",
                     cluster.address, "--accelerator-type", "H100", "--db",
                     str(tmp_path / "s.db"))
    assert result.returncode == 1 and "--accelerator-type H100: no node" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_ray_not_installed_says_how_to_get_it(tmp_path):
    blocker = tmp_path / "blocker"
    (blocker / "ray").mkdir(parents=True)
    (blocker / "ray" / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    result = subprocess.run([sys.executable, "-m", "onnxscale", "sweep", "zoo:resnet-18",
                             "--strategy", "w", "--flops", "2x", "--ray", "--db",
                             str(tmp_path / "s.db")], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2
    assert "pip install 'onnxscale[ray]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_client_tries_again_when_the_head_fails_to_start_its_server(monkeypatch):
    """The head's client server fails to start a client's server now and then on a busy
    machine ("Initialization failure from server", seen here): ray:// tries again; other
    addresses do not, and the last failure is raised."""
    from onnxscale import cluster as cluster_mod

    class FlakyRay:
        def __init__(self, failures):
            self.failures, self.inits, self.shutdowns = failures, 0, 0

        def init(self, **kwargs):
            self.inits += 1
            if self.inits <= self.failures:
                raise ConnectionAbortedError("Initialization failure from server:")

        def shutdown(self):
            self.shutdowns += 1

    monkeypatch.setattr(cluster_mod.time, "sleep", lambda seconds: None)
    flaky = FlakyRay(failures=2)
    cluster_mod._init(flaky, "ray://head:10001", None)
    assert (flaky.inits, flaky.shutdowns) == (3, 2)
    with pytest.raises(ConnectionAbortedError):
        cluster_mod._init(FlakyRay(failures=3), "ray://head:10001", None)
    once = FlakyRay(failures=1)
    with pytest.raises(ConnectionAbortedError):
        cluster_mod._init(once, "head:6379", None)
    assert once.inits == 1


def test_a_client_without_grpc_says_how_to_get_it(cluster, tmp_path):
    """A minimal `pip install ray` has no client: ray:// says what to install."""
    blocker = tmp_path / "blocker"
    (blocker / "grpc").mkdir(parents=True)
    (blocker / "grpc" / "__init__.py").write_text("raise ImportError('no grpc here')\n")
    env = dict(os.environ, PYTHONPATH=str(blocker))
    result = subprocess.run([sys.executable, "-m", "onnxscale", "sweep", "zoo:resnet-18",
                             "--strategy", "w", "--flops", "2x", "--ray",
                             f"ray://127.0.0.1:{cluster.client_port}", "--db",
                             str(tmp_path / "s.db")], cwd=REPO, capture_output=True,
                            text=True, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "pip install 'ray[client]'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.slow
def test_a_local_sweep_never_imports_ray(tmp_path):
    script = ("import sys; from onnxscale.cli import main\n"
              "try:\n"
              "    main(['sweep', 'zoo:resnet-18', '--strategy', 'w', '--flops', '1x', "
              "'--input-shape', 'input:1x3x32x32', '--runs', '1', '--warmup', '0', '--db', "
              "%r, '--json'], standalone_mode=False)\n"
              "finally:\n"
              "    print('RAY', 'ray' in sys.modules)\n" % str(tmp_path / "s.db"))
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert "RAY False" in result.stdout, result.stderr
