"""Training data: (question, gold answer) records, the step-indexed iterator, the toy task."""

from corea_jax.data.questions import (Record, arithmetic_records, load_records, step_indices,
                                    validate_data_config)
from corea_jax.data.toy import ToyTokenizer, toy_model_config
