"""Isolated provider environments: ONNX Runtime flavours that cannot share the main install.

ONNX Runtime ships each accelerator as its own wheel (``onnxruntime-gpu``, ``-openvino``,
``-migraphx``, ``-directml``, ``-qnn``, ``-cann``), and every one of them is the import package
``onnxruntime``: installing a second one replaces the first.  So onnxscale keeps each extra
flavour in a virtual environment of its own, under ``<cache>/providers/NAME/``, made once by
``onnxscale providers add NAME`` (uv when it is on PATH, else venv + pip) and used offline from
then on.  A configuration whose provider lives there is timed by `worker` running in that
environment with the same timing code (see `locate`).

An environment holds the flavour, ``onnx`` at the main install's version and NumPy; onnxscale
itself is not installed there but put on the worker's path, so the code that times is always
the code that asked.  ``environment.json`` records what was installed and which providers the
flavour offered when it was made.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import OnnxscaleError, UsageError
from ..paths import default_cache_dir

MANIFEST = "environment.json"


@dataclass(frozen=True)
class Flavour:
    """An ONNX Runtime wheel that brings one accelerator, and where it has wheels."""

    name: str
    package: str
    providers: tuple[str, ...]
    platforms: tuple[str, ...]   # ``sys.platform-machine`` values PyPI has wheels for
    note: str = ""


FLAVOURS: dict[str, Flavour] = {f.name: f for f in (
    Flavour("openvino", "onnxruntime-openvino", ("OpenVINOExecutionProvider",),
            ("linux-x86_64", "win32-AMD64"), "Intel CPUs, GPUs and NPUs"),
    Flavour("migraphx", "onnxruntime-migraphx", ("MIGraphXExecutionProvider",),
            ("linux-x86_64",), "AMD GPUs (ROCm)"),
    Flavour("directml", "onnxruntime-directml", ("DmlExecutionProvider",),
            ("win32-AMD64", "win32-ARM64"), "any DirectX 12 GPU on Windows"),
    Flavour("qnn", "onnxruntime-qnn", ("QNNExecutionProvider",),
            ("win32-ARM64", "win32-AMD64"), "Qualcomm NPUs"),
    Flavour("cann", "onnxruntime-cann", ("CANNExecutionProvider",),
            ("linux-x86_64", "linux-aarch64"), "Huawei Ascend NPUs"),
)}

# Spelling users may type for a flavour.
_ALIASES = {"ov": "openvino", "dml": "directml", "rocm": "migraphx"}


def this_platform() -> str:
    return f"{sys.platform}-{platform.machine()}"


def root() -> Path:
    """The folder that holds every provider environment."""
    return default_cache_dir() / "providers"


@dataclass
class Environment:
    """One isolated environment, as its manifest describes it."""

    name: str
    path: Path
    package: str                       # the requirement it was made from
    version: str | None = None         # the flavour's installed version
    ort_version: str | None = None     # onnxruntime.__version__ inside it
    providers: list[str] = field(default_factory=list)
    python: str | None = None
    created_at: float | None = None
    tool: str | None = None            # uv or pip

    @property
    def interpreter(self) -> Path:
        return python_in(self.path / "venv")

    def problem(self) -> str | None:
        """Why the environment cannot be used as it is, or None."""
        if not self.interpreter.exists():
            return (f"its interpreter {self.interpreter} is missing; run `onnxscale providers "
                    f"add {self.name} --force`")
        return None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


def python_in(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")


def canonical(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def load(path: Path) -> Environment | None:
    try:
        data = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    data["path"] = path
    known = Environment.__dataclass_fields__
    return Environment(**{k: v for k, v in data.items() if k in known})


def environments() -> list[Environment]:
    """Every environment made on this machine, by name."""
    base = root()
    if not base.is_dir():
        return []
    found = [load(p) for p in sorted(base.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [env for env in found if env is not None]


def get(name: str) -> Environment | None:
    path = root() / canonical(name)
    return load(path) if path.is_dir() else None


def for_provider(provider: str) -> Environment | None:
    """The environment whose flavour offers ``provider`` (ONNX Runtime's name), if any."""
    for env in environments():
        if provider in env.providers and env.problem() is None:
            return env
    return None


def flavour_for(provider: str) -> Flavour | None:
    """The flavour that brings ``provider`` and has wheels for this machine."""
    for flavour in FLAVOURS.values():
        if provider in flavour.providers and this_platform() in flavour.platforms:
            return flavour
    return None


def _requirements(package: str) -> list[str]:
    """The flavour, and what onnxscale's timing code imports, at the main install's versions
    where they must agree (onnx reads and writes the models)."""
    import onnx

    reqs = [package, f"onnx=={onnx.__version__}", "numpy"]
    try:
        import ml_dtypes

        reqs.append(f"ml_dtypes=={ml_dtypes.__version__}")
    except ImportError:  # pragma: no cover
        pass
    return reqs


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING")]
        last = next((ln.strip() for ln in reversed(lines) if "ERROR" in ln), None) or \
            (lines[-1].strip() if lines else f"exit code {proc.returncode}")
        raise OnnxscaleError(f"{what} failed: {last}")


def _build(venv: Path, requirements: list[str]) -> str:
    """Create the virtual environment and install into it; returns the tool used."""
    uv = shutil.which("uv")
    if uv:
        _run([uv, "venv", "--quiet", "--python", sys.executable, str(venv)], "uv venv")
        _run([uv, "pip", "install", "--quiet", "--python", str(python_in(venv)), *requirements],
             f"uv pip install {requirements[0]}")
        return "uv"
    _run([sys.executable, "-m", "venv", str(venv)], "python -m venv")
    _run([str(python_in(venv)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
          *requirements], f"pip install {requirements[0]}")
    return "pip"


def resolve_package(name: str, package: str | None) -> tuple[str, str]:
    """(environment name, requirement) for ``providers add NAME [--package REQ]``, refused in
    one line where no wheel can exist for this machine."""
    key = canonical(name)
    if not key or not all(c.isalnum() or c in "-_." for c in key):
        raise UsageError(f"providers add '{name}': a name is letters, digits, '-', '_' or '.'")
    if package:
        return key, package.strip()
    flavour = FLAVOURS.get(key)
    if flavour is None:
        known = ", ".join(FLAVOURS)
        raise UsageError(f"providers add '{name}': not a known flavour ({known}); for another "
                         f"wheel give --package NAME==VERSION")
    if this_platform() not in flavour.platforms:
        where = ", ".join(flavour.platforms)
        raise UsageError(f"providers add {key}: {flavour.package} has no wheel for "
                         f"{this_platform()} (only {where})")
    return key, flavour.package


def create(name: str, package: str | None = None, *, force: bool = False) -> Environment:
    """Make (or, with ``force``, remake) an environment; the folder appears only once it
    works, so an interrupted or failed install leaves nothing half-made behind."""
    from .worker import probe

    key, requirement = resolve_package(name, package)
    target = root() / key
    existing = load(target) if target.is_dir() else None
    if existing is not None and not force and existing.problem() is None:
        raise UsageError(f"providers add {key}: already made at {target} (onnxruntime "
                         f"{existing.ort_version}); remake it with --force")
    root().mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root()))
    try:
        tool = _build(staging / "venv", _requirements(requirement))
        facts = probe(python_in(staging / "venv"))
        flavour = FLAVOURS.get(key)
        if flavour is not None and not set(flavour.providers) & set(facts["providers"]):
            raise OnnxscaleError(f"{requirement} installed but its onnxruntime "
                                 f"{facts['ort_version']} offers {', '.join(facts['providers'])}, "
                                 f"not {', '.join(flavour.providers)}")
        env = Environment(name=key, path=target, package=requirement,
                          version=facts.get("package_version"), ort_version=facts["ort_version"],
                          providers=facts["providers"], python=facts.get("python"),
                          created_at=time.time(), tool=tool)
        manifest = env.to_dict()
        manifest.pop("path")
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        # A venv's scripts name its folder; the interpreter does not, so moving is safe for
        # `python -m` (the only way onnxscale runs it).
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load(target)  # type: ignore[return-value]


def remove(name: str) -> Path:
    key = canonical(name)
    target = root() / key
    if not target.is_dir():
        made = ", ".join(e.name for e in environments()) or "none"
        raise UsageError(f"providers remove {key}: no such environment (made: {made})")
    shutil.rmtree(target)
    return target
