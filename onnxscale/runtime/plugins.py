"""Plugin execution providers (ONNX Runtime ≥ 1.23): libraries that install beside any
onnxruntime flavour and register at run time.

A plugin package (``onnxruntime-ep-openvino``, ``onnxruntime-ep-nv-tensorrt-rtx``,
``onnxruntime-ep-webgpu``, ...) ships a shared library and, by convention, a module with
``get_library_path()`` and ``get_ep_names()``.  ``get_available_providers()`` never lists such a
provider: it is registered with ``register_execution_provider_library``, offers zero or more
devices through ``get_ep_devices``, and a session takes it with
``SessionOptions.add_provider_for_devices``.  A plugin that registers but offers no device on
this machine is reported with that reason, never silently replaced by CPU.

``--ep-library PATH`` (or ``$ONNXSCALE_EP_LIBRARIES``, paths joined by ``os.pathsep``) adds a
library that no package announces.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path

ENV_LIBRARIES = "ONNXSCALE_EP_LIBRARIES"


@dataclass
class Plugin:
    """One plugin library: where it came from, what it registered, what devices it offers."""

    name: str                      # registration name (the package or the file's stem)
    library: str
    package: str | None = None
    version: str | None = None
    ep_names: list[str] = field(default_factory=list)
    devices: dict[str, list[str]] = field(default_factory=dict)  # ep name -> device labels
    reason: str | None = None      # why it cannot be used, when it cannot

    def offers(self, provider: str) -> bool:
        return bool(self.devices.get(provider))

    def to_dict(self) -> dict:
        return {"name": self.name, "library": self.library, "package": self.package,
                "version": self.version, "ep_names": self.ep_names, "devices": self.devices,
                "reason": self.reason}


_FOUND: dict[str, Plugin] = {}
_EXTRA: list[str] = []


def add_library(path: str | os.PathLike) -> None:
    """A plugin library given by path (``--ep-library``), discovered beside the packages."""
    text = str(Path(path).expanduser().resolve())
    if text not in _EXTRA:
        _EXTRA.append(text)


def _packages() -> list[tuple[str, str, str]]:
    """(distribution, version, module) of every installed ``onnxruntime-ep-*`` package."""
    import importlib.metadata as md

    found = []
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if not name.startswith("onnxruntime-ep-"):
            continue
        top = (dist.read_text("top_level.txt") or "").split()
        module = top[0] if top else name.replace("-", "_")
        found.append((name, dist.version, module))
    return sorted(set(found))


def _device_label(device) -> str:
    hw = device.device
    kind = str(hw.type).rsplit(".", 1)[-1]
    return f"{kind} ({hw.vendor})" if getattr(hw, "vendor", "") else kind


_REGISTERED: dict[str, set[str]] = {}  # library -> EP names it added; onnxruntime refuses a
                                       # second registration, so this outlives any rediscovery


def _register(ort, plugin: Plugin) -> None:
    if plugin.library not in _REGISTERED:
        before = {d.ep_name for d in ort.get_ep_devices()}
        try:
            ort.register_execution_provider_library(plugin.name, plugin.library)
        except Exception as exc:
            plugin.reason = f"registering {Path(plugin.library).name} failed: {str(exc)[:300]}"
            return
        _REGISTERED[plugin.library] = {d.ep_name for d in ort.get_ep_devices()} - before
    devices = ort.get_ep_devices()
    names = plugin.ep_names or sorted(_REGISTERED[plugin.library])
    plugin.ep_names = names
    for ep in names:
        plugin.devices[ep] = [_device_label(d) for d in devices if d.ep_name == ep]
    if not any(plugin.devices.values()):
        cpus = sorted({_device_label(d) for d in devices if d.ep_name == "CPUExecutionProvider"})
        plugin.reason = (f"registered, but offers no device on this machine "
                         f"(onnxruntime sees {', '.join(cpus) or 'no device'})")


def discover() -> list[Plugin]:
    """Every plugin on this machine, registered once per process."""
    try:
        import onnxruntime as ort
    except Exception:  # pragma: no cover
        return []
    candidates: list[Plugin] = []
    for dist, version, module in _packages():
        plugin = Plugin(name=dist, library="", package=dist, version=version)
        try:
            mod = importlib.import_module(module)
            plugin.library = str(mod.get_library_path())
            if hasattr(mod, "get_ep_names"):
                plugin.ep_names = list(mod.get_ep_names())
        except Exception as exc:
            plugin.reason = f"its module '{module}' gives no library: {str(exc)[:200]}"
        candidates.append(plugin)
    extra = list(_EXTRA) + [p for p in os.environ.get(ENV_LIBRARIES, "").split(os.pathsep) if p]
    for library in extra:
        candidates.append(Plugin(name=Path(library).stem, library=library))
    for plugin in candidates:
        key = plugin.library or plugin.name
        if key in _FOUND:
            continue
        if plugin.reason is None:
            if not hasattr(ort, "register_execution_provider_library"):
                plugin.reason = (f"needs onnxruntime ≥ 1.23 for plugin providers (this is "
                                 f"{ort.__version__})")
            elif not Path(plugin.library).exists():
                plugin.reason = f"library {plugin.library} does not exist"
            else:
                _register(ort, plugin)
        _FOUND[key] = plugin
    return list(_FOUND.values())


def for_provider(provider: str) -> list[Plugin]:
    """The plugins that name ``provider`` (usable or not)."""
    return [p for p in discover() if provider in p.ep_names]


def add_to_session(so, provider: str, options: dict[str, str]) -> None:
    """Give a session ``provider``'s devices (all those the plugin offers)."""
    import onnxruntime as ort

    devices = [d for d in ort.get_ep_devices() if d.ep_name == provider]
    so.add_provider_for_devices(devices, dict(options))
