"""The JAX decoder against transformers' PyTorch models (random weights), and its KV cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import corea_jax
from corea_jax.models import ConfigError, init_cache
from corea_jax.models.decoder import positions_from_mask, relayout
from corea_jax.models.model import forward
from tests.helpers import save_random_hf_model, torch_logits

KINDS = ["qwen2", "qwen2_untied", "llama3"]


@pytest.fixture(scope="module", params=KINDS)
def pair(request, tmp_path_factory):
    """(HF torch model, corea_jax Model) with the same random weights."""
    out = tmp_path_factory.mktemp(request.param)
    hf_model = save_random_hf_model(request.param, out)
    return request.param, hf_model, corea_jax.load_model(out), out


def test_config_read_from_hf(pair):
    kind, hf_model, model, _ = pair
    cfg = model.config
    assert cfg.model_type == ("llama" if kind == "llama3" else "qwen2")
    assert cfg.qkv_bias == (kind != "llama3")
    assert cfg.tie_word_embeddings == (kind == "qwen2")
    assert ("lm_head" in model.params) == (kind != "qwen2")
    if kind == "llama3":
        assert cfg.rope.rope_type == "llama3" and cfg.rope.factor == 8.0


def test_logits_match_transformers(pair):
    kind, hf_model, model, _ = pair
    rng = np.random.default_rng(0)
    # llama3 config: original context 32, so 96 tokens run past it into the scaled regime.
    length = 96 if kind == "llama3" else 40
    ids = rng.integers(0, model.config.vocab_size, size=(2, length))
    ours = np.asarray(corea_jax.logits(model, ids))
    ref = torch_logits(hf_model, ids)
    assert ours.shape == ref.shape == (2, length, model.config.vocab_size)
    assert ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-4


def test_left_padding_matches_unpadded_rows(pair):
    kind, hf_model, model, _ = pair
    rng = np.random.default_rng(1)
    ids = rng.integers(3, model.config.vocab_size, size=(2, 24))
    mask = np.ones_like(ids)
    mask[1, :7] = 0  # row 1 is left-padded by 7
    ids[1, :7] = 0
    ours = np.asarray(corea_jax.logits(model, ids, mask))
    ref = torch_logits(hf_model, ids, mask)
    assert np.abs(ours[mask == 1] - ref[mask == 1]).max() <= 1e-4
    alone = np.asarray(corea_jax.logits(model, ids[1:, 7:]))
    assert np.abs(ours[1, 7:] - alone[0]).max() <= 1e-4


def test_kv_cache_prefill_then_decode_equals_full_forward(pair):
    _, _, model, _ = pair
    cfg = model.config
    rng = np.random.default_rng(2)
    ids = jnp.asarray(rng.integers(3, cfg.vocab_size, size=(2, 20)), jnp.int32)
    mask = jnp.ones(ids.shape, bool).at[0, :5].set(False)
    full, _ = forward(cfg, model.params, ids, positions_from_mask(mask), mask)

    cache = init_cache(cfg, batch_size=2, max_length=32)
    positions = positions_from_mask(mask)
    logits_pre, cache = forward(cfg, model.params, ids[:, :12], positions[:, :12], mask[:, :12], cache)
    steps = [logits_pre]
    for t in range(12, 20):
        step, cache = forward(cfg, model.params, ids[:, t:t + 1], positions[:, t:t + 1],
                              mask[:, t:t + 1], cache)
        steps.append(step)
    cached = jnp.concatenate(steps, axis=1)
    assert int(cache.index) == 20
    valid = np.asarray(mask)
    assert np.abs(np.asarray(cached)[valid] - np.asarray(full)[valid]).max() <= 1e-4


def test_params_carry_logical_axis_names():
    from corea_jax.models import param_logical_axes

    cfg = corea_jax.ModelConfig(model_type="qwen2", vocab_size=64, hidden_size=32,
                                intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
                                head_dim=8, max_position_embeddings=64, qkv_bias=True)
    axes = param_logical_axes(cfg)
    assert tuple(axes["embed_tokens"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["layers"]["self_attn"]["q_proj"]["kernel"]) == ("layers", "embed", "heads", "head_dim")
    assert tuple(axes["layers"]["self_attn"]["k_proj"]["kernel"]) == ("layers", "embed", "kv_heads", "head_dim")
    assert tuple(axes["layers"]["mlp"]["down_proj"]["kernel"]) == ("layers", "mlp", "embed")
    assert tuple(axes["lm_head"]) == ("embed", "vocab")
    leaves = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
    assert all(isinstance(a, tuple) and all(isinstance(n, str) for n in a) for a in leaves)


def test_bfloat16_compute_keeps_float32_logits(pair):
    _, _, model, _ = pair
    cfg16 = model.config.replace(param_dtype="bfloat16", dtype="bfloat16")
    params16 = jax.tree.map(lambda p: p.astype(jnp.bfloat16), model.params)
    ids = jnp.arange(10, dtype=jnp.int32)[None] + 3
    mask = jnp.ones_like(ids, bool)
    out16, _ = forward(cfg16, params16, ids, positions_from_mask(mask), mask)
    out32, _ = forward(model.config, model.params, ids, positions_from_mask(mask), mask)
    assert out16.dtype == jnp.float32
    assert np.abs(np.asarray(out16) - np.asarray(out32)).max() < 0.1 * np.abs(np.asarray(out32)).max()


def test_layer_layouts_agree(pair):
    """scan_layers=True (stacked, one scan) and False (one parameter set per layer, the
    loading default) hold the same weights and compute the same logits and KV cache."""
    _, _, model, _ = pair
    assert not model.config.scan_layers and "layers_0" in model.params and "layers" not in model.params
    scanned_cfg, scanned = relayout(model.config, model.params, scan_layers=True)
    assert scanned_cfg.scan_layers and scanned["layers"]["mlp"]["up_proj"]["kernel"].shape[0] == scanned_cfg.num_layers
    back_cfg, back = relayout(scanned_cfg, scanned, scan_layers=False)
    assert back_cfg == model.config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, model.params))

    rng = np.random.default_rng(3)
    ids = jnp.asarray(rng.integers(3, model.config.vocab_size, size=(2, 12)), jnp.int32)
    mask = jnp.ones(ids.shape, bool).at[1, :4].set(False)
    positions = positions_from_mask(mask)
    outs = []
    for cfg, params in ((model.config, model.params), (scanned_cfg, scanned)):
        cache = init_cache(cfg, batch_size=2, max_length=16)
        logits, cache = forward(cfg, params, ids, positions, mask, cache)
        outs.append((np.asarray(logits), np.asarray(cache.k), np.asarray(cache.v)))
    for unrolled, stacked in zip(*outs):
        assert np.abs(unrolled - stacked).max() <= 1e-5


def test_unscanned_params_carry_per_layer_axis_names():
    from corea_jax.models import param_logical_axes

    cfg = corea_jax.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32,
                                intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2,
                                head_dim=8, max_position_embeddings=64, scan_layers=False)
    axes = param_logical_axes(cfg)
    assert sorted(k for k in axes if k.startswith("layers")) == ["layers_0", "layers_1", "layers_2"]
    assert tuple(axes["layers_2"]["self_attn"]["q_proj"]["kernel"]) == ("embed", "heads", "head_dim")
    assert tuple(axes["layers_0"]["mlp"]["down_proj"]["kernel"]) == ("mlp", "embed")
    with pytest.raises(ConfigError, match="scan_layers"):
        cfg.replace(scan_layers="yes")


def test_feature_major_layout_matches_transformers_and_converts_exactly(pair):
    """feature_major=True ([out, in] MLP and LM-head kernels, applied with the rows minor)
    loads HF's arrays as they are, gives transformers' logits, converts to and from the
    [in, out] layout exactly (also stacked) and exports the same tensors."""
    from corea_jax.models import checkpoint

    kind, hf_model, model, model_dir = pair
    assert not model.config.feature_major  # toy-sized: below FEATURE_MAJOR_MIN_HIDDEN
    fm = corea_jax.load_model(model_dir, feature_major=True)
    cfg = fm.config
    assert cfg.feature_major
    assert fm.params["layers_0"]["mlp"]["gate_proj"]["kernel"].shape == (cfg.intermediate_size, cfg.hidden_size)
    assert fm.params["layers_1"]["mlp"]["down_proj"]["kernel"].shape == (cfg.hidden_size, cfg.intermediate_size)
    if not cfg.tie_word_embeddings:
        assert fm.params["lm_head"].shape == (cfg.vocab_size, cfg.hidden_size)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, size=(2, 24))
    assert np.abs(np.asarray(corea_jax.logits(fm, ids)) - torch_logits(hf_model, ids)).max() <= 1e-4

    back_cfg, back = relayout(cfg, fm.params, scan_layers=False, feature_major=False)
    assert back_cfg == model.config
    assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), back, model.params))
    stacked_cfg, stacked = relayout(cfg, fm.params, scan_layers=True)
    assert stacked_cfg.feature_major and stacked_cfg.scan_layers
    assert np.abs(np.asarray(corea_jax.logits(corea_jax.Model(stacked_cfg, stacked, None), ids))
                  - np.asarray(corea_jax.logits(fm, ids))).max() <= 1e-5
    ours = dict(checkpoint.hf_tensors_from_params(cfg, fm.params))
    ref = dict(checkpoint.hf_tensors_from_params(model.config, model.params))
    assert ours.keys() == ref.keys() and all((ours[k] == ref[k]).all() for k in ref)


def test_feature_major_kernels_carry_reversed_axis_names():
    from corea_jax.models import param_logical_axes

    cfg = corea_jax.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                                max_position_embeddings=64, scan_layers=False, feature_major=True)
    axes = param_logical_axes(cfg)
    assert tuple(axes["layers_0"]["mlp"]["gate_proj"]["kernel"]) == ("mlp", "embed")
    assert tuple(axes["layers_1"]["mlp"]["down_proj"]["kernel"]) == ("embed", "mlp")
    assert tuple(axes["lm_head"]) == ("vocab", "embed")
    with pytest.raises(ConfigError, match="feature_major: expected True or False"):
        cfg.replace(feature_major=1)


def test_decoding_feature_major_only_for_wide_models_on_one_cpu():
    from corea_jax.models.model import FEATURE_MAJOR_MIN_HIDDEN, decoding_feature_major
    from corea_jax.parallel.sharding import make_mesh

    cfg = corea_jax.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                                max_position_embeddings=64)
    wide = cfg.replace(hidden_size=FEATURE_MAJOR_MIN_HIDDEN, head_dim=FEATURE_MAJOR_MIN_HIDDEN // 4)
    assert jax.default_backend() == "cpu"
    assert not decoding_feature_major(cfg, None)
    assert decoding_feature_major(wide, None)
    assert not decoding_feature_major(wide, make_mesh({"data": len(jax.devices())}))


def test_training_layout_unrolls_layers_only_on_one_cpu():
    from corea_jax.models.model import FEATURE_MAJOR_MIN_HIDDEN, training_layout
    from corea_jax.parallel.sharding import make_mesh

    cfg = corea_jax.ModelConfig(model_type="llama", vocab_size=64, hidden_size=32, intermediate_size=48,
                                num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8,
                                max_position_embeddings=64)
    wide = cfg.replace(hidden_size=FEATURE_MAJOR_MIN_HIDDEN, head_dim=FEATURE_MAJOR_MIN_HIDDEN // 4)
    assert training_layout(cfg, None) == (False, False)
    assert training_layout(wide, None) == (False, True)
    assert training_layout(wide, make_mesh({"data": len(jax.devices())})) == (True, False)


def test_one_builder_makes_every_small_decoder():
    """models.small_decoder: head_dim from the width, q/k/v biases by family, tied embeddings
    unless told otherwise (the toy policy, the reproduction's decoders, the server's test models)."""
    from corea_jax.models import small_decoder

    arch = dict(hidden_size=64, intermediate_size=256, num_layers=2, num_heads=4, num_kv_heads=2,
                max_position_embeddings=128)
    qwen = small_decoder(arch, vocab_size=320, eos_token_ids=(3,), pad_token_id=0)
    llama = small_decoder({**arch, "model_type": "llama"}, vocab_size=320, eos_token_ids=(3,), pad_token_id=0,
                          tie_word_embeddings=False)
    assert qwen.model_type == "qwen2" and qwen.qkv_bias and qwen.head_dim == 16 and qwen.tie_word_embeddings
    assert llama.model_type == "llama" and not llama.qkv_bias and not llama.tie_word_embeddings
