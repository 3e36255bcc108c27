"""The paper's pair served: Qwen2.5-7B-Instruct (SLM, RLCC-trained) -> Qwen2.5-32B-Instruct (LLM).

  COREA_API_KEYS=... python -m launch.serve --config=configs/paper/serve_qwen25_7b_32b.py \
      --workdir=DIR --host=0.0.0.0 --config.slm.name=RLCC_EXPORT_DIR

One node of 8 accelerators, both models in the local JAX engine as in
configs/paper/cascade_qwen25_7b_32b.py: the 32B on `tensor:8`, the 7B on `data:2,tensor:4`. Or the
32B behind another OpenAI-compatible server (vLLM, SGLang):

  --config.llm.backend=http --config.llm.http.base_url=http://HOST:8000/v1 \
  --config.llm.http.model=Qwen/Qwen2.5-32B-Instruct --config.llm.http.api_key_env=LLM_API_KEY \
  --config.llm.non_embedding_params=31000000000

MATH-style answers (task "math"), the verbal confidence, tau 0.8 (about the 32B's MATH500 pass@1
in the paper) until `launch.refit` fits one from the live log; a tenth of the kept requests is
shadowed by the LLM for the risk-controlled refit.
"""

from corea_jax.cascade import config as cascade_config
from configs.serve import qwen_coder_cpu as base


def get_config():
    config = base.get_config()
    config.slm = base.model_spec("Qwen/Qwen2.5-7B-Instruct", slots=64, max_new_tokens=4096, max_prompt_tokens=1024)
    config.slm.mesh = "data:2,tensor:4"
    config.llm = base.model_spec("Qwen/Qwen2.5-32B-Instruct", slots=64, max_new_tokens=4096, max_prompt_tokens=1024)
    config.llm.mesh = "tensor:8"
    config.llm.prompt = "rlvr"  # the LLM is not asked for a confidence
    for spec in (config.slm, config.llm):
        spec.dtype = "bfloat16"
        spec.worked_example = False
        spec.http = cascade_config.http_defaults()
    config.task = "math"
    config.threshold.tau = 0.8
    config.limits.default_max_tokens = 4096
    config.limits.requests_per_minute = 120.0
    config.drain_timeout_s = 600
    return config
