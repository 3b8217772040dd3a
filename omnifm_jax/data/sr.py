"""Super-resolution data: bicubic LR/HR patch pairs, the bicubic baseline, PSNR, and the
``synthetic_sr`` federation (non-IID BreaKHis federations: :mod:`omnifm_jax.data.breakhis_sr`).

Degradation model (OmniFM Sec. 4.2, following SHISRCNet): an HR patch is cut from
the image and its LR input is the **bicubic downscaling** of that patch by the scale
factor (x2, x4 or x8).

Resampling is done with **Pillow's bicubic filter** (``Image.resize(...,
Resampling.BICUBIC)``, a = -0.5, antialiased: the kernel is widened by the scale
factor when shrinking, like MATLAB's ``imresize``) by
:func:`~omnifm_jax.data.image.bicubic_resize`. Each channel is resized in
32-bit float mode, then rounded and clipped to uint8 once. The baseline
:func:`bicubic_upsample`, against which trained SR models are compared, uses the
very same filter, so "bicubic" means one thing everywhere in this package.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation, stack_clients, validate_federation
from .image import bicubic_resize
from .options import dataset_options
from .synthetic import make_cross_modality

__all__ = [
    "SCALES",
    "check_scale",
    "bicubic_downscale",
    "bicubic_upsample",
    "psnr",
    "extract_patch_grid",
    "make_sr_pairs",
    "sr_pairs_federation",
    "synthetic_sr_federation",
]

SCALES: tuple[int, ...] = (2, 4, 8)
"""Supported super-resolution factors."""


# --------------------------------------------------------------------------- resampling


def check_scale(scale: int) -> int:
    """``scale`` as an int if it is one of :data:`SCALES`; ``ValueError`` otherwise."""
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or int(scale) not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return int(scale)


def bicubic_downscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Bicubic (antialiased) downscaling by ``scale`` in {2, 4, 8}; H and W must be divisible by it."""
    scale = check_scale(scale)
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
    scale = check_scale(scale)
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
    scale = check_scale(scale)
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


def sr_pairs_federation(
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
    """The SR :class:`Federation` of ``images`` (``x`` = LR, ``y`` = HR patches made by
    :func:`make_sr_pairs`): client ``k`` trains on the patches of the images ``train_img[k]``
    and is tested on those of ``test_img[k]``; a patch's modality id is its image's
    (``image_modality``). ``info`` gets the patch settings and every patch's source image
    (by ``image_names``)."""
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
    bicubic LR inputs are made as in :func:`~omnifm_jax.data.breakhis_sr.breakhis_sr_federation`.
    """
    scale = check_scale(scale)
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
        modality_names=tuple(data.modality_names),
        info=info,
        image_names=[f"synthetic-{i}" for i in chosen],
    )


@DATASETS.register("synthetic_sr")
def _synthetic_sr(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("synthetic_sr", kw, synthetic_sr_federation)
    return synthetic_sr_federation(num_clients=num_clients, seed=seed, **kw)
