"""Padded per-client arrays consumed by the JAX training engine.

A :class:`Federation` holds, for ``K`` clients, a training and a held-out test
:class:`ClientArrays`.  Each field is a dense array with a leading client axis,
zero (or ``-1``) padded up to the largest client, so that the engine can
``vmap`` over clients without any per-step host work.  Everything here is
plain numpy, built once on the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import numpy as np

__all__ = [
    "ClientArrays",
    "Federation",
    "stack_clients",
    "federate",
    "validate_federation",
]


class ClientArrays(NamedTuple):
    """Per-client data, padded to a common per-client size ``N_max``.

    Attributes:
        x: ``uint8[K, N_max, H, W, C]`` inputs, zero padded past ``n[k]``.
        y: ``int32[K, N_max]`` class labels with ``-1`` padding, or
            ``uint8[K, N_max, H2, W2, C]`` image targets (super-resolution),
            zero padded.
        n: ``int32[K]`` number of real samples per client.
        modality: ``int32[K, N_max]`` modality id per sample, ``-1`` padding.
    """

    x: np.ndarray
    y: np.ndarray
    n: np.ndarray
    modality: np.ndarray


@dataclasses.dataclass(frozen=True)
class Federation:
    """A federated data set: train/test arrays for every client plus metadata.

    Attributes:
        train: training arrays of all clients.
        test: held-out test arrays of all clients (same clients, same order).
        num_classes: number of classes; ``0`` for super-resolution.
        class_names: one name per class (empty for super-resolution).
        modality_names: one name per modality id.
        info: JSON-serialisable description (partition name, alpha, seed, ...).
    """

    train: ClientArrays
    test: ClientArrays
    num_classes: int
    class_names: tuple[str, ...]
    modality_names: tuple[str, ...]
    info: dict

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return int(self.train.n.shape[0])


def stack_clients(
    x: np.ndarray,
    y: np.ndarray,
    modality: np.ndarray,
    client_indices: Sequence[np.ndarray],
) -> ClientArrays:
    """Gather samples per client and pad them into dense ``[K, N_max, ...]`` arrays.

    Args:
        x: ``uint8[N, H, W, C]`` inputs of the whole pool.
        y: ``int[N]`` class labels, or ``uint8[N, H2, W2, C]`` image targets
            (super-resolution pairs).
        modality: ``int[N]`` modality id per sample.
        client_indices: one 1-D integer index array per client (indices into
            the pool).  Clients may be empty (``n[k] == 0``).

    Returns:
        A :class:`ClientArrays`; label padding is ``-1``, image padding ``0``,
        modality padding ``-1``.

    Raises:
        ValueError: on inconsistent shapes, wrong dtypes, no clients, or
            indices out of range.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    modality = np.asarray(modality)
    if x.ndim != 4:
        raise ValueError(f"stack_clients: x must be [N, H, W, C], got shape {x.shape}")
    if x.dtype != np.uint8:
        raise ValueError(f"stack_clients: x must be uint8, got {x.dtype}")
    n_pool = x.shape[0]
    if y.shape[:1] != (n_pool,):
        raise ValueError(f"stack_clients: y has {y.shape[:1]} samples, x has {n_pool}")
    if modality.shape != (n_pool,):
        raise ValueError(f"stack_clients: modality must have shape ({n_pool},), got {modality.shape}")
    if y.ndim == 1:
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"stack_clients: labels must be integers, got {y.dtype}")
        is_labels = True
    elif y.ndim == 4:
        if y.dtype != np.uint8:
            raise ValueError(f"stack_clients: image targets must be uint8, got {y.dtype}")
        is_labels = False
    else:
        raise ValueError(
            f"stack_clients: y must be labels [N] or image targets [N, H2, W2, C], got shape {y.shape}"
        )
    if len(client_indices) < 1:
        raise ValueError("stack_clients: need at least one client")
    idx_list = []
    for k, idx in enumerate(client_indices):
        idx = np.asarray(idx)
        if idx.ndim != 1:
            raise ValueError(f"stack_clients: indices of client {k} must be 1-D, got shape {idx.shape}")
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"stack_clients: indices of client {k} must be integers, got {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= n_pool):
            raise ValueError(
                f"stack_clients: indices of client {k} out of range [0, {n_pool}): "
                f"min {idx.min()}, max {idx.max()}"
            )
        idx_list.append(idx)

    num = len(idx_list)
    n = np.array([len(i) for i in idx_list], dtype=np.int32)
    n_max = max(int(n.max()), 1)
    xs = np.zeros((num, n_max) + x.shape[1:], dtype=np.uint8)
    if is_labels:
        ys = np.full((num, n_max), -1, dtype=np.int32)
    else:
        ys = np.zeros((num, n_max) + y.shape[1:], dtype=np.uint8)
    ms = np.full((num, n_max), -1, dtype=np.int32)
    for k, idx in enumerate(idx_list):
        m = len(idx)
        if m:
            xs[k, :m] = x[idx]
            ys[k, :m] = y[idx]
            ms[k, :m] = modality[idx]
    return ClientArrays(x=xs, y=ys, n=n, modality=ms)


def federate(*args: Any, **kwargs: Any) -> Federation:  # placeholder, replaced below
    raise NotImplementedError


def validate_federation(fed: Federation) -> None:  # placeholder, replaced below
    raise NotImplementedError
