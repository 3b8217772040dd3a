"""What every federated algorithm is made of.

An algorithm is a value (after optax's ``GradientTransformation`` and fedjax's
``FederatedAlgorithm``): a NamedTuple of pure functions. The engine
(:mod:`omnifm_jax.federated`) vmaps ``client_update`` over the participants and calls
``server_update`` with what they uploaded -- and nothing else: the server never sees a
client's personal state or data (the privacy boundary is the signature).

Which parameters are shared (aggregated) and which stay personal is a *labelling* of the
variable tree by path rules (regular expressions on ``"collection/module/.../leaf"``,
like ``optax.multi_transform`` labels), not code. :func:`partition` splits a tree into
``(shared, personal)`` trees with ``None`` in place of the other part's leaves, and
:func:`combine` puts them back together.

This module also holds the local SGD loop that most algorithms share
(:func:`local_train`): ``lax.scan`` over ``epochs * ceil(n_max / batch)`` steps, each
client running ``epochs * ceil(n_k / batch)`` of them (the rest are masked no-ops), with
a fresh permutation of the client's real samples each epoch and a partial last batch,
as a PyTorch ``DataLoader(shuffle=True, drop_last=False)`` would do.
"""
from __future__ import annotations

import re
from typing import Any, Callable, NamedTuple, Sequence, Tuple

import jax
import jax.numpy as jnp
import optax


class ClientData(NamedTuple):
    """One client's padded data (device arrays; uint8 images).

    Attributes:
      x: uint8[N_max, H, W, C] inputs.
      y: int32[N_max] labels or uint8[N_max, H2, W2, C] targets.
      n: int32[] number of real samples (the rest is padding).
    """
    x: jax.Array
    y: jax.Array
    n: jax.Array


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


class FederatedAlgorithm(NamedTuple):
    """A federated algorithm as a value.

    Attributes:
      name: short name.
      init_server: ``(key, x_example f32[1, H, W, C]) -> server_state``.
      init_client: ``(key, server_state, x_example) -> client_state`` for ONE client.
      client_update: ``(server_state, client_state, ClientData, key) -> ClientResult`` for ONE client.
      server_update: ``(server_state, uploads stacked over participants, weights f32[m]) -> server_state``;
        weight 0 means "ignore this participant" (dropped out or faulty).
      predict: ``(server_state, client_state, x f32[B, H, W, C]) -> prediction`` with the
        client's personalised model (evaluation).
    """
    name: str
    init_server: Callable[..., Any]
    init_client: Callable[..., Any]
    client_update: Callable[..., ClientResult]
    server_update: Callable[..., Any]
    predict: Callable[..., Any]


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


def personal_mask(tree: Any, personal_patterns: Sequence[str]) -> Any:
    """Tree of bools: True where a leaf's path matches any of ``personal_patterns``."""
    compiled = [re.compile(p) for p in personal_patterns]
    return jax.tree_util.tree_map_with_path(
        lambda path, _: any(c.search(path_name(path)) for c in compiled), tree)


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

    Integer leaves (e.g. BatchNorm counters) are averaged in float and cast back.
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

def num_local_steps(n_max: int, batch_size: int, epochs: int) -> int:
    """Static scan length: ``epochs * ceil(n_max / batch_size)``."""
    return epochs * max(1, -(-n_max // batch_size))


def epoch_permutations(key: jax.Array, n: jax.Array, n_max: int, epochs: int) -> jax.Array:
    """``int32[epochs, n_max]``: row e starts with a random permutation of ``0..n-1``.

    Entries past ``n`` are padding indices (never used for real samples).
    """
    def one(e):
        u = jax.random.uniform(jax.random.fold_in(key, e), (n_max,))
        u = jnp.where(jnp.arange(n_max) < n, u, 2.0)
        return jnp.argsort(u).astype(jnp.int32)

    return jax.vmap(one)(jnp.arange(epochs))


def normalize_images(x: jax.Array) -> jax.Array:
    """uint8 ``[0, 255]`` -> float32 ``[0, 1]`` (done inside the step; data stays uint8)."""
    return x.astype(jnp.float32) / 255.0


class LocalTrainOutput(NamedTuple):
    variables: Any
    opt_state: Any
    stats: Any          # pytree summed over active steps
    mean_loss: jax.Array
    steps: jax.Array


def local_train(loss_fn: Callable, tx: optax.GradientTransformation, variables: Any, opt_state: Any,
                data: ClientData, key: jax.Array, *, epochs: int, batch_size: int,
                stats_init: Any, unroll: int | bool | None = None) -> LocalTrainOutput:
    """Local minibatch training of ONE client (vmap it for many).

    Args:
      loss_fn: ``(params, variables, x f32[B,...], y[B,...], mask bool[B], key)
        -> (scalar loss, (new_mutable_collections dict, stats pytree))``. The loss must
        already be the masked mean over the batch.
      tx: the client optimizer.
      variables: ``{"params": ..., other collections}`` of the full model.
      opt_state: ``tx`` state for ``variables["params"]``.
      data: the client's padded data.
      key: PRNG key of this client and round.
      epochs, batch_size: local work (static).
      stats_init: zero pytree of the per-step statistics summed over steps.
      unroll: ``lax.scan`` unroll of the step loop; ``None`` picks :func:`default_unroll`.

    Returns:
      :class:`LocalTrainOutput`.
    """
    n_max = data.x.shape[0]
    total_steps = num_local_steps(n_max, batch_size, epochs)
    n = data.n.astype(jnp.int32)
    batches_per_epoch = jnp.maximum(1, (n + batch_size - 1) // batch_size)
    active_steps = jnp.where(n > 0, epochs * batches_per_epoch, 0)
    perm_key, step_key = jax.random.split(key)
    perms = epoch_permutations(perm_key, n, n_max, epochs)
    offsets = jnp.arange(batch_size)

    def step(carry, t):
        variables, opt_state, stats, loss_sum = carry
        active = t < active_steps
        epoch = jnp.minimum(t // batches_per_epoch, epochs - 1)
        pos = (t % batches_per_epoch) * batch_size + offsets
        mask = (pos < n) & active
        idx = perms[epoch, jnp.clip(pos, 0, n_max - 1)]
        x = normalize_images(data.x[idx])
        y = data.y[idx]
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}
        grads, (new_rest, step_stats, loss) = jax.grad(_with_loss(loss_fn), has_aux=True)(
            params, rest, x, y, mask, jax.random.fold_in(step_key, t))
        # Keeps XLA from fusing the per-client weight gradient into the update, which
        # picks a far slower layout under vmap (measured: several-fold on GPU).
        grads = jax.lax.optimization_barrier(grads)
        updates, new_opt = tx.update(grads, opt_state, params)
        new_params = optax.apply_updates(params, updates)
        new_vars = dict(rest)
        new_vars.update(new_rest)
        new_vars["params"] = new_params
        keep = lambda new, old: jnp.where(active, new, old)
        variables = jax.tree_util.tree_map(keep, new_vars, variables)
        opt_state = jax.tree_util.tree_map(keep, new_opt, opt_state)
        stats = jax.tree_util.tree_map(lambda s, a: s + jnp.where(active, a, jnp.zeros_like(a)), stats,
                                       step_stats)
        loss_sum = loss_sum + jnp.where(active, loss, 0.0)
        return (variables, opt_state, stats, loss_sum), None

    init = (variables, opt_state, stats_init, jnp.zeros((), jnp.float32))
    if unroll is None:
        unroll = default_unroll(total_steps)
    (variables, opt_state, stats, loss_sum), _ = jax.lax.scan(step, init, jnp.arange(total_steps),
                                                              unroll=unroll)
    mean_loss = loss_sum / jnp.maximum(active_steps, 1).astype(jnp.float32)
    return LocalTrainOutput(variables, opt_state, stats, mean_loss, active_steps)


def default_unroll(total_steps: int) -> int | bool:
    """Scan unroll for the local loop: fully unrolled for short loops on CPU, 1 elsewhere.

    XLA:CPU emits some convolutions inside a ``while`` loop body in a non-canonical
    dimension order (the weight gradient as ``f01b_i01o->01bf``), which its fast
    convolution library does not take, so they fall back to a generic loop: measured
    17x slower for one 5x5x32x64 weight gradient, and 1.7 s vs 0.2 s for 13 FedAvgCNN
    steps. Unrolled, the same ops are canonicalised. On accelerators the rolled loop is as
    fast and compiles faster.
    """
    if jax.default_backend() == "cpu" and total_steps <= 64:
        return True
    return 1


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
