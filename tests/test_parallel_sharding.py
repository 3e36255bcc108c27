"""The mesh and the logical-axis sharding rules."""

import jax
import pytest

import corea_jax
from corea_jax.models import param_logical_axes
from corea_jax.models.model import param_shapes
from corea_jax.parallel import sharding

CFG = corea_jax.ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32, intermediate_size=48,
                            num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                            max_position_embeddings=64, qkv_bias=True)


def test_make_mesh_checks_the_device_count():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    with pytest.raises(ValueError, match="multiply to 6, but there are 8 devices"):
        sharding.make_mesh({"data": 3, "tensor": 2})
    with pytest.raises(ValueError, match="unknown axis"):
        sharding.make_mesh({"model": 8})


def test_rules_map_logical_axes_to_mesh_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    shardings = sharding.logical_to_sharding(param_logical_axes(CFG), mesh)
    q = shardings["layers"]["self_attn"]["q_proj"]["kernel"].spec
    assert tuple(q) == (None, "fsdp", "tensor", None)  # layers, embed, heads, head_dim
    assert tuple(shardings["embed_tokens"]["embedding"].spec) == ("tensor", "fsdp")


def test_indivisible_dimension_names_the_array_and_the_axis():
    mesh = sharding.make_mesh({"data": 2, "tensor": 4})
    odd = CFG.replace(num_kv_heads=2, num_heads=6)
    with pytest.raises(ValueError, match=r"k_proj/bias: dimension 1 \('kv_heads', size 2\) "
                                         r"is not divisible by mesh axis tensor of size 4"):
        sharding.check_divisible(param_logical_axes(odd), param_shapes(odd), mesh)
    sharding.check_divisible(param_logical_axes(CFG), param_shapes(CFG),
                             sharding.make_mesh({"data": 4, "tensor": 2}))
    assert len(jax.devices()) == 8


@pytest.mark.slow
def test_decoding_layout_follows_the_mesh():
    """Generation uses one parameter set per layer, except where parameters are sharded over
    fsdp: the rollout's sampler copy of a trained policy follows the same rule."""
    from corea_jax.models.model import decoding_scan_layers
    from corea_jax.rl import policy
    from tests.test_rl_trainer import tiny_config

    assert not decoding_scan_layers(None)
    assert not decoding_scan_layers(sharding.make_mesh({"data": 2, "tensor": 4}))
    assert decoding_scan_layers(sharding.make_mesh({"fsdp": 4, "tensor": 2}))
    config = tiny_config()
    for shape, scan in (({"data": 8}, False), ({"fsdp": 8}, True)):
        mesh = sharding.make_mesh(shape)
        model = policy.build_model(config, mesh=mesh)
        sampler = policy.sampling_model(model, model.params)
        assert sampler.config.scan_layers is scan
        assert ("layers" in sampler.params) is scan
        assert all(x.sharding.mesh.shape == mesh.shape for x in jax.tree.leaves(sampler.params))
