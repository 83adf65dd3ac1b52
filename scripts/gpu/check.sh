#!/usr/bin/env bash
# Runs THERE, on a lent GPU machine, from the repo root (or here with --dry-run, CPU only).
#
# 1. verifies the parts that have arrived under .gpu/parts (they may come over several calls
#    while the machine stays warm) and, while some are missing, says which and stops (exit 0:
#    that is the expected state between calls);
# 2. joins them, checks every SHA-256, installs the wheels into a private prefix (so
#    onnxruntime-gpu shadows the image's CPU onnxruntime) and points the loader at the
#    CUDA/cuDNN libraries PyTorch's wheels bring;
# 3. in one pass: `pytest -m gpu`; `onnxscale bench` of ResNet-50 and EfficientNet-B0 at batch
#    1 and 64 on cpu, cuda and tensorrt, fp32 and fp16, with IO binding and CUDA graphs;
# 4. writes everything to $OUT (JSON, logs, the results database) and prints which providers
#    really ran and which fell back, and why (summarize.py).
#
#   bash scripts/gpu/check.sh             # on the GPU machine, every call
#   bash scripts/gpu/check.sh --dry-run   # here: join/verify and provider reporting, CPU only
# Knobs (env): BENCH_MODELS, BENCH_BATCHES, BENCH_SECONDS, BENCH_TIMEOUT, ORT_PREFIX, PYTHON.
set -uo pipefail
cd "$(dirname "$0")/../.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
OUT=${OUT:-$PWD/.gpu/out}
PARTS=${GPU_PARTS:-.gpu/parts}
PREFIX=${ORT_PREFIX:-/tmp/onnxscale-gpu-site}
if [ $DRY = 1 ]; then
  MODELS=${BENCH_MODELS:-zoo:resnet-18}; BATCHES=${BENCH_BATCHES:-1}
  SECONDS_EACH=${BENCH_SECONDS:-0.5}; BENCH_TIMEOUT=${BENCH_TIMEOUT:-120}
else
  MODELS=${BENCH_MODELS:-zoo:resnet-50 zoo:efficientnet-b0}; BATCHES=${BENCH_BATCHES:-1,64}
  SECONDS_EACH=${BENCH_SECONDS:-2}; BENCH_TIMEOUT=${BENCH_TIMEOUT:-150}
fi
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log() { echo "[check] $*" | tee -a "$OUT/check.log"; }
started=$(date +%s)

# ---- 1. parts ------------------------------------------------------------------------------
$PY scripts/gpu/parts.py verify "$PARTS" | tee -a "$OUT/check.log"
status=${PIPESTATUS[0]}
if [ "$status" = 3 ]; then
  log "not all parts are here yet: carry the missing ones (and MANIFEST.json) in the next call"
  exit 0
elif [ "$status" != 0 ]; then
  log "parts unusable (status $status): carry them again"
  exit "$status"
fi

# ---- 2. join, verify, install --------------------------------------------------------------
bundle_sha=$($PY -c "import json; print(json.load(open('$PARTS/MANIFEST.json'))['sha256'])")
if [ "$(cat "$PREFIX/.bundle-sha256" 2>/dev/null)" != "$bundle_sha" ]; then
  rm -rf .gpu/unpacked && mkdir -p .gpu/unpacked
  $PY scripts/gpu/parts.py join "$PARTS" .gpu/bundle.tar | tee -a "$OUT/check.log" || exit 4
  tar -xf .gpu/bundle.tar -C .gpu/unpacked && rm -f .gpu/bundle.tar
  (cd .gpu/unpacked/wheels && sha256sum -c --quiet SHA256SUMS) || { log "a wheel's sum is wrong"; exit 4; }
  log "bundle joined and verified: $(ls .gpu/unpacked/wheels/*.whl | xargs -n1 basename | tr '\n' ' ')"
  pyver=$($PY -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  if [ $DRY = 1 ] || [ "$pyver" != 3.12 ]; then
    log "dry run (Python $pyver): not installing the CPython 3.12 wheels; using this machine's onnxruntime"
  else
    rm -rf "$PREFIX"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$PREFIX" \
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
$PY - <<'EOF' 2>&1 | tee "$OUT/environment.txt"
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

# ---- 3. tests and benchmarks ---------------------------------------------------------------
timeout 180 $PY -m pytest -q -m gpu tests/test_bench.py -p no:cacheprovider -rs \
  > "$OUT/pytest-gpu.txt" 2>&1
log "pytest -m gpu: $(tail -1 "$OUT/pytest-gpu.txt")"

bench() {  # bench LABEL ARGS...: one onnxscale bench invocation, bounded in time
  local label=$1; shift
  local t0=$(date +%s)
  timeout "$BENCH_TIMEOUT" $PY -m onnxscale bench $MODELS --batch "$BATCHES" \
    --seconds "$SECONDS_EACH" --db "$OUT/results.db" --cache-dir .gpu/trt-cache --json "$@" \
    > "$OUT/bench-$label.json" 2> "$OUT/bench-$label.err"
  local rc=$?
  log "bench $label: exit $rc in $(( $(date +%s) - t0 )) s$([ $rc = 124 ] && echo ' (timed out)')"
}
bench fp32 --provider cpu,cuda,tensorrt
bench fp16 --provider cuda,tensorrt --precision fp16
bench iobinding --provider cuda --io-binding
bench cudagraph --provider cuda --io-binding --cuda-graph
log "sweep: not run (onnxscale sweep does not exist yet)"

# ---- 4. summary ----------------------------------------------------------------------------
$PY scripts/gpu/summarize.py "$OUT" | tee "$OUT/summary.txt"
log "done in $(( $(date +%s) - started )) s; results in $OUT"
