#!/bin/bash
# Decode step on Qwen2.5-7B shapes with XLA's default command buffers and with while loops and
# conditionals captured as CUDA graphs too.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
run() {
  timeout 100 python3 -m benchmarks.generate --architecture=qwen2.5-7b-instruct --dtypes=bfloat16 \
    --batches=1 --skip_hf --out="$OUT/generate_qwen7b_bf16_$1.json" 2>&1 | grep -E '^\{|^peaks'
}
run default
XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL" run graphs
