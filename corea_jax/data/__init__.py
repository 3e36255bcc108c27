"""Training data: (question, gold answer) records, the step-indexed iterator, the toy task."""

from corea_jax.data.questions import (Record, arithmetic_records, load_records, step_indices,
                                    validate_data_config)
from corea_jax.data.toy import ToyTokenizer, toy_model_config
from corea_jax.data.tokenizer_training import train_tokenizer
from corea_jax.data.toy import num_answers
from corea_jax.data import chains, tokenizer_training  # modules other packages use

__all__ = [
    "Record",
    "ToyTokenizer",
    "arithmetic_records",
    "chains",
    "load_records",
    "num_answers",
    "step_indices",
    "tokenizer_training",
    "toy_model_config",
    "train_tokenizer",
    "validate_data_config",
]
