"""Super-resolution data: bicubic LR/HR patch pairs and non-IID federated BreaKHis splits.

Degradation model (OmniFM Sec. 4.2, following SHISRCNet): an HR patch is cut from
the image and its LR input is the **bicubic downscaling** of that patch by the scale
factor (x2, x4 or x8).

Resampling is done with **Pillow's bicubic filter** (``Image.resize(...,
Resampling.BICUBIC)``, a = -0.5, antialiased: the kernel is widened by the scale
factor when shrinking, like MATLAB's ``imresize``). Each channel is resized in
32-bit float mode, then rounded and clipped to uint8 once. The baseline
:func:`bicubic_upsample`, against which trained SR models are compared, uses the
very same filter, so "bicubic" means one thing everywhere in this package.

Federated splits never leak: by default (``group_split="patient"``) a client's test
patches come from patients that no client trains on, a patient being a BreaKHis
accession number (``14-22549AB`` and ``14-22549CD`` are two slides of patient
``14-22549``). ``group_split="image"`` (test images no client trains on, but other
fields of the same slide may be trained on) is kept only to compare with results
published on image-level splits: a model that has seen the same slide scores higher.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from omnifm_jax.data.breakhis import MAGNIFICATIONS, SUBTYPES, TUMOR_CLASSES, BreakHisRecord, load_breakhis_images, scan_breakhis
from omnifm_jax.data.federation import Federation, stack_clients, validate_federation

__all__ = [
    "SCALES",
    "SPLIT_BY",
    "GROUP_SPLITS",
    "bicubic_resize",
    "bicubic_downscale",
    "bicubic_upsample",
    "psnr",
    "extract_patch_grid",
    "make_sr_pairs",
    "default_breakhis_root",
    "breakhis_sr_federation",
    "synthetic_sr_federation",
]

SCALES: tuple[int, ...] = (2, 4, 8)
"""Supported super-resolution factors."""

SPLIT_BY: tuple[str, ...] = ("magnification", "subtype", "tumor_class")
"""How BreaKHis images are grouped into non-IID clients."""

GROUP_SPLITS: tuple[str, ...] = ("patient", "image")
"""Unit of the train/test split: whole patients (accession numbers; the default) or whole
images (leaks slides between train and test)."""


# --------------------------------------------------------------------------- resampling


def _check_scale(scale: int) -> int:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or int(scale) not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return int(scale)


def _resize_float(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Pillow bicubic resize of float ``[H, W, C]`` to ``size=(height, width)``, float32 out."""
    h, w = size
    chans = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(img[..., c], dtype=np.float32), mode="F").resize(
                (w, h), Image.Resampling.BICUBIC
            ),
            dtype=np.float32,
        )
        for c in range(img.shape[-1])
    ]
    return np.stack(chans, axis=-1)


def bicubic_resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize ``[H, W, C]`` or ``[B, H, W, C]`` images to ``size=(height, width)`` (Pillow bicubic).

    uint8 input gives uint8 output (rounded, clipped to [0, 255]); float input gives
    float32 output (no rounding or clipping). Antialiased when shrinking.
    """
    arr = np.asarray(images)
    if arr.ndim not in (3, 4):
        raise ValueError(f"images must be [H, W, C] or [B, H, W, C], got shape {arr.shape}")
    h, w = (int(v) for v in size)
    if h < 1 or w < 1:
        raise ValueError(f"target size must be positive, got {size}")
    is_uint8 = arr.dtype == np.uint8
    if not is_uint8 and not np.issubdtype(arr.dtype, np.floating):
        raise ValueError(f"images must be uint8 or floating point, got {arr.dtype}")
    batch = arr if arr.ndim == 4 else arr[None]
    out = np.stack([_resize_float(im.astype(np.float32), (h, w)) for im in batch]) if len(batch) else (
        np.zeros((0, h, w, batch.shape[-1]), np.float32)
    )
    if is_uint8:
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out if arr.ndim == 4 else out[0]


def bicubic_downscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic (antialiased) downscaling by ``scale`` in {2, 4, 8}; H and W must be divisible by it."""
    scale = _check_scale(scale)
    arr = np.asarray(images)
    if arr.ndim not in (3, 4):
        raise ValueError(f"images must be [H, W, C] or [B, H, W, C], got shape {arr.shape}")
    h, w = arr.shape[-3:-1]
    if h % scale or w % scale:
        raise ValueError(f"image size {h}x{w} is not divisible by scale {scale}")
    return bicubic_resize(arr, (h // scale, w // scale))


def bicubic_upsample(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic-interpolation baseline: upsample LR images by ``scale`` in {2, 4, 8}.

    Args:
        lr: ``[h, w, C]`` or ``[B, h, w, C]``; uint8 (returns uint8, rounded and
            clipped) or float (returns float32, unclipped). JAX arrays are accepted
            (converted on the host).
        scale: 2, 4 or 8.

    Returns:
        ``[..., h * scale, w * scale, C]`` interpolated with the same Pillow bicubic
        filter that produced the LR inputs.
    """
    scale = _check_scale(scale)
    arr = np.asarray(lr)
    if arr.ndim not in (3, 4):
        raise ValueError(f"lr must be [h, w, C] or [B, h, w, C], got shape {arr.shape}")
    h, w = arr.shape[-3:-1]
    return bicubic_resize(arr, (h * scale, w * scale))


def psnr(x: np.ndarray, y: np.ndarray, *, max_value: float = 255.0) -> float:
    """Peak signal-to-noise ratio in dB, computed in float64.

    For ``[B, H, W, C]`` inputs this is the mean of the per-image PSNRs (the usual
    SR convention); for a single ``[H, W, C]`` image, the PSNR of that image.
    Identical images give ``inf``.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[0] == 0:
        raise ValueError(f"psnr: expected [H, W, C] or non-empty [B, H, W, C], got shape {np.shape(x)}")
    mse = np.mean((a - b) ** 2, axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        vals = 10.0 * np.log10(max_value**2 / mse)
    return float(np.mean(vals))


# --------------------------------------------------------------------------- patches


def extract_patch_grid(height: int, width: int, *, patch: int, stride: int) -> np.ndarray:
    """Top-left corners ``int32[P, 2]`` (row, col) of a regular grid of ``patch`` x ``patch`` windows.

    Row-major order; windows that would cross the border are left out.
    """
    if patch < 1 or stride < 1:
        raise ValueError(f"patch and stride must be positive, got patch={patch}, stride={stride}")
    rows = np.arange(0, height - patch + 1, stride)
    cols = np.arange(0, width - patch + 1, stride)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], axis=1).astype(np.int32)


def _as_image_list(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images must be uint8[N, H, W, C], got shape {images.shape}")
        out = list(images)
    else:
        out = [np.asarray(im) for im in images]
    chans = set()
    for i, im in enumerate(out):
        if im.dtype != np.uint8 or im.ndim != 3:
            raise ValueError(f"image {i} must be uint8[H, W, C], got {im.dtype}{list(im.shape)}")
        chans.add(im.shape[-1])
    if len(chans) > 1:
        raise ValueError(f"images have different channel counts: {sorted(chans)}")
    return out


def make_sr_pairs(
    images: np.ndarray | Sequence[np.ndarray],
    *,
    scale: int,
    patch: int,
    stride: int | None = None,
    max_patches_per_image: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut HR patches on a regular grid and make their bicubic LR inputs.

    Args:
        images: ``uint8[N, H, W, C]`` or a sequence of ``uint8[H, W, C]`` (sizes may differ).
        scale: 2, 4 or 8.
        patch: HR patch side; must be divisible by ``scale``.
        stride: grid step (default ``patch``: non-overlapping).
        max_patches_per_image: keep at most this many grid patches per image, chosen
            at random (without replacement, kept in grid order) with
            ``numpy.random.default_rng([seed, image_index])``; ``None`` keeps all.
        seed: seed of that choice. Same arguments -> same output.

    Returns:
        ``(lr uint8[P, patch//scale, patch//scale, C], hr uint8[P, patch, patch, C],
        source_image_index int32[P])``.

    Raises:
        ValueError: bad scale, patch not divisible by scale, non-positive stride or
            limit, non-uint8 input, or an image smaller than one patch.
    """
    scale = _check_scale(scale)
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    if patch % scale:
        raise ValueError(f"HR patch size {patch} is not divisible by scale {scale}")
    stride = patch if stride is None else stride
    if not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    if max_patches_per_image is not None and (
        not isinstance(max_patches_per_image, (int, np.integer)) or max_patches_per_image < 1
    ):
        raise ValueError(f"max_patches_per_image must be a positive integer or None, got {max_patches_per_image!r}")
    imgs = _as_image_list(images)
    chans = imgs[0].shape[-1] if imgs else 3
    hr_list: list[np.ndarray] = []
    src_list: list[np.ndarray] = []
    for i, im in enumerate(imgs):
        corners = extract_patch_grid(im.shape[0], im.shape[1], patch=patch, stride=stride)
        if len(corners) == 0:
            raise ValueError(f"image {i} is {im.shape[0]}x{im.shape[1]}, smaller than one {patch}x{patch} patch")
        if max_patches_per_image is not None and len(corners) > max_patches_per_image:
            rng = np.random.default_rng([int(seed), i])
            keep = np.sort(rng.choice(len(corners), size=max_patches_per_image, replace=False))
            corners = corners[keep]
        hr_list.append(np.stack([im[r : r + patch, c : c + patch] for r, c in corners]))
        src_list.append(np.full(len(corners), i, np.int32))
    if not hr_list:
        lp = patch // scale
        return (np.zeros((0, lp, lp, chans), np.uint8), np.zeros((0, patch, patch, chans), np.uint8),
                np.zeros((0,), np.int32))
    hr = np.concatenate(hr_list).astype(np.uint8, copy=False)
    lr = bicubic_downscale(hr, scale)
    return lr, hr, np.concatenate(src_list)


# --------------------------------------------------------------------------- federations


def default_breakhis_root() -> Path:
    """Where BreaKHis is looked for: ``$OMNIFM_REAL_DATA/breakhis``, else ``../shared/data/real/breakhis``
    (relative to the working directory), else the same path beside the package's repository."""
    env = os.environ.get("OMNIFM_REAL_DATA")
    if env:
        return Path(env).expanduser() / "breakhis"
    candidates = [
        Path.cwd() / ".." / "shared" / "data" / "real" / "breakhis",
        Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "breakhis",
    ]
    for c in candidates:
        if c.is_dir():
            return c
    return candidates[0]


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


def _pairs_federation(
    images: list[np.ndarray],
    image_modality: np.ndarray,
    train_img: list[np.ndarray],
    test_img: list[np.ndarray],
    *,
    scale: int,
    patch: int,
    stride: int | None,
    max_patches_per_image: int | None,
    seed: int,
    modality_names: tuple[str, ...],
    info: dict,
    image_names: Sequence[str],
) -> Federation:
    lr, hr, src = make_sr_pairs(
        images, scale=scale, patch=patch, stride=stride, max_patches_per_image=max_patches_per_image, seed=seed
    )
    modality = image_modality[src].astype(np.int32)
    by_image = [np.flatnonzero(src == i) for i in range(len(images))]

    def patches_of(img_lists: list[np.ndarray]) -> list[np.ndarray]:
        return [np.concatenate([by_image[i] for i in il]) if len(il) else np.zeros(0, np.int64) for il in img_lists]

    tr_idx, te_idx = patches_of(train_img), patches_of(test_img)
    info = dict(info)
    info.update(
        scale=scale,
        patch=patch,
        lr_patch=patch // scale,
        stride=patch if stride is None else stride,
        max_patches_per_image=max_patches_per_image,
        seed=int(seed),
        train_images=[[image_names[i] for i in il] for il in train_img],
        test_images=[[image_names[i] for i in il] for il in test_img],
        train_source=[[image_names[i] for i in src[p]] for p in tr_idx],
        test_source=[[image_names[i] for i in src[p]] for p in te_idx],
    )
    fed = Federation(
        train=stack_clients(lr, hr, modality, tr_idx),
        test=stack_clients(lr, hr, modality, te_idx),
        num_classes=0,
        class_names=(),
        modality_names=modality_names,
        info=info,
    )
    validate_federation(fed)
    return fed


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
    scale = _check_scale(scale)
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
    return _pairs_federation(
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


def synthetic_sr_federation(
    *,
    num_clients: int = 3,
    seed: int = 0,
    scale: int = 2,
    patch: int = 16,
    images_per_client: int = 24,
    image_size: int = 32,
    stride: int | None = None,
    max_patches_per_image: int | None = 4,
    test_fraction: float = 0.25,
) -> Federation:
    """A tiny deterministic SR federation from synthetic images, for tests and demos.

    Client ``k`` holds ``images_per_client`` images of synthetic modality ``k`` (one
    modality per client: non-IID), split by image into train/test; HR patches and
    bicubic LR inputs are made as in :func:`breakhis_sr_federation`.
    """
    from omnifm_jax.data.synthetic import make_cross_modality

    scale = _check_scale(scale)
    if isinstance(patch, bool) or not isinstance(patch, (int, np.integer)) or patch < 1:
        raise ValueError(f"patch must be a positive integer, got {patch!r}")
    if patch % scale:
        raise ValueError(f"HR patch size {patch} is not divisible by scale {scale}")
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if not isinstance(images_per_client, (int, np.integer)) or images_per_client < 2:
        raise ValueError(f"images_per_client must be an integer >= 2, got {images_per_client!r}")
    if image_size < patch:
        raise ValueError(f"image_size {image_size} is smaller than the patch {patch}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    num_classes = 4
    per_class = math.ceil(images_per_client / num_classes)
    data = make_cross_modality(
        seed,
        num_modalities=num_clients,
        num_classes=num_classes,
        samples_per_class_per_modality=per_class,
        image_size=image_size,
        channels=3,
    )
    pool_img = np.asarray(data.images)
    pool_mod = np.asarray(data.modality)
    chosen: list[int] = []
    train_img: list[np.ndarray] = []
    test_img: list[np.ndarray] = []
    n_test = min(images_per_client - 1, max(1, int(round(test_fraction * images_per_client))))
    for k in range(num_clients):
        idx = np.flatnonzero(pool_mod == k)[:images_per_client]
        rng = np.random.default_rng([int(seed), 3, k])
        perm = rng.permutation(len(idx))
        base = len(chosen)
        chosen.extend(idx.tolist())
        test_img.append(np.sort(base + perm[:n_test]).astype(np.int64))
        train_img.append(np.sort(base + perm[n_test:]).astype(np.int64))
    images = [pool_img[i] for i in chosen]
    image_modality = pool_mod[chosen].astype(np.int32)
    info = {
        "dataset": "synthetic",
        "task": "super_resolution",
        "degradation": "bicubic (Pillow, antialiased)",
        "split_by": "modality",
        "group_split": "image",
        "num_clients": int(num_clients),
        "test_fraction": float(test_fraction),
        "image_size": int(image_size),
    }
    return _pairs_federation(
        images,
        image_modality,
        train_img,
        test_img,
        scale=scale,
        patch=patch,
        stride=stride,
        max_patches_per_image=max_patches_per_image,
        seed=seed,
        modality_names=tuple(data.modality_names),
        info=info,
        image_names=[f"synthetic-{i}" for i in chosen],
    )
