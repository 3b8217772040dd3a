"""OmniFM's diagnostics and its switches, each on a constructed case whose answer is known,
and the numerics of the new pieces against NumPy float64."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import FlatBackbone, build_algorithm, make_clients

from omnifm_jax import bank as bank_lib
from omnifm_jax import diagnostics as D
from omnifm_jax import federated
from omnifm_jax.algorithms.omnifm import uniformity
from omnifm_jax.data.federation import Federation, validation_split
from omnifm_jax.spectral import SpectralTokenizer

# ------------------------------------------------------------------------- the statistics

def test_entropy_ratio_uniform_is_one_and_one_hot_is_zero():
    rng = np.random.default_rng(0)
    k = int(rng.integers(2, 6))
    uniform = np.full((5, 2, 3, k), 1.0 / k)
    assert D.attention_entropy_ratio(uniform, np.ones(k, bool)) == pytest.approx(1.0, abs=1e-12)
    one_hot = np.zeros((5, 2, 3, k))
    one_hot[..., 0] = 1.0
    assert D.attention_entropy_ratio(one_hot, np.ones(k, bool)) == pytest.approx(0.0, abs=1e-12)
    # one invalid key: uniform over the valid ones is still 1
    valid = np.ones(k + 1, bool)
    valid[-1] = False
    w = np.concatenate([np.full((4, k), 1.0 / k), np.zeros((4, 1))], -1)
    assert D.attention_entropy_ratio(w, valid) == pytest.approx(1.0, abs=1e-12)
    # a random case against a direct float64 transcription
    p = rng.dirichlet(np.ones(k), size=7)
    ref = np.mean(-np.sum(p * np.log(p), -1) / np.log(k))
    assert D.attention_entropy_ratio(p, np.ones(k, bool)) == pytest.approx(ref, rel=1e-12)


def test_bank_and_token_spreads():
    rng = np.random.default_rng(1)
    d = int(rng.integers(4, 9))
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    assert D.pairwise_cosine(q[:3]) == pytest.approx(0.0, abs=1e-12)        # orthogonal prototypes
    v = rng.normal(size=d)
    assert D.pairwise_cosine(np.stack([v, 2 * v, 3 * v])) == pytest.approx(1.0)  # near-copies
    e = rng.normal(size=(6, d))
    u = e / np.linalg.norm(e, axis=1, keepdims=True)
    c = u @ u.T
    assert D.pairwise_cosine(e) == pytest.approx(c[~np.eye(6, dtype=bool)].mean(), rel=1e-12)
    assert D.mean_cosine_to_mean(np.tile(v, (5, 1))) == pytest.approx(1.0)
    s = rng.normal(size=(9, d))
    m = s.mean(0)
    ref = np.mean(s @ m / (np.linalg.norm(s, axis=1) * np.linalg.norm(m)))
    assert D.mean_cosine_to_mean(s) == pytest.approx(ref, rel=1e-12)
    # two well-separated modality clusters: the nearest neighbour always shares the modality
    s = np.concatenate([q[0] + 0.01 * rng.normal(size=(10, d)), q[1] + 0.01 * rng.normal(size=(10, d))])
    mod = np.repeat([0, 1], 10)
    assert D.modality_purity(s, mod) == 1.0
    assert np.isnan(D.modality_purity(s, np.zeros(20, int)))


def test_random_bank_keeps_the_valid_slots_and_their_norms():
    bank = bank_lib.insert(bank_lib.init(6, 4), jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32),
                           rho=0.7)
    rb = D.random_bank(bank, jax.random.key(0))
    assert np.array_equal(np.asarray(rb.valid), np.asarray(bank.valid))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(rb.embeddings), axis=1),
                               np.linalg.norm(np.asarray(bank.embeddings), axis=1), rtol=1e-5)
    assert not np.allclose(np.asarray(rb.embeddings)[:3], np.asarray(bank.embeddings)[:3])


def test_uniformity_matches_numpy():
    rng = np.random.default_rng(3)
    s = rng.normal(size=(7, 5))
    s /= np.linalg.norm(s, axis=1, keepdims=True)
    mask = np.array([1, 1, 1, 0, 1, 1, 0], bool)
    r = s[mask]
    d2 = np.sum((r[:, None] - r[None]) ** 2, -1)
    off = ~np.eye(len(r), dtype=bool)
    ref = np.log(np.mean(np.exp(-2.0 * d2[off])))
    assert float(uniformity(jnp.asarray(s, jnp.float32), jnp.asarray(mask))) == pytest.approx(ref, rel=1e-5)
    same = np.tile(s[:1], (4, 1))
    assert float(uniformity(jnp.asarray(same, jnp.float32), jnp.ones(4, bool))) == pytest.approx(0.0, abs=1e-6)


def test_spectrum_batch_norm_standardises_every_bin_over_the_real_samples():
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.uniform(-1, 1, (6, 8, 8, 2)), jnp.float32)
    mask = jnp.asarray([1, 1, 1, 1, 0, 0], bool)
    tok = SpectralTokenizer(dim=4, ratio=0.5, norm="batch")
    variables = tok.init(jax.random.key(0), x)
    spec = np.log1p(np.abs(np.fft.fftshift(np.fft.fft2(np.asarray(x, np.float64)[:4], axes=(1, 2)), axes=(1, 2))))
    spec = spec[:, 2:6, 2:6, :]
    ref = (spec - spec.mean(0)) / np.sqrt(spec.var(0) + 1e-5)
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.module.name == "spectrum_norm":
            captured["y"] = out
        return out

    import flax.linen as nn

    with nn.intercept_methods(interceptor):
        tok.apply(variables, x, train=True, mask=mask, mutable=["batch_stats"])
    np.testing.assert_allclose(np.asarray(captured["y"])[:4], ref, rtol=2e-3, atol=2e-3)


# ------------------------------------------------------------------------- on a model

@pytest.fixture(scope="module")
def omnifm_state():
    """OmniFM (flat backbone) after two rounds on 3 clients, shared by the checks below."""
    data = make_clients([6, 5, 7], size=8, seed=5)
    alg = build_algorithm("omnifm", backbone=FlatBackbone(), num_clients=3)
    state = federated.init(alg, jax.random.key(0), data)
    round_fn = federated.make_round(alg, data)
    for _ in range(2):
        state, _ = round_fn(state, data)
    return alg, data, state


def test_diagnostics_on_a_model_whose_z_is_zero(omnifm_state):
    from omnifm_jax.tasks import classification

    alg, data, state = omnifm_state
    task = classification(3)
    d = D.omnifm_diagnostics(alg, task, state, data)
    assert set(d) == set(D.NAMES)
    assert 0.0 <= d["diag/attn_entropy_ratio"] <= 1.0 and d["diag/bank_valid"] >= 1
    # zero ECA's value projection: Z = 0 for every input, so replacing Z changes nothing
    params = jax.tree_util.tree_map_with_path(
        lambda p, a: jnp.zeros_like(a) if any(getattr(k, "key", None) == "w_v" for k in p) else a, state.server.params)
    zeroed = state._replace(server=state.server._replace(params=params))
    dz = D.omnifm_diagnostics(alg, task, zeroed, data)
    assert dz["diag/acc_z_constant"] == dz["diag/acc_normal"]
    assert dz["diag/z_logit_share"] == pytest.approx(0.0, abs=1e-12)


def test_identical_inputs_give_uniform_attention(omnifm_state):
    from omnifm_jax.tasks import classification

    alg, data, state = omnifm_state
    same = data._replace(x=np.broadcast_to(data.x[:1], data.x.shape).copy())
    # every bank slot holds exactly the token of that one image: all keys of ECA coincide
    client0 = jax.tree_util.tree_map(lambda a: a[0], state.clients)
    _, aux, _ = jax.jit(alg.inspect)(state.server, client0, jnp.asarray(same.x[:1], jnp.float32) / 127.5 - 1.0)
    bank = state.server.algorithm_state
    bank = bank._replace(embeddings=jnp.where(bank.valid[:, None], aux.s[0], 0.0))
    state = state._replace(server=state.server._replace(algorithm_state=bank))
    d = D.omnifm_diagnostics(alg, classification(3), state, same)
    assert d["diag/attn_entropy_ratio"] == pytest.approx(1.0, abs=1e-5)
    assert d["diag/s_cos_to_mean"] == pytest.approx(1.0, abs=1e-5)


def test_class_mean_uploads_equal_the_numpy_class_means():
    # lr 0 and every sample in a batch once (drop_last=False): the tokens seen in training are
    # the evaluation tokens of the initial model, so the uploads are known in advance
    data = make_clients([6, 5, 7], size=8, seed=5)
    alg = build_algorithm("omnifm", backbone=FlatBackbone(), num_clients=3, lr=0.0, drop_last=False,
                          upload="class_means", bank_capacity=9)
    state = federated.init(alg, jax.random.key(0), data)
    inspect = jax.jit(alg.inspect)  # the same function, compiled once per client size (not op by op)
    expected = []
    for k in range(3):
        client = jax.tree_util.tree_map(lambda a: a[k], state.clients)
        rows = slice(int(data.offsets[k]), int(data.offsets[k] + data.n[k]))
        _, aux, _ = inspect(state.server, client, jnp.asarray(data.x[rows], jnp.float32) / 127.5 - 1.0)
        s, y = np.asarray(aux.s, np.float64), data.y[rows]
        for c in np.unique(y):
            m = s[y == c].mean(0)
            expected.append(m / np.linalg.norm(m))
    new, _ = federated.make_round(alg, data)(state, data)
    bank = new.server.algorithm_state
    got = np.asarray(bank.embeddings, np.float64)[np.asarray(bank.valid)]
    assert got.shape[0] == len(expected)
    for e in expected:  # every expected class mean is in the bank
        assert np.max(got @ e) == pytest.approx(1.0, abs=1e-5)


def test_class_mean_uploads_refuse_a_bank_too_small():
    from omnifm_jax.checks import ConfigError

    with pytest.raises(ConfigError, match=r"3 clients x 3 classes can upload 9 embeddings .* bank_capacity=8"):
        build_algorithm("omnifm", backbone=FlatBackbone(), num_clients=3, upload="class_means", bank_capacity=8)


def test_validation_split_uses_only_training_samples():
    train = make_clients([10, 4, 1], seed=6)
    test = make_clients([3, 3, 3], seed=7)
    fed = Federation(train, test, 3, ("a", "b", "c"), ("m",), {})
    val = validation_split(fed, 0.25, seed=1)
    assert val.train.n.tolist() == [8, 3, 1] and val.test.n.tolist() == [2, 1, 0]
    for k in range(3):
        tr = {train.x[i].tobytes() for i in range(train.offsets[k], train.offsets[k] + train.n[k])}
        a = {val.train.x[i].tobytes() for i in range(val.train.offsets[k], val.train.offsets[k] + val.train.n[k])}
        b = {val.test.x[i].tobytes() for i in range(val.test.offsets[k], val.test.offsets[k] + val.test.n[k])}
        assert a | b == tr and not a & b
    assert not {r.tobytes() for r in val.test.x} & {r.tobytes() for r in test.x}


def test_scaled_keys_equal_key_and_value_projections_scaled_by_sqrt_d():
    """ECA's key and value projections have no bias, so multiplying the keys by sqrt(d_s) is
    the same model as multiplying W_K and W_V by sqrt(d_s)."""
    from omnifm_jax.models.heads import ClassificationHead
    from omnifm_jax.models.omnifm import OmniFM

    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
    bank = bank_lib.insert(bank_lib.init(6, 8), jnp.asarray(rng.normal(size=(4, 8)), jnp.float32), rho=1.0)
    kw = dict(backbone=FlatBackbone(), head=ClassificationHead(num_classes=3), spectral_dim=8, attn_dim=8, num_suffix=2)
    plain, scaled = OmniFM(**kw), OmniFM(**kw, eca_keys="scaled")
    variables = jax.jit(plain.init)(jax.random.key(0), x, bank)
    lifted = jax.tree_util.tree_map_with_path(
        lambda p, a: a * np.sqrt(8.0) if any(getattr(k, "key", None) in ("w_k", "w_v") for k in p) else a, variables)
    apply_plain = jax.jit(plain.apply)  # jitted: one program instead of op-by-op dispatch
    a, _ = jax.jit(scaled.apply)(variables, x, bank)
    b, _ = apply_plain(lifted, x, bank)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    c, _ = apply_plain(variables, x, bank)
    assert not np.allclose(np.asarray(a), np.asarray(c), atol=1e-4)


def test_a_run_records_the_diagnostics_for_omnifm_only(tmp_path):
    import json

    from omnifm_jax import config as config_lib
    from omnifm_jax import experiment

    base = ["rounds=2", "num_clients=3", "dataset_kwargs.samples_per_class_per_modality=4",
            "dataset_kwargs.image_size=16", "backbone_kwargs.hidden=8", "batch_size=4", "checkpoint_every=0",
            "eval_train_loss=False", "algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8"]
    cfg = config_lib.apply_overrides(config_lib.load_config("default"), base)
    experiment.run(cfg, tmp_path / "omnifm", progress=False, log=lambda _: None)
    lines = [json.loads(line) for line in (tmp_path / "omnifm" / "metrics.jsonl").read_text().splitlines()]
    assert not any(k.startswith("diag/") for k in lines[0])       # round 0: nothing trained yet
    for line in lines[1:]:
        assert set(D.NAMES) <= set(line)
        assert 0.0 <= line["diag/acc_normal"] <= 1.0
    cfg = config_lib.apply_overrides(cfg, ["algorithm=fedavg", "rounds=1"])
    experiment.run(cfg, tmp_path / "fedavg", progress=False, log=lambda _: None)
    line = json.loads((tmp_path / "fedavg" / "metrics.jsonl").read_text().splitlines()[-1])
    assert not any(k.startswith("diag/") for k in line)


def test_diagnostics_schedule():
    assert [r for r in range(1, 51) if D.diagnostics_due(10, "omnifm", r, r == 50)] == [1, 10, 20, 30, 40, 50]
    assert [r for r in range(1, 8) if D.diagnostics_due(5, "omnifm", r, r == 7)] == [1, 5, 7]
    assert all(D.diagnostics_due("auto", "omnifm", r, False) for r in range(1, 5))
    assert not D.diagnostics_due("auto", "omnifm", 0, False)
    assert not D.diagnostics_due(0, "omnifm", 3, True) and not D.diagnostics_due("auto", "fedper", 3, True)


def test_the_shipped_config_is_the_studys_activated_variant():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from experiments import omnifm_mechanism as study
    from omnifm_jax import config as config_lib

    study_cfg = study.run_config("OmniFM (activated)", 0, 50, False)
    shipped = config_lib.load_config("real4_mechanism")
    assert shipped["algorithm_kwargs"] == study_cfg["algorithm_kwargs"]
    for key in ("dataset", "dataset_kwargs", "num_clients", "participation", "batch_size", "lr", "backbone"):
        assert shipped[key] == study_cfg[key]


def test_learned_temperature_scales_each_heads_logits_like_numpy():
    """ECA with ``learned_temperature``: at t = 0 it is Eq. 4; with t_h set it equals a NumPy
    float64 attention whose logits are multiplied by exp(t_h)."""
    from omnifm_jax.modules import EmbeddingCrossAttention

    rng = np.random.default_rng(11)
    r = rng.normal(size=(3, 5, 8)).astype(np.float32)
    keys = rng.normal(size=(3, 4, 6)).astype(np.float32)
    eca, plain = (EmbeddingCrossAttention(8, 2, learned_temperature=True),
                  EmbeddingCrossAttention(8, 2))
    variables = eca.init(jax.random.key(1), r, keys)
    base = {"params": {k: v for k, v in variables["params"].items() if k != "log_temperature"}}
    np.testing.assert_allclose(np.asarray(eca.apply(variables, r, keys)), np.asarray(plain.apply(base, r, keys)),
                               rtol=1e-6, atol=1e-6)
    t = rng.normal(size=2)
    variables = {"params": {**variables["params"], "log_temperature": jnp.asarray(t, jnp.float32)}}
    p = {k: np.asarray(v["kernel"], np.float64) for k, v in variables["params"].items() if k != "log_temperature"}
    q = np.einsum("bld,dhe->blhe", r, p["w_q"])
    k = np.einsum("bkd,dhe->bkhe", keys, p["w_k"])
    v = np.einsum("bkd,dhe->bkhe", keys, p["w_v"])
    logits = np.einsum("blhe,bkhe->bhlk", q, k) / np.sqrt(4) * np.exp(t)[None, :, None, None]
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    want = np.einsum("bhlk,bkhe->blhe", w, v).reshape(3, 5, 8)
    np.testing.assert_allclose(np.asarray(eca.apply(variables, r, keys)), want, rtol=1e-4, atol=1e-5)
