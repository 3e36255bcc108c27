"""Models: config, the linen decoder, checkpoint import (HF safetensors, GGUF) and export."""

from corea_jax.models.checkpoint import CheckpointError
from corea_jax.models.config import ConfigError, ModelConfig
from corea_jax.models.decoder import Decoder, KVCache, init_cache, relayout
from corea_jax.models.model import (Model, forward, init_params, load_model, logits,
                                    param_logical_axes, save_hf)
