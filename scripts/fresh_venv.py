"""A fresh virtual environment with onnxscale installed as a new user gets it.

Benchmarks time what a user runs: ``pip install`` of this checkout (not editable) into a new
venv, which pulls the newest dependency versions the package metadata allows -- the cause of
past surprises (ml_dtypes 0.7.0 added 0.9 s to every command).  Bytecode is compiled at
install, as pip does for wheels, and timed runs keep bytecode caching on (this machine sets
PYTHONDONTWRITEBYTECODE=1; the timed environment drops it).

    from fresh_venv import FreshVenv
    venv = FreshVenv.create(extra=["onnx-tool"])   # or FreshVenv(Path(...)) to reuse one
    venv.run(["-m", "onnxscale", "analyze", "model.onnx"])
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONDONTWRITEBYTECODE",
                                                        "VIRTUAL_ENV", "PYTHONPATH")}


class FreshVenv:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.python = self.root / "bin" / "python"
        if not self.python.exists():
            raise SystemExit(f"{root}: not a virtual environment (no bin/python)")

    @classmethod
    def create(cls, extra: list[str] = (), root: Path | None = None) -> "FreshVenv":
        """A new venv with this checkout and ``extra`` packages, newest allowed versions."""
        root = Path(root or tempfile.mkdtemp(prefix="onnxscale-venv."))
        print(f"creating a fresh venv in {root} (pip install . {' '.join(extra)}) ...",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        venv = cls(root)
        subprocess.run([str(venv.python), "-m", "pip", "install", "-q", "--upgrade", "pip"],
                       check=True, env=ENV)
        subprocess.run([str(venv.python), "-m", "pip", "install", "-q", str(REPO), *extra],
                       check=True, env=ENV)
        return venv

    def versions(self, names: list[str]) -> dict[str, str]:
        code = ("import importlib.metadata as m, sys\n"
                "for n in sys.argv[1:]:\n"
                "    try: print(n, m.version(n))\n"
                "    except m.PackageNotFoundError: print(n, '-')")
        out = subprocess.run([str(self.python), "-c", code, *names], capture_output=True,
                             text=True, env=ENV, check=True).stdout
        return dict(line.split(" ", 1) for line in out.splitlines())

    def timed(self, args: list[str], cwd: Path | None = None) -> float:
        """Wall seconds of one ``python ARGS`` process in the venv (it must succeed)."""
        start = time.perf_counter()
        result = subprocess.run([str(self.python), *args], capture_output=True, text=True,
                                env=ENV, cwd=cwd)
        elapsed = time.perf_counter() - start
        if result.returncode != 0:
            raise SystemExit(f"{' '.join(args[:4])} failed: {result.stderr[-800:]}")
        return elapsed
