"""Generation: jitted, batched KV-cache sampling shared by the SLM, the LLM and the RL trainer.

`generate` / `generate_tokens` / `generate_followup` are the host API; `GenerationProgram`
(static settings -> the jitted prefill + decode program) and its `SamplingScalars` are the
device program itself, for ahead-of-time compiles (`corea_jax.planning`).
"""

from corea_jax.generation.engine import (Completion, GenerationProgram, SCHEDULES, SamplingParams,
                                         SamplingScalars,
                                         chat_token_ids, compile_count, eos_token_ids, generate,
                                         generate_followup, generate_tokens)
from corea_jax.generation.continuous import SlotRow, SlotScheduler

__all__ = [
    "Completion",
    "GenerationProgram",
    "SCHEDULES",
    "SamplingParams",
    "SamplingScalars",
    "SlotRow",
    "SlotScheduler",
    "chat_token_ids",
    "compile_count",
    "eos_token_ids",
    "generate",
    "generate_followup",
    "generate_tokens",
]
