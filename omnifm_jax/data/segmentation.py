"""Segmentation federations: image/mask slices split by patient, clients by institution.

Loaders (registered in :data:`omnifm_jax.registry.DATASETS`):

* ``lgg_seg``: TCGA-LGG FLAIR-abnormality slices (Buda et al.; ``lgg_mri_seg`` in the real
  data folder, 1,482 slices 64x64, 110 patients of 5 institutions). Channels pre-contrast T1,
  FLAIR, post-contrast T1Gd. Clients are institutions (``site``).
* ``brats_seg``: BraTS axial tumour slices (``brats_slices``, 584 slices 96x96, 8 cases of 7
  patients). Target ``et`` (label 4, the paper's enhancing tumour), ``tc`` ({1, 4}), ``wt``
  (> 0) or ``multiclass`` ({0, 1, 2, 4}; ``info["regions"]`` then names ET/TC/WT, which the
  segmentation task reports); input channels default T1ce only (the paper's).
  Clients are groups of patients.
* ``seg_cross_modality``: PH2 dermoscopy lesions (64x64 RGB) + DSB2018 nuclei (128x128,
  box-resized to 64x64, masks re-thresholded at 50 %): a 2-modality federation.
* ``nifti_seg``: a FeTS/BraTS-style NIfTI folder ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``
  (needs the optional ``nibabel``: ``pip install omnifm-jax[nifti]``).

Every federation stores masks as class indices ``y uint8[N, H, W, 1]`` into
``info["label_values"]`` (background first), sets ``info["target"] = "mask"`` (what
``task=segmentation`` checks), ``info["class_names"]``, ``info["client_names"]``, the
patients of each client's train and test split (``train_patients``/``test_patients``) and
their source rows (``train_indices``/``test_indices``: rows of the npz file; for
``seg_cross_modality`` rows of PH2 followed by DSB; for ``nifti_seg`` indices into
``info["slices"]``, the ``(case, z)`` of every slice). ``num_classes`` is 0: in a
:class:`Federation` it counts image-level labels (validation then expects image targets,
as for super-resolution); the number of mask classes is ``len(info["label_values"])``.

Splits never leak: the unit of the train/test split is the PATIENT (never the slice): a
patient's slices are all in train or all in test, and a patient belongs to one client
(LGG: a TCGA case id ``TCGA_<site>_<patient>_<date>``; BraTS: the case, with
``Brats18_2013_2_1`` and ``brats_2013_pat0002_1`` -- the same BRATS-2013 patient HG0002 --
one patient). For each client, its patients are shuffled with
``numpy.random.default_rng([seed, 2, k])``; the test slices should be ``test_fraction`` of
the client's slices; at least one patient is tested and at least one trained on. Patients
are visited in that order and one is taken when it brings the test slices closer to the
target (the first always), so whole patients approximate the fraction. Deterministic in
``seed``.

Clients from groups (institutions, partitions, case prefixes): a group with fewer than
``min_patients`` patients (2: one to train on, one to test) is merged into the smallest
other group (by slices); then, while there are fewer groups than ``num_clients``, the
largest group is split in two halves of its patients (seeded), and while there are more,
the two smallest are merged. ``info["client_names"]`` says what each client holds
(``"CS+EZ"``, ``"DU#1"``).

Bad input is refused before any work, naming the file: masks whose shape differs from the
images, mask values outside the declared set, a NIfTI case missing a sequence.
"""
from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from omnifm_jax.registry import DATASETS

from .federation import Federation, stack_clients, validate_federation
from .io import read_npz
from .options import dataset_options

__all__ = [
    "BRATS_REGIONS",
    "BRATS_TARGETS",
    "box_resize",
    "resize_mask",
    "check_masks",
    "groups_to_clients",
    "split_by_patient",
    "lgg_federation",
    "brats_federation",
    "cross_modality_federation",
    "nifti_federation",
]

LGG_FILE = Path("lgg_mri_seg") / "lgg_flair_seg_64.npz"
BRATS_FILE = Path("brats_slices") / "brats_tumour_slices_96.npz"
PH2_FILE = Path("skin_ph2_seg") / "ph2_lesion_seg_64.npz"
DSB_FILE = Path("nuclei_dsb2018") / "dsb2018_nuclei_subset250_128.npz"

#: LGG channel names (as stored) and accepted aliases.
LGG_CHANNELS = ("pre_contrast_T1", "FLAIR", "post_contrast_T1Gd")
_LGG_ALIASES = {"t1": 0, "t1pre": 0, "pre_contrast_t1": 0, "flair": 1, "t1gd": 2, "t1ce": 2, "t1post": 2,
                "post_contrast_t1gd": 2}
BRATS_CHANNELS = ("t1", "t1ce", "t2", "flair")
BRATS_LABELS = (0, 1, 2, 4)
#: target -> (label values of the foreground, class names); ``multiclass`` keeps all labels.
BRATS_TARGETS = {
    "et": ((4,), ("background", "et")),
    "tc": ((1, 4), ("background", "tc")),
    "wt": ((1, 2, 4), ("background", "wt")),
    "multiclass": (None, ("background", "ncr", "ed", "et")),
}
#: BraTS' evaluation regions over its label values (1 NCR/NET, 2 edema, 4 enhancing): the
#: multi-class loaders give them as ``info["regions"]``, so the segmentation task reports
#: Dice per region (ET, TC, WT) by default.
BRATS_REGIONS = {"et": [4], "tc": [1, 4], "wt": [1, 2, 4]}
#: BraTS cases that are the same patient (SOURCES.md: BRATS-2013 HG0002 twice).
BRATS_SAME_PATIENT = {"Brats18_2013_2_1": "brats_2013_pat0002", "brats_2013_pat0002_1": "brats_2013_pat0002"}
NIFTI_SEQUENCES = ("t1", "t1ce", "t2", "flair")


# ----------------------------------------------------------------------------- helpers

def _root(root) -> Path:
    from .registry import default_real_data_dir

    return Path(root).expanduser() if root is not None else default_real_data_dir()


def _load_npz(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> Dict[str, np.ndarray]:
    """The arrays ``keys`` of ``path`` (an error naming the file when one is missing), and
    those of ``optional`` that it holds."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: put the real data folder there (see shared/data/real/"
                                "SOURCES.md), pass root=..., or set OMNIFM_REAL_DATA")
    arrays = read_npz(path, path.stem, list(keys) + list(optional))
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; it holds {sorted(arrays)} of those asked for")
    return arrays


def check_masks(images: np.ndarray, masks: np.ndarray, label_values: Sequence[int], where: str) -> None:
    """Refuse masks that do not fit the images or hold undeclared values (naming ``where``).

    ``images`` ``uint8[N, H, W, C]``, ``masks`` ``[N, H, W]`` with values in ``label_values``.
    """
    images, masks = np.asarray(images), np.asarray(masks)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8[N, H, W, C], got {images.dtype}{list(images.shape)}")
    if masks.shape != images.shape[:3]:
        raise ValueError(f"{where}: masks of shape {list(masks.shape)} do not match images of shape "
                         f"{list(images.shape)} (need [N, H, W] = {list(images.shape[:3])})")
    if not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"{where}: masks must hold integer labels, got {masks.dtype}")
    present = np.unique(masks)
    bad = sorted(set(present.tolist()) - set(int(v) for v in label_values))
    if bad:
        raise ValueError(f"{where}: mask values {bad} are outside the declared label set {sorted(label_values)}")


def box_resize(img: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Area (box-filter) resize of float ``[H, W]`` or ``[H, W, C]`` to ``size=(h, w)`` (Pillow
    ``BOX`` in 32-bit float mode), float32 out."""
    img = np.asarray(img, np.float32)
    h, w = size
    if img.shape[:2] == (h, w):
        return img.copy()
    planes = img[..., None] if img.ndim == 2 else img
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(planes[..., c]), mode="F").resize(
        (w, h), Image.Resampling.BOX), np.float32) for c in range(planes.shape[-1])], axis=-1)
    return out[..., 0] if img.ndim == 2 else out


def resize_mask(mask: np.ndarray, size: Tuple[int, int], num_classes: int) -> np.ndarray:
    """Class-index mask ``[H, W]`` -> ``[h, w]``: each class's area fraction (box filter), then
    the majority class, ties to the higher index. For a binary mask: foreground where its
    fraction is >= 50 %."""
    mask = np.asarray(mask)
    if mask.shape == tuple(size):
        return mask.astype(np.uint8)
    frac = np.stack([box_resize((mask == c).astype(np.float32), size) for c in range(num_classes)], axis=-1)
    # argmax over the reversed class axis: ties go to the higher class
    return (num_classes - 1 - np.argmax(frac[..., ::-1], axis=-1)).astype(np.uint8)


def groups_to_clients(groups: Dict[str, List[str]], slices_of: Dict[str, int], num_clients: int, *,
                      min_patients: int = 2, seed: int = 0) -> Tuple[List[List[str]], List[str]]:
    """Patients of each client, and client names, from named groups of patients.

    See the module docstring (merge groups with too few patients, split the largest while
    there are too few groups, merge the two smallest while there are too many).
    """
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    items = [(name, sorted(p)) for name, p in groups.items() if p]
    size = lambda it: sum(slices_of[p] for p in it[1])  # noqa: E731
    small = [it for it in items if len(it[1]) < min_patients]
    items = [it for it in items if len(it[1]) >= min_patients]
    for name, pats in sorted(small, key=lambda it: (size(it), it[0])):
        if not items:
            raise ValueError(f"no group has >= {min_patients} patients; cannot split by patient")
        j = min(range(len(items)), key=lambda i: (size(items[i]), items[i][0]))
        items[j] = (f"{items[j][0]}+{name}", sorted(items[j][1] + pats))
    rng = np.random.default_rng([int(seed), 1])
    while len(items) < num_clients:
        j = max(range(len(items)), key=lambda i: (size(items[i]), -i))
        name, pats = items[j]
        if len(pats) < 2 * min_patients:
            raise ValueError(f"cannot make {num_clients} clients: the largest group {name!r} has {len(pats)} "
                             f"patient(s), fewer than 2 x {min_patients} needed to split it; use fewer clients")
        perm = rng.permutation(len(pats))
        half = sorted(pats[i] for i in perm[:len(pats) // 2])
        rest = sorted(p for p in pats if p not in set(half))
        base = name.split("#")[0]
        items[j:j + 1] = [(f"{base}#{_count(items, base) + 1}", half), (f"{base}#{_count(items, base) + 2}", rest)]
    while len(items) > num_clients:
        order = sorted(range(len(items)), key=lambda i: (size(items[i]), items[i][0]))
        a, b = sorted(order[:2])
        merged = (f"{items[a][0]}+{items[b][0]}", sorted(items[a][1] + items[b][1]))
        items = [it for i, it in enumerate(items) if i not in (a, b)]
        items.insert(a, merged)
    return [it[1] for it in items], [it[0] for it in items]


def deal_patients(slices_of: Dict[str, int], num_clients: int, *, min_patients: int = 2, seed: int = 0,
                  what: str = "dataset") -> Tuple[List[List[str]], List[str]]:
    """Patients of each client (``patients1``, ``patients2``, ...) when there are no
    institutions: the patients, in a seeded order, go one by one to the client that has fewer
    than ``min_patients`` patients, else to the one with the fewest slices."""
    pats = sorted(slices_of)
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive integer, got {num_clients!r}")
    if len(pats) < min_patients * num_clients:
        raise ValueError(f"{what}: {len(pats)} patients cannot make {num_clients} clients of >= {min_patients} "
                         "patients each (one to train on, one to test); use fewer clients")
    groups: List[List[str]] = [[] for _ in range(num_clients)]
    for i in np.random.default_rng([int(seed), 1]).permutation(len(pats)):
        k = min(range(num_clients), key=lambda g: (len(groups[g]) >= min_patients, sum(slices_of[p] for p in
                                                                                      groups[g]), g))
        groups[k].append(pats[i])
    return [sorted(g) for g in groups], [f"patients{k + 1}" for k in range(num_clients)]


def _count(items, base: str) -> int:
    return sum(1 for name, _ in items if name.split("#")[0] == base and "#" in name)


def split_by_patient(client_patients: List[List[str]], slices_of: Dict[str, int], *, test_fraction: float,
                     seed: int) -> Tuple[List[List[str]], List[List[str]]]:
    """``(train patients, test patients)`` of each client (see the module docstring)."""
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    train, test = [], []
    for k, pats in enumerate(client_patients):
        pats = sorted(pats)
        if len(pats) < 2:
            raise ValueError(f"client {k} has {len(pats)} patient(s); a split by patient needs at least two")
        total = sum(slices_of[p] for p in pats)
        target = max(1, int(round(float(test_fraction) * total)))
        order = np.random.default_rng([int(seed), 2, k]).permutation(len(pats))
        chosen, have = [], 0
        for i in order:
            if len(chosen) == len(pats) - 1:
                break
            n = slices_of[pats[i]]
            if have == 0 or abs(have + n - target) < abs(have - target):
                chosen.append(pats[i])
                have += n
        test.append(sorted(chosen))
        train.append(sorted(set(pats) - set(chosen)))
    return train, test


def _federation(images: np.ndarray, masks: np.ndarray, modality: np.ndarray, patient: np.ndarray,
                train_p: List[List[str]], test_p: List[List[str]], *, label_values, class_names,
                modality_names, client_names, info: Dict[str, Any],
                source_rows: Optional[np.ndarray] = None) -> Federation:
    """Build the :class:`Federation` of class-index ``masks`` from per-client patient lists.

    ``source_rows[i]``: the row of the source file that pool row ``i`` came from (default
    ``i``); ``info["train_indices"]``/``["test_indices"]`` list them per client.
    """
    rows = lambda plist: [np.flatnonzero(np.isin(patient, p)).astype(np.int64) for p in plist]  # noqa: E731
    tr, te = rows(train_p), rows(test_p)
    y = np.asarray(masks, np.uint8)[..., None]
    src = np.arange(len(patient)) if source_rows is None else np.asarray(source_rows)
    info = dict(info)
    info.update(target="mask", label_values=[int(v) for v in label_values], class_names=list(class_names),
                client_names=list(client_names), train_patients=train_p, test_patients=test_p,
                train_indices=[src[r].tolist() for r in tr], test_indices=[src[r].tolist() for r in te],
                image_shape=[int(v) for v in images.shape[1:]], group_split="patient",
                foreground_fraction=float(np.mean(masks > 0)) if masks.size else 0.0)
    fed = Federation(train=stack_clients(images, y, modality, tr), test=stack_clients(images, y, modality, te),
                     num_classes=0, class_names=(), modality_names=tuple(modality_names), info=info)
    validate_federation(fed)
    return fed


def _channel_indices(channels, names: Sequence[str], aliases: Dict[str, int], what: str) -> List[int]:
    if isinstance(channels, str):
        channels = (channels,)
    out = []
    for c in channels:
        key = str(c).lower()
        idx = aliases.get(key, next((i for i, n in enumerate(names) if n.lower() == key), None))
        if idx is None:
            raise ValueError(f"{what}: unknown channel {c!r}; choose from {list(names)} (or {sorted(aliases)})")
        out.append(idx)
    if not out:
        raise ValueError(f"{what}: channels is empty")
    return out


# ----------------------------------------------------------------------------- LGG

def lgg_patient(case: str) -> str:
    """``TCGA_CS_4941_19960909 -> TCGA_CS_4941`` (the patient of a TCGA case id)."""
    return "_".join(str(case).split("_")[:3])


def lgg_federation(*, num_clients: int = 4, seed: int = 0, root=None, sites: Optional[Sequence[str]] = None,
                   channels: Sequence[str] = LGG_CHANNELS, test_fraction: float = 0.25, min_patients: int = 2,
                   drop_empty: bool = False) -> Federation:
    """TCGA-LGG FLAIR-abnormality segmentation, clients = institutions.

    ``sites``: institution codes to keep (default all five: DU, HT, FG, CS, EZ). EZ has one
    patient (7 slices), too few for a patient-level split, so by default it is merged into
    the smallest other site (``"CS+EZ"``): 4 clients are the 5 institutions. With
    ``num_clients=5`` the largest site (DU) is split in two halves of its patients.
    ``channels``: any of ``pre_contrast_T1``/``t1``, ``FLAIR``/``flair``,
    ``post_contrast_T1Gd``/``t1gd`` (default all three, stored order). ``drop_empty``: leave
    out the tumour-free slices (one per patient). Modality id = institution.
    """
    path = _root(root) / LGG_FILE
    z = _load_npz(path, ("images", "masks", "case", "site"))
    images, masks, case, site = z["images"], z["masks"], z["case"].astype(str), z["site"].astype(str)
    check_masks(images, masks, (0, 1), str(path))
    ch = _channel_indices(channels, LGG_CHANNELS, _LGG_ALIASES, "lgg_seg")
    all_sites = sorted(set(site.tolist()))
    keep_sites = all_sites if sites is None else [str(s) for s in ([sites] if isinstance(sites, str) else sites)]
    unknown = sorted(set(keep_sites) - set(all_sites))
    if unknown:
        raise ValueError(f"lgg_seg: unknown site(s) {unknown}; {path} holds {all_sites}")
    keep = np.isin(site, keep_sites)
    if drop_empty:
        keep &= masks.reshape(len(masks), -1).any(axis=1)
    source_rows = np.flatnonzero(keep)
    images, masks, case, site = images[keep][..., ch], masks[keep], case[keep], site[keep]
    patient = np.array([lgg_patient(c) for c in case])
    slices_of = {str(p): int(n) for p, n in zip(*np.unique(patient, return_counts=True))}
    groups = {s: sorted(set(patient[site == s].tolist())) for s in keep_sites}
    clients, names = groups_to_clients(groups, slices_of, num_clients, min_patients=min_patients, seed=seed)
    train_p, test_p = split_by_patient(clients, slices_of, test_fraction=test_fraction, seed=seed)
    modality = np.array([keep_sites.index(s) for s in site], np.int32)
    info = {"dataset": "lgg_seg", "root": str(path), "sites": keep_sites, "seed": int(seed),
            "num_clients": int(num_clients), "test_fraction": float(test_fraction),
            "channels": [LGG_CHANNELS[i] for i in ch], "drop_empty": bool(drop_empty), "partition": "institution",
            "split_note": "clients are institutions (TCGA site codes); train/test split by patient, never by slice"}
    return _federation(images, masks, modality, patient, train_p, test_p, label_values=(0, 1),
                       class_names=("background", "flair_abnormality"), modality_names=keep_sites,
                       client_names=names, info=info, source_rows=source_rows)


# ----------------------------------------------------------------------------- BraTS

def brats_patient(case: str) -> str:
    """The patient of a BraTS case (``Brats18_2013_2_1`` and ``brats_2013_pat0002_1`` are one)."""
    return BRATS_SAME_PATIENT.get(str(case), str(case))


def encode_brats_target(labels: np.ndarray, target: str) -> Tuple[np.ndarray, Tuple[int, ...], Tuple[str, ...]]:
    """BraTS label map ``{0,1,2,4}`` -> ``(class-index mask uint8, label_values, class_names)``."""
    if target not in BRATS_TARGETS:
        raise ValueError(f"brats target must be one of {sorted(BRATS_TARGETS)}, got {target!r}")
    fg, names = BRATS_TARGETS[target]
    labels = np.asarray(labels)
    if fg is None:
        lut = np.zeros(256, np.uint8)
        for i, v in enumerate(BRATS_LABELS):
            lut[v] = i
        return lut[labels], BRATS_LABELS, names
    return np.isin(labels, fg).astype(np.uint8), (0, 1), names


def brats_federation(*, num_clients: int = 2, seed: int = 0, root=None, target: str = "et",
                     channels: Sequence[str] = ("t1ce",), test_fraction: float = 0.25, min_patients: int = 2,
                     drop_empty: bool = False) -> Federation:
    """BraTS tumour slices, enhancing tumour from T1ce by default (the paper's FeTS2022 task).

    The 8 cases are 7 patients; clients are groups of patients: the patients, in a seeded
    order, are dealt to ``num_clients`` groups (each the next patient goes to the group with
    the fewest slices), then each group is split train/test by patient. Each client needs
    two patients, so at most 3 clients. ``channels``: any of ``t1``, ``t1ce``, ``t2``,
    ``flair``; a channel missing (zero-filled) in some case is refused (6 cases have only
    T1ce and FLAIR). ``drop_empty``: leave out slices whose target is empty (e.g. no
    enhancing tumour). Modality id = source collection (BraTS 2018 / BRATS 2015 files,
    preprocessed differently).
    """
    path = _root(root) / BRATS_FILE
    z = _load_npz(path, ("images", "labels", "case", "modality_present"))
    images, labels, case, present = z["images"], z["labels"], z["case"].astype(str), z["modality_present"]
    check_masks(images, labels, BRATS_LABELS, str(path))
    ch = _channel_indices(channels, BRATS_CHANNELS, {}, "brats_seg")
    lacking = sorted({c for c, row in zip(case, present) if not all(row[i] for i in ch)})
    if lacking:
        raise ValueError(f"brats_seg: channel(s) {[BRATS_CHANNELS[i] for i in ch]} are missing (zero-filled) in "
                         f"case(s) {lacking} of {path}; use t1ce and/or flair")
    masks, label_values, class_names = encode_brats_target(labels, target)
    keep = masks.reshape(len(masks), -1).any(axis=1) if drop_empty else np.ones(len(masks), bool)
    source_rows = np.flatnonzero(keep)
    images, masks, case = images[keep][..., ch], masks[keep], case[keep]
    patient = np.array([brats_patient(c) for c in case])
    slices_of = {str(p): int(n) for p, n in zip(*np.unique(patient, return_counts=True))}
    groups, names = deal_patients(slices_of, num_clients, min_patients=min_patients, seed=seed, what="brats_seg")
    train_p, test_p = split_by_patient(groups, slices_of, test_fraction=test_fraction, seed=seed)
    source = np.array(["brats2018" if c.startswith("Brats18") else "brats2015" for c in case])
    modality_names = ("brats2018", "brats2015")
    modality = np.array([modality_names.index(s) for s in source], np.int32)
    info = {"dataset": "brats_seg", "root": str(path), "seed": int(seed), "num_clients": int(num_clients),
            "brats_target": target, "channels": [BRATS_CHANNELS[i] for i in ch],
            **({"regions": dict(BRATS_REGIONS)} if target == "multiclass" else {}),
            "test_fraction": float(test_fraction), "drop_empty": bool(drop_empty), "partition": "patients",
            "split_note": "clients are groups of patients; train/test split by patient (the two cases of "
                          "BRATS-2013 HG0002 count as one patient)"}
    return _federation(images, masks, modality, patient, train_p, test_p, label_values=label_values,
                       class_names=class_names, modality_names=modality_names, client_names=names, info=info,
                       source_rows=source_rows)


# ----------------------------------------------------------------------------- cross-modality

def cross_modality_federation(*, num_clients: int = 2, seed: int = 0, root=None, size: int = 64,
                              test_fraction: float = 0.25) -> Federation:
    """PH2 skin lesions (dermoscopy) + DSB2018 nuclei (microscopy): one modality per client.

    The ``num_clients`` clients are dealt to the two modalities (skin gets the odd one);
    a modality's images are shuffled (``default_rng([seed, 3, m])``) and cut into equal
    shares, and each client's share is split train/test by image (an image is one lesion /
    one field of view; no patient ids ship with either set). Images are box-resized to
    ``size`` (DSB: 128 -> 64); masks are box-resized and re-thresholded at 50 % (>= 0.5 is
    foreground).
    """
    if not isinstance(num_clients, (int, np.integer)) or num_clients < 2:
        raise ValueError(f"seg_cross_modality needs num_clients >= 2 (one per modality at least), got {num_clients!r}")
    base = _root(root)
    sources = [("skin_dermoscopy", base / PH2_FILE, "ids"), ("nuclei_microscopy", base / DSB_FILE, "ids")]
    loaded = []
    for name, path, id_key in sources:
        z = _load_npz(path, ("images", "masks", id_key))
        check_masks(z["images"], z["masks"], (0, 1), str(path))
        loaded.append((name, path, z))
    images, masks, modality, unit, names = [], [], [], [], []
    per_mod = [num_clients // 2 + num_clients % 2, num_clients // 2]
    client_units: List[List[str]] = []
    for m, (name, path, z) in enumerate(loaded):
        x = z["images"]
        if x.shape[1:3] != (size, size):
            x = np.stack([np.clip(np.rint(box_resize(im, (size, size))), 0, 255) for im in x]).astype(np.uint8)
            y = np.stack([resize_mask(mk, (size, size), 2) for mk in z["masks"]])
        else:
            y = z["masks"].astype(np.uint8)
        ids = np.array([f"{name}:{i}" for i in z["ids"].astype(str)])
        images.append(x)
        masks.append(y)
        modality.append(np.full(len(x), m, np.int32))
        unit.append(ids)
        order = np.random.default_rng([int(seed), 3, m]).permutation(len(ids))
        for j, share in enumerate(np.array_split(order, per_mod[m])):
            client_units.append(sorted(ids[share].tolist()))
            names.append(f"{name}#{j + 1}" if per_mod[m] > 1 else name)
    images, masks = np.concatenate(images), np.concatenate(masks)
    modality, unit = np.concatenate(modality), np.concatenate(unit)
    slices_of = {u: 1 for u in unit.tolist()}
    train_u, test_u = split_by_patient(client_units, slices_of, test_fraction=test_fraction, seed=seed)
    info = {"dataset": "seg_cross_modality", "root": str(base), "seed": int(seed), "num_clients": int(num_clients),
            "size": int(size), "test_fraction": float(test_fraction), "partition": "modality",
            "sources": [str(p) for _, p, _ in loaded],
            "split_note": "one modality per client; train/test split by image (one lesion / field of view each)"}
    return _federation(images, masks, modality, unit, train_u, test_u, label_values=(0, 1),
                       class_names=("background", "foreground"),
                       modality_names=tuple(n for n, _, _ in loaded), client_names=names, info=info)


# ----------------------------------------------------------------------------- NIfTI

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
    ch = _channel_indices(channels, NIFTI_SEQUENCES, {}, "nifti_seg")
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
            x_list.append(np.clip(np.rint(box_resize(planes, (size, size))), 0, 255).astype(np.uint8))
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
    return _federation(images, masks, modality, case_arr, train_p, test_p, label_values=lv, class_names=cn,
                       modality_names=group_names, client_names=names, info=info)


# ----------------------------------------------------------------------------- registry

def _options(kw: dict, allowed: Sequence[str], name: str, *functions) -> dict:
    return dataset_options(name, kw, *functions, allowed=allowed)


@DATASETS.register("lgg_seg")
def _lgg(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = _options(kw, ("root", "sites", "channels", "test_fraction", "min_patients", "drop_empty"), "lgg_seg", lgg_federation)
    return lgg_federation(num_clients=num_clients, seed=seed, **kw)


@DATASETS.register("brats_seg")
def _brats(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = _options(kw, ("root", "target", "channels", "test_fraction", "min_patients", "drop_empty"), "brats_seg", brats_federation)
    return brats_federation(num_clients=num_clients, seed=seed, **kw)


@DATASETS.register("seg_cross_modality")
def _cross(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = _options(kw, ("root", "size", "test_fraction"), "seg_cross_modality", cross_modality_federation)
    return cross_modality_federation(num_clients=num_clients, seed=seed, **kw)


@DATASETS.register("nifti_seg")
def _nifti(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = _options(kw, ("root", "channels", "target", "size", "crop", "partition_file", "prefix_regex",
                       "test_fraction", "min_patients", "label_values"), "nifti_seg", nifti_federation)
    return nifti_federation(num_clients=num_clients, seed=seed, **kw)
