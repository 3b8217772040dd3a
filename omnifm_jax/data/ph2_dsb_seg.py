"""PH2 skin lesions (dermoscopy) + DSB2018 nuclei (microscopy): a 2-modality segmentation
federation, registered as ``ph2_dsb_seg``.

PH2 (64x64 RGB) and DSB2018 (128x128, box-resized to 64x64, masks re-thresholded at 50 %)
from the real-data folder; one modality per client, the train/test split by image (one
lesion / one field of view each; no patient ids ship with either set). The mask federation
is built as in :mod:`omnifm_jax.data.segmentation`.
"""
from __future__ import annotations

from pathlib import Path
from typing import List

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation
from .image import box_resize, resize_mask, to_uint8
from .options import dataset_options
from .paths import real_data_root
from .segmentation import check_masks, load_arrays, mask_federation, split_by_patient

__all__ = ["PH2_FILE", "DSB_FILE", "ph2_dsb_seg_federation"]

#: The two files, relative to the real-data folder.
PH2_FILE = Path("skin_ph2_seg") / "ph2_lesion_seg_64.npz"
DSB_FILE = Path("nuclei_dsb2018") / "dsb2018_nuclei_subset250_128.npz"


def ph2_dsb_seg_federation(*, num_clients: int = 2, seed: int = 0, root=None, size: int = 64,
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
        raise ValueError(f"ph2_dsb_seg needs num_clients >= 2 (one per modality at least), got {num_clients!r}")
    base = real_data_root(root)
    sources = [("skin_dermoscopy", base / PH2_FILE, "ids"), ("nuclei_microscopy", base / DSB_FILE, "ids")]
    loaded = []
    for name, path, id_key in sources:
        z = load_arrays(path, ("images", "masks", id_key))
        check_masks(z["images"], z["masks"], (0, 1), str(path))
        loaded.append((name, path, z))
    images, masks, modality, unit, names = [], [], [], [], []
    per_mod = [num_clients // 2 + num_clients % 2, num_clients // 2]
    client_units: List[List[str]] = []
    for m, (name, _path, z) in enumerate(loaded):
        x = z["images"]
        if x.shape[1:3] != (size, size):
            x = np.stack([to_uint8(box_resize(im, (size, size))) for im in x])
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
    info = {"dataset": "ph2_dsb_seg", "root": str(base), "seed": int(seed), "num_clients": int(num_clients),
            "size": int(size), "test_fraction": float(test_fraction), "partition": "modality",
            "sources": [str(p) for _, p, _ in loaded],
            "split_note": "one modality per client; train/test split by image (one lesion / field of view each)"}
    return mask_federation(images, masks, modality, unit, train_u, test_u, label_values=(0, 1),
                           class_names=("background", "foreground"),
                           modality_names=tuple(n for n, _, _ in loaded), client_names=names, info=info)


@DATASETS.register("ph2_dsb_seg")
def _ph2_dsb_seg(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("ph2_dsb_seg", kw, ph2_dsb_seg_federation, allowed=("root", "size", "test_fraction"))
    return ph2_dsb_seg_federation(num_clients=num_clients, seed=seed, **kw)
