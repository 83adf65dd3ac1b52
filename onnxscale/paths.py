"""Where onnxscale keeps what it makes for the user between runs (caches), so the folder is
decided in one place."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def default_cache_dir() -> Path:
    """``$ONNXSCALE_CACHE_DIR``, else ``$XDG_CACHE_HOME/onnxscale`` or ``~/.cache/onnxscale``."""
    env = os.environ.get("ONNXSCALE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "onnxscale" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "onnxscale"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onnxscale"
