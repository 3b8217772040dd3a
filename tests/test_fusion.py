"""The fusion task (paper Sec. 4.5): VIF / SSIM / L1 and the U2Fusion-style loss against
float64 NumPy references, the Harvard pair loader (real files when present, tiny temporary
folders for the error cases), the u2fusion backbone + head, and 1-round runs of OmniFM and
FedAvg through the unchanged engine (omnifm_jax.experiment)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import real_data_dir
from PIL import Image

from omnifm_jax import config as config_lib
from omnifm_jax import experiment, federated
from omnifm_jax.checks import ConfigError
from omnifm_jax.data import fusion as fusion_data
from omnifm_jax.data.federation import client_slice
from omnifm_jax.models.common import TokenLayout
from omnifm_jax.models.fusion import FusionHead, U2FusionBackbone
from omnifm_jax.registry import TASKS
from omnifm_jax.tasks import fusion as ft

# ----------------------------------------------------------------------------- NumPy references


def np_correlate_valid(img, k):
    """2-D 'valid' correlation, float64, by summing shifted slices."""
    kh, kw = k.shape
    h, w = img.shape[0] - kh + 1, img.shape[1] - kw + 1
    out = np.zeros((h, w))
    for i in range(kh):
        for j in range(kw):
            out += k[i, j] * img[i:i + h, j:j + w]
    return out


def np_correlate_same_zero(img, k):
    return np_correlate_valid(np.pad(img, 1), k)


def np_vif_window(n):
    """MATLAB fspecial('gaussian', n, n/5), written as the reference does (2-D, thresholded)."""
    sd = n / 5.0
    m = (n - 1) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sd * sd))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    return h / h.sum()


def np_vifp(ref, dist, num_scales=4, sigma_nsq=2.0):
    """CDDFuse utils/Evaluator.py ``compare_viff``, transcribed in float64 NumPy (no scipy)."""
    ref, dist = np.asarray(ref, np.float64), np.asarray(dist, np.float64)
    eps, num, den = 1e-10, 0.0, 0.0
    for scale in range(1, num_scales + 1):
        win = np_vif_window(2 ** (4 - scale + 1) + 1)
        if scale > 1:
            ref = np_correlate_valid(ref, win)[::2, ::2]
            dist = np_correlate_valid(dist, win)[::2, ::2]
        mu1, mu2 = np_correlate_valid(ref, win), np_correlate_valid(dist, win)
        s1 = np_correlate_valid(ref * ref, win) - mu1 * mu1
        s2 = np_correlate_valid(dist * dist, win) - mu2 * mu2
        s12 = np_correlate_valid(ref * dist, win) - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        g[s1 < eps] = 0
        sv[s1 < eps] = s2[s1 < eps]
        s1[s1 < eps] = 0
        g[s2 < eps] = 0
        sv[s2 < eps] = 0
        sv[g < 0] = s2[g < 0]
        g[g < 0] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + sigma_nsq)))
        den += np.sum(np.log10(1 + s1 / sigma_nsq))
    with np.errstate(invalid="ignore"):
        v = num / den
    return 1.0 if np.isnan(v) else v


def np_ssim(a, b):
    """SSIM with an 11x11 Gaussian window (sigma 1.5), 'valid', K1 0.01, K2 0.03, range 1."""
    x = np.arange(11) - 5.0
    g = np.exp(-x * x / (2 * 1.5 ** 2))
    win = np.outer(g, g) / g.sum() ** 2
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu1, mu2 = np_correlate_valid(a, win), np_correlate_valid(b, win)
    s1 = np_correlate_valid(a * a, win) - mu1 ** 2
    s2 = np_correlate_valid(b * b, win) - mu2 ** 2
    s12 = np_correlate_valid(a * b, win) - mu1 * mu2
    m = (2 * mu1 * mu2 + c1) * (2 * s12 + c2) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))
    return m.mean()


def fixed_images(size=48, seed=0):
    """A smooth seeded random image in [0, 255] and a blurred + noised copy (both float64)."""
    rng = np.random.default_rng(seed)
    ref = np_correlate_valid(np.pad(rng.uniform(0, 255, (size, size)), 1, mode="reflect"), np.full((3, 3), 1 / 9))
    dist = np_correlate_valid(np.pad(ref, 1, mode="reflect"), np.full((3, 3), 1 / 9)) + rng.normal(0, 8, ref.shape)
    return np.round(ref), np.clip(np.round(dist), 0, 255)


# ----------------------------------------------------------------------------- VIF


def _vif(ref, dist, num_scales=4):
    """``ft.vifp`` jitted (one compilation instead of op-by-op dispatch)."""
    fn = jax.jit(lambda r, d: ft.vifp(r, d, num_scales=num_scales))
    return np.asarray(fn(jnp.asarray(ref, jnp.float32), jnp.asarray(dist, jnp.float32)))


def test_vif_matches_float64_numpy_reference_on_fixed_images():
    ref, dist = fixed_images()
    ref2, dist2 = fixed_images(seed=1)
    got = _vif(np.stack([ref, ref2]), np.stack([dist, dist2]))
    want = np.array([np_vifp(ref, dist), np_vifp(ref2, dist2)])
    assert 0.05 < want.min() and want.max() < 0.95  # a real distortion, not a degenerate case
    np.testing.assert_allclose(got, want, rtol=1e-4)
    np.testing.assert_allclose(_vif(ref[None], dist[None], 2)[0], np_vifp(ref, dist, num_scales=2), rtol=1e-4)


def test_vif_properties():
    ref, dist = fixed_images(size=24)
    flat = np.full((24, 24), 77.0)
    contrast = np.mean(ref) + 1.5 * (ref - np.mean(ref))  # contrast enhancement: VIF > 1 (Sheikh & Bovik)
    same, flat_ref, enhanced, distorted = _vif(np.stack([ref, flat, ref, ref]), np.stack([ref, ref, contrast, dist]),
                                               num_scales=1)
    # VIF(x, x) = 1 up to float32 rounding: with XLA's optimisations off (the suite's setting)
    # cov(x, x) and var(x) are separate reductions, off by ~3e-5 relative
    np.testing.assert_allclose(same, 1.0, atol=1e-4)
    assert flat_ref == 1.0  # 0/0 (a flat reference) is 1, as the reference's NaN guard
    assert enhanced > 1.0 and distorted < 1.0
    # the window is MATLAB's 2-D fspecial window, factorised
    for scale in (1, 2, 3, 4):
        g = ft.vif_window_1d(scale)
        np.testing.assert_allclose(np.outer(g, g), np_vif_window(g.size), rtol=1e-12)
    assert [ft.vif_min_size(s) for s in (1, 2, 3, 4)] == [17, 25, 33, 41]
    assert ft.vif_sizes(256) == (240, 116, 56, 27)


# ----------------------------------------------------------------------------- metrics and loss


def _pred_and_sources(seed=0, b=3, size=24):
    rng = np.random.default_rng(seed)
    sources = rng.integers(0, 256, (b, size, size, 2)).astype(np.float32) / 255.0
    pred = np.clip(sources.mean(-1, keepdims=True) + rng.normal(0, 0.05, (b, size, size, 1)), 0, 1).astype(np.float32)
    return pred, sources


def test_eval_stats_vif_ssim_l1_and_client_means():
    task = ft.fusion(vif_scales=1)
    pred, sources = _pred_and_sources()
    stats = {k: np.asarray(v, np.float64)
             for k, v in jax.jit(task.eval_stats)(jnp.asarray(pred), jnp.asarray(sources)).items()}
    f255 = np.round(np.clip(pred[..., 0].astype(np.float64), 0, 1) * 255)  # the metric's 8-bit fused image
    s255 = np.round(sources.astype(np.float64) * 255)
    for key, c in (("a", 0), ("b", 1)):
        np.testing.assert_allclose(stats[f"l1_{key}"], np.abs(f255 - s255[..., c]).mean(axis=(1, 2)) / 255, rtol=1e-5)
        np.testing.assert_allclose(stats[f"vif_{key}"], [np_vifp(s255[i, ..., c], f255[i], 1) for i in range(3)],
                                   rtol=1e-4)
        import dm_pix
        np.testing.assert_allclose(stats[f"ssim_{key}"], np.asarray(dm_pix.ssim(
            jnp.asarray(f255[..., None] / 255, jnp.float32), jnp.asarray(s255[..., c:c + 1] / 255, jnp.float32))),
            rtol=1e-6)
        np.testing.assert_allclose(stats[f"ssim_{key}"], [np_ssim(f255[i] / 255, s255[i, ..., c] / 255)
                                                          for i in range(3)], rtol=1e-4)
    counts = np.array([1, 0, 2])
    out = task.summarize(stats, counts)
    per = [slice(0, 1), slice(1, 3)]
    for name, fn in (("vif", lambda s: s["vif_a"].mean() + s["vif_b"].mean()),
                     ("ssim", lambda s: s["ssim_a"].mean() + s["ssim_b"].mean()),
                     ("l1", lambda s: (s["l1_a"].mean() + s["l1_b"].mean()) / 2),
                     ("vif_other", lambda s: s["vif_b"].mean())):
        want = np.mean([fn({k: v[sl] for k, v in stats.items()}) for sl in per])
        np.testing.assert_allclose(out[name], want, rtol=1e-10)
    assert task.primary_metric == "vif"
    assert task.client_metrics({k: v[1:3] for k, v in stats.items()})["n"] == 2


def test_loss_terms_match_numpy():
    temperature = 0.5
    pred, sources = _pred_and_sources(seed=3, b=2, size=20)
    sources[1, ..., 1] = 0.4  # a flat source: no information, the other takes the larger weight
    terms = {k: np.asarray(v) for k, v in jax.jit(lambda p, s: ft.loss_terms(p, s, temperature))(
        jnp.asarray(pred), jnp.asarray(sources)).items()}
    sobel_x = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
    lap = np.full((3, 3), 1 / 8)
    lap[1, 1] = -1
    p, s = pred.astype(np.float64), sources.astype(np.float64)
    mag = lambda im: np.abs(np_correlate_same_zero(im, sobel_x)) + np.abs(np_correlate_same_zero(im, sobel_x.T))  # noqa: E731
    for i in range(2):
        info = np.array([np.mean(np_correlate_same_zero(s[i, ..., c], lap) ** 2) for c in (0, 1)])
        z = (info + 1e-12) / (info.sum() + 2e-12) / temperature
        w = np.exp(z) / np.exp(z).sum()
        np.testing.assert_allclose(terms["weights"][i], w, rtol=1e-5)
        ssim = np.array([np_ssim(p[i, ..., 0], s[i, ..., c]) for c in (0, 1)])
        np.testing.assert_allclose(terms["ssim"][i], np.dot(w, 1 - ssim), rtol=1e-4)
        mse = np.array([np.mean((p[i, ..., 0] - s[i, ..., c]) ** 2) for c in (0, 1)])
        np.testing.assert_allclose(terms["intensity"][i], np.dot(w, mse), rtol=1e-5)
        grad = np.mean(np.abs(mag(p[i, ..., 0]) - np.maximum(mag(s[i, ..., 0]), mag(s[i, ..., 1]))))
        np.testing.assert_allclose(terms["grad"][i], grad, rtol=1e-5)
    assert terms["weights"][1, 0] > 0.8  # the flat source gets little weight
    task = ft.fusion(ssim_weight=2.0, intensity_weight=3.0, grad_weight=0.5, temperature=temperature, vif_scales=1)
    np.testing.assert_allclose(np.asarray(jax.jit(task.loss)(jnp.asarray(pred), jnp.asarray(sources))),
                               2.0 * terms["ssim"] + 3.0 * terms["intensity"] + 0.5 * terms["grad"], rtol=1e-6)
    # the weights are constants of the loss: no gradient reaches the sources through them
    dw = jax.jit(jax.grad(lambda src: ft.info_weights(src[..., 0], src[..., 1], temperature)[:, 0].sum()))(jnp.asarray(sources))
    assert float(jnp.abs(dw).max()) == 0.0


# ----------------------------------------------------------------------------- model


def _fast_init(fn, *args):
    """Jitted init compiled as the engine compiles one-off init programs (no XLA:CPU backend
    optimisation: a threefry-heavy init otherwise takes seconds to compile)."""
    return jax.jit(fn).lower(*args).compile(compiler_options=federated.init_compiler_options())(*args)


def test_u2fusion_tokens_and_head():
    x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 2))
    bb = U2FusionBackbone(features=4, num_dense=3)
    v = _fast_init(bb.init, jax.random.key(1), x)
    apply = jax.jit(bb.apply)
    tokens = apply(v, x)
    assert tokens.shape == (2, 144, 16)  # (num_dense + 1) * features per pixel
    assert "batch_stats" not in v
    # samples never interact (no normalisation across the batch)
    other = apply(v, x.at[1].set(0.0))
    np.testing.assert_array_equal(np.asarray(tokens[0]), np.asarray(other[0]))
    head = FusionHead(widths=(8,))
    seq = jnp.concatenate([tokens, tokens, jnp.ones((2, 3, 16))], axis=1)  # [Z || r || c]
    layout = TokenLayout(144, 144, 3, (12, 12))
    hv = _fast_init(lambda k, t: head.init(k, t, layout=layout), jax.random.key(2), seq)
    y = jax.jit(lambda p, t: head.apply(p, t, layout=layout))(hv, seq)
    assert y.shape == (2, 12, 12, 1) and float(y.min()) > 0 and float(y.max()) < 1
    assert "suffix_bias" in hv["params"]
    with pytest.raises(ValueError, match="one body token per input pixel"):
        head.apply(hv, seq, layout=TokenLayout(144, 144, 3, (12, 11)))


# ----------------------------------------------------------------------------- data: real files


def _fusion_root():
    root = real_data_dir() / "fusion_harvard"
    if not all((root / p).is_dir() for p in fusion_data.PAIR_TYPES):
        pytest.skip(f"real fusion data not found at {root}")
    return root


def test_real_loader_three_clients_pairing_and_splits():
    root = _fusion_root()
    fed = fusion_data.harvard_fusion_federation(num_clients=3, root=root, image_size=32, seed=0)
    assert fed.modality_names == fusion_data.PAIR_TYPES and fed.num_classes == 0
    assert fed.info["target"] == "fusion"
    assert fed.train.x.shape[1:] == (32, 32, 2)
    np.testing.assert_array_equal(fed.train.x, fed.train.y)
    for k, pair in enumerate(fusion_data.PAIR_TYPES):
        names = sorted(p.name for p in (root / pair / "MRI").glob("*.png"))
        train, test = fed.info["train_pairs"][k], fed.info["test_pairs"][k]
        assert fed.test.n[k] >= 1 and fed.train.n[k] >= 1
        assert sorted(train + test) == names and not set(train) & set(test)
        assert len(test) == round(0.25 * len(names))
        assert set(client_slice(fed.train, k)[2]) == {k} and set(client_slice(fed.test, k)[2]) == {k}
    assert list(fed.train.n + fed.test.n) == [184, 24, 24]
    other = fusion_data.harvard_fusion_federation(num_clients=3, root=root, image_size=32, seed=1)
    assert other.info["test_pairs"] != fed.info["test_pairs"]


def test_real_loader_y_channel_and_box_resize():
    root = _fusion_root()
    fed = fusion_data.harvard_fusion_federation(num_clients=1, root=root, pairs=["PET-MRI"], image_size=256)
    name = fed.info["train_pairs"][0][0]
    rgb = np.asarray(Image.open(root / "PET-MRI" / "PET" / name), np.float64)
    assert rgb.ndim == 3 and rgb.shape[-1] == 3 and np.ptp(rgb[..., 0] - rgb[..., 1]) > 0  # really colour
    y = np.rint(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    np.testing.assert_array_equal(fed.train.x[0, ..., 1], y.astype(np.uint8))
    np.testing.assert_array_equal(fed.train.x[0, ..., 0], np.asarray(Image.open(root / "PET-MRI" / "MRI" / name)))
    small = fusion_data.harvard_fusion_federation(num_clients=1, root=root, pairs=["PET-MRI"], image_size=128)
    luma = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    block = luma.reshape(128, 2, 128, 2).mean(axis=(1, 3))  # BOX at factor 2 = 2x2 block means
    got = small.train.x[0, ..., 1].astype(np.int64)
    assert np.abs(got - np.rint(block)).max() <= 1 and np.mean(got == np.rint(block)) > 0.99


# ----------------------------------------------------------------------------- data: bad input


def _write(path, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 100).save(path)


def test_unpaired_file_named_before_any_pixel_is_read(tmp_path, monkeypatch):
    for n in ("1.png", "2.png"):
        _write(tmp_path / "CT-MRI" / "MRI" / n)
        _write(tmp_path / "CT-MRI" / "CT" / n)
    _write(tmp_path / "PET-MRI" / "MRI" / "a.png")
    _write(tmp_path / "PET-MRI" / "MRI" / "b.png")
    _write(tmp_path / "PET-MRI" / "PET" / "a.png", mode="RGB")
    read = []
    monkeypatch.setattr(fusion_data, "load_pair_images", lambda *a, **k: read.append(a))
    with pytest.raises(ValueError, match=r"unpaired.*PET-MRI/MRI/b\.png has no partner .*PET-MRI/PET/b\.png"):
        fusion_data.harvard_fusion_federation(num_clients=2, root=tmp_path, pairs=["CT-MRI", "PET-MRI"], image_size=8)
    assert read == []  # refused before loading the (valid) CT-MRI client


def test_size_mismatch_and_config_errors_named(tmp_path):
    for n in ("1.png", "2.png"):
        _write(tmp_path / "CT-MRI" / "MRI" / n)
    _write(tmp_path / "CT-MRI" / "CT" / "1.png")
    _write(tmp_path / "CT-MRI" / "CT" / "2.png", size=(8, 10))
    with pytest.raises(ValueError, match=r"pair '2\.png' of CT-MRI has different sizes: .*CT-MRI/MRI/2\.png is 8x8"):
        fusion_data.harvard_fusion_federation(num_clients=1, root=tmp_path, pairs=["CT-MRI"], image_size=8)
    with pytest.raises(ValueError, match="one client per pair type"):
        fusion_data.harvard_fusion_federation(num_clients=3, root=tmp_path, pairs=["CT-MRI"])
    _write(tmp_path / "CT-MRI" / "CT" / "2.png")  # now paired and registered, but 8x8
    with pytest.raises(ValueError, match=r"CT-MRI/MRI/1\.png is 8x8, smaller than image_size=16"):
        fusion_data.harvard_fusion_federation(num_clients=1, root=tmp_path, pairs=["CT-MRI"], image_size=16)
    fed = fusion_data.harvard_fusion_federation(num_clients=1, root=tmp_path, pairs=["CT-MRI"], image_size=4)
    assert fed.train.n.tolist() == [1] and fed.test.n.tolist() == [1] and fed.info["native_sizes"] == [8]


def test_task_from_config_checks_the_data():
    fed = fusion_data.synthetic_fusion_federation(num_clients=3, image_size=24, pairs_per_client=4)
    cfg = config_lib.apply_overrides(config_lib.load_config("fusion_harvard"), ["task_kwargs.vif_scales=1"])
    assert TASKS.get("fusion")(cfg, fed).name == "fusion"
    with pytest.raises(ConfigError, match=r"too small for a 4-scale VIF \(needs >= 41x41\)"):
        TASKS.get("fusion")(dict(cfg, task_kwargs={}), fed)
    with pytest.raises(ConfigError, match="is not a fusion set"):
        TASKS.get("fusion")(cfg, dataclasses.replace(fed, info={}))
    with pytest.raises(ConfigError, match="unknown task_kwargs"):
        TASKS.get("fusion")(dict(cfg, task_kwargs={"dice_weight": 1.0}), None)
    with pytest.raises(ConfigError, match="input_scaling"):
        TASKS.get("fusion")(dict(cfg, input_scaling="pflib"), fed)


# ----------------------------------------------------------------------------- end to end

#: 1 round on 3 tiny synthetic fusion clients (24x24, 8 pairs each), a 1-dense-layer U2Fusion.
TINY = ["dataset=synthetic_fusion", "dataset_kwargs.image_size=24", "dataset_kwargs.pairs_per_client=8",
        "rounds=1", "batch_size=4", "task_kwargs.vif_scales=1", "task_kwargs.head_widths=[]",
        "backbone_kwargs.features=4", "backbone_kwargs.num_dense=1", "checkpoint_every=0", "eval_train_loss=False"]
TINY_OMNIFM = ["algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8", "algorithm_kwargs.num_suffix=2",
               "algorithm_kwargs.bank_capacity=8"]


@pytest.fixture(scope="module", params=["omnifm", "fedavg"])
def tiny_run(request):
    name = request.param
    extra = TINY_OMNIFM if name == "omnifm" else [f"algorithm={name}"]
    cfg = config_lib.apply_overrides(config_lib.load_config("fusion_harvard"), TINY + extra)
    config_lib.validate(cfg)
    return name, experiment.run(cfg, None, progress=False, log=lambda s: None)


def test_one_round_through_the_unchanged_engine(tiny_run):
    name, s = tiny_run
    fed = fusion_data.synthetic_fusion_federation(num_clients=3, image_size=24, pairs_per_client=8)
    assert s["algorithm"] == name and s["task"] == "fusion" and s["primary_metric"] == "vif"
    assert s["last"]["round"] == 1 and np.isfinite(s["last"]["local_loss"])
    for key in ft.METRICS + ("test_loss",):
        assert np.isfinite(s["last"][key]), key
    assert [c["n"] for c in s["last_clients"]] == fed.test.n.tolist()
    np.testing.assert_allclose(s["last"]["vif"], np.mean([c["vif"] for c in s["last_clients"]]), rtol=1e-12)
    assert 0.0 < s["last"]["l1"] < 1.0
