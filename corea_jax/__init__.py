"""corea_jax: COREA (confidence-calibrated SLM/LLM cascades) in JAX.

Public API:
  load_model(path, *, dtype="float32", mesh=None) -> Model
  logits(model, input_ids, attention_mask=None) -> jax.Array [B, T, V]
  save_hf(model, out_dir)
"""

from corea_jax.models.config import ModelConfig
from corea_jax.models.model import Model, load_model, logits, save_hf

__all__ = ["Model", "ModelConfig", "load_model", "logits", "save_hf"]
__version__ = "0.1.0"
