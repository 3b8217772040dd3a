"""The federated engine: one jitted, vmapped round for any algorithm and any task.

State is one pytree, :class:`FederatedState`: the round counter, the algorithm's server
state (shared parameters, OmniFM's knowledge bank, ...), every client's personal state
stacked on a leading client axis, and the PRNG key. A round is ONE ``jax.jit``:

  1. ``key_r = fold_in(key, round)``; sample ``m = max(1, round(ratio * K))`` distinct
     participants;
  2. gather their personal states and data (uint8, on the device);
  3. ``vmap`` the algorithm's single-client ``client_update`` over them (optionally in
     chunks of ``client_chunk`` clients with ``lax.map`` to bound memory);
  4. a participant that drops out (``dropout``: a fixed fraction of the ``m``, drawn with
     its own key) or whose upload contains NaN/Inf gets weight 0 and keeps its old
     personal state (it did not report); the others are weighted by ``n_k``;
  5. ``server_update(server, uploads, weights)``: the server sees the uploads only;
  6. scatter the participants' new personal states back.

:func:`sequential_round` runs the same single-client update in a Python loop over the
participants (the reference for tests and benchmarks). :func:`make_evaluate` evaluates
ALL clients, each with its personalised model on its own held-out split.

The engine knows nothing about which algorithm or task it runs.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax.algorithms.base import ClientData, FederatedAlgorithm, normalize_images
from omnifm_jax.tasks.base import Task


class FederatedState(NamedTuple):
    """Everything a run needs to continue.

    Attributes:
      round: int32[] rounds completed.
      server: the algorithm's server state.
      clients: the algorithm's client states, stacked with a leading ``[K]`` axis.
      key: the run's PRNG key (per round: ``fold_in(key, round)``).
    """
    round: jax.Array
    server: Any
    clients: Any
    key: jax.Array


class RoundMetrics(NamedTuple):
    participants: jax.Array   # int32[m] client ids
    weights: jax.Array        # f32[m] aggregation weights (0: excluded)
    faulty: jax.Array         # int32[] reporting participants excluded for NaN/Inf
    client_metrics: Any       # per-participant training metrics (stacked)
    dropped: Any = None       # int32[] participants that did not report (dropout)


def num_participants(num_clients: int, participation: float) -> int:
    """``m = max(1, round(participation * K))``."""
    if not 0.0 < participation <= 1.0:
        raise ValueError(f"participation must be in (0, 1], got {participation}")
    if num_clients < 1:
        raise ValueError(f"need at least one client, got {num_clients}")
    return max(1, int(round(participation * num_clients)))


def sample_participants(key: jax.Array, num_clients: int, m: int) -> jax.Array:
    """``m`` distinct client ids in increasing order, drawn uniformly with ``key``."""
    return jnp.sort(jax.random.permutation(key, num_clients)[:m]).astype(jnp.int32)


def num_dropped(m: int, dropout: float) -> int:
    """Participants per round that fail to report: ``round(dropout * m)`` (halves up),
    at most ``m - 1`` so that someone always reports."""
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return min(m - 1, int(math.floor(dropout * m + 0.5)))


def dropout_mask(key: jax.Array, m: int, n_drop: int) -> jax.Array:
    """``bool[m]``: exactly ``n_drop`` participants (uniformly chosen with ``key``) drop out."""
    if n_drop == 0:
        return jnp.zeros((m,), bool)
    return jax.random.permutation(key, m) < n_drop


_DROPOUT_STREAM = 0x64726F70  # "drop": a stream of its own, so sampling and client keys stay as they are


def _round_keys(state: FederatedState):
    key_r = jax.random.fold_in(state.key, state.round)
    return jax.random.split(key_r)


def _dropout_key(state: FederatedState) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state.key, state.round), _DROPOUT_STREAM)


def _client_key(client_key: jax.Array, client_id: jax.Array) -> jax.Array:
    return jax.random.fold_in(client_key, client_id)


def _take(tree: Any, idx: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _client_data(train, idx) -> ClientData:
    return ClientData(x=train.x[idx], y=train.y[idx], n=train.n[idx])


def map_clients(fn: Callable, xs: Any, chunk: Optional[int]) -> Any:
    """``vmap(fn)(xs)`` over the leading axis, or ``lax.map`` in chunks of ``chunk`` clients.

    The chunk loop stays rolled even on CPU (where short loops are otherwise unrolled,
    :func:`~omnifm_jax.algorithms.base.default_unroll`): unrolled, XLA keeps every chunk's
    buffers alive at once and the chunking no longer bounds memory (measured with XLA's
    memory analysis, 64 FedAvgCNN clients in chunks of 8: 4.6 GiB unrolled, 0.8 GiB rolled).
    """
    if chunk is None or chunk >= jax.tree_util.tree_leaves(xs)[0].shape[0]:
        return jax.vmap(fn)(*xs)
    return jax.lax.map(lambda args: fn(*args), xs, batch_size=chunk)


def init(algorithm: FederatedAlgorithm, key: jax.Array, train, *, num_clients: Optional[int] = None
         ) -> FederatedState:
    """Initial state for the clients of ``train`` (a :class:`ClientArrays`-like).

    Jitted: run eagerly, the vmapped model init executes op by op, which takes minutes for
    OmniFM on a CPU (and jitted and eager inits may differ in the last bits). The result
    is deterministic for a given key, backend and JAX version.
    """
    k = int(train.x.shape[0]) if num_clients is None else num_clients
    shape = (1,) + tuple(train.x.shape[2:])

    def body(key):
        x_example = jnp.zeros(shape, jnp.float32)
        k_server, k_clients, k_run = jax.random.split(key, 3)
        server = algorithm.init_server(k_server, x_example)
        keys = jax.random.split(k_clients, k)
        clients = jax.vmap(lambda kk: algorithm.init_client(kk, server, x_example))(keys)
        return FederatedState(round=jnp.zeros((), jnp.int32), server=server, clients=clients, key=k_run)

    if isinstance(key, getattr(jax.core, "Tracer", ())):
        # Inside a transformation: a nested jit takes no compiler options and a compiled
        # executable takes no tracers, so trace through.
        return jax.jit(body)(key)
    return jax.jit(body).lower(key).compile(compiler_options=init_compiler_options())(key)


def init_compiler_options() -> dict:
    """XLA options for one-off initialisation programs.

    Initialisation runs once, so on CPU it is compiled without backend optimisation:
    threefry-heavy init programs otherwise take longer to compile than a training round
    (ResNet-18: 11 s vs 2 s; the parameters agree to the last bit or two).
    """
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def _finish_round(algorithm, state, idx, data_n, results, old_clients, dropped):
    finite = participants_finite(results.upload, idx.shape[0])
    reported = ~dropped
    accepted = finite & reported
    weights = jnp.where(accepted, data_n.astype(jnp.float32), 0.0)
    # The privacy boundary: the server sees its own state, the uploads and the weights.
    server = algorithm.server_update(state.server, results.upload, weights)
    keep = lambda new, old: jnp.where(accepted.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    new_clients = jax.tree_util.tree_map(keep, results.state, old_clients)
    clients = jax.tree_util.tree_map(lambda all_, upd: all_.at[idx].set(upd), state.clients, new_clients)
    metrics = RoundMetrics(participants=idx, weights=weights,
                           faulty=jnp.sum(~finite & reported).astype(jnp.int32),
                           client_metrics=results.metrics, dropped=jnp.sum(dropped).astype(jnp.int32))
    return FederatedState(state.round + 1, server, clients, state.key), metrics


def participants_finite(uploads: Any, m: int) -> jax.Array:
    """``bool[m]``: participant i's upload has no NaN/Inf (True when nothing is uploaded)."""
    ok = jnp.ones((m,), bool)
    for leaf in jax.tree_util.tree_leaves(uploads):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf.reshape(m, -1)), axis=1)
    return ok


def make_round(algorithm: FederatedAlgorithm, *, num_clients: int, participation: float = 1.0,
               client_chunk: Optional[int] = None, donate: bool = True, dropout: float = 0.0) -> Callable:
    """The jitted round: ``round_fn(state, train) -> (state, RoundMetrics)``.

    ``dropout``: fraction of the ``m`` participants that fail to report each round
    (:func:`num_dropped`); they get weight 0 and keep their personal state.
    """
    round_fn = round_body(algorithm, num_clients=num_clients, participation=participation,
                          client_chunk=client_chunk, dropout=dropout)
    return jax.jit(round_fn, donate_argnums=(0,) if donate else ())


def make_rounds(algorithm: FederatedAlgorithm, *, num_rounds: int, num_clients: int,
                participation: float = 1.0, client_chunk: Optional[int] = None, donate: bool = True,
                dropout: float = 0.0) -> Callable:
    """``num_rounds`` rounds fused into ONE jitted ``lax.scan`` (one dispatch instead of many).

    ``rounds_fn(state, train) -> (state, RoundMetrics stacked over rounds)``; the result
    equals ``num_rounds`` calls of :func:`make_round`'s function.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    one = round_body(algorithm, num_clients=num_clients, participation=participation,
                     client_chunk=client_chunk, dropout=dropout)

    def rounds_fn(state: FederatedState, train):
        return jax.lax.scan(lambda s, _: one(s, train), state, None, length=num_rounds)

    return jax.jit(rounds_fn, donate_argnums=(0,) if donate else ())


def round_body(algorithm: FederatedAlgorithm, *, num_clients: int, participation: float = 1.0,
               client_chunk: Optional[int] = None, dropout: float = 0.0) -> Callable:
    """The un-jitted round function (see :func:`make_round`), for callers that compose it."""
    m = num_participants(num_clients, participation)
    n_drop = num_dropped(m, dropout)
    if client_chunk is not None and client_chunk < 1:
        raise ValueError(f"client_chunk must be >= 1, got {client_chunk}")

    def round_fn(state: FederatedState, train):
        sample_key, client_key = _round_keys(state)
        idx = sample_participants(sample_key, num_clients, m)
        clients = _take(state.clients, idx)
        data = _client_data(train, idx)
        keys = jax.vmap(lambda i: _client_key(client_key, i))(idx)
        update = lambda c, d, k: algorithm.client_update(state.server, c, d, k)
        results = map_clients(update, (clients, data, keys), client_chunk)
        dropped = dropout_mask(_dropout_key(state), m, n_drop)
        return _finish_round(algorithm, state, idx, data.n, results, clients, dropped)

    return round_fn


def sequential_round(algorithm: FederatedAlgorithm, state: FederatedState, train, *, num_clients: int,
                     participation: float = 1.0, client_update: Optional[Callable] = None,
                     dropout: float = 0.0):
    """Reference path: the same round with a Python loop over participants.

    ``client_update`` may be a pre-jitted ``algorithm.client_update`` (pass one to avoid
    re-tracing every call). Returns ``(state, RoundMetrics)`` like :func:`make_round`.
    """
    m = num_participants(num_clients, participation)
    n_drop = num_dropped(m, dropout)
    sample_key, client_key = _round_keys(state)
    idx = sample_participants(sample_key, num_clients, m)
    dropped = dropout_mask(_dropout_key(state), m, n_drop)
    update = client_update or jax.jit(algorithm.client_update)
    outs = []
    for i in np.asarray(idx):
        c = _take(state.clients, i)
        d = _client_data(train, i)
        outs.append(update(state.server, c, d, _client_key(client_key, jnp.int32(i))))
    results = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
    clients = _take(state.clients, idx)
    return jax.jit(_finish_round, static_argnums=0)(algorithm, state, idx, train.n[idx], results, clients,
                                                        dropped)


def make_evaluate(algorithm: FederatedAlgorithm, task: Task, *, batch_size: int = 256,
                  client_chunk: Optional[int] = None, predict: Optional[Callable] = None) -> Callable:
    """Jitted ``evaluate(state, test) -> stats stacked over ALL clients``.

    Each client is evaluated with its personalised model (shared part from the server,
    personal part its own) on its own held-out split, in batches of ``batch_size``.
    Turn the stats into numbers with ``task.summarize`` / ``task.client_metrics``.
    ``predict`` overrides ``algorithm.predict`` (e.g. a model-free baseline).
    """
    predict = predict or algorithm.predict

    def one_client(server, client, x, y, n):
        n_max = x.shape[0]
        nb = max(1, -(-n_max // batch_size))
        pad = nb * batch_size - n_max
        xp = jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1))
        yp = jnp.pad(y, ((0, pad),) + ((0, 0),) * (y.ndim - 1))

        def batch_stats(b):
            sl = lambda a: jax.lax.dynamic_slice_in_dim(a, b * batch_size, batch_size)
            mask = (b * batch_size + jnp.arange(batch_size)) < n
            pred = predict(server, client, normalize_images(sl(xp)))
            return task.eval_stats(pred, task.prepare_targets(sl(yp)), mask)

        zero = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype),
                                      jax.eval_shape(batch_stats, 0))
        acc, _ = jax.lax.scan(lambda acc, b: (jax.tree_util.tree_map(jnp.add, acc, batch_stats(b)), None),
                              zero, jnp.arange(nb))
        return acc

    def evaluate(state: FederatedState, test):
        fn = lambda c, x, y, n: one_client(state.server, c, x, y, n)
        return map_clients(fn, (state.clients, test.x, test.y, test.n), client_chunk)

    return jax.jit(evaluate)


def summarize(task: Task, stats: Any) -> dict:
    """Federation metrics plus per-client metrics from :func:`make_evaluate`'s stats."""
    stats = jax.tree_util.tree_map(np.asarray, stats)
    out = dict(task.summarize(stats))
    k = jax.tree_util.tree_leaves(stats)[0].shape[0]
    out["clients"] = [task.client_metrics(jax.tree_util.tree_map(lambda a: a[i], stats)) for i in range(k)]
    return out


def state_hash(state: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in tree order (typed keys included)."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(state):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arr = np.asarray(leaf)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
