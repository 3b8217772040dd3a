"""BreaKHis breast-cancer histopathology: file-name parsing, folder scanning, image loading.

BreaKHis (Spanhol et al., 2016) names every image after its labels::

    SOB_B_F-14-25197-100-001.png
    │   │ │  │        │   └── sequence number within the slide/magnification
    │   │ │  │        └────── magnification (40, 100, 200 or 400 X)
    │   │ │  └─────────────── patient / slide id ("14-25197")
    │   │ └────────────────── tumour subtype code (A, F, PT, TA | DC, LC, MC, PC)
    │   └──────────────────── tumour class (B benign, M malignant)
    └──────────────────────── biopsy procedure (SOB, surgical open biopsy)

Two folder layouts are understood, both found by :func:`scan_breakhis`:

* the original archive tree
  ``BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<subtype>/<SOB_B_F_14-25197>/<100X>/*.png``
  (the folder names are cross-checked against the file name; a mismatch is an error);
* a flat folder of PNGs with their original names.

Everything here runs on the host with NumPy and Pillow. The ``breakhis_sr`` federation built
from these images is in :mod:`omnifm_jax.data.breakhis_sr`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .image import bicubic_resize
from .io import open_image

__all__ = [
    "BreakHisRecord",
    "MAGNIFICATIONS",
    "SUBTYPE_CODES",
    "SUBTYPES",
    "TUMOR_CLASSES",
    "load_breakhis_image",
    "load_breakhis_images",
    "parse_breakhis_name",
    "scan_breakhis",
    "stack_images",
]

TUMOR_CLASSES: tuple[str, ...] = ("benign", "malignant")
"""Tumour classes, index = label id."""

SUBTYPE_CODES: dict[str, tuple[str, str]] = {
    "A": ("benign", "adenosis"),
    "F": ("benign", "fibroadenoma"),
    "PT": ("benign", "phyllodes_tumor"),
    "TA": ("benign", "tubular_adenoma"),
    "DC": ("malignant", "ductal_carcinoma"),
    "LC": ("malignant", "lobular_carcinoma"),
    "MC": ("malignant", "mucinous_carcinoma"),
    "PC": ("malignant", "papillary_carcinoma"),
}
"""Subtype code in the file name -> (tumour class, subtype name)."""

SUBTYPES: tuple[str, ...] = tuple(name for _, name in SUBTYPE_CODES.values())
"""The eight subtype names, benign first; index = subtype label id."""

MAGNIFICATIONS: tuple[int, ...] = (40, 100, 200, 400)
"""Optical magnifications; index = magnification id."""

_CLASS_CODES = {"B": "benign", "M": "malignant"}

_NAME_RE = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<cls>[BM])_(?P<sub>A|F|PT|TA|DC|LC|MC|PC)"
    r"-(?P<patient>\d+-\d+[A-Z]*)-(?P<mag>\d+)-(?P<seq>\d+)\.png$",
    re.IGNORECASE,
)
_PATIENT_DIR_RE = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<cls>[BM])_(?P<sub>[A-Z]+)_(?P<patient>\d+-\d+[A-Z]*)$", re.IGNORECASE
)
_MAG_DIR_RE = re.compile(r"^(\d+)X$", re.IGNORECASE)
_ACCESSION_RE = re.compile(r"^\d+-\d+")


class BreakHisRecord(NamedTuple):
    """One BreaKHis image and the labels encoded in its file name."""

    path: Path
    tumor_class: str  # "benign" | "malignant"
    subtype: str  # one of SUBTYPES, e.g. "fibroadenoma"
    patient: str  # slide id as in the file name, e.g. "14-22549AB" (see ``accession``)
    magnification: int  # 40, 100, 200 or 400
    seq: int  # sequence number

    @property
    def name(self) -> str:
        """The file name (unique within BreaKHis)."""
        return self.path.name

    @property
    def accession(self) -> str:
        """The patient's accession number: the slide id without its slide letters.

        BreaKHis ids such as ``14-22549AB`` and ``14-22549CD`` are two slides of one
        biopsy (accession ``14-22549``); grouping by the full id would treat them as
        two patients.
        """
        return _ACCESSION_RE.match(self.patient).group(0)

    @property
    def tumor_class_id(self) -> int:
        return TUMOR_CLASSES.index(self.tumor_class)

    @property
    def subtype_id(self) -> int:
        return SUBTYPES.index(self.subtype)

    @property
    def magnification_id(self) -> int:
        return MAGNIFICATIONS.index(self.magnification)


def parse_breakhis_name(path: str | Path) -> BreakHisRecord:
    """Parse a BreaKHis file name such as ``SOB_B_F-14-25197-100-001.png``.

    Only the final path component is parsed; the folders are not checked here
    (see :func:`scan_breakhis`).

    Raises:
        ValueError: naming the file, if the name does not follow the BreaKHis scheme,
            the subtype does not belong to the tumour class, or the magnification is
            not one of 40/100/200/400.
    """
    path = Path(path)
    m = _NAME_RE.match(path.name)
    if m is None:
        raise ValueError(
            f"{path.name!r} is not a BreaKHis file name; expected e.g. "
            "'SOB_B_F-14-25197-100-001.png' (procedure_class_subtype-patient-magnification-seq.png)"
        )
    cls = _CLASS_CODES[m["cls"].upper()]
    sub_code = m["sub"].upper()
    sub_cls, subtype = SUBTYPE_CODES[sub_code]
    if sub_cls != cls:
        raise ValueError(
            f"{path.name!r}: subtype code {sub_code!r} ({subtype}) is {sub_cls}, but the class code "
            f"{m['cls']!r} says {cls}"
        )
    mag = int(m["mag"])
    if mag not in MAGNIFICATIONS:
        raise ValueError(f"{path.name!r}: magnification {mag} is not one of {MAGNIFICATIONS}")
    return BreakHisRecord(
        path=path,
        tumor_class=cls,
        subtype=subtype,
        patient=m["patient"].upper(),
        magnification=mag,
        seq=int(m["seq"]),
    )


def _check_folders(rec: BreakHisRecord, root: Path) -> None:
    """Cross-check labels implied by the archive's folder names against the file name."""
    try:
        parts = rec.path.parent.relative_to(root).parts
    except ValueError:  # pragma: no cover - path outside root cannot happen via scan
        parts = rec.path.parent.parts
    problems = []
    for part in parts:
        low = part.lower()
        if low in TUMOR_CLASSES and low != rec.tumor_class:
            problems.append(f"folder {part!r} says {low}, file name says {rec.tumor_class}")
        elif low in SUBTYPES and low != rec.subtype:
            problems.append(f"folder {part!r} says {low}, file name says {rec.subtype}")
        elif (mm := _MAG_DIR_RE.match(part)) is not None and int(mm.group(1)) != rec.magnification:
            problems.append(f"folder {part!r} says {mm.group(1)}X, file name says {rec.magnification}X")
        elif (pm := _PATIENT_DIR_RE.match(part)) is not None:
            cls = _CLASS_CODES[pm["cls"].upper()]
            sub = SUBTYPE_CODES.get(pm["sub"].upper(), (None, None))[1]
            if cls != rec.tumor_class or sub != rec.subtype or pm["patient"].upper() != rec.patient:
                problems.append(
                    f"folder {part!r} says {cls}/{sub}/{pm['patient']}, file name says "
                    f"{rec.tumor_class}/{rec.subtype}/{rec.patient}"
                )
    if problems:
        raise ValueError(f"{rec.path}: folder labels disagree with the file name: " + "; ".join(problems))


def scan_breakhis(root: str | Path) -> list[BreakHisRecord]:
    """Find and parse every BreaKHis PNG below ``root`` (original tree or flat folder).

    Files are searched recursively, so ``root`` may be the archive's top folder, any
    folder inside it, or a flat folder of PNGs. Labels implied by folder names
    (``benign``/``malignant``, subtype, ``SOB_<c>_<t>_<patient>``, ``<mag>X``) must agree
    with the file name. Files not ending in ``.png`` are ignored.

    Returns:
        Records sorted by file name (deterministic, independent of the layout).

    Raises:
        FileNotFoundError: if ``root`` does not exist or holds no PNG.
        ValueError: on a malformed name, a folder/file-name label conflict, or the same
            file name found twice.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"BreaKHis folder {root} does not exist")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".png" and p.is_file())
    if not paths:
        raise FileNotFoundError(f"no BreaKHis .png images found below {root}")
    records = []
    seen: dict[str, Path] = {}
    for p in paths:
        rec = parse_breakhis_name(p)
        _check_folders(rec, root)
        key = p.name.upper()
        if key in seen:
            raise ValueError(f"BreaKHis image {p.name!r} found twice: {seen[key]} and {p}")
        seen[key] = p
        records.append(rec)
    records.sort(key=lambda r: r.path.name.upper())
    return records


def load_breakhis_image(path: str | Path, *, downscale: int = 1) -> np.ndarray:
    """Load one image as ``uint8[H, W, 3]`` RGB.

    Args:
        path: PNG file.
        downscale: integer factor; ``> 1`` shrinks the image with Pillow's bicubic
            (antialiased) filter to ``(H // downscale, W // downscale)``.
    """
    if not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    with open_image(path, "BreaKHis") as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if downscale > 1:
        h, w = arr.shape[0] // downscale, arr.shape[1] // downscale
        if h < 1 or w < 1:
            raise ValueError(f"{Path(path).name}: downscale {downscale} leaves no pixels")
        arr = bicubic_resize(arr, (h, w))
    return arr


def load_breakhis_images(
    records: Iterable[BreakHisRecord | str | Path], *, downscale: int = 1
) -> list[np.ndarray]:
    """Load several images (``uint8[H, W, 3]`` each; sizes may differ across BreaKHis)."""
    out: list[np.ndarray] = []
    for r in records:
        out.append(load_breakhis_image(r.path if isinstance(r, BreakHisRecord) else r, downscale=downscale))
    return out


def stack_images(images: Sequence[np.ndarray]) -> np.ndarray:
    """Stack equally sized images into ``uint8[N, H, W, C]`` (clear error otherwise)."""
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"cannot stack images of different shapes: {sorted(shapes)}")
    return np.stack(images).astype(np.uint8, copy=False)
