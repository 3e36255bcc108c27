"""The Qwen2 / Llama decoder as a Flax linen module: one graph for sampling and training.

Shapes: B batch, T new tokens, S cache slots, L layers, D hidden, H query heads,
K key/value heads, G = H // K query heads per KV head, Dh head dim, F MLP width, V vocab.

Every parameter is created with logical axis names (`vocab`, `embed`, `heads`, `kv_heads`,
`head_dim`, `mlp`, and `layers` added by the layer scan); `corea_jax.parallel.sharding`
maps them to mesh axes with one table of rules. The KV cache is an explicit pytree argument
and result (`KVCache`), never module state.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from corea_jax.models.config import ModelConfig

Array = jax.Array

# Logical axis names of the cached values, [L, B, K, S, Dh].
CACHE_AXES = ("layers", "batch", "kv_heads", "cache_length", "head_dim")
# Keys are stored transposed, [L, B, K, Dh, S]: the scores matmul then reads them as its
# natural right-hand side (XLA's CPU matmul on [S, Dh] keys ran 4x slower than on values).
KEY_CACHE_AXES = ("layers", "batch", "kv_heads", "head_dim", "cache_length")
_NEG_INF = float(np.finfo(np.float32).min)


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer, plus which slots hold real tokens.

    k: [L, B, K, Dh, S] (keys transposed), v: [L, B, K, S, Dh] for stacked layers
      (`scan_layers`); else tuples of L such arrays without the layer axis, one per layer
      (each updated in place and read without slicing). Compute dtype.
    valid: [B, S] bool, True where a slot holds a (non-padding) token.
    index: [] int32, the next slot to write; all rows share it (batches are left-padded).
    """

    k: Array | tuple[Array, ...]
    v: Array | tuple[Array, ...]
    valid: Array
    index: Array

    @property
    def max_length(self) -> int:
        return self.valid.shape[1]


def init_cache(config: ModelConfig, batch_size: int, max_length: int) -> KVCache:
    """An empty cache with `max_length` slots per row, in the layout of `config.scan_layers`."""
    def zeros(*shape):
        if config.scan_layers:
            return jnp.zeros((config.num_layers, *shape), config.jnp_dtype)
        return tuple(jnp.zeros(shape, config.jnp_dtype) for _ in range(config.num_layers))

    b, k, s, hd = batch_size, config.num_kv_heads, max_length, config.head_dim
    return KVCache(k=zeros(b, k, hd, s), v=zeros(b, k, s, hd), valid=jnp.zeros((b, s), bool),
                   index=jnp.zeros((), jnp.int32))


def cache_logical_axes(config: ModelConfig) -> KVCache:
    """Logical axis names of each `KVCache` field (same pytree structure as `init_cache`'s)."""
    def axes(names):
        return names if config.scan_layers else (names[1:],) * config.num_layers

    return KVCache(k=axes(KEY_CACHE_AXES), v=axes(CACHE_AXES), valid=("batch", "cache_length"), index=())


# ------------------------------------------------------------------------------ RoPE


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse frequencies [Dh/2], float32, computed as transformers does (incl. llama3 scaling)."""
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (np.float32(1.0) / (np.float32(config.rope.theta) ** exponents)).astype(np.float32)
    rope = config.rope
    if rope.rope_type == "llama3":
        old_len = np.float32(rope.original_max_position_embeddings)
        low_wavelen = old_len / np.float32(rope.low_freq_factor)
        high_wavelen = old_len / np.float32(rope.high_freq_factor)
        wavelen = np.float32(2 * np.pi) / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(rope.factor), inv_freq)
        smooth = (old_len / wavelen - np.float32(rope.low_freq_factor)) / np.float32(
            rope.high_freq_factor - rope.low_freq_factor)
        smoothed = (1 - smooth) * scaled / np.float32(rope.factor) + smooth * scaled
        is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        inv_freq = np.where(is_medium, smoothed, scaled).astype(np.float32)
    return inv_freq


def rope_tables(config: ModelConfig, positions: Array) -> tuple[Array, Array]:
    """cos, sin: [B, T, Dh] float32 for integer positions [B, T]."""
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(rope_inv_freq(config))
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: Array, cos: Array, sin: Array) -> Array:
    """Rotates x [B, T, N, Dh] by the position tables (the `rotate_half` layout of HF)."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# --------------------------------------------------------------------------- modules


def _init(axes: tuple[str, ...], init=nn.initializers.normal(stddev=0.02)):
    return nn.with_logical_partitioning(init, axes)


class RMSNorm(nn.Module):
    eps: float
    dtype: jnp.dtype
    param_dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: Array) -> Array:
        scale = self.param("scale", _init(("embed",), nn.initializers.ones), (x.shape[-1],),
                           self.param_dtype)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return scale.astype(self.dtype) * normed.astype(self.dtype)


class Projection(nn.Module):
    """A linear map between named axes: `einsum(spec, x, kernel) (+ bias)`.

    Written out (not DenseGeneral) so the kernel is created with its final multi-axis shape,
    which keeps the logical axis names valid under a global mesh.
    """

    spec: str  # e.g. "btd,dhk->bthk"
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    bias_axes: tuple[str, ...] | None
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = self.param("kernel", _init(self.axes), self.shape, cfg.jnp_param_dtype)
        y = jnp.einsum(self.spec, x.astype(cfg.jnp_dtype), kernel.astype(cfg.jnp_dtype))
        if self.bias_axes is not None:
            n = len(self.bias_axes)
            bias = self.param("bias", _init(self.bias_axes, nn.initializers.zeros), self.shape[-n:],
                              cfg.jnp_param_dtype)
            y = y + bias.astype(cfg.jnp_dtype)
        return y


class Attention(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array, cos: Array, sin: Array, mask: Array, index: Array | None,
                 cache_kv: tuple[Array, Array] | None, layer: Array):
        """x [B, T, D]; mask [B, T, S] bool; cache_kv: None, every layer's (keys [L, B, K, Dh, S],
        values [L, B, K, S, Dh]) or this layer's (the same without L).

        The new keys/values are written into the cache at slots [index, index + T). With
        stacked layers, decoding threads every layer's cache through the layer scan as a carry
        and writes in place (re-stacking it every step cost more than the matmuls on CPU), and
        a loss scans each layer's slice in and out, so its backward pass saves the cache once,
        not once per layer. With one parameter set per layer, each layer owns its cache arrays.
        """
        cfg = self.config
        d, h, k_heads, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        qkv_bias = ("heads", "head_dim") if cfg.qkv_bias else None
        kv_bias = ("kv_heads", "head_dim") if cfg.qkv_bias else None
        q = Projection("btd,dhk->bthk", (d, h, hd), ("embed", "heads", "head_dim"), qkv_bias, cfg,
                       name="q_proj")(x)
        k = Projection("btd,dhk->bthk", (d, k_heads, hd), ("embed", "kv_heads", "head_dim"), kv_bias,
                       cfg, name="k_proj")(x)
        v = Projection("btd,dhk->bthk", (d, k_heads, hd), ("embed", "kv_heads", "head_dim"), kv_bias,
                       cfg, name="v_proj")(x)
        q = nn.with_logical_constraint(q, ("batch", "length", "heads", "head_dim"))
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin).transpose(0, 2, 3, 1)  # [B, K, Dh, T]
        v = v.transpose(0, 2, 1, 3)  # [B, K, T, Dh]

        if cache_kv is None:
            new_kv = None
        elif cache_kv[0].ndim == 5:  # every layer's cache
            cache_k, cache_v = cache_kv
            cache_k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype)[None],
                                                   (layer, 0, 0, 0, index))
            cache_v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype)[None],
                                                   (layer, 0, 0, index, 0))
            k = jax.lax.dynamic_index_in_dim(cache_k, layer, axis=0, keepdims=False)
            v = jax.lax.dynamic_index_in_dim(cache_v, layer, axis=0, keepdims=False)
            new_kv = (cache_k, cache_v)
        else:  # this layer's slice
            cache_k, cache_v = cache_kv
            k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), (0, 0, 0, index))
            v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), (0, 0, index, 0))
            new_kv = (k, v)
        if cache_kv is not None:
            k = nn.with_logical_constraint(k, KEY_CACHE_AXES[1:])
            v = nn.with_logical_constraint(v, CACHE_AXES[1:])

        b, t = q.shape[:2]
        groups = cfg.num_heads // cfg.num_kv_heads
        # Each kv head's queries (T positions x G grouped heads) as one [T*G, Dh] matrix: one
        # batched matmul per (row, kv head) against its cache slots.
        q = q.reshape(b, t, k_heads, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, k_heads, t * groups, hd)
        scores = jnp.einsum("bkqd,bkds->bkqs", q, k, preferred_element_type=jnp.float32)
        scores = scores.reshape(b, k_heads, t, groups, -1) * np.float32(hd**-0.5)
        scores = jnp.where(mask[:, None, :, None, :], scores, _NEG_INF)
        probs = jax.nn.softmax(scores, axis=-1).astype(cfg.jnp_dtype)
        out = jnp.einsum("bkqs,bksd->bkqd", probs.reshape(b, k_heads, t * groups, -1),
                         v.astype(cfg.jnp_dtype))
        out = out.reshape(b, k_heads, t, groups, hd).transpose(0, 2, 1, 3, 4).reshape(b, t, h, hd)
        out = nn.with_logical_constraint(out, ("batch", "length", "heads", "head_dim"))
        out = Projection("bthk,hkd->btd", (h, hd, d), ("heads", "head_dim", "embed"),
                         ("embed",) if cfg.o_bias else None, cfg, name="o_proj")(out)
        return out, new_kv


class RowsMinorDense(nn.Module):
    """`W @ x` on feature-major activations: kernel [out, in] (HF's orientation), x [in, B, T]
    -> [out, B, T]. The decoding form of `nn.Dense` (`ModelConfig.feature_major`)."""

    features: int
    axes: tuple[str, str]  # logical axes of the kernel, (out, in)
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        kernel = self.param("kernel", _init(self.axes), (self.features, x.shape[0]), cfg.jnp_param_dtype)
        return jnp.einsum("oi,ibt->obt", kernel.astype(cfg.jnp_dtype), x.astype(cfg.jnp_dtype))


def _rows_major(x: Array) -> Array:
    """[D, B, T] -> [B, T, D] behind an optimization barrier, so XLA does not fold the
    transpose into the matmul that made x (which would bring back the slower [rows, out] form)."""
    return jax.lax.optimization_barrier(x).transpose(1, 2, 0)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x: Array) -> Array:
        cfg = self.config
        if cfg.feature_major:  # the same MLP with [out, in] kernels and the rows minor
            x = x.transpose(2, 0, 1)
            gate = RowsMinorDense(cfg.intermediate_size, ("mlp", "embed"), cfg, name="gate_proj")(x)
            up = RowsMinorDense(cfg.intermediate_size, ("mlp", "embed"), cfg, name="up_proj")(x)
            hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("mlp", "batch", "length"))
            return _rows_major(RowsMinorDense(cfg.hidden_size, ("embed", "mlp"), cfg, name="down_proj")(hidden))
        dense = functools.partial(nn.Dense, use_bias=False, dtype=cfg.jnp_dtype,
                                  param_dtype=cfg.jnp_param_dtype)
        up_init = _init(("embed", "mlp"))
        gate = dense(cfg.intermediate_size, kernel_init=up_init, name="gate_proj")(x)
        up = dense(cfg.intermediate_size, kernel_init=up_init, name="up_proj")(x)
        hidden = nn.with_logical_constraint(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        return dense(cfg.hidden_size, kernel_init=_init(("mlp", "embed")), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, carry, cos, sin, mask, index, layer, layer_kv=None):
        """carry (x, every layer's cache or None); layer_kv: this layer's cache slice, scanned
        in and out (then the carry holds no cache)."""
        x, cache_kv = carry
        cfg = self.config
        norm = functools.partial(RMSNorm, cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype)
        attn_out, new_kv = Attention(cfg, name="self_attn")(
            norm(name="input_layernorm")(x), cos, sin, mask, index,
            cache_kv if layer_kv is None else layer_kv, layer)
        x = x + attn_out
        x = x + MLP(cfg, name="mlp")(norm(name="post_attention_layernorm")(x))
        x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
        if layer_kv is None:
            return (x, new_kv), None
        return (x, None), new_kv


class Decoder(nn.Module):
    """The causal LM: tokens -> float32 logits, optionally reading and extending a KV cache."""

    config: ModelConfig

    @nn.compact
    def __call__(self, tokens: Array, positions: Array, token_mask: Array,
                 cache: KVCache | None = None, *, return_hidden: bool = False,
                 last_only: bool = False, head: bool = True, cache_carry: bool = True):
        """Runs T new tokens.

        Args:
          tokens: [B, T] int32 token ids.
          positions: [B, T] int32 RoPE positions (0 at each row's first real token).
          token_mask: [B, T] bool, False on padding.
          cache: None (attend within `tokens` only) or a KVCache whose slots
            [cache.index, cache.index + T) receive these tokens.
          return_hidden: also return the final normed hidden states [B, T, D].
          last_only: compute logits for the last position only ([B, 1, V]); a prefill
            needs no more, and the LM head is its largest matmul.
          cache_carry: thread every layer's cache through the layer scan (decoding: in
            place); False scans each layer's slice in and out (a loss: the backward pass
            then saves the cache once instead of once per layer).
          head: False skips the LM head: the first output is the final normed hidden
            states [B, T, D] (a loss then applies `lm_head_weights` chunk by chunk).

        Returns:
          (logits [B, T, V] float32, new cache or None) — plus hidden states if asked.
        """
        cfg = self.config
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.jnp_dtype,
                         param_dtype=cfg.jnp_param_dtype,
                         embedding_init=_init(("vocab", "embed")), name="embed_tokens")
        x = nn.with_logical_constraint(embed(tokens), ("batch", "length", "embed"))
        cos, sin = rope_tables(cfg, positions)

        t = tokens.shape[1]
        if cache is None:
            index = None
            valid = token_mask
            query_slot = jnp.arange(t)
            layers_kv = None
        else:
            index = cache.index
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, token_mask, index, axis=1)
            query_slot = index + jnp.arange(t)
            layers_kv = (cache.k, cache.v)
        key_slot = jnp.arange(valid.shape[1])
        mask = (key_slot[None, :] <= query_slot[:, None])[None] & valid[:, None, :]

        layer_cls = DecoderLayer
        if cfg.remat:
            layer_cls = nn.remat(layer_cls, prevent_cse=False)
        scan_slices = cache is not None and not cache_carry
        if not cfg.scan_layers:
            x, new_layers_kv = self._unrolled_layers(layer_cls, x, cos, sin, mask, index, layers_kv)
        else:
            layers = nn.scan(
                layer_cls,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, nn.broadcast, 0)
                + ((0,) if scan_slices else ()),
                length=cfg.num_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )(cfg, name="layers")
            if scan_slices:
                (x, _), new_layers_kv = layers((x, None), cos, sin, mask, index,
                                               jnp.arange(cfg.num_layers), layers_kv)
            else:
                (x, new_layers_kv), _ = layers((x, layers_kv), cos, sin, mask, index,
                                               jnp.arange(cfg.num_layers))

        if last_only:
            x = x[:, -1:]
        x = RMSNorm(cfg.rms_norm_eps, cfg.jnp_dtype, cfg.jnp_param_dtype, name="norm")(x)
        new_cache = None
        if cache is not None:
            new_k, new_v = new_layers_kv
            new_cache = KVCache(k=new_k, v=new_v, valid=valid, index=index + t)
        if not head:
            return x, new_cache
        if cfg.tie_word_embeddings:
            head = embed.embedding if cfg.feature_major else embed.embedding.T
        elif cfg.feature_major:
            head = self.param("lm_head", _init(("vocab", "embed")),
                              (cfg.vocab_size, cfg.hidden_size), cfg.jnp_param_dtype)
        else:
            head = self.param("lm_head", _init(("embed", "vocab")),
                              (cfg.hidden_size, cfg.vocab_size), cfg.jnp_param_dtype)
        if cfg.feature_major:  # [V, D] @ x^T: logits [V, B, T], then the rows back in front
            logits = _rows_major(jnp.einsum("vd,btd->vbt", head.astype(cfg.jnp_dtype), x,
                                            preferred_element_type=jnp.float32))
        else:
            logits = jnp.einsum("btd,dv->btv", x, head.astype(cfg.jnp_dtype),
                                preferred_element_type=jnp.float32)
        logits = nn.with_logical_constraint(logits, ("batch", "length", "vocab"))
        if return_hidden:
            return logits, new_cache, x
        return logits, new_cache

    def _unrolled_layers(self, layer_cls, x, cos, sin, mask, index, layers_kv):
        """The layers as `layers_0`, `layers_1`, ... in a Python loop (scan_layers=False), each
        reading and writing its own cache arrays."""
        new_k, new_v = [], []
        for i in range(self.config.num_layers):
            layer_kv = None if layers_kv is None else (layers_kv[0][i], layers_kv[1][i])
            (x, _), kv = layer_cls(self.config, name=f"layers_{i}")(
                (x, None), cos, sin, mask, index, i, layer_kv)
            if kv is not None:
                new_k.append(kv[0])
                new_v.append(kv[1])
        return x, (None if layers_kv is None else (tuple(new_k), tuple(new_v)))


def relayout(config: ModelConfig, params, scan_layers: bool,
             feature_major: bool | None = None) -> tuple[ModelConfig, dict]:
    """(config, params) with the layers' parameters stacked (`scan_layers=True`: one "layers"
    entry with a leading axis of num_layers) or split into `layers_0`, `layers_1`, ...; and
    the MLP and untied LM-head kernels as [out, in] (`feature_major=True`) or [in, out]
    (False; None keeps the config's). The same weights either way. Apply it under `jax.jit`
    to convert without a host round trip."""
    if feature_major is not None and feature_major != config.feature_major:
        config, params = config.replace(feature_major=feature_major), _transpose_kernels(config, params)
    if config.scan_layers == scan_layers:
        return config, params
    params = dict(params)
    n = config.num_layers
    if scan_layers:
        per_layer = [params.pop(f"layers_{i}") for i in range(n)]
        params["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    else:
        stacked = params.pop("layers")
        for i in range(n):
            params[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], stacked)
    return config.replace(scan_layers=scan_layers), params


def _transpose_kernels(config: ModelConfig, params) -> dict:
    """params with every MLP kernel's last two axes and an untied LM head swapped."""
    swap = lambda x: jnp.swapaxes(x, -1, -2)  # noqa: E731
    params = dict(params)
    layer_keys = ["layers"] if config.scan_layers else [f"layers_{i}" for i in range(config.num_layers)]
    for key in layer_keys:
        layer = dict(params[key])
        layer["mlp"] = jax.tree.map(swap, layer["mlp"])
        params[key] = layer
    if not config.tie_word_embeddings:
        params["lm_head"] = swap(params["lm_head"])
    return params


def lm_head_weights(config: ModelConfig, params) -> Array:
    """The LM head matrix [D, V] (the transposed embedding when tied), in the compute dtype."""
    if config.tie_word_embeddings:
        head = params["embed_tokens"]["embedding"].T
    else:
        head = params["lm_head"].T if config.feature_major else params["lm_head"]
    return head.astype(config.jnp_dtype)


def positions_from_mask(token_mask: Array) -> Array:
    """RoPE positions [B, T] for a left-padded batch: 0 at each row's first real token."""
    positions = jnp.cumsum(token_mask.astype(jnp.int32), axis=-1) - 1
    return jnp.maximum(positions, 0)
