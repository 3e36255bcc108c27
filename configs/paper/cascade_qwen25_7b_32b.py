"""The paper's pair: Qwen2.5-7B-Instruct (SLM, RLCC-trained) and Qwen2.5-32B-Instruct (LLM) on MATH500.

  python -m launch.cascade --config=configs/paper/cascade_qwen25_7b_32b.py --workdir=DIR \
      --config.slm.name=RLCC_EXPORT_DIR

The SLM is any HF directory: the untrained hub model by default, or the directory `launch.train`
exported from `configs/paper/qwen25_7b_rlcc.py`. Both models run through the JAX engine on one
node of 8 accelerators: the 32B on `tensor:8` (its 40 query / 8 KV heads divide by 8, as in
configs/paper/qwen25_32b_generate.py), the 7B on `data:2,tensor:4` (its 4 KV heads do not divide
by 8). Or serve the 32B elsewhere (vLLM, SGLang) and point the LLM at it:

  --config.llm.backend=http --config.llm.http.base_url=http://HOST:8000/v1 \
  --config.llm.http.model=Qwen/Qwen2.5-32B-Instruct --config.llm.http.api_key_env=LLM_API_KEY \
  --config.llm.non_embedding_params=31000000000

Test: MATH500; calibration (thresholds, probe): 500 problems of the paper's DeepMath16K training
split (`datasets.deepmath_split`, seed 0; a hub is needed). Greedy, the paper's lengths.
"""

from corea_jax.cascade import config as cascade_config


def get_config():
    config = cascade_config.defaults()
    config.slm = cascade_config.model_spec("Qwen/Qwen2.5-7B-Instruct", "corea", probe_hidden=True)
    config.slm.mesh = "data:2,tensor:4"
    config.llm = cascade_config.model_spec("Qwen/Qwen2.5-32B-Instruct", "rlvr")
    config.llm.mesh = "tensor:8"
    for spec in (config.slm, config.llm):
        spec.dtype = "bfloat16"
        spec.max_new_tokens = 4096
        spec.batch_size = 64
        spec.probe_window = 0
        spec.worked_example = False
    config.llm.probe_hidden = False
    config.data.test = cascade_config.data_spec("math500", "test", 0)
    config.data.calibration = cascade_config.data_spec("deepmath", "train", 500)
    config.chunk_size = 128
    config.threshold.epsilon = 0.05
    config.threshold.delta = 0.1
    return config
