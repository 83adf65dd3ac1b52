"""What machine and software a measurement ran on.

`collect()` returns a JSON-able dict: CPU model, logical/physical/usable cores, ISA flags that
change kernel choice, memory, OS, Python, numpy and onnxruntime versions (and the CUDA version
onnxruntime was built for), GPU name/driver/memory from ``nvidia-smi`` and the CUDA runtime,
cuDNN and TensorRT library versions when they can be found.  ``id`` hashes the fields that
identify the hardware and software (not the host name, which containers change on every start),
so the same machine gives the same id across runs and results from several machines can be told
apart in the store.

``$ONNXSCALE_MACHINE`` names a machine, and the name is part of its id: set it where machines
look alike to the fields above but should be compared apart (containers with different CPU
quotas, a GPU at another power limit, two nodes of a Ray cluster).  Unset, ids are as before.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
from functools import lru_cache

# Fields that identify a machine; everything else is informative.
_ID_FIELDS = ("cpu", "cpu_logical_cores", "cpu_physical_cores", "cpu_usable_cores", "cpu_isa",
              "memory_gb", "os", "ort_version", "ort_package", "ort_build_cuda", "gpus",
              "cuda_runtime", "cudnn", "tensorrt")

MACHINE_NAME_ENV = "ONNXSCALE_MACHINE"

_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile",
              "amx_bf16", "asimd", "sve")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def _cpu_info() -> dict:
    text = _read("/proc/cpuinfo")
    model = ""
    cores: set[tuple[str, str]] = set()
    flags: set[str] = set()
    phys = core = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key in ("model name", "Model Name", "Hardware") and not model:
            model = value
        elif key == "physical id":
            phys = value
        elif key == "core id":
            core = value
            cores.add((phys, core))
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    if not model and sys.platform == "darwin":
        try:
            model = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"],
                                   capture_output=True, text=True, timeout=5).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            model = ""
    model = " ".join((model or platform.processor() or platform.machine()).split())
    logical = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = logical
    return {
        "cpu": model,
        "cpu_arch": platform.machine(),
        "cpu_logical_cores": logical,
        "cpu_physical_cores": len(cores) or logical,
        "cpu_usable_cores": usable,
        "cpu_isa": [f for f in _ISA_FLAGS if f in flags],
    }


def _memory_gb() -> float | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024 / 1024, 1)
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        return round(pages * size / 1024 ** 3, 1)
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[dict]:
    """NVIDIA GPUs as ``nvidia-smi`` sees them (empty when there is none or no driver)."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    query = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run([exe, f"--query-gpu={query}", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return []
    if out.returncode != 0:
        # old drivers do not know compute_cap
        try:
            out = subprocess.run([exe, "--query-gpu=name,driver_version,memory.total",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True,
                                 timeout=15)
        except (OSError, subprocess.SubprocessError):
            return []
        if out.returncode != 0:
            return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 3:
            continue
        gpu = {"name": fields[0], "driver": fields[1]}
        try:
            gpu["memory_mb"] = int(float(fields[2]))
        except ValueError:
            pass
        if len(fields) > 3 and fields[3] not in ("", "[N/A]"):
            gpu["compute_capability"] = fields[3]
        gpus.append(gpu)
    return gpus


def _library_dirs() -> list[str]:
    """Folders that may hold CUDA / cuDNN / TensorRT libraries (pip wheels, toolkits, system)."""
    dirs: list[str] = []
    for entry in sys.path:
        if entry.endswith("site-packages") and os.path.isdir(entry):
            dirs += glob.glob(os.path.join(entry, "nvidia", "*", "lib"))
            dirs += glob.glob(os.path.join(entry, "nvidia", "*", "*", "lib"))
            dirs += glob.glob(os.path.join(entry, "tensorrt_libs"))
            dirs += glob.glob(os.path.join(entry, "tensorrt"))
    dirs += [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if d]
    dirs += ["/usr/local/cuda/lib64", "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu",
             "/usr/lib64", "/usr/lib"]
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def _load_first(pattern: str) -> ctypes.CDLL | None:
    for folder in _library_dirs():
        for path in sorted(glob.glob(os.path.join(folder, pattern)), reverse=True):
            try:
                return ctypes.CDLL(path)
            except OSError:
                continue
    return None


def _cuda_runtime() -> str | None:
    lib = _load_first("libcudart.so*")
    if lib is None:
        return None
    version = ctypes.c_int()
    try:
        if lib.cudaRuntimeGetVersion(ctypes.byref(version)) != 0:
            return None
    except AttributeError:
        return None
    v = version.value
    return f"{v // 1000}.{(v % 1000) // 10}"


def _cudnn() -> str | None:
    lib = _load_first("libcudnn.so*")
    if lib is None:
        return None
    try:
        lib.cudnnGetVersion.restype = ctypes.c_size_t
        v = int(lib.cudnnGetVersion())
    except AttributeError:
        return None
    if v >= 10000:  # cuDNN 9: major*10000 + minor*100 + patch
        return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
    return f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"  # cuDNN 8: major*1000 + minor*100 + patch


def _tensorrt() -> str | None:
    try:
        from importlib import metadata

        for dist in ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_libs"):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
    except ImportError:  # pragma: no cover
        pass
    lib = _load_first("libnvinfer.so*")
    if lib is None:
        return None
    try:
        lib.getInferLibVersion.restype = ctypes.c_int32
        v = int(lib.getInferLibVersion())
    except AttributeError:
        return None
    if v >= 10000:  # TensorRT 10: major*10000 + minor*100 + patch
        return f"{v // 10000}.{(v % 10000) // 100}.{v % 100}"
    return f"{v // 1000}.{(v % 1000) // 100}.{v % 100}"


def _ort_info() -> dict:
    info: dict = {}
    try:
        import onnxruntime as ort

        info["ort_version"] = ort.__version__
        info["ort_providers"] = list(ort.get_available_providers())
        try:
            from onnxruntime.capi import build_and_package_info as build

            info["ort_package"] = getattr(build, "package_name", None)
            info["ort_build_cuda"] = getattr(build, "cuda_version", None) or None
        except ImportError:
            pass
        try:
            info["ort_build"] = ort.get_build_info()
        except Exception:
            pass
    except Exception as exc:  # pragma: no cover
        info["ort_version"] = f"unavailable ({exc})"
    return info


def fingerprint_id(fingerprint: dict) -> str:
    """A short stable hash of the identifying fields of a fingerprint."""
    ident = {k: fingerprint.get(k) for k in _ID_FIELDS}
    if fingerprint.get("name"):  # only when set, so unnamed machines keep their ids
        ident["name"] = fingerprint["name"]
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@lru_cache(maxsize=4)
def _collect_cached(probe_gpu_libraries: bool, name: str) -> str:
    import numpy

    fp: dict = {}
    if name:
        fp["name"] = name
    fp.update(_cpu_info())
    fp["memory_gb"] = _memory_gb()
    fp["os"] = f"{platform.system()} {platform.release()}"
    fp["hostname"] = socket.gethostname()
    fp["python"] = platform.python_version()
    fp["numpy"] = numpy.__version__
    fp.update(_ort_info())
    fp["gpus"] = _gpus()
    if probe_gpu_libraries:
        fp["cuda_runtime"] = _cuda_runtime()
        fp["cudnn"] = _cudnn()
        fp["tensorrt"] = _tensorrt()
    else:
        fp["cuda_runtime"] = fp["cudnn"] = fp["tensorrt"] = None
    fp["id"] = fingerprint_id(fp)
    return json.dumps(fp)


def collect(probe_gpu_libraries: bool | None = None) -> dict:
    """Fingerprint this machine.  GPU library versions are probed when a GPU is visible or
    onnxruntime was built with CUDA (``probe_gpu_libraries`` forces the choice)."""
    if probe_gpu_libraries is None:
        probe_gpu_libraries = bool(shutil.which("nvidia-smi")) or _ort_built_with_cuda()
    name = os.environ.get(MACHINE_NAME_ENV, "").strip()
    return json.loads(_collect_cached(bool(probe_gpu_libraries), name))


def _ort_built_with_cuda() -> bool:
    try:
        from onnxruntime.capi import build_and_package_info as build

        return bool(getattr(build, "cuda_version", None))
    except ImportError:
        return False


def label(fingerprint: dict) -> str:
    """A short human label for a machine: its name or host, CPU, GPU."""
    parts = [fingerprint.get("name") or fingerprint.get("hostname") or "?"]
    cpu = fingerprint.get("cpu") or "cpu"
    parts.append(f"{cpu} x{fingerprint.get('cpu_usable_cores') or '?'}")
    gpus = fingerprint.get("gpus") or []
    if gpus:
        parts.append(gpus[0].get("name", "gpu"))
    return " / ".join(parts)
