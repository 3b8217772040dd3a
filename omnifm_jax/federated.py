"""The federated engine: one jitted round for any algorithm and any task.

State is one pytree, :class:`FederatedState`: the round counter, the algorithm's server
state (shared parameters, OmniFM's knowledge bank, ...), every client's personal state
stacked on a leading client axis, and the PRNG key. Data is ragged
(:class:`~omnifm_jax.data.ClientArrays`: all samples of a split in one flat array plus
per-client offsets and counts). A round is ONE ``jax.jit``:

  1. ``key_r = fold_in(key, round)``; sample ``m = int(ratio * K)`` distinct participants
     (PFLlib's ``int(num_clients * join_ratio)``; with ``random_join`` a count drawn
     uniformly from ``m .. K`` each round, PFLlib's ``random_join_ratio``);
  2. each participant runs its OWN number of local steps (``algorithm.local_steps(n_k)``)
     on minibatches gathered from the flat data by index;
  3. participants are mapped by a per-backend strategy (``client_chunk``):
     ``1`` runs them one after another inside the jit (``lax.map``; the CPU default,
     where a vmapped convolution becomes a slow grouped one); ``c > 1`` sorts them by step
     count and runs chunks of ``c`` vmapped clients, each chunk's loop as long as its own
     longest client (accelerators); ``None`` vmaps all of them at once;
  4. of the participants, ``m - max(1, int((1 - client_dropout) * m))`` drop out (PFLlib's
     ``client_drop_rate``): they trained, keep what they trained (PFLlib keeps their
     local model; ``dropped_keep_update=False`` rolls them back) but do not upload; a
     participant whose upload holds NaN/Inf is excluded and keeps its old state; the others
     are weighted by ``n_k``;
  5. ``server_update(server, uploads, weights)``: the server sees the uploads only;
  6. scatter the participants' new personal states back.

:func:`sequential_round` runs the same single-client update in a Python loop over the
participants (the reference for tests and benchmarks). :func:`make_evaluate` evaluates
ALL clients, each with its personalised model on its own held-out samples, per sample.

The engine knows nothing about which algorithm or task it runs.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any, Callable, NamedTuple, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax.algorithms.base import ClientData, FederatedAlgorithm
from omnifm_jax.tasks.base import Task

__all__ = ["FederatedState", "RoundMetrics", "DataLayout", "data_layout", "num_participants",
           "sample_participants", "num_reporting", "client_dropout_mask", "executed_client_steps", "map_clients",
           "default_chunk", "choose_client_chunk", "resolve_client_chunk", "init", "init_compiler_options",
           "participants_finite", "round_body", "make_round", "make_rounds", "sequential_round", "EvalPlan",
           "eval_plan", "make_evaluate", "summarize", "mean_loss", "state_hash"]

Chunk = Union[int, str, None]


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
    participants: jax.Array   # int32[S] client ids of the round's slots
    weights: jax.Array        # f32[S] aggregation weights (0: excluded)
    faulty: jax.Array         # int32[] reporting participants excluded for NaN/Inf
    client_metrics: Any       # per-slot training metrics (stacked)
    dropped: Any = None       # int32[] participants that did not report (client_dropout)
    active: Any = None        # int32[] participants this round (random_join varies it)
    useful_steps: Any = None  # int32[] client-steps the participants needed
    executed_steps: Any = None  # int32[] client-steps the program ran (padding included)


class DataLayout(NamedTuple):
    """Static facts about a ragged split that shape the compiled programs (host values)."""
    num_clients: int
    capacity: int         # the largest client's sample count
    counts: np.ndarray    # int[K] samples per client
    offsets: np.ndarray   # int[K] first row per client


def data_layout(arrays) -> DataLayout:
    """The :class:`DataLayout` of a :class:`~omnifm_jax.data.ClientArrays` (host or device)."""
    counts = np.asarray(arrays.n).astype(np.int64)
    offsets = np.asarray(arrays.offsets).astype(np.int64)
    return DataLayout(int(counts.size), max(1, int(counts.max(initial=0))), counts, offsets)


# ----------------------------------------------------------------------------- participants

def num_participants(num_clients: int, participation: float) -> int:
    """``m = int(participation * K)`` (PFLlib's ``int(num_clients * join_ratio)``)."""
    if not 0.0 < participation <= 1.0:
        raise ValueError(f"participation must be in (0, 1], got {participation}")
    if num_clients < 1:
        raise ValueError(f"need at least one client, got {num_clients}")
    m = int(num_clients * participation)
    if m < 1:
        raise ValueError(f"participation={participation} of {num_clients} clients selects "
                         f"int({num_clients} * {participation}) = 0 clients per round; raise participation")
    return m


def sample_participants(key: jax.Array, num_clients: int, m: int) -> jax.Array:
    """``m`` distinct client ids in increasing order, drawn uniformly with ``key``."""
    return jnp.sort(jax.random.permutation(key, num_clients)[:m]).astype(jnp.int32)


def num_reporting(m, client_dropout: float):
    """Participants that report: ``max(1, int((1 - client_dropout) * m))`` (PFLlib's
    ``int((1 - client_drop_rate) * current_num_join_clients)``, at least one)."""
    if not 0.0 <= client_dropout < 1.0:
        raise ValueError(f"client_dropout must be in [0, 1), got {client_dropout}")
    if isinstance(m, (int, np.integer)):
        return max(1, int((1.0 - client_dropout) * m))
    return jnp.maximum(1, jnp.floor((1.0 - client_dropout) * m.astype(jnp.float32)).astype(jnp.int32))


def client_dropout_mask(key: jax.Array, active: jax.Array, n_keep) -> jax.Array:
    """``bool[S]``: the active slots beyond ``n_keep`` in a random order drop out."""
    score = jnp.where(active, jax.random.uniform(key, active.shape), 2.0)
    rank = jnp.argsort(jnp.argsort(score))
    return active & (rank >= n_keep)


_DROPOUT_STREAM = 0x64726F70  # "drop": a stream of its own, so sampling and client keys stay as they are
_JOIN_STREAM = 0x6A6F696E     # "join": the per-round participant count of random_join


def _round_keys(state: FederatedState):
    key_r = jax.random.fold_in(state.key, state.round)
    return jax.random.split(key_r)


def _stream_key(state: FederatedState, stream: int) -> jax.Array:
    return jax.random.fold_in(jax.random.fold_in(state.key, state.round), stream)


def _client_key(client_key: jax.Array, client_id: jax.Array) -> jax.Array:
    return jax.random.fold_in(client_key, client_id)


def _take(tree: Any, idx: jax.Array) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


def _round_slots(state: FederatedState, num_clients: int, m: int, random_join: bool, client_dropout: float):
    """``(idx int32[S], active bool[S], dropped bool[S], client_key)`` of this round."""
    sample_key, client_key = _round_keys(state)
    if random_join:
        m_r = jax.random.randint(_stream_key(state, _JOIN_STREAM), (), m, num_clients + 1)
        idx = jax.random.permutation(sample_key, num_clients).astype(jnp.int32)
        active = jnp.arange(num_clients) < m_r
    else:
        m_r = m
        idx = sample_participants(sample_key, num_clients, m)
        active = jnp.ones((m,), bool)
    if client_dropout > 0:
        dropped = client_dropout_mask(_stream_key(state, _DROPOUT_STREAM), active,
                                      num_reporting(m_r, client_dropout))
    else:
        dropped = jnp.zeros(active.shape, bool)
    return idx, active, dropped, client_key


# ----------------------------------------------------------------------------- client mapping

def executed_client_steps(steps: jax.Array, chunk: Optional[int]) -> jax.Array:
    """Client-steps a mapping strategy runs for per-slot ``steps`` (padding included).

    ``chunk=1``: exactly ``sum(steps)``; ``None``: every slot runs the longest;
    ``c``: slots sorted by steps, each chunk of ``c`` runs its own longest (the last,
    smaller chunk too).
    """
    s = steps.shape[0]
    if chunk == 1:
        return jnp.sum(steps)
    if chunk is None or chunk >= s:
        return s * jnp.max(steps)
    ordered = -jnp.sort(-steps)
    q = s // chunk
    total = chunk * jnp.sum(jnp.max(ordered[:q * chunk].reshape(q, chunk), axis=1))
    if s - q * chunk:
        total = total + (s - q * chunk) * jnp.max(ordered[q * chunk:])
    return total


def map_clients(fn: Callable, xs: Any, steps: jax.Array, chunk: Optional[int]) -> Any:
    """``fn`` over the leading axis of ``xs`` by the strategy ``chunk``.

    ``None``: one ``vmap``; ``1``: a ``lax.map`` loop, one client at a time; ``c``:
    slots sorted by ``steps`` (longest first), ``lax.map`` over chunks of ``c``
    vmapped slots, results put back in slot order. The chunk loop is never unrolled:
    unrolled, XLA keeps every chunk's buffers alive and chunking stops bounding memory.
    """
    s = steps.shape[0]
    if chunk is None or chunk >= s:
        return jax.vmap(fn)(*xs)
    if chunk == 1:
        return jax.lax.map(lambda args: fn(*args), xs)
    order = jnp.argsort(-steps, stable=True)
    inverse = jnp.argsort(order)
    out = jax.lax.map(lambda args: fn(*args), _take(xs, order), batch_size=chunk)
    return _take(out, inverse)


def default_chunk() -> int:
    """Clients per chunk on this backend when nothing else is known: 1 on CPU, else 256."""
    return 1 if jax.default_backend() == "cpu" else 256


def choose_client_chunk(steps: np.ndarray, slots: int, active: int, *, target: float = 0.9,
                        max_chunk: int = 1024, trials: int = 64, seed: int = 0) -> int:
    """The largest chunk (a power of two, or all slots) whose expected useful/executed
    client-steps ratio over random participant draws is at least ``target``.

    ``steps``: local steps of every client (host); ``slots``: clients mapped per round;
    ``active``: of them, how many participate (the rest run 0 steps).
    """
    steps = np.asarray(steps, np.int64)
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(trials):
        s = np.zeros(slots, np.int64)
        s[:active] = steps[rng.choice(steps.size, size=active, replace=False)]
        draws.append(s)
    candidates = sorted({min(int(c), slots) for c in (2 ** np.arange(0, 31)) if c <= max(max_chunk, 1)})
    best = 1
    for c in candidates:
        ratios = []
        for s in draws:
            ex = float(executed_client_steps(jnp.asarray(s), c if c < slots else None))
            ratios.append(s.sum() / ex if ex else 1.0)
        if np.mean(ratios) >= target:
            best = c
    return int(best)


def resolve_client_chunk(client_chunk: Chunk, layout: DataLayout, steps_fn: Callable, slots: int,
                         active: int) -> Optional[int]:
    """``"auto"`` -> 1 on CPU, else :func:`choose_client_chunk` on this federation; an int
    or None as given."""
    if client_chunk == "auto":
        if jax.default_backend() == "cpu":
            return 1
        steps = np.asarray(steps_fn(jnp.asarray(layout.counts, jnp.int32)))
        return choose_client_chunk(steps, slots, active)
    if client_chunk is not None and (not isinstance(client_chunk, (int, np.integer)) or client_chunk < 1):
        raise ValueError(f"client_chunk must be 'auto', None or an integer >= 1, got {client_chunk!r}")
    return client_chunk


# ----------------------------------------------------------------------------- init

def init(algorithm: FederatedAlgorithm, key: jax.Array, train, *, num_clients: Optional[int] = None,
         shared_init: bool = True) -> FederatedState:
    """Initial state for the clients of ``train`` (a ragged :class:`ClientArrays`).

    ``shared_init`` (PFLlib): every client starts from ONE initial model (the server's);
    False gives every client an independent random init of its personal part.
    Jitted: run eagerly, the vmapped model init executes op by op, which takes minutes for
    OmniFM on a CPU. The result is deterministic for a given key, backend and JAX version.
    """
    k = int(np.shape(train.n)[0]) if num_clients is None else num_clients
    shape = (1,) + tuple(np.shape(train.x)[1:])

    def body(key):
        x_example = jnp.zeros(shape, jnp.float32)
        k_server, k_clients, k_run = jax.random.split(key, 3)
        server = algorithm.init_server(k_server, x_example)
        keys = (jnp.broadcast_to(jax.random.key_data(k_server), (k,) + jax.random.key_data(k_server).shape)
                if shared_init else jax.random.key_data(jax.random.split(k_clients, k)))
        keys = jax.random.wrap_key_data(keys, impl=jax.random.key_impl(k_server))
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


# ----------------------------------------------------------------------------- the round

def participants_finite(uploads: Any, m: int) -> jax.Array:
    """``bool[m]``: participant i's upload has no NaN/Inf (True when nothing is uploaded)."""
    ok = jnp.ones((m,), bool)
    for leaf in jax.tree_util.tree_leaves(uploads):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            ok = ok & jnp.all(jnp.isfinite(leaf.reshape(m, -1)), axis=1)
    return ok


def _finish_round(algorithm, state, idx, data_n, active, results, old_clients, dropped, executed,
                  dropped_keep_update):
    s = idx.shape[0]
    finite = participants_finite(results.upload, s)
    reported = active & ~dropped
    accepted = finite & reported
    weights = jnp.where(accepted, data_n.astype(jnp.float32), 0.0)
    # The privacy boundary: the server sees its own state, the uploads and the weights.
    server = algorithm.server_update(state.server, results.upload, weights)
    keep_new = active & finite & (reported | dropped_keep_update)
    keep = lambda new, old: jnp.where(keep_new.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)
    new_clients = jax.tree_util.tree_map(keep, results.state, old_clients)
    clients = jax.tree_util.tree_map(lambda all_, upd: all_.at[idx].set(upd), state.clients, new_clients)
    steps = results.metrics.get("local_steps") if isinstance(results.metrics, dict) else None
    useful = jnp.sum(jnp.where(active, steps, 0)).astype(jnp.int32) if steps is not None else jnp.int32(0)
    metrics = RoundMetrics(participants=idx, weights=weights,
                           faulty=jnp.sum(~finite & reported).astype(jnp.int32),
                           client_metrics=results.metrics, dropped=jnp.sum(dropped).astype(jnp.int32),
                           active=jnp.sum(active).astype(jnp.int32), useful_steps=useful,
                           executed_steps=jnp.asarray(executed, jnp.int32))
    return FederatedState(state.round + 1, server, clients, state.key), metrics


def round_body(algorithm: FederatedAlgorithm, train, *, participation: float = 1.0,
               client_chunk: Chunk = "auto", client_dropout: float = 0.0, random_join: bool = False,
               dropped_keep_update: bool = True) -> Callable:
    """The un-jitted round ``round_fn(state, train) -> (state, RoundMetrics)`` (see
    :func:`make_round`), for callers that compose it. ``train`` here only fixes the
    static layout (number of clients, largest client, the size profile for ``"auto"``)."""
    layout = data_layout(train)
    k = layout.num_clients
    m = num_participants(k, participation)
    num_reporting(m, client_dropout)  # validates client_dropout
    slots = k if random_join else m
    chunk = resolve_client_chunk(client_chunk, layout, algorithm.local_steps, slots, m)

    def round_fn(state: FederatedState, train):
        idx, active, dropped, client_key = _round_slots(state, k, m, random_join, client_dropout)
        clients = _take(state.clients, idx)
        n = jnp.where(active, train.n[idx], 0)
        offsets = train.offsets[idx]
        keys = jax.vmap(lambda i: _client_key(client_key, i))(idx)
        steps = algorithm.local_steps(n)

        def update(c, off, nk, kk):
            data = ClientData(x=train.x, y=train.y, offset=off, n=nk, capacity=layout.capacity)
            return algorithm.client_update(state.server, c, data, kk)

        results = map_clients(update, (clients, offsets, n, keys), steps, chunk)
        executed = executed_client_steps(steps, chunk)
        return _finish_round(algorithm, state, idx, train.n[idx], active, results, clients, dropped, executed,
                             dropped_keep_update)

    round_fn.client_chunk = chunk
    return round_fn


def make_round(algorithm: FederatedAlgorithm, train, *, participation: float = 1.0,
               client_chunk: Chunk = "auto", donate: bool = True, client_dropout: float = 0.0,
               random_join: bool = False, dropped_keep_update: bool = True) -> Callable:
    """The jitted round: ``round_fn(state, train) -> (state, RoundMetrics)``.

    Args:
      algorithm: the algorithm.
      train: the training split (:class:`ClientArrays`); its layout fixes the program.
      participation: fraction of clients per round (``int(ratio * K)`` participants).
      client_chunk: ``"auto"`` (1 on CPU; on accelerators the largest chunk that keeps
        useful/executed client-steps >= 0.9 on this federation), ``None`` (all at once)
        or an int (see :func:`map_clients`).
      donate: donate the state's buffers.
      client_dropout: fraction of participants that fail to report (see :func:`num_reporting`).
      random_join: PFLlib's ``random_join_ratio``: the participant count is drawn from
        ``m .. K`` each round.
      dropped_keep_update: a dropped participant keeps what it trained (PFLlib).
    """
    round_fn = round_body(algorithm, train, participation=participation, client_chunk=client_chunk,
                          client_dropout=client_dropout, random_join=random_join,
                          dropped_keep_update=dropped_keep_update)
    jitted = jax.jit(round_fn, donate_argnums=(0,) if donate else ())
    jitted.client_chunk = round_fn.client_chunk
    return jitted


def make_rounds(algorithm: FederatedAlgorithm, train, *, num_rounds: int, **kwargs) -> Callable:
    """``num_rounds`` rounds fused into ONE jitted ``lax.scan`` (one dispatch instead of many).

    ``rounds_fn(state, train) -> (state, RoundMetrics stacked over rounds)``; the result
    equals ``num_rounds`` calls of :func:`make_round`'s function. Keyword arguments as
    :func:`make_round`.
    """
    if num_rounds < 1:
        raise ValueError(f"num_rounds must be >= 1, got {num_rounds}")
    donate = kwargs.pop("donate", True)
    one = round_body(algorithm, train, **kwargs)

    def rounds_fn(state: FederatedState, train):
        return jax.lax.scan(lambda s, _: one(s, train), state, None, length=num_rounds)

    return jax.jit(rounds_fn, donate_argnums=(0,) if donate else ())


def sequential_round(algorithm: FederatedAlgorithm, state: FederatedState, train, *, participation: float = 1.0,
                     client_update: Optional[Callable] = None, client_dropout: float = 0.0,
                     random_join: bool = False, dropped_keep_update: bool = True):
    """Reference path: the same round with a Python loop over participants.

    ``client_update`` may be a pre-jitted ``algorithm.client_update`` (pass one to avoid
    re-tracing every call). Returns ``(state, RoundMetrics)`` like :func:`make_round`.
    """
    layout = data_layout(train)
    k = layout.num_clients
    m = num_participants(k, participation)
    idx, active, dropped, client_key = jax.jit(
        lambda s: _round_slots(s, k, m, random_join, client_dropout))(state)
    update = client_update or jax.jit(algorithm.client_update)
    outs = []
    for slot, i in enumerate(np.asarray(idx)):
        c = _take(state.clients, i)
        n = train.n[i] if bool(active[slot]) else jnp.int32(0)
        d = ClientData(x=train.x, y=train.y, offset=train.offsets[i], n=n, capacity=layout.capacity)
        outs.append(update(state.server, c, d, _client_key(client_key, jnp.int32(i))))
    results = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *outs)
    clients = _take(state.clients, idx)
    steps = algorithm.local_steps(jnp.where(active, train.n[idx], 0))
    return jax.jit(_finish_round, static_argnums=(0, 9))(algorithm, state, idx, train.n[idx], active, results,
                                                          clients, dropped, jnp.sum(steps), dropped_keep_update)


# ----------------------------------------------------------------------------- evaluation

class EvalPlan(NamedTuple):
    """Batches of an evaluation pass; each batch holds samples of ONE client (host arrays).

    A client's rows are cut into full batches of ``batch_size`` and one last batch whose
    width is the next power of two of what is left, so a client of 3 test images costs a
    batch of 4, not of ``batch_size`` (a 10,000-client federation of small clients would
    otherwise be mostly padding). Batches of one width run as one mapped program.
    """
    client: np.ndarray   # int32[NB]
    start: np.ndarray    # int32[NB] first row (in the flat split)
    count: np.ndarray    # int32[NB] real samples in the batch (1..width)
    width: np.ndarray    # int32[NB] batch width (a power of two, or batch_size)


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def eval_plan(layout: DataLayout, batch_size: int) -> EvalPlan:
    """Every client's rows cut into batches (see :class:`EvalPlan`)."""
    if batch_size < 1:
        raise ValueError(f"eval batch_size must be >= 1, got {batch_size}")
    client, start, count, width = [], [], [], []
    for k, (n, off) in enumerate(zip(layout.counts, layout.offsets)):
        for j in range(0, int(n), batch_size):
            c = min(batch_size, int(n) - j)
            client.append(k)
            start.append(int(off) + j)
            count.append(c)
            width.append(batch_size if c == batch_size else min(batch_size, _next_pow2(c)))
    as32 = lambda v: np.asarray(v, np.int32)
    return EvalPlan(as32(client), as32(start), as32(count), as32(width))


def make_evaluate(algorithm: FederatedAlgorithm, task: Task, data, *, batch_size: int = 256,
                  client_chunk: Chunk = "auto", predict: Optional[Callable] = None,
                  stats: Optional[Callable] = None) -> Callable:
    """``evaluate(state, data) -> per-sample stats`` (numpy, the split's flat order).

    Each client is evaluated with its personalised model (shared part from the server,
    personal part its own) on its own samples, in batches that never mix clients.
    ``stats(prediction, targets)`` defaults to ``task.eval_stats``; ``predict`` overrides
    ``algorithm.predict`` (e.g. a model-free baseline). ``client_chunk``: batches per
    vmapped chunk (``"auto"``: 1 on CPU, a loop of plain forwards; up to 256 elsewhere).
    Turn the result into numbers with :func:`summarize`.
    """
    predict = predict or algorithm.predict
    stats = stats or task.eval_stats
    plan = eval_plan(data_layout(data), batch_size)
    widths = sorted(set(plan.width.tolist()), reverse=True)
    groups = [np.flatnonzero(plan.width == w) for w in widths]

    def chunk_for(nb):
        if client_chunk == "auto":
            return 1 if jax.default_backend() == "cpu" else min(nb, 256)
        return client_chunk

    def one_batch(state, arrays, width, c, start, count):
        client = _take(state.clients, c)
        offsets = jnp.arange(width)
        idx = start + jnp.minimum(offsets, count - 1)
        mask = offsets < count
        pred = predict(state.server, client, task.scale_inputs(arrays.x[idx]), mask)
        return stats(pred, task.prepare_targets(arrays.y[idx]))

    @jax.jit
    def run(state, arrays, plans):
        outs = []
        for w, (c, s0, n) in zip(widths, plans):
            fn = functools.partial(one_batch, state, arrays, w)
            outs.append(map_clients(fn, (c, s0, n), jnp.ones_like(n), chunk_for(int(n.shape[0]))))
        return outs

    plans = [tuple(jnp.asarray(a[g]) for a in (plan.client, plan.start, plan.count)) for g in groups]
    valid = [plan.count[g][:, None] > np.arange(w)[None, :] for w, g in zip(widths, groups)]
    # rows of the flat split, in the order the valid entries of the groups come out
    rows = np.concatenate([(plan.start[g][:, None] + np.arange(w)[None, :])[v]
                           for w, g, v in zip(widths, groups, valid)]) if groups else np.zeros(0, np.int64)
    order = np.argsort(rows, kind="stable")

    def evaluate(state: FederatedState, arrays):
        if not groups:
            return None
        outs = run(state, arrays, plans)
        flat = [jax.tree_util.tree_map(lambda a: np.asarray(a)[v], o) for o, v in zip(outs, valid)]
        joined = jax.tree_util.tree_map(lambda *xs: np.concatenate(xs)[order], *flat)
        return joined

    evaluate.plan = plan
    return evaluate


def summarize(task: Task, stats: Any, counts) -> dict:
    """Federation metrics plus per-client metrics from :func:`make_evaluate`'s stats."""
    counts = np.asarray(counts)
    out = dict(task.summarize(stats, counts))
    bounds = np.concatenate([[0], np.cumsum(counts)])
    out["clients"] = [task.client_metrics(jax.tree_util.tree_map(lambda a: a[bounds[i]:bounds[i + 1]], stats))
                      for i in range(counts.size)]
    return out


def mean_loss(stats: Any) -> float:
    """Sample-weighted mean of per-sample ``loss`` over all clients (PFLlib's train loss)."""
    loss = np.asarray(stats["loss"], np.float64)
    return float(loss.mean()) if loss.size else float("nan")


def state_hash(state: Any) -> str:
    """SHA-256 over every leaf's dtype, shape and bytes, in tree order (typed keys included).

    In a run over several processes, arrays split over them are gathered first (every process
    must call it)."""
    from omnifm_jax.distributed import to_host

    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(to_host(state)):
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        arr = np.asarray(leaf)
        h.update(str(arr.dtype).encode())
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()
