"""BraTS axial tumour slices, registered as ``brats_seg``; the BraTS label conventions.

The ``brats_slices`` file of the real-data folder: 584 slices 96x96 of 8 cases (7 patients),
channels T1, T1ce, T2, FLAIR (``modality_present`` says which a case has), labels {0, 1, 2,
4} (1 NCR/NET, 2 edema, 4 enhancing tumour). Target ``et`` (label 4, the paper's enhancing
tumour), ``tc`` ({1, 4}), ``wt`` (> 0) or ``multiclass`` (``info["regions"]`` then names
ET/TC/WT, which the segmentation task reports). Clients are groups of patients, the
train/test split is by patient (:mod:`omnifm_jax.data.segmentation`). The label conventions
here (:data:`BRATS_TARGETS`, :data:`BRATS_REGIONS`, :func:`encode_brats_target`) serve the
NIfTI and FedMEPD loaders too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence, Tuple

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation
from .options import dataset_options
from .paths import real_data_root
from .segmentation import channel_indices, check_masks, deal_patients, load_arrays, mask_federation, split_by_patient

__all__ = ["BRATS_FILE", "BRATS_CHANNELS", "BRATS_LABELS", "BRATS_TARGETS", "BRATS_REGIONS", "BRATS_SAME_PATIENT",
           "brats_patient", "encode_brats_target", "brats_federation"]

#: The BraTS slices file, relative to the real-data folder.
BRATS_FILE = Path("brats_slices") / "brats_tumour_slices_96.npz"
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
    path = real_data_root(root) / BRATS_FILE
    z = load_arrays(path, ("images", "labels", "case", "modality_present"))
    images, labels, case, present = z["images"], z["labels"], z["case"].astype(str), z["modality_present"]
    check_masks(images, labels, BRATS_LABELS, str(path))
    ch = channel_indices(channels, BRATS_CHANNELS, {}, "brats_seg")
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
    return mask_federation(images, masks, modality, patient, train_p, test_p, label_values=label_values,
                           class_names=class_names, modality_names=modality_names, client_names=names, info=info,
                           source_rows=source_rows)


@DATASETS.register("brats_seg")
def _brats(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("brats_seg", kw, brats_federation,
                         allowed=("root", "target", "channels", "test_fraction", "min_patients", "drop_empty"))
    return brats_federation(num_clients=num_clients, seed=seed, **kw)
