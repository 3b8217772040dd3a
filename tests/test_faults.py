"""Faulty and dropped-out clients.

A participant whose update is NaN/Inf is excluded from the aggregation and from the
knowledge-bank update of that round, keeps its personal state, and is counted: the
server after the round equals the server after the same round without that client.
Dropped-out participants (``client_dropout``) get weight 0 inside the jitted round, keep their
state, are counted separately, and do not change which clients are sampled or the keys
the others train with.

Those checks run on OmniFM and on every algorithm in tests/test_conformance.py (on its
shared per-algorithm setups); here: client_dropout's validation and the sequential reference's
client-dropout draw, on a model-free algorithm.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import make_clients  # noqa: E402

from omnifm_jax import federated
from omnifm_jax.data.federation import ClientArrays


def make_train(ns, n_max=6, size=8, seed=0) -> ClientArrays:
    return make_clients(ns, n_max, size=size, seed=seed)


NS = [6, 5, 4, 6]
TRAIN = make_train(NS)


# ----------------------------------------------------------------------------- client dropout

def test_bad_client_dropout_is_refused():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="client_dropout must be in"):
            federated.num_reporting(4, bad)
    with pytest.raises(ValueError, match="client_dropout must be in"):
        federated.make_round(counting_algorithm(), TRAIN, client_dropout=1.0)


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
    kw = dict(participation=0.75, client_dropout=0.5)
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
