"""Client partitions of a labelled pool, following PFLlib's ``separate_data``.

PFLlib (TsingZ0/PFLlib, ``dataset/utils/dataset_utils.py``) is the reference for
the two label-skew schemes; what is taken from it:

* ``"dirichlet"`` (PFLlib ``dir``) - for every class, the class's shuffled
  samples are cut by client shares drawn from ``Dir(alpha * 1_K)``; clients
  that already hold ``>= N/K`` samples get none of the class.  The whole
  partition is redrawn until every client holds at least ``least_samples``
  samples, PFLlib's ``int(min(batch_size / (1 - train_ratio), N / K / 2))``
  with its data-generation constants ``batch_size=10``, ``train_ratio=0.75``,
  i.e. ``int(min(40, N / K / 2))`` (``min_size=None``; an int overrides it).
* ``"pathological"`` (PFLlib ``pat``) - every client has a quota of
  ``classes_per_client`` classes.  Classes are taken in order ``0..C-1``; the
  holders of a class are the clients, in index order, that still have quota
  left, cut to the first ``ceil(K / C * classes_per_client)`` (computed in
  floating point, as PFLlib does).  A class's samples are cut into consecutive
  runs, one per holder: ``balance=True`` gives every holder ``int(N_c / h)``
  and the last one the rest; ``balance=False`` (PFLlib's default) draws the
  sizes of all but the last holder uniformly from
  the integers ``[int(max(N_c / h / 10, least_samples / C)), int(N_c / h))``
  (``numpy``'s ``randint`` truncates its float bounds the same way) and the last
  holder takes the rest.  Each holder's quota then drops by one.  Where PFLlib
  would crash (an empty random range) or silently drop samples (quotas used up
  before the last class with samples), a ``ValueError`` is raised instead.
  One deliberate difference: PFLlib cuts a class's samples in pool order; we
  shuffle them first (sizes and holders are unchanged), because our pools are
  ordered by modality and official split, which would otherwise leak into the
  partition (e.g. the holders of a synthetic class each getting one modality).

Our own schemes:

* ``"modality"`` - the "extra-hard" split: every client holds a single
  modality; clients are assigned to modalities proportionally to their sizes
  (or round-robin), then each modality's samples are split among its clients.
* ``"iid"`` - uniform random split into near-equal parts.

Randomness comes from a ``numpy.random.Generator`` (not PFLlib's global
``np.random`` state), so draws differ from PFLlib's for the same seed, but
every function is deterministic given its generator / seed, assigns every
sample to exactly one client and never leaves a client empty (``ValueError``
instead).  :func:`split_train_test` then holds out a per-client test part: as
PFLlib's ``train_test_split(train_size=0.75, shuffle=True)``, a client with
``n`` samples keeps ``floor(0.75 * n)`` for training.

This module is over 400 lines on purpose: it owns one concern, the partition of a pool into
clients, and its four schemes share the checks and the PFLlib conventions written out
above (a fifth of the file is this docstring).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

__all__ = [
    "PARTITIONS",
    "PFLLIB_BATCH_SIZE",
    "PFLLIB_TRAIN_RATIO",
    "pfllib_least_samples",
    "dirichlet_partition",
    "pathological_partition",
    "modality_partition",
    "iid_partition",
    "partition",
    "split_train_test",
    "canonical_partition_name",
]

PARTITIONS: tuple[str, ...] = ("dirichlet", "pathological", "modality", "iid")

#: PFLlib's data-generation constants (``dataset/utils/dataset_utils.py``) behind
#: its minimum client size ``least_samples``.
PFLLIB_BATCH_SIZE: int = 10
PFLLIB_TRAIN_RATIO: float = 0.75

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


def pfllib_least_samples(n: int, num_clients: int) -> int:
    """PFLlib's minimum client size: ``int(min(batch_size / (1 - train_ratio), N / K / 2))``.

    With PFLlib's ``batch_size=10`` and ``train_ratio=0.75`` this is
    ``int(min(40, n / num_clients / 2))``: at least one test batch per client,
    but never more than half of an even share.
    """
    return int(min(PFLLIB_BATCH_SIZE / (1 - PFLLIB_TRAIN_RATIO), n / num_clients / 2))


def _resolve_min_size(min_size: int | None, n: int, num_clients: int) -> int:
    """``min_size`` itself, or PFLlib's ``least_samples`` when it is ``None``."""
    if min_size is None:
        return pfllib_least_samples(n, num_clients)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)):
        raise ValueError(f"min_size must be an integer or None (PFLlib's rule), got {min_size!r}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    return int(min_size)


def _finish(parts: Sequence[Sequence[int] | np.ndarray], n: int, *, scheme: str) -> list[np.ndarray]:
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    empty = [k for k, p in enumerate(out) if p.size == 0]
    if empty:
        raise ValueError(
            f"{scheme} partition left client(s) {empty} empty; use fewer clients or more data"
            + (", or balance=True / more classes_per_client" if scheme == "pathological" else "")
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
    min_size: int | None = None,
    max_tries: int = 10000,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """PFLlib's Dirichlet label-skew partition (``partition="dir"``).

    For every class, proportions are drawn from ``Dir(alpha * 1_K)``; clients
    already holding ``>= N/K`` samples get a zero share, the rest are
    renormalised, and the class's shuffled samples are cut at
    ``int(cumsum(p) * N_c)``.  The whole draw is repeated until every client
    holds at least ``min_size`` samples.

    Args:
        labels: ``int[N]`` class labels.
        num_clients: ``K``.
        alpha: Dirichlet concentration (``> 0``).
        rng: source of randomness.
        min_size: minimum client size; ``None`` (default) is PFLlib's
            ``least_samples = int(min(40, N / K / 2))`` (see
            :func:`pfllib_least_samples`).  Clients are never allowed to be
            empty, so ``0`` acts as ``1``.
        max_tries: give up after this many draws (PFLlib loops forever).
        num_classes: label-space size for the range check.

    Raises:
        ValueError: ``alpha <= 0``, infeasible ``min_size``, or no valid
            draw within ``max_tries``.
    """
    labels = _check_labels(labels, num_classes=num_classes)
    n = labels.size
    num_clients = _check_clients(num_clients, n)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha must be a positive finite number, got {alpha}")
    need = max(_resolve_min_size(min_size, n, num_clients), 1)
    if need * num_clients > n:
        raise ValueError(
            f"min_size {need} x {num_clients} clients = {need * num_clients} exceeds {n} samples"
        )
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    cap = n / num_clients
    for _ in range(max_tries):
        # Client sizes depend only on the class counts and the proportions, so a
        # draw is checked before any sample is shuffled.
        sizes = np.zeros(num_clients, np.int64)
        cuts_per_class = []
        for idx_k in by_class:
            p = rng.dirichlet(np.full(num_clients, float(alpha)))
            open_ = sizes < cap
            p = p * open_
            total = p.sum()
            # total == 0 only on floating-point underflow (PFLlib would divide by 0)
            p = p / total if total > 0 else open_ / open_.sum()
            cuts = (np.cumsum(p) * idx_k.size).astype(np.int64)[:-1]
            sizes += np.diff(np.concatenate([[0], cuts, [idx_k.size]]))
            cuts_per_class.append(cuts)
        if sizes.min() >= need:
            batches: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for idx_k, cuts in zip(by_class, cuts_per_class):
                for k, part in enumerate(np.split(rng.permutation(idx_k), cuts)):
                    batches[k].append(part)
            return _finish([np.concatenate(b) for b in batches], n, scheme="dirichlet")
    raise ValueError(
        f"dirichlet partition: no draw gave every client >= {need} samples in {max_tries} tries "
        f"(alpha={alpha}, {num_clients} clients, {n} samples); lower min_size or num_clients, or raise alpha"
    )


def pathological_partition(
    labels: np.ndarray,
    *,
    num_clients: int,
    classes_per_client: int,
    rng: np.random.Generator,
    balance: bool = False,
    min_size: int | None = None,
    num_classes: int | None = None,
) -> list[np.ndarray]:
    """PFLlib's pathological label-skew partition (``partition="pat"``).

    Every client has a quota of ``classes_per_client`` classes.  For class
    ``i = 0..C-1`` in turn, the holders are the clients (in index order) with
    quota left, cut to the first ``ceil(K / C * classes_per_client)``; the
    class's samples, shuffled (PFLlib keeps pool order), are cut into
    consecutive runs, one per holder, and every holder's quota drops by one.  Run sizes: with
    ``balance=True`` ``int(N_c / h)`` for all but the last holder; with
    ``balance=False`` (PFLlib's default) integers drawn uniformly from
    ``[int(max(N_c / h / 10, least_samples / C)), int(N_c / h))``; the last
    holder always takes the rest.

    Args:
        labels: ``int[N]`` class labels.
        num_clients: ``K``.
        classes_per_client: class quota of every client (``1..C``).
        rng: source of the per-class shuffles and of the unbalanced run sizes
            (balanced run sizes and the holders never depend on it).
        balance: equal runs instead of random ones.
        min_size: PFLlib's ``least_samples`` used in the unbalanced lower bound;
            ``None`` (default) is ``int(min(40, N / K / 2))``.
        num_classes: ``C``; default ``max(labels) + 1``.  Classes without
            samples still use up their holders' quota, as in PFLlib.

    Raises:
        ValueError: bad ``classes_per_client``; quotas used up before a class
            that has samples (PFLlib would silently drop them); an empty range
            for the random sizes (PFLlib's ``randint`` would fail); a client
            left without samples.
    """
    labels = _check_labels(labels, num_classes=num_classes)
    n = labels.size
    num_clients = _check_clients(num_clients, n)
    C = int(num_classes) if num_classes is not None else int(labels.max()) + 1
    cpc = classes_per_client
    if isinstance(cpc, bool) or not isinstance(cpc, (int, np.integer)) or cpc < 1:
        raise ValueError(f"classes_per_client must be an integer >= 1, got {classes_per_client!r}")
    cpc = int(cpc)
    if cpc > C:
        raise ValueError(f"classes_per_client {cpc} exceeds the {C} classes")
    least = _resolve_min_size(min_size, n, num_clients)
    by_class = [np.flatnonzero(labels == i) for i in range(C)]
    quota = np.full(num_clients, cpc, np.int64)
    width = math.ceil(num_clients / C * cpc)  # float expression, as in PFLlib
    batches: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for i in range(C):
        holders = np.flatnonzero(quota > 0)[:width]
        n_c = by_class[i].size
        if holders.size == 0:
            left = [j for j in range(i, C) if by_class[j].size]
            if left:
                raise ValueError(
                    f"pathological partition: the class quotas of the {num_clients} clients "
                    f"({cpc} each, {width} holders per class) are used up before class {i}, so "
                    f"classes {left} would get no holder (PFLlib silently drops them); it cannot cover "
                    f"all {C} classes - raise num_clients or classes_per_client"
                )
            break
        h = holders.size
        per = n_c / h
        if balance:
            sizes = np.full(h - 1, int(per), np.int64)
        else:
            lo, hi = int(max(per / 10, least / C)), int(per)
            if h > 1 and lo >= hi:
                raise ValueError(
                    f"pathological partition (balance=False): class {i} has {n_c} samples for {h} holders, "
                    f"so the range of random sizes [max({per:g}/10, {least}/{C}), {per:g}) = [{lo}, {hi}) "
                    "is empty (PFLlib's randint would fail); use balance=True, fewer clients or more data"
                )
            sizes = rng.integers(lo, hi, size=h - 1) if h > 1 else np.zeros(0, np.int64)
        sizes = np.append(sizes, n_c - sizes.sum()).astype(np.int64)
        bounds = np.concatenate([[0], np.cumsum(sizes)])
        idx = rng.permutation(by_class[i])
        for k, a, b in zip(holders, bounds[:-1], bounds[1:]):
            batches[k].append(idx[a:b])
        quota[holders] -= 1
    return _finish(
        [np.concatenate(b) if b else np.zeros(0, np.int64) for b in batches], n, scheme="pathological"
    )


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
    balance: bool = False,
    min_size: int | None = None,
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
        classes_per_client: class quota per client for ``pathological``.
        balance: ``pathological`` only: equal runs per holder instead of
            PFLlib's default random ones.
        min_size: PFLlib's ``least_samples``: the minimum client size of
            ``dirichlet`` and the lower bound of unbalanced ``pathological``
            runs; ``None`` (default) is ``int(min(40, N / K / 2))``.
        num_classes: label-space size (range check; ``C`` of
            ``pathological``, default ``max(labels) + 1``).
        seed: seed of the ``numpy.random.Generator``.

    Returns:
        ``K`` sorted index arrays, disjoint, covering ``range(N)``, none empty.
    """
    scheme = canonical_partition_name(scheme)
    labels = _check_labels(labels, num_classes=num_classes)
    if not isinstance(balance, (bool, np.bool_)):  # a string such as "false" would be truthy
        raise ValueError(f"balance must be True or False, got {balance!r}")
    rng = np.random.default_rng(seed)
    if scheme == "dirichlet":
        return dirichlet_partition(labels, num_clients=num_clients, alpha=alpha, rng=rng, min_size=min_size)
    if scheme == "pathological":
        return pathological_partition(
            labels,
            num_clients=num_clients,
            classes_per_client=classes_per_client,
            rng=rng,
            balance=bool(balance),
            min_size=min_size,
            num_classes=num_classes,
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

    Each client keeps ``floor((1 - test_fraction) * n)`` samples for training
    and holds out the rest, as PFLlib's ``train_test_split(train_size=0.75,
    shuffle=True)``. With ``test_fraction > 0`` every client of ``n >= 2`` samples gets
    at least one training and one test sample; a client of one sample cannot have both,
    so it is an error (scikit-learn raises there too) rather than a client that is
    silently never evaluated. ``test_fraction == 0`` keeps everything for training.

    Raises:
        ValueError: naming the client, for an empty client or a one-sample client when
            ``test_fraction > 0``.
    """
    if not (0.0 <= test_fraction < 1.0):
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for k, idx in enumerate(client_indices):
        idx = np.asarray(idx, dtype=np.int64)
        if idx.size == 0:
            raise ValueError(f"client {k} is empty; cannot split it into train and test")
        if idx.size == 1 and test_fraction > 0:
            raise ValueError(
                f"client {k} has a single sample, so it cannot have both a training and a test sample; "
                "use fewer clients or a larger min_size"
            )
        perm = rng.permutation(idx)
        n_train = max(1, int(math.floor((1.0 - test_fraction) * idx.size + 1e-9)))
        if test_fraction > 0:
            n_train = min(n_train, idx.size - 1)
        train.append(np.sort(perm[:n_train]))
        test.append(np.sort(perm[n_train:]))
    return train, test
