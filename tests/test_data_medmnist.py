"""MedMNIST v2 loaders: official files, MD5 checks, missing files, cross-modality merging."""

from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
from _helpers import real_data_dir

from omnifm_jax.data import medmnist as mm
from omnifm_jax.data.medmnist_facts import BLOODMNIST_CLASSES, MEDMNIST_SIZES, MEDMNIST_SUBSETS
from omnifm_jax.data.real4 import load_real4


@pytest.fixture(scope="module")
def real() -> Path:
    root = real_data_dir()
    if not (root / "medmnist").is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


# Official MedMNIST v2 facts: split sizes and number of classes.
OFFICIAL = {
    "breastmnist": ((546, 78, 156), 2, 1),
    "retinamnist": ((1080, 120, 400), 5, 3),
    "pneumoniamnist": ((4708, 524, 624), 2, 1),
}
VERIFIED_MD5 = {
    "breastmnist": "750601b1f35ba3300ea97c75c52ff8f6",
    "retinamnist": "bd4c0672f1bba3e3a89f0e4e876791e4",
    "pneumoniamnist": "28209eda62fecd6e6a2d98b1501bb15f",
}


def test_fact_table_is_complete_and_consistent():
    assert len(MEDMNIST_SUBSETS) == 12
    for subset in MEDMNIST_SUBSETS:
        info = mm.medmnist_info(subset)
        assert set(info["md5"]) == set(MEDMNIST_SIZES)
        assert all(len(h) == 32 and int(h, 16) >= 0 for h in info["md5"].values())
        assert info["channels"] in (1, 3)
        assert len(info["labels"]) >= 2
        assert set(info["n_samples"]) == {"train", "val", "test"}
    for subset, md5 in VERIFIED_MD5.items():
        assert mm.medmnist_info(subset)["md5"][28] == md5
    assert len(mm.medmnist_info("pathmnist")["labels"]) + len(mm.medmnist_info("dermamnist")["labels"]) + len(
        mm.medmnist_info("bloodmnist")["labels"]
    ) == 24


def test_file_names_and_urls():
    assert mm.medmnist_filename("breastmnist") == "breastmnist.npz"
    assert mm.medmnist_filename("PathMNIST", 64) == "pathmnist_64.npz"
    assert mm.medmnist_url("bloodmnist", 224) == "https://zenodo.org/records/10519652/files/bloodmnist_224.npz?download=1"
    with pytest.raises(ValueError, match="unknown MedMNIST subset 'nosuchmnist'.*breastmnist"):
        mm.medmnist_filename("nosuchmnist")
    with pytest.raises(ValueError, match="size"):
        mm.medmnist_filename("breastmnist", 32)


def test_default_data_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OMNIFM_DATA", str(tmp_path))
    assert mm.default_data_dir() == tmp_path
    monkeypatch.delenv("OMNIFM_DATA")
    assert mm.default_data_dir() == Path.home() / ".cache" / "omnifm"


@pytest.mark.real_data
@pytest.mark.parametrize("subset", sorted(OFFICIAL))
def test_official_split_sizes_and_labels(real, subset):
    sizes, num_classes, channels = OFFICIAL[subset]
    data = mm.load_medmnist(subset, root=real / "medmnist", download=False)
    assert tuple(data[s].images.shape[0] for s in mm.SPLITS) == sizes
    for split in mm.SPLITS:
        d = data[split]
        assert d.images.dtype == np.uint8 and d.images.shape[1:] == (28, 28, channels)
        assert d.labels.dtype == np.int32 and d.labels.shape == (d.images.shape[0],)
        assert d.labels.min() == 0 and d.labels.max() == num_classes - 1
        assert len(d.class_names) == num_classes
        assert np.all(d.modality == 0) and d.modality_names == (mm.MEDMNIST_MODALITY[subset],)


@pytest.mark.real_data
def test_env_var_root(real, monkeypatch):
    monkeypatch.setenv("OMNIFM_DATA", str(real / "medmnist"))
    d = mm.load_medmnist("breastmnist", splits=("val",), download=False)
    assert set(d) == {"val"} and d["val"].images.shape[0] == 78


@pytest.mark.real_data
def test_blood_pbc_style_file(real):
    data = mm.load_npz_images(
        real / "blood_pbc" / "pbc_bloodmnist_style_28.npz", class_names=BLOODMNIST_CLASSES, modality_name="blood"
    )
    assert tuple(data[s].images.shape[0] for s in mm.SPLITS) == (5983, 855, 1708)
    train = data["train"]
    assert train.images.shape[1:] == (28, 28, 3)
    assert np.bincount(train.labels).tolist() == [426, 1091, 543, 1014, 425, 497, 1165, 822]
    # without class names they are inferred from the labels
    assert mm.load_npz_images(real / "blood_pbc" / "pbc_bloodmnist_style_28.npz", splits=("val",))[
        "val"
    ].class_names == tuple(str(i) for i in range(8))


@pytest.mark.real_data
def test_corrupted_copy_is_caught(real, tmp_path):
    raw = bytearray((real / "medmnist" / "breastmnist.npz").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    bad = tmp_path / "breastmnist.npz"
    bad.write_bytes(bytes(raw))
    actual = mm.md5_of_file(bad)
    with pytest.raises(mm.ChecksumError) as err:
        mm.load_medmnist("breastmnist", root=tmp_path, download=False)
    msg = str(err.value)
    assert str(bad) in msg and VERIFIED_MD5["breastmnist"] in msg and actual in msg
    # verification can be switched off only explicitly; the corrupt zip then fails on read
    assert actual != VERIFIED_MD5["breastmnist"]


def test_missing_file_offline_names_url_and_path(monkeypatch, tmp_path):
    calls = []

    def offline(url, dest, **kw):
        calls.append((url, dest))
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(mm, "_download", offline)
    with pytest.raises(mm.DatasetNotFoundError) as err:
        mm.load_medmnist("dermamnist", size=64, root=tmp_path)
    msg = str(err.value)
    assert mm.medmnist_url("dermamnist", 64) in msg
    assert str(tmp_path / "dermamnist_64.npz") in msg
    assert isinstance(err.value, FileNotFoundError)
    assert calls == [(mm.medmnist_url("dermamnist", 64), tmp_path / "dermamnist_64.npz")]
    assert list(tmp_path.iterdir()) == []  # nothing partial left behind
    with pytest.raises(mm.DatasetNotFoundError, match="Download it from"):
        mm.load_medmnist("dermamnist", root=tmp_path, download=False)
    assert len(calls) == 1


@pytest.mark.real_data
def test_download_path_then_md5(real, monkeypatch, tmp_path):
    def fake_download(url, dest, **kw):
        assert url == mm.medmnist_url("breastmnist")
        shutil.copyfile(real / "medmnist" / "breastmnist.npz", dest)

    monkeypatch.setattr(mm, "_download", fake_download)
    data = mm.load_medmnist("breastmnist", root=tmp_path / "cache")
    assert data["train"].images.shape == (546, 28, 28, 1)
    assert (tmp_path / "cache" / "breastmnist.npz").is_file()


def test_local_npz_bad_inputs(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, train_images=np.zeros((3, 8, 8), np.float32), train_labels=np.zeros((3, 1), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        mm.load_npz_images(p, splits=("train",))
    np.savez(p, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.zeros((4, 1), np.uint8))
    with pytest.raises(ValueError, match="4 labels for 3 images"):
        mm.load_npz_images(p, splits=("train",))
    np.savez(p, train_images=np.zeros((3, 8, 8), np.uint8), train_labels=np.array([[0], [1], [5]], np.uint8))
    with pytest.raises(ValueError, match=r"out of range \[0, 2\)"):
        mm.load_npz_images(p, class_names=("a", "b"), splits=("train",))
    with pytest.raises(ValueError, match="missing keys"):
        mm.load_npz_images(p, splits=("val",))
    with pytest.raises(mm.DatasetNotFoundError):
        mm.load_npz_images(tmp_path / "absent.npz")


def _pool(n, classes, channels, modality_name, seed):
    rng = np.random.default_rng(seed)
    return mm.LabeledImages(
        images=rng.integers(0, 256, (n, 8, 8, channels), dtype=np.uint8),
        labels=rng.integers(0, classes, n).astype(np.int32),
        modality=np.zeros(n, np.int32),
        class_names=tuple(f"c{i}" for i in range(classes)),
        modality_names=(modality_name,),
    )


def test_combine_offsets_and_channels():
    a, b = _pool(10, 3, 3, "colour", 0), _pool(7, 2, 1, "grey", 1)
    c = mm.combine([a, b])
    assert c.images.shape == (17, 8, 8, 3)
    np.testing.assert_array_equal(c.images[10:, ..., 2], b.images[..., 0])
    np.testing.assert_array_equal(c.labels, np.concatenate([a.labels, b.labels + 3]))
    np.testing.assert_array_equal(c.modality, [0] * 10 + [1] * 7)
    assert c.class_names == ("colour: c0", "colour: c1", "colour: c2", "grey: c0", "grey: c1")
    assert c.modality_names == ("colour", "grey")
    with pytest.raises(ValueError, match="image sizes differ"):
        mm.combine([a, a._replace(images=a.images[:, :4])])
    with pytest.raises(ValueError, match="multi-label"):
        mm.combine([a, a._replace(labels=np.zeros((10, 14), np.int32))])


def test_cross_modality_rejects_unknown_and_multilabel(tmp_path):
    with pytest.raises(ValueError, match="unknown MedMNIST subset 'xraymnist'"):
        mm.load_cross_modality(["pathmnist", "xraymnist"], root=tmp_path, download=False)
    with pytest.raises(ValueError, match="multi-label"):
        mm.load_cross_modality(["chestmnist"], root=tmp_path, download=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real_data
def test_cross_modality_from_official_files(real):
    d = mm.load_cross_modality(["breastmnist", "retinamnist"], root=real / "medmnist", download=False,
                               splits=mm.SPLITS)
    assert d.images.shape == (780 + 1600, 28, 28, 3)
    assert len(d.class_names) == 7 and d.class_names[2].startswith("retinamnist: ")
    assert np.bincount(d.modality).tolist() == [780, 1600]
    assert d.labels[d.modality == 1].min() == 2 and d.labels.max() == 6


@pytest.mark.real_data
def test_cross_modality_defaults_to_official_train_split(real):
    d = mm.load_cross_modality(["breastmnist", "retinamnist"], root=real / "medmnist", download=False)
    assert d.images.shape == (546 + 1080, 28, 28, 3)
    assert np.bincount(d.modality).tolist() == [546, 1080]
    # exactly the train images and labels, in order (grey breastmnist repeated to 3 channels)
    breast = mm.load_medmnist("breastmnist", root=real / "medmnist", splits=("train",), download=False)["train"]
    retina = mm.load_medmnist("retinamnist", root=real / "medmnist", splits=("train",), download=False)["train"]
    np.testing.assert_array_equal(d.images[:546], np.repeat(breast.images, 3, axis=-1))
    np.testing.assert_array_equal(d.images[546:], retina.images)
    np.testing.assert_array_equal(d.labels, np.concatenate([breast.labels, retina.labels + 2]))
    explicit = mm.load_cross_modality(["breastmnist", "retinamnist"], root=real / "medmnist", download=False,
                                      splits=("train",))
    np.testing.assert_array_equal(explicit.images, d.images)


@pytest.mark.real_data
def test_real4_pool(real):
    d = load_real4(real)
    assert d.modality_names == ("blood microscopy", "fundus", "chest X-ray", "breast ultrasound")
    assert np.bincount(d.modality).tolist() == [5983 + 855 + 1708, 1600, 4708 + 524 + 624, 780]
    assert len(d.class_names) == 8 + 5 + 2 + 2 and d.labels.max() == 16
    assert d.images.shape[1:] == (28, 28, 3)
    with pytest.raises(mm.DatasetNotFoundError, match="retinamnist.npz"):
        load_real4(real / "blood_pbc")
