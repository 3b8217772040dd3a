"""The privacy boundary as a structural property of the round.

What crosses from a client to the server is what ``server_update(server, uploads,
weights)`` receives inside the engine's jitted round. Checked for every registered
algorithm: the upload tree holds exactly the shared-parameter leaves (same paths as the
shared partition) and, for OmniFM only, one spectral embedding ``f32[spectral_dim]``, a
flag saying whether it computed one, and the bank-retrieval counts ``int32[bank_capacity]``
per participant; for SCAFFOLD only, its control-variate change (one leaf per shared
parameter); Local uploads nothing. BatchNorm running statistics are personal: they never
reach the server.
No personal parameter path, no leaf shaped like a personal parameter that is not also a
shared one, and nothing shaped like the client's data reaches the server.

The round is traced with ``jax.eval_shape`` (nothing compiled), with ``server_update``
wrapped to record the abstract values it is called with.
"""
from __future__ import annotations

import inspect

import jax
import numpy as np
import pytest

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms.labels import path_name
from omnifm_jax.data.federation import ClientArrays

K, M_PARTICIPATION = 4, 0.75
SPECTRAL_DIM, BANK = 8, 8
from _helpers import ALGORITHM_TEST_KWARGS, TinyBackbone, build_algorithm, make_clients  # noqa: E402

assert ALGORITHM_TEST_KWARGS["omnifm"]["spectral_dim"] == SPECTRAL_DIM and ALGORITHM_TEST_KWARGS["omnifm"]["bank_capacity"] == BANK


def make_train(n_max=6, size=8) -> ClientArrays:
    return make_clients([n_max] * K, n_max, size=size)


def build(name):
    return build_algorithm(name, backbone=TinyBackbone(), num_clients=K)


def named(tree):
    """{path: ShapeDtypeStruct} of the array leaves (None leaves are not leaves)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(p): jax.ShapeDtypeStruct(np.shape(v), v.dtype) for p, v in flat}


def trace_server_inputs(name):
    """Trace one round; return (algorithm, abstract state, what server_update received)."""
    alg = build(name)
    train = jax.device_put(make_train())
    state = jax.eval_shape(lambda: federated.init(alg, jax.random.key(0), train))
    seen = []

    def spy(*args, **kwargs):
        seen.append((args, kwargs))
        return alg.server_update(*args, **kwargs)

    round_fn = federated.make_round(alg._replace(server_update=spy), make_train(),
                                    participation=M_PARTICIPATION, donate=False, dropout=0.34)
    jax.eval_shape(round_fn, state, train)
    assert len(seen) == 1, "server_update must be called exactly once per round"
    return alg, state, train, seen[0]


@pytest.fixture(scope="module", params=algorithms.available(task="classification"))
def traced(request):
    return request.param, trace_server_inputs(request.param)


def test_server_update_signature_is_the_boundary():
    for name in algorithms.available(task="classification"):
        params = list(inspect.signature(build(name).server_update).parameters)
        assert params == ["server", "uploads", "weights"], name


def test_server_sees_its_state_the_uploads_and_weights_only(traced):
    name, (alg, state, train, (args, kwargs)) = traced
    m = federated.num_participants(K, M_PARTICIPATION)
    assert not kwargs and len(args) == 3
    server, uploads, weights = args
    # 1. its own state, nothing else
    assert jax.tree_util.tree_structure(server) == jax.tree_util.tree_structure(state.server)
    assert {k: (v.shape, v.dtype) for k, v in named(server).items()} == \
        {k: (v.shape, v.dtype) for k, v in named(state.server).items()}
    # 2. one weight per participant
    assert weights.shape == (m,) and weights.dtype == np.float32

    # 3. the uploads: shared-parameter leaves (+ OmniFM's embedding and counts), stacked over m
    shared = named(state.server.params)
    personal = named(state.clients.personal)  # stacked [K, ...]
    got = {k: (v.shape, v.dtype) for k, v in named(uploads).items()}
    expected = {} if name == "local" else {f"shared/{p}": ((m,) + v.shape, v.dtype) for p, v in shared.items()}
    if name == "omnifm":
        expected["extra/embedding"] = ((m, SPECTRAL_DIM), np.dtype(np.float32))
        expected["extra/has_embedding"] = ((m,), np.dtype(bool))
        expected["extra/hits"] = ((m, BANK), np.dtype(np.int32))
    if name == "scaffold":  # the control-variate change dc_i, one per shared parameter
        expected.update({f"extra/{p[len('params/'):]}": ((m,) + v.shape, v.dtype)
                         for p, v in shared.items() if p.startswith("params/")})
    assert got == expected

    # no personal parameter path, and no personal or data shape that is not a shared one
    upload_paths = {p.split("/", 1)[1] for p in got}
    assert not upload_paths & set(personal), sorted(upload_paths & set(personal))
    shared_shapes = {(m,) + v.shape for v in shared.values()}
    personal_shapes = {(m,) + v.shape[1:] for v in personal.values()} - shared_shapes
    # data-like leaves: a sample, a label or target per participant, or the whole split
    data_sigs = {((m,) + tuple(train.x.shape[1:]), np.dtype(train.x.dtype)),
                 ((m,) + tuple(train.y.shape[1:]), np.dtype(train.y.dtype)),
                 (tuple(train.x.shape), np.dtype(train.x.dtype)), (tuple(train.y.shape), np.dtype(train.y.dtype))}
    for shape, dtype in got.values():
        assert shape not in personal_shapes and (shape, np.dtype(dtype)) not in data_sigs
    if name == "local":
        assert not got  # Local communicates nothing
    if name in ("fedper", "omnifm"):
        assert personal, "these algorithms keep a personal part"
        assert any(p.startswith("params/head/") for p in personal)


def test_server_update_jaxpr_has_no_personal_or_data_inputs(traced):
    """The server update as a program: its inputs are the server state, the uploads and
    the weights (counted and shaped), never a [K, ...] client state or the data."""
    name, (alg, state, train, (args, _)) = traced
    jaxpr = jax.make_jaxpr(alg.server_update)(*args)
    in_shapes = [tuple(v.aval.shape) for v in jaxpr.jaxpr.invars]
    assert len(in_shapes) == len(jax.tree_util.tree_leaves(args))
    stacked_personal = {tuple(v.shape) for v in named(state.clients).values()}
    shared_and_server = {tuple(v.shape) for v in named(state.server).values()}
    m = federated.num_participants(K, M_PARTICIPATION)
    upload_shapes = {(m,) + s for s in shared_and_server}
    for shape in in_shapes:
        assert shape not in (stacked_personal - shared_and_server - upload_shapes)
        assert shape not in {tuple(train.x.shape), tuple(train.y.shape), (m,) + tuple(train.x.shape[1:])}


def test_client_metrics_never_reach_the_server(traced):
    """Training metrics (losses) stay out of the upload: the upload tree of a client has
    no leaf named like a metric."""
    name, (alg, state, train, (args, _)) = traced
    paths = set(named(args[1]))
    assert not any("loss" in p or "steps" in p for p in paths)
