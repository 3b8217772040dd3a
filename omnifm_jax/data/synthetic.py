"""A tiny, deterministic synthetic cross-modality image set.

Several "modalities" image the same smooth, class-dependent shapes (the
shared low-frequency "anatomy": disc, ring, bar, cross, two blobs, triangle,
...) with random position and scale jitter.  The modalities differ in what
sits on top: high-frequency texture (oriented gratings of modality-specific
frequency), noise level, and the contrast/colour mapping.  This mirrors the
observation that medical imaging modalities differ mainly in their high
frequencies while sharing anatomy.  The label is the shape, shared by all
modalities.  Registered as the data set ``synthetic`` (the pool made into clients by
:func:`~omnifm_jax.data.federation.federate`).
"""

from __future__ import annotations

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation, federate
from .options import split_federate_options
from .pool import LabeledImages

__all__ = ["SHAPES", "make_cross_modality", "modality_params"]

#: Class names, in label order.
SHAPES: tuple[str, ...] = (
    "disc",
    "ring",
    "bar",
    "cross",
    "two blobs",
    "triangle",
    "frame",
    "diagonal",
    "target",
    "crescent",
)


def _sig(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _shape_mask(cls: int, u: np.ndarray, v: np.ndarray, soft: float) -> np.ndarray:
    """Smooth mask in [0, 1] of shape ``cls`` in normalised coordinates ``(u, v)``."""
    r = np.sqrt(u * u + v * v)
    box = lambda a, b, hu, hv: _sig((np.minimum(hu - np.abs(a), hv - np.abs(b))) / soft)  # noqa: E731
    if cls == 0:  # disc
        return _sig((0.55 - r) / soft)
    if cls == 1:  # ring
        return _sig((0.16 - np.abs(r - 0.58)) / soft)
    if cls == 2:  # horizontal bar
        return box(u, v, 0.85, 0.22)
    if cls == 3:  # cross
        return np.maximum(box(u, v, 0.8, 0.18), box(u, v, 0.18, 0.8))
    if cls == 4:  # two blobs
        d1 = np.sqrt((u - 0.45) ** 2 + v * v)
        d2 = np.sqrt((u + 0.45) ** 2 + v * v)
        return np.maximum(_sig((0.3 - d1) / soft), _sig((0.3 - d2) / soft))
    if cls == 5:  # triangle (apex up)
        e1 = 0.45 - v  # base (v grows downward)
        e2 = (0.9 - 1.7 * u + v) / 2.0
        e3 = (0.9 + 1.7 * u + v) / 2.0
        return _sig(np.minimum(np.minimum(e1, e2), e3) / soft) * _sig((v + 0.75) / soft)
    if cls == 6:  # square frame
        return box(u, v, 0.75, 0.75) * (1.0 - box(u, v, 0.48, 0.48))
    if cls == 7:  # diagonal bar
        a, b = (u + v) / np.sqrt(2.0), (u - v) / np.sqrt(2.0)
        return box(a, b, 0.9, 0.2)
    if cls == 8:  # target: dot + ring
        return np.maximum(_sig((0.2 - r) / soft), _sig((0.12 - np.abs(r - 0.68)) / soft))
    if cls == 9:  # crescent
        d2 = np.sqrt((u - 0.3) ** 2 + (v + 0.1) ** 2)
        return _sig((0.65 - r) / soft) * (1.0 - _sig((0.52 - d2) / soft))
    raise ValueError(f"no shape for class {cls}")


def modality_params(m: int, num_modalities: int, channels: int) -> dict:
    """Appearance parameters of modality ``m`` (texture, noise, colour map)."""
    t = m / max(num_modalities - 1, 1)
    hue = 2.0 * np.pi * m / max(num_modalities, 1)
    if channels == 3:
        tint = 0.5 + 0.5 * np.cos(hue + np.array([0.0, 2.0 * np.pi / 3.0, 4.0 * np.pi / 3.0]))
        tint = tint / np.linalg.norm(tint) * np.sqrt(3.0) * 0.9
    else:
        tint = np.ones(1)
    return dict(
        texture_amp=0.22 * (1.0 - t) + 0.04 * t,
        texture_freq=0.42 - 0.12 * t,  # cycles per pixel: fine gratings
        texture_angle=np.pi * (0.15 + 0.6 * t),
        noise=0.02 + 0.16 * t,
        gamma=1.0 + 0.3 * (t - 0.5),
        tint=tint.astype(np.float64),
        background=0.12 + 0.06 * t,
        contrast=0.62,
    )


def make_cross_modality(
    seed: int = 0,
    *,
    num_modalities: int = 3,
    num_classes: int = 6,
    samples_per_class_per_modality: int = 60,
    image_size: int = 28,
    channels: int = 3,
) -> LabeledImages:
    """Synthetic cross-modality classification pool.

    Args:
        seed: seed of the ``numpy.random.Generator``; same seed, same bytes.
        num_modalities: number of modalities (>= 1).
        num_classes: number of shape classes (1..10).
        samples_per_class_per_modality: images per (class, modality) cell.
        image_size: height and width (>= 8).
        channels: 1 (grey) or 3 (colour).

    Returns:
        :class:`LabeledImages` with ``num_modalities * num_classes *
        samples_per_class_per_modality`` images, ordered by modality then class.
    """
    if num_modalities < 1:
        raise ValueError(f"num_modalities must be >= 1, got {num_modalities}")
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [1, {len(SHAPES)}], got {num_classes}")
    if samples_per_class_per_modality < 1:
        raise ValueError(f"samples_per_class_per_modality must be >= 1, got {samples_per_class_per_modality}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    rng = np.random.default_rng(seed)
    s = int(samples_per_class_per_modality)
    size = int(image_size)
    pix = np.arange(size, dtype=np.float64)
    grid = (pix + 0.5) / size * 2.0 - 1.0  # [-1, 1]
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    images, labels, modality = [], [], []
    for m in range(num_modalities):
        p = modality_params(m, num_modalities, channels)
        for c in range(num_classes):
            cx = rng.uniform(-0.12, 0.12, (s, 1, 1))
            cy = rng.uniform(-0.12, 0.12, (s, 1, 1))
            scale = rng.uniform(0.6, 0.75, (s, 1, 1))
            u = (xx[None] - cx) / scale
            v = (yy[None] - cy) / scale
            mask = _shape_mask(c, u, v, soft=0.12)  # [s, H, W]
            contrast = p["contrast"] * rng.uniform(0.85, 1.15, (s, 1, 1))
            base = p["background"] + contrast * mask
            # high-frequency texture (modality-specific grating, random phase)
            ang = p["texture_angle"] + rng.normal(0.0, 0.05, (s, 1, 1))
            phase = rng.uniform(0.0, 2.0 * np.pi, (s, 1, 1))
            coord = (np.cos(ang) * pix[None, None, :] + np.sin(ang) * pix[None, :, None])
            texture = p["texture_amp"] * np.sin(2.0 * np.pi * p["texture_freq"] * coord + phase)
            grey = np.clip(base + texture * (0.4 + 0.6 * mask), 0.0, 1.0) ** p["gamma"]
            img = grey[..., None] * p["tint"][None, None, None, :]
            img = img + rng.normal(0.0, p["noise"], img.shape)
            images.append(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
            labels.append(np.full(s, c, np.int32))
            modality.append(np.full(s, m, np.int32))
    return LabeledImages(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        modality=np.concatenate(modality),
        class_names=SHAPES[:num_classes],
        modality_names=tuple(f"modality {m}" for m in range(num_modalities)),
    )


@DATASETS.register("synthetic")
def _synthetic(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    allowed = ("num_modalities", "num_classes", "samples_per_class_per_modality", "image_size", "channels")
    fed_kw, data_kw = split_federate_options("synthetic", kw, make_cross_modality, allowed)
    data = make_cross_modality(seed, **data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    fed.info.update(dataset="synthetic", **data_kw)
    return fed
