"""Confidence elicitation of an untrained SLM on GSM8K (one-turn vs two-turn prompts)."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "qwen2.5-coder-0.5b-instruct"  # corea_jax.models.fetch registry name or a path
    config.dtype = "bfloat16"
    config.data = "../shared/data/gsm8k/test.jsonl"  # relative to the repo root
    config.question_field = "question"
    config.answer_field = "answer"
    config.task = "gsm8k"
    config.num_questions = 60
    config.modes = ("one_turn", "two_turn")
    config.max_new_tokens = 256
    config.followup_tokens = 24
    config.batch_size = 32
    return config
