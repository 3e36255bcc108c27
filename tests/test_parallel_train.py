"""The train step on a mesh of 8 fake CPU devices equals the single-device step."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec

import corea_jax
from corea_jax.models.model import init_params, param_shardings
from corea_jax.parallel.multihost import place_tree
from corea_jax.parallel.sharding import make_mesh, mesh_context
from corea_jax.rl import batching, grpo
from corea_jax.rl.config import defaults
from corea_jax.rl.train_state import init_train_state, make_optimizer, train_state_shardings
from corea_jax.rl.trainer import _place, make_update_fn

CFG = corea_jax.ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                            num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            max_position_embeddings=64, qkv_bias=True)
LOSS = grpo.LossConfig(eps_low=0.2, eps_high=0.28, on_policy=False)


def toy_minibatch(seed: int, groups: int = 4, group: int = 4, prompt: int = 6, completion: int = 5):
    """One optimizer step of random GRPO micro-batches: [M=2, 8 rows, ...]."""
    rng = np.random.default_rng(seed)
    prompt_tokens = rng.integers(3, CFG.vocab_size, (groups, prompt)).astype(np.int32)
    prompt_mask = np.arange(prompt)[None] >= rng.integers(0, 3, (groups, 1))
    lengths = rng.integers(1, completion + 1, (groups, group))
    mask = np.arange(completion)[None, None] < lengths[..., None]
    rows = {"completion_tokens": rng.integers(3, CFG.vocab_size, (groups, group, completion)).astype(np.int32),
            "completion_mask": mask, "advantages": rng.normal(size=(groups, group)).astype(np.float32)}
    for field in ("sampler_logprobs", "old_logprobs", "ref_logprobs"):
        rows[field] = np.where(mask, -rng.uniform(0.5, 4, mask.shape), 0).astype(np.float32)
    return batching.micro_batches(prompt_tokens, prompt_mask, rows, np.ones(groups, bool), num_minibatches=1,
                                  micro_batch_size=8, aggregation="token_mean", max_length=completion)[0]


def run_steps(mesh, steps: int = 2, place=_place):
    """(losses, state) after `steps` updates, sharded over `mesh` (None: one device);
    `place(micro_batch, mesh)` puts each step's batch on the devices."""
    params = init_params(CFG, jax.random.key(0))
    tx = make_optimizer(defaults().optim, 10)
    state = init_train_state(params, tx)
    shardings = None
    if mesh is None:
        state = jax.device_put(state, jax.devices()[0])
    else:
        shardings = train_state_shardings(state, param_shardings(CFG, mesh), mesh)
        state = place_tree(state, shardings)
    update = make_update_fn(CFG, LOSS, mesh, shardings)
    losses = []
    with mesh_context(mesh):
        for step in range(steps):
            state, metrics = update(state, place(toy_minibatch(step), mesh), "grpo")
            losses.append(float(metrics["loss"]))
    return losses, state


@pytest.fixture(scope="module")
def single():
    return run_steps(None)


@pytest.mark.parametrize("shape", [{"fsdp": 8}, {"data": 2, "fsdp": 2, "tensor": 2}])
@pytest.mark.slow
def test_sharded_train_step_equals_single_device(single, shape):
    mesh = make_mesh(shape)
    want_losses, want = single
    losses, state = run_steps(mesh)
    np.testing.assert_allclose(losses, want_losses, rtol=1e-5, atol=1e-5)
    assert want_losses[0] != want_losses[1]
    for got_leaf, want_leaf in zip(jax.tree.leaves(state.params), jax.tree.leaves(want.params)):
        np.testing.assert_allclose(np.asarray(got_leaf), np.asarray(want_leaf), rtol=1e-5, atol=1e-5)

    # The params and the AdamW moments really are sharded, and stay so after the updates.
    q = state.params["layers"]["self_attn"]["q_proj"]["kernel"]  # [L, D, H, Dh]
    assert q.sharding.spec == PartitionSpec(None, "fsdp", "tensor", None)
    assert len(q.sharding.device_set) == 8
    assert q.addressable_shards[0].data.shape == (2, 32 // mesh.shape["fsdp"], 4 // mesh.shape["tensor"], 8)
    mu = state.opt_state[1][0].mu["layers"]["self_attn"]["q_proj"]["kernel"]
    assert mu.sharding.spec == q.sharding.spec
    assert state.params["embed_tokens"]["embedding"].sharding.spec == PartitionSpec("tensor", "fsdp")
    assert state.step.sharding.is_fully_replicated
