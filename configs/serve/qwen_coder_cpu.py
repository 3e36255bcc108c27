"""COREA served on CPU: Qwen2.5-Coder-0.5B-Instruct (SLM) -> Qwen2.5-Coder-1.5B-Instruct (LLM).

  COREA_API_KEYS=... python -m launch.serve --config=configs/serve/qwen_coder_cpu.py --workdir=DIR

Both models run in the local JAX engine (fetched on first use, as `launch.fetch_model` does), each
behind its own continuous-batching scheduler. The model specs are the cascade's
(`corea_jax.cascade.config.model_spec`), so `--config.llm.backend=http` with
`--config.llm.http.base_url=...` puts the LLM behind any OpenAI-compatible server instead.
tau 0.7 until `launch.refit` fits one from the live log. These are the library's defaults
(`corea_jax.serving.config.defaults`, where every field is described).
"""

from corea_jax.serving.config import defaults, model_spec

__all__ = ["get_config", "model_spec"]


def get_config():
    return defaults()
