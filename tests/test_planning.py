"""launch.plan: AOT memory plans on abstract arrays, and the meaning of the numbers it prints."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from corea_jax.models.model import param_shapes, param_shardings
from corea_jax import planning as plan
from corea_jax.parallel import sharding
from tests.helpers import REPO
from tests.test_parallel_sharding import CFG


def test_memory_analysis_counts_one_devices_buffers():
    """The compiled SPMD program's argument/output sizes are one device's shards, not the whole."""
    shapes = param_shapes(CFG)
    whole = plan.per_device_bytes(shapes)

    def compiled_args(mesh):
        args = shapes if mesh is None else plan._abstract(shapes, param_shardings(CFG, mesh))
        memory = jax.jit(lambda p: jax.tree.map(lambda x: x * 2, p)).lower(args).compile().memory_analysis()
        # Outputs also count the result tuple's table of buffer pointers (8 bytes a leaf).
        leaves = len(jax.tree.leaves(shapes))
        assert memory.output_size_in_bytes - memory.argument_size_in_bytes in (0, 8 * leaves)
        return memory.argument_size_in_bytes

    assert compiled_args(None) == whole
    mesh = sharding.make_mesh({"fsdp": 4, "tensor": 2})
    sharded = plan._abstract(shapes, param_shardings(CFG, mesh))
    per_device = plan.per_device_bytes(sharded)
    assert whole / 8 <= per_device < whole / 2  # norms and biases are split fewer ways
    assert compiled_args(mesh) == per_device


def _plan_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "launch.plan", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


SMALL_RUN = ["--config=configs/paper/qwen25_7b_rlcc.py", "--config.model.name=Qwen/Qwen2.5-0.5B-Instruct",
             "--config.rollout.prompts_per_step=8", "--config.rollout.group_size=4",
             "--config.rollout.max_prompt_length=32", "--config.rollout.max_new_tokens=64",
             "--config.rollout.batch_size=16", "--config.grpo.num_minibatches=1",
             "--config.grpo.micro_batch_size=8"]


@pytest.mark.slow
def test_plan_of_a_small_training_config():
    out = _plan_cli(*SMALL_RUN, "--mesh=data:2,fsdp:2,tensor:2", "--devices=8", "--device_memory_gb=0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["architecture"] == "qwen2.5-0.5b-instruct"
    assert report["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    update, rollout = report["programs"]
    assert (update["name"], rollout["name"]) == ("update_step", "rollout_generate")
    # Arguments of the update: one device's share of the float32 train state (params + 2 AdamW
    # moments, 494M params, embed over fsdp, heads/MLP/vocab over tensor) plus the batch.
    state_bytes = 3 * 4 * 494_032_768
    assert state_bytes / 4 < update["argument_bytes"] < state_bytes / 4 * 1.05
    assert update["alias_bytes"] >= update["argument_bytes"] * 0.95  # the state is donated
    assert rollout["resident_bytes"] == pytest.approx(update["argument_bytes"], rel=0.02)
    assert report["bytes_per_device"] == max(p["peak_bytes"] for p in report["programs"])
    assert report["device_memory_bytes"] == int(0.5 * 1024**3)
    assert report["fits"] is False and "does NOT fit" in lines[-2]
    assert update["model_flops"] > 0 and update["temp_bytes"] > 0


@pytest.mark.slow
def test_plan_rejects_a_mesh_that_does_not_match_the_devices_or_the_model():
    out = _plan_cli(*SMALL_RUN, "--mesh=data:2,fsdp:8", "--devices=8")
    assert out.returncode != 0
    assert "mesh: axis sizes {'data': 2, 'fsdp': 8, 'tensor': 1} multiply to 16, but there are 8 devices" \
        in out.stderr
    out = _plan_cli("--config=configs/paper/qwen25_32b_generate.py", "--mesh=tensor:16", "--devices=16")
    assert out.returncode != 0
    assert "('kv_heads', size 8) is not divisible by mesh axis tensor of size 16" in out.stderr
    out = _plan_cli(*SMALL_RUN, "--mesh=data:2,pipeline:4", "--devices=8")
    assert out.returncode != 0 and "found 'pipeline:4'" in out.stderr


def test_architecture_of_a_config():
    from corea_jax.rl.config import defaults

    config = defaults()
    config.model.name = "Qwen/Qwen2.5-7B-Instruct"
    assert plan.architecture_name(config) == "qwen2.5-7b-instruct"
    config.model.name = "toy"
    with pytest.raises(ValueError, match="config.model.name: expected a model with known shapes"):
        plan.architecture_name(config)
    assert plan.model_config(_generation_config()).param_dtype == "bfloat16"
    assert jnp.dtype(plan.model_config(_generation_config()).dtype) == jnp.bfloat16


def _generation_config():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen", REPO / "configs/paper/qwen25_32b_generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def test_the_update_plan_compiles_the_trainers_loss(monkeypatch):
    """The planner and the trainer build the GRPO loss settings with one function
    (`rl.config.loss_config`): off-policy when the old log-probs are the sampler's."""
    from corea_jax.rl.config import defaults, loss_config

    class Captured(Exception):
        pass

    def capture(*args, **kwargs):
        raise Captured(kwargs["loss_config"])

    monkeypatch.setattr(plan, "sharded_update_step", capture)
    config = defaults()
    config.model.name = "Qwen/Qwen2.5-0.5B-Instruct"
    config.rollout.temperature = 0.7
    config.grpo.behaviour_logprobs = "sampler"
    config.grpo.micro_batch_size = 8
    mesh = sharding.make_mesh({"fsdp": 8})
    with pytest.raises(Captured) as err:
        plan.update_plan(config, plan.model_config(config), mesh)
    [planned] = err.value.args
    assert planned == loss_config(config)
    assert not planned.on_policy and planned.temperature == 0.7
