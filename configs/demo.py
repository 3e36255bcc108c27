"""Demo config: a real small instruct model answers one GSM8K-style question on CPU."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "smollm2-135m-instruct"  # a name from corea_jax.models.fetch.REGISTRY
    config.dtype = "float32"
    config.question = ("Natalia sold clips to 48 of her friends in April, and then she sold half "
                       "as many clips in May. How many clips did Natalia sell altogether in April "
                       "and May?")
    config.max_new_tokens = 192
    config.temperature = 0.0
    return config
