"""Image operations shared by the loaders: the one resize (Pillow, per channel in 32-bit float
mode), its bicubic batch form, rounding to uint8 and the resize of class-index masks.

Resampling is always Pillow's: ``BOX`` (area averaging: a factor-2 reduction is the mean of
each 2x2 block) or ``BICUBIC`` (a = -0.5, antialiased: the kernel is widened by the scale
factor when shrinking, like MATLAB's ``imresize``). Each channel is resized as a float image
(``Image.fromarray(..., mode="F")``); rounding to uint8, where wanted, happens once at the end
(:func:`to_uint8`). A same-size "resize" returns a float32 copy, as Pillow does.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
from PIL import Image

__all__ = ["RESAMPLING", "resize", "box_resize", "bicubic_resize", "to_uint8", "resize_mask"]

#: Resampling filters by name.
RESAMPLING = {"box": Image.Resampling.BOX, "bicubic": Image.Resampling.BICUBIC}


def resize(img: np.ndarray, size: Tuple[int, int], *, method: str = "box") -> np.ndarray:
    """Resize float ``[H, W]`` or ``[H, W, C]`` to ``size=(h, w)`` with Pillow's ``method``
    (``"box"`` or ``"bicubic"``) in 32-bit float mode, one channel at a time; float32 out,
    neither rounded nor clipped."""
    if method not in RESAMPLING:
        raise ValueError(f"resize method must be one of {sorted(RESAMPLING)}, got {method!r}")
    img = np.asarray(img, np.float32)
    h, w = (int(v) for v in size)
    if img.shape[:2] == (h, w):
        return img.copy()
    planes = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c]), mode="F").resize(
        (w, h), RESAMPLING[method]), np.float32) for c in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if img.ndim == 2 else out


def box_resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Area (box-filter) resize of float ``[H, W]`` or ``[H, W, C]`` to ``size=(h, w)`` (Pillow
    ``BOX`` in 32-bit float mode), float32 out."""
    return resize(img, size, method="box")


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Round to the nearest integer and clip to [0, 255], as uint8."""
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def bicubic_resize(images: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
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
    out = np.stack([resize(im, (h, w), method="bicubic") for im in batch]) if len(batch) else (
        np.zeros((0, h, w, batch.shape[-1]), np.float32)
    )
    if is_uint8:
        out = to_uint8(out)
    return out if arr.ndim == 4 else out[0]


def resize_mask(mask: np.ndarray, size: Tuple[int, int], num_classes: int) -> np.ndarray:
    """Class-index mask ``[H, W]`` -> ``[h, w]``: each class's area fraction (box filter), then
    the majority class, ties to the higher index. For a binary mask: foreground where its
    fraction is >= 50 %."""
    mask = np.asarray(mask)
    if mask.shape == tuple(size):
        return mask.astype(np.uint8)
    frac = np.stack([box_resize((mask == c).astype(np.float32), size) for c in range(num_classes)], axis=-1)
    # argmax over the reversed class axis: ties go to the higher class
    return (num_classes - 1 - np.argmax(frac[..., ::-1], axis=-1)).astype(np.uint8)
