"""The federated engine: the round against an independent NumPy FedAvg, every client
mapping strategy against the sequential reference, FedAvg with one client vs centralised
SGD (drop_last and partial batches), ragged clients vs each client alone, padded samples
and BatchNorm, NaN exclusion, participant sampling (PFLlib's int(ratio * K), random_join).

Everything runs on tiny hand-made federations (8x8 images, <= 12 samples per client) and
one-layer backbones so that compiling and running stays cheap on CPU.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import NUM_CLASSES, FlatBackbone, TinyBackbone, TinyBNBackbone, make_clients  # noqa: E402

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms import base, local_training
from omnifm_jax.models.omnifm import TokenModel
from omnifm_jax.tasks import classification

OMNIFM_KW = dict(spectral_dim=8, attn_dim=8, bank_capacity=8, num_suffix=2, top_k=2)


def build(name, *, lr=0.1, momentum=None, batch_size=4, local_epochs=1, backbone=None, **kw):
    return algorithms.build(name, task=classification(NUM_CLASSES), backbone=backbone or TinyBackbone(),
                            optimizer=optax.sgd(lr, momentum=momentum), local_epochs=local_epochs,
                            batch_size=batch_size, **kw)


def leaves64(tree):
    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]


def assert_trees_close(a, b, *, rtol=1e-5, atol=1e-6):
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def max_change(a, b):
    return max(np.max(np.abs(x - y)) for x, y in zip(leaves64(a), leaves64(b)))


TRAIN4 = make_clients([10, 7, 5, 9], seed=1)


# ----------------------------------------------------------------------------- independent FedAvg

def _client_perms(state, client_id, n, capacity, epochs):
    """The engine's documented key chain: key_r = fold_in(key, round); (sample, client) =
    split(key_r); client key = fold_in(client, id); local_train splits it into (perm, step)."""
    _, client_key = jax.random.split(jax.random.fold_in(state.key, state.round))
    perm_key, _ = jax.random.split(jax.random.fold_in(client_key, client_id))
    return np.asarray(local_training.epoch_permutations(perm_key, jnp.int32(n), capacity, epochs))


def test_fedavg_round_equals_independent_numpy_fedavg():
    """Softmax regression (no backbone parameters) through the engine vs float64 NumPy:
    three of four clients of unequal size, 2 epochs, batch 3 with drop_last (a client of 7
    does 2 steps per epoch, of 5 one), inputs scaled to [-1, 1], mean weighted by n_k."""
    batch, lr, epochs = 3, 0.3, 2
    task = classification(NUM_CLASSES)
    alg = algorithms.build("fedavg", task=task, backbone=FlatBackbone(), optimizer=optax.sgd(lr),
                           local_epochs=epochs, batch_size=batch)
    train = jax.device_put(TRAIN4)
    state = federated.init(alg, jax.random.key(7), train)
    new, metrics = federated.make_round(alg, TRAIN4, participation=0.75, donate=False)(state, train)
    idx = np.asarray(metrics.participants)
    assert len(idx) == 3 == int(metrics.active)

    w0 = np.asarray(state.server.params["params"]["head"]["fc"]["kernel"], np.float64)
    b0 = np.asarray(state.server.params["params"]["head"]["fc"]["bias"], np.float64)
    capacity = int(TRAIN4.n.max())
    ws, bs, ns, steps = [], [], [], []
    for k in idx:
        n, off = int(TRAIN4.n[k]), int(TRAIN4.offsets[k])
        x = TRAIN4.x[off:off + n].reshape(n, -1).astype(np.float64) / 255.0 * 2.0 - 1.0
        y = TRAIN4.y[off:off + n]
        perms = _client_perms(state, int(k), n, capacity, epochs)
        w, b, s = w0.copy(), b0.copy(), 0
        for e in range(epochs):
            for j in range(n // batch):  # drop_last
                sel = perms[e, j * batch:(j + 1) * batch]
                logits = x[sel] @ w + b
                p = np.exp(logits - logits.max(1, keepdims=True))
                p /= p.sum(1, keepdims=True)
                p[np.arange(batch), y[sel]] -= 1.0
                w -= lr * x[sel].T @ p / batch
                b -= lr * p.mean(0)
                s += 1
        ws.append(w), bs.append(b), ns.append(n), steps.append(s)
    ns = np.asarray(ns, np.float64)
    w_ref = sum(n * w for n, w in zip(ns, ws)) / ns.sum()
    b_ref = sum(n * b for n, b in zip(ns, bs)) / ns.sum()
    np.testing.assert_allclose(np.asarray(new.server.params["params"]["head"]["fc"]["kernel"]), w_ref,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.asarray(new.server.params["params"]["head"]["fc"]["bias"]), b_ref,
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(metrics.client_metrics["local_steps"]), steps)
    assert int(metrics.useful_steps) == sum(steps)
    assert np.max(np.abs(w_ref - w0)) > 1e-3


# ----------------------------------------------------------------------------- strategies
# Every strategy (vmap, one by one, sorted chunks) against the sequential round, for every
# algorithm: tests/test_conformance.py.


def test_executed_client_steps_counts():
    s = jnp.asarray([1, 9, 3, 3, 8])
    assert int(federated.executed_client_steps(s, 1)) == 24
    assert int(federated.executed_client_steps(s, None)) == 45
    assert int(federated.executed_client_steps(s, 2)) == 2 * 9 + 2 * 3 + 1 * 1
    assert int(federated.executed_client_steps(s, 5)) == 45


def test_choose_client_chunk_keeps_useful_fraction():
    """Equal clients: all at once is free; one giant client among small ones: chunks shrink."""
    assert federated.choose_client_chunk(np.full(100, 4), 16, 16) == 16
    heavy = np.array([200] + [5] * 19)
    c = federated.choose_client_chunk(heavy, 4, 4)
    assert c == 1


@pytest.mark.parametrize("n, chunk", [(7, 2), (6, 3), (4, 4), (3, 5), (5, 1)])
def test_map_clients_chunks_equal_vmap(n, chunk):
    """Sorted chunked mapping (with and without a remainder, chunk >= n) equals one vmap,
    results back in slot order."""
    rng = np.random.default_rng(n * 10 + chunk)
    a = rng.normal(size=(n, 3)).astype(np.float32)
    b = rng.normal(size=(n, 3, 2)).astype(np.float32)
    steps = rng.integers(0, 9, n).astype(np.int32)
    fn = lambda u, v: {"dot": u @ v, "sum": jnp.sum(u) + 1.0}
    got = jax.jit(lambda a, b, s: federated.map_clients(fn, (a, b), s, chunk))(a, b, steps)
    np.testing.assert_allclose(np.asarray(got["dot"]), np.einsum("ki,kij->kj", a.astype(np.float64), b),
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(got["sum"]), a.astype(np.float64).sum(1) + 1.0,
                               rtol=1e-5, atol=1e-6)


def test_client_chunks_bound_round_memory():
    """XLA's memory analysis of the compiled round: chunks of 2 of 16 clients need much
    less scratch memory than one vmap over all 16 (what lets 10,000 clients fit)."""
    alg = build("fedavg")
    data = make_clients([12] * 16, size=16, seed=2)
    train = jax.device_put(data)
    state = federated.init(alg, jax.random.key(0), train)

    def temp_bytes(chunk):
        fn = federated.make_round(alg, data, client_chunk=chunk, donate=False)
        return fn.lower(state, train).compile().memory_analysis().temp_size_in_bytes

    full, chunked = temp_bytes(None), temp_bytes(2)
    assert chunked < 0.5 * full, (chunked, full)


# ----------------------------------------------------------------------------- ragged == alone

def test_ragged_clients_train_as_if_alone():
    """A client's update inside a ragged federation equals its update on a federation that
    holds only its own data (same key): no other client's rows reach it, whatever its
    offset or the largest client's size."""
    alg = build("fedper", batch_size=3, local_epochs=2)
    train = jax.device_put(TRAIN4)
    state = federated.init(alg, jax.random.key(4), train)
    new, _ = federated.make_round(alg, TRAIN4, donate=False)(state, train)
    _, client_key = jax.random.split(jax.random.fold_in(state.key, state.round))
    for k in range(4):
        n, off = int(TRAIN4.n[k]), int(TRAIN4.offsets[k])
        alone = base.ClientData(x=jnp.asarray(TRAIN4.x[off:off + n]), y=jnp.asarray(TRAIN4.y[off:off + n]),
                                offset=jnp.int32(0), n=jnp.int32(n), capacity=int(TRAIN4.n.max()))
        c = jax.tree_util.tree_map(lambda a: a[k], state.clients)
        res = jax.jit(alg.client_update)(state.server, c, alone, jax.random.fold_in(client_key, k))
        assert_trees_close(jax.tree_util.tree_map(lambda a: a[k], new.clients), res.state)


# ----------------------------------------------------------------------------- FedAvg(K=1) == SGD

@pytest.mark.parametrize("drop_last", [True, False])
def test_fedavg_single_client_equals_centralized_sgd(drop_last):
    """One client of 7 samples, batch 3, 2 epochs: minibatch SGD (momentum) with a fresh
    permutation per epoch; drop_last gives 2 steps per epoch (the 7th sample is skipped),
    without it 3 (the last batch holds one sample)."""
    n, epochs, batch, lr, momentum = 7, 2, 3, 0.2, 0.9
    task = classification(NUM_CLASSES)
    alg = algorithms.build("fedavg", task=task, backbone=TinyBackbone(),
                           optimizer=optax.sgd(lr, momentum=momentum), local_epochs=epochs,
                           batch_size=batch, drop_last=drop_last)
    train = make_clients([n], seed=5)
    state = federated.init(alg, jax.random.key(11), jax.device_put(train))
    new_state, metrics = federated.make_round(alg, train, donate=False)(state, jax.device_put(train))
    per_epoch = n // batch if drop_last else -(-n // batch)
    assert int(metrics.client_metrics["local_steps"][0]) == epochs * per_epoch

    perms = _client_perms(state, 0, n, n, epochs)
    for e in range(epochs):
        assert sorted(perms[e, :n].tolist()) == list(range(n))

    model = TokenModel(backbone=TinyBackbone(), head=task.make_head())
    params = state.server.params["params"]
    tx = optax.sgd(lr, momentum=momentum)
    opt = tx.init(params)
    x_all = train.x.astype(np.float32) / 255.0 * 2.0 - 1.0
    y_all = train.y

    def loss(p, x, y):
        logits, _ = model.apply({"params": p}, x, None, train=True)
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    grad = jax.jit(jax.grad(loss))
    losses = []
    for e in range(epochs):
        order = perms[e, :n]
        for s in range(per_epoch):
            idx = order[s * batch:(s + 1) * batch]
            g = grad(params, x_all[idx], y_all[idx])
            losses.append(float(loss(params, x_all[idx], y_all[idx])))
            upd, opt = tx.update(g, opt, params)
            params = optax.apply_updates(params, upd)

    assert_trees_close(new_state.server.params["params"], params, rtol=1e-5, atol=1e-6)
    client_opt = jax.tree_util.tree_map(lambda a: a[0], new_state.clients.opt_state)
    assert_trees_close(client_opt, opt, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(metrics.client_metrics["train_loss"][0]), np.mean(losses), rtol=1e-5)
    assert max_change(params, state.server.params["params"]) > 1e-3


def test_client_smaller_than_a_batch_does_no_step_but_is_weighted():
    """drop_last (PFLlib): a client with n < B runs no step; like PFLlib it still uploads the
    model it received, weighted by n_k."""
    data = make_clients([2, 9], seed=3)
    alg = build("fedavg", batch_size=4)
    state = federated.init(alg, jax.random.key(0), data)
    _, m = federated.make_round(alg, data, donate=False)(state, jax.device_put(data))
    np.testing.assert_array_equal(np.asarray(m.client_metrics["local_steps"]), [0, 2])
    np.testing.assert_array_equal(np.asarray(m.weights), [2, 9])


# ----------------------------------------------------------------------------- padded samples, BatchNorm

@pytest.mark.parametrize("backbone", ["tiny_bn", "resnet18_bn"])
def test_padded_samples_reach_no_batchnorm_statistic(backbone):
    """BatchNorm model through the engine, drop_last=False: 5 real samples in a batch of 8
    (3 masked places) give the same parameters, running statistics and loss as the same 5
    samples in a batch of 5. Before masking BatchNorm, the 3 places changed both. Checked on a
    one-layer BN model and on a narrow ResNet-18 with BatchNorm (torchvision stem)."""
    from omnifm_jax.models import ResNet18

    make = {"tiny_bn": TinyBNBackbone,
            "resnet18_bn": lambda: ResNet18(stem="imagenet", norm="batch", width=4, stage_sizes=(1, 1, 1, 1))}[backbone]
    data = make_clients([5], seed=8)
    results = []
    for batch in (8, 5):
        alg = build("fedavg", backbone=make(), batch_size=batch, drop_last=False, lr=0.5)
        state = federated.init(alg, jax.random.key(2), data)
        new, m = federated.make_round(alg, data, donate=False)(state, jax.device_put(data))
        assert int(m.client_metrics["local_steps"][0]) == 1
        results.append((new, m))
    (a, ma), (b, mb) = results
    # float32 sums over 8 vs 5 rows round differently (ResNet: ~2e-6); with BatchNorm blind
    # to the mask the ResNet's parameters differ by up to 5 (measured), far outside these
    tol = dict(rtol=1e-5, atol=1e-6) if backbone == "tiny_bn" else dict(rtol=1e-4, atol=1e-5)
    assert_trees_close(a.server.params, b.server.params, **tol)
    assert_trees_close(a.clients.personal, b.clients.personal, **tol)
    np.testing.assert_allclose(np.asarray(ma.client_metrics["train_loss"]),
                               np.asarray(mb.client_metrics["train_loss"]), rtol=1e-5)
    stats = jax.tree_util.tree_leaves(a.clients.personal["batch_stats"])
    assert max(float(np.max(np.abs(np.asarray(l) - np.round(np.asarray(l))))) for l in stats) > 1e-4  # they moved


def test_batchnorm_statistics_stay_on_each_client():
    """PFLlib sends parameters() only: the server holds no BatchNorm statistics, every client
    keeps (and evaluates with) its own, non-participants' are untouched; with
    aggregate_bn_stats they are averaged like parameters."""
    data = make_clients([6, 9, 7, 8], seed=4)
    alg = build("fedavg", backbone=TinyBNBackbone(), batch_size=3)
    state = federated.init(alg, jax.random.key(1), data)
    assert jax.tree_util.tree_leaves(state.server.params["batch_stats"]) == []  # only None placeholders
    new, m = federated.make_round(alg, data, participation=0.5, donate=False)(state, jax.device_put(data))
    part = set(np.asarray(m.participants).tolist())
    means = np.asarray(new.clients.personal["batch_stats"]["backbone"]["norm"]["mean"])
    old = np.asarray(state.clients.personal["batch_stats"]["backbone"]["norm"]["mean"])
    for k in range(4):
        if k in part:
            assert np.max(np.abs(means[k] - old[k])) > 1e-5
        else:
            np.testing.assert_array_equal(means[k], old[k])
    a, b = sorted(part)
    assert np.max(np.abs(means[a] - means[b])) > 1e-5  # each client has its own
    shared_alg = build("fedavg", backbone=TinyBNBackbone(), batch_size=3, aggregate_bn_stats=True)
    shared_state = federated.init(shared_alg, jax.random.key(1), data)
    assert len(jax.tree_util.tree_leaves(shared_state.server.params["batch_stats"])) == 2


# ----------------------------------------------------------------------------- init, client dropout, faults

def test_all_clients_start_from_one_initial_model():
    """PFLlib deep-copies one model to every client: the personal parts start equal, and are
    the server model's own init; shared_init=False draws one per client."""
    alg = build("fedper")
    state = federated.init(alg, jax.random.key(9), TRAIN4)
    for leaf in jax.tree_util.tree_leaves(state.clients.personal):
        leaf = np.asarray(leaf)
        assert np.all(leaf == leaf[:1])
    own = federated.init(alg, jax.random.key(9), TRAIN4, shared_init=False)
    kernel = np.asarray(own.clients.personal["params"]["head"]["fc"]["kernel"])
    assert np.max(np.abs(kernel[0] - kernel[1])) > 1e-4
    # bank_only OmniFM: every client starts from the same spectral tokenizer
    om = federated.init(build("omnifm", sharing="bank_only", **OMNIFM_KW), jax.random.key(9), TRAIN4)
    for leaf in jax.tree_util.tree_leaves(om.clients.personal["params"]["tokenizer"]):
        leaf = np.asarray(leaf)
        assert np.all(leaf == leaf[:1])


@pytest.mark.parametrize("keep", [True, False])
def test_dropped_participant_keeps_what_it_trained(keep):
    """PFLlib: dropped clients trained but did not upload; they keep their trained local model
    (here the personal head). ``dropped_keep_update=False`` rolls them back."""
    alg = build("fedper")
    train = jax.device_put(TRAIN4)
    state = federated.init(alg, jax.random.key(0), train)
    new, m = federated.make_round(alg, TRAIN4, client_dropout=0.5, dropped_keep_update=keep, donate=False)(state, train)
    assert int(m.dropped) == 2
    w = np.asarray(m.weights)
    dropped = [int(i) for i, wi in zip(np.asarray(m.participants), w) if wi == 0]
    assert len(dropped) == 2
    seq, _ = federated.sequential_round(alg, state, train, client_dropout=0.5, dropped_keep_update=keep)
    assert_trees_close(new.clients, seq.clients)
    head = lambda s, k: np.asarray(s.clients.personal["params"]["head"]["fc"]["kernel"][k])
    for k in dropped:
        changed = np.max(np.abs(head(new, k) - head(state, k))) > 1e-6
        assert changed == keep


def test_participants_finite():
    ups = {"a": jnp.array([[1.0, 2.0], [jnp.nan, 0.0], [0.0, jnp.inf]]), "i": jnp.zeros((3, 2), jnp.int32)}
    np.testing.assert_array_equal(np.asarray(federated.participants_finite(ups, 3)), [True, False, False])
    np.testing.assert_array_equal(np.asarray(federated.participants_finite(None, 2)), [True, True])


# ----------------------------------------------------------------------------- sampling

@pytest.mark.parametrize("k", [5, 20])
@pytest.mark.parametrize("ratio", [0.2, 0.5, 1.0])
def test_sample_participants_distinct(k, ratio):
    m = federated.num_participants(k, ratio)
    assert m == int(ratio * k)
    draw = jax.jit(lambda key: federated.sample_participants(key, k, m))
    seen = np.zeros(k, int)
    for s in range(64):
        idx = np.asarray(draw(jax.random.key(s)))
        assert idx.shape == (m,)
        assert len(np.unique(idx)) == m, idx
        assert np.all((idx >= 0) & (idx < k))
        assert np.all(np.diff(idx) > 0)
        seen[idx] += 1
    assert seen.sum() == 64 * m
    assert np.all(seen > 0), "every client must be drawn sometimes"


def test_num_participants_is_pflib_floor():
    """PFLlib: int(num_clients * join_ratio), no rounding up."""
    assert federated.num_participants(5, 0.3) == 1      # round() would give 2
    assert federated.num_participants(20, 0.2) == 4
    assert federated.num_participants(100, 0.29) == 28  # int(28.999999999999996)
    assert federated.num_participants(5, 1.0) == 5
    for bad in (0.0, -0.1, 1.01, 2.0):
        with pytest.raises(ValueError, match="participation"):
            federated.num_participants(5, bad)
    with pytest.raises(ValueError, match="0 clients per round"):
        federated.num_participants(4, 0.2)
    with pytest.raises(ValueError):
        federated.num_participants(0, 0.5)


def test_num_reporting_is_pflib_floor():
    assert federated.num_reporting(4, 0.3) == 2   # int(0.7 * 4)
    assert federated.num_reporting(10, 0.25) == 7
    assert federated.num_reporting(2, 0.9) == 1   # at least one reports
    with pytest.raises(ValueError, match="client_dropout"):
        federated.num_reporting(4, 1.0)


def test_random_join_draws_between_m_and_k_participants():
    """PFLlib's random_join_ratio: each round int(ratio*K)..K clients take part; the others
    keep their state exactly."""
    data = make_clients([6] * 6, seed=1)
    alg = build("fedper", batch_size=3)
    train = jax.device_put(data)
    state = federated.init(alg, jax.random.key(0), train)
    fn = federated.make_round(alg, data, participation=0.34, random_join=True, donate=False)
    counts = []
    for _ in range(12):
        new, m = fn(state, train)
        active = int(m.active)
        counts.append(active)
        assert 2 <= active <= 6
        w = np.asarray(m.weights)
        assert int(np.sum(w > 0)) == active
        slots = np.asarray(m.participants)
        for slot, k in enumerate(slots):
            same = all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for a, b in
                       zip(jax.tree_util.tree_leaves(new.clients), jax.tree_util.tree_leaves(state.clients)))
            assert same == (w[slot] == 0)
        state = new
    assert len(set(counts)) > 1


def test_state_hash_changes_with_any_leaf():
    alg = build("fedavg")
    state = federated.init(alg, jax.random.key(0), TRAIN4)
    h = federated.state_hash(state)
    assert h == federated.state_hash(federated.init(alg, jax.random.key(0), TRAIN4))
    assert federated.state_hash(state._replace(round=state.round + 1)) != h
    assert federated.state_hash(federated.init(alg, jax.random.key(1), TRAIN4)) != h
