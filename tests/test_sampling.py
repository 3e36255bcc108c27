"""The pure next-token functions of `corea_jax.generation.sampling` on small vocabularies."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from corea_jax.generation import sampling

# Mass comparisons near the top-p boundary differ between float32 (the kernel) and float64
# (the reference); tokens within this much of the boundary may go either way.
_MASS_TOL = 1e-5


def _allowed_bounds(logits: np.ndarray, top_k: int, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """(must_allow, may_allow) [B, V] from the definition, not the kernel's sort-and-threshold.

    A token is allowed when fewer than k tokens have a strictly larger logit and the
    probability mass of the strictly more likely tokens, in the softmax renormalised over
    those top-k tokens, is below p (ties are kept together).
    """
    x = logits.astype(np.float64)
    greater = x[:, None, :] > x[:, :, None]  # [B, V(token), V(other)]: other beats token
    rank_ok = greater.sum(-1) < (top_k if top_k > 0 else x.shape[-1])
    probs = np.where(rank_ok, np.exp(x - x.max(-1, keepdims=True)), 0.0)
    probs /= probs.sum(-1, keepdims=True)
    mass_before = (greater * probs[:, None, :]).sum(-1)
    top_p_off = top_p >= 1
    must = rank_ok & ((mass_before < top_p - _MASS_TOL) | top_p_off)
    may = rank_ok & ((mass_before < top_p + _MASS_TOL) | top_p_off)
    return must, may


# One compiled program per shape: hypothesis draws only a few vocabulary sizes.
_sample_fn = jax.jit(sampling.sample, static_argnames="filtered")


def _draw(logits: np.ndarray, num: int, seed: int, temperature=1.0, top_k=0, top_p=1.0,
          filtered=False) -> np.ndarray:
    """`num` samples from one row of logits [V], one PRNG key per draw: tokens [num]."""
    keys = jax.random.split(jax.random.key(seed), num)
    batch = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (num, len(logits)))
    tokens = _sample_fn(batch, keys, jnp.float32(temperature), jnp.int32(top_k),
                        jnp.float32(top_p), filtered=filtered)
    return np.asarray(tokens)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _chisquare_pvalue(tokens: np.ndarray, probs: np.ndarray) -> float:
    observed = np.bincount(tokens, minlength=len(probs))
    return stats.chisquare(observed, probs * len(tokens)).pvalue


# ---------------------------------------------------------------------------- greedy


def test_greedy_is_argmax_first_on_ties():
    logits = jnp.asarray([[0.0, 3.0, 1.0, 3.0], [5.0, -1.0, 5.0, 2.0], [-2.0, -3.0, -1.0, -9.0]])
    tokens = sampling.greedy(logits)
    assert tokens.dtype == jnp.int32
    assert tokens.tolist() == [1, 0, 2]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([127, 128, 129, 300, 1000]),
       levels=st.sampled_from([3, 50, 0]))
def test_greedy_matches_argmax_across_blocks(seed, vocab, levels):
    """The two-stage argmax (blocks of 128) agrees with `np.argmax` (first maximum) for
    vocabularies around and across block edges, with many ties (few distinct levels)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(4, vocab)).astype(np.float32)
    if levels:
        logits = np.round(logits * levels / 4) / levels
    assert np.asarray(sampling.greedy(jnp.asarray(logits))).tolist() == logits.argmax(-1).tolist()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([3, 128, 129, 1000]),
       filtered=st.booleans(), scale=st.sampled_from([0.01, 1.0, 30.0]))
@pytest.mark.slow
def test_categorical_draws_exactly_what_jax_random_categorical_draws(seed, vocab, filtered, scale):
    """The same token as `jax.random.categorical` for every row's key, with filtered (float32
    minimum) entries and peaked or flat distributions: only the argmax is computed otherwise."""
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(16, vocab)) * scale).astype(np.float32)
    if filtered:
        logits[rng.random(logits.shape) < 0.5] = jnp.finfo(jnp.float32).min
    keys = jax.random.split(jax.random.key(seed), 16)
    ours = jax.jit(sampling.categorical)(keys, jnp.asarray(logits))
    theirs = jax.jit(jax.vmap(jax.random.categorical))(keys, jnp.asarray(logits))
    assert ours.dtype == jnp.int32
    assert ours.tolist() == theirs.tolist()


# ------------------------------------------------------------------------ top-k / top-p

_mask_fn = jax.jit(sampling.top_k_top_p_mask)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([2, 5, 24]), top_k=st.integers(0, 30),
       top_p=st.floats(0.01, 1.0), scale=st.sampled_from([0.1, 1.0, 4.0]),
       quantize=st.booleans())
def test_top_k_top_p_mask_matches_reference(seed, vocab, top_k, top_p, scale, quantize):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(3, vocab)) * scale
    if quantize:  # many exact ties
        logits = np.round(logits)
    logits = logits.astype(np.float32)
    mask = np.asarray(_mask_fn(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
    must, may = _allowed_bounds(logits, top_k, top_p)
    assert np.all(mask[must]), "a token the definition allows was masked out"
    assert not np.any(mask & ~may), "a token outside the allowed set was kept"
    assert np.all(mask[np.arange(3), logits.argmax(-1)]), "the most likely token must survive"


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([3, 16]), top_k=st.integers(0, 6),
       top_p=st.floats(0.05, 1.0), temperature=st.sampled_from([0.3, 1.0, 2.0]))
def test_filtered_sampling_never_leaves_the_allowed_set(seed, vocab, top_k, top_p, temperature):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=vocab) * 3).astype(np.float32)
    tokens = _draw(logits, 256, seed, temperature, top_k, top_p, filtered=True)
    # Filtering acts on the temperature-scaled logits, so the reference does too.
    scaled = (logits / np.float32(temperature)).astype(np.float32)
    _, may = _allowed_bounds(scaled[None], top_k, top_p)
    assert set(tokens.tolist()) <= set(np.flatnonzero(may[0]).tolist())


def test_top_k_one_and_tiny_top_p_are_greedy():
    logits = np.asarray([0.3, 2.0, -1.0, 1.9, 0.0], np.float32)
    assert set(_draw(logits, 200, 0, top_k=1, filtered=True).tolist()) == {1}
    assert set(_draw(logits, 200, 1, top_p=1e-3, filtered=True).tolist()) == {1}


def test_top_p_is_taken_after_top_k_renormalises():
    """HF and vLLM: top-k, renormalise, then top-p. Over [.4, .3, .2, .1] with k = 2 the
    renormalised top two are [4/7, 3/7], so p = 0.5 keeps one token (the full softmax's
    mass before the second token, 0.4, would keep two)."""
    logits = jnp.log(jnp.asarray([[0.4, 0.3, 0.2, 0.1]]))
    mask = np.asarray(_mask_fn(logits, jnp.int32(2), jnp.float32(0.5)))
    assert mask.tolist() == [[True, False, False, False]]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), vocab=st.sampled_from([4, 24, 300]), top_k=st.integers(0, 40),
       top_p=st.floats(0.05, 1.0), scale=st.sampled_from([0.3, 1.0, 4.0]))
def test_top_k_top_p_mask_matches_transformers_warpers(seed, vocab, top_k, top_p, scale):
    """The allowed set is transformers' TopKLogitsWarper then TopPLogitsWarper (k = 0 and
    p = 1 are "off"); rows with a cumulative mass within float32 noise of p are skipped."""
    import torch
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    logits = (np.random.default_rng(seed).normal(size=(4, vocab)) * scale).astype(np.float32)
    scores = torch.from_numpy(logits.astype(np.float64))
    if top_k > 0:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    want = torch.isfinite(scores).numpy()
    mask = np.asarray(_mask_fn(jnp.asarray(logits), jnp.int32(top_k), jnp.float32(top_p)))
    must, may = _allowed_bounds(logits, top_k, top_p)
    clear = np.all(must == may, axis=-1)  # no token within _MASS_TOL of the top-p boundary
    assert np.array_equal(mask[clear], want[clear])


def test_top_p_one_keeps_negligible_tokens():
    # A token whose probability underflows the float32 cumulative sum is still allowed at p = 1.
    logits = jnp.asarray([[30.0, 0.0, -30.0]])
    mask = np.asarray(_mask_fn(logits, jnp.int32(3), jnp.float32(1.0)))
    assert mask.tolist() == [[True, True, True]]


# ------------------------------------------------------------------- distributions

_LOGITS = np.asarray([1.2, -0.3, 0.5, 2.0, -1.5, 0.0, 0.9, -0.7], np.float32)
_DRAWS = 20_000


def test_temperature_one_frequencies_match_softmax():
    tokens = _draw(_LOGITS, _DRAWS, seed=0)
    assert _chisquare_pvalue(tokens, _softmax(_LOGITS.astype(np.float64))) > 1e-3


def test_filtered_frequencies_match_renormalised_softmax():
    # top_k=4 keeps tokens 3, 0, 6, 2; their softmax renormalised among themselves.
    tokens = _draw(_LOGITS, _DRAWS, seed=1, top_k=4, filtered=True)
    kept = np.argsort(-_LOGITS)[:4]
    probs = np.zeros(len(_LOGITS))
    probs[kept] = _softmax(_LOGITS[kept].astype(np.float64))
    assert set(tokens.tolist()) <= set(kept.tolist())
    observed = np.bincount(tokens, minlength=len(_LOGITS))[kept]
    assert stats.chisquare(observed, probs[kept] * _DRAWS).pvalue > 1e-3


def test_temperature_scales_the_distribution():
    ref = _LOGITS.astype(np.float64)
    for seed, temperature in enumerate([0.5, 2.0]):
        tokens = _draw(_LOGITS, _DRAWS, seed=10 + seed, temperature=temperature)
        assert _chisquare_pvalue(tokens, _softmax(ref / temperature)) > 1e-3
    # Sharper below 1, flatter above: the argmax frequency moves accordingly.
    top = int(_LOGITS.argmax())
    freq = {t: np.mean(_draw(_LOGITS, _DRAWS, seed=20, temperature=t) == top)
            for t in (0.5, 1.0, 2.0)}
    assert freq[0.5] > freq[1.0] + 0.05 > freq[2.0] + 0.1
    # A temperature of 2 is not the temperature-1 distribution.
    tokens = _draw(_LOGITS, _DRAWS, seed=30, temperature=2.0)
    assert _chisquare_pvalue(tokens, _softmax(ref)) < 1e-6
    # Near-zero temperature is greedy; a huge one is uniform.
    assert set(_draw(_LOGITS, 500, seed=40, temperature=1e-4).tolist()) == {top}
    tokens = _draw(_LOGITS, _DRAWS, seed=50, temperature=1e4)
    assert _chisquare_pvalue(tokens, np.full(len(_LOGITS), 1 / len(_LOGITS))) > 1e-3


def test_rows_use_their_own_keys():
    keys = jax.random.split(jax.random.key(7), 64)
    logits = jnp.zeros((64, 50))
    both = _sample_fn(logits, keys, jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0),
                           filtered=False)
    half = _sample_fn(logits[:32], keys[:32], jnp.float32(1.0), jnp.int32(0),
                           jnp.float32(1.0), filtered=False)
    assert np.asarray(both)[:32].tolist() == np.asarray(half).tolist()
    assert len(set(np.asarray(both).tolist())) > 20
