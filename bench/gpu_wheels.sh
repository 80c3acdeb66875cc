#!/usr/bin/env bash
# Wheels for the GPU machine, which has no internet: everything bench/gpu_check.sh needs beyond the machine's own
# Python 3.12 with torch, torchvision, timm, scipy and scikit-learn, for CPython 3.12 on manylinux x86-64, in .whl/
# (git-ignored). gpu_check.sh installs only those whose modules the machine lacks.
#
#     bash bench/gpu_wheels.sh        # or: make gpu-wheels
#
# faiss: the GPU build when PyPI's build for CUDA 12 brings no CUDA libraries of its own (those would exceed the
# 64 MiB a working tree may carry), else faiss-cpu. Prints each wheel and the total size.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
DEST=${WHEELS:-.whl}
LIMIT_MIB=64  # what may travel with the working tree, this repository included
# Run-time needs (requirements.txt) and their dependencies, less what every torch machine has (numpy, pillow,
# packaging): pyyaml, tqdm, matplotlib (figures), pytest (the CUDA tests).
PACKAGES=(pyyaml tqdm matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six
          pytest pytest-timeout iniconfig pluggy)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    PLATFORMS+=(--platform "$tag")
done

download() {  # into $1: the packages that follow, without their dependencies (each one is listed)
    local into=$1
    shift
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${PLATFORMS[@]}" -d "$into" "$@"
}

rm -rf "$DEST"
mkdir -p "$DEST"
download "$DEST" "${PACKAGES[@]}"

probe=$(mktemp -d)
if ! download "$probe" faiss-gpu-cu12 2>/dev/null; then
    why="the index has no faiss-gpu-cu12 wheel for CPython 3.12"
elif unzip -p "$probe"/faiss_gpu*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | grep -q nvidia-; then
    why="faiss-gpu-cu12 needs CUDA 12 libraries as further wheels, too large to carry"
else
    why=""
    mv "$probe"/faiss_gpu*.whl "$DEST"/
    echo "faiss: the GPU build (faiss-gpu-cu12)"
fi
rm -rf "$probe"
if [ -n "$why" ]; then
    download "$DEST" faiss-cpu
    echo "faiss: faiss-cpu ($why)"
fi

ls -l "$DEST" | awk 'NR > 1 {printf "%8.1f MiB  %s\n", $5 / 2^20, $9}'
total=$(du -cb "$DEST"/*.whl | tail -n 1 | cut -f1)
awk -v total="$total" -v limit="$LIMIT_MIB" 'BEGIN {
    printf "total: %.1f MiB of wheels (the travelling working tree may hold %d MiB, this repository included)\n",
        total / 2^20, limit
}'
