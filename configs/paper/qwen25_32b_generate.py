"""COREA's LLM: Qwen2.5-32B-Instruct answering the questions the SLM defers, at the paper's lengths.

  python -m launch.plan --config=configs/paper/qwen25_32b_generate.py --devices=8 --device_memory_gb=80

Greedy answers (the cascade's LLM is deterministic) to prompts of up to 1024 tokens with up
to 4096 new tokens, 64 rows per batch: the bfloat16 KV cache holds 1.3 GB per row at 5120
tokens, and launch.plan puts 64 rows at 53 GB per device on this mesh (128 rows: 83 GB,
over an 80 GB H100; see README "Scaling"). Mesh: one node of 8 accelerators, 8-way tensor
parallel (the 8 KV heads, 40 query heads, MLP and vocabulary all divide by 8), so a decode
step reads each weight shard where it lives instead of all-gathering weights as FSDP would.
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.model = ml_collections.ConfigDict(dict(
        name="Qwen/Qwen2.5-32B-Instruct",
        architecture="qwen2.5-32b-instruct",  # corea_jax.models.architectures: shapes without weights
        dtype="bfloat16", param_dtype="bfloat16", remat=False))
    config.generation = ml_collections.ConfigDict(dict(
        batch_size=64,  # rows per generation batch (the whole mesh)
        max_prompt_length=1024,
        max_new_tokens=4096,
        temperature=0.0, top_p=1.0, top_k=0, n=1))
    config.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=8))
    return config
