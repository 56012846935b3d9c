#!/usr/bin/env bash
# The whole GPU session in one call: install the carried peer wheel (if any), then check and time every kernel.
#   device tool:  run(command="bash bench/gpu.sh", carry=[".whl"])      (after bench/fetch_wheels.sh here)
# Results: $OUT/<date>-<device>.json (copy it to bench/results/ and into docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 bench/kernels.py --out "${OUT:-bench/results}" "$@"
# the cost model on the same machine's Triton, so measurement and prediction land side by side
python3 bench/kernel_model.py --json "${OUT:-bench/results}/kernel_model.json" || true
