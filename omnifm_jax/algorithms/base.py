"""What every federated algorithm is made of.

An algorithm is a value (after optax's ``GradientTransformation`` and fedjax's
``FederatedAlgorithm``): a NamedTuple of pure functions. The engine
(:mod:`omnifm_jax.federated`) maps ``client_update`` over the participants and calls
``server_update`` with what they uploaded -- and nothing else: the server never sees a
client's personal state or data (the privacy boundary is the signature).

Which variables are shared (aggregated) and which stay personal is a *labelling* of the
variable tree by path rules (regular expressions on ``"collection/module/.../leaf"``,
like ``optax.multi_transform`` labels), not code. :func:`partition` splits a tree into
``(shared, personal)`` trees with ``None`` in place of the other part's leaves, and
:func:`combine` puts them back together. Only the ``params`` collection is shared by
default: BatchNorm running statistics (``batch_stats``) never leave a client, as in
PFLlib, which sends and averages ``model.parameters()`` only.

This module also holds the local SGD loop that most algorithms share
(:func:`local_train`), with PFLlib's ``DataLoader(shuffle=True, drop_last=True)``
semantics: each epoch visits a fresh permutation of the client's samples in batches of
``batch_size``; with ``drop_last`` the last partial batch is skipped, so a client does
``epochs * floor(n_k / B)`` steps (none when ``n_k < B``). Without it the last batch is
partial and its empty places are masked out of everything (loss, gradients and every
batch statistic).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClientData:
    """One client's view of a ragged split (see :class:`omnifm_jax.data.ClientArrays`).

    Attributes:
      x: uint8[N, H, W, C] inputs of ALL clients of the split (not copied per client).
      y: int32[N] labels or uint8[N, H2, W2, C] targets of all clients.
      offset: int32[] first row of this client.
      n: int32[] number of this client's samples (rows ``offset .. offset + n - 1``).
      capacity: static; the largest client's ``n`` (size of the shuffling buffer).
    """
    x: jax.Array
    y: jax.Array
    offset: jax.Array
    n: jax.Array
    capacity: int = dataclasses.field(metadata=dict(static=True), default=1)


class ClientResult(NamedTuple):
    """What ``client_update`` returns.

    Attributes:
      state: the client's new personal state (stays on the client).
      upload: what crosses to the server (shared-parameter update, spectral embedding, ...).
      metrics: scalars for the training log (mean loss, steps); never given to the server.
    """
    state: Any
    upload: Any
    metrics: Any


def _no_steps(n):
    return jnp.zeros_like(n)


class FederatedAlgorithm(NamedTuple):
    """A federated algorithm as a value.

    Attributes:
      name: short name.
      init_server: ``(key, x_example f32[1, H, W, C]) -> server_state``.
      init_client: ``(key, server_state, x_example) -> client_state`` for ONE client. The
        engine passes every client the key it gave ``init_server`` (all clients start
        from ONE initial model, as in PFLlib) unless asked for independent inits.
      client_update: ``(server_state, client_state, ClientData, key) -> ClientResult`` for ONE client.
      server_update: ``(server_state, uploads stacked over participants, weights f32[m]) -> server_state``;
        weight 0 means "ignore this participant" (dropped out, faulty or not sampled).
      predict: ``(server_state, client_state, x f32[B, H, W, C], mask bool[B]) -> prediction``
        with the client's personalised model (evaluation).
      local_steps: ``n int32[...] -> int32[...]`` local steps a client with ``n`` samples
        runs in a round (the engine groups clients of similar work with it).
    """
    name: str
    init_server: Callable[..., Any]
    init_client: Callable[..., Any]
    client_update: Callable[..., ClientResult]
    server_update: Callable[..., Any]
    predict: Callable[..., Any]
    local_steps: Callable[[Any], Any] = _no_steps


# ----------------------------------------------------------------------------- labelling

def path_name(path) -> str:
    """``(DictKey('params'), DictKey('head'), ...) -> "params/head/..."``."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
        else:
            parts.append(str(p))
    return "/".join(parts)


def personal_mask(tree: Any, personal_patterns: Sequence[str],
                  shared_collections: Sequence[str] = ("params",)) -> Any:
    """Tree of bools: True where a leaf stays personal.

    A leaf is personal when its path matches any of ``personal_patterns`` or its
    collection (the first path element) is not in ``shared_collections``.
    """
    compiled = [re.compile(p) for p in personal_patterns]

    def one(path, _):
        name = path_name(path)
        collection = name.split("/", 1)[0]
        return collection not in shared_collections or any(c.search(name) for c in compiled)

    return jax.tree_util.tree_map_with_path(one, tree)


def partition(tree: Any, mask: Any) -> Tuple[Any, Any]:
    """Split ``tree`` into ``(shared, personal)``; each has ``None`` where the other has leaves."""
    shared = jax.tree_util.tree_map(lambda x, m: None if m else x, tree, mask)
    personal = jax.tree_util.tree_map(lambda x, m: x if m else None, tree, mask)
    return shared, personal


def combine(shared: Any, personal: Any) -> Any:
    """Inverse of :func:`partition`."""
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, shared, personal,
                                  is_leaf=lambda x: x is None)


# ----------------------------------------------------------------------------- aggregation

def weighted_mean(stacked: Any, weights: jax.Array, fallback: Any) -> Any:
    """``sum_k w_k x_k / sum_k w_k`` over the leading axis; ``fallback`` if all weights are 0.

    Integer leaves (e.g. counters) are averaged in float and cast back.
    """
    weights = weights.astype(jnp.float32)
    total = jnp.sum(weights)
    safe = jnp.where(total > 0, total, 1.0)

    def one(x, old):
        w = weights.reshape((-1,) + (1,) * (x.ndim - 1))
        # Zero out ignored participants before the sum: their update may be NaN/Inf.
        contrib = jnp.where(w > 0, x.astype(jnp.float32), 0.0)
        # A contraction with the weights instead of sum(w * x, axis=0): XLA:CPU runs that
        # leading-axis reduction through a slow generic kernel (measured 77 ms for four
        # 1024x512 leaves, 58% of a small CNN round); HIGHEST keeps GPUs from using TF32.
        mean = jnp.tensordot(weights, contrib, axes=1, precision=jax.lax.Precision.HIGHEST) / safe
        return jnp.where(total > 0, mean, old.astype(jnp.float32)).astype(old.dtype)

    return jax.tree_util.tree_map(one, stacked, fallback)


# ----------------------------------------------------------------------------- local training

def steps_per_epoch(n, batch_size: int, drop_last: bool = True):
    """Batches per epoch for ``n`` samples: ``n // B`` (drop_last) or ``ceil(n / B)``."""
    n = jnp.asarray(n, jnp.int32)
    if drop_last:
        return n // batch_size
    return (n + batch_size - 1) // batch_size


def num_local_steps(n, batch_size: int, epochs: int, drop_last: bool = True):
    """Local steps of a client with ``n`` samples: ``epochs * steps_per_epoch``."""
    return epochs * steps_per_epoch(n, batch_size, drop_last)


def epoch_permutations(key: jax.Array, n: jax.Array, capacity: int, epochs: int) -> jax.Array:
    """``int32[epochs, capacity]``: row e starts with a uniform random permutation of ``0..n-1``.

    Entries past ``n`` hold ``n..capacity-1`` (never used for real samples).
    """
    def one(e):
        u = jax.random.uniform(jax.random.fold_in(key, e), (capacity,))
        u = jnp.where(jnp.arange(capacity) < n, u, 2.0)
        return jnp.argsort(u).astype(jnp.int32)

    return jax.vmap(one)(jnp.arange(epochs))


class LocalTrainOutput(NamedTuple):
    variables: Any
    opt_state: Any
    stats: Any          # pytree summed over steps
    mean_loss: jax.Array
    steps: jax.Array


def local_train(loss_fn: Callable, tx: optax.GradientTransformation, variables: Any, opt_state: Any,
                data: ClientData, key: jax.Array, *, epochs: int, batch_size: int, stats_init: Any,
                scale_inputs: Callable, drop_last: bool = True) -> LocalTrainOutput:
    """Local minibatch training of ONE client (the engine maps it over clients).

    Args:
      loss_fn: ``(params, variables, x f32[B,...], y[B,...], mask bool[B], key)
        -> (scalar loss, (new_mutable_collections dict, stats pytree))``. The loss must
        already be the masked mean over the batch, and ``mask`` must reach every batch
        statistic (BatchNorm) so that empty places of a partial batch influence nothing.
      tx: the client optimizer.
      variables: ``{"params": ..., other collections}`` of the full model.
      opt_state: ``tx`` state for ``variables["params"]``.
      data: the client's view of the ragged split.
      key: PRNG key of this client and round.
      epochs, batch_size, drop_last: local work (static).
      stats_init: zero pytree of the per-step statistics summed over steps.
      scale_inputs: ``uint8 -> float`` input scaling (the task's).

    The step loop is a ``lax.while_loop`` that runs exactly this client's number of
    steps; mapped over clients with ``vmap`` it runs the longest client's count and
    leaves the others' state untouched once they are done.
    """
    n = data.n.astype(jnp.int32)
    per_epoch = steps_per_epoch(n, batch_size, drop_last)
    total = epochs * per_epoch
    perm_key, step_key = jax.random.split(key)
    perms = epoch_permutations(perm_key, n, data.capacity, epochs)
    offsets = jnp.arange(batch_size)

    def step(carry):
        variables, opt_state, stats, loss_sum, t = carry
        epoch = t // jnp.maximum(per_epoch, 1)
        pos = (t % jnp.maximum(per_epoch, 1)) * batch_size + offsets
        mask = pos < n
        # Empty places of a partial batch repeat a real sample; the mask removes them.
        local = perms[epoch, jnp.minimum(pos, jnp.maximum(n - 1, 0))]
        idx = data.offset + local
        x = scale_inputs(data.x[idx])
        y = data.y[idx]
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}
        grads, (new_rest, step_stats, loss) = jax.grad(_with_loss(loss_fn), has_aux=True)(
            params, rest, x, y, mask, jax.random.fold_in(step_key, t))
        # Keeps XLA from fusing the per-client weight gradient into the update, which
        # picks a far slower layout under vmap (measured: several-fold on GPU).
        grads = jax.lax.optimization_barrier(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_vars = dict(rest)
        new_vars.update(new_rest)
        new_vars["params"] = optax.apply_updates(params, updates)
        stats = jax.tree_util.tree_map(jnp.add, stats, step_stats)
        return new_vars, new_opt, stats, loss_sum + loss, t + 1

    init = (variables, opt_state, stats_init, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    variables, opt_state, stats, loss_sum, _ = jax.lax.while_loop(lambda c: c[-1] < total, step, init)
    mean_loss = loss_sum / jnp.maximum(total, 1).astype(jnp.float32)
    return LocalTrainOutput(variables, opt_state, stats, mean_loss, total)


def _with_loss(loss_fn):
    def wrapped(params, rest, x, y, mask, key):
        loss, (new_rest, stats) = loss_fn(params, rest, x, y, mask, key)
        return loss, (new_rest, stats, loss)
    return wrapped


def masked_mean(per_sample: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``per_sample`` over ``mask`` (0 when the mask is empty)."""
    m = mask.astype(per_sample.dtype)
    return jnp.sum(per_sample * m) / jnp.maximum(jnp.sum(m), 1.0)


#: Variable collections a model may update during training (BatchNorm running statistics).
MUTABLE = ("batch_stats",)

