"""The contract between the engine and every registered algorithm, checked on ONE setup per
algorithm: every client-mapping strategy equals the sequential reference round, a NaN upload
is excluded exactly like an absent client, a checkpointed state resumes bit for bit, the
privacy boundary (what ``server_update`` receives), evaluation with each client's own model;
and, on the same setups, the algorithm-specific checks that need a trained round (personal
parameters that never leave the client, Local that never communicates, OmniFM's bank,
faulty and dropped-out participants).

Cost. Compiling a federated round dominates this suite's time on CPU. Each algorithm's model,
initial state and jitted round functions are built ONCE per process (:func:`setup`, cached)
and every check of that algorithm reuses them: the same jitted functions called with the
same shapes, so XLA compiles each program once. All checks of one algorithm carry
``xdist_group(<algorithm>)``; with ``--dist loadgroup`` (pyproject's addopts) they run on one
worker.

The setup: 4 clients of 10, 7, 5 and 9 random 8x8 images, a one-convolution backbone,
participation 3/4 (3 participants drawn per round), SGD at lr 0.1, batch 4, one epoch;
two rounds from ``init(key 3)`` through every mapping strategy and the sequential round.
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import ALGORITHM_TEST_KWARGS, NUM_CLASSES, TinyBackbone, build_algorithm, make_clients

from omnifm_jax import algorithms, federated
from omnifm_jax import checkpoint as ck
from omnifm_jax.algorithms import base, labels
from omnifm_jax.algorithms.labels import path_name
from omnifm_jax.data.federation import ClientArrays
from omnifm_jax.tasks import classification

K, PARTICIPATION = 4, 0.75
M = federated.num_participants(K, PARTICIPATION)  # 3 participants per round
TRAIN = make_clients([10, 7, 5, 9], seed=1)
ALGORITHMS = algorithms.available(task="classification")
STRATEGIES = [None, 1, 2]  # all at once (vmap), one by one (lax.map: CPU), sorted chunks of 2
#: every strategy for the engine's first two algorithms; one by one and sorted vmapped chunks
#: (which cover vmap) for the rest, to keep the suite's compile time in bounds
ALL_STRATEGIES = ("fedavg", "omnifm")
SPECTRAL_DIM, BANK = 8, 8
assert ALGORITHM_TEST_KWARGS["omnifm"]["spectral_dim"] == SPECTRAL_DIM
assert ALGORITHM_TEST_KWARGS["omnifm"]["bank_capacity"] == BANK
assert M == 3


def per_algorithm(names):
    """Parametrize over ``names``, each test in the xdist group of its algorithm (setup)."""
    return pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xdist_group(n)) for n in names])


EVERY = per_algorithm(ALGORITHMS)


# ----------------------------------------------------------------------------- tree helpers

def leaves(tree):
    return [np.asarray(x) for x in jax.tree_util.tree_leaves(tree)]


def leaves64(tree):
    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(tree)]


def client(tree, k):
    return jax.tree_util.tree_map(lambda a: a[k], tree)


def assert_trees_close(a, b, *, rtol=1e-5, atol=1e-6):
    sa, sb = jax.tree_util.tree_structure(a), jax.tree_util.tree_structure(b)
    assert sa == sb, f"tree structures differ: {sa} vs {sb}"
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def assert_trees_equal(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_array_equal(x, y)  # NaN == NaN here


def max_change(a, b):
    return max(np.max(np.abs(x - y)) for x, y in zip(leaves64(a), leaves64(b)))


def named_leaves(tree):
    """{path: leaf} of the non-None leaves."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {labels.path_name(p): np.asarray(v) for p, v in flat}


def named(tree):
    """{path: ShapeDtypeStruct} of the array leaves (None leaves are not leaves)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {path_name(p): jax.ShapeDtypeStruct(np.shape(v), v.dtype) for p, v in flat}


def array_leaves(tree):
    return [x for x in jax.tree_util.tree_leaves(tree) if hasattr(x, "shape")]


def with_n(train: ClientArrays, k: int, n: int) -> ClientArrays:
    """``train`` with client ``k``'s sample count set to ``n`` (0: it has nothing to send)."""
    ns = np.asarray(train.n).copy()
    ns[k] = n
    return train._replace(n=jnp.asarray(ns))


def poison(state, k):
    """Client ``k``'s personal parameters set to NaN: its local training diverges."""
    personal = jax.tree_util.tree_map(lambda a: a.at[k].set(jnp.nan), state.clients.personal)
    return state._replace(clients=state.clients._replace(personal=personal))


def client_data(train, k):
    return base.ClientData(jnp.asarray(train.x), jnp.asarray(train.y), jnp.asarray(train.offsets[k]),
                           jnp.asarray(train.n[k]), capacity=int(train.n.max()))


# ----------------------------------------------------------------------------- one setup per algorithm

class Round(NamedTuple):
    states: dict    # strategy -> state after this round
    metrics: dict   # strategy -> RoundMetrics of this round
    seq_state: federated.FederatedState
    seq_metrics: federated.RoundMetrics


class Setup:
    """An algorithm on :data:`TRAIN` with its jitted programs, each built on first use and
    kept: ``round(chunk)`` (participation 3/4), the NaN-upload round, the jitted
    ``client_update`` (the sequential reference's), the compiled ``init``."""

    def __init__(self, name: str, **overrides):
        self.name = name
        self.alg = build_algorithm(VARIANTS.get(name, (name,))[0], backbone=TinyBackbone(), num_clients=K,
                                   **overrides)
        self.train = jax.device_put(TRAIN)
        self._rounds = {}

    @functools.cached_property
    def _init(self):
        # federated.init's program (its body, compiled the way it compiles it), compiled once
        # for every key
        fn = jax.jit(lambda key: federated.init(self.alg, key, self.train))
        return fn.lower(jax.random.key(0)).compile(compiler_options=federated.init_compiler_options())

    def init(self, seed: int) -> federated.FederatedState:
        return self._init(jax.random.key(seed))

    def round(self, chunk=1, participation=PARTICIPATION, **kw):
        key = (chunk, participation, tuple(sorted(kw.items())))
        if key not in self._rounds:
            self._rounds[key] = federated.make_round(self.alg, TRAIN, participation=participation, donate=False,
                                                     client_chunk=chunk, **kw)
        return self._rounds[key]

    @functools.cached_property
    def update(self):
        return jax.jit(self.alg.client_update)

    @functools.cached_property
    def s0(self):
        return self.init(3)

    @functools.cached_property
    def history(self):
        """Two rounds from ``s0`` through make_round (every strategy) and sequential_round."""
        strategies = STRATEGIES if self.name in ALL_STRATEGIES else [1, 2]
        states = {c: self.s0 for c in strategies}
        ss = self.s0
        out = []
        for _ in range(2):
            res = {}
            for c in strategies:
                states[c], res[c] = self.round(c)(states[c], self.train)
            ss, ms = federated.sequential_round(self.alg, ss, self.train, participation=PARTICIPATION,
                                                client_update=self.update)
            out.append(Round(dict(states), res, ss, ms))
        return out

    # the one-by-one (CPU) strategy's states and metrics: s1 = round 0 of s0, s2 = round 1 of s1
    @property
    def s1(self):
        return self.history[0].states[1]

    @property
    def s2(self):
        return self.history[1].states[1]

    @property
    def m0(self):
        return self.history[0].metrics[1]

    @property
    def m1(self):
        return self.history[1].metrics[1]

    @functools.cached_property
    def bad(self) -> int:
        """A participant of round 0 (of ``s0``): the client whose upload the NaN round poisons."""
        return int(np.asarray(self.m0.participants)[1])

    @functools.cached_property
    def nan_round(self):
        """The round in which client :attr:`bad`'s upload holds NaN (every inexact leaf)."""
        alg, bad_offset = self.alg, int(TRAIN.offsets[self.bad])

        def nan_upload(server, client, data, key):
            res = alg.client_update(server, client, data, key)
            hit = data.offset == bad_offset
            poison_leaf = lambda a: (jnp.where(hit, jnp.full_like(a, jnp.nan), a)
                                     if jnp.issubdtype(a.dtype, jnp.inexact) else a)
            return res._replace(upload=jax.tree_util.tree_map(poison_leaf, res.upload))

        return federated.make_round(alg._replace(client_update=nan_upload), TRAIN, participation=PARTICIPATION,
                                    donate=False, client_chunk=1)

    @functools.cached_property
    def traced(self):
        """Trace one round (``jax.eval_shape``, nothing compiled) with ``server_update``
        wrapped to record what it receives: (abstract state, its args, its kwargs)."""
        alg = self.alg
        state = jax.eval_shape(lambda: federated.init(alg, jax.random.key(0), self.train))
        seen = []

        def spy(*args, **kwargs):
            seen.append((args, kwargs))
            return alg.server_update(*args, **kwargs)

        round_fn = federated.make_round(alg._replace(server_update=spy), TRAIN, participation=PARTICIPATION,
                                        donate=False, client_dropout=0.34)
        jax.eval_shape(round_fn, state, self.train)
        assert len(seen) == 1, "server_update must be called exactly once per round"
        return state, seen[0]


_SETUPS = {}
#: setups of an algorithm with other hyper-parameters: name -> (algorithm, hyper-parameters)
VARIANTS = {"omnifm_wo_gskr": ("omnifm", {"use_gskr": False})}


def setup(name: str) -> Setup:
    """The process's one :class:`Setup` of algorithm (or variant) ``name``."""
    if name not in _SETUPS:
        _SETUPS[name] = Setup(name, **VARIANTS.get(name, (name, {}))[1])
    return _SETUPS[name]


@pytest.fixture
def st(name) -> Setup:
    """The algorithm's setup, its two rounds done (their compile time shows as this setup's)."""
    s = setup(name)
    if name in ALGORITHMS:
        s.history  # noqa: B018
    return s


# ----------------------------------------------------------------------------- strategies == sequential

@EVERY
def test_every_strategy_equals_sequential_round(st):
    """vmap over all, one-by-one (the CPU strategy) and sorted chunks (the accelerator
    strategy, with a remainder chunk) give the sequential reference's round."""
    for rnd in st.history:
        for c in rnd.states:
            sv, mv, ss, ms = rnd.states[c], rnd.metrics[c], rnd.seq_state, rnd.seq_metrics
            np.testing.assert_array_equal(np.asarray(mv.participants), np.asarray(ms.participants))
            assert len(np.unique(np.asarray(mv.participants))) == 3
            np.testing.assert_allclose(np.asarray(mv.weights), np.asarray(ms.weights))
            assert int(mv.faulty) == int(ms.faulty) == 0
            assert int(sv.round) == int(ss.round)
            assert_trees_close(sv.server.params, ss.server.params)
            assert_trees_close(sv.server.algorithm_state, ss.server.algorithm_state)
            assert_trees_close(sv.clients, ss.clients)
            assert_trees_close(mv.client_metrics, ms.client_metrics)
    sv_last = st.s2
    if st.name != "local":  # Local's server never changes
        assert max_change(sv_last.server.params, st.s0.server.params) > 1e-4
    if st.name == "omnifm":
        assert int(np.sum(np.asarray(sv_last.server.algorithm_state.valid))) > 0


@EVERY
def test_executed_client_steps_per_strategy(st):
    """One by one runs exactly the needed steps; vmap runs the longest for everyone; sorted
    chunks of 2 run each chunk's longest."""
    for rnd in st.history:
        res = rnd.metrics
        steps = np.asarray(res[1].client_metrics["local_steps"])
        assert int(res[1].useful_steps) == int(res[1].executed_steps) == steps.sum()
        if None in res:
            assert int(res[None].executed_steps) == len(steps) * steps.max()
        ordered = np.sort(steps)[::-1]
        assert int(res[2].executed_steps) == 2 * ordered[0] + 1 * ordered[2]


@EVERY
def test_round_weights_are_sample_counts(st):
    for rnd in st.history:
        idx = np.asarray(rnd.metrics[1].participants)
        np.testing.assert_array_equal(np.asarray(rnd.metrics[1].weights), TRAIN.n[idx].astype(np.float32))


# ----------------------------------------------------------------------------- NaN uploads

@EVERY
def test_every_algorithm_ignores_a_nan_upload(st):
    """A participant whose upload holds NaN is left out exactly as one that sends nothing
    (n = 0, weight 0): the server state of the two rounds is the same bit for bit, the other
    clients are unaffected, and its own state stays as it was."""
    state, train, bad = st.s0, st.train, st.bad
    new, m = st.nan_round(state, train)
    ref, m_ref = st.round(1)(state, with_n(train, bad, 0))
    assert bad in np.asarray(m.participants).tolist()
    communicates = bool(jax.tree_util.tree_leaves(jax.eval_shape(
        lambda: st.alg.client_update(state.server, client(state.clients, 0),
                                     algorithms.ClientData(train.x, train.y, train.offsets[0], train.n[0], 10),
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


@per_algorithm(["fedavg"])
def test_nan_upload_gets_weight_zero_and_keeps_old_state(st):
    """A participant whose upload is NaN is excluded from the mean and keeps its old state;
    the server's params are the NumPy n_k-weighted mean of the OTHER uploads."""
    state, train, poisoned = st.s0, st.train, st.bad
    new, metrics = st.nan_round(state, train)
    idx = np.asarray(metrics.participants)
    assert int(metrics.faulty) == 1
    w = np.where(idx == poisoned, 0, TRAIN.n[idx]).astype(np.float64)
    np.testing.assert_array_equal(np.asarray(metrics.weights), w)

    _, client_key = jax.random.split(jax.random.fold_in(state.key, state.round))
    uploads, new_states = [], {}
    for k in idx:
        c = client(state.clients, k)
        d = base.ClientData(train.x, train.y, train.offsets[k], train.n[k], capacity=10)
        res = st.update(state.server, c, d, jax.random.fold_in(client_key, int(k)))
        uploads.append(leaves64(res.upload.shared))
        new_states[int(k)] = res.state
    for j, leaf in enumerate(jax.tree_util.tree_leaves(new.server.params)):
        ref = sum(w[s] * uploads[s][j] for s in range(M) if idx[s] != poisoned) / w.sum()
        np.testing.assert_allclose(np.asarray(leaf, np.float64), ref, rtol=1e-5, atol=1e-6)
        assert np.all(np.isfinite(np.asarray(leaf)))
    for k in range(K):
        got = client(new.clients, k)
        kept = k == poisoned or k not in new_states
        want = client(state.clients, k) if kept else new_states[k]
        assert_trees_close(got, want)


# ----------------------------------------------------------------------------- checkpoint: exact resume

@EVERY
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_every_algorithm_resumes_exactly(st, tmp_path):
    """Round 1 saved and restored (orbax, into the structure of a fresh init), then round 2:
    the same state, bit for bit, as two rounds without the interruption; the algorithm's own
    slots (control variates, gradient memories, personal models, the bank, server optimizer
    state) included."""
    round_fn = st.round(1)
    s1, straight = st.s1, st.s2  # two rounds of round_fn from s0
    c = ck.RunCheckpointer(tmp_path / "ck", keep=2)
    try:
        c.save(s1, {"algorithm": st.name})
        restored, _ = c.restore(1, st.init(99))
    finally:
        c.close()
    assert federated.state_hash(restored) == federated.state_hash(s1)
    resumed, _ = round_fn(restored, st.train)
    assert federated.state_hash(resumed) == federated.state_hash(straight)


# ----------------------------------------------------------------------------- the privacy boundary
# What crosses from a client to the server is what ``server_update(server, uploads, weights)``
# receives inside the engine's jitted round. The upload tree holds exactly the shared-parameter
# leaves (same paths as the shared partition) and, for OmniFM only, one spectral embedding
# ``f32[spectral_dim]``, a flag saying whether it computed one, and the bank-retrieval counts
# ``int32[bank_capacity]`` per participant; for SCAFFOLD only, its control-variate change (one
# leaf per shared parameter); Local uploads nothing. BatchNorm running statistics are personal:
# they never reach the server. No personal parameter path, no leaf shaped like a personal
# parameter that is not also a shared one, and nothing shaped like the client's data reaches the
# server. The round is traced with ``jax.eval_shape`` (nothing compiled), with ``server_update``
# wrapped to record the abstract values it is called with.

@per_algorithm(ALGORITHMS)
def test_server_update_signature_is_the_boundary(name):
    params = list(inspect.signature(setup(name).alg.server_update).parameters)
    assert params == ["server", "uploads", "weights"], name


@per_algorithm(ALGORITHMS)
def test_server_sees_its_state_the_uploads_and_weights_only(name):
    st = setup(name)
    state, (args, kwargs) = st.traced
    train = st.train
    m = federated.num_participants(K, PARTICIPATION)
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
        expected["algorithm_upload/embedding"] = ((m, SPECTRAL_DIM), np.dtype(np.float32))
        expected["algorithm_upload/has_embedding"] = ((m,), np.dtype(bool))
        expected["algorithm_upload/hits"] = ((m, BANK), np.dtype(np.int32))
    if name == "scaffold":  # the control-variate change dc_i, one per shared parameter
        expected.update({f"algorithm_upload/{p[len('params/'):]}": ((m,) + v.shape, v.dtype)
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


@per_algorithm(ALGORITHMS)
def test_server_update_jaxpr_has_no_personal_or_data_inputs(name):
    """The server update as a program: its inputs are the server state, the uploads and
    the weights (counted and shaped), never a [K, ...] client state or the data."""
    st = setup(name)
    state, (args, _) = st.traced
    train = st.train
    jaxpr = jax.make_jaxpr(st.alg.server_update)(*args)
    in_shapes = [tuple(v.aval.shape) for v in jaxpr.jaxpr.invars]
    assert len(in_shapes) == len(jax.tree_util.tree_leaves(args))
    stacked_personal = {tuple(v.shape) for v in named(state.clients).values()}
    shared_and_server = {tuple(v.shape) for v in named(state.server).values()}
    m = federated.num_participants(K, PARTICIPATION)
    upload_shapes = {(m,) + s for s in shared_and_server}
    for shape in in_shapes:
        assert shape not in (stacked_personal - shared_and_server - upload_shapes)
        assert shape not in {tuple(train.x.shape), tuple(train.y.shape), (m,) + tuple(train.x.shape[1:])}


@per_algorithm(ALGORITHMS)
def test_client_metrics_never_reach_the_server(name):
    """Training metrics (losses) stay out of the upload: the upload tree of a client has
    no leaf named like a metric."""
    _, (args, _) = setup(name).traced
    paths = set(named(args[1]))
    assert not any("loss" in p or "steps" in p for p in paths)


# ----------------------------------------------------------------------------- evaluation

@per_algorithm(["fedper", "omnifm_wo_gskr"])
def test_evaluation_equals_each_clients_model_on_its_own_samples(st):
    """Ragged evaluation in batches of 3 (batches never mix clients; last batches padded)
    gives, per sample, the logits of the client's own personalised model applied to all its
    samples at once. OmniFM w/o GSKR uses a batch mean of s: padding must not reach it.
    Evaluated after one round, so that every client's model differs from every other's."""
    alg, train = st.alg, st.train
    task = classification(NUM_CLASSES)
    state, _ = st.round(1)(st.s0, train)
    ev = federated.make_evaluate(alg, task, TRAIN, batch_size=3)
    got = ev(state, train)
    predict = jax.jit(alg.predict)  # the same function; jitted, it compiles once per batch width
    assert got["logits"].shape == (int(TRAIN.n.sum()), NUM_CLASSES)
    if st.name == "omnifm_wo_gskr":
        # batch means over whole clients differ from batch means over 3: compare per batch
        plan = ev.plan
        assert set(plan.width.tolist()) == {1, 2, 3}  # 10 = 3+3+3+1, 7 = 3+3+1, 5 = 3+2, 9 = 3+3+3
        for c, s0, cnt in zip(plan.client, plan.start, plan.count):
            x = task.scale_inputs(jnp.asarray(TRAIN.x[s0:s0 + cnt]))
            want = predict(state.server, client(state.clients, c), x)
            np.testing.assert_allclose(got["logits"][s0:s0 + cnt], np.asarray(want), rtol=1e-5, atol=1e-5)
        return
    for k in range(K):
        n, off = int(TRAIN.n[k]), int(TRAIN.offsets[k])
        x = task.scale_inputs(jnp.asarray(TRAIN.x[off:off + n]))
        want = predict(state.server, client(state.clients, k), x)
        np.testing.assert_allclose(got["logits"][off:off + n], np.asarray(want), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["label"], TRAIN.y)
    summary = federated.summarize(task, got, TRAIN.n)
    assert [c["n"] for c in summary["clients"]] == TRAIN.n.tolist()


# ----------------------------------------------------------------------------- personal parameters

def personal_paths(alg_state):
    return set(named_leaves(client(alg_state.clients.personal, 0)))


PERSONALISED = per_algorithm(["fedper", "omnifm"])


@PERSONALISED
def test_personal_paths_are_the_documented_ones(st):
    paths = personal_paths(st.s0)
    pattern = {"fedper": r"^params/head/", "omnifm": r"^params/(head|prompt)/"}[st.name]
    assert paths and all(re.match(pattern, p) for p in paths), paths
    if st.name == "omnifm":
        assert "params/prompt/suffix" in paths
    # the server holds exactly the complement
    server_paths = set(named_leaves(st.s0.server.params))
    assert not paths & server_paths
    assert any(p.startswith("params/backbone/") for p in server_paths)
    if st.name == "omnifm":
        assert any(p.startswith("params/tokenizer/") for p in server_paths)
        assert any(p.startswith("params/eca/") for p in server_paths)


@PERSONALISED
def test_non_participants_personal_state_unchanged(st):
    state0, state1, m = st.s0, st.s1, st.m0
    idx = set(np.asarray(m.participants).tolist())
    assert len(idx) == M
    for k in range(K):
        before, after = client(state0.clients, k), client(state1.clients, k)
        same = all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(before),
                                                        jax.tree_util.tree_leaves(after)))
        assert same == (k not in idx), f"client {k}, participants {sorted(idx)}"


@PERSONALISED
def test_personal_params_are_not_averaged(st):
    state1, m = st.s1, st.m0
    parts = np.asarray(m.participants).tolist()
    for a, i in enumerate(parts):  # every pair of participants
        for j in parts[a + 1:]:
            pi, pj = named_leaves(client(state1.clients.personal, i)), named_leaves(client(state1.clients.personal, j))
            for path in pi:
                mean = 0.5 * (pi[path] + pj[path])
                assert not np.allclose(pi[path], pj[path]), path
                assert not np.allclose(pi[path], mean) and not np.allclose(pj[path], mean), path


@PERSONALISED
def test_shared_params_identical_across_clients_after_round(st):
    state1 = st.s1
    server = named_leaves(state1.server.params)
    for k in range(K):
        full = labels.combine(state1.server.params, client(state1.clients.personal, k))
        full = named_leaves(full)
        assert set(full) == set(server) | personal_paths(state1)
        for path, v in server.items():
            np.testing.assert_array_equal(full[path], v)


# ----------------------------------------------------------------------------- Local

@per_algorithm(["local"])
def test_local_never_communicates(st):
    state = st.s0
    assert array_leaves(state.server.params) == []
    h0 = federated.state_hash(state.server)
    for rnd in st.history:  # two rounds, every strategy
        for s in rnd.states.values():
            assert federated.state_hash(s.server) == h0
    # clients did train
    assert federated.state_hash(st.s2.clients) != federated.state_hash(state.clients)
    res = st.update(state.server, client(state.clients, 0), client_data(TRAIN, 0), jax.random.key(0))
    assert array_leaves(res.upload) == []
    assert array_leaves(res.state.personal)


# ----------------------------------------------------------------------------- OmniFM: bank, faults, client dropout
# From the state after round 0 (st.s1: the bank holds that round's prototypes), rounds with all
# 4 clients taking part (st.round(participation=1.0)) and their client-dropout versions.

OMNIFM = per_algorithm(["omnifm"])


def full(st, **kw):
    """The round with every client taking part (``client_dropout``: and half of them dropping out)."""
    return st.round(1, participation=1.0, **kw)


@OMNIFM
def test_omnifm_uploads_unit_norm_after_bank_is_seeded(st):
    state, _ = full(st)(st.s0, st.train)
    assert int(np.sum(np.asarray(state.server.algorithm_state.valid))) == 4
    res = st.update(state.server, client(state.clients, 1), client_data(TRAIN, 1), jax.random.key(3))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(res.upload.algorithm_upload["embedding"])), 1.0, rtol=1e-5)
    hits = np.asarray(res.upload.algorithm_upload["hits"])
    # every sample of the one full batch (n=7, batch 4, drop_last) retrieves top_k = 2 prototypes
    assert hits.sum() == 2 * (int(TRAIN.n[1]) // 4) * 4


@OMNIFM
def test_nan_client_is_excluded_like_an_absent_one(st):
    state, train, round_fn = st.s1, st.train, full(st)
    assert int(st.m0.faulty) == 0 and bool(np.asarray(state.server.algorithm_state.valid).any())
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


@OMNIFM
def test_bank_ignores_the_nan_clients_embedding(st):
    state = st.s1
    new, m = full(st)(poison(state, 2), st.train)
    bank0, bank1 = state.server.algorithm_state, new.server.algorithm_state

    # 4 participants, 1 faulty: exactly 3 new prototypes inserted this round
    def n_inserted(b0, b1):
        return int(np.sum(np.asarray(b1.valid) & (np.asarray(b1.age) == 0)))
    assert n_inserted(bank0, bank1) == int(np.sum(np.asarray(m.weights) > 0)) == 3
    assert np.isfinite(np.asarray(bank1.embeddings)).all()


@OMNIFM
def test_all_clients_faulty_leaves_the_global_model_untouched(st):
    state = st.s1
    poisoned = state
    for k in range(K):
        poisoned = poison(poisoned, k)
    new, m = full(st)(poisoned, st.train)
    assert int(m.faulty) == K
    np.testing.assert_array_equal(np.asarray(m.weights), np.zeros(K))
    assert_trees_equal(new.server.params, state.server.params)
    assert_trees_equal(new.clients, poisoned.clients)
    assert int(np.sum(np.asarray(new.server.algorithm_state.valid))) == int(np.sum(np.asarray(state.server.algorithm_state.valid)))


@OMNIFM
def test_client_dropout_masks_participants_inside_the_jitted_round(st):
    state, train, round_fn, drop_fn = st.s1, st.train, full(st), full(st, client_dropout=0.5)
    new, m = drop_fn(state, train)
    plain, m_plain = round_fn(state, train)

    w = np.asarray(m.weights)
    dropped = np.flatnonzero(w == 0)
    assert int(m.dropped) == 2 and int(m.faulty) == 0 and dropped.size == 2
    np.testing.assert_array_equal(np.asarray(m.participants), np.asarray(m_plain.participants))
    # the clients that reported trained exactly as without client dropout (same keys) ...
    for k in set(range(K)) - set(dropped.tolist()):
        assert_trees_equal(client(new.clients, k), client(plain.clients, k))
        np.testing.assert_array_equal(np.asarray(m.client_metrics["train_loss"])[k],
                                      np.asarray(m_plain.client_metrics["train_loss"])[k])
    # ... the dropped ones trained too and keep what they trained (PFLlib), or roll back ...
    for k in dropped:
        assert_trees_equal(client(new.clients, k), client(plain.clients, k))
    rolled, _ = full(st, client_dropout=0.5, dropped_keep_update=False)(state, train)
    for k in dropped:
        assert_trees_equal(client(rolled.clients, k), client(state.clients, k))
    # ... and the server is that of the round in which they had nothing to send
    absent = train
    for k in dropped:
        absent = with_n(absent, int(k), 0)
    ref, _ = round_fn(state, absent)
    assert_trees_equal(new.server, ref.server)
    # the client-dropout draw changes from round to round
    masks = {tuple(np.asarray(drop_fn(s, train)[1].weights) == 0)
             for s in [state._replace(round=jnp.int32(r)) for r in range(6)]}
    assert len(masks) > 1


@OMNIFM
def test_client_dropout_and_faults_are_counted_separately(st):
    state, train, drop_fn = st.s1, st.train, full(st, client_dropout=0.5)
    _, m = drop_fn(state, train)
    dropped = np.flatnonzero(np.asarray(m.weights) == 0)
    reporting = sorted(set(range(K)) - set(dropped.tolist()))
    # a dropped client's NaN is never seen; a reporting one's is
    _, m1 = drop_fn(poison(state, int(dropped[0])), train)
    assert (int(m1.dropped), int(m1.faulty)) == (2, 0)
    _, m2 = drop_fn(poison(state, reporting[0]), train)
    assert (int(m2.dropped), int(m2.faulty)) == (2, 1)
