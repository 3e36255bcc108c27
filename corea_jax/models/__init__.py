"""Models: config, the linen decoder, checkpoint import (HF safetensors, GGUF) and export."""

from corea_jax.models.checkpoint import CheckpointError
from corea_jax.models.config import ConfigError, ModelConfig, for_tokenizer, small_decoder
from corea_jax.models.decoder import Decoder, KVCache, init_cache, relayout
from corea_jax.models.model import (Model, forward, init_params, load_model, logits,
                                    param_logical_axes, save_hf)
from corea_jax.models.architectures import ARCHITECTURES, architecture
from corea_jax.models.decoder import cache_logical_axes, lm_head_weights, positions_from_mask
from corea_jax.models.model import (cache_shardings, decoding_feature_major, decoding_scan_layers,
                                    param_shapes, param_shardings, training_layout, training_scan_layers)
from corea_jax.models import fetch  # modules other packages use

__all__ = [
    "ARCHITECTURES",
    "CheckpointError",
    "ConfigError",
    "Decoder",
    "KVCache",
    "Model",
    "ModelConfig",
    "architecture",
    "cache_logical_axes",
    "cache_shardings",
    "decoding_feature_major",
    "decoding_scan_layers",
    "fetch",
    "for_tokenizer",
    "forward",
    "init_cache",
    "init_params",
    "lm_head_weights",
    "load_model",
    "logits",
    "param_logical_axes",
    "param_shapes",
    "param_shardings",
    "positions_from_mask",
    "relayout",
    "save_hf",
    "small_decoder",
    "training_layout",
    "training_scan_layers",
]
