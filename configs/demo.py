"""Demo config: a real small instruct model answers one GSM8K question with a stated confidence."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "smollm2-135m-instruct"  # a name from corea_jax.models.fetch.REGISTRY
    config.dtype = "float32"
    config.question = ("Natalia sold clips to 48 of her friends in April, and then she sold half "
                       "as many clips in May. How many clips did Natalia sell altogether in April "
                       "and May?")
    config.gold = "72"  # graded with corea_jax.grading (task gsm8k)
    config.prompt = "corea"  # corea_jax.prompts.PROMPTS: reasoning, \boxed{answer}, Confidence: c
    config.max_new_tokens = 192
    config.temperature = 0.0
    return config
