"""One optimizer step over a batch split into micro-batches (gradient accumulation).

`micro_batches` is a dict of arrays with a leading micro-batch axis [M, ...] (see
`logprobs.py` / `grpo.py` for the per-micro-batch fields). Gradients and metric sums
are accumulated with `lax.scan`, so memory holds one micro-batch of activations whatever
the group size; micro-batches without completion tokens (filtered groups) are skipped.
The aggregation weights are computed over the whole batch beforehand, so the sum over
micro-batches is exactly the loss of the batch.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from corea_jax.models import ModelConfig
from corea_jax.rl import grpo
from corea_jax.rl.train_state import TrainState

OBJECTIVES = {"grpo": grpo.grpo_loss, "sft": grpo.sft_loss}


def _sum_zeros(loss_fn, params, micro_batch):
    shapes = jax.eval_shape(loss_fn, params, micro_batch)[1]
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def accumulate_gradients(params, micro_batches, loss_fn):
    """(loss, grads, metric sums) summed over the micro-batch axis."""
    first = jax.tree.map(lambda x: x[0], micro_batches)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    zero_sums = _sum_zeros(loss_fn, params, first)

    def body(carry, micro_batch):
        loss_acc, grads_acc, sums_acc = carry

        def compute(_):
            (loss, sums), grads = grad_fn(params, micro_batch)
            return loss, grads, sums

        def skip(_):
            return jnp.zeros((), jnp.float32), zero_grads, zero_sums

        loss, grads, sums = jax.lax.cond(jnp.any(micro_batch["completion_mask"]), compute, skip, None)
        add = lambda a, b: a + b
        return (loss_acc + loss, jax.tree.map(add, grads_acc, grads), jax.tree.map(add, sums_acc, sums)), None

    init = (jnp.zeros((), jnp.float32), zero_grads, zero_sums)
    (loss, grads, sums), _ = jax.lax.scan(body, init, micro_batches)
    return loss, grads, sums


def _update(state: TrainState, micro_batches, *, model_config: ModelConfig,
            loss_config: grpo.LossConfig, objective: str = "grpo"):
    loss_fn = functools.partial(OBJECTIVES[objective], model_config=model_config,
                                loss_config=loss_config)
    loss, grads, sums = accumulate_gradients(state.params, micro_batches, loss_fn)
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(sums, loss=loss, grad_norm=optax.tree.norm(grads))
    return state.replace(params=params, opt_state=opt_state), metrics


update_step = jax.jit(_update, static_argnames=("model_config", "loss_config", "objective"),
                      donate_argnums=(0,))
update_step.__doc__ = """One AdamW step on the summed loss of `micro_batches`: (new state, metric dict).

Metrics: loss, grad_norm (before clipping) and the token sums of the objective. Shardings
follow the inputs; `sharded_update_step` fixes them explicitly for a mesh.
"""


def micro_batch_shardings(micro_batches, mesh):
    """Every [M, rows, ...] micro-batch array with its row axis over the mesh's batch axes."""
    from corea_jax.parallel import batch_sharding

    return jax.tree.map(lambda x: batch_sharding(x.shape, mesh, batch_dim=1), micro_batches)


def sharded_update_step(state_shardings: TrainState, batch_shardings, mesh, *, model_config: ModelConfig,
                        loss_config: grpo.LossConfig, objective: str = "grpo"):
    """`update_step` as `jax.jit` with explicit in/out shardings on `mesh` (the current pjit).

    state_shardings: `train_state.train_state_shardings(...)`; batch_shardings: e.g.
    `micro_batch_shardings(batch, mesh)`. The new state keeps the state's shardings (its
    buffers are donated) and the metrics come back replicated. Returns the jitted function
    (call it inside `parallel.sharding.mesh_context(mesh)`; `.lower(...)` for AOT plans).
    """
    from corea_jax.parallel import replicated

    step = functools.partial(_update, model_config=model_config, loss_config=loss_config,
                             objective=objective)
    return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                   out_shardings=(state_shardings, replicated(mesh)), donate_argnums=(0,))


@functools.partial(jax.jit, static_argnames=("model_config", "temperature"))
def score_logprobs(params, micro_batches, *, model_config: ModelConfig, temperature: float = 1.0):
    """Per-token log-probs [M, n, C] of every micro-batch under `params` at the sampling
    `temperature` (softmax(logits / temperature); no gradient)."""
    from corea_jax.rl.logprobs import completion_logprobs

    return jax.lax.map(lambda mb: completion_logprobs(model_config, params, mb, temperature=temperature),
                       micro_batches)
