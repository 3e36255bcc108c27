#!/bin/bash
# The GPU update-step measurement alone (see run.sh for the environment).
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
timeout 200 python3 -m benchmarks.update_step --architecture=qwen2.5-1.5b-instruct --prompts=4 --group=8 \
  --prompt_tokens=512 --completion_tokens=2048 --micro_batch=8 --steps=3 \
  --out="$OUT/update_qwen1p5b.json" 2>&1 | grep -v -E '^[IW][0-9]{4} '
