"""tensorflow-datasets builders give the same arrays as the NumPy loaders (skipped without tfds)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from omnifm_jax.data.breakhis import load_breakhis_image, scan_breakhis  # noqa: E402
from omnifm_jax.data.medmnist import load_medmnist  # noqa: E402
from omnifm_jax.data.tfds_builders import BreakHisBuilder, MedMNISTBuilder  # noqa: E402


def _prepare(builder_cls, tmp_path, manual, **kwargs):
    b = builder_cls(data_dir=str(tmp_path / "tfds"), **kwargs)
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(manual)))
    return b


def _fake_medmnist(folder, name, *, n=(8, 3, 4), shape=(28, 28), num_classes=2, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, k in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, (k, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, num_classes, (k, 1)).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / name, **arrays)
    return arrays


def test_medmnist_builder_matches_numpy_loader(tmp_path):
    manual = tmp_path / "manual"
    _fake_medmnist(manual, "breastmnist.npz")
    b = _prepare(MedMNISTBuilder, tmp_path, manual, config="breastmnist_28")
    assert b.info.features["label"].names == ["malignant", "normal, benign"]
    expected = load_medmnist("breastmnist", root=manual, download=False, verify_md5=False)
    for split, tfds_split in (("train", "train"), ("val", "validation"), ("test", "test")):
        src = b.as_data_source(split=tfds_split)
        ref = expected[split]
        assert len(src) == ref.num_samples
        rows = sorted((src[i] for i in range(len(src))), key=lambda r: int(r["index"]))
        images = np.stack([r["image"] for r in rows])
        labels = np.array([r["label"] for r in rows])
        assert images.dtype == np.uint8 and images.shape == ref.images.shape == (len(src), 28, 28, 1)
        np.testing.assert_array_equal(images, ref.images)
        np.testing.assert_array_equal(labels, ref.labels)


def test_medmnist_builder_rgb_size_config(tmp_path):
    manual = tmp_path / "manual"
    raw = _fake_medmnist(manual, "retinamnist_64.npz", n=(5, 2, 2), shape=(64, 64, 3), num_classes=5, seed=1)
    b = _prepare(MedMNISTBuilder, tmp_path, manual, config="retinamnist_64")
    rows = sorted(b.as_data_source(split="test"), key=lambda r: int(r["index"]))
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows]), raw["test_images"])
    np.testing.assert_array_equal([r["label"] for r in rows], raw["test_labels"][:, 0])


def test_medmnist_builder_missing_file_is_clear(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*zenodo"):
        _prepare(MedMNISTBuilder, tmp_path, manual, config="pneumoniamnist_28")
    _fake_medmnist(manual, "breastmnist.npz")  # some other subset only
    with pytest.raises(FileNotFoundError, match=r"pneumoniamnist\.npz not found.*zenodo"):
        _prepare(MedMNISTBuilder, tmp_path, manual, config="pneumoniamnist_28")


def test_breakhis_builder_matches_numpy_loader_tree_layout(tmp_path):
    names = {
        "SOB_B_F-14-25197-100-001.png": ("benign", "fibroadenoma", "SOB_B_F_14-25197", "100X"),
        "SOB_M_DC-14-2523-40-010.png": ("malignant", "ductal_carcinoma", "SOB_M_DC_14-2523", "40X"),
        "SOB_M_PC-14-9146-400-014.png": ("malignant", "papillary_carcinoma", "SOB_M_PC_14-9146", "400X"),
    }
    base = tmp_path / "manual" / "BreaKHis_v1" / "histology_slides" / "breast"
    rng = np.random.default_rng(0)
    for i, (name, (cls, sub, pat, mag)) in enumerate(names.items()):
        folder = base / cls / "SOB" / sub / pat / mag
        folder.mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (10 + i, 14, 3), dtype=np.uint8)).save(folder / name)
    b = _prepare(BreakHisBuilder, tmp_path, tmp_path / "manual")
    src = b.as_data_source(split="train")
    assert len(src) == 3
    rows = {r["filename"].decode(): r for r in src}
    feats = b.info.features
    for rec in scan_breakhis(tmp_path / "manual"):
        r = rows[rec.path.name]
        np.testing.assert_array_equal(r["image"], load_breakhis_image(rec.path))
        assert feats["tumor_class"].int2str(r["tumor_class"]) == rec.tumor_class
        assert feats["subtype"].int2str(r["subtype"]) == rec.subtype
        assert feats["magnification"].int2str(r["magnification"]) == f"{rec.magnification}X"
        assert r["patient"].decode() == rec.patient and int(r["seq"]) == rec.seq


def test_breakhis_builder_rejects_bad_names(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(manual / "slide7.png")
    with pytest.raises(ValueError, match="slide7.png"):
        _prepare(BreakHisBuilder, tmp_path, manual)


def test_core_package_imports_without_tfds():
    """With tensorflow_datasets hidden, the core data modules import and tfds_builders says what to install."""
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None\n"
        "import omnifm_jax.data.sr, omnifm_jax.data.breakhis\n"
        "try:\n"
        "    import omnifm_jax.data.tfds_builders\n"
        "except ImportError as e:\n"
        "    print('MSG', e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "pip install 'omnifm-jax[tfds]'" in out.stdout


def test_medmnist_as_dataset_with_tensorflow(tmp_path):
    """The tf.data path (TensorFlow installed, tfrecord files)."""
    pytest.importorskip("tensorflow")
    manual = tmp_path / "manual"
    raw = _fake_medmnist(manual, "breastmnist.npz")
    b = _prepare(MedMNISTBuilder, tmp_path, manual, config="breastmnist_28", file_format="tfrecord")
    rows = sorted(tfds.as_numpy(b.as_dataset(split="train")), key=lambda r: int(r["index"]))
    np.testing.assert_array_equal(np.stack([r["image"] for r in rows])[..., 0], raw["train_images"])
    np.testing.assert_array_equal([r["label"] for r in rows], raw["train_labels"][:, 0])
