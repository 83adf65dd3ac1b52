#!/usr/bin/env bash
# Runs HERE (no GPU needed): fetch what the lent GPU machine lacks to run onnxscale's
# CUDA/TensorRT paths, and cut it into parts that fit one device call each.
#
# The GPU machine (see the device tool's KINDS.md) has Python 3.12, PyTorch on CUDA 13 /
# cuDNN 9, onnx, numpy, click, rich, networkx, pytest and onnxruntime (CPU only), but no
# onnxruntime-gpu and no registry.  This downloads onnxruntime-gpu for CPython 3.12
# manylinux x86-64 and those of its requirements the image does not list, packs the wheels
# into one xz-compressed tar and splits it into parts (scripts/gpu/parts.py) under .gpu/parts/ with a
# SHA-256 manifest.  .gpu/ is git-ignored; each device call carries the manifest and one
# part (see README, "GPU check").
#
#   bash scripts/gpu/prepare.sh            # ORT_GPU_VERSION=1.31.1 PART_MIB=56 to override
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=.gpu
PART_MIB=${PART_MIB:-56}
PYTHON=${PYTHON:-python3}
# the version this checkout installs here, so both machines run the same ONNX Runtime
ORT_GPU_VERSION=${ORT_GPU_VERSION:-$($PYTHON -c "import importlib.metadata as m; print(m.version('onnxruntime-gpu'))" 2>/dev/null || true)}
# packages the GPU image already has (KINDS.md, 'Python packages already there')
PRESENT=" coloredlogs flatbuffers numpy packaging protobuf sympy mpmath humanfriendly "
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)

spec=onnxruntime-gpu${ORT_GPU_VERSION:+==$ORT_GPU_VERSION}
rm -rf "$ROOT/wheels" "$ROOT/parts" "$ROOT/bundle.tar.xz"
mkdir -p "$ROOT/wheels"
fetch() {
  $PYTHON -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$ROOT/wheels" "$@"
}
echo "downloading $spec for CPython 3.12 manylinux x86-64 ..."
fetch "$spec"
wheel=$(ls "$ROOT"/wheels/onnxruntime_gpu-*.whl)
# its requirements (not extras) that the image lacks
for requirement in $(unzip -p "$wheel" '*.dist-info/METADATA' | sed -n 's/^Requires-Dist: //p' \
                     | grep -v 'extra ==' | sed 's/[ ;<>=!~(].*//' | tr 'A-Z_' 'a-z-'); do
  if [[ "$PRESENT" != *" $requirement "* ]]; then
    echo "  + $requirement (not in the GPU image)"
    fetch "$requirement"
  fi
done
(cd "$ROOT/wheels" && sha256sum ./*.whl > SHA256SUMS)
# xz: the CUDA provider library shrinks from 284 MB to 186 MB, one call's part fewer or more
tar -cf - -C "$ROOT" wheels | xz -T0 -6 > "$ROOT/bundle.tar.xz"
$PYTHON scripts/gpu/parts.py split "$ROOT/bundle.tar.xz" "$ROOT/parts" --part-mib "$PART_MIB"
rm -f "$ROOT/bundle.tar.xz"
ls -l "$ROOT/parts"
count=$(ls "$ROOT"/parts/part-* | wc -l)
echo "carry .gpu/parts/MANIFEST.json and one .gpu/parts/part-NN per device call ($count calls);"
echo "each call runs: bash scripts/gpu/check.sh   (it says which parts are still missing)"
