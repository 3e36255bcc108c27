#!/bin/bash
# The GPU session of the benchmarks, as one script (random weights of the paper's shapes:
# the device machine has no network, so no real checkpoints; throughput does not depend on
# the weights when EOS is ignored). Run from the repo root with the wheels of the packages
# the machine lacks in .whl/ (benchmarks/device/README.md); results land in $OUT.
set -uo pipefail
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false XLA_PYTHON_CLIENT_MEM_FRACTION=0.95 HF_HUB_OFFLINE=1 TF_CPP_MIN_LOG_LEVEL=2
OUT=${OUT:-benchmarks/results/device}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
quiet() { grep --line-buffered -v -E '^[IW][0-9]{4} |^WARNING: All log messages'; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'transformers', transformers.__version__, 'torch', torch.__version__)"

timeout 280 python3 -m benchmarks.generate --architecture=qwen2.5-7b-instruct --dtypes=bfloat16 \
  --batches=1,32,128 --out="$OUT/generate_qwen7b_bf16.json" 2>&1 | quiet
timeout 150 python3 -m benchmarks.update_step --architecture=qwen2.5-1.5b-instruct --prompts=4 --group=8 \
  --prompt_tokens=512 --completion_tokens=2048 --micro_batch=8 --steps=3 \
  --out="$OUT/update_qwen1p5b.json" 2>&1 | quiet
timeout 150 python3 -m benchmarks.generate --architecture=qwen2.5-32b-instruct --dtypes=bfloat16 \
  --batches=1,64 --skip_hf --out="$OUT/generate_qwen32b_bf16.json" 2>&1 | quiet
timeout 90 python3 -m launch.train --config=configs/tiny.py --workdir=/tmp/tiny --config.total_steps=60 2>&1 \
  | quiet | tail -3
python3 - <<'PY'
import json
rows = [json.loads(l) for l in open("/tmp/tiny/metrics.jsonl")]
for r in (rows[0], rows[-1]):
    print({k: round(r[k], 3) for k in ("step", "reward_mean", "accuracy", "ece", "time_step")})
PY
