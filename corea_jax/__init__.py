"""corea_jax: COREA (confidence-calibrated SLM/LLM cascades) in JAX.

Public API:
  load_model(path, *, dtype="float32", mesh=None) -> Model
  logits(model, input_ids, attention_mask=None) -> jax.Array [B, T, V]
  save_hf(model, out_dir)
  generate(model, prompts, sampling) -> list[list[Completion]]
  SamplingParams(max_new_tokens, temperature, top_p, top_k, n, stop, seed, ignore_eos)
"""

from corea_jax.generation import Completion, SamplingParams, generate
from corea_jax.models import ModelConfig
from corea_jax.models import Model, load_model, logits, save_hf

__all__ = ["Completion", "Model", "ModelConfig", "SamplingParams", "generate", "load_model",
           "logits", "save_hf"]
__version__ = "0.1.0"
