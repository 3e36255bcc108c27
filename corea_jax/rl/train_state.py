"""The train state (step, params, optimizer state) and the AdamW optimizer with its schedule."""

from __future__ import annotations

import functools
import types
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from corea_jax.models import relayout

SCHEDULES = ("cosine", "linear", "constant")


@flax.struct.dataclass
class TrainState:
    """Everything an update changes.

    step: [] int32, completed training steps (rollout + updates); opt_state counts the
    optimizer steps, which are more when a step makes several updates.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)


def learning_rate_schedule(optim, total_updates: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then cosine / linear decay to
    `learning_rate * final_lr_ratio` at `total_updates`, or constant."""
    peak = optim.learning_rate
    warmup = min(optim.warmup_steps, max(total_updates - 1, 0))
    decay_steps = max(total_updates - warmup, 1)
    end = peak * optim.final_lr_ratio
    if optim.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=optim.final_lr_ratio)
    elif optim.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif optim.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"config.optim.schedule: expected one of {SCHEDULES}, found {optim.schedule!r}")
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


_OPTIM_FIELDS = ("learning_rate", "warmup_steps", "schedule", "final_lr_ratio", "weight_decay", "b1", "b2",
                 "eps", "grad_clip")


def make_optimizer(optim, total_updates: int) -> optax.GradientTransformation:
    """Global-norm gradient clipping (0: off), then AdamW on the schedule.

    The same settings give the same object: the optimizer is static in TrainState, so
    equal settings then share compiled update steps.
    """
    if not schedule_uses_run_length(optim):
        total_updates = 0  # the run length changes nothing
    return _optimizer(tuple(optim[f] for f in _OPTIM_FIELDS), total_updates)


def schedule_uses_run_length(optim) -> bool:
    """Whether the learning rate at an update depends on the run's total updates (warmup is
    capped by it, decay ends at it); a constant rate without warmup does not."""
    return not (optim.schedule == "constant" and not optim.warmup_steps)


def optimizer_updates(state: TrainState) -> int:
    """Optimizer updates made so far: the optimizer state's own count (a step whose groups all
    tied made none), not a function of the step."""
    counts = optax.tree_utils.tree_get_all_with_path(state.opt_state, "count")
    return int(jax.device_get(counts[0][1])) if counts else 0


@functools.lru_cache(maxsize=32)
def _optimizer(settings: tuple, total_updates: int) -> optax.GradientTransformation:
    optim = dict(zip(_OPTIM_FIELDS, settings))
    schedule = learning_rate_schedule(types.SimpleNamespace(**optim), total_updates)
    adamw = optax.adamw(schedule, b1=optim["b1"], b2=optim["b2"], eps=optim["eps"],
                        weight_decay=optim["weight_decay"])
    if optim["grad_clip"]:
        return optax.chain(optax.clip_by_global_norm(optim["grad_clip"]), adamw)
    return adamw


def init_train_state(params, tx: optax.GradientTransformation) -> TrainState:
    """Step 0; the optimizer state takes the params' shardings (zeros_like)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), tx=tx)


def train_state_shardings(state: TrainState, param_shardings, mesh) -> TrainState:
    """The state's shardings (a TrainState of NamedShardings): the params by `param_shardings`,
    every params-shaped optimizer slot (AdamW's mu, nu) like its parameter, scalars
    (step, optimizer counts) replicated. `state` may be abstract (jax.eval_shape)."""
    from corea_jax.parallel import replicated

    scalar = replicated(mesh)
    opt_state = optax.tree_map_params(state.tx, lambda _, sharding: sharding, state.opt_state,
                                      param_shardings, transform_non_params=lambda _: scalar)
    return TrainState(step=scalar, params=param_shardings, opt_state=opt_state, tx=state.tx)


def relayout_state(state: TrainState, config, scan_layers: bool, feature_major: bool) -> TrainState:
    """`state` (params in `config`'s layout) with its params and every params-shaped optimizer
    slot (AdamW's mu, nu: a subtree with the params' structure and shapes) in the layout
    (scan_layers, feature_major): stacking and transposes only, so the values are exact. Works
    on abstract states (`jax.eval_shape`). `make_optimizer`'s states hold no other per-parameter
    slots; a factored or masked optimizer state would need its own conversion."""
    structure = jax.tree.structure(state.params)
    shapes = [x.shape for x in jax.tree.leaves(state.params)]
    is_params = lambda tree: (jax.tree.structure(tree) == structure  # noqa: E731
                              and [getattr(x, "shape", None) for x in jax.tree.leaves(tree)] == shapes)
    convert = lambda tree: relayout(config, tree, scan_layers, feature_major)[1]  # noqa: E731
    opt_state = jax.tree.map(lambda t: convert(t) if is_params(t) else t, state.opt_state, is_leaf=is_params)
    return state.replace(params=convert(state.params), opt_state=opt_state)
