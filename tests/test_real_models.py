"""Real pretrained models (fetched from PyPI) against transformers' PyTorch models, fp32.

The Foundation issue's bar: max abs logit error <= 1e-3 on a 64-token chat prompt for
SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct, both loaded from the same HF dir.
"""

import gc

import numpy as np
import pytest

import corea_jax
from tests.fetched_models import QWEN_05B, SMOLLM2, chat_prompt_batch, fetched_dir
from tests.helpers import torch_logits

pytestmark = pytest.mark.real_model
PROMPT_LENGTH = 64


@pytest.fixture(scope="module", params=[SMOLLM2, QWEN_05B])
def real_logits(request):
    """(name, config, ids, mask, our logits, transformers logits) on one 64-token batch.

    Only arrays leave the fixture: both models are dropped before the next one loads.
    """
    import torch
    from transformers import AutoModelForCausalLM

    directory = fetched_dir(request.param)
    model = corea_jax.load_model(directory)
    ids, mask = chat_prompt_batch(model.tokenizer, PROMPT_LENGTH)
    ours = np.asarray(corea_jax.logits(model, ids, mask))
    config = model.config
    del model
    reference = AutoModelForCausalLM.from_pretrained(str(directory), dtype=torch.float32).eval()
    ref = torch_logits(reference, ids, mask)
    del reference
    gc.collect()
    return request.param, config, ids, mask, ours, ref


@pytest.mark.slow
def test_logits_match_transformers_fp32(real_logits):
    name, config, ids, mask, ours, ref = real_logits
    assert ours.shape == ref.shape == (2, PROMPT_LENGTH, config.vocab_size)
    valid = mask == 1
    error = np.abs(ours[valid] - ref[valid]).max()
    assert error <= 1e-3, f"{name}: max abs logit error {error}"


def test_greedy_next_tokens_agree(real_logits):
    _, _, _, mask, ours, ref = real_logits
    valid = mask == 1
    assert np.array_equal(ours[valid].argmax(-1), ref[valid].argmax(-1))


def test_real_configs_read_as_expected(real_logits):
    name, config, *_ = real_logits
    if name == SMOLLM2:
        assert (config.model_type, config.num_layers, config.hidden_size) == ("llama", 30, 576)
        assert (config.num_heads, config.num_kv_heads, config.tie_word_embeddings) == (9, 3, True)
        assert config.rms_norm_eps == 1e-5 and config.rope.theta == 100000.0
    else:
        assert (config.model_type, config.num_layers, config.hidden_size) == ("qwen2", 24, 896)
        assert (config.num_heads, config.num_kv_heads, config.qkv_bias) == (14, 2, True)
        assert config.rms_norm_eps == 1e-6 and config.rope.theta == 1000000.0
