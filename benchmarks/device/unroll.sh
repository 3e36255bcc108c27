#!/bin/bash
# Decode speed with the layer scan rolled (1) and fully unrolled (28) on Qwen2.5-7B shapes.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
for unroll in 28 4; do
  timeout 200 python3 -m benchmarks.generate --architecture=qwen2.5-7b-instruct --dtypes=bfloat16 \
    --batches=1,32 --skip_hf --scan_unroll=$unroll --out="$OUT/generate_qwen7b_bf16_unroll$unroll.json" 2>&1 \
    | grep -v -E '^[IW][0-9]{4} '
done
