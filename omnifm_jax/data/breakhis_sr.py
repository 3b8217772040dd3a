"""Non-IID federated super-resolution on BreaKHis (OmniFM Sec. 4.2), registered as
``breakhis_sr``: images grouped into clients by magnification, subtype or tumour class, HR
patches and their bicubic LR inputs made by :mod:`omnifm_jax.data.sr`.

Federated splits never leak: by default (``group_split="patient"``) a client's test
patches come from patients that no client trains on, a patient being a BreaKHis
accession number (``14-22549AB`` and ``14-22549CD`` are two slides of patient
``14-22549``). ``group_split="image"`` (test images no client trains on, but other
fields of the same slide may be trained on) is kept only to compare with results
published on image-level splits: a model that has seen the same slide scores higher.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from omnifm_jax.registry import DATASETS

from .breakhis import MAGNIFICATIONS, SUBTYPES, TUMOR_CLASSES, BreakHisRecord, load_breakhis_images, scan_breakhis
from .federation import Federation
from .options import dataset_options
from .paths import default_real_data_dir
from .sr import check_scale, sr_pairs_federation

__all__ = [
    "SPLIT_BY",
    "GROUP_SPLITS",
    "default_breakhis_root",
    "breakhis_sr_federation",
]

SPLIT_BY: tuple[str, ...] = ("magnification", "subtype", "tumor_class")
"""How BreaKHis images are grouped into non-IID clients."""

GROUP_SPLITS: tuple[str, ...] = ("patient", "image")
"""Unit of the train/test split: whole patients (accession numbers; the default) or whole
images (leaks slides between train and test)."""


def default_breakhis_root() -> Path:
    """Where BreaKHis is looked for: ``default_real_data_dir() / "breakhis"``."""
    return default_real_data_dir() / "breakhis"


def _group_key(rec: BreakHisRecord, split_by: str) -> str:
    if split_by == "magnification":
        return f"{rec.magnification}X"
    if split_by == "subtype":
        return rec.subtype
    return rec.tumor_class


def _all_group_names(split_by: str) -> tuple[str, ...]:
    if split_by == "magnification":
        return tuple(f"{m}X" for m in MAGNIFICATIONS)
    if split_by == "subtype":
        return SUBTYPES
    return TUMOR_CLASSES


def _assign_clients(
    records: Sequence[BreakHisRecord], *, split_by: str, group_split: str, num_clients: int, seed: int
) -> list[np.ndarray]:
    """Indices of the records of each client: whole groups per client, balanced by image count.

    With fewer groups than clients, the largest shard is split in two (by patient
    or image, as ``group_split`` says) until there are enough shards.
    """
    names = _all_group_names(split_by)
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(_group_key(r, split_by), []).append(i)
    shards = [np.array(groups[g]) for g in names if g in groups]  # canonical order
    rng = np.random.default_rng([int(seed), 1])
    while len(shards) < num_clients:
        j = max(range(len(shards)), key=lambda s: (len(shards[s]), -s))
        units = _units(records, shards[j], group_split)
        keys = sorted(units)
        if len(keys) < 2:
            raise ValueError(
                f"cannot make {num_clients} clients from {len(groups)} {split_by} group(s): a shard of "
                f"{len(shards[j])} image(s) has a single {group_split}; use fewer clients"
            )
        perm = rng.permutation(len(keys))
        half = set(keys[p] for p in perm[: len(keys) // 2])
        a = np.array([i for i in shards[j] if _unit_of(records[i], group_split) in half])
        b = np.array([i for i in shards[j] if _unit_of(records[i], group_split) not in half])
        shards[j : j + 1] = [a, b]
    # Greedy balance: biggest shard first onto the client with the fewest images.
    order = sorted(range(len(shards)), key=lambda s: (-len(shards[s]), s))
    clients: list[list[int]] = [[] for _ in range(num_clients)]
    for s in order:
        k = min(range(num_clients), key=lambda c: (len(clients[c]), c))
        clients[k].extend(shards[s].tolist())
    return [np.array(sorted(c), dtype=np.int64) for c in clients]


def _unit_of(rec: BreakHisRecord, group_split: str) -> str:
    return rec.accession if group_split == "patient" else rec.path.name


def _units(records: Sequence[BreakHisRecord], idx: np.ndarray, group_split: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i in idx:
        out.setdefault(_unit_of(records[i], group_split), []).append(int(i))
    return out


def _split_train_test(
    records: Sequence[BreakHisRecord],
    clients: list[np.ndarray],
    *,
    group_split: str,
    test_fraction: float,
    seed: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-client train/test record indices, disjoint in images and (optionally) patients.

    With ``group_split="patient"`` a patient chosen for testing is a test patient for
    every client, so no client trains on it (patients can span magnifications).
    """
    test_units: set[str] = set()
    for k, idx in enumerate(clients):
        units = _units(records, idx, group_split)
        keys = sorted(units)
        if len(keys) < 2:
            raise ValueError(
                f"client {k} has only {len(keys)} {group_split}(s); a train/test split by {group_split} "
                "needs at least two (use fewer clients or group_split='image')"
            )
        target = max(1, int(round(test_fraction * len(idx))))
        have = sum(len(units[u]) for u in keys if u in test_units)
        rng = np.random.default_rng([int(seed), 2, k])
        for p in rng.permutation(len(keys)):
            if have >= target:
                break
            u = keys[p]
            if u in test_units:
                continue
            test_units.add(u)
            have += len(units[u])
    train, test = [], []
    for k, idx in enumerate(clients):
        te = np.array([i for i in idx if _unit_of(records[i], group_split) in test_units], dtype=np.int64)
        tr = np.array([i for i in idx if _unit_of(records[i], group_split) not in test_units], dtype=np.int64)
        if len(tr) == 0 or len(te) == 0:
            raise ValueError(
                f"client {k} ends up with {len(tr)} train and {len(te)} test image(s) under a "
                f"{group_split}-level split (test_fraction={test_fraction}); use fewer clients, another "
                "test_fraction or group_split='image'"
            )
        train.append(tr)
        test.append(te)
    return train, test


def breakhis_sr_federation(
    *,
    num_clients: int = 3,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    scale: int = 2,
    patch: int = 96,
    stride: int | None = None,
    split_by: str = "magnification",
    test_fraction: float = 0.25,
    group_split: str = "patient",
    max_patches_per_image: int | None = 8,
    downscale_images: int = 2,
) -> Federation:
    """Non-IID federated super-resolution on BreaKHis (OmniFM Sec. 4.2).

    Images are grouped by ``split_by`` (``"magnification"``: 40X/100X/200X/400X,
    ``"subtype"``: the 8 tumour subtypes, ``"tumor_class"``: benign/malignant); every
    client receives whole groups (balanced by image count, largest first). With
    fewer groups than clients, the largest group is split by patient/image. Each
    client's images are then split into train/test by patient (the default: no test
    patch comes from a patient, i.e. an accession number, that any client trains on) or
    by image (``group_split="image"``: no test patch comes from a training image, but
    other fields of its slide may be trained on).

    To keep it small, every 700x460 original is first shrunk by ``downscale_images``
    (Pillow bicubic, antialiased; 2 -> 350x230). HR patches of ``patch`` pixels are
    then cut on a grid (``stride``, default ``patch``), at most
    ``max_patches_per_image`` per image, and bicubic-downscaled by ``scale``.

    Returns:
        A :class:`Federation` with ``x = LR uint8[K, N, patch/scale, patch/scale, 3]``,
        ``y = HR uint8[K, N, patch, patch, 3]``, ``num_classes = 0`` and modality id =
        the sample's group (index into ``modality_names``, e.g. ``"40X"``).
        ``info`` lists the source image of every patch and each client's groups.

    Raises:
        FileNotFoundError: no BreaKHis folder (the message says where to put it).
        ValueError: bad option, or a split that leaves a client without train/test data.
    """
    scale = check_scale(scale)
    if split_by not in SPLIT_BY:
        raise ValueError(f"unknown split_by {split_by!r}; choose one of {SPLIT_BY}")
    if group_split not in GROUP_SPLITS:
        raise ValueError(f"unknown group_split {group_split!r}; choose one of {GROUP_SPLITS}")
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    if patch % scale:
        raise ValueError(f"HR patch size {patch} is not divisible by scale {scale}")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if not isinstance(downscale_images, (int, np.integer)) or downscale_images < 1:
        raise ValueError(f"downscale_images must be an integer >= 1, got {downscale_images!r}")
    folder = Path(root).expanduser() if root is not None else default_breakhis_root()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"BreaKHis folder not found at {folder}. Put the BreaKHis PNGs there (flat, or the original "
            "BreaKHis_v1/histology_slides/breast/... tree), pass root=..., or set OMNIFM_REAL_DATA to a folder "
            "holding breakhis/."
        )
    records = scan_breakhis(folder)
    clients = _assign_clients(records, split_by=split_by, group_split=group_split, num_clients=num_clients, seed=seed)
    train_img, test_img = _split_train_test(
        records, clients, group_split=group_split, test_fraction=float(test_fraction), seed=seed
    )
    names = _all_group_names(split_by)
    image_modality = np.array([names.index(_group_key(r, split_by)) for r in records], dtype=np.int32)
    images = load_breakhis_images(records, downscale=int(downscale_images))
    info = {
        "dataset": "breakhis",
        "task": "super_resolution",
        "degradation": "bicubic (Pillow, antialiased)",
        "split_by": split_by,
        "group_split": group_split,
        "num_clients": int(num_clients),
        "test_fraction": float(test_fraction),
        "downscale_images": int(downscale_images),
        "root": str(folder),
        "client_groups": [sorted({names[m] for m in image_modality[c]}, key=names.index) for c in clients],
        "train_patients": [sorted({records[i].accession for i in il}) for il in train_img],
        "test_patients": [sorted({records[i].accession for i in il}) for il in test_img],
    }
    return sr_pairs_federation(
        images,
        image_modality,
        train_img,
        test_img,
        scale=scale,
        patch=patch,
        stride=stride,
        max_patches_per_image=max_patches_per_image,
        seed=seed,
        modality_names=names,
        info=info,
        image_names=[r.path.name for r in records],
    )


@DATASETS.register("breakhis_sr")
def _breakhis_sr(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("breakhis_sr", kw, breakhis_sr_federation)
    return breakhis_sr_federation(num_clients=num_clients, seed=seed, **kw)
