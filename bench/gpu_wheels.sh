#!/usr/bin/env bash
# The wheels that bench/gpu_check.py needs on a bare GPU machine, made here (where PyPI is reachable) and carried
# there with the checkout: DeepSpeed and the pure-Python and compiled packages it imports that such a machine
# lacks, for CPython 3.12 on manylinux x86_64, at the versions in constraints.txt. gpu_check.py installs the ones
# the machine is missing into a temporary folder, from these files alone (no network).
#
#   bench/gpu_wheels.sh [OUT]          # default OUT: build/gpu-wheels (ignored by git); also `make gpu-wheels`
#
# The GPU machine is assumed to have torch (a CUDA build), numpy, psutil, pyarrow, tokenizers, safetensors, pandas,
# scipy and matplotlib. DeepSpeed is an sdist: it is built into a wheel here with DS_BUILD_OPS=0 (no CUDA op: the
# training loop needs none; DeepSpeed would JIT-compile ops only for features arscale does not use), against the
# torch of this environment (its setup.py imports torch). Environment: PYTHON (default .venv/bin/python, else
# python3), GPU_PYTHON_VERSION (default 3.12).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/gpu-wheels}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
PYV=${GPU_PYTHON_VERSION:-3.12}
ABI=cp${PYV/./}

pin() {  # the version constraints.txt pins for a package (names compared as pip does: case, - _ . alike)
    local name
    name=$(echo "$1" | tr 'A-Z_.' 'a-z--')
    awk -F'==' -v n="$name" '{k=tolower($1); gsub(/[_.]/, "-", k)} k==n {print $2}' constraints.txt
}
spec() { local v; v=$(pin "$1"); [ -n "$v" ] || { echo "error: $1 is not pinned in constraints.txt" >&2; exit 2; }
         echo "$1==$v"; }

# DeepSpeed's imports (its requirements less torch, numpy and psutil), pydantic's, and theirs. packaging, tqdm and
# typing_extensions are usually there already (torch, tokenizers and matplotlib bring them); gpu_check.py
# installs only what the machine lacks, or has in an older version than these.
PACKAGES=(hjson py-cpuinfo msgpack einops ninja packaging tqdm pydantic pydantic_core annotated-types
          typing-inspection typing_extensions)

tmp="$OUT.tmp"
rm -rf "$tmp"
mkdir -p "$tmp"
specs=()
for p in "${PACKAGES[@]}"; do specs+=("$(spec "$p")"); done
echo "downloading ${#specs[@]} wheels for CPython $PYV, manylinux x86_64: ${specs[*]}"
"$PYTHON" -m pip download --quiet --disable-pip-version-check --no-cache-dir --no-deps --only-binary=:all: \
    --python-version "$PYV" --implementation cp --abi "$ABI" --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$tmp" "${specs[@]}"

deepspeed=$(spec deepspeed)
echo "building $deepspeed into a wheel (DS_BUILD_OPS=0, against $("$PYTHON" -c 'import torch; print("torch", torch.__version__)'))"
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-cache-dir --no-deps --no-build-isolation \
    --no-binary deepspeed -w "$tmp" "$deepspeed"

# one wheel per package, every package there
count=$(ls "$tmp"/*.whl | wc -l)
[ "$count" -eq $(( ${#PACKAGES[@]} + 1 )) ] || { echo "error: expected $(( ${#PACKAGES[@]} + 1 )) wheels, got $count" >&2; exit 1; }
rm -rf "$OUT"
mv "$tmp" "$OUT"
ls -l "$OUT"
echo "$count wheels, $(du -sh "$OUT" | cut -f1) in all, in $OUT"
