"""Frequency-domain spectrum encoding (OmniFM Sec. 3.1-3.2, Eq. 3).

``magnitude_spectrum`` is |F(x)| of the paper, centred with ``fftshift`` so the DC
component sits at index ``(H // 2, W // 2)``. ``low_pass`` is the projection P_LP:
the centred band of the spectrum around DC. ``SpectralTokenizer`` is Eq. 3:

        s = Pool(sigma(W2 . sigma(W1 . FreqMix(S_LP)))),   s <- s / ||s||_2

All functions work on any leading batch axes and under ``jax.jit`` / ``jax.vmap``.
"""
from __future__ import annotations

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["magnitude_spectrum", "low_pass_size", "low_pass", "l2_normalize", "SpectralTokenizer",
           "low_pass_ratio_statistic", "cross_modality_low_pass_ratio"]


def magnitude_spectrum(x: jax.Array) -> jax.Array:
    """Centred magnitude of the 2-D FFT over H, W, per channel.

    Args:
        x: real array ``(..., H, W, C)``.

    Returns:
        ``(..., H, W, C)`` float array, ``|fftshift(fft2(x))|`` with DC at ``(H//2, W//2)``.
    """
    if x.ndim < 3:
        raise ValueError(f"magnitude_spectrum expects (..., H, W, C), got shape {x.shape}")
    x = jnp.asarray(x, dtype=jnp.result_type(x.dtype, jnp.float32))
    f = jnp.fft.fft2(x, axes=(-3, -2))
    f = jnp.fft.fftshift(f, axes=(-3, -2))
    return jnp.abs(f)


def low_pass_size(height: int, width: int, ratio: float) -> Tuple[int, int]:
    """Size ``(h, w)`` of the low-pass band: ``max(1, round(ratio * H))`` per axis."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"low-pass ratio must be in (0, 1], got {ratio}")
    return max(1, int(round(ratio * height))), max(1, int(round(ratio * width)))


def low_pass(spectrum: jax.Array, ratio: float) -> jax.Array:
    """Low-pass projection P_LP: the centred ``(h, w)`` band of a centred spectrum.

    The band starts at ``H // 2 - h // 2`` (so DC lands at index ``h // 2`` of the band,
    the same convention as ``fftshift``).

    Args:
        spectrum: ``(..., H, W, C)`` centred spectrum (see :func:`magnitude_spectrum`).
        ratio: fraction of each spatial axis kept, in ``(0, 1]``.

    Returns:
        ``(..., h, w, C)``.
    """
    if spectrum.ndim < 3:
        raise ValueError(f"low_pass expects (..., H, W, C), got shape {spectrum.shape}")
    height, width = spectrum.shape[-3], spectrum.shape[-2]
    h, w = low_pass_size(height, width, ratio)
    top = height // 2 - h // 2
    left = width // 2 - w // 2
    return spectrum[..., top:top + h, left:left + w, :]


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||_2, eps)`` along ``axis`` (safe for zero vectors and gradients)."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


class SpectralTokenizer(nn.Module):
    """Spectral tokenization module of Eq. 3: one unit-norm token ``s`` per image.

    Pipeline on images ``(B, H, W, C)``:
        1. ``S_LP = P_LP(|F(x)|)`` (optionally ``log1p``: raw FFT magnitudes span several
              orders of magnitude, the DC bin dominating everything else);
        2. FreqMix: a linear mixing across the spectral channels at every frequency bin,
              plus a learned embedding of the bin's position (without it, global pooling
              would forget *which* frequencies carried the energy);
        3. ``sigma(W1 .)``, ``sigma(W2 .)`` per bin (GELU);
        4. global spectral pooling (mean over bins), then L2 normalisation.

    Attributes:
        dim: token width ``d`` (the bank's embedding width).
        ratio: low-pass ratio of P_LP.
        log_magnitude: apply ``log1p`` to the magnitude (default on).
        hidden: width of FreqMix and W1 (defaults to ``dim``).
        norm: ``"none"`` (the paper) or ``"batch"``: standardise every bin and channel of the
            (log) low-pass spectrum over the batch (flax ``BatchNorm``, running statistics in
            ``batch_stats`` for evaluation, no scale or bias). Without it the DC and lowest
            bins, shared by every image, dominate the pooled token and all tokens point the
            same way (see the OmniFM mechanism study in docs/method.md).
    """
    dim: int = 64
    ratio: float = 0.25
    log_magnitude: bool = True
    hidden: int | None = None
    norm: str = "none"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        hidden = self.hidden or self.dim
        spec = low_pass(magnitude_spectrum(x), self.ratio)
        if self.log_magnitude:
            spec = jnp.log1p(spec)
        if self.norm == "batch":
            bn_mask = None if mask is None else jnp.broadcast_to(mask.reshape((-1, 1, 1, 1)), spec.shape)
            spec = nn.BatchNorm(use_running_average=not train, momentum=0.9, use_scale=False, use_bias=False,
                                axis=(-3, -2, -1), name="spectrum_norm")(spec, mask=bn_mask)
        elif self.norm != "none":
            raise ValueError(f"spectrum norm must be 'none' or 'batch', got {self.norm!r}")
        h, w, c = spec.shape[-3:]
        mixed = nn.Dense(hidden, name="freq_mix")(spec)
        pos = self.param("freq_pos", nn.initializers.normal(0.02), (h, w, hidden))
        mixed = mixed + pos
        z = nn.gelu(nn.Dense(hidden, name="w1")(mixed))
        z = nn.gelu(nn.Dense(self.dim, name="w2")(z))
        pooled = jnp.mean(z, axis=(-3, -2))
        return l2_normalize(pooled)


def low_pass_ratio_statistic(a: np.ndarray, b: np.ndarray, *, ratio: float = 0.25,
                                                          log_magnitude: bool = False) -> np.ndarray:
    """Sec. 3.1 ratio ``||P_LP(F(a)) - P_LP(F(b))|| / ||F(a) - F(b)||`` per pair.

    Args:
        a, b: image batches ``(N, H, W, C)`` (any real dtype), paired row by row.
        ratio: low-pass ratio.
        log_magnitude: compare ``log1p`` magnitudes instead of raw ones.

    Returns:
        ``(N,)`` float64 ratios (NaN where the full spectra coincide).
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"expected two (N, H, W, C) batches of one shape, got {a.shape} and {b.shape}")
    fa = np.abs(np.fft.fftshift(np.fft.fft2(a, axes=(1, 2)), axes=(1, 2)))
    fb = np.abs(np.fft.fftshift(np.fft.fft2(b, axes=(1, 2)), axes=(1, 2)))
    if log_magnitude:
        fa, fb = np.log1p(fa), np.log1p(fb)
    height, width = a.shape[1:3]
    h, w = low_pass_size(height, width, ratio)
    top, left = height // 2 - h // 2, width // 2 - w // 2
    band = (slice(None), slice(top, top + h), slice(left, left + w), slice(None))
    num = np.sqrt(np.sum((fa[band] - fb[band]) ** 2, axis=(1, 2, 3)))
    den = np.sqrt(np.sum((fa - fb) ** 2, axis=(1, 2, 3)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return num / den


def cross_modality_low_pass_ratio(groups: dict, *, num_pairs: int = 500, ratio: float = 0.25,
                                  log_magnitude: bool = False, seed: int = 0) -> float:
    """Median Sec. 3.1 ratio over random pairs of images from DIFFERENT modalities.

    Args:
        groups: ``{modality_name: images (N, H, W, C)}``, images of one size; grey
            images (C=1) are repeated to the widest channel count so pairs are comparable.
        num_pairs: number of random cross-modality pairs.
        ratio: low-pass ratio.
        log_magnitude: measure on ``log1p`` magnitudes.
        seed: numpy seed for the pair sampling.

    Returns:
        the median ratio (float). A value well below 1 supports the paper's claim that
        cross-modality differences live mostly outside the low band.
    """
    names = list(groups)
    if len(names) < 2:
        raise ValueError("need images of at least two modalities")
    channels = max(np.asarray(groups[n]).shape[-1] for n in names)
    imgs = {}
    for n in names:
        g = np.asarray(groups[n], np.float64) / 255.0
        if g.shape[-1] != channels:
            g = np.repeat(g, channels // g.shape[-1], axis=-1)
        imgs[n] = g
    rng = np.random.default_rng(seed)
    a_list, b_list = [], []
    for _ in range(num_pairs):
        i, j = rng.choice(len(names), size=2, replace=False)
        gi, gj = imgs[names[i]], imgs[names[j]]
        a_list.append(gi[rng.integers(len(gi))])
        b_list.append(gj[rng.integers(len(gj))])
    r = low_pass_ratio_statistic(np.stack(a_list), np.stack(b_list), ratio=ratio,
                                                              log_magnitude=log_magnitude)
    return float(np.nanmedian(r))
