"""Tumour slices from a FeTS/BraTS-style NIfTI folder, registered as ``nifti_seg``.

Layout ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``; needs the optional
``nibabel`` (``pip install omnifm-jax[nifti]``), imported only when the loader runs, so
that component discovery never needs it. Targets and regions as
:mod:`omnifm_jax.data.brats`; clients from a FeTS partition file or the case prefix, the
split by case (:mod:`omnifm_jax.data.segmentation`).
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from omnifm_jax.registry import DATASETS

from .brats import BRATS_LABELS, BRATS_REGIONS, BRATS_TARGETS, encode_brats_target
from .federation import Federation
from .image import box_resize, resize_mask, to_uint8
from .options import dataset_options
from .segmentation import channel_indices, groups_to_clients, mask_federation, split_by_patient

__all__ = ["NIFTI_SEQUENCES", "nifti_federation"]

#: The sequences every case must have (besides its ``seg`` label map), in channel order.
NIFTI_SEQUENCES = ("t1", "t1ce", "t2", "flair")


def _nibabel():
    try:
        import nibabel
    except ImportError:
        raise ImportError("nifti_seg needs nibabel: pip install 'omnifm-jax[nifti]' (or pip install nibabel)") from None
    return nibabel


def _nifti_file(case_dir: Path, case: str, seq: str) -> Optional[Path]:
    for ext in (".nii.gz", ".nii"):
        p = case_dir / f"{case}_{seq}{ext}"
        if p.is_file():
            return p
    return None


def _read_partition_file(path: Path) -> Dict[str, str]:
    """``case -> group`` from a CSV with columns ``Subject_ID,Partition_ID`` (FeTS) or ``case,client``."""
    if not path.is_file():
        raise FileNotFoundError(f"partition file {path} not found")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: empty partition file")
    cols = {c.strip().lower(): c for c in rows[0]}
    case_col = cols.get("subject_id") or cols.get("case")
    group_col = cols.get("partition_id") or cols.get("client")
    if case_col is None or group_col is None:
        raise ValueError(f"{path}: needs columns Subject_ID,Partition_ID (FeTS) or case,client; got {list(rows[0])}")
    return {r[case_col].strip(): str(r[group_col]).strip() for r in rows}


def _normalise(vol: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Inside ``brain``: 0.5th-99.5th percentile -> 1..255 linearly (clipped); background 0."""
    out = np.zeros(vol.shape, np.float32)
    if not brain.any():
        return out
    lo, hi = np.percentile(vol[brain], [0.5, 99.5])
    scaled = 1.0 + 254.0 * (np.clip(vol, lo, hi) - lo) / max(hi - lo, 1e-8)
    out[brain] = scaled[brain]
    return out


def nifti_federation(*, root, num_clients: int = 2, seed: int = 0, channels: Sequence[str] = ("t1ce",),
                     target: str = "et", size: int = 96, crop: Optional[Sequence[int]] = None,
                     partition_file=None, prefix_regex: Optional[str] = None, test_fraction: float = 0.25,
                     min_patients: int = 2, label_values: Sequence[int] = BRATS_LABELS) -> Federation:
    """Axial tumour slices from a FeTS/BraTS NIfTI folder.

    Layout: ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (``.nii`` too). Every case
    must have all four sequences and the label map; labels must lie in ``label_values``
    (BraTS: {0, 1, 2, 4}). Checked for every case before any volume is read in full.

    Per case (as ``brats_slices`` was built, see SOURCES.md): the brain is the union of the
    non-zero voxels of the four sequences; each sequence is mapped linearly from its 0.5th-
    99.5th percentile inside the brain to 1..255 (background 0); every axial slice with any
    label > 0 is kept, as ``vol[:, :, z].T``; optional ``crop=(y0, y1, x0, x1)`` of that
    plane; then a box resize to ``size`` x ``size`` (images) and, for the mask, each class's
    area fraction with the majority class (ties to the higher; binary: >= 50 %).
    ``target``/``channels`` as :func:`brats_federation`. One case = one patient.

    Clients: groups from ``partition_file`` (FeTS ``partitioning_*.csv``: ``Subject_ID,
    Partition_ID``; every case of the folder must be listed) or else the case-name prefix:
    the first group of ``prefix_regex`` (default: the name without its last two ``_``
    fields, ``Brats18_TCIA05_396_1 -> Brats18_TCIA05``); groups then become
    ``num_clients`` clients as in the module docstring.
    """
    nib = _nibabel()
    if root is None:
        raise ValueError("nifti_seg needs root=<folder of case folders>")
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"nifti_seg: folder {folder} not found")
    ch = channel_indices(channels, NIFTI_SEQUENCES, {}, "nifti_seg")
    if target not in BRATS_TARGETS:
        raise ValueError(f"nifti_seg target must be one of {sorted(BRATS_TARGETS)}, got {target!r}")
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    cases = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if not cases:
        raise ValueError(f"nifti_seg: no case folders in {folder}")
    # 1. every file present (before any work)
    files: Dict[str, Dict[str, Path]] = {}
    for case in cases:
        files[case] = {}
        for seq in NIFTI_SEQUENCES + ("seg",):
            p = _nifti_file(folder / case, case, seq)
            if p is None:
                raise FileNotFoundError(f"nifti_seg: case {case!r} has no {seq} sequence: expected "
                                        f"{folder / case / f'{case}_{seq}.nii.gz'}")
            files[case][seq] = p
    # 2. clients from the partition file or the case prefix
    if partition_file is not None:
        part = _read_partition_file(Path(partition_file).expanduser())
        unlisted = [c for c in cases if c not in part]
        if unlisted:
            raise ValueError(f"nifti_seg: case(s) {unlisted} of {folder} are not in {partition_file}")
        group_of = {c: part[c] for c in cases}
    else:
        rx = re.compile(prefix_regex) if prefix_regex else None
        group_of = {}
        for c in cases:
            if rx is None:
                group_of[c] = c.rsplit("_", 2)[0] if c.count("_") >= 2 else c
            else:
                m = rx.search(c)
                if m is None:
                    raise ValueError(f"nifti_seg: prefix_regex {prefix_regex!r} does not match case {c!r}")
                group_of[c] = m.group(1) if m.groups() else m.group(0)
    # 3. shapes (headers only) and label values
    for case in cases:
        seg_img = nib.load(str(files[case]["seg"]))
        for seq in NIFTI_SEQUENCES:
            shape = nib.load(str(files[case][seq])).shape
            if tuple(shape[:3]) != tuple(seg_img.shape[:3]):
                raise ValueError(f"nifti_seg: {files[case]['seg']} has shape {tuple(seg_img.shape)} but "
                                 f"{files[case][seq]} has {tuple(shape)}")
        seg = np.asarray(seg_img.dataobj)
        if not np.all(np.isfinite(seg)) or np.any(seg != np.round(seg)):
            raise ValueError(f"nifti_seg: {files[case]['seg']} holds non-integer labels")
        bad = sorted(set(np.unique(seg).astype(np.int64).tolist()) - set(int(v) for v in label_values))
        if bad:
            raise ValueError(f"nifti_seg: {files[case]['seg']} holds label values {bad} outside the declared "
                             f"set {sorted(int(v) for v in label_values)}")
    # 4. the work
    x_list, y_list, case_list, z_list = [], [], [], []
    for case in cases:
        seg = np.rint(np.asarray(nib.load(str(files[case]["seg"])).dataobj)).astype(np.int64)
        vols = [np.asarray(nib.load(str(files[case][s])).dataobj, np.float32) for s in NIFTI_SEQUENCES]
        brain = np.zeros(seg.shape, bool)
        for v in vols:
            brain |= v != 0
        norm = [_normalise(vols[i], brain) for i in ch]
        mask_all, _, _ = encode_brats_target(np.clip(seg, 0, 255).astype(np.uint8), target)
        num_c = 4 if target == "multiclass" else 2
        for z in range(seg.shape[2]):
            if not (seg[:, :, z] > 0).any():
                continue
            planes = np.stack([v[:, :, z].T for v in norm], axis=-1)
            mk = mask_all[:, :, z].T
            if crop is not None:
                y0, y1, x0, x1 = (int(v) for v in crop)
                planes, mk = planes[y0:y1, x0:x1], mk[y0:y1, x0:x1]
            x_list.append(to_uint8(box_resize(planes, (size, size))))
            y_list.append(resize_mask(mk, (size, size), num_c))
            case_list.append(case)
            z_list.append(z)
    if not x_list:
        raise ValueError(f"nifti_seg: no slice with a label > 0 in {folder}")
    images, masks, case_arr = np.stack(x_list), np.stack(y_list), np.array(case_list)
    slices_of = {str(c): int(n) for c, n in zip(*np.unique(case_arr, return_counts=True))}
    groups: Dict[str, List[str]] = {}
    for c in slices_of:
        groups.setdefault(group_of[c], []).append(c)
    clients, names = groups_to_clients(groups, slices_of, num_clients, min_patients=min_patients, seed=seed)
    train_p, test_p = split_by_patient(clients, slices_of, test_fraction=test_fraction, seed=seed)
    group_names = sorted(groups)
    modality = np.array([group_names.index(group_of[c]) for c in case_arr], np.int32)
    lv, cn = (BRATS_LABELS, BRATS_TARGETS["multiclass"][1]) if target == "multiclass" else ((0, 1),
                                                                                            BRATS_TARGETS[target][1])
    info = {"dataset": "nifti_seg", "root": str(folder), "seed": int(seed), "num_clients": int(num_clients),
            "brats_target": target, "channels": [NIFTI_SEQUENCES[i] for i in ch], "size": int(size),
            **({"regions": dict(BRATS_REGIONS)} if target == "multiclass" else {}),
            "test_fraction": float(test_fraction), "partition": "partition_file" if partition_file else "case_prefix",
            "slices": [[str(c), int(z)] for c, z in zip(case_list, z_list)],
            "split_note": "clients by institution (partition file or case prefix); train/test split by case"}
    return mask_federation(images, masks, modality, case_arr, train_p, test_p, label_values=lv, class_names=cn,
                           modality_names=group_names, client_names=names, info=info)


@DATASETS.register("nifti_seg")
def _nifti(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("nifti_seg", kw, nifti_federation,
                         allowed=("root", "channels", "target", "size", "crop", "partition_file", "prefix_regex",
                                  "test_fraction", "min_patients", "label_values"))
    return nifti_federation(num_clients=num_clients, seed=seed, **kw)
