"""The federated engine: vmapped round vs the sequential reference, FedAvg with one client
vs centralised minibatch SGD, NaN exclusion, participant sampling.

Everything runs on tiny hand-made federations (8x8 images, <= 10 samples per client) and a
one-convolution backbone so that compiling and running stays cheap on CPU.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms import base
from omnifm_jax.models.omnifm import TokenModel
from omnifm_jax.tasks import classification

from _helpers import NUM_CLASSES, TinyBackbone, make_clients  # noqa: E402
OMNIFM_KW = dict(spectral_dim=8, attn_dim=8, bank_capacity=8, num_suffix=2, top_k=2)


def build(name, *, lr=0.1, momentum=None, batch_size=4, local_epochs=1, **kw):
    return algorithms.build(name, task=classification(NUM_CLASSES), backbone=TinyBackbone(),
                            optimizer=optax.sgd(lr, momentum=momentum), local_epochs=local_epochs,
                            batch_size=batch_size, **kw)


def leaves64(tree):
    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]


def assert_trees_close(a, b, *, rtol=1e-5, atol=1e-6):
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


# ----------------------------------------------------------------------------- vmap == loop

TRAIN4 = make_clients([10, 7, 5, 9], 10, seed=1)


@pytest.fixture(scope="module", params=["fedavg", "omnifm"])
def vmapped_vs_sequential(request):
    """Two rounds at participation 3/4 through make_round and through sequential_round."""
    name = request.param
    alg = build(name, **(OMNIFM_KW if name == "omnifm" else {}))
    train = jax.device_put(TRAIN4)
    state0 = federated.init(alg, jax.random.key(3), train)
    round_fn = federated.make_round(alg, num_clients=4, participation=0.75, donate=False)
    update = jax.jit(alg.client_update)
    sv, ss = state0, state0
    out = []
    for _ in range(2):
        sv, mv = round_fn(sv, train)
        ss, ms = federated.sequential_round(alg, ss, train, num_clients=4, participation=0.75,
                                            client_update=update)
        out.append((sv, mv, ss, ms))
    return name, state0, out


def test_vmapped_round_equals_sequential_round(vmapped_vs_sequential):
    name, state0, out = vmapped_vs_sequential
    for sv, mv, ss, ms in out:
        np.testing.assert_array_equal(np.asarray(mv.participants), np.asarray(ms.participants))
        assert len(np.unique(np.asarray(mv.participants))) == 3
        np.testing.assert_allclose(np.asarray(mv.weights), np.asarray(ms.weights))
        assert int(mv.faulty) == int(ms.faulty) == 0
        assert int(sv.round) == int(ss.round)
        # server params, the bank (OmniFM) and every client's personal and optimizer state
        assert_trees_close(sv.server.params, ss.server.params)
        assert_trees_close(sv.server.extra, ss.server.extra)
        assert_trees_close(sv.clients, ss.clients)
        assert_trees_close(mv.client_metrics, ms.client_metrics)
    # the rounds did something
    sv_last = out[-1][0]
    diff = max(np.max(np.abs(a - b)) for a, b in zip(leaves64(sv_last.server.params),
                                                       leaves64(state0.server.params)))
    assert diff > 1e-4
    if name == "omnifm":
        assert int(np.sum(np.asarray(sv_last.server.extra.valid))) > 0


def test_round_weights_are_sample_counts(vmapped_vs_sequential):
    _, _, out = vmapped_vs_sequential
    for _, mv, _, _ in out:
        idx = np.asarray(mv.participants)
        np.testing.assert_array_equal(np.asarray(mv.weights), TRAIN4.n[idx].astype(np.float32))


# ----------------------------------------------------------------------------- chunked == vmapped

@pytest.mark.parametrize("n, chunk", [(7, 2), (6, 3), (4, 4), (3, 5), (5, 1)])
def test_map_clients_chunks_equal_vmap(n, chunk):
    """Chunked mapping (with and without a remainder, chunk >= n) equals one vmap."""
    rng = np.random.default_rng(n * 10 + chunk)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(n, 3, 2)).astype(np.float32)
    fn = lambda u, v: {"dot": u @ v, "sum": jnp.sum(u) + 1.0}
    got = jax.jit(lambda a, b: federated.map_clients(fn, (a, b), chunk))(a, b)
    np.testing.assert_allclose(np.asarray(got["dot"]), np.einsum("ki,kij->kj", a.astype(np.float64), b),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["sum"]), a.astype(np.float64).sum(1) + 1.0,
                               rtol=1e-5, atol=1e-6)


def test_chunked_round_equals_vmapped_round():
    """client_chunk bounds memory only: 3 participants in chunks of 2 (a remainder) give the
    same state and metrics as one vmap. (The mapping is algorithm-agnostic; FedPer keeps a
    personal state, so both the server and the scattered client states are checked.)"""
    alg = build("fedper")
    train = jax.device_put(TRAIN4)
    state0 = federated.init(alg, jax.random.key(5), train)
    sv, mv = federated.make_round(alg, num_clients=4, participation=0.75, donate=False)(state0, train)
    sc, mc = federated.make_round(alg, num_clients=4, participation=0.75, donate=False,
                                  client_chunk=2)(state0, train)
    np.testing.assert_array_equal(np.asarray(mv.participants), np.asarray(mc.participants))
    assert_trees_close(sv.server, sc.server)
    assert_trees_close(sv.clients, sc.clients)
    assert_trees_close(mv.client_metrics, mc.client_metrics)
    assert max(np.max(np.abs(a - b)) for a, b in zip(leaves64(sc.server.params),
                                                     leaves64(state0.server.params))) > 1e-4


def test_client_chunks_bound_round_memory():
    """XLA's memory analysis of the compiled round: chunks of 2 of 16 clients need much
    less scratch memory than one vmap over all 16 (what lets 10,000 clients fit)."""
    alg = build("fedavg")
    train = jax.device_put(make_clients([12] * 16, 12, size=16, seed=2))
    state = federated.init(alg, jax.random.key(0), train)

    def temp_bytes(chunk):
        fn = federated.make_round(alg, num_clients=16, client_chunk=chunk, donate=False)
        return fn.lower(state, train).compile().memory_analysis().temp_size_in_bytes

    full, chunked = temp_bytes(None), temp_bytes(2)
    assert chunked < 0.5 * full, (chunked, full)


# ----------------------------------------------------------------------------- FedAvg(K=1) == SGD

@pytest.mark.parametrize("n, epochs", [(7, 2)])
def test_fedavg_single_client_equals_centralized_sgd(n, epochs):
    """One client, full participation: the FedAvg round is minibatch SGD (momentum) over the
    client's data with a fresh permutation per epoch and a partial last batch (7 = 3 + 3 + 1)."""
    batch, lr, momentum, n_max = 3, 0.2, 0.9, 8
    assert n % batch != 0
    task = classification(NUM_CLASSES)
    alg = algorithms.build("fedavg", task=task, backbone=TinyBackbone(),
                           optimizer=optax.sgd(lr, momentum=momentum), local_epochs=epochs,
                           batch_size=batch)
    train = make_clients([n], n_max, seed=5)
    state = federated.init(alg, jax.random.key(11), jax.device_put(train))
    round_fn = federated.make_round(alg, num_clients=1, participation=1.0, donate=False)
    new_state, metrics = round_fn(state, jax.device_put(train))
    assert int(metrics.client_metrics["local_steps"][0]) == epochs * math.ceil(n / batch)

    # Same keys as the engine: key_r = fold_in(key, round); (sample, client) = split(key_r);
    # client key = fold_in(client, id); local_train splits it into (perm, step).
    key_r = jax.random.fold_in(state.key, state.round)
    _, client_key = jax.random.split(key_r)
    perm_key, _ = jax.random.split(jax.random.fold_in(client_key, 0))
    perms = np.asarray(base.epoch_permutations(perm_key, jnp.int32(n), n_max, epochs))
    for e in range(epochs):
        assert sorted(perms[e, :n].tolist()) == list(range(n))  # a permutation of the real samples

    # centralised reference, written directly with flax/optax (no engine code)
    model = TokenModel(backbone=TinyBackbone(), head=task.make_head())
    params = state.server.params["params"]
    tx = optax.sgd(lr, momentum=momentum)
    opt = tx.init(params)
    x_all = train.x[0].astype(np.float32) / 255.0
    y_all = train.y[0]

    def loss(p, x, y):
        logits, _ = model.apply({"params": p}, x, None, train=True)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    grad = jax.jit(jax.grad(loss))
    losses = []
    for e in range(epochs):
        order = perms[e, :n]
        for s in range(0, n, batch):
            idx = order[s:s + batch]  # the last batch has n % batch samples
            g = grad(params, x_all[idx], y_all[idx])
            losses.append(float(loss(params, x_all[idx], y_all[idx])))
            upd, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, upd)

    assert_trees_close(new_state.server.params["params"], params, rtol=1e-5, atol=1e-6)
    # the client's optimizer (momentum) state matches as well
    client_opt = jax.tree_util.tree_map(lambda a: a[0], new_state.clients.opt_state)
    assert_trees_close(client_opt, opt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics.client_metrics["train_loss"][0]), np.mean(losses),
                               rtol=1e-5)
    # and training moved the parameters
    assert max(np.max(np.abs(a - b)) for a, b in zip(leaves64(params),
                                                       leaves64(state.server.params["params"]))) > 1e-3


def test_epoch_permutations_put_padding_last():
    perms = np.asarray(base.epoch_permutations(jax.random.key(0), jnp.int32(5), 9, 3))
    assert perms.shape == (3, 9)
    for row in perms:
        assert sorted(row[:5].tolist()) == list(range(5))
        assert sorted(row[5:].tolist()) == list(range(5, 9))
    assert len({tuple(r[:5]) for r in perms}) > 1  # a fresh permutation each epoch


def test_num_local_steps():
    assert base.num_local_steps(10, 4, 1) == 3
    assert base.num_local_steps(8, 4, 2) == 4
    assert base.num_local_steps(0, 4, 2) == 2


# ----------------------------------------------------------------------------- faulty clients

def test_nan_upload_gets_weight_zero_and_keeps_old_state():
    """A participant whose upload is NaN is excluded from the mean and keeps its old state;
    the server's params are the NumPy n_k-weighted mean of the OTHER uploads."""
    alg = build("fedavg")
    poisoned = 2  # client 2 (n = 5) sends NaN

    def client_update(server, client, data, key):
        res = alg.client_update(server, client, data, key)
        bad = data.n == TRAIN4.n[poisoned]
        shared = jax.tree_util.tree_map(lambda a: jnp.where(bad, jnp.nan, a), res.upload.shared)
        return res._replace(upload=res.upload._replace(shared=shared))

    faulty_alg = alg._replace(client_update=client_update)
    train = jax.device_put(TRAIN4)
    state = federated.init(faulty_alg, jax.random.key(0), train)
    new, metrics = federated.make_round(faulty_alg, num_clients=4, donate=False)(state, train)
    assert int(metrics.faulty) == 1
    np.testing.assert_array_equal(np.asarray(metrics.weights), [10, 7, 0, 9])

    # reference: each client's upload computed by hand with the engine's keys
    _, client_key = jax.random.split(jax.random.fold_in(state.key, state.round))
    update = jax.jit(alg.client_update)
    uploads, new_states = [], []
    for k in range(4):
        c = jax.tree_util.tree_map(lambda a: a[k], state.clients)
        d = base.ClientData(train.x[k], train.y[k], train.n[k])
        res = update(state.server, c, d, jax.random.fold_in(client_key, k))
        uploads.append(leaves64(res.upload.shared))
        new_states.append(res.state)
    w = np.array([10, 7, 0, 9], np.float64)
    for j, leaf in enumerate(jax.tree_util.tree_leaves(new.server.params)):
        ref = sum(w[k] * uploads[k][j] for k in (0, 1, 3)) / w.sum()
        np.testing.assert_allclose(np.asarray(leaf, np.float64), ref, rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(np.asarray(leaf)))
    # the faulty client keeps its old state, the others take their new one
    for k in range(4):
        got = jax.tree_util.tree_map(lambda a: a[k], new.clients)
        want = jax.tree_util.tree_map(lambda a: a[k], state.clients) if k == poisoned else new_states[k]
        assert_trees_close(got, want)


def test_participants_finite():
    ups = {"a": jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [0.0, jnp.inf]]), "i": jnp.zeros((3, 2), jnp.int32)}
    np.testing.assert_array_equal(np.asarray(federated.participants_finite(ups, 3)), [True, False, False])
    np.testing.assert_array_equal(np.asarray(federated.participants_finite(None, 2)), [True, True])


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("k", [1, 5, 20])
@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_sample_participants_distinct(k, ratio):
    m = federated.num_participants(k, ratio)
    assert m == max(1, int(round(ratio * k)))
    draw = jax.jit(lambda key: federated.sample_participants(key, k, m))
    seen = np.zeros(k, int)
    for s in range(64):
        idx = np.asarray(draw(jax.random.key(s)))
        assert idx.shape == (m,)
        assert len(np.unique(idx)) == m, idx
        assert np.all((idx >= 0) & (idx < k))
        assert np.all(np.diff(idx) > 0)  # increasing order
        seen[idx] += 1
    assert seen.sum() == 64 * m
    assert np.all(seen > 0), "every client must be drawn sometimes"


def test_num_participants_values_and_errors():
    assert federated.num_participants(5, 0.2) == 1
    assert federated.num_participants(20, 0.2) == 4
    assert federated.num_participants(1, 0.2) == 1
    assert federated.num_participants(5, 1.0) == 5
    for bad in (0.0, -0.1, 1.01, 2.0):
        with pytest.raises(ValueError, match="participation"):
            federated.num_participants(5, bad)
    with pytest.raises(ValueError):
        federated.num_participants(0, 0.5)
    with pytest.raises(ValueError, match="participation"):
        federated.make_round(build("fedavg"), num_clients=4, participation=0.0)


def test_state_hash_changes_with_any_leaf():
    alg = build("fedavg")
    state = federated.init(alg, jax.random.key(0), TRAIN4)
    h = federated.state_hash(state)
    assert h == federated.state_hash(federated.init(alg, jax.random.key(0), TRAIN4))
    bumped = state._replace(round=state.round + 1)
    assert federated.state_hash(bumped) != h
    assert federated.state_hash(federated.init(alg, jax.random.key(1), TRAIN4)) != h
