"""TCGA-LGG FLAIR-abnormality segmentation (Buda et al.), registered as ``lgg_seg``.

The ``lgg_mri_seg`` file of the real-data folder: 1,482 slices 64x64 of 110 patients of 5
institutions, channels pre-contrast T1, FLAIR and post-contrast T1Gd, a binary FLAIR
abnormality mask. Clients are institutions (the TCGA ``site``), the train/test split is by
patient; the rules shared by the segmentation loaders are in
:mod:`omnifm_jax.data.segmentation`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation
from .options import dataset_options
from .paths import real_data_root
from .segmentation import (
    channel_indices,
    check_masks,
    groups_to_clients,
    load_arrays,
    mask_federation,
    split_by_patient,
)

__all__ = ["LGG_FILE", "LGG_CHANNELS", "LGG_ALIASES", "lgg_patient", "lgg_federation"]

#: The LGG file, relative to the real-data folder.
LGG_FILE = Path("lgg_mri_seg") / "lgg_flair_seg_64.npz"
#: LGG channel names (as stored) and accepted aliases.
LGG_CHANNELS = ("pre_contrast_T1", "FLAIR", "post_contrast_T1Gd")
LGG_ALIASES = {"t1": 0, "t1pre": 0, "pre_contrast_t1": 0, "flair": 1, "t1gd": 2, "t1ce": 2, "t1post": 2,
               "post_contrast_t1gd": 2}


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
    path = real_data_root(root) / LGG_FILE
    z = load_arrays(path, ("images", "masks", "case", "site"))
    images, masks, case, site = z["images"], z["masks"], z["case"].astype(str), z["site"].astype(str)
    check_masks(images, masks, (0, 1), str(path))
    ch = channel_indices(channels, LGG_CHANNELS, LGG_ALIASES, "lgg_seg")
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
    return mask_federation(images, masks, modality, patient, train_p, test_p, label_values=(0, 1),
                           class_names=("background", "flair_abnormality"), modality_names=keep_sites,
                           client_names=names, info=info, source_rows=source_rows)


@DATASETS.register("lgg_seg")
def _lgg(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("lgg_seg", kw, lgg_federation,
                         allowed=("root", "sites", "channels", "test_fraction", "min_patients", "drop_empty"))
    return lgg_federation(num_clients=num_clients, seed=seed, **kw)
