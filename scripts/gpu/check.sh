#!/usr/bin/env bash
# Runs THERE, on a lent GPU machine, from the repo root (or here with --dry-run, CPU only).
#
# One bounded pass: everything ends before a global deadline (CHECK_BUDGET, 270 s by default,
# under the 5 minutes a call may spend), every step runs under `timeout -k` (native calls that
# ignore SIGTERM are killed), and what the check wrote is packed into ONE file,
# $OUT/gpu-check.tar.xz, beside summary.txt (a device call returns at most 8 files).
#
# 1. verifies the parts that have arrived under .gpu/parts (they may come over several calls
#    while the machine stays warm) and, while some are missing, says which and stops (exit 0:
#    that is the expected state between calls);
# 2. joins them (an xz-compressed tar), checks every SHA-256, installs the wheels into a
#    private prefix (so onnxruntime-gpu shadows the image's CPU onnxruntime) and points the
#    loader at the CUDA/cuDNN libraries PyTorch's wheels bring;
# 3. scripts/gpu/checks.py, in order: onnxruntime from the prefix; CUDA first; every node on
#    CUDA for ResNet-50 and EfficientNet-B0 (fp32, fp16) with outputs agreeing; IO binding;
#    CUDA graphs; TensorRT's row or reason; CUDA-vs-CPU speedup; then `pytest -m gpu` with
#    what time is left;
# 4. packs the results and prints the checks (summarize.py).
#
#   bash scripts/gpu/check.sh             # on the GPU machine, every call
#   bash scripts/gpu/check.sh --dry-run   # here: join/verify, the deadline and the packing
# Knobs (env): CHECK_BUDGET (s), ORT_PREFIX, PYTHON, OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu/out}
PARTS=${GPU_PARTS:-.gpu/parts}
PREFIX=${ORT_PREFIX:-/tmp/onnxscale-gpu-site}
BUDGET=${CHECK_BUDGET:-270}
started=$(date +%s)
DEADLINE=$(( started + BUDGET ))
WORK=$(mktemp -d "${TMPDIR:-/tmp}/onnxscale-gpu-check.XXXXXX")
left() { echo $(( DEADLINE - $(date +%s) )); }
# bounded CMD...: run CMD with what is left of the budget (minus a reserve for packing)
bounded() {
  local budget=$(( $(left) - 20 ))
  [ "$budget" -lt 5 ] && { log "skipped (deadline): $*"; return 124; }
  timeout -k 5 "$budget" "$@"
}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[check] $*" | tee -a "$WORK/check.log"; }

# ---- 1. parts ------------------------------------------------------------------------------
$PY scripts/gpu/parts.py verify "$PARTS" | tee -a "$WORK/check.log"
status=${PIPESTATUS[0]}
if [ "$status" = 3 ]; then
  log "not all parts are here yet: carry the missing ones (and MANIFEST.json) in the next call"
  cp "$WORK/check.log" "$OUT/check.log"; rm -rf "$WORK"
  exit 0
elif [ "$status" != 0 ]; then
  log "parts unusable (status $status): carry them again"
  cp "$WORK/check.log" "$OUT/check.log"; rm -rf "$WORK"
  exit "$status"
fi

# ---- 2. join, verify, install --------------------------------------------------------------
bundle_sha=$($PY -c "import json; print(json.load(open('$PARTS/MANIFEST.json'))['sha256'])")
if [ "$(cat "$PREFIX/.bundle-sha256" 2>/dev/null)" != "$bundle_sha" ]; then
  rm -rf .gpu/unpacked && mkdir -p .gpu/unpacked
  $PY scripts/gpu/parts.py join "$PARTS" .gpu/bundle | tee -a "$WORK/check.log" || exit 4
  # GNU tar tells xz (what prepare.sh makes) from a plain tar by itself
  bounded tar -xf .gpu/bundle -C .gpu/unpacked && rm -f .gpu/bundle
  (cd .gpu/unpacked/wheels && sha256sum -c --quiet SHA256SUMS) || { log "a wheel's sum is wrong"; exit 4; }
  log "bundle joined and verified: $(ls .gpu/unpacked/wheels/*.whl | xargs -n1 basename | tr '\n' ' ')"
  pyver=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ $DRY = 1 ] || [ "$pyver" != 3.12 ]; then
    log "dry run (Python $pyver): not installing the CPython 3.12 wheels; using this machine's onnxruntime"
  else
    rm -rf "$PREFIX"
    bounded $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$PREFIX" \
      .gpu/unpacked/wheels/*.whl || { log "pip install into $PREFIX failed"; exit 5; }
    echo "$bundle_sha" > "$PREFIX/.bundle-sha256"
    log "installed into $PREFIX"
  fi
else
  log "already installed in $PREFIX (same bundle)"
fi
[ -d "$PREFIX" ] && export PYTHONPATH="$PREFIX:$PWD${PYTHONPATH:+:$PYTHONPATH}" \
  || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

# CUDA, cuBLAS, cuDNN ... from PyTorch's nvidia-* wheels (ONNX Runtime dlopens them by name)
libs=$($PY - <<'EOF'
import importlib.util, pathlib
dirs = []
for name in ("nvidia", "torch", "tensorrt_libs", "tensorrt"):
    spec = importlib.util.find_spec(name)
    for root in (spec.submodule_search_locations or []) if spec else []:
        root = pathlib.Path(root)
        dirs += [str(p) for p in sorted(root.glob("*/lib")) + sorted(root.glob("lib")) if p.is_dir()]
        dirs += [str(root)] if name.startswith("tensorrt") else []
print(":".join(dict.fromkeys(dirs)))
EOF
)
export LD_LIBRARY_PATH="${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
bounded $PY - <<'EOF' 2>&1 | tee "$WORK/environment.txt"
import onnxruntime as ort, platform, subprocess
print("onnxruntime", ort.__version__, "from", ort.__file__)
print("available providers:", ort.get_available_providers())
print("python", platform.python_version())
try:
    print(subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip())
except OSError:
    print("nvidia-smi: not found")
EOF

# ---- 3. the checks, then the GPU tests with what is left -----------------------------------
dry_flag=""; [ $DRY = 1 ] && dry_flag="--dry-run"
bounded $PY scripts/gpu/checks.py "$WORK" --deadline "$(( DEADLINE - 25 ))" --prefix "$PREFIX" \
  $dry_flag > "$WORK/checks.txt" 2> "$WORK/checks.err"
log "checks: exit $? with $(left) s left"
bounded $PY -m pytest -q -m gpu tests/test_bench.py tests/test_providers.py \
  -p no:cacheprovider -rs > "$WORK/pytest-gpu.txt" 2>&1
log "pytest -m gpu: $(tail -1 "$WORK/pytest-gpu.txt") ($(left) s left)"

# ---- 4. pack and summarize -----------------------------------------------------------------
$PY scripts/gpu/summarize.py "$WORK" > "$OUT/summary.txt" 2>&1
log "done in $(( $(date +%s) - started )) s (budget $BUDGET s)"
cat "$OUT/summary.txt"
tar -cJf "$OUT/gpu-check.tar.xz" -C "$WORK" . && rm -rf "$WORK"
ls "$OUT"
