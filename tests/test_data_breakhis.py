"""BreaKHis file-name parsing, folder scanning (both layouts) and image loading."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from _helpers import real_data_dir
from PIL import Image

from omnifm_jax.data.breakhis import (
    MAGNIFICATIONS,
    SUBTYPES,
    BreakHisRecord,
    load_breakhis_image,
    load_breakhis_images,
    parse_breakhis_name,
    scan_breakhis,
    stack_images,
)


def _real_breakhis() -> Path:
    root = real_data_dir() / "breakhis"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"real BreaKHis data not found at {root}")
    return root


# A few real-looking names covering all 8 subtypes and 4 magnifications.
NAMES = [
    "SOB_B_A-14-22549AB-40-001.png",
    "SOB_B_F-14-25197-100-001.png",
    "SOB_B_PT-14-22704-200-013.png",
    "SOB_B_TA-14-16184CD-400-024.png",
    "SOB_M_DC-14-2523-40-010.png",
    "SOB_M_LC-14-12204-100-001.png",
    "SOB_M_MC-14-18842D-200-016.png",
    "SOB_M_PC-14-9146-400-014.png",
]


def _write_png(path: Path, value: int, size: tuple[int, int] = (12, 10), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _tree_path(root: Path, name: str) -> Path:
    r = parse_breakhis_name(name)
    code = name.split("-")[0]  # SOB_B_F
    patient_dir = f"{code}_{r.patient}"
    return (
        root / "BreaKHis_v1" / "histology_slides" / "breast" / r.tumor_class / "SOB" / r.subtype / patient_dir
        / f"{r.magnification}X" / name
    )


# --------------------------------------------------------------------------- parsing


def test_parse_example_name():
    r = parse_breakhis_name("some/dir/SOB_B_F-14-25197-100-001.png")
    assert isinstance(r, BreakHisRecord)
    assert (r.tumor_class, r.subtype, r.patient, r.magnification, r.seq) == (
        "benign", "fibroadenoma", "14-25197", 100, 1,
    )
    assert r.path == Path("some/dir/SOB_B_F-14-25197-100-001.png")
    assert (r.tumor_class_id, r.subtype_id, r.magnification_id) == (0, 1, 1)


def test_parse_all_subtypes_and_magnifications():
    recs = [parse_breakhis_name(n) for n in NAMES]
    assert [r.subtype for r in recs] == list(SUBTYPES)
    assert sorted({r.magnification for r in recs}) == list(MAGNIFICATIONS)
    assert [r.tumor_class for r in recs] == ["benign"] * 4 + ["malignant"] * 4
    assert recs[0].patient == "14-22549AB" and recs[6].patient == "14-18842D"


@pytest.mark.parametrize(
    "name",
    [
        "image_001.png",  # not BreaKHis at all
        "SOB_B_DC-14-2523-40-010.png",  # malignant subtype under benign class
        "SOB_M_A-14-22549AB-40-001.png",  # benign subtype under malignant class
        "SOB_B_F-14-25197-300-001.png",  # magnification 300
        "SOB_B_XX-14-25197-100-001.png",  # unknown subtype
        "SOB_B_F-14-25197-100.png",  # no sequence number
        "SOB_B_F-14-25197-100-001.jpg",  # not a PNG
    ],
)
def test_bad_names_raise_naming_the_file(name):
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        parse_breakhis_name(Path("/x") / name)


# --------------------------------------------------------------------------- scanning


def test_scan_flat_and_tree_layouts_agree(tmp_path):
    flat, tree = tmp_path / "flat", tmp_path / "tree"
    for i, n in enumerate(NAMES):
        _write_png(flat / n, i)
        _write_png(_tree_path(tree, n), i)
    (flat / "manifest.csv").write_text("ignored\n")
    a, b = scan_breakhis(flat), scan_breakhis(tree)
    assert [r.path.name for r in a] == sorted(NAMES) == [r.path.name for r in b]
    assert [r[1:] for r in a] == [r[1:] for r in b]
    # The tree can also be scanned from a sub-folder.
    sub = scan_breakhis(tree / "BreaKHis_v1" / "histology_slides" / "breast" / "malignant")
    assert {r.tumor_class for r in sub} == {"malignant"} and len(sub) == 4
    img_a = load_breakhis_images(a)
    img_b = load_breakhis_images(b)
    for x, y in zip(img_a, img_b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("what", ["class", "subtype", "magnification", "patient"])
def test_scan_tree_folder_conflicts_are_errors(tmp_path, what):
    name = "SOB_B_F-14-25197-100-001.png"
    good = _tree_path(tmp_path, name)
    parts = list(good.relative_to(tmp_path).parts)
    i = {"class": 3, "subtype": 5, "patient": 6, "magnification": 7}[what]
    parts[i] = {"class": "malignant", "subtype": "adenosis", "patient": "SOB_B_F_14-99999",
                "magnification": "400X"}[what]
    _write_png(tmp_path.joinpath(*parts), 0)
    with pytest.raises(ValueError, match=r"folder labels disagree.*" + parts[i]):
        scan_breakhis(tmp_path)


def test_scan_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        scan_breakhis(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no BreaKHis"):
        scan_breakhis(tmp_path / "empty")
    _write_png(tmp_path / "bad" / NAMES[0], 0)
    _write_png(tmp_path / "bad" / "holiday.png", 1)
    with pytest.raises(ValueError, match="holiday.png"):
        scan_breakhis(tmp_path / "bad")
    _write_png(tmp_path / "dup" / "a" / NAMES[1], 0)
    _write_png(tmp_path / "dup" / "b" / NAMES[1], 0)
    with pytest.raises(ValueError, match="found twice"):
        scan_breakhis(tmp_path / "dup")


def test_load_converts_to_rgb_and_downscales(tmp_path):
    p = tmp_path / NAMES[0]
    _write_png(p, 3, size=(20, 14), mode="L")
    img = load_breakhis_image(p)
    assert img.dtype == np.uint8 and img.shape == (14, 20, 3)
    np.testing.assert_array_equal(img[..., 0], img[..., 2])
    small = load_breakhis_image(p, downscale=2)
    assert small.shape == (7, 10, 3) and small.dtype == np.uint8
    with pytest.raises(ValueError, match="downscale"):
        load_breakhis_image(p, downscale=0)
    with pytest.raises(ValueError, match="different shapes"):
        stack_images([img, small])
    assert stack_images([img, img]).shape == (2, 14, 20, 3)


# --------------------------------------------------------------------------- real data


@pytest.mark.real_data
def test_real_images_parse_and_agree_with_manifest():
    root = _real_breakhis()
    with open(root / "manifest.csv", newline="") as f:
        rows = {row["file"]: row for row in csv.DictReader(f)}
    records = scan_breakhis(root)
    assert len(records) == 28 == len(rows)
    assert {r.path.name for r in records} == set(rows)
    for r in records:
        row = rows[r.path.name]
        assert r.tumor_class == row["tumor_class"]
        assert r.subtype == row["subtype"]
        assert r.patient == row["patient_slide"]
        assert f"{r.magnification}X" == row["magnification"]
    assert len({r.subtype for r in records}) == 8
    assert len({r.patient for r in records}) == 21
    mags = {m: sum(r.magnification == m for r in records) for m in MAGNIFICATIONS}
    assert mags == {40: 11, 100: 3, 200: 4, 400: 10}
    images = load_breakhis_images(records)
    for r, img in zip(records, images):
        row = rows[r.path.name]
        assert img.dtype == np.uint8
        assert img.shape == (int(row["height"]), int(row["width"]), 3)
