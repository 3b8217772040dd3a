"""Local minibatch training of ONE client, with PFLlib's
``DataLoader(shuffle=True, drop_last=True)`` semantics: each epoch visits a fresh permutation
of the client's samples in batches of ``batch_size``; with ``drop_last`` the last partial
batch is skipped, so a client does ``epochs * floor(n_k / B)`` steps (none when
``n_k < B``). Without it the last batch is partial and its empty places are masked out of
everything (loss, gradients and every batch statistic).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from omnifm_jax.algorithms.base import ClientData

__all__ = ["steps_per_epoch", "num_local_steps", "epoch_permutations", "LocalTrainOutput", "local_train",
           "zero_stats", "masked_mean", "MUTABLE"]


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
    loss_sum: jax.Array  # summed over steps


def local_train(loss_fn: Callable, tx: optax.GradientTransformation, variables: Any, opt_state: Any,
                data: ClientData, key: jax.Array, *, epochs: int, batch_size: int,
                scale_inputs: Callable, drop_last: bool = True, stats_init: Any = None,
                grad_transform: Optional[Callable[[Any, Any], Any]] = None,
                trainable: Any = None, grad_barrier: bool = True) -> LocalTrainOutput:
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
      scale_inputs: ``uint8 -> float`` input scaling (the task's).
      stats_init: zero pytree of the per-step statistics summed over steps; by default
        derived from ``loss_fn``'s output shapes (:func:`zero_stats`).
      grad_transform: ``(grads, params) -> grads`` applied before the optimizer (e.g.
        SCAFFOLD's control-variate correction).
      trainable: a tree of bools like ``params`` (or None: all): parameters marked False
        get neither a gradient nor an update (e.g. FedRep's body while its head trains).
      grad_barrier: an ``optimization_barrier`` between the gradient and the update (see
        the step below); False only to measure what it does (``experiments/benchmarks/
        formulations.py``).

    The step loop is a ``lax.while_loop`` that runs exactly this client's number of
    steps; mapped over clients with ``vmap`` it runs the longest client's count and
    leaves the others' state untouched once they are done.
    """
    if stats_init is None:
        stats_init = zero_stats(loss_fn, variables, data, batch_size, scale_inputs)
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
        if grad_transform is not None:
            grads = grad_transform(grads, params)
        if trainable is not None:
            grads = _masked(grads, trainable)
        # Keeps XLA from fusing the per-client weight gradient into the update, which
        # picks a far slower layout under vmap (measured: several-fold on GPU).
        if grad_barrier:
            grads = jax.lax.optimization_barrier(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        if trainable is not None:
            updates = _masked(updates, trainable)
        new_vars = dict(rest)
        new_vars.update(new_rest)
        new_vars["params"] = optax.apply_updates(params, updates)
        stats = jax.tree_util.tree_map(jnp.add, stats, step_stats)
        return new_vars, new_opt, stats, loss_sum + loss, t + 1

    init = (variables, opt_state, stats_init, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    variables, opt_state, stats, loss_sum, _ = jax.lax.while_loop(lambda c: c[-1] < total, step, init)
    mean_loss = loss_sum / jnp.maximum(total, 1).astype(jnp.float32)
    return LocalTrainOutput(variables, opt_state, stats, mean_loss, total, loss_sum)


def _masked(tree: Any, keep: Any) -> Any:
    return jax.tree_util.tree_map(lambda a, k: a if k else jnp.zeros_like(a), tree, keep)


def zero_stats(loss_fn: Callable, variables: Any, data: ClientData, batch_size: int, scale_inputs: Callable) -> Any:
    """Zeros shaped like the per-step statistics ``loss_fn`` returns (from ``jax.eval_shape``,
    so an algorithm never writes its statistics' structure twice)."""
    params = variables["params"]
    rest = {k: v for k, v in variables.items() if k != "params"}
    x = jax.ShapeDtypeStruct((batch_size,) + data.x.shape[1:], data.x.dtype)
    y = jax.ShapeDtypeStruct((batch_size,) + data.y.shape[1:], data.y.dtype)
    mask = jax.ShapeDtypeStruct((batch_size,), jnp.bool_)

    def shapes(params, rest, x, y, mask):
        return loss_fn(params, rest, scale_inputs(x), y, mask, jax.random.key(0))[1][1]

    out = jax.eval_shape(shapes, params, rest, x, y, mask)
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), out)


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
