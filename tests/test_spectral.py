"""Spectrum encoding (Sec. 3.1-3.2, Eq. 3) against float64 NumPy references."""
from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax import spectral

SEEDS = (0, 1, 2)
RTOL, ATOL = 1e-4, 1e-5


# ----------------------------------------------------------------------------- references
def centred_dft_matrix(n: int) -> np.ndarray:
    """Row ``u`` is the DFT at the signed frequency ``u - n // 2`` (DC in row ``n // 2``)."""
    freq = np.arange(n) - n // 2
    return np.exp(-2j * np.pi * np.outer(freq, np.arange(n)) / n)


def ref_magnitude(x: np.ndarray) -> np.ndarray:
    """|F(x)| of ``(..., H, W, C)`` with explicit DFT matrices, DC at (H//2, W//2)."""
    x = np.asarray(x, np.float64)
    a_h = centred_dft_matrix(x.shape[-3])
    a_w = centred_dft_matrix(x.shape[-2])
    f = np.einsum("un,...nmc,vm->...uvc", a_h, x, a_w)
    return np.abs(f)


def ref_band(spec: np.ndarray, h: int, w: int) -> np.ndarray:
    """Band of a centred spectrum holding the signed frequencies ``-(h//2) .. h-h//2-1``.

    Built by selecting frequencies (not by slicing offsets): row ``u`` of a centred spectrum
    holds the signed frequency ``u - H//2``.
    """
    height, width = spec.shape[-3], spec.shape[-2]
    fu = np.arange(height) - height // 2
    fv = np.arange(width) - width // 2
    rows = np.nonzero((fu >= -(h // 2)) & (fu <= h - h // 2 - 1))[0]
    cols = np.nonzero((fv >= -(w // 2)) & (fv <= w - w // 2 - 1))[0]
    assert len(rows) == h and len(cols) == w
    return spec[..., rows[:, None], cols[None, :], :]


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


# ----------------------------------------------------------------------------- magnitude
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("hw", [(8, 8), (7, 9), (6, 5), (5, 5), (1, 4)])
def test_magnitude_spectrum_matches_dft_matrices(seed, hw):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, *hw, 3)).astype(np.float32)
    got = np.asarray(spectral.magnitude_spectrum(jnp.asarray(x)))
    want = ref_magnitude(x)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-4)
    # DC (sum of the pixels) sits at (H//2, W//2).
    np.testing.assert_allclose(got[:, hw[0] // 2, hw[1] // 2, :], np.abs(x.astype(np.float64).sum((1, 2))),
                               rtol=RTOL, atol=1e-4)


def test_magnitude_spectrum_shift_matches_roll_of_unshifted_dft():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 6, 2))
    unshifted = np.abs(np.einsum("un,nmc,vm->uvc",
                                 np.exp(-2j * np.pi * np.outer(np.arange(7), np.arange(7)) / 7), x,
                                 np.exp(-2j * np.pi * np.outer(np.arange(6), np.arange(6)) / 6)))
    want = np.roll(unshifted, (7 // 2, 6 // 2), axis=(0, 1))
    got = np.asarray(spectral.magnitude_spectrum(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-4)


def test_magnitude_spectrum_leading_axes_and_int_input():
    rng = np.random.default_rng(4)
    x = rng.integers(0, 256, size=(2, 3, 8, 8, 1)).astype(np.uint8)
    got = spectral.magnitude_spectrum(jnp.asarray(x))
    assert got.shape == x.shape and jnp.issubdtype(got.dtype, jnp.floating)
    np.testing.assert_allclose(np.asarray(got), ref_magnitude(x), rtol=RTOL, atol=1e-2)


def test_magnitude_spectrum_rejects_low_rank():
    with pytest.raises(ValueError):
        spectral.magnitude_spectrum(jnp.ones((8, 8)))


# ----------------------------------------------------------------------------- low-pass band
# (H, W, ratio, expected band size) derived by hand: max(1, nearest integer of ratio * size).
BANDS = [
    (28, 28, 0.25, (7, 7)),
    (8, 8, 0.25, (2, 2)),
    (8, 8, 0.4, (3, 3)),
    (9, 7, 0.34, (3, 2)),
    (7, 9, 0.7, (5, 6)),
    (5, 6, 1.0, (5, 6)),
    (8, 8, 1e-3, (1, 1)),
    (7, 7, 0.01, (1, 1)),
]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("height,width,ratio,size", BANDS)
def test_low_pass_band_matches_frequency_selection(seed, height, width, ratio, size):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, height, width, 3))
    spec = ref_magnitude(x)
    got = np.asarray(spectral.low_pass(jnp.asarray(spec, jnp.float32), ratio))
    assert got.shape == (2, *size, 3)
    assert spectral.low_pass_size(height, width, ratio) == size
    np.testing.assert_allclose(got, ref_band(spec, *size), rtol=1e-6, atol=1e-5)
    # DC lands at (h//2, w//2) of the band.
    np.testing.assert_allclose(got[:, size[0] // 2, size[1] // 2], np.abs(x.sum((1, 2))), rtol=1e-5, atol=1e-4)


def test_low_pass_single_bin_is_dc_and_full_ratio_is_identity():
    rng = np.random.default_rng(5)
    for height, width in [(8, 8), (7, 5), (6, 9)]:
        x = rng.normal(size=(3, height, width, 2)).astype(np.float32)
        spec = spectral.magnitude_spectrum(jnp.asarray(x))
        dc = np.asarray(spectral.low_pass(spec, 1e-6))
        assert dc.shape == (3, 1, 1, 2)
        np.testing.assert_allclose(dc[:, 0, 0], np.abs(x.astype(np.float64).sum((1, 2))), rtol=RTOL, atol=1e-4)
        np.testing.assert_array_equal(np.asarray(spectral.low_pass(spec, 1.0)), np.asarray(spec))


@pytest.mark.parametrize("height,width,ratio", [(8, 8, 0.4), (9, 9, 0.34), (7, 8, 0.4), (28, 28, 0.25)])
def test_odd_band_is_symmetric_for_real_images(height, width, ratio):
    """|F(-u)| = |F(u)| for real images: an odd band centred on DC is point-symmetric."""
    h, w = spectral.low_pass_size(height, width, ratio)
    assert h % 2 == 1 and w % 2 == 1
    x = np.random.default_rng(6).normal(size=(2, height, width, 3)).astype(np.float32)
    band = np.asarray(spectral.low_pass(spectral.magnitude_spectrum(jnp.asarray(x)), ratio))
    np.testing.assert_allclose(band, band[:, ::-1, ::-1, :], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.0001, 2.0])
def test_low_pass_rejects_bad_ratio(ratio):
    spec = jnp.ones((1, 8, 8, 1))
    with pytest.raises(ValueError):
        spectral.low_pass(spec, ratio)
    with pytest.raises(ValueError):
        spectral.low_pass_size(8, 8, ratio)


def test_low_pass_rejects_low_rank():
    with pytest.raises(ValueError):
        spectral.low_pass(jnp.ones((8, 8)), 0.5)


def test_l2_normalize_unit_norm_and_zero_safe():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 6)).astype(np.float32)
    got = np.asarray(spectral.l2_normalize(jnp.asarray(x)))
    np.testing.assert_allclose(got, x / np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True),
                               rtol=RTOL, atol=ATOL)
    zero = spectral.l2_normalize(jnp.zeros((2, 4)))
    assert np.all(np.asarray(zero) == 0)
    g = jax.grad(lambda v: jnp.sum(spectral.l2_normalize(v)))(jnp.zeros((2, 4)))
    assert np.all(np.isfinite(np.asarray(g)))


# ----------------------------------------------------------------------------- tokenizer (Eq. 3)
TOKENIZER_LOG = spectral.SpectralTokenizer(dim=8, ratio=0.5, log_magnitude=True, hidden=12)
TOKENIZER_RAW = spectral.SpectralTokenizer(dim=8, ratio=0.5, log_magnitude=False, hidden=12)
TOKENIZER_X_SHAPE = (3, 8, 8, 2)
_TRACES: dict = {}


@functools.lru_cache(maxsize=None)
def jitted_apply(model):
    """One compiled ``apply`` per module configuration (shared by the tests); counts traces."""
    def apply(params, x):
        _TRACES[model] = _TRACES.get(model, 0) + 1
        return model.apply(params, x)
    return jax.jit(apply)


def random_params(model, x_shape, rng, scale=0.5):
    """Parameters of ``model`` filled with fresh normal draws (shapes from ``eval_shape``)."""
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jax.ShapeDtypeStruct(x_shape, jnp.float32))
    return jax.tree_util.tree_map(lambda a: jnp.asarray(scale * rng.normal(size=a.shape), a.dtype), shapes)


def ref_tokenizer(params, x, ratio, log_magnitude):
    """Eq. 3 in float64: P_LP(|F|) -> FreqMix (+ bin position) -> GELU(W1) -> GELU(W2) -> mean -> unit norm."""
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["params"])
    spec = ref_magnitude(x)
    h, w = spectral.low_pass_size(x.shape[-3], x.shape[-2], ratio)
    band = ref_band(spec, h, w)
    if log_magnitude:
        band = np.log1p(band)
    mixed = band @ p["freq_mix"]["kernel"] + p["freq_mix"]["bias"] + p["freq_pos"]
    z = gelu_tanh(mixed @ p["w1"]["kernel"] + p["w1"]["bias"])
    z = gelu_tanh(z @ p["w2"]["kernel"] + p["w2"]["bias"])
    pooled = z.mean(axis=(-3, -2))
    return pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("model", [TOKENIZER_LOG, TOKENIZER_RAW], ids=["log1p", "raw"])
def test_tokenizer_matches_numpy_reference(seed, model):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, size=TOKENIZER_X_SHAPE).astype(np.float32)
    params = random_params(model, x.shape, rng)
    got = np.asarray(jitted_apply(model)(params, jnp.asarray(x)))
    assert got.shape == (TOKENIZER_X_SHAPE[0], model.dim)
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, ref_tokenizer(params, x, model.ratio, model.log_magnitude), rtol=1e-3, atol=1e-4)


def test_tokenizer_log_switch_changes_output_and_traces_once():
    rng = np.random.default_rng(12)
    params = random_params(TOKENIZER_LOG, TOKENIZER_X_SHAPE, rng)
    outs = []
    for _ in range(3):
        x = jnp.asarray(rng.uniform(0, 255, size=TOKENIZER_X_SHAPE), jnp.float32)
        s_log = jitted_apply(TOKENIZER_LOG)(params, x)
        s_raw = jitted_apply(TOKENIZER_RAW)(params, x)  # same parameter tree, raw magnitudes
        assert not np.allclose(np.asarray(s_raw), np.asarray(s_log), atol=1e-3)
        outs.append(np.asarray(s_log))
    assert not np.allclose(outs[0], outs[1])
    # One trace per configuration, whatever the values (and whichever test compiled it first).
    assert _TRACES[TOKENIZER_LOG] == 1 and _TRACES[TOKENIZER_RAW] == 1


def test_tokenizer_vmap_over_stacked_params_and_finite_grads():
    rng = np.random.default_rng(9)
    clients = 3
    model = TOKENIZER_LOG
    x = jnp.asarray(rng.uniform(0, 1, size=(clients, *TOKENIZER_X_SHAPE)), jnp.float32)
    # rbg keys: same API as the default threefry keys, a fraction of the compile time.
    keys = jax.random.split(jax.random.key(1, impl="rbg"), clients)
    params = jax.jit(jax.vmap(model.init))(keys, x)
    assert params["params"]["w2"]["kernel"].shape == (clients, 12, 8)
    s = jax.jit(jax.vmap(model.apply))(params, x)
    assert s.shape == (clients, TOKENIZER_X_SHAPE[0], 8)
    for c in range(clients):
        one = jax.tree_util.tree_map(lambda a: a[c], params)
        np.testing.assert_allclose(np.asarray(s[c]), np.asarray(jitted_apply(model)(one, x[c])),
                                   rtol=1e-4, atol=1e-5)
    # Different clients got different initialisations.
    assert not np.allclose(np.asarray(s[0]), np.asarray(s[1]))

    target = jnp.asarray(rng.normal(size=(TOKENIZER_X_SHAPE[0], 8)), jnp.float32)
    one = jax.tree_util.tree_map(lambda a: a[0], params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum((model.apply(p, x[0]) - target) ** 2)))(one)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(np.all(np.isfinite(np.asarray(g))) for g in leaves)
    assert all(np.any(np.asarray(g) != 0) for g in leaves)


# ----------------------------------------------------------------------------- Sec. 3.1 statistic
def ref_ratio(a: np.ndarray, b: np.ndarray, ratio: float, log_magnitude: bool) -> float:
    fa, fb = ref_magnitude(a), ref_magnitude(b)
    if log_magnitude:
        fa, fb = np.log1p(fa), np.log1p(fb)
    h, w = spectral.low_pass_size(a.shape[-3], a.shape[-2], ratio)
    num = np.linalg.norm((ref_band(fa, h, w) - ref_band(fb, h, w)).ravel())
    return num / np.linalg.norm((fa - fb).ravel())


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("log_magnitude", [False, True])
def test_low_pass_ratio_statistic_matches_direct_computation(seed, log_magnitude):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=(4, 9, 8, 3)).astype(np.uint8)
    b = rng.integers(0, 256, size=(4, 9, 8, 3)).astype(np.uint8)
    got = spectral.low_pass_ratio_statistic(a, b, ratio=0.34, log_magnitude=log_magnitude)
    assert got.shape == (4,) and got.dtype == np.float64
    want = [ref_ratio(a[i].astype(np.float64), b[i].astype(np.float64), 0.34, log_magnitude) for i in range(4)]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    assert np.all((got >= 0) & (got <= 1))
    with pytest.raises(ValueError):
        spectral.low_pass_ratio_statistic(a, b[:, :8], ratio=0.34)


def test_cross_modality_ratio_on_constructed_modalities():
    rng = np.random.default_rng(11)
    base = rng.integers(0, 200, size=(8, 8, 1)).astype(np.float64)
    checker = 20.0 * (-1.0) ** np.add.outer(np.arange(8), np.arange(8))[..., None]
    # Modalities that differ only at the Nyquist bin: nothing of the difference is low-pass.
    high = {"a": np.stack([base] * 4), "b": np.stack([base + checker] * 4)}
    for lm in (False, True):
        assert spectral.cross_modality_low_pass_ratio(high, num_pairs=20, log_magnitude=lm) == pytest.approx(0.0, abs=1e-9)
    # Constant images of different brightness differ only at DC: all of it is low-pass.
    flat = {"a": np.full((3, 8, 8, 1), 10.0), "b": np.full((3, 8, 8, 1), 90.0), "c": np.full((3, 8, 8, 3), 50.0)}
    for lm in (False, True):
        assert spectral.cross_modality_low_pass_ratio(flat, num_pairs=20, log_magnitude=lm) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        spectral.cross_modality_low_pass_ratio({"a": np.zeros((2, 8, 8, 1))})


# ----------------------------------------------------------------------------- Sec. 3.1 on real images
REAL_MODALITIES = {
    "breast_us": "medmnist/breastmnist.npz",
    "retina_fundus": "medmnist/retinamnist.npz",
    "chest_xray": "medmnist/pneumoniamnist.npz",
    "blood_smear": "blood_pbc/pbc_bloodmnist_style_28.npz",
}


def _load_real(real_data_dir, per_modality=300):
    groups = {}
    for name, rel in REAL_MODALITIES.items():
        path = real_data_dir / rel
        if not path.is_file():
            pytest.skip(f"{path} not found")
        with np.load(path) as data:
            imgs = data["train_images"][:per_modality]
        if imgs.ndim == 3:  # grey MedMNIST images carry no channel axis
            imgs = imgs[..., None]
        assert imgs.shape[1:3] == (28, 28)
        groups[name] = imgs
    return groups


@pytest.mark.real_data
def test_sec31_inequality_on_real_modalities(real_data_dir):
    groups = _load_real(real_data_dir)
    raw = [spectral.cross_modality_low_pass_ratio(groups, num_pairs=500, ratio=0.25, seed=s) for s in range(2)]
    log = [spectral.cross_modality_low_pass_ratio(groups, num_pairs=500, ratio=0.25, log_magnitude=True, seed=s)
           for s in range(2)]
    print(f"\nSec. 3.1 median ||P_LP(F(xi))-P_LP(F(xj))|| / ||F(xi)-F(xj)||, ratio 0.25, 28x28: "
          f"raw {np.round(raw, 3)}, log1p {np.round(log, 3)}")
    pairs = {}
    for a, b in itertools.combinations(groups, 2):
        sub = {a: groups[a], b: groups[b]}
        pairs[a, b] = (spectral.cross_modality_low_pass_ratio(sub, num_pairs=200, ratio=0.25),
                       spectral.cross_modality_low_pass_ratio(sub, num_pairs=200, ratio=0.25, log_magnitude=True))
        print(f"  {a:>13} vs {b:<13} raw {pairs[a, b][0]:.3f}  log1p {pairs[a, b][1]:.3f}")
    # Raw magnitudes: the low band (1/16 of the bins) carries almost all of the difference,
    # because the DC / lowest bins dominate the energy; the "<<" barely holds, if at all.
    assert all(r > 0.9 for r in raw)
    # log1p magnitudes: the difference is mostly outside the low band.
    assert all(r < 0.6 for r in log)
    assert max(log) < min(raw)
    for (a, b), (r, l) in pairs.items():
        assert r > 0.85, (a, b, r)
        assert l < 0.6, (a, b, l)
        assert l < r, (a, b)


@pytest.mark.real_data
def test_ratio_statistic_on_a_real_pair(real_data_dir):
    groups = _load_real(real_data_dir, per_modality=4)
    grey = np.repeat(groups["chest_xray"][:2].astype(np.float64) / 255.0, 3, axis=-1)
    rgb = groups["blood_smear"][:2].astype(np.float64) / 255.0
    for lm in (False, True):
        got = spectral.low_pass_ratio_statistic(grey, rgb, ratio=0.25, log_magnitude=lm)
        want = [ref_ratio(grey[i], rgb[i], 0.25, lm) for i in range(2)]
        np.testing.assert_allclose(got, want, rtol=1e-9)
