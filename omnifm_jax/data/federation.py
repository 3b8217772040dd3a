"""Padded per-client arrays consumed by the JAX training engine.

A :class:`Federation` holds, for ``K`` clients, a training and a held-out test
:class:`ClientArrays`.  Each field is a dense array with a leading client axis,
zero (or ``-1``) padded up to the largest client, so that the engine can
``vmap`` over clients without any per-step host work.  Everything here is
plain numpy, built once on the host.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .medmnist import LabeledImages

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


def federate(
    data: "LabeledImages",
    *,
    num_clients: int,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_size: int = 10,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> Federation:
    """Partition a labelled pool among clients and build padded train/test arrays.

    Args:
        data: the pool (all of it is distributed; PFLlib re-splits per client).
        num_clients: number of clients ``K``.
        partition: ``dirichlet``, ``pathological``, ``modality`` (single
            modality per client) or ``iid``.
        alpha: Dirichlet concentration (0.1 hard, 0.5 medium).
        classes_per_client: classes per client for ``pathological``.
        min_size: minimum samples per client for ``dirichlet``.
        test_fraction: per-client held-out fraction (PFLlib: 0.25).
        seed: seed of the partition and of the train/test split.

    Returns:
        A validated :class:`Federation`; ``info["train_indices"]`` and
        ``info["test_indices"]`` hold each client's pool indices.
    """
    from . import partition as _partition

    images = np.asarray(data.images)
    labels = np.asarray(data.labels)
    modality = np.asarray(data.modality)
    num_classes = len(data.class_names)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8[N, H, W, C], got {images.dtype}{list(images.shape)}")
    if labels.ndim != 1:
        raise ValueError(f"labels must be int[N] (single-label), got shape {labels.shape}")
    if labels.shape[0] != images.shape[0] or modality.shape != labels.shape:
        raise ValueError(
            f"inconsistent sizes: {images.shape[0]} images, {labels.shape[0]} labels, "
            f"{modality.shape} modality ids"
        )
    if num_classes < 1:
        raise ValueError("data has no class names")
    _partition._check_labels(labels, num_classes=num_classes)
    _partition._check_labels(modality, num_classes=len(data.modality_names), what="modality ids")
    scheme = _partition.canonical_partition_name(partition)
    parts = _partition.partition(
        labels,
        num_clients=num_clients,
        scheme=scheme,
        modality=modality,
        alpha=alpha,
        classes_per_client=classes_per_client,
        min_size=min_size,
        num_classes=num_classes,
        seed=seed,
    )
    train_idx, test_idx = _partition.split_train_test(parts, test_fraction=test_fraction, seed=seed + 1)
    info = {
        "partition": scheme,
        "num_clients": int(num_clients),
        "alpha": float(alpha) if scheme == "dirichlet" else None,
        "classes_per_client": int(classes_per_client) if scheme == "pathological" else None,
        "min_size": int(min_size) if scheme == "dirichlet" else None,
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "num_samples": int(labels.shape[0]),
        "image_shape": [int(v) for v in images.shape[1:]],
        "train_indices": [i.tolist() for i in train_idx],
        "test_indices": [i.tolist() for i in test_idx],
    }
    fed = Federation(
        train=stack_clients(images, labels, modality, train_idx),
        test=stack_clients(images, labels, modality, test_idx),
        num_classes=num_classes,
        class_names=tuple(data.class_names),
        modality_names=tuple(data.modality_names),
        info=info,
    )
    validate_federation(fed)
    return fed


def _validate_arrays(a: ClientArrays, *, what: str, num_classes: int, num_modalities: int) -> None:
    if not isinstance(a, ClientArrays):
        raise ValueError(f"{what}: expected ClientArrays, got {type(a).__name__}")
    x, y, n, m = (np.asarray(v) for v in a)
    if x.dtype != np.uint8:
        raise ValueError(f"{what}.x must be uint8, got {x.dtype}")
    if x.ndim != 5:
        raise ValueError(f"{what}.x must be [K, N_max, H, W, C], got shape {x.shape}")
    k, n_max = x.shape[:2]
    if n.dtype != np.int32 or n.shape != (k,):
        raise ValueError(f"{what}.n must be int32[{k}], got {n.dtype}{list(n.shape)}")
    if m.dtype != np.int32 or m.shape != (k, n_max):
        raise ValueError(f"{what}.modality must be int32[{k}, {n_max}], got {m.dtype}{list(m.shape)}")
    if np.any(n < 0) or np.any(n > n_max):
        raise ValueError(f"{what}.n must lie in [0, N_max={n_max}], got min {n.min()}, max {n.max()}")
    real = np.arange(n_max)[None, :] < n[:, None]
    if np.any(m[~real] != -1):
        raise ValueError(f"{what}.modality padding past n[k] must be -1")
    if real.any() and (m[real].min() < 0 or m[real].max() >= max(num_modalities, 1)):
        raise ValueError(f"{what}.modality ids out of range [0, {num_modalities})")
    if np.any(x[~real] != 0):
        raise ValueError(f"{what}.x padding past n[k] must be zero")
    if num_classes > 0:
        if y.dtype != np.int32 or y.shape != (k, n_max):
            raise ValueError(f"{what}.y must be int32[{k}, {n_max}] labels, got {y.dtype}{list(y.shape)}")
        if np.any(y[~real] != -1):
            raise ValueError(f"{what}.y label padding past n[k] must be -1")
        if real.any() and (y[real].min() < 0 or y[real].max() >= num_classes):
            raise ValueError(
                f"{what}.y labels out of range [0, {num_classes}): min {y[real].min()}, max {y[real].max()}"
            )
    else:
        if y.dtype != np.uint8 or y.ndim != 5 or y.shape[:2] != (k, n_max):
            raise ValueError(
                f"{what}.y must be uint8[{k}, {n_max}, H2, W2, C] image targets, got {y.dtype}{list(y.shape)}"
            )
        if np.any(y[~real] != 0):
            raise ValueError(f"{what}.y target padding past n[k] must be zero")


def validate_federation(fed: Federation) -> None:
    """Check dtypes, shapes, label ranges and padding of a :class:`Federation`.

    Raises:
        ValueError: naming the first problem found (wrong dtype/shape, labels
            out of ``[0, num_classes)``, ``n > N_max``, a client with no
            training samples, padding not ``-1``/zero, mismatched clients).
    """
    if not isinstance(fed, Federation):
        raise ValueError(f"expected a Federation, got {type(fed).__name__}")
    if not isinstance(fed.num_classes, (int, np.integer)) or fed.num_classes < 0:
        raise ValueError(f"num_classes must be a non-negative int, got {fed.num_classes!r}")
    if fed.num_classes and len(fed.class_names) != fed.num_classes:
        raise ValueError(f"{len(fed.class_names)} class names for {fed.num_classes} classes")
    num_mod = len(fed.modality_names)
    _validate_arrays(fed.train, what="train", num_classes=fed.num_classes, num_modalities=num_mod)
    _validate_arrays(fed.test, what="test", num_classes=fed.num_classes, num_modalities=num_mod)
    k_tr, k_te = fed.train.n.shape[0], fed.test.n.shape[0]
    if k_tr != k_te:
        raise ValueError(f"train has {k_tr} clients but test has {k_te}")
    if k_tr < 1:
        raise ValueError("federation has no clients")
    empty = np.flatnonzero(np.asarray(fed.train.n) == 0)
    if empty.size:
        raise ValueError(f"client(s) {empty.tolist()} have no training samples (n == 0)")
    if fed.train.x.shape[2:] != fed.test.x.shape[2:]:
        raise ValueError(f"train and test image shapes differ: {fed.train.x.shape[2:]} vs {fed.test.x.shape[2:]}")
