#!/usr/bin/env bash
# Download the peer's wheel (eai-sparsify, pure Python) into .whl/ for the GPU machine, which has no network.
# .whl/ is git-ignored; name it in the device tool's `carry` and run bench/gpu.sh there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl "eai-sparsify==1.3.3"
ls -l .whl
