"""Backbones (ResNet-18, FedAvgCNN), the OmniFM wrapper (Fig. 3) and its Table 8 variants."""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax import bank as bank_lib
from omnifm_jax.models import ClassificationHead, FedAvgCNN, OmniFM, ResNet18, TokenModel
from omnifm_jax.modules import spectral_alignment

RTOL, ATOL = 1e-4, 1e-5
B = 2


def rbg_key(seed):
    """A typed PRNG key; rbg compiles much faster than threefry on CPU (same key API)."""
    return jax.random.key(seed, impl="rbg")


def fake_variables(model, *args, rng, **kwargs):
    """Variables of ``model`` with fresh random parameters (shapes from ``eval_shape``).

    Kernels ~ N(0, 1/fan_in), norm scales 1, biases/other parameters small random values,
    BatchNorm running statistics at their initial values (mean 0, var 1).
    """
    shapes = jax.eval_shape(functools.partial(model.init, **kwargs), jax.random.PRNGKey(0), *args)

    def fill(path, leaf):
        coll, name = path[0].key, path[-1].key
        if coll == "batch_stats":
            return jnp.zeros(leaf.shape, leaf.dtype) if name == "mean" else jnp.ones(leaf.shape, leaf.dtype)
        if name == "kernel":
            fan_in = math.prod(leaf.shape[:-1]) if len(leaf.shape) in (2, 4) else leaf.shape[0]
            return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)
        if name == "scale":
            return jnp.ones(leaf.shape, leaf.dtype)
        return jnp.asarray(0.1 * rng.normal(size=leaf.shape), leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def images(rng, n=B, hw=28, c=3):
    return jnp.asarray(rng.uniform(0, 1, size=(n, hw, hw, c)), jnp.float32)


def all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree_util.tree_leaves(tree))


# ----------------------------------------------------------------------------- ResNet-18
def conv_out(n, kernel, stride, pad):
    return (n + 2 * pad - kernel) // stride + 1


def expected_tokens(stem, hw):
    if stem == "cifar":
        n = hw  # 3x3 stride 1 pad 1
    else:
        n = conv_out(conv_out(hw, 7, 2, 3), 3, 2, 1)  # 7x7/2 conv, 3x3/2 max-pool
    for _ in range(3):  # stages 2-4 halve with 3x3 stride-2 pad-1 convs
        n = conv_out(n, 3, 2, 1)
    return n * n


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("hw", [28, 32, 36, 64])
def test_resnet18_token_shapes(stem, norm, hw):
    model = ResNet18(stem=stem, norm=norm, width=8)
    x = jax.ShapeDtypeStruct((B, hw, hw, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    assert ("batch_stats" in variables) == (norm == "batch")
    out = jax.eval_shape(model.apply, variables, x)
    assert out.shape == (B, expected_tokens(stem, hw), 8 * 8)
    if stem == "cifar" and hw == 28:
        assert out.shape == (B, 16, 64)  # 16 tokens of 8*width (512 at width 64)
    if stem == "imagenet" and hw == 36:
        assert out.shape == (B, 4, 64)  # 36 -> 18 -> pool 9 -> 5 -> 3 -> 2 (a padded max-pool)
    # 2 convs per block, 2 blocks per stage, 4 stages, plus the stem and 3 shortcut convs
    convs = [k for k in jax.tree_util.tree_leaves_with_path(variables["params"])
             if "conv" in jax.tree_util.keystr(k[0]) and k[1].ndim == 4]
    assert len(convs) == 1 + 16 + 3


def test_resnet18_width_64_gives_512_wide_tokens():
    out = jax.eval_shape(lambda x: ResNet18(width=64).init_with_output(jax.random.PRNGKey(0), x)[0],
                         jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32))
    assert out.shape == (1, 16, 512)


def test_resnet18_rejects_unknown_stem_and_norm():
    x = jax.ShapeDtypeStruct((1, 28, 28, 3), jnp.float32)
    with pytest.raises(ValueError):
        jax.eval_shape(ResNet18(stem="vit", width=8).init, jax.random.PRNGKey(0), x)
    with pytest.raises(ValueError):
        jax.eval_shape(ResNet18(norm="layer", width=8).init, jax.random.PRNGKey(0), x)


RESNET_BN = ResNet18(stem="cifar", norm="batch", width=8)
_bn_train = jax.jit(lambda v, x: RESNET_BN.apply(v, x, train=True, mutable=["batch_stats"]))
_bn_eval = jax.jit(lambda v, x: RESNET_BN.apply(v, x, train=False))


def test_resnet18_batchnorm_updates_running_stats_in_train_mode():
    rng = np.random.default_rng(0)
    x = images(rng)
    variables = fake_variables(RESNET_BN, x, rng=rng)
    out, state = _bn_train(variables, x)
    assert out.shape == (B, 16, 64) and all_finite(out)
    stats1 = state["batch_stats"]
    assert jax.tree_util.tree_structure(stats1) == jax.tree_util.tree_structure(variables["batch_stats"])
    # First update from (mean 0, var 1) with momentum 0.9: m1 = 0.1 mu, v1 = 0.9 + 0.1 var_b.
    # Same batch again (train mode normalises with batch statistics, so mu, var_b repeat):
    # m2 = 0.9 m1 + 0.1 mu = 1.9 m1, v2 = 0.9 v1 + 0.1 var_b = 0.9 v1 + (v1 - 0.9).
    _, state2 = _bn_train({**variables, "batch_stats": stats1}, x)
    m1 = np.asarray(stats1["stem_norm"]["mean"])
    v1 = np.asarray(stats1["stem_norm"]["var"])
    assert np.abs(m1).max() > 1e-3 and not np.allclose(v1, 1.0)
    np.testing.assert_allclose(np.asarray(state2["batch_stats"]["stem_norm"]["mean"]), 1.9 * m1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state2["batch_stats"]["stem_norm"]["var"]), 0.9 * v1 + (v1 - 0.9),
                               rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(stats1), jax.tree_util.tree_leaves(variables["batch_stats"])):
        assert not np.allclose(np.asarray(a), np.asarray(b))
    # Eval mode uses the running statistics: a sample's output ignores the rest of the batch;
    # train mode does not.
    other = x.at[1].set(images(rng, 1)[0] * 3.0)
    e1, e2 = _bn_eval(variables, x), _bn_eval(variables, other)
    np.testing.assert_allclose(np.asarray(e1[0]), np.asarray(e2[0]), rtol=1e-5, atol=1e-6)
    t1, t2 = _bn_train(variables, x)[0], _bn_train(variables, other)[0]
    assert not np.allclose(np.asarray(t1[0]), np.asarray(t2[0]), atol=1e-4)


def test_resnet18_batchnorm_vmap_over_clients():
    rng = np.random.default_rng(1)
    clients = 2
    xs = jnp.stack([images(rng) for _ in range(clients)])
    per_client = [fake_variables(RESNET_BN, xs[0], rng=rng) for _ in range(clients)]
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *per_client)
    outs, states = jax.jit(jax.vmap(
        lambda v, x: RESNET_BN.apply(v, x, train=True, mutable=["batch_stats"])))(stacked, xs)
    assert outs.shape == (clients, B, 16, 64)
    for c in range(clients):
        out, state = _bn_train(per_client[c], xs[c])
        np.testing.assert_allclose(np.asarray(outs[c]), np.asarray(out), rtol=1e-4, atol=1e-4)
        for a, b in zip(jax.tree_util.tree_leaves(states), jax.tree_util.tree_leaves(state)):
            np.testing.assert_allclose(np.asarray(a[c]), np.asarray(b), rtol=1e-4, atol=1e-5)


def test_resnet18_imagenet_stem_group_norm_runs_per_sample():
    rng = np.random.default_rng(2)
    model = ResNet18(stem="imagenet", norm="group", width=8)
    x = images(rng, hw=32)
    variables = fake_variables(model, x, rng=rng)
    assert set(variables) == {"params"}
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True))
    out = apply(variables, x)
    assert out.shape == (B, expected_tokens("imagenet", 32), 64) and all_finite(out)
    other = apply(variables, x.at[1].set(0.0))
    np.testing.assert_allclose(np.asarray(out[0]), np.asarray(other[0]), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- FedAvgCNN
def test_fedavgcnn_matches_pfllib_shapes():
    x = jax.ShapeDtypeStruct((B, 28, 28, 3), jnp.float32)
    fc = FedAvgCNN(tokens="fc")
    p = jax.eval_shape(fc.init, jax.random.PRNGKey(0), x)["params"]
    shapes = {k: v["kernel"].shape for k, v in p.items()}
    # PFLlib FedAvgCNN(in_features=3, dim=1024): conv1 3->32 5x5, conv2 32->64 5x5, fc1 1024->512
    assert shapes == {"conv1": (5, 5, 3, 32), "conv2": (5, 5, 32, 64), "fc1": (1024, 512)}
    p_map = jax.eval_shape(FedAvgCNN(tokens="map").init, jax.random.PRNGKey(0), x)["params"]
    assert set(p_map) == {"conv1", "conv2"}
    with pytest.raises(ValueError):
        jax.eval_shape(FedAvgCNN(tokens="grid").init, jax.random.PRNGKey(0), x)


@pytest.mark.parametrize("tokens,shape", [("fc", (B, 1, 512)), ("map", (B, 16, 64))])
def test_fedavgcnn_token_shapes(tokens, shape):
    rng = np.random.default_rng(3)
    model = FedAvgCNN(tokens=tokens)
    x = images(rng)
    variables = fake_variables(model, x, rng=rng)
    out = jax.jit(model.apply)(variables, x)
    assert out.shape == shape and all_finite(out)
    if tokens == "fc":
        assert np.all(np.asarray(out) >= 0)  # ReLU(fc1)


# ----------------------------------------------------------------------------- OmniFM wrapper
CAP, DS, TOPK, NCLS, PSUF = 6, 8, 2, 3, 2
VARIANTS = {
    "full": {},
    "wo_gskr": {"use_gskr": False},
    "wo_eca": {"use_eca": False},
    "wo_psp": {"use_psp": False},
    "retrieved_only": {"local_spectral_in_eca": False},
    "wo_eca_retrieved_only": {"use_eca": False, "local_spectral_in_eca": False},
}


def omnifm(variant="full"):
    return OmniFM(backbone=FedAvgCNN(tokens="map"), head=ClassificationHead(NCLS), spectral_dim=DS,
                  attn_dim=16, num_heads=2, num_suffix=PSUF, top_k=TOPK, **VARIANTS[variant])


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
    """Compiled forward pass that also returns every submodule's output."""
    return jax.jit(lambda v, x, bank: model.apply(v, x, bank, capture_intermediates=True,
                                                  mutable=["intermediates"]))


def random_bank(rng, n_valid=4):
    emb = rng.normal(size=(CAP, DS))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    valid = np.arange(CAP) < n_valid
    rng.shuffle(valid)
    return bank_lib.Bank(jnp.asarray(emb * valid[:, None], jnp.float32), jnp.asarray(valid),
                         jnp.zeros(CAP, jnp.float32), jnp.zeros(CAP, jnp.int32))


def ref_topk(bank, s, k):
    emb = np.asarray(bank.embeddings, np.float64)
    cos = np.asarray(s, np.float64) @ (emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-30)).T
    cos[:, ~np.asarray(bank.valid)] = -np.inf
    idx = np.argsort(-cos, axis=1, kind="stable")[:, :k]
    return np.where(np.isfinite(np.take_along_axis(cos, idx, 1)), idx, -1)


def ref_eca(p, r, protos, valid, num_heads):
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
    e = p["w_q"]["kernel"].shape[-1]
    out = []
    for b in range(r.shape[0]):
        sel = np.asarray(valid[b], bool)
        heads = []
        for h in range(num_heads):
            q = r[b] @ p["w_q"]["kernel"][:, h]
            if sel.any():
                k = protos[b][sel] @ p["w_k"]["kernel"][:, h]
                v = protos[b][sel] @ p["w_v"]["kernel"][:, h]
                logits = q @ k.T / np.sqrt(e)
                w = np.exp(logits - logits.max(-1, keepdims=True))
                heads.append((w / w.sum(-1, keepdims=True)) @ v)
            else:
                heads.append(np.zeros((r.shape[1], e)))
        out.append(np.concatenate(heads, -1))
    return np.stack(out) @ p["w_o"]["kernel"] + p["w_o"]["bias"]


def _setup(variant, seed, bank=None):
    rng = np.random.default_rng(seed)
    model = omnifm(variant)
    x = images(rng)
    bank = random_bank(rng) if bank is None else bank
    variables = fake_variables(model, x, bank, rng=rng)
    (y, aux), state = jitted_apply(model)(variables, x, bank)
    inter = state["intermediates"]
    return model, variables, x, bank, y, aux, inter


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_omnifm_variants_build_run_and_wire_correctly(variant):
    model, variables, x, bank, y, aux, inter = _setup(variant, seed=list(VARIANTS).index(variant))
    p = variables["params"]
    assert ("eca" in p) == model.use_eca and ("film" in p) == (not model.use_eca)
    assert ("prompt" in p) == model.use_psp and ("proj" in p) == (not model.use_psp)
    assert y.shape == (B, NCLS) and all_finite(y)
    s = np.asarray(aux.s, np.float64)
    assert s.shape == (B, DS)
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1.0, rtol=1e-5)

    if model.use_gskr:
        assert aux.prototypes.shape == (B, TOPK, DS) and aux.valid.shape == (B, TOPK)
        np.testing.assert_array_equal(np.asarray(aux.indices), ref_topk(bank, s, TOPK))
        idx = np.asarray(aux.indices)
        np.testing.assert_array_equal(np.asarray(aux.valid), idx >= 0)
        np.testing.assert_allclose(np.asarray(aux.prototypes), np.asarray(bank.embeddings)[idx], rtol=1e-6)
    else:  # one prototype: the batch's mean spectral token
        assert aux.prototypes.shape == (B, 1, DS)
        np.testing.assert_allclose(np.asarray(aux.prototypes)[:, 0], np.tile(s.mean(0), (B, 1)), rtol=1e-5, atol=1e-6)
        assert np.all(np.asarray(aux.indices) == -1) and np.all(np.asarray(aux.valid))

    r = np.asarray(inter["backbone"]["__call__"][0], np.float64)
    assert r.shape == (B, 16, 64)
    protos = np.asarray(aux.prototypes, np.float64)
    valid = np.asarray(aux.valid)
    if model.local_spectral_in_eca:  # Fig. 3: the local s is attended to next to S_g
        protos = np.concatenate([s[:, None, :], protos], axis=1)
        valid = np.concatenate([np.ones((B, 1), bool), valid], axis=1)
    if model.use_eca:  # Eq. 4: queries from r, keys/values from [s || S_g]
        z = np.asarray(inter["eca"]["__call__"][0])
        np.testing.assert_allclose(z, ref_eca(p["eca"], r, protos, valid, 2), rtol=1e-3, atol=1e-4)
    else:  # FiLM conditioned on the mean valid prototype
        z = np.asarray(inter["film"]["__call__"][0])
        cond = (protos * valid[..., None]).sum(1) / np.maximum(valid.sum(1, keepdims=True), 1)
        gb = cond @ np.asarray(p["film"]["gamma_beta"]["kernel"], np.float64) + np.asarray(
            p["film"]["gamma_beta"]["bias"], np.float64)
        np.testing.assert_allclose(z, r * (1 + gb[:, None, :64]) + gb[:, None, 64:], rtol=1e-3, atol=1e-4)
    if model.use_psp:  # r' = [Z || r || c]
        tokens = np.asarray(inter["prompt"]["__call__"][0], np.float64)
        assert tokens.shape == (B, 16 + 16 + PSUF, 64)
        np.testing.assert_allclose(tokens[:, :16], z, rtol=1e-6)
        np.testing.assert_allclose(tokens[:, 16:32], r, rtol=1e-6)
        np.testing.assert_allclose(tokens[:, 32:], np.broadcast_to(np.asarray(p["prompt"]["suffix"]), (B, PSUF, 64)))
    else:
        tokens = np.asarray(inter["proj"]["__call__"][0], np.float64)
        w = np.asarray(p["proj"]["proj"]["kernel"], np.float64)
        np.testing.assert_allclose(tokens, z @ w[:64] + r @ w[64:] + np.asarray(p["proj"]["proj"]["bias"]),
                                   rtol=1e-3, atol=1e-4)
    # ClassificationHead: each segment of r' (prefix Z, body r, suffix c) mean-pooled on
    # its own, concatenated, then the linear layer
    fc = p["head"]["fc"]
    if model.use_psp:
        pooled = np.concatenate([tokens[:, :16].mean(1), tokens[:, 16:32].mean(1), tokens[:, 32:].mean(1)], -1)
    else:
        pooled = tokens.mean(1)
    want = pooled @ np.asarray(fc["kernel"], np.float64) + np.asarray(fc["bias"], np.float64)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-3, atol=1e-4)


def test_omnifm_retrieval_indices_valid_only_when_bank_has_entries():
    rng = np.random.default_rng(10)
    empty = bank_lib.init(CAP, DS)
    model, variables, x, _, y, aux, inter = _setup("retrieved_only", 10, bank=empty)
    assert np.all(np.asarray(aux.indices) == -1) and not np.any(np.asarray(aux.valid))
    assert np.all(np.asarray(aux.prototypes) == 0) and all_finite(y)
    # no prototype: Z is only the output projection's bias
    z = np.asarray(inter["eca"]["__call__"][0])
    np.testing.assert_allclose(z, np.broadcast_to(np.asarray(variables["params"]["eca"]["w_o"]["bias"]), z.shape),
                               rtol=1e-6)
    # one entry (slot 3): first retrieval is it, second is missing
    one = bank_lib.insert(bank_lib.init(CAP, DS), jnp.asarray(rng.normal(size=(1, DS)), jnp.float32), rho=1.0)
    one = one._replace(embeddings=jnp.roll(one.embeddings, 3, 0), valid=jnp.roll(one.valid, 3))
    (y1, aux1), state1 = jitted_apply(model)(variables, x, one)
    np.testing.assert_array_equal(np.asarray(aux1.indices), np.tile([3, -1], (B, 1)))
    np.testing.assert_array_equal(np.asarray(aux1.valid), np.tile([True, False], (B, 1)))
    # the missing (zero) prototype is masked out of the attention
    r = np.asarray(state1["intermediates"]["backbone"]["__call__"][0], np.float64)
    z1 = np.asarray(state1["intermediates"]["eca"]["__call__"][0])
    np.testing.assert_allclose(z1, ref_eca(variables["params"]["eca"], r, np.asarray(aux1.prototypes, np.float64),
                                           np.asarray(aux1.valid), 2), rtol=1e-3, atol=1e-4)
    assert not np.allclose(np.asarray(y1), np.asarray(y))


def test_omnifm_vmap_over_clients_of_stacked_params():
    rng = np.random.default_rng(11)
    model = omnifm("full")
    clients = 2
    xs = jnp.stack([images(rng) for _ in range(clients)])
    bank = random_bank(rng)
    keys = jax.random.split(rbg_key(0), clients)
    variables = jax.jit(jax.vmap(model.init, in_axes=(0, 0, None)))(keys, xs, bank)
    assert variables["params"]["prompt"]["suffix"].shape == (clients, PSUF, 64)
    assert not np.allclose(np.asarray(variables["params"]["eca"]["w_q"]["kernel"][0]),
                           np.asarray(variables["params"]["eca"]["w_q"]["kernel"][1]))
    ys, aux = jax.jit(jax.vmap(lambda v, x: model.apply(v, x, bank)))(variables, xs)
    assert ys.shape == (clients, B, NCLS) and aux.s.shape == (clients, B, DS)
    assert aux.indices.shape == (clients, B, TOPK)
    for c in range(clients):
        one = jax.tree_util.tree_map(lambda a: a[c], variables)
        (y, a), _ = jitted_apply(model)(one, xs[c], bank)
        np.testing.assert_allclose(np.asarray(ys[c]), np.asarray(y), rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(aux.indices[c]), np.asarray(a.indices))


def test_omnifm_gradients_finite_and_bank_receives_none():
    rng = np.random.default_rng(12)
    model = omnifm("full")
    x = images(rng)
    bank = random_bank(rng)
    variables = fake_variables(model, x, bank, rng=rng)
    labels = jnp.asarray([0, 2])

    def loss(params, emb, lam):
        y, aux = model.apply({"params": params}, x, bank._replace(embeddings=emb))
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(y), labels[:, None], 1))
        align = jnp.mean(spectral_alignment(aux.s, aux.prototypes, aux.valid))  # Eq. 5
        return ce + lam * align

    grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
    g_params, g_bank = grad(variables["params"], bank.embeddings, 0.5)
    assert all_finite(g_params)
    assert np.all(np.asarray(g_bank) == 0)  # retrieved prototypes are constants
    tok = jax.tree_util.tree_leaves(g_params["tokenizer"])
    assert any(np.any(np.asarray(t) != 0) for t in tok)  # SPAlign trains the tokenizer
    for name in ("backbone", "eca", "prompt", "head"):
        assert any(np.any(np.asarray(t) != 0) for t in jax.tree_util.tree_leaves(g_params[name])), name
    # Without the alignment term the task loss still trains the tokenizer: ECA attends to s.
    g0, g_bank0 = grad(variables["params"], bank.embeddings, 0.0)
    assert any(np.any(np.asarray(t) != 0) for t in jax.tree_util.tree_leaves(g0["tokenizer"]))
    assert np.all(np.asarray(g_bank0) == 0)
    # With ECA on the retrieved prototypes only (the old wiring), s reaches the loss only
    # through the frozen retrieval: no gradient at all without SPAlign.
    old = omnifm("retrieved_only")

    def old_loss(params):
        y, _ = old.apply({"params": params}, x, bank)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(y), labels[:, None], 1))

    g_old = jax.jit(jax.grad(old_loss))(variables["params"])
    assert all(np.all(np.asarray(t) == 0) for t in jax.tree_util.tree_leaves(g_old["tokenizer"]))


def test_token_model_returns_output_and_none():
    rng = np.random.default_rng(13)
    model = TokenModel(backbone=FedAvgCNN(tokens="fc"), head=ClassificationHead(NCLS))
    x = images(rng)
    variables = fake_variables(model, x, rng=rng)
    y, aux = jax.jit(model.apply)(variables, x)
    assert y.shape == (B, NCLS) and aux is None and all_finite(y)


# ----------------------------------------------------------------------------- canonical convolution

CONV_CASES = [((2, 12, 11, 3), (5, 5, 3, 4), (1, 1), "VALID"), ((2, 9, 9, 2), (3, 3, 2, 5), (2, 2), "SAME"),
              ((1, 10, 10, 3), (3, 3, 3, 2), (2, 2), ((1, 1), (1, 1))), ((2, 8, 8, 4), (1, 1, 4, 3), (2, 2), "VALID"),
              ((1, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))), ((2, 10, 9, 2), (4, 4, 2, 3), (3, 3),
                                                                       ((2, 1), (0, 2)))]


@pytest.mark.parametrize("xs,ws,strides,padding", CONV_CASES)
def test_canonical_conv_equals_lax_forward_and_gradients(xs, ws, strides, padding):
    """The CPU convolution with explicitly canonical gradients gives lax's values and
    gradients (strides, SAME/VALID/explicit and asymmetric padding) on fresh random inputs."""
    from jax import lax

    from omnifm_jax.models.common import conv_general_dilated

    rng = np.random.default_rng(sum(xs) + sum(ws))
    x = jnp.asarray(rng.normal(size=xs), jnp.float32)
    w = jnp.asarray(rng.normal(size=ws), jnp.float32)
    dn = lax.conv_dimension_numbers(xs, ws, ("NHWC", "HWIO", "NHWC"))
    ref = lambda x, w: lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    new = lambda x, w: conv_general_dilated(x, w, strides, padding, dimension_numbers=dn)
    y_ref, vjp_ref = jax.vjp(ref, x, w)
    y_new, vjp_new = jax.vjp(new, x, w)
    np.testing.assert_allclose(np.asarray(y_new), np.asarray(y_ref), rtol=1e-5, atol=1e-5)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    for a, b in zip(vjp_new(g), vjp_ref(g)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4)


def test_training_loop_convolutions_are_canonical_on_cpu():
    """Inside a rolled loop of FedAvgCNN training steps, every convolution XLA:CPU compiles is
    in the canonical NHWC x HWIO -> NHWC form its fast kernel takes (with plain lax
    gradients the weight gradient is f01b_i01o->01bf and runs ~10x slower there)."""
    import re

    import optax

    if jax.default_backend() != "cpu":
        pytest.skip("a CPU property")
    model = TokenModel(backbone=FedAvgCNN(), head=ClassificationHead(3))
    x = jnp.zeros((4, 28, 28, 3))
    params = model.init(jax.random.key(0), x, None)["params"]

    def loss(p, xb):
        return jnp.mean(model.apply({"params": p}, xb, None, train=True)[0])

    def loop(p):
        return jax.lax.fori_loop(0, 3, lambda i, p: optax.apply_updates(
            p, jax.tree_util.tree_map(lambda g: -0.1 * g, jax.grad(loss)(p, x + i))), p)

    hlo = jax.jit(loop).lower(params).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=([\w>\-]+)", hlo)
    assert len(labels) >= 5  # 2 forward, 2 weight gradients, conv2's input gradient
    assert set(labels) == {"b01f_01io->b01f"}, labels


def test_attention_head_lets_prompts_depend_on_the_input():
    """head_pool=attention: the suffix prompt tokens' outputs change with the image (mean
    pooling gives them a constant per client); the mixer starts as the identity."""
    from omnifm_jax.models.common import TokenLayout
    from omnifm_jax.models.heads import TokenMixer

    rng = np.random.default_rng(3)
    tokens = jnp.asarray(rng.normal(size=(2, 7, 8)), jnp.float32)
    tokens = tokens.at[:, 5:].set(tokens[0, 5:])  # the same suffix c for both inputs
    mixer = TokenMixer()
    v = mixer.init(jax.random.key(0), tokens)
    np.testing.assert_allclose(np.asarray(mixer.apply(v, tokens)), np.asarray(tokens), rtol=1e-6)  # identity
    v = jax.tree_util.tree_map(lambda a: a + 0.1 * jnp.asarray(rng.normal(size=a.shape), a.dtype), v)
    out = np.asarray(mixer.apply(v, tokens))
    assert np.max(np.abs(out[0, 5:] - out[1, 5:])) > 1e-3  # suffix outputs depend on the input
    head = ClassificationHead(3, pool="attention")
    layout = TokenLayout(0, 5, 2, (4, 4))
    hv = head.init(jax.random.key(1), tokens, layout=layout)
    assert "mixer" in hv["params"]
    assert head.apply(hv, tokens, layout=layout).shape == (2, 3)
    with pytest.raises(ValueError, match="unknown head pool"):
        ClassificationHead(3, pool="max").init(jax.random.key(1), tokens, layout=layout)


def test_omnifm_wo_gskr_batch_mean_ignores_padded_samples():
    """w/o GSKR, S_g is the batch mean of s: with a mask, padded samples (here: other images,
    zeros and copies) change neither the real samples' outputs nor their spectral prototypes,
    in training mode (the mask a partial batch carries) and in evaluation."""
    rng = np.random.default_rng(21)
    model = omnifm("wo_gskr")
    n = 8
    x = images(rng, n=n)
    bank = random_bank(rng)
    variables = fake_variables(model, x, bank, rng=rng)
    real = 3
    pads = {"random": images(np.random.default_rng(22), n=n)[: n - real], "zeros": np.zeros_like(x[: n - real]),
            "copies": np.repeat(x[:1], n - real, axis=0)}
    apply = jax.jit(model.apply, static_argnames="train")  # one program per batch size and mode
    (alone, aux_alone) = apply(variables, x[:real], bank, train=True, mask=jnp.ones((real,), bool))
    for name, pad in pads.items():
        xp = jnp.concatenate([x[:real], jnp.asarray(pad, x.dtype)])
        mask = jnp.arange(n) < real
        for train in (True, False):
            out, aux = apply(variables, xp, bank, train=train, mask=mask)
            np.testing.assert_allclose(np.asarray(out)[:real], np.asarray(alone), rtol=1e-5, atol=1e-5,
                                       err_msg=f"{name} pads, train={train}")
            np.testing.assert_allclose(np.asarray(aux.prototypes)[:real], np.asarray(aux_alone.prototypes),
                                       rtol=1e-5, atol=1e-6)
    # and without the mask the pads would have changed them (the test can fail)
    out, _ = apply(variables, jnp.concatenate([x[:real], jnp.asarray(pads["random"], x.dtype)]), bank,
                   train=True)
    assert not np.allclose(np.asarray(out)[:real], np.asarray(alone), rtol=1e-5, atol=1e-5)
