"""The GPU check's transport: split a bundle into parts, verify what arrived, join it back
(scripts/gpu/parts.py), and check.sh's answer while parts are still missing."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("gpu_parts", REPO / "scripts" / "gpu" / "parts.py")
parts = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(parts)


@pytest.fixture
def bundle(tmp_path) -> Path:
    path = tmp_path / "bundle.tar"
    path.write_bytes(os.urandom(10_000) + b"tail")
    return path


@pytest.mark.parametrize("size", [1, 4096, 4001, 10_004, 1 << 20])
@pytest.mark.slow
def test_split_then_join_gives_the_same_bytes(bundle, tmp_path, size):
    folder = tmp_path / "parts"
    manifest = parts.split(bundle, folder, size)
    assert len(manifest["parts"]) == max(1, -(-bundle.stat().st_size // size))
    assert all(p["bytes"] <= size for p in manifest["parts"])
    assert parts.verify(folder) == ([p["name"] for p in manifest["parts"]], [], [])
    joined = parts.join(folder, tmp_path / "joined.tar")
    assert joined.read_bytes() == bundle.read_bytes()


def test_missing_and_corrupt_parts_are_named_and_never_joined(bundle, tmp_path):
    folder = tmp_path / "parts"
    parts.split(bundle, folder, 3000)
    (folder / "part-01").unlink()
    raw = bytearray((folder / "part-02").read_bytes())
    raw[7] ^= 0xFF
    (folder / "part-02").write_bytes(bytes(raw))
    good, missing, corrupt = parts.verify(folder)
    assert good == ["part-00", "part-03"] and missing == ["part-01"] and corrupt == ["part-02"]
    with pytest.raises(SystemExit, match="missing"):
        parts.join(folder, tmp_path / "joined.tar")
    assert not (tmp_path / "joined.tar").exists()
    assert parts.main(["verify", str(folder)]) == parts.CORRUPT


def test_a_wrong_whole_sum_is_refused(bundle, tmp_path):
    folder = tmp_path / "parts"
    parts.split(bundle, folder, 4000)
    manifest = json.loads((folder / parts.MANIFEST).read_text())
    manifest["sha256"] = "0" * 64
    (folder / parts.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(SystemExit, match="sha256"):
        parts.join(folder, tmp_path / "joined.tar")
    assert not (tmp_path / "joined.tar").exists()


def test_check_sh_waits_for_missing_parts(bundle, tmp_path):
    """Parts arrive over several calls: check.sh says which are missing and exits 0."""
    folder = tmp_path / "parts"
    parts.split(bundle, folder, 3000)
    (folder / "part-03").unlink()
    env = {**os.environ, "GPU_PARTS": str(folder), "OUT": str(tmp_path / "out"),
           "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "check.sh"), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "3 of 4 present" in result.stdout and "missing: part-03" in result.stdout
    assert "carry the missing ones" in result.stdout


@pytest.mark.slow
def test_check_sh_dry_run_is_one_bounded_pass_packed_into_one_file(tmp_path):
    """The whole pass on this CPU machine: an xz bundle joined and verified, every check run
    (the CUDA ones saying why they cannot), all inside the budget, and $OUT holding one archive
    and the summary (a device call returns at most 8 files)."""
    import tarfile
    import time

    wheels = tmp_path / "stage" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / "demo-1.0-py3-none-any.whl").write_bytes(b"not really a wheel")
    subprocess.run("sha256sum ./*.whl > SHA256SUMS", shell=True, cwd=wheels, check=True)
    archive = tmp_path / "bundle.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(wheels, arcname="wheels")
    folder = tmp_path / "parts"
    parts.split(archive, folder, 200)
    out = tmp_path / "out"
    budget = 150
    env = {**os.environ, "GPU_PARTS": str(folder), "OUT": str(out), "PYTHON": sys.executable,
           "CHECK_BUDGET": str(budget), "ORT_PREFIX": str(tmp_path / "prefix")}
    t0 = time.time()
    result = subprocess.run(["bash", str(REPO / "scripts" / "gpu" / "check.sh"), "--dry-run"],
                            capture_output=True, text=True, env=env, timeout=budget + 60)
    took = time.time() - t0
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert took < budget + 10, f"the pass took {took:.0f} s with a {budget} s budget"
    assert sorted(p.name for p in out.iterdir()) == ["gpu-check.tar.xz", "summary.txt"]
    with tarfile.open(out / "gpu-check.tar.xz") as tar:
        names = {Path(n).name for n in tar.getnames()}
        checks = json.loads(tar.extractfile("./checks.json").read())
    assert {"checks.json", "check.log", "summary.json", "pytest-gpu.txt"} <= names
    order = [c["check"] for c in checks]
    assert order[0].startswith("onnxruntime from the private prefix")
    assert order[1].startswith("CUDA first") and order[-1].startswith("CUDA vs CPU")
    assert len(order) == 7
    summary = (out / "summary.txt").read_text()
    assert "CUDA first in get_providers()" in summary and "[PASS]" in summary or "[FAIL]" in summary
