"""The GRPO loss: ratio 1 on-policy, a torch reference for loss and gradient, padding, accumulation."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from corea_jax.data.toy import ToyTokenizer, toy_model_config
from corea_jax.models.decoder import Decoder, positions_from_mask, relayout
from corea_jax.models.model import init_params
from corea_jax.rl import batching, grpo
from corea_jax.rl import logprobs as logprobs_module
from corea_jax.rl.logprobs import completion_logprobs
from corea_jax.rl.update import accumulate_gradients

B, G, P, C = 3, 4, 6, 4


@pytest.fixture(scope="module")
def toy():
    tokenizer = ToyTokenizer(5)
    config = toy_model_config(tokenizer, hidden_size=32, num_heads=2)
    return config, init_params(config, jax.random.key(0))


def _rollout(seed=0, vocab=20):
    """A hand-built rollout: left-padded prompts, right-padded completions of varied length."""
    rng = np.random.default_rng(seed)
    prompt_tokens = rng.integers(3, vocab, (B, P)).astype(np.int32)
    prompt_mask = np.ones((B, P), bool)
    prompt_mask[0, :2] = False
    prompt_mask[2, :1] = False
    prompt_tokens[~prompt_mask] = 0
    completion_tokens = rng.integers(3, vocab, (B, G, C)).astype(np.int32)
    lengths = rng.integers(1, C + 1, (B, G))
    completion_mask = np.arange(C)[None, None, :] < lengths[..., None]
    completion_tokens[~completion_mask] = 0
    rows = {
        "completion_tokens": completion_tokens, "completion_mask": completion_mask,
        "advantages": rng.normal(size=(B, G)).astype(np.float32),
        "sampler_logprobs": np.where(completion_mask, -rng.uniform(0.5, 3, (B, G, C)), 0).astype(np.float32),
        "old_logprobs": np.where(completion_mask, -rng.uniform(0.5, 3, (B, G, C)), 0).astype(np.float32),
        "ref_logprobs": np.where(completion_mask, -rng.uniform(0.5, 3, (B, G, C)), 0).astype(np.float32),
    }
    return prompt_tokens, prompt_mask, rows


def _one_batch(prompt_tokens, prompt_mask, rows, aggregation="token_mean", keep=None, micro=B * G):
    keep = np.ones(len(prompt_tokens), bool) if keep is None else keep
    [mbs] = batching.micro_batches(prompt_tokens, prompt_mask, rows, keep, num_minibatches=1,
                                   micro_batch_size=micro, aggregation=aggregation, max_length=C)
    return {k: jnp.asarray(v) for k, v in mbs.items()}


def _first(mbs):
    return jax.tree.map(lambda x: x[0], mbs)


_logprobs = jax.jit(completion_logprobs, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def _full_sequence_logprobs(config, params, prompt_tokens, prompt_mask, completion_tokens, completion_mask):
    """The straightforward path: each row's prompt + completion through one uncached forward."""
    tokens = jnp.concatenate([prompt_tokens, completion_tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, completion_mask], axis=1)
    logits, _ = Decoder(config).apply({"params": params}, tokens, positions_from_mask(mask), mask)
    log_probs = jax.nn.log_softmax(logits[:, P - 1:P + C - 1], axis=-1)
    out = jnp.take_along_axis(log_probs, completion_tokens[..., None], axis=-1)[..., 0]
    return jnp.where(completion_mask, out, 0.0)


@pytest.mark.slow
def test_on_policy_ratio_is_exactly_one(toy):
    config, params = toy
    batch = _first(_one_batch(*_rollout()))
    logprobs = _logprobs(config, params, batch)
    cfg = grpo.LossConfig(eps_low=0.2, eps_high=0.28, on_policy=True)
    loss, sums = jax.jit(lambda lp: grpo.policy_objective(lp, batch, cfg))(logprobs)
    assert float(sums["ratio"]) == float(sums["tokens"])  # every ratio is 1.0 exactly
    assert float(sums["clipped"]) == 0.0
    _, sums = jax.jit(lambda p: grpo.grpo_loss(p, batch, model_config=config, loss_config=cfg))(params)
    assert float(sums["ratio"]) == float(sums["tokens"])
    # The on-policy loss is minus the weighted advantage sum (ratio 1), its value is exact too.
    expected = -np.sum(np.asarray(batch["weights"]) * np.asarray(batch["advantages"])[:, None])
    np.testing.assert_allclose(float(loss), expected, rtol=1e-6)


@pytest.mark.slow
def test_sampler_and_trainer_log_probs_agree_at_the_rollout_temperature(toy):
    """Off-policy against the engine's own log-probs at T = 0.7: the importance ratio is 1
    (to 1e-5), because both are under softmax(logits / T)."""
    from corea_jax.generation import SamplingParams
    from corea_jax.models.model import Model
    from corea_jax.rl import rollout
    from corea_jax.rl.config import defaults, loss_config

    config, params = toy
    run = defaults()
    run.rollout.temperature = 0.7
    run.grpo.behaviour_logprobs = "sampler"  # old log-probs = the engine's
    cfg = loss_config(run)
    assert cfg.temperature == 0.7 and not cfg.on_policy
    prompt_ids = np.random.default_rng(0).integers(3, 20, (B, P)).tolist()
    roll = rollout.sample_groups(Model(config, params), prompt_ids,
                                 SamplingParams(max_new_tokens=C, temperature=0.7, n=G, seed=1,
                                                ignore_eos=True), prompt_length=P, batch_size=16)
    rows = {"completion_tokens": roll.completion_tokens, "completion_mask": roll.completion_mask,
            "advantages": np.ones((B, G), np.float32), "sampler_logprobs": roll.sampler_logprobs,
            "old_logprobs": roll.sampler_logprobs, "ref_logprobs": np.zeros_like(roll.sampler_logprobs)}
    batch = _first(_one_batch(roll.prompt_tokens, roll.prompt_mask, rows))
    mask = np.asarray(batch["completion_mask"])
    trainer = np.asarray(jax.jit(completion_logprobs, static_argnums=0, static_argnames="temperature")(
        config, params, batch, temperature=cfg.temperature))
    ratio = np.exp(trainer - np.asarray(batch["sampler_logprobs"]))[mask]
    assert mask.sum() == B * G * C and np.abs(ratio - 1).max() <= 1e-5
    _, sums = jax.jit(lambda p: grpo.grpo_loss(p, batch, model_config=config, loss_config=cfg))(params)
    assert abs(float(sums["ratio"]) / float(sums["tokens"]) - 1) <= 1e-5
    assert float(sums["clipped"]) == 0.0


def _torch_reference(logprobs, batch, eps_low, eps_high, beta, aggregation):
    """The GRPO loss written out in torch, with its own aggregation; returns (loss, dloss/dlogprobs)."""
    lp = torch.tensor(np.asarray(logprobs), dtype=torch.float64, requires_grad=True)
    mask = torch.tensor(np.asarray(batch["completion_mask"]))
    old = torch.tensor(np.asarray(batch["old_logprobs"]), dtype=torch.float64)
    ref = torch.tensor(np.asarray(batch["ref_logprobs"]), dtype=torch.float64)
    adv = torch.tensor(np.asarray(batch["advantages"]), dtype=torch.float64)[:, None]
    ratio = torch.exp(torch.where(mask, lp - old, torch.zeros_like(lp)))
    surrogate = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv)
    per_token = -surrogate
    if beta:
        d = torch.where(mask, ref - lp, torch.zeros_like(lp))
        per_token = per_token + beta * (torch.exp(d) - d - 1)
    per_token = per_token * mask
    lengths = mask.sum(-1)
    rows = (lengths > 0).sum()
    if aggregation == "token_mean":
        loss = per_token.sum() / mask.sum()
    elif aggregation == "seq_mean_token_mean":
        loss = (per_token.sum(-1)[lengths > 0] / lengths[lengths > 0]).sum() / rows
    else:
        loss = per_token.sum() / C / rows
    loss.backward()
    return loss.item(), lp.grad.numpy()


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
@pytest.mark.parametrize("beta", [0.0, 0.05])
def test_loss_and_gradient_match_torch_reference(aggregation, beta):
    prompt_tokens, prompt_mask, rows = _rollout(seed=1)
    batch = _first(_one_batch(prompt_tokens, prompt_mask, rows, aggregation))
    rng = np.random.default_rng(2)
    # Current log-probs 0 to 0.6 nats away from the old ones: many ratios outside [0.8, 1.28].
    logprobs = jnp.asarray(np.where(batch["completion_mask"], np.asarray(batch["old_logprobs"])
                                    + rng.uniform(-0.6, 0.6, batch["old_logprobs"].shape), 0.0), jnp.float32)
    cfg = grpo.LossConfig(eps_low=0.2, eps_high=0.28, kl_beta=beta, on_policy=False)
    (loss, sums), grad = jax.jit(jax.value_and_grad(lambda lp: grpo.policy_objective(lp, batch, cfg),
                                                    has_aux=True))(logprobs)
    ref_loss, ref_grad = _torch_reference(logprobs, batch, 0.2, 0.28, beta, aggregation)
    assert 0.1 < float(sums["clipped"]) / float(sums["tokens"]) < 0.9  # clipping is active
    np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("chunk_tokens", [4096, 5])
@pytest.mark.slow
def test_loss_gradient_wrt_params_matches_full_forward_reference(toy, monkeypatch, chunk_tokens):
    """Log-probs with one prompt forward per group, and grpo_loss's parameter gradient, equal
    those of the straightforward path: every row's prompt + completion through one forward.
    The LM head runs in one chunk, or in several of a size that does not divide the length."""
    monkeypatch.setattr(logprobs_module, "LOGIT_CHUNK_TOKENS", chunk_tokens)
    config, params = toy
    prompt_tokens, prompt_mask, rows = _rollout(seed=3)
    batch = _first(_one_batch(prompt_tokens, prompt_mask, rows, "seq_mean_token_mean"))
    base = _logprobs(config, params, batch)
    full = _full_sequence_logprobs(config, params, jnp.repeat(prompt_tokens, G, 0),
                                   jnp.repeat(prompt_mask, G, 0), batch["completion_tokens"],
                                   batch["completion_mask"])
    np.testing.assert_allclose(np.asarray(base), np.asarray(full), atol=2e-5)
    batch["old_logprobs"] = base + jnp.where(batch["completion_mask"], 0.3 * jnp.sin(base * 7), 0.0)
    cfg = grpo.LossConfig(eps_low=0.2, eps_high=0.28, kl_beta=0.1, on_policy=False)

    def loss(p):
        return grpo.grpo_loss(p, batch, model_config=config, loss_config=cfg)[0]

    grads = jax.jit(jax.grad(loss))(params)

    def reference(p):
        lp = _full_sequence_logprobs(config, p, jnp.repeat(prompt_tokens, G, 0),
                                     jnp.repeat(prompt_mask, G, 0),
                                     batch["completion_tokens"], batch["completion_mask"])
        return grpo.policy_objective(lp, batch, cfg)[0]

    ref_grads = jax.jit(jax.grad(reference))(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref_grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=3e-6, rtol=1e-3,
                                   err_msg=jax.tree_util.keystr(path))


def test_logprobs_agree_across_layer_layouts(toy):
    """The loss's log-probs (one prompt forward per group, its cache repeated G times) are the
    same with one parameter set per layer (the sampler's layout) as with stacked layers."""
    config, params = toy
    batch = _first(_one_batch(*_rollout(seed=4)))
    unrolled = _logprobs(*relayout(config, params, scan_layers=False), batch)
    np.testing.assert_allclose(np.asarray(unrolled), np.asarray(_logprobs(config, params, batch)), atol=1e-5)


_accumulate = jax.jit(accumulate_gradients, static_argnums=2)


@functools.lru_cache
def _padding_loss_fn(config):
    cfg = grpo.LossConfig(on_policy=False, kl_beta=0.1)
    return functools.partial(grpo.grpo_loss, model_config=config, loss_config=cfg)


@pytest.mark.parametrize("aggregation", grpo.AGGREGATIONS)
@pytest.mark.slow
def test_padding_changes_nothing(toy, aggregation):
    config, params = toy
    prompt_tokens, prompt_mask, rows = _rollout(seed=4)
    loss_fn = _padding_loss_fn(config)

    def loss_and_grads(pt, pm, rw, keep=None):
        [mbs] = batching.micro_batches(pt, pm, rw, np.ones(len(pt), bool) if keep is None else keep,
                                       num_minibatches=1, micro_batch_size=G, aggregation=aggregation,
                                       max_length=C)
        loss, grads, _ = _accumulate(params, {k: jnp.asarray(v) for k, v in mbs.items()}, loss_fn)
        return loss, grads

    loss, grads = loss_and_grads(prompt_tokens, prompt_mask, rows)
    # More left padding on prompts, more right padding on completions (junk behind the
    # masks), and an extra group that is filtered out.
    rng = np.random.default_rng(5)
    pt = np.concatenate([rng.integers(3, 20, (B, 3)).astype(np.int32), prompt_tokens], axis=1)
    pm = np.concatenate([np.zeros((B, 3), bool), prompt_mask], axis=1)
    padded = {}
    for name, value in rows.items():
        if value.ndim == 3:
            if name == "completion_mask":
                junk = np.zeros((B, G, 2), bool)
            elif name == "completion_tokens":
                junk = rng.integers(3, 20, (B, G, 2)).astype(value.dtype)
            else:
                junk = rng.normal(size=(B, G, 2)).astype(value.dtype)
            value = np.concatenate([value, junk], axis=-1)
        padded[name] = np.concatenate([value, value[:1]], axis=0)
    pt, pm = np.concatenate([pt, pt[:1]]), np.concatenate([pm, pm[:1]])
    loss2, grads2 = loss_and_grads(pt, pm, padded, keep=np.array([True] * B + [False]))
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


@pytest.mark.slow
def test_gradient_accumulation_matches_one_micro_batch(toy):
    """Half-group micro-batches (the prompt run per half) sum to the whole-group gradient."""
    config, params = toy
    prompt_tokens, prompt_mask, rows = _rollout(seed=4)
    results = []
    for micro in (G, 2):
        [mbs] = batching.micro_batches(prompt_tokens, prompt_mask, rows, np.ones(B, bool), num_minibatches=1,
                                       micro_batch_size=micro, aggregation="token_mean", max_length=C)
        results.append(_accumulate(params, {k: jnp.asarray(v) for k, v in mbs.items()},
                                   _padding_loss_fn(config)))
    (loss, grads, sums), (loss2, grads2, sums2) = results
    np.testing.assert_allclose(float(loss2), float(loss), rtol=1e-5)
    assert float(sums2["tokens"]) == float(sums["tokens"])
    for a, b in zip(jax.tree.leaves(grads2), jax.tree.leaves(grads)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, rtol=1e-4)


def test_group_advantages_and_ties():
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5]])
    std = grpo.group_advantages(rewards, "std", eps=1e-6)
    np.testing.assert_allclose(std[0], [1, -1, -1, 1], atol=1e-5)
    np.testing.assert_array_equal(std[1], 0.0)
    np.testing.assert_allclose(grpo.group_advantages(rewards, "mean")[0], [0.5, -0.5, -0.5, 0.5])
    np.testing.assert_array_equal(grpo.tied_groups(rewards), [False, True])
    with pytest.raises(ValueError, match="scale"):
        grpo.group_advantages(rewards, "rank")


def test_aggregation_weights():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]], bool)
    np.testing.assert_allclose(grpo.aggregation_weights(mask, "token_mean").sum(), 1.0, rtol=1e-6)
    seq = grpo.aggregation_weights(mask, "seq_mean_token_mean")
    np.testing.assert_allclose(seq.sum(-1), [0.5, 0.5, 0.0], rtol=1e-6)
    dr = grpo.aggregation_weights(mask, "seq_mean_token_sum_norm", max_length=4)
    np.testing.assert_allclose(dr[0, 0], 1 / 8)
    with pytest.raises(ValueError, match="max_length"):
        grpo.aggregation_weights(mask, "seq_mean_token_sum_norm")
