"""ECA (Eq. 4), PSP, FiLM, TokenProjection and SPAlign (Eq. 5) against float64 NumPy references."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax.modules import EmbeddingCrossAttention, FiLM, PrefixSuffixPrompt, TokenProjection, spectral_alignment

SEEDS = (0, 1, 2)
RTOL, ATOL = 1e-4, 1e-5
B, L, D, KP, DS = 3, 5, 8, 4, 6  # batch, tokens, token width, prototypes, prototype width


def random_params(module, *arg_shapes, rng, scale=0.5):
    """Parameters of ``module`` filled with fresh normal draws (shapes from ``eval_shape``)."""
    args = [jax.ShapeDtypeStruct(s, jnp.bool_ if dt == "bool" else jnp.float32) for s, dt in arg_shapes]
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), *args)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(scale * rng.normal(size=a.shape), a.dtype), shapes)


@functools.lru_cache(maxsize=None)
def jitted_apply(module):
    return jax.jit(module.apply)


def f64(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


# ----------------------------------------------------------------------------- ECA (Eq. 4)
def softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def ref_eca(params, r, protos, valid, num_heads, logit_scale=1.0):
    """Z = Softmax(c Q K^T / sqrt(d_h)) V per head (c = ``logit_scale``), over the valid prototypes
    only; heads concatenated."""
    p = f64(params["params"])
    r, protos = np.asarray(r, np.float64), np.asarray(protos, np.float64)
    w_q, w_k, w_v = p["w_q"]["kernel"], p["w_k"]["kernel"], p["w_v"]["kernel"]  # (d_in, heads, d_h)
    assert w_q.shape[1] == num_heads
    e = w_q.shape[2]
    out = []
    for b in range(r.shape[0]):
        sel = np.asarray(valid[b], bool)
        heads = []
        for h in range(num_heads):
            q = r[b] @ w_q[:, h, :]
            k = protos[b][sel] @ w_k[:, h, :]
            v = protos[b][sel] @ w_v[:, h, :]
            if sel.any():
                heads.append(softmax(logit_scale * (q @ k.T) / np.sqrt(e)) @ v)
            else:
                heads.append(np.zeros((r.shape[1], e)))
        out.append(np.concatenate(heads, axis=-1))
    z = np.stack(out)
    if "w_o" in p:
        z = z @ p["w_o"]["kernel"] + p["w_o"]["bias"]
    return z


ECA_CONFIGS = {
    "single_head": EmbeddingCrossAttention(head_dim=D, num_heads=1),              # d_h == d: no w_o
    "multi_head": EmbeddingCrossAttention(head_dim=D, num_heads=2),
    "single_head_proj": EmbeddingCrossAttention(head_dim=16, num_heads=1),        # d_h != d: w_o
    "multi_head_proj": EmbeddingCrossAttention(head_dim=12, num_heads=3),
    "logit_scale": EmbeddingCrossAttention(head_dim=12, num_heads=2, logit_scale=7.5),  # sharpened
}


def _eca_inputs(rng):
    r = rng.normal(size=(B, L, D)).astype(np.float32)
    protos = rng.normal(size=(B, KP, DS)).astype(np.float32)
    valid = rng.random((B, KP)) < 0.6
    valid[0] = True
    valid[1, :] = False
    valid[1, 2] = True  # a single valid prototype
    return r, protos, valid


def _eca(name, rng):
    module = ECA_CONFIGS[name]
    params = random_params(module, ((B, L, D), "f"), ((B, KP, DS), "f"), ((B, KP), "bool"), rng=rng)
    return module, params


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", list(ECA_CONFIGS))
def test_eca_matches_numpy_reference(seed, name):
    rng = np.random.default_rng(seed)
    module, params = _eca(name, rng)
    assert ("w_o" in params["params"]) == (module.head_dim != D)
    r, protos, valid = _eca_inputs(rng)
    z = np.asarray(jitted_apply(module)(params, r, protos, valid))
    assert z.shape == (B, L, D)
    np.testing.assert_allclose(z, ref_eca(params, r, protos, valid, module.num_heads, module.logit_scale),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name", list(ECA_CONFIGS))
def test_eca_masked_prototype_has_no_influence(name):
    rng = np.random.default_rng(3)
    module, params = _eca(name, rng)
    r, protos, valid = _eca_inputs(rng)
    valid[:, 0] = False
    valid[:, 1] = True
    apply = jitted_apply(module)
    z = np.asarray(apply(params, r, protos, valid))
    changed = protos.copy()
    changed[:, 0] = 1e3 * rng.normal(size=(B, DS))
    np.testing.assert_array_equal(np.asarray(apply(params, r, changed, valid)), z)
    # ... while changing a valid one does change Z.
    changed = protos.copy()
    changed[:, 1] += 1.0
    assert not np.allclose(np.asarray(apply(params, r, changed, valid)), z)


def test_eca_all_masked_gives_zero():
    rng = np.random.default_rng(4)
    r, protos, _ = _eca_inputs(rng)
    none = np.zeros((B, KP), bool)
    for name in ("single_head", "multi_head"):  # d_h == d: Z itself, no output projection
        module, params = _eca(name, rng)
        assert np.all(np.asarray(jitted_apply(module)(params, r, protos, none)) == 0)
    module, params = _eca("multi_head_proj", rng)  # with w_o: Z = 0 @ W_O + b_O
    z = np.asarray(jitted_apply(module)(params, r, protos, none))
    np.testing.assert_allclose(z, np.broadcast_to(np.asarray(params["params"]["w_o"]["bias"]), z.shape), rtol=1e-6)


def test_eca_valid_none_means_all_valid_and_unbatched_inputs():
    rng = np.random.default_rng(5)
    module, params = _eca("multi_head", rng)
    r, protos, _ = _eca_inputs(rng)
    all_valid = np.ones((B, KP), bool)
    z_none = np.asarray(jax.jit(lambda p, a, b: module.apply(p, a, b))(params, r, protos))
    np.testing.assert_allclose(z_none, np.asarray(jitted_apply(module)(params, r, protos, all_valid)), rtol=1e-6)
    np.testing.assert_allclose(z_none, ref_eca(params, r, protos, all_valid, 2), rtol=RTOL, atol=ATOL)
    z0 = np.asarray(module.apply(params, r[0], protos[0], all_valid[0]))
    np.testing.assert_allclose(z0, z_none[0], rtol=RTOL, atol=ATOL)


def test_eca_rejects_indivisible_heads():
    module = EmbeddingCrossAttention(head_dim=10, num_heads=3)
    with pytest.raises(ValueError):
        module.init(jax.random.PRNGKey(0), jnp.ones((L, D)), jnp.ones((KP, DS)))


# ----------------------------------------------------------------------------- PSP
def test_psp_is_prefix_tokens_suffix_concatenation():
    rng = np.random.default_rng(6)
    module = PrefixSuffixPrompt(num_suffix=3)
    z = rng.normal(size=(B, 2, D)).astype(np.float32)
    r = rng.normal(size=(B, L, D)).astype(np.float32)
    params = random_params(module, ((B, 2, D), "f"), ((B, L, D), "f"), rng=rng)
    c = np.asarray(params["params"]["suffix"])
    assert c.shape == (3, D)
    out = np.asarray(jitted_apply(module)(params, z, r))
    assert out.shape == (B, 2 + L + 3, D)
    np.testing.assert_array_equal(out[:, :2], z)
    np.testing.assert_array_equal(out[:, 2:2 + L], r)
    for b in range(B):
        np.testing.assert_array_equal(out[b, 2 + L:], c)
    with pytest.raises(ValueError):
        module.apply(params, z[..., :4], r)


# ----------------------------------------------------------------------------- FiLM / TokenProjection
def test_film_is_identity_at_init_and_matches_reference():
    rng = np.random.default_rng(7)
    module = FiLM()
    r = rng.normal(size=(B, L, D)).astype(np.float32)
    cond = rng.normal(size=(B, DS)).astype(np.float32)
    params = jax.jit(module.init)(jax.random.key(0, impl="rbg"), r, cond)
    apply = jitted_apply(module)
    np.testing.assert_array_equal(np.asarray(apply(params, r, cond)), r)
    params = random_params(module, ((B, L, D), "f"), ((B, DS), "f"), rng=rng)
    p = f64(params["params"])["gamma_beta"]
    gb = cond.astype(np.float64) @ p["kernel"] + p["bias"]  # (B, 2d)
    gamma, beta = gb[:, None, :D], gb[:, None, D:]
    np.testing.assert_allclose(np.asarray(apply(params, r, cond)), r * (1 + gamma) + beta, rtol=RTOL, atol=ATOL)


def test_token_projection_matches_reference():
    rng = np.random.default_rng(8)
    module = TokenProjection()
    z = rng.normal(size=(B, L, D)).astype(np.float32)
    r = rng.normal(size=(B, L, D)).astype(np.float32)
    params = random_params(module, ((B, L, D), "f"), ((B, L, D), "f"), rng=rng)
    p = f64(params["params"])["proj"]
    assert p["kernel"].shape == (2 * D, D)
    want = z.astype(np.float64) @ p["kernel"][:D] + r.astype(np.float64) @ p["kernel"][D:] + p["bias"]
    np.testing.assert_allclose(np.asarray(jitted_apply(module)(params, z, r)), want, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- SPAlign (Eq. 5)
def ref_alignment(s, protos, valid):
    s, protos = np.asarray(s, np.float64), np.asarray(protos, np.float64)
    out, centroids = [], []
    for b in range(len(s)):
        sel = np.asarray(valid[b], bool)
        if not sel.any():
            out.append(0.0)
            centroids.append(np.full(s.shape[-1], np.nan))
            continue
        c = protos[b][sel].sum(0) / sel.sum()
        out.append(float(np.sum((s[b] - c) ** 2)))
        centroids.append(c)
    return np.array(out), np.array(centroids)


_align = jax.jit(spectral_alignment)
_align_grads = jax.jit(jax.grad(lambda s, p, v: jnp.sum(spectral_alignment(s, p, v)), argnums=(0, 1)))


def _align_inputs(rng):
    s = rng.normal(size=(4, DS)).astype(np.float32)
    protos = rng.normal(size=(4, KP, DS)).astype(np.float32)
    valid = rng.random((4, KP)) < 0.5
    valid[0] = False
    valid[1] = True
    valid[2, :] = False
    valid[2, 3] = True
    return s, protos, valid


@pytest.mark.parametrize("seed", SEEDS)
def test_spectral_alignment_matches_reference(seed):
    rng = np.random.default_rng(seed)
    s, protos, valid = _align_inputs(rng)
    loss = np.asarray(_align(s, protos, valid))
    want, centroids = ref_alignment(s, protos, valid)
    assert loss.shape == (4,)
    np.testing.assert_allclose(loss, want, rtol=RTOL, atol=ATOL)
    assert loss[0] == 0.0  # no valid prototype
    # invalid prototypes are excluded: changing them leaves the loss unchanged
    changed = protos.copy()
    changed[~valid] = 100.0 * rng.normal(size=(int((~valid).sum()), DS))
    np.testing.assert_array_equal(np.asarray(_align(s, changed, valid)), loss)
    # stop-gradient on the prototypes; d/ds = 2 (s - centroid)
    g_s, g_p = (np.asarray(g) for g in _align_grads(s, protos, valid))
    assert np.all(g_p == 0)
    want_gs = np.where(valid.any(1)[:, None], 2.0 * (s - np.nan_to_num(centroids)), 0.0)
    np.testing.assert_allclose(g_s, want_gs, rtol=RTOL, atol=ATOL)
    # valid=None: the plain mean over all k prototypes (Eq. 5's 1/k sum)
    all_loss = np.asarray(spectral_alignment(jnp.asarray(s), jnp.asarray(protos)))
    np.testing.assert_allclose(all_loss, np.sum((s - protos.astype(np.float64).mean(1)) ** 2, -1),
                               rtol=RTOL, atol=ATOL)
