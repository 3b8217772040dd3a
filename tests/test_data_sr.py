"""Super-resolution pairs, the bicubic baseline and leak-free federated SR splits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from _helpers import real_data_dir
from PIL import Image

from omnifm_jax.data.breakhis import load_breakhis_images, scan_breakhis
from omnifm_jax.data.breakhis_sr import GROUP_SPLITS, SPLIT_BY, breakhis_sr_federation
from omnifm_jax.data.federation import Federation, client_ids, client_slice, validate_federation
from omnifm_jax.data.image import bicubic_resize
from omnifm_jax.data.sr import (
    bicubic_downscale,
    bicubic_upsample,
    extract_patch_grid,
    make_sr_pairs,
    psnr,
    synthetic_sr_federation,
)


def _real_breakhis() -> Path:
    root = real_data_dir() / "breakhis"
    if not (root / "images").is_dir():
        pytest.skip(f"real BreaKHis data not found at {root}")
    return root


@pytest.fixture(scope="module")
def real_images():
    return load_breakhis_images(scan_breakhis(_real_breakhis()))


def _smooth_images(n=3, h=40, w=48, seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for _ in range(n):
        f = rng.uniform(0.05, 0.2, size=(3, 2))
        img = 127.5 + 100 * np.sin(f[:, 0, None, None] * yy + f[:, 1, None, None] * xx)
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8).transpose(1, 2, 0))
    return np.stack(out)


# --------------------------------------------------------------------------- resampling


def test_bicubic_is_pillow_bicubic():
    img = _smooth_images(1)[0]
    ours = bicubic_resize(img, (20, 24))
    # Pillow's own 8-bit RGB path rounds between its two passes; ours rounds once.
    pil = np.asarray(Image.fromarray(img).resize((24, 20), Image.Resampling.BICUBIC))
    assert ours.dtype == np.uint8 and ours.shape == (20, 24, 3)
    assert np.abs(ours.astype(int) - pil).max() <= 2
    # Float path: same filter, no rounding; uint8 path = rounded float path.
    flt = bicubic_resize(img.astype(np.float32), (20, 24))
    assert flt.dtype == np.float32
    np.testing.assert_array_equal(np.clip(np.rint(flt), 0, 255).astype(np.uint8), ours)
    # Constant images stay constant, both ways.
    const = np.full((16, 16, 3), 77, np.uint8)
    assert np.all(bicubic_downscale(const, 4) == 77) and np.all(bicubic_upsample(const, 8) == 77)


def test_bicubic_upsample_shapes_and_batches():
    lr = _smooth_images(2, 10, 12)
    up = bicubic_upsample(lr, 4)
    assert up.shape == (2, 40, 48, 3) and up.dtype == np.uint8
    np.testing.assert_array_equal(up[1], bicubic_upsample(lr[1], 4))
    with pytest.raises(ValueError, match="scale must be one of"):
        bicubic_upsample(lr, 3)
    with pytest.raises(ValueError, match="not divisible by scale 8"):
        bicubic_downscale(_smooth_images(1, 12, 16), 8)


def test_psnr():
    a = np.zeros((2, 4, 4, 3), np.uint8)
    b = a.copy()
    b[0] += 1  # MSE 1 on image 0
    b[1] += 2  # MSE 4 on image 1
    expected = np.mean([10 * np.log10(255**2 / 1), 10 * np.log10(255**2 / 4)])
    assert psnr(a, b) == pytest.approx(expected)
    assert psnr(a[0], a[0]) == np.inf
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:1])


# --------------------------------------------------------------------------- pairs


def test_make_sr_pairs_shapes_grid_and_determinism():
    imgs = _smooth_images(3, 40, 48)
    lr, hr, src = make_sr_pairs(imgs, scale=4, patch=16)
    # 2 x 3 non-overlapping windows per 40x48 image.
    assert lr.shape == (18, 4, 4, 3) and hr.shape == (18, 16, 16, 3) and src.shape == (18,)
    assert lr.dtype == hr.dtype == np.uint8 and src.dtype == np.int32
    np.testing.assert_array_equal(src, np.repeat([0, 1, 2], 6))
    np.testing.assert_array_equal(hr[7], imgs[1, 0:16, 16:32])  # row-major grid
    np.testing.assert_array_equal(lr, bicubic_downscale(hr, 4))
    assert extract_patch_grid(40, 48, patch=16, stride=8).shape == (4 * 5, 2)
    lr2, hr2, src2 = make_sr_pairs(imgs, scale=2, patch=16, stride=8, max_patches_per_image=5, seed=3)
    assert hr2.shape == (15, 16, 16, 3) and np.bincount(src2).tolist() == [5, 5, 5]
    again = make_sr_pairs(imgs, scale=2, patch=16, stride=8, max_patches_per_image=5, seed=3)
    for x, y in zip((lr2, hr2, src2), again):
        np.testing.assert_array_equal(x, y)
    other = make_sr_pairs(imgs, scale=2, patch=16, stride=8, max_patches_per_image=5, seed=4)
    assert not np.array_equal(hr2, other[1])
    # Lists of differently sized images are fine.
    lr3, hr3, src3 = make_sr_pairs([imgs[0], imgs[1, :32, :32]], scale=8, patch=16)
    assert hr3.shape == (6 + 4, 16, 16, 3) and lr3.shape == (10, 2, 2, 3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(scale=4, patch=18), "not divisible by scale 4"),
        (dict(scale=3, patch=18), "scale must be one of"),
        (dict(scale=16, patch=32), "scale must be one of"),
        (dict(scale=2.0, patch=16), "scale must be one of"),
        (dict(scale=2, patch=64), "smaller than one 64x64 patch"),
        (dict(scale=2, patch=16, stride=0), "stride"),
        (dict(scale=2, patch=16, max_patches_per_image=0), "max_patches_per_image"),
    ],
)
def test_make_sr_pairs_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_sr_pairs(_smooth_images(2, 40, 48), **kwargs)


def test_make_sr_pairs_rejects_non_uint8():
    with pytest.raises(ValueError, match="uint8"):
        make_sr_pairs(_smooth_images(1).astype(np.float32), scale=2, patch=16)


@pytest.mark.real_data
def test_real_bicubic_psnr_by_scale(real_images):
    """Measured (28 images at 700x460, 96 px patches, 8 per image, seed 0):
    x2 38.28 dB, x4 32.12 dB, x8 27.20 dB."""
    values = {}
    for scale in (2, 4, 8):
        lr, hr, src = make_sr_pairs(real_images, scale=scale, patch=96, max_patches_per_image=8)
        assert lr.shape == (224, 96 // scale, 96 // scale, 3) and hr.shape == (224, 96, 96, 3)
        assert lr.dtype == hr.dtype == np.uint8
        assert np.bincount(src).tolist() == [8] * 28
        up = bicubic_upsample(lr, scale)
        assert up.shape == hr.shape and up.dtype == np.uint8
        values[scale] = psnr(up, hr)
    assert values[2] > values[4] + 3 > values[8] + 6
    assert 36.0 < values[2] < 41.0
    assert 30.0 < values[4] < 34.5
    assert 25.0 < values[8] < 29.5


# --------------------------------------------------------------------------- federations


def _assert_ragged(fed: Federation) -> None:
    """Both splits store clients one after another with no padding rows."""
    for a in (fed.train, fed.test):
        assert a.n.dtype == a.offsets.dtype == np.int32
        np.testing.assert_array_equal(a.offsets, np.concatenate([[0], np.cumsum(a.n)[:-1]]))
        assert a.x.shape[0] == a.y.shape[0] == a.modality.shape[0] == int(a.n.sum())


def _sources_disjoint(fed: Federation) -> None:
    train = {s for client in fed.info["train_source"] for s in client}
    test = {s for client in fed.info["test_source"] for s in client}
    assert train and test and not (train & test)


def test_synthetic_sr_federation_fast_deterministic_non_iid():
    t0 = time.perf_counter()
    fed = synthetic_sr_federation()
    assert time.perf_counter() - t0 < 1.0
    validate_federation(fed)
    assert fed.num_classes == 0 and fed.class_names == () and fed.num_clients == 3
    assert fed.train.x.shape == (216, 8, 8, 3) and fed.train.y.shape == (216, 16, 16, 3)
    assert fed.train.x.dtype == fed.train.y.dtype == np.uint8
    assert fed.train.n.tolist() == [72, 72, 72] and fed.test.n.tolist() == [24, 24, 24]
    _assert_ragged(fed)
    # one modality per client, and client_ids agrees with the modality of every row here
    np.testing.assert_array_equal(fed.train.modality, client_ids(fed.train))
    for k in range(3):
        x, y, m = client_slice(fed.train, k)
        assert x.shape[0] == 72 and set(m.tolist()) == {k}
        np.testing.assert_array_equal(x, bicubic_downscale(y, 2))
    _sources_disjoint(fed)
    again = synthetic_sr_federation()
    for a, b in zip(fed.train + fed.test, again.train + again.test):
        np.testing.assert_array_equal(a, b)
    other = synthetic_sr_federation(seed=1)
    assert not np.array_equal(fed.train.y, other.train.y)
    fed8 = synthetic_sr_federation(scale=8, num_clients=2, images_per_client=8)
    assert fed8.train.x.shape[1:] == (2, 2, 3) and fed8.num_clients == 2
    _assert_ragged(fed8)


@pytest.mark.real_data
@pytest.mark.parametrize("split_by", SPLIT_BY)
@pytest.mark.parametrize("group_split", GROUP_SPLITS)
def test_real_federation_splits_do_not_leak(split_by, group_split):
    root = _real_breakhis()
    fed = breakhis_sr_federation(root=root, split_by=split_by, group_split=group_split, scale=4, patch=96)
    validate_federation(fed)
    assert fed.num_clients == 3 and fed.num_classes == 0
    assert fed.train.x.shape[1:] == (24, 24, 3) and fed.train.y.shape[1:] == (96, 96, 3)
    _assert_ragged(fed)
    _sources_disjoint(fed)
    info = fed.info
    train_imgs = {s for c in info["train_images"] for s in c}
    test_imgs = {s for c in info["test_images"] for s in c}
    assert not (train_imgs & test_imgs) and len(train_imgs | test_imgs) == 28
    if group_split == "patient":
        train_pat = {p for c in info["train_patients"] for p in c}
        test_pat = {p for c in info["test_patients"] for p in c}
        assert not (train_pat & test_pat)
    # Modality ids are the client's groups; groups never straddle clients unless split.
    for k in range(3):
        ids = set(client_slice(fed.train, k)[2].tolist()) | set(client_slice(fed.test, k)[2].tolist())
        assert {fed.modality_names[i] for i in ids} <= set(info["client_groups"][k])
        assert fed.test.n[k] > 0 and fed.train.n[k] > 0
    if split_by != "tumor_class":  # 4 magnifications / 8 subtypes -> whole groups per client
        groups = [g for c in info["client_groups"] for g in c]
        assert len(groups) == len(set(groups))
    x, y, _ = client_slice(fed.test, 0)
    assert x.shape[0] == fed.test.n[0] > 0
    np.testing.assert_array_equal(x, bicubic_downscale(y, 4))


def test_federation_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown split_by"):
        breakhis_sr_federation(root=tmp_path, split_by="organ")
    with pytest.raises(ValueError, match="unknown group_split"):
        breakhis_sr_federation(root=tmp_path, group_split="slide")
    with pytest.raises(ValueError, match="not divisible by scale 8"):
        breakhis_sr_federation(root=tmp_path, scale=8, patch=100)
    with pytest.raises(ValueError, match="scale must be one of"):
        breakhis_sr_federation(root=tmp_path, scale=3)
    with pytest.raises(ValueError, match="test_fraction"):
        breakhis_sr_federation(root=tmp_path, test_fraction=1.0)
    with pytest.raises(FileNotFoundError, match="BreaKHis folder not found.*OMNIFM_REAL_DATA"):
        breakhis_sr_federation(root=tmp_path / "nowhere")
    monkeypatch.setenv("OMNIFM_REAL_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "breakhis")):
        breakhis_sr_federation()
    with pytest.raises(ValueError, match="not divisible by scale 4"):
        synthetic_sr_federation(scale=4, patch=18)


@pytest.mark.real_data
def test_real_federation_too_many_clients():
    root = _real_breakhis()
    with pytest.raises(ValueError, match="client"):
        breakhis_sr_federation(root=root, split_by="tumor_class", group_split="patient", num_clients=20)


def _accession_of_file(name: str) -> str:
    """Independent of the package: 'SOB_B_A-14-22549AB-100-027.png' -> '14-22549'."""
    slide = name.split("-", 1)[1].rsplit("-", 2)[0]  # '14-22549AB'
    year, number = slide.split("-")
    return f"{year}-{''.join(ch for ch in number if ch.isdigit())}"


def test_accession_strips_slide_letters():
    from omnifm_jax.data.breakhis import parse_breakhis_name

    for name, acc in [("SOB_B_A-14-22549AB-100-027.png", "14-22549"), ("SOB_M_DC-14-16184CD-40-003.png", "14-16184"),
                      ("SOB_M_DC-14-16184-40-003.png", "14-16184"), ("SOB_B_F-14-14134E-400-001.png", "14-14134")]:
        assert parse_breakhis_name(name).accession == acc == _accession_of_file(name)


def _leaks(fed):
    train = {_accession_of_file(n) for c in fed.info["train_images"] for n in c}
    return sorted({n for c in fed.info["test_images"] for n in c if _accession_of_file(n) in train})


@pytest.mark.real_data
def test_default_sr_split_holds_out_whole_accessions():
    """On the real PNGs, over several seeds: no test image shares an accession number with any
    training image of any client (the default split); the image-level split does leak."""
    root = _real_breakhis()
    records = scan_breakhis(root)
    assert len({r.patient for r in records}) == 21 and len({_accession_of_file(r.name) for r in records}) == 19
    leaked_by_image_split = 0
    for seed in range(5):
        fed = breakhis_sr_federation(root=root, seed=seed, scale=2, patch=64, max_patches_per_image=1)
        assert fed.info["group_split"] == "patient" and _leaks(fed) == []
        assert all(n > 0 for n in fed.test.n) and all(n > 0 for n in fed.train.n)
        leaked_by_image_split += len(_leaks(breakhis_sr_federation(root=root, seed=seed, scale=2, patch=64,
                                                                   max_patches_per_image=1, group_split="image")))
    assert leaked_by_image_split > 0
