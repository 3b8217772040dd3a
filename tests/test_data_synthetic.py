"""Synthetic cross-modality images: determinism, speed, learnability, spectral structure."""

from __future__ import annotations

import time

import numpy as np
import pytest

from omnifm_jax.data.synthetic import SHAPES, make_cross_modality


@pytest.fixture(scope="module")
def data():
    return make_cross_modality(0)


def _radius(size):
    f = np.fft.fftfreq(size)
    return np.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def test_shapes_dtypes_and_balance(data):
    assert data.images.shape == (3 * 6 * 60, 28, 28, 3) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int32 and data.modality.dtype == np.int32
    assert data.class_names == SHAPES[:6] and len(data.modality_names) == 3
    for m in range(3):
        assert np.bincount(data.labels[data.modality == m], minlength=6).tolist() == [60] * 6
    assert data.images.std() > 20  # not a blank image set


def test_deterministic_and_seed_dependent(data):
    again = make_cross_modality(0)
    np.testing.assert_array_equal(again.images, data.images)
    other = make_cross_modality(1)
    assert not np.array_equal(other.images, data.images)


def test_fast():
    t0 = time.perf_counter()
    make_cross_modality(3)
    assert time.perf_counter() - t0 < 1.0


def test_options_and_errors():
    d = make_cross_modality(0, num_modalities=2, num_classes=10, samples_per_class_per_modality=3, image_size=16, channels=1)
    assert d.images.shape == (60, 16, 16, 1) and d.labels.max() == 9
    for kw, match in [
        ({"num_classes": 11}, "num_classes"),
        ({"num_modalities": 0}, "num_modalities"),
        ({"channels": 2}, "channels"),
        ({"image_size": 4}, "image_size"),
        ({"samples_per_class_per_modality": 0}, "samples_per_class"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_cross_modality(0, **kw)


def test_low_pass_nearest_centroid_beats_chance(data):
    x = data.images.astype(np.float64) / 255.0
    lp = np.exp(-((_radius(28) / 0.08) ** 2))
    blurred = np.real(np.fft.ifft2(np.fft.fft2(x, axes=(1, 2)) * lp[None, :, :, None], axes=(1, 2)))
    feats = blurred.mean(-1).reshape(len(x), -1)
    feats = (feats - feats.mean(1, keepdims=True)) / (feats.std(1, keepdims=True) + 1e-8)
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[: len(x) // 2], perm[len(x) // 2 :]
    cent = np.stack([feats[tr][data.labels[tr] == c].mean(0) for c in range(6)])
    pred = np.argmin(((feats[te][:, None] - cent[None]) ** 2).sum(-1), axis=1)
    acc = (pred == data.labels[te]).mean()
    assert acc > 3 * (1 / 6), acc  # chance is 1/6


def test_modalities_differ_more_in_high_than_low_frequencies(data):
    x = data.images.astype(np.float64) / 255.0
    power = np.abs(np.fft.fft2(x, axes=(1, 2))) ** 2
    r = _radius(28)
    low = power[:, (r > 0) & (r <= 0.12), :].sum((1, 2))
    high = power[:, r >= 0.3, :].sum((1, 2))
    low_m = np.array([low[data.modality == m].mean() for m in range(3)])
    high_m = np.array([high[data.modality == m].mean() for m in range(3)])
    cv = lambda v: v.std() / v.mean()  # noqa: E731
    assert cv(high_m) > 3 * cv(low_m), (cv(high_m), cv(low_m))
