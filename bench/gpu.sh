#!/usr/bin/env bash
# The whole GPU session in one call: install the carried peer wheel (if any), check and time every kernel, then
# train on CUDA with the Triton kernels against the torch twins, then (time allowing) the cost model.
#   any CUDA machine, from the repository root:  bash bench/gpu.sh      (GPU_BUDGET_S=540 by default; OUT=folder)
#   device tool:  run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=600)   (after bench/fetch_wheels.sh)
# Each stage has its share of GPU_BUDGET_S (default 540 s) and keeps what it measured when stopped at its limit.
# Results: $OUT/<date>-<device>.json, $OUT/gpu_train.json, logs under $OUT (copy to bench/results/, docs/benchmarks.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-bench/results}"
mkdir -p "$OUT_DIR"
BUDGET="${GPU_BUDGET_S:-540}"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
left() { echo $(( BUDGET - SECONDS )); }
timeout "$(( $(left) * 62 / 100 ))" python3 bench/kernel_bench.py --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/kernel_bench.log"
echo "kernel_bench.py exit ${PIPESTATUS[0]} at ${SECONDS}s"
timeout "$(( $(left) - 60 ))" python3 bench/gpu_train.py --out "$OUT_DIR" 2>&1 | tee "$OUT_DIR/gpu_train.log"
echo "gpu_train.py exit ${PIPESTATUS[0]} at ${SECONDS}s"
# the cost model on the same machine's Triton, so measurement and prediction land side by side
if [ "$(left)" -gt 20 ]; then
    timeout "$(( $(left) - 10 ))" python3 -m bench.kernel_model --json "$OUT_DIR/kernel_model.json" \
        >"$OUT_DIR/kernel_model.log" 2>&1
    echo "bench.kernel_model exit $? at ${SECONDS}s"
fi
