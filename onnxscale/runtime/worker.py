"""Timing in another Python environment: the worker process, and the call that starts it.

A provider that only an isolated environment has (see `environments`) is timed by running
``python -m onnxscale.runtime.worker REQUEST.json`` with that environment's interpreter.  The
worker loads the model, prepares its inputs and calls `runner.measure`: the same code, in
the same order, as an in-process measurement, so the timing method does not depend on where
the provider lives (``scripts/bench_fidelity.py --environment NAME`` checks it).  It writes the
row as JSON and the first run's outputs as ``.npz`` (for the agreement check); the parent
stores the row like any other.

The worker imports only onnxscale's timing modules, onnx and NumPy.  onnxscale is not installed
in the environment: the parent puts a folder on ``PYTHONPATH`` whose only entry links to its own
``onnxscale`` package, so nothing else from the main environment (its onnxruntime above all) can
leak in.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

_SOURCE_DIR: list[Path] = []


def _source_path() -> Path:
    """A folder holding only a link to this onnxscale package (a copy where links fail)."""
    if _SOURCE_DIR and _SOURCE_DIR[0].exists():
        return _SOURCE_DIR[0]
    package = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="onnxscale-worker-"))
    try:
        os.symlink(package, folder / "onnxscale", target_is_directory=True)
    except OSError:  # pragma: no cover - Windows without the right to make links
        shutil.copytree(package, folder / "onnxscale",
                        ignore=shutil.ignore_patterns("__pycache__"))
    atexit.register(shutil.rmtree, folder, True)
    _SOURCE_DIR[:] = [folder]
    return folder


def worker_env() -> dict[str, str]:
    """The environment variables a worker starts with: ours, minus whatever points Python at
    the main environment, plus onnxscale on the path."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PYTHONPATH"] = str(_source_path())
    env["PYTHONNOUSERSITE"] = "1"
    return env


def probe(interpreter: Path | str, timeout: float = 120.0) -> dict:
    """What onnxruntime in the environment of ``interpreter`` offers (runs the worker with
    ``--probe``): its version, providers, Python and flavour package version."""
    from ..errors import OnnxscaleError

    try:
        proc = subprocess.run([str(interpreter), "-m", "onnxscale.runtime.worker", "--probe"],
                              capture_output=True, text=True, env=worker_env(), timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OnnxscaleError(f"cannot run {interpreter}: {exc}") from None
    if proc.returncode != 0:
        raise OnnxscaleError(f"{interpreter}: onnxruntime does not load there: "
                             f"{_last_line(proc.stderr)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def measure_in(environment, model_file: Path, *, source: str, model_hash: str, batch: int,
               provider: str, settings, want_outputs: bool):
    """Time one configuration in ``environment``; returns (Row, outputs or None).

    Never raises for what happens inside the worker: a crash becomes an unavailable row whose
    reason is the worker's last message, as with any provider that cannot run."""
    import dataclasses

    import numpy as np

    from .row import Row

    work = Path(tempfile.mkdtemp(prefix="onnxscale-request-"))
    try:
        request = {
            "model": str(model_file), "source": source, "model_hash": model_hash,
            "batch": batch, "provider": provider,
            "settings": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in dataclasses.asdict(settings).items()},
            "outputs": str(work / "outputs.npz") if want_outputs else None,
            "response": str(work / "row.json"),
        }
        (work / "request.json").write_text(json.dumps(request))
        proc = subprocess.run([str(environment.interpreter), "-m", "onnxscale.runtime.worker",
                               str(work / "request.json")], capture_output=True, text=True,
                              env=worker_env())
        response = work / "row.json"
        if proc.returncode != 0 or not response.exists():
            row = Row(model=source, model_hash=model_hash, provider="", provider_name=provider,
                      batch=batch)
            row.reason = (f"the worker in environment '{environment.name}' failed "
                          f"(exit {proc.returncode}): {_last_line(proc.stderr)}")[:800]
            row.status = "failed"
            return row, None
        data = json.loads(response.read_text())
        if "error" in data:
            from ..errors import OnnxscaleError

            raise OnnxscaleError(data["error"])
        row = Row.from_dict(data["row"])
        row.environment = environment.name
        outputs = None
        if want_outputs and (work / "outputs.npz").exists():
            with np.load(work / "outputs.npz") as archive:
                outputs = [archive[f"o{i}"] for i in range(len(archive.files))]
        return row, outputs
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _facts() -> dict:
    import importlib.metadata as md
    import platform

    import onnxruntime as ort

    flavours = sorted((d.metadata["Name"], d.version) for d in md.distributions()
                      if (d.metadata["Name"] or "").lower().startswith("onnxruntime"))
    version = next((v for n, v in flavours if n.lower().replace("_", "-").startswith(
        "onnxruntime-") and "-ep-" not in n.lower()), None)
    return {"ort_version": ort.__version__, "providers": ort.get_available_providers(),
            "python": platform.python_version(), "package_version": version or ort.__version__,
            "packages": dict(flavours)}


def _serve(request_path: str) -> int:
    import numpy as np
    import onnx

    from ..errors import OnnxscaleError
    from .inputs import prepare
    from .runner import measure
    from .settings import BenchSettings

    request = json.loads(Path(request_path).read_text())
    response = Path(request["response"])
    try:
        settings_data = dict(request["settings"])
        if settings_data.get("cache_dir"):
            settings_data["cache_dir"] = Path(settings_data["cache_dir"])
        settings = BenchSettings(**settings_data)
        proto = onnx.load(request["model"])
        prepared = prepare(proto, request["batch"], settings.input_shapes, request["source"])
        outputs: list | None = [] if request["outputs"] else None
        row = measure(prepared, request["provider"], settings, model=request["source"],
                      model_hash=request["model_hash"], outputs=outputs)
    except OnnxscaleError as exc:
        response.write_text(json.dumps({"error": str(exc)}))
        return 0
    if outputs:
        np.savez(request["outputs"], **{f"o{i}": a for i, a in enumerate(outputs)})
    response.write_text(json.dumps({"row": row.to_dict()}))
    return 0


def main(argv: list[str]) -> int:
    if argv == ["--probe"]:
        print(json.dumps(_facts()))
        return 0
    if len(argv) != 1:
        print("usage: python -m onnxscale.runtime.worker REQUEST.json | --probe",
              file=sys.stderr)
        return 2
    return _serve(argv[0])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
