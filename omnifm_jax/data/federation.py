"""Ragged per-client arrays consumed by the JAX training engine.

A :class:`Federation` holds, for ``K`` clients, a training and a held-out test
:class:`ClientArrays`.  Each split stores ALL its samples in one flat array, client
after client: client ``k`` owns rows ``offsets[k] : offsets[k] + n[k]``.  Memory is
O(total samples), whatever the spread of client sizes (a Dirichlet(0.1) federation has
clients from tens to thousands of images; a ``[K, N_max]`` layout would mostly hold
padding).  The engine gathers each minibatch by index inside the jitted round.
Everything here is plain numpy, built once on the host.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, NamedTuple, Optional, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .pool import LabeledImages

__all__ = [
    "ClientArrays",
    "ServerData",
    "Federation",
    "stack_clients",
    "client_slice",
    "client_ids",
    "federate",
    "deduplicate",
    "validate_federation",
]


class ClientArrays(NamedTuple):
    """One split of every client's data, stored flat (ragged).

    Attributes:
        x: ``uint8[N, H, W, C]`` inputs of all clients, client after client.
        y: ``int32[N]`` class labels, or ``uint8[N, H2, W2, C]`` image targets
            (super-resolution).
        n: ``int32[K]`` number of samples of each client.
        offsets: ``int32[K]`` first row of each client: ``offsets[k] = n[:k].sum()``.
        modality: ``int32[N]`` modality id of each sample.
    """

    x: np.ndarray
    y: np.ndarray
    n: np.ndarray
    offsets: np.ndarray
    modality: np.ndarray

    @property
    def num_clients(self) -> int:
        return int(np.shape(self.n)[0])

    @property
    def sample_shape(self) -> tuple:
        """Shape of one input image ``(H, W, C)``."""
        return tuple(np.shape(self.x)[1:])


class ServerData(NamedTuple):
    """Samples held by the server and by no client (e.g. FedMEPD's full-modal set).

    Attributes:
        x: ``uint8[Ns, H, W, C]`` inputs, the clients' image shape.
        y: targets of the same kind as the clients' (``int32[Ns]`` labels or
            ``uint8[Ns, H2, W2, C]`` image targets / masks).
    """

    x: np.ndarray
    y: np.ndarray


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
        server: the server's own split (:class:`ServerData`), produced by loaders whose
            protocol holds samples out of every client for the server; None otherwise.
            A run hands it to an algorithm whose factory takes ``server``.
    """

    train: ClientArrays
    test: ClientArrays
    num_classes: int
    class_names: tuple[str, ...]
    modality_names: tuple[str, ...]
    info: dict
    server: Optional[ServerData] = None

    @property
    def num_clients(self) -> int:
        """Number of clients ``K``."""
        return int(self.train.n.shape[0])


def client_slice(arrays: ClientArrays, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, modality)`` of client ``k`` (numpy views, no copy)."""
    lo = int(arrays.offsets[k])
    hi = lo + int(arrays.n[k])
    return arrays.x[lo:hi], arrays.y[lo:hi], arrays.modality[lo:hi]


def client_ids(arrays: ClientArrays) -> np.ndarray:
    """``int32[N]``: the client that owns each row."""
    n = np.asarray(arrays.n)
    return np.repeat(np.arange(n.shape[0], dtype=np.int32), n)


def stack_clients(
    x: np.ndarray,
    y: np.ndarray,
    modality: np.ndarray,
    client_indices: Sequence[np.ndarray],
) -> ClientArrays:
    """Gather the samples of every client into one flat array, client after client.

    Args:
        x: ``uint8[N, H, W, C]`` inputs of the whole pool.
        y: ``int[N]`` class labels, or ``uint8[N, H2, W2, C]`` image targets
            (super-resolution pairs).
        modality: ``int[N]`` modality id per sample.
        client_indices: one 1-D integer index array per client (indices into
            the pool).  Clients may be empty (``n[k] == 0``).

    Returns:
        A :class:`ClientArrays` with ``x.shape[0] == sum(n)`` (no padding).

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
        y_dtype = np.int32
    elif y.ndim == 4:
        if y.dtype != np.uint8:
            raise ValueError(f"stack_clients: image targets must be uint8, got {y.dtype}")
        y_dtype = np.uint8
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
    n = np.array([len(i) for i in idx_list], dtype=np.int32)
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int32)
    flat = np.concatenate(idx_list) if n.sum() else np.zeros(0, np.int64)
    return ClientArrays(
        x=np.ascontiguousarray(x[flat]),
        y=np.ascontiguousarray(y[flat].astype(y_dtype)),
        n=n,
        offsets=offsets,
        modality=modality[flat].astype(np.int32),
    )


def validation_split(fed: "Federation", fraction: float, *, seed: int = 0) -> "Federation":
    """A federation for choosing settings: each client's TRAINING samples split into
    ``1 - fraction`` training and ``fraction`` validation samples (at least one of each when
    the client has two or more; drawn with ``default_rng([seed, 0x7661, k])``); the validation
    samples take the place of the test split, and the test split is not used at all.
    Super-resolution targets and modality ids travel with their samples."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction!r}")
    train_idx, val_idx = [], []
    for k in range(fed.num_clients):
        start, n = int(fed.train.offsets[k]), int(fed.train.n[k])
        rows = start + np.random.default_rng([seed, 0x7661, k]).permutation(n)
        n_val = int(round(fraction * n))
        n_val = min(max(n_val, 1 if n >= 2 else 0), n - 1) if n >= 1 else 0
        val_idx.append(rows[:n_val])
        train_idx.append(np.sort(rows[n_val:]))
    t = fed.train
    info = dict(fed.info, validation_fraction=float(fraction),
                split_note=f"validation: {fraction:.0%} of each client's training samples (the test split is unused)")
    return dataclasses.replace(fed, train=stack_clients(t.x, t.y, t.modality, train_idx),
                               test=stack_clients(t.x, t.y, t.modality, val_idx), info=info)


def deduplicate(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """Which samples to keep so that no two kept images are byte-identical.

    Images are compared byte for byte (SHA-256 of the uint8 pixels; equal digests are
    then compared in full, so a collision cannot merge two different images). In a group
    of identical images whose labels agree, the first one (lowest index) is kept; a group
    whose labels disagree is dropped entirely, since no copy's label can be trusted.
    MedMNIST/PBC ship such groups (e.g. a BreastMNIST test image identical to a training
    image with the opposite label); left in, a copy can land in one client's training set
    and another in a test set.

    Args:
        images: ``uint8[N, H, W, C]``.
        labels: ``int[N]``.

    Returns:
        ``(keep, report)``: sorted ``int64`` indices of the kept samples, and a JSON-able
        dict with ``groups`` (groups of >= 2 identical images), ``images_in_groups``,
        ``removed_copies`` (extra copies of label-consistent groups),
        ``conflicting_groups`` and ``conflicting_images`` (dropped), ``kept``.
    """
    import hashlib

    images = np.ascontiguousarray(images)
    labels = np.asarray(labels)
    buckets: dict[bytes, list[int]] = {}
    for i in range(images.shape[0]):
        buckets.setdefault(hashlib.sha256(images[i].tobytes()).digest(), []).append(i)
    drop: list[int] = []
    groups = in_groups = removed = conflicting = conflicting_images = 0
    for members in buckets.values():
        if len(members) < 2:
            continue
        # Split a bucket into groups of truly equal images (guards against a hash collision).
        rest = list(members)
        while rest:
            first, rest = rest[0], rest[1:]
            same = [first] + [j for j in rest if np.array_equal(images[j], images[first])]
            rest = [j for j in rest if j not in same]
            if len(same) < 2:
                continue
            groups += 1
            in_groups += len(same)
            if np.unique(labels[same]).size > 1:
                conflicting += 1
                conflicting_images += len(same)
                drop.extend(same)
            else:
                removed += len(same) - 1
                drop.extend(same[1:])
    keep = np.setdiff1d(np.arange(images.shape[0], dtype=np.int64), np.asarray(drop, np.int64))
    report = {"enabled": True, "groups": groups, "images_in_groups": in_groups, "removed_copies": removed,
              "conflicting_groups": conflicting, "conflicting_images": conflicting_images,
              "kept": int(keep.size)}
    return keep, report


def federate(
    data: "LabeledImages",
    *,
    num_clients: int,
    partition: str = "dirichlet",
    alpha: float = 0.5,
    classes_per_client: int = 2,
    balance: bool = False,
    min_size: int | None = None,
    test_fraction: float = 0.25,
    seed: int = 0,
    dedup: bool = True,
) -> Federation:
    """Partition a labelled pool among clients and build ragged train/test arrays.

    Args:
        data: the pool (all of it is distributed; PFLlib re-splits per client).
        num_clients: number of clients ``K``.
        partition: ``dirichlet`` (PFLlib ``dir``), ``pathological`` (PFLlib
            ``pat``), ``modality`` (single modality per client) or ``iid``;
            see :mod:`omnifm_jax.data.partition`.
        alpha: Dirichlet concentration (0.1 hard, 0.5 medium).
        classes_per_client: class quota per client for ``pathological``.
        balance: ``pathological`` only: equal shares of a class among its
            holders instead of PFLlib's default random ones.
        min_size: PFLlib's ``least_samples`` (minimum client size of
            ``dirichlet``, lower bound of unbalanced ``pathological`` shares);
            ``None`` (default) is PFLlib's ``int(min(40, N / K / 2))``.
        test_fraction: per-client held-out fraction (PFLlib: 0.25).
        seed: seed of the partition and of the train/test split.
        dedup: drop byte-identical copies before partitioning (:func:`deduplicate`), so
            no test sample has an identical training sample; ``info["dedup"]`` reports
            what was removed. ``False`` partitions the pool as it is.

    Returns:
        A validated :class:`Federation`; ``info["train_indices"]`` and
        ``info["test_indices"]`` hold each client's pool indices (into the pool as
        given, duplicates included).
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
    if not isinstance(dedup, (bool, np.bool_)):
        raise ValueError(f"dedup must be True or False, got {dedup!r}")
    if dedup:
        pool, dedup_report = deduplicate(images, labels)
    else:
        pool, dedup_report = np.arange(labels.shape[0], dtype=np.int64), {"enabled": False}
    scheme = _partition.canonical_partition_name(partition)
    parts = _partition.partition(
        labels[pool],
        num_clients=num_clients,
        scheme=scheme,
        modality=modality[pool],
        alpha=alpha,
        classes_per_client=classes_per_client,
        balance=balance,
        min_size=min_size,
        num_classes=num_classes,
        seed=seed,
    )
    parts = [pool[np.asarray(p, dtype=np.int64)] for p in parts]
    train_idx, test_idx = _partition.split_train_test(parts, test_fraction=test_fraction, seed=seed + 1)
    info = {
        "partition": scheme,
        "num_clients": int(num_clients),
        "alpha": float(alpha) if scheme == "dirichlet" else None,
        "classes_per_client": int(classes_per_client) if scheme == "pathological" else None,
        "balance": bool(balance) if scheme == "pathological" else None,
        # the minimum client size / least_samples actually used (None -> PFLlib's rule)
        "min_size": (
            int(min_size) if min_size is not None
            else _partition.pfllib_least_samples(int(pool.size), int(num_clients))
        ) if scheme in ("dirichlet", "pathological") else None,
        "test_fraction": float(test_fraction),
        "seed": int(seed),
        "num_samples": int(pool.size),
        "dedup": dedup_report,
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
    x, y, n, offsets, m = (np.asarray(v) for v in a)
    if x.dtype != np.uint8:
        raise ValueError(f"{what}.x must be uint8, got {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{what}.x must be [N, H, W, C] (all clients' samples, flat), got shape {x.shape}")
    total = x.shape[0]
    if n.dtype != np.int32 or n.ndim != 1:
        raise ValueError(f"{what}.n must be int32[K], got {n.dtype}{list(n.shape)}")
    k = n.shape[0]
    if np.any(n < 0):
        raise ValueError(f"{what}.n must be >= 0, got min {n.min()}")
    if int(n.sum()) != total:
        raise ValueError(f"{what}.n sums to {int(n.sum())} samples but x holds {total}")
    expected = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int32) if k else n
    if offsets.dtype != np.int32 or offsets.shape != (k,) or np.any(offsets != expected):
        raise ValueError(f"{what}.offsets must be int32[{k}] = the running sum of n (clients stored one after "
                         f"another), got {offsets.dtype}{list(offsets.shape)}")
    if m.dtype != np.int32 or m.shape != (total,):
        raise ValueError(f"{what}.modality must be int32[{total}], got {m.dtype}{list(m.shape)}")
    if total and (m.min() < 0 or m.max() >= max(num_modalities, 1)):
        raise ValueError(f"{what}.modality ids out of range [0, {num_modalities})")
    if num_classes > 0:
        if y.dtype != np.int32 or y.shape != (total,):
            raise ValueError(f"{what}.y must be int32[{total}] labels, got {y.dtype}{list(y.shape)}")
        if total and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{what}.y labels out of range [0, {num_classes}): min {y.min()}, max {y.max()}")
    else:
        if y.dtype != np.uint8 or y.ndim != 4 or y.shape[0] != total:
            raise ValueError(
                f"{what}.y must be uint8[{total}, H2, W2, C] image targets, got {y.dtype}{list(y.shape)}"
            )


def _validate_server(server: ServerData, train: ClientArrays) -> None:
    if not isinstance(server, ServerData):
        raise ValueError(f"server: expected ServerData(x, y), got {type(server).__name__}")
    x, y, ty = np.asarray(server.x), np.asarray(server.y), np.asarray(train.y)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != tuple(np.shape(train.x)[1:]):
        raise ValueError(f"server.x must be uint8[Ns, {', '.join(map(str, np.shape(train.x)[1:]))}] like the clients' "
                         f"images, got {x.dtype}{list(x.shape)}")
    if y.dtype != ty.dtype or y.shape[:1] != x.shape[:1] or y.shape[1:] != ty.shape[1:]:
        raise ValueError(f"server.y must be {ty.dtype}[{x.shape[0]}{''.join(f', {d}' for d in ty.shape[1:])}] like "
                         f"the clients' targets, got {y.dtype}{list(y.shape)}")


def validate_federation(fed: Federation) -> None:
    """Check dtypes, shapes, label ranges and the ragged layout of a :class:`Federation`.

    Raises:
        ValueError: naming the first problem found (wrong dtype/shape, labels
            out of ``[0, num_classes)``, counts that do not add up to the rows,
            offsets that are not the running sum of the counts, a client with no
            training samples, mismatched clients).
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
    if fed.train.x.shape[1:] != fed.test.x.shape[1:]:
        raise ValueError(f"train and test image shapes differ: {fed.train.x.shape[1:]} vs {fed.test.x.shape[1:]}")
    if fed.server is not None:
        _validate_server(fed.server, fed.train)
