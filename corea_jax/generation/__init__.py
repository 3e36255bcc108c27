"""Generation: jitted, batched KV-cache sampling shared by the SLM, the LLM and the RL trainer."""

from corea_jax.generation.engine import (Completion, SamplingParams, chat_token_ids, compile_count,
                                         eos_token_ids, generate, generate_followup, generate_tokens)
