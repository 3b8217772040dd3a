"""Faulty and dropped-out clients.

A participant whose update is NaN/Inf is excluded from the aggregation and from the
knowledge-bank update of that round, keeps its personal state, and is counted: the
server after the round equals the server after the same round without that client.
Dropped-out participants (``dropout``) get weight 0 inside the jitted round, keep their
state, are counted separately, and do not change which clients are sampled or the keys
the others train with.

OmniFM on tiny 8x8 federations with a one-convolution backbone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import algorithms, federated
from omnifm_jax.data.federation import ClientArrays
from omnifm_jax.tasks import classification

from _helpers import NUM_CLASSES, TinyBackbone, build_algorithm, make_clients  # noqa: E402
K = 4


def make_train(ns, n_max=6, size=8, seed=0) -> ClientArrays:
    return make_clients(ns, n_max, size=size, seed=seed)


NS = [6, 5, 4, 6]
TRAIN = make_train(NS)


def with_n(train: ClientArrays, k: int, n: int) -> ClientArrays:
    """``train`` with client ``k``'s sample count set to ``n`` (0: it has nothing to send)."""
    ns = np.asarray(train.n).copy()
    ns[k] = n
    return train._replace(n=jnp.asarray(ns))


def poison(state, k):
    """Client ``k``'s personal parameters set to NaN: its local training diverges."""
    personal = jax.tree_util.tree_map(lambda a: a.at[k].set(jnp.nan), state.clients.personal)
    return state._replace(clients=state.clients._replace(personal=personal))


def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)  # NaN == NaN here


def client(tree, k):
    return jax.tree_util.tree_map(lambda a: a[k], tree)


@pytest.fixture(scope="module")
def setup():
    alg = algorithms.build("omnifm", task=classification(NUM_CLASSES), backbone=TinyBackbone(),
                           optimizer=optax.sgd(0.1), local_epochs=1, batch_size=4, spectral_dim=8, attn_dim=8,
                           bank_capacity=8, num_suffix=2, top_k=2)
    train = jax.device_put(TRAIN)
    state0 = jax.jit(lambda key: federated.init(alg, key, train))(jax.random.key(0))
    round_fn = federated.make_round(alg, TRAIN, donate=False)
    state1, m1 = round_fn(state0, train)  # round 0 seeds the bank
    assert int(m1.faulty) == 0 and bool(np.asarray(state1.server.extra.valid).any())
    return alg, train, state1, round_fn


@pytest.fixture(scope="module")
def drop_fn(setup):
    alg = setup[0]
    return federated.make_round(alg, TRAIN, donate=False, dropout=0.5)


def test_nan_client_is_excluded_like_an_absent_one(setup):
    alg, train, state, round_fn = setup
    bad = 1
    poisoned = poison(state, bad)
    new, m = round_fn(poisoned, train)
    # the same round with client 1 contributing nothing (n = 0: weight 0, no local steps)
    ref, m_ref = round_fn(state, with_n(train, bad, 0))

    assert int(m.faulty) == 1 and int(m.dropped) == 0 and int(m_ref.faulty) == 0
    np.testing.assert_array_equal(np.asarray(m.weights), np.asarray(m_ref.weights))
    assert np.asarray(m.weights)[bad] == 0
    # global params AND knowledge bank: exactly those of the round without that client
    assert_trees_equal(new.server, ref.server)
    assert all(np.isfinite(x).all() for x in leaves(new.server.params))
    assert not np.array_equal(leaves(new.server.params)[0], leaves(state.server.params)[0])  # others did train
    # its personal state (params and optimizer state) is left as it was
    assert_trees_equal(client(new.clients, bad), client(poisoned.clients, bad))
    # the other clients are unaffected by it
    for k in set(range(K)) - {bad}:
        assert_trees_equal(client(new.clients, k), client(ref.clients, k))


def test_bank_ignores_the_nan_clients_embedding(setup):
    alg, train, state, round_fn = setup
    new, m = round_fn(poison(state, 2), train)
    bank0, bank1 = state.server.extra, new.server.extra
    # 4 participants, 1 faulty: exactly 3 new prototypes inserted this round
    def n_inserted(b0, b1):
        return int(np.sum(np.asarray(b1.valid) & (np.asarray(b1.age) == 0)))
    assert n_inserted(bank0, bank1) == int(np.sum(np.asarray(m.weights) > 0)) == 3
    assert np.isfinite(np.asarray(bank1.embeddings)).all()


def test_all_clients_faulty_leaves_the_global_model_untouched(setup):
    alg, train, state, round_fn = setup
    poisoned = state
    for k in range(K):
        poisoned = poison(poisoned, k)
    new, m = round_fn(poisoned, train)
    assert int(m.faulty) == K
    np.testing.assert_array_equal(np.asarray(m.weights), np.zeros(K))
    assert_trees_equal(new.server.params, state.server.params)
    assert_trees_equal(new.clients, poisoned.clients)
    assert int(np.sum(np.asarray(new.server.extra.valid))) == int(np.sum(np.asarray(state.server.extra.valid)))


@pytest.mark.parametrize("name", algorithms.available(task="classification"))
def test_every_algorithm_ignores_a_nan_upload(name):
    """A participant whose upload holds NaN is left out exactly as one that sends nothing
    (n = 0, weight 0): the server state of the two rounds is the same bit for bit, the other
    clients are unaffected, and its own state stays as it was."""
    alg = build_algorithm(name, backbone=TinyBackbone(), num_clients=K)
    bad = 1
    bad_offset = int(TRAIN.offsets[bad])

    def nan_upload(server, client, data, key):
        res = alg.client_update(server, client, data, key)
        hit = data.offset == bad_offset
        poison_leaf = lambda a: jnp.where(hit, jnp.full_like(a, jnp.nan), a) if jnp.issubdtype(a.dtype, jnp.inexact) else a
        return res._replace(upload=jax.tree_util.tree_map(poison_leaf, res.upload))

    train = jax.device_put(TRAIN)
    state = federated.init(alg, jax.random.key(0), train)
    new, m = federated.make_round(alg._replace(client_update=nan_upload), TRAIN, donate=False)(state, train)
    ref, m_ref = federated.make_round(alg, TRAIN, donate=False)(state, with_n(train, bad, 0))
    communicates = bool(jax.tree_util.tree_leaves(jax.eval_shape(
        lambda: alg.client_update(state.server, client(state.clients, 0),
                                  algorithms.ClientData(train.x, train.y, train.offsets[0], train.n[0], 6),
                                  jax.random.key(0)).upload)))
    if not communicates:  # Local: nothing crosses, nothing to exclude
        assert int(m.faulty) == 0
        assert_trees_equal(new.server, state.server)
        return
    assert int(m.faulty) == 1
    np.testing.assert_array_equal(np.asarray(m.weights), np.asarray(m_ref.weights))
    assert_trees_equal(new.server, ref.server)
    assert all(np.isfinite(x).all() for x in leaves(new.server))
    for k in set(range(K)) - {bad}:
        assert_trees_equal(client(new.clients, k), client(ref.clients, k))
    assert_trees_equal(client(new.clients, bad), client(state.clients, bad))


# ----------------------------------------------------------------------------- dropout

def test_bad_dropout_is_refused():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout must be in"):
            federated.num_reporting(4, bad)
    with pytest.raises(ValueError, match="dropout must be in"):
        federated.make_round(counting_algorithm(), TRAIN, dropout=1.0)


def test_dropout_masks_participants_inside_the_jitted_round(setup, drop_fn):
    alg, train, state, round_fn = setup
    new, m = drop_fn(state, train)
    plain, m_plain = round_fn(state, train)

    w = np.asarray(m.weights)
    dropped = np.flatnonzero(w == 0)
    assert int(m.dropped) == 2 and int(m.faulty) == 0 and dropped.size == 2
    np.testing.assert_array_equal(np.asarray(m.participants), np.asarray(m_plain.participants))
    # the clients that reported trained exactly as without dropout (same keys) ...
    for k in set(range(K)) - set(dropped.tolist()):
        assert_trees_equal(client(new.clients, k), client(plain.clients, k))
        np.testing.assert_array_equal(np.asarray(m.client_metrics["train_loss"])[k],
                                      np.asarray(m_plain.client_metrics["train_loss"])[k])
    # ... the dropped ones trained too and keep what they trained (PFLlib), or roll back ...
    for k in dropped:
        assert_trees_equal(client(new.clients, k), client(plain.clients, k))
    rolled, _ = federated.make_round(alg, TRAIN, donate=False, dropout=0.5, dropped_keep_update=False)(state, train)
    for k in dropped:
        assert_trees_equal(client(rolled.clients, k), client(state.clients, k))
    # ... and the server is that of the round in which they had nothing to send
    absent = train
    for k in dropped:
        absent = with_n(absent, int(k), 0)
    ref, _ = round_fn(state, absent)
    assert_trees_equal(new.server, ref.server)
    # the dropout draw changes from round to round
    masks = {tuple(np.asarray(drop_fn(s, train)[1].weights) == 0)
             for s in [state._replace(round=jnp.int32(r)) for r in range(6)]}
    assert len(masks) > 1


def test_dropout_and_faults_are_counted_separately(setup, drop_fn):
    alg, train, state, round_fn = setup
    _, m = drop_fn(state, train)
    dropped = np.flatnonzero(np.asarray(m.weights) == 0)
    reporting = sorted(set(range(K)) - set(dropped.tolist()))
    # a dropped client's NaN is never seen; a reporting one's is
    _, m1 = drop_fn(poison(state, int(dropped[0])), train)
    assert (int(m1.dropped), int(m1.faulty)) == (2, 0)
    _, m2 = drop_fn(poison(state, reporting[0]), train)
    assert (int(m2.dropped), int(m2.faulty)) == (2, 1)


def counting_algorithm():
    """A model-free algorithm (compiles in milliseconds): the server holds a vector, each
    client uploads it plus its sample count and counts its own updates."""
    from omnifm_jax.algorithms import aggregation, base

    def client_update(server, client, data, key):
        noise = jax.random.uniform(key, (3,))
        return base.ClientResult(state={"updates": client["updates"] + 1},
                                 upload={"w": server["w"] + data.n + noise},
                                 metrics={"train_loss": jnp.float32(0.0)})

    def server_update(server, uploads, weights):
        return {"w": aggregation.weighted_mean(uploads["w"], weights, server["w"])}

    return base.FederatedAlgorithm(
        "counting", init_server=lambda key, x: {"w": jnp.zeros(3)},
        init_client=lambda key, server, x: {"updates": jnp.zeros((), jnp.int32)},
        client_update=client_update, server_update=server_update, predict=None)


def test_sequential_round_drops_the_same_participants():
    alg = counting_algorithm()
    train = jax.device_put(make_train([6, 5, 4, 6, 3, 2]))
    kw = dict(participation=0.75, dropout=0.5)
    vm_state = sq_state = federated.init(alg, jax.random.key(3), train)
    round_fn = federated.make_round(alg, train, donate=False, **kw)
    update = jax.jit(alg.client_update)
    for _ in range(4):
        vm_state, vm = round_fn(vm_state, train)
        sq_state, sq = federated.sequential_round(alg, sq_state, train, client_update=update, **kw)
        np.testing.assert_array_equal(np.asarray(vm.participants), np.asarray(sq.participants))
        np.testing.assert_array_equal(np.asarray(vm.weights), np.asarray(sq.weights))
        assert int(vm.dropped) == int(sq.dropped) == 2 and int(np.sum(np.asarray(vm.weights) == 0)) == 2
        np.testing.assert_allclose(np.asarray(vm_state.server["w"]), np.asarray(sq_state.server["w"]), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(vm_state.clients["updates"]),
                                      np.asarray(sq_state.clients["updates"]))
    # over the rounds every participant counted its update: dropped ones keep theirs (PFLlib)
    m = federated.num_participants(6, 0.75)
    assert m == 4
    assert int(np.sum(np.asarray(vm_state.clients["updates"]))) == 4 * m
