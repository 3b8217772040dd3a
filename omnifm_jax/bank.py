"""The server's global spectral knowledge bank (OmniFM Sec. 3.3, Eq. 7-8).

The bank is an immutable, fixed-capacity array: every function takes a :class:`Bank`
and returns a new one, with the same shapes, so it jit-compiles once per capacity
and width. Free slots are marked by ``valid == False``; they are never retrieved.

* :func:`retrieve` -- masked cosine top-k (Sec. 3.3 steps 1-2).
* :func:`insert`   -- Eq. 7: ``K <- Pi_B(rho)(K u {s_k})``; new embeddings take free
  slots first, and when the bank is full they replace the least-retrieved slots,
  the oldest first. Then every embedding is projected onto the ball of radius rho.
  Seeding at round 0 (``K^(0) = {s_k^(0)}``) is an insert into an empty bank.
* :func:`record_hits` / :func:`add_hits` / :func:`prune` -- Eq. 8: ``Prune(s_i) = {} if
  freq(s_i) < delta``. ``freq`` is the retrieval count of the latest round
  (``hits = decay * hits + this round's count``, ``decay = 0`` by default; ``decay = 1``
  is a cumulative count, under which a slot retrieved once is never pruned). Pruning
  applies only to slots older than a warm-up age so that fresh uploads are not dropped
  before anyone could retrieve them.
* :func:`tick` -- ages every valid slot by one round.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp

__all__ = ["MISSING", "Bank", "init", "cosine_scores", "retrieve", "project_to_ball", "replacement_order",
           "insert", "hit_counts", "record_hits", "add_hits", "prune", "tick", "mean_valid"]

MISSING = -1  # index of a retrieval slot that could not be filled (fewer valid slots than k)


class Bank(NamedTuple):
    """Fixed-capacity knowledge bank.

    Attributes:
      embeddings: f32[M, d] prototypes (zero in free slots).
      valid: bool[M] whether a slot holds a prototype.
      hits: f32[M] retrieval frequency (decayed count, see :func:`add_hits`).
      age: int32[M] rounds since the slot was filled (0 for free slots).
    """
    embeddings: jax.Array  # f32[M, d]
    valid: jax.Array       # bool[M]
    hits: jax.Array        # f32[M]
    age: jax.Array         # int32[M]

    @property
    def capacity(self) -> int:
        return self.embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]


def init(capacity: int, dim: int, dtype=jnp.float32) -> Bank:
    """An empty bank of ``capacity`` slots of width ``dim``."""
    if capacity < 1 or dim < 1:
        raise ValueError(f"bank capacity and dim must be >= 1, got capacity={capacity}, dim={dim}")
    return Bank(
        embeddings=jnp.zeros((capacity, dim), dtype),
        valid=jnp.zeros((capacity,), bool),
        hits=jnp.zeros((capacity,), jnp.float32),
        age=jnp.zeros((capacity,), jnp.int32),
    )


def _check_width(bank: Bank, x: jax.Array, what: str) -> None:
    if x.shape[-1] != bank.dim:
        raise ValueError(f"{what} have width {x.shape[-1]} but the bank stores width {bank.dim}")


def cosine_scores(bank: Bank, queries: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Cosine similarity of each query with each slot, ``-inf`` on free slots.

    Args:
      bank: the bank.
      queries: ``(..., d)``.

    Returns:
      ``(..., M)`` scores.
    """
    _check_width(bank, queries, "queries")
    q = queries * jax.lax.rsqrt(jnp.maximum(jnp.sum(queries * queries, -1, keepdims=True), eps * eps))
    e = bank.embeddings
    e = e * jax.lax.rsqrt(jnp.maximum(jnp.sum(e * e, -1, keepdims=True), eps * eps))
    scores = jnp.einsum("...d,md->...m", q, e.astype(q.dtype))
    return jnp.where(bank.valid, scores, -jnp.inf)


def retrieve(bank: Bank, queries: jax.Array, k: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """Top-``k`` prototypes by cosine similarity, over valid slots only.

    Args:
      bank: the bank.
      queries: ``(..., d)`` query embeddings.
      k: number of prototypes (static), ``1 <= k <= capacity``.

    Returns:
      ``(prototypes[..., k, d], indices[..., k], similarities[..., k])``, sorted by
      decreasing similarity. Where fewer than ``k`` slots are valid, the missing
      entries have index ``MISSING`` (-1), similarity ``-inf`` and a zero prototype.
      Ties are broken by the lower slot index, so retrieval is deterministic.
    """
    if not 1 <= k <= bank.capacity:
        raise ValueError(f"top-k must be in [1, bank capacity={bank.capacity}], got k={k}")
    scores = cosine_scores(bank, queries)
    sims, idx = jax.lax.top_k(scores, k)
    found = jnp.isfinite(sims)
    idx = jnp.where(found, idx, MISSING)
    protos = jnp.where(found[..., None], bank.embeddings[jnp.maximum(idx, 0)], 0.0)
    return protos, idx, sims


def project_to_ball(x: jax.Array, rho: float) -> jax.Array:
    """Projection onto ``{s : ||s||_2 <= rho}``: ``x * min(1, rho / ||x||)``."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
    scale = jnp.minimum(1.0, rho / jnp.maximum(norm, 1e-30))
    return x * scale


def replacement_order(bank: Bank) -> jax.Array:
    """Slot indices in the order new embeddings fill them.

    Free slots first (lowest index first), then valid slots by fewest hits, and among
    equal hits the oldest first (then lowest index).
    """
    # lexsort: the LAST key is the primary one.
    slots = jnp.arange(bank.capacity)
    return jnp.lexsort((slots, -bank.age, bank.hits, bank.valid.astype(jnp.int32)))


def insert(bank: Bank, embeddings: jax.Array, *, rho: float,
           mask: Optional[jax.Array] = None) -> Bank:
    """Eq. 7: add ``embeddings`` to the bank, then project every slot onto B(rho).

    Args:
      bank: the bank.
      embeddings: ``(n, d)`` uploads, ``n <= capacity`` (static).
      rho: radius of the ball (> 0).
      mask: optional ``bool[n]``; uploads with ``False`` are ignored (clients that
        dropped out or sent a non-finite update). They consume no slot.

    Returns:
      the new bank. New slots get ``valid=True, hits=0, age=0``.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"insert expects (n, d) embeddings, got shape {embeddings.shape}")
    _check_width(bank, embeddings, "uploaded embeddings")
    n = embeddings.shape[0]
    if n > bank.capacity:
        raise ValueError(f"cannot insert {n} embeddings into a bank of capacity {bank.capacity}")
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if mask is None:
        mask = jnp.ones((n,), bool)
    mask = mask & jnp.all(jnp.isfinite(embeddings), axis=-1)
    order = replacement_order(bank)
    rank = jnp.cumsum(mask.astype(jnp.int32)) - 1
    # Masked-out uploads scatter to index M, which mode="drop" discards.
    target = jnp.where(mask, order[jnp.clip(rank, 0, bank.capacity - 1)], bank.capacity)
    safe = jnp.where(mask[:, None], embeddings, 0.0).astype(bank.embeddings.dtype)
    new = Bank(
        embeddings=bank.embeddings.at[target].set(safe, mode="drop"),
        valid=bank.valid.at[target].set(True, mode="drop"),
        hits=bank.hits.at[target].set(0, mode="drop"),
        age=bank.age.at[target].set(0, mode="drop"),
    )
    return new._replace(embeddings=project_to_ball(new.embeddings, rho))


def hit_counts(capacity: int, indices: jax.Array, weights: Optional[jax.Array] = None) -> jax.Array:
    """``int32[capacity]`` retrieval counts from retrieved ``indices`` (any shape, -1 ignored).

    ``weights`` (broadcastable to ``indices``) lets callers drop padded samples.
    """
    flat = indices.reshape(-1)
    w = jnp.ones_like(flat) if weights is None else jnp.broadcast_to(weights, indices.shape).reshape(-1)
    flat = jnp.where(flat < 0, capacity, flat)
    return jnp.zeros((capacity,), jnp.int32).at[flat].add(w.astype(jnp.int32), mode="drop")


def record_hits(bank: Bank, indices: jax.Array, weights: Optional[jax.Array] = None, *,
                decay: float = 1.0) -> Bank:
    """Eq. 8 bookkeeping: one hit per retrieval of a slot (``MISSING`` ignored), see :func:`add_hits`."""
    return add_hits(bank, hit_counts(bank.capacity, indices, weights), decay=decay)


def add_hits(bank: Bank, counts: jax.Array, *, decay: float = 0.0) -> Bank:
    """``hits <- decay * hits + counts`` on valid slots (``counts``: this round's retrievals,
    e.g. summed over clients). ``decay=0``: the frequency is the latest round's count;
    ``decay=1``: a cumulative count."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"hit decay must be in [0, 1], got {decay}")
    new = decay * bank.hits + counts.astype(jnp.float32)
    return bank._replace(hits=jnp.where(bank.valid, new, 0.0))


def prune(bank: Bank, *, min_hits: int, warmup: int = 1) -> Bank:
    """Eq. 8: drop prototypes retrieved fewer than ``min_hits`` times.

    Only slots whose ``age >= warmup`` are eligible, so a fresh upload survives until
    it has had ``warmup`` rounds in which to be retrieved. Dropped slots are cleared.
    """
    drop = bank.valid & (bank.age >= warmup) & (bank.hits < min_hits)
    keep = ~drop
    return Bank(
        embeddings=jnp.where(keep[:, None], bank.embeddings, 0.0),
        valid=bank.valid & keep,
        hits=jnp.where(keep, bank.hits, 0.0),
        age=jnp.where(keep, bank.age, 0),
    )


def tick(bank: Bank) -> Bank:
    """Age every valid slot by one round."""
    return bank._replace(age=jnp.where(bank.valid, bank.age + 1, 0))


def mean_valid(prototypes: jax.Array, valid: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """Mean of the retrieved prototypes where ``valid`` (e.g. ``indices >= 0``).

    Returns ``(mean[..., d], any_valid[...])``; the mean is zero where none is valid.
    """
    valid = valid.astype(prototypes.dtype)
    count = jnp.sum(valid, axis=-1)
    total = jnp.sum(prototypes * valid[..., None], axis=-2)
    mean = total / jnp.maximum(count, 1.0)[..., None]
    return mean, count > 0
