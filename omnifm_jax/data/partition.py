"""Client partitions of a labelled pool (PFLlib-compatible).

Schemes:

* ``"dirichlet"`` - per class, client shares drawn from ``Dir(alpha)``
  (``alpha=0.1`` hard, ``0.5`` medium); redrawn, as in PFLlib, until every
  client holds at least ``min_size`` samples.
* ``"pathological"`` - every client holds ``classes_per_client`` classes.
* ``"modality"`` - the "extra-hard" split: every client holds a single
  modality; clients are assigned to modalities proportionally to their sizes
  (or round-robin), then each modality's samples are split among its clients.
* ``"iid"`` - uniform random split.

Every function is deterministic given its ``numpy.random.Generator`` / seed,
and assigns every sample to exactly one client.  :func:`split_train_test`
then holds out a per-client test part (75/25 by default, as PFLlib).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "PARTITIONS",
    "dirichlet_partition",
    "pathological_partition",
    "modality_partition",
    "iid_partition",
    "partition",
    "split_train_test",
    "canonical_partition_name",
]

PARTITIONS: tuple[str, ...] = ("dirichlet", "pathological", "modality", "iid")

_ALIASES = {
    "dir": "dirichlet",
    "dirichlet": "dirichlet",
    "pat": "pathological",
    "pathological": "pathological",
    "modality": "modality",
    "single_modality": "modality",
    "extra_hard": "modality",
    "extra-hard": "modality",
    "iid": "iid",
}


def canonical_partition_name(name: str) -> str:
    """Map a partition name or alias (``dir``, ``pat``, ``extra_hard``, ...) to its canonical name."""
    key = str(name).lower().strip()
    if key not in _ALIASES:
        raise ValueError(
            f"unknown partition {name!r}; choose one of {', '.join(PARTITIONS)} "
            f"(aliases: {', '.join(sorted(k for k in _ALIASES if k not in PARTITIONS))})"
        )
    return _ALIASES[key]


def _check_labels(labels: np.ndarray, *, num_classes: int | None = None, what: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{what} must be a 1-D array, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise ValueError(f"{what} must be non-negative, found {labels.min()}")
    if num_classes is not None and labels.size and labels.max() >= num_classes:
        raise ValueError(f"{what} out of range [0, {num_classes}): found {labels.max()}")
    return labels


def _check_clients(num_clients: int, n: int) -> int:
    if not isinstance(num_clients, (int, np.integer)) or isinstance(num_clients, bool):
        raise ValueError(f"num_clients must be an integer, got {num_clients!r}")
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if num_clients > n:
        raise ValueError(f"more clients ({num_clients}) than samples ({n})")
    return int(num_clients)


def _finish(parts: Sequence[Sequence[int] | np.ndarray], n: int, *, scheme: str) -> list[np.ndarray]:
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    empty = [k for k, p in enumerate(out) if p.size == 0]
    if empty:
        raise ValueError(
            f"{scheme} partition left client(s) {empty} empty; use fewer clients, a larger alpha "
            "or min_size, or more data"
        )
    allidx = np.concatenate(out) if out else np.zeros(0, np.int64)
    if allidx.size != n or np.unique(allidx).size != n:
        raise AssertionError(f"{scheme} partition did not assign every sample exactly once")
    return out


def iid_partition(n: int, *, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffle ``range(n)`` and split it into ``num_clients`` near-equal parts."""
    num_clients = _check_clients(num_clients, n)
    perm = rng.permutation(n)
    return _finish(np.array_split(perm, num_clients), n, scheme="iid")


def dirichlet_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 10,
    max_tries: int = 1000,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """PFLlib's Dirichlet label-skew partition.

    For every class, the class's (shuffled) samples are cut by proportions
    drawn from ``Dir(alpha * 1_K)``; clients already holding ``>= N/K``
    samples get no more.  The whole draw is repeated until every client holds
    at least ``min_size`` samples.

    Raises:
        ValueError: ``alpha <= 0``, infeasible ``min_size``, or no valid
            draw within ``max_tries``.
    """
    labels = _check_labels(labels, num_classes=num_classes)
    n = labels.size
    num_clients = _check_clients(num_clients, n)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    min_size = max(int(min_size), 1)
    if min_size * num_clients > n:
        raise ValueError(
            f"min_size {min_size} x {num_clients} clients = {min_size * num_clients} exceeds {n} samples"
        )
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    classes = np.unique(labels)
    by_class = [np.flatnonzero(labels == c) for c in classes]
    for _ in range(max_tries):
        batches: list[list[int]] = [[] for _ in range(num_clients)]
        sizes = np.zeros(num_clients, np.int64)
        for idx_k in by_class:
            idx_k = rng.permutation(idx_k)
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            p = p * (sizes < n / num_clients)
            total = p.sum()
            p = p / total if total > 0 else np.full(num_clients, 1.0 / num_clients)
            cuts = (np.cumsum(p) * len(idx_k)).astype(np.int64)[:-1]
            for k, part in enumerate(np.split(idx_k, cuts)):
                batches[k].extend(part.tolist())
                sizes[k] += part.size
        if sizes.min() >= min_size:
            return _finish(batches, n, scheme="dirichlet")
    raise ValueError(
        f"dirichlet partition: no draw gave every client >= {min_size} samples in {max_tries} tries "
        f"(alpha={alpha}, {num_clients} clients, {n} samples); lower min_size or num_clients, or raise alpha"
    )


def pathological_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """Pathological label skew: every client holds ``classes_per_client`` classes.

    Classes (in a random order) are dealt to clients cyclically, so every
    class with samples has at least one holder when
    ``num_clients * classes_per_client >= #classes``; each class's samples are
    then split evenly (shuffled) among its holders.
    """
    labels = _check_labels(labels, num_classes=num_classes)
    n = labels.size
    num_clients = _check_clients(num_clients, n)
    classes = np.unique(labels)
    c = int(classes_per_client)
    if c < 1:
        raise ValueError(f"classes_per_client must be >= 1, got {classes_per_client}")
    if c > classes.size:
        raise ValueError(f"classes_per_client {c} exceeds the {classes.size} classes present")
    if num_clients * c < classes.size:
        raise ValueError(
            f"{num_clients} clients x {c} classes cannot cover all {classes.size} classes; "
            "raise num_clients or classes_per_client"
        )
    order = rng.permutation(classes)
    holders: dict[int, list[int]] = {int(k): [] for k in classes}
    for k in range(num_clients):
        for j in range(c):
            holders[int(order[(k * c + j) % classes.size])].append(k)
    batches: list[list[int]] = [[] for _ in range(num_clients)]
    for cls, hs in holders.items():
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for k, part in zip(hs, np.array_split(idx, len(hs))):
            batches[k].extend(part.tolist())
    return _finish(batches, n, scheme="pathological")


def _allocate(sizes: np.ndarray, num_clients: int, how: str) -> np.ndarray:
    """Number of clients per modality (each >= 1)."""
    m = sizes.size
    if how == "round_robin":
        return np.array([len(range(i, num_clients, m)) for i in range(m)], np.int64)
    if how != "proportional":
        raise ValueError(f"assign must be 'proportional' or 'round_robin', got {how!r}")
    alloc = np.ones(m, np.int64)
    extra = num_clients - m
    if extra:
        share = sizes / sizes.sum() * num_clients - 1.0
        share = np.clip(share, 0, None)
        share = share / share.sum() * extra if share.sum() > 0 else np.full(m, extra / m)
        base = np.floor(share).astype(np.int64)
        rem = extra - base.sum()
        order = np.argsort(-(share - base), kind="stable")
        base[order[:rem]] += 1
        alloc += base
    # never give a modality more clients than samples
    while np.any(alloc > sizes):
        i = int(np.argmax(alloc - sizes))
        alloc[i] -= 1
        j = int(np.argmax(np.where(alloc < sizes, sizes / alloc, -1)))
        alloc[j] += 1
    return alloc


def modality_partition(
    modality: np.ndarray,
    *,
    num_clients: int,
    rng: np.random.Generator,
    assign: str = "proportional",
) -> list[np.ndarray]:
    """Extra-hard split: every client holds samples of a single modality.

    Clients ``0..K-1`` are given to modalities (in modality-id order),
    ``assign="proportional"`` to modality sizes (each modality >= 1 client,
    largest remainder) or ``"round_robin"``; each modality's shuffled samples
    are then split evenly among its clients.
    """
    modality = _check_labels(modality, what="modality")
    n = modality.size
    num_clients = _check_clients(num_clients, n)
    mods = np.unique(modality)
    if num_clients < mods.size:
        raise ValueError(
            f"modality partition needs at least one client per modality: {num_clients} clients, "
            f"{mods.size} modalities"
        )
    sizes = np.array([(modality == m).sum() for m in mods], np.int64)
    alloc = _allocate(sizes, num_clients, assign)
    if np.any(alloc > sizes):
        raise ValueError("modality partition: a modality has fewer samples than clients")
    batches: list[np.ndarray] = []
    for m, a in zip(mods, alloc):
        idx = rng.permutation(np.flatnonzero(modality == m))
        batches.extend(np.array_split(idx, int(a)))
    return _finish(batches, n, scheme="modality")


def partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    scheme: str = "dirichlet",
    modality: np.ndarray | None = None,
    alpha: float = 0.5,
    classes_per_client: int = 2,
    min_size: int = 10,
    num_classes: int | None = None,
    seed: int = 0,
) -> list[np.ndarray]:
    """Partition a pool among clients with a named scheme.

    Args:
        labels: ``int[N]`` class labels (validated: 1-D, non-negative,
            below ``num_classes`` when given).
        num_clients: ``K >= 1`` and ``<= N``.
        scheme: ``dirichlet``, ``pathological``, ``modality`` or ``iid``
            (aliases ``dir``, ``pat``, ``extra_hard``, ``single_modality``).
        modality: ``int[N]`` modality ids (required by ``modality``).
        alpha: Dirichlet concentration.
        classes_per_client: for ``pathological``.
        min_size: minimum client size for ``dirichlet``.
        num_classes: label-space size used for the range check.
        seed: seed of the ``numpy.random.Generator``.

    Returns:
        ``K`` sorted index arrays, disjoint, covering ``range(N)``, none empty.
    """
    scheme = canonical_partition_name(scheme)
    labels = _check_labels(labels, num_classes=num_classes)
    rng = np.random.default_rng(seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_clients=num_clients, alpha=alpha, rng=rng, min_size=min_size)
    if scheme == "pathological":
        return pathological_partition(
            labels, num_clients=num_clients, classes_per_client=classes_per_client, rng=rng
        )
    if scheme == "modality":
        if modality is None:
            raise ValueError("the modality partition needs per-sample modality ids")
        modality = np.asarray(modality)
        if modality.shape != labels.shape:
            raise ValueError(f"modality shape {modality.shape} != labels shape {labels.shape}")
        return modality_partition(modality, num_clients=num_clients, rng=rng)
    return iid_partition(labels.size, num_clients=num_clients, rng=rng)


def split_train_test(
    client_indices: Sequence[np.ndarray],
    *,
    test_fraction: float = 0.25,
    seed: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-client shuffled train/test split (PFLlib: 75 % train, 25 % test).

    Each client keeps ``floor((1 - test_fraction) * n)`` (at least 1) samples
    for training and holds out the rest.
    """
    if not (0.0 <= test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k, idx in enumerate(client_indices):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"client {k} is empty; cannot split it into train and test")
        perm = rng.permutation(idx)
        n_train = max(1, int(math.floor((1.0 - test_fraction) * idx.size + 1e-9)))
        train.append(np.sort(perm[:n_train]))
        test.append(np.sort(perm[n_train:]))
    return train, test
