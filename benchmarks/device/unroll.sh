#!/bin/bash
# Decode speed of the two parameter layouts on Qwen2.5-7B shapes: stacked layers run by one
# scan (each step slices every layer's weights out of the stack) and one set per layer.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
for scan in true false; do
  timeout 200 python3 -m benchmarks.generate --architecture=qwen2.5-7b-instruct --dtypes=bfloat16 \
    --batches=1,32 --skip_hf --scan_layers=$scan --out="$OUT/generate_qwen7b_bf16_scan_$scan.json" 2>&1 \
    | grep -v -E '^[IW][0-9]{4} '
done
