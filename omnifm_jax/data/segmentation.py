"""Segmentation federations: image/mask slices split by patient, clients by institution.

This module holds what the segmentation loaders share (the rules below): mask checks, clients
from groups of patients, the split by patient and the :class:`Federation` of masks
(:func:`mask_federation`). Each loader is in its own module and registers itself in
:data:`omnifm_jax.registry.DATASETS`:

* ``lgg_seg`` (:mod:`omnifm_jax.data.lgg`): TCGA-LGG FLAIR-abnormality slices (Buda et al.;
  ``lgg_mri_seg`` in the real data folder, 1,482 slices 64x64, 110 patients of 5
  institutions). Channels pre-contrast T1, FLAIR, post-contrast T1Gd. Clients are
  institutions (``site``).
* ``brats_seg`` (:mod:`omnifm_jax.data.brats`): BraTS axial tumour slices (``brats_slices``,
  584 slices 96x96, 8 cases of 7 patients). Target ``et`` (label 4, the paper's enhancing
  tumour), ``tc`` ({1, 4}), ``wt`` (> 0) or ``multiclass`` ({0, 1, 2, 4}; ``info["regions"]``
  then names ET/TC/WT, which the segmentation task reports); input channels default T1ce
  only (the paper's). Clients are groups of patients.
* ``ph2_dsb_seg`` (:mod:`omnifm_jax.data.ph2_dsb_seg`): PH2 dermoscopy lesions
  (64x64 RGB) + DSB2018 nuclei (128x128, box-resized to 64x64, masks re-thresholded at
  50 %): a 2-modality federation.
* ``nifti_seg`` (:mod:`omnifm_jax.data.nifti`): a FeTS/BraTS-style NIfTI folder
  ``<root>/<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz`` (needs the optional ``nibabel``:
  ``pip install omnifm-jax[nifti]``).
* ``lgg_multimodal_seg`` / ``brats_multimodal_seg`` (:mod:`omnifm_jax.data.multimodal`): the LGG and BraTS
  slices with a modality subset per client and a full-modal server set.

Every federation stores masks as class indices ``y uint8[N, H, W, 1]`` into
``info["label_values"]`` (background first), sets ``info["target"] = "mask"`` (what
``task=segmentation`` checks), ``info["class_names"]``, ``info["client_names"]``, the
patients of each client's train and test split (``train_patients``/``test_patients``) and
their source rows (``train_indices``/``test_indices``: rows of the npz file; for
``ph2_dsb_seg`` rows of PH2 followed by DSB; for ``nifti_seg`` indices into
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

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .federation import Federation, stack_clients, validate_federation
from .io import read_npz

__all__ = [
    "check_masks",
    "load_arrays",
    "channel_indices",
    "groups_to_clients",
    "deal_patients",
    "split_by_patient",
    "mask_federation",
]


def load_arrays(path: Path, keys: Sequence[str], optional: Sequence[str] = ()) -> Dict[str, np.ndarray]:
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


def channel_indices(channels, names: Sequence[str], aliases: Dict[str, int], what: str) -> List[int]:
    """Indices into ``names`` of ``channels`` (names, case-insensitive, or ``aliases``); ``what``
    names the data set in the error for an unknown or empty choice."""
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


def mask_federation(images: np.ndarray, masks: np.ndarray, modality: np.ndarray, patient: np.ndarray,
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
