"""Algorithms: FedAvg aggregation vs a float64 NumPy weighted mean, partition/combine, and
OmniFM's knowledge bank growing by the participants' uploads. Personal parameters (FedPer,
OmniFM) that never leave the client, Local that never communicates and OmniFM's unit-norm
uploads are checked in tests/test_conformance.py, on its shared per-algorithm setups.

Tiny federations (8x8 images, <= 10 samples per client) and a one-convolution backbone.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import NUM_CLASSES, TinyBackbone, make_clients  # noqa: E402

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms import aggregation, base, labels
from omnifm_jax.tasks import classification

OMNIFM_KW = dict(spectral_dim=8, attn_dim=8, bank_capacity=8, num_suffix=2, top_k=2)


def build(name, **kw):
    return algorithms.build(name, task=classification(NUM_CLASSES), backbone=TinyBackbone(),
                            optimizer=optax.sgd(0.1), local_epochs=1, batch_size=4, **kw)


TRAIN = make_clients([10, 7, 5, 9], 10, seed=2)


def client(tree, k):
    return jax.tree_util.tree_map(lambda a: a[k], tree)


def client_data(train, k):
    return base.ClientData(jnp.asarray(train.x), jnp.asarray(train.y), jnp.asarray(train.offsets[k]),
                           jnp.asarray(train.n[k]), capacity=int(train.n.max()))


def named_leaves(tree):
    """{path: leaf} of the non-None leaves."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {labels.path_name(p): np.asarray(v) for p, v in flat}


# ----------------------------------------------------------------------------- aggregation

@pytest.fixture(scope="module")
def fedavg_uploads():
    alg = build("fedavg")
    state = federated.init(alg, jax.random.key(0), TRAIN)
    update = jax.jit(alg.client_update)
    res = [update(state.server, client(state.clients, k), client_data(TRAIN, k), jax.random.key(100 + k))
           for k in range(4)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *[r.upload for r in res])
    return alg, state, stacked


def test_server_update_is_numpy_weighted_mean(fedavg_uploads):
    alg, state, uploads = fedavg_uploads
    w = TRAIN.n.astype(np.float64)
    new = jax.jit(alg.server_update)(state.server, uploads, jnp.asarray(w, jnp.float32))
    got, shared = named_leaves(new.params), named_leaves(uploads.shared)
    assert set(got) == set(shared) and got
    for path, stack in shared.items():
        ref = np.tensordot(w, stack.astype(np.float64), axes=1) / w.sum()
        np.testing.assert_allclose(got[path].astype(np.float64), ref, rtol=1e-5, atol=1e-7, err_msg=path)
    # the uploads differ between clients, so a plain mean would not do
    stack = next(iter(shared.values())).astype(np.float64)
    assert np.max(np.abs(stack.mean(0) - np.tensordot(w, stack, axes=1) / w.sum())) > 1e-7


def test_weight_zero_participant_with_nan_is_excluded(fedavg_uploads):
    alg, state, uploads = fedavg_uploads
    poisoned = jax.tree_util.tree_map(lambda a: a.at[1].set(jnp.nan), uploads)
    w = np.array([10, 0, 5, 9], np.float64)
    new = jax.jit(alg.server_update)(state.server, poisoned, jnp.asarray(w, jnp.float32))
    got = named_leaves(new.params)
    for path, stack in named_leaves(uploads.shared).items():
        keep = [0, 2, 3]
        ref = np.tensordot(w[keep], stack[keep].astype(np.float64), axes=1) / w[keep].sum()
        assert np.all(np.isfinite(got[path])), path
        np.testing.assert_allclose(got[path].astype(np.float64), ref, rtol=1e-5, atol=1e-7, err_msg=path)


def test_weighted_mean_falls_back_when_all_weights_zero():
    stacked = {"a": jnp.array([[1.0, 2.0], [jnp.nan, 4.0]]), "b": jnp.array([[3], [5]], jnp.int32)}
    fallback = {"a": jnp.array([7.0, 8.0]), "b": jnp.array([9], jnp.int32)}
    out = aggregation.weighted_mean(stacked, jnp.zeros(2), fallback)
    np.testing.assert_array_equal(np.asarray(out["a"]), [7.0, 8.0])
    np.testing.assert_array_equal(np.asarray(out["b"]), [9])
    assert out["b"].dtype == jnp.int32
    out = aggregation.weighted_mean(stacked, jnp.array([1.0, 3.0]), fallback)
    a = np.asarray(out["a"])  # a NaN with a positive weight is not hidden by the mean
    assert np.isnan(a[0]) and a[1] == pytest.approx((2 + 12) / 4)
    # integer leaves are averaged in float and cast back: (3 + 15) / 4 = 4.5 -> 4
    assert int(out["b"][0]) == 4


def test_weighted_mean_ignores_nan_with_zero_weight():
    stacked = {"a": jnp.array([[1.0, 2.0], [jnp.nan, jnp.inf], [3.0, 6.0]])}
    out = aggregation.weighted_mean(stacked, jnp.array([1.0, 0.0, 3.0]), {"a": jnp.zeros(2)})
    np.testing.assert_allclose(np.asarray(out["a"]), [(1 + 9) / 4, (2 + 18) / 4])


# ----------------------------------------------------------------------------- personal parameters

# Personal paths, non-participants untouched, personal parameters never averaged, shared ones
# identical after a round (FedPer, OmniFM): tests/test_conformance.py, on its shared setups.

def test_partition_combine_roundtrip():
    alg = build("fedper")
    state = federated.init(alg, jax.random.key(0), TRAIN)
    full = labels.combine(state.server.params, client(state.clients.personal, 0))
    mask = labels.personal_mask(full, (r"^params/head/",))
    shared, personal = labels.partition(full, mask)
    assert jax.tree_util.tree_structure(labels.combine(shared, personal)) == jax.tree_util.tree_structure(full)
    assert named_leaves(shared).keys() == named_leaves(state.server.params).keys()


# ----------------------------------------------------------------------------- Local
# Local never communicates: tests/test_conformance.py.


# ----------------------------------------------------------------------------- OmniFM bank

def test_omnifm_bank_grows_by_participants_until_capacity():
    rho, capacity = 0.5, 8
    kw = dict(OMNIFM_KW, bank_capacity=capacity, rho=rho, min_hits=0)  # min_hits=0: no pruning
    alg = build("omnifm", **kw)
    train = jax.device_put(TRAIN)
    state = federated.init(alg, jax.random.key(4), train)
    assert int(np.sum(np.asarray(state.server.algorithm_state.valid))) == 0
    round_fn = federated.make_round(alg, TRAIN, participation=0.5, donate=False)
    update = jax.jit(alg.client_update)

    # round 0, reconstructed by hand: uploads are unit-norm; the bank stores rho * upload
    sample_key, client_key = jax.random.split(jax.random.fold_in(state.key, state.round))
    idx = np.asarray(federated.sample_participants(sample_key, 4, 2))
    embs = []
    for k in idx:
        res = update(state.server, client(state.clients, k), client_data(TRAIN, k),
                     jax.random.fold_in(client_key, int(k)))
        e = np.asarray(res.upload.algorithm_upload["embedding"], np.float64)
        np.testing.assert_allclose(np.linalg.norm(e), 1.0, rtol=1e-5)
        assert int(np.sum(np.asarray(res.upload.algorithm_upload["hits"]))) == 0  # empty bank: nothing retrieved
        embs.append(e)

    valid_counts = []
    for r in range(6):
        state, m = round_fn(state, train)
        bank = state.server.algorithm_state
        valid = np.asarray(bank.valid)
        valid_counts.append(int(valid.sum()))
        norms = np.linalg.norm(np.asarray(bank.embeddings, np.float64), axis=1)
        assert np.all(norms[valid] <= rho * (1 + 1e-5))
        np.testing.assert_allclose(norms[valid], rho, rtol=1e-5)  # unit uploads projected onto B(rho)
        assert np.all(norms[~valid] == 0)
        if r == 0:
            stored = np.asarray(bank.embeddings, np.float64)[valid]
            np.testing.assert_allclose(np.sort(stored, axis=0), np.sort(rho * np.stack(embs), axis=0),
                                       rtol=1e-4, atol=1e-6)
    assert valid_counts == [2, 4, 6, 8, 8, 8], valid_counts


def test_omnifm_client_without_a_step_inserts_nothing():
    """A participant that ran no step (drop_last, n < batch) has no spectral embedding: it
    uploads the flag ``has_embedding=False`` and the bank does not take its zero vector."""
    data = make_clients([2, 9, 8], seed=6)
    alg = build("omnifm", **dict(OMNIFM_KW, min_hits=0))
    state = federated.init(alg, jax.random.key(2), data)
    new, m = federated.make_round(alg, data, donate=False)(state, jax.device_put(data))
    np.testing.assert_array_equal(np.asarray(m.client_metrics["local_steps"]), [0, 2, 2])
    bank = new.server.algorithm_state
    assert int(np.sum(np.asarray(bank.valid))) == 2  # the two clients that trained
    norms = np.linalg.norm(np.asarray(bank.embeddings)[np.asarray(bank.valid)], axis=1)
    assert np.all(norms > 0.5)


def test_omnifm_prunes_stale_prototypes():
    """Eq. 8 with the retrieval frequency of the latest round (hit_decay=0): a prototype that
    is no longer retrieved is pruned once old enough; with a cumulative count (hit_decay=1,
    the old behaviour) a prototype retrieved once would stay for ever."""
    from omnifm_jax import bank as bank_lib

    b = bank_lib.init(4, 3)
    b = bank_lib.insert(b, jnp.eye(3)[:2], rho=1.0)
    b = bank_lib.add_hits(b, jnp.asarray([1.0, 1.0, 0.0, 0.0]), decay=0.0)   # both retrieved once
    b = bank_lib.tick(bank_lib.tick(b))
    fresh = bank_lib.add_hits(b, jnp.asarray([3.0, 0.0, 0.0, 0.0]), decay=0.0)  # slot 1 stale now
    pruned = bank_lib.prune(fresh, min_hits=1, warmup=2)
    np.testing.assert_array_equal(np.asarray(pruned.valid), [True, False, False, False])
    cumulative = bank_lib.prune(bank_lib.add_hits(b, jnp.asarray([3.0, 0.0, 0.0, 0.0]), decay=1.0),
                                min_hits=1, warmup=2)
    np.testing.assert_array_equal(np.asarray(cumulative.valid), [True, True, False, False])
    # through the algorithm: with hit_decay=0 the server's hits are the last round's counts
    alg = build("omnifm", **dict(OMNIFM_KW, min_hits=0))
    train = jax.device_put(TRAIN)
    state = federated.init(alg, jax.random.key(5), train)
    fn = federated.make_round(alg, TRAIN, donate=False)
    state, _ = fn(state, train)
    state, _ = fn(state, train)
    hits_total = float(np.sum(np.asarray(state.server.algorithm_state.hits)))
    steps_samples = sum((int(n) // 4) * 4 for n in TRAIN.n)
    assert hits_total == 2 * steps_samples  # this round's retrievals only, not two rounds'


def test_omnifm_task_loss_trains_the_spectral_tokenizer():
    """Fig. 3 fuses local and retrieved spectral embeddings: with the local s in ECA the task
    loss alone (lambda_align=0, empty bank) moves the tokenizer; with it out (the old wiring)
    the tokenizer gets no gradient at all."""
    moved = {}
    for local in (True, False):
        alg = build("omnifm", **dict(OMNIFM_KW, lambda_align=0.0, local_spectral_in_eca=local))
        state = federated.init(alg, jax.random.key(3), TRAIN)
        res = jax.jit(alg.client_update)(state.server, client(state.clients, 0), client_data(TRAIN, 0),
                                         jax.random.key(1))
        before = state.server.params["params"]["tokenizer"]
        after = res.upload.shared["params"]["tokenizer"]
        moved[local] = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                           for a, b in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before)))
    assert moved[True] > 1e-5
    assert moved[False] == 0.0


def test_omnifm_rejects_bad_hparams():
    with pytest.raises(ValueError, match="top_k"):
        build("omnifm", **dict(OMNIFM_KW, top_k=9))
    with pytest.raises(ValueError, match="sharing"):
        build("omnifm", **dict(OMNIFM_KW, sharing="nope"))
    with pytest.raises(ValueError, match="hit_decay"):
        build("omnifm", **dict(OMNIFM_KW, hit_decay=1.5))
    with pytest.raises(ValueError, match="unknown algorithm"):
        algorithms.get("nope")


def test_fedbn_keeps_normalisation_layers_personal():
    """FedBN: FedAvg with every BatchNorm's scale and bias personal (running statistics are
    personal for every algorithm); the convolution is shared."""
    from _helpers import TinyBNBackbone

    alg = algorithms.build("fedbn", task=classification(NUM_CLASSES), backbone=TinyBNBackbone(),
                           optimizer=optax.sgd(0.1), local_epochs=1, batch_size=4)
    state = federated.init(alg, jax.random.key(0), TRAIN)
    personal = set(named_leaves(state.clients.personal))
    assert personal == {"params/backbone/norm/scale", "params/backbone/norm/bias",
                        "batch_stats/backbone/norm/mean", "batch_stats/backbone/norm/var"}
    shared = set(named_leaves(state.server.params))
    assert "params/backbone/conv/kernel" in shared and "params/head/fc/kernel" in shared
    train = jax.device_put(TRAIN)
    new, _ = federated.make_round(alg, TRAIN, donate=False)(state, train)
    scales = np.asarray(new.clients.personal["params"]["backbone"]["norm"]["scale"])
    assert np.max(np.abs(scales[0] - scales[1])) > 1e-6  # each client's own
