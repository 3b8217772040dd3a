"""Real images of three modalities that ``real4`` does not have, as one classification set,
registered as ``histo_derm_mri``: a pretraining set for fine-tuning on ``real4`` (Table 1's
fine-tuned column), since none of its images is in any ``real4`` client.

* histology: the BreaKHis images of the real-data folder (``breakhis/images``), benign or
  malignant;
* dermoscopy: PH2 (``skin_ph2_seg``, 200 images), common nevus, atypical nevus or melanoma;
* brain MRI: the TCGA-LGG slices (``lgg_mri_seg``, 1,482, channels pre-contrast T1, FLAIR,
  post-contrast T1Gd), with or without a FLAIR abnormality in the slice's mask.

Every image is resized (Pillow box filter) to ``image_size`` (default 28, ``real4``'s size),
3 channels; 7 classes, 3 modalities. Partitions and the train/test split are
:func:`~omnifm_jax.data.federation.federate`'s (``num_clients=1`` for central pretraining).
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from omnifm_jax.registry import DATASETS

from .breakhis import TUMOR_CLASSES, load_breakhis_image, scan_breakhis
from .federation import Federation, federate
from .image import box_resize, to_uint8
from .options import split_federate_options
from .paths import real_data_root
from .pool import LabeledImages, combine
from .segmentation import load_arrays

__all__ = ["SOURCES", "load_histo_derm_mri"]

#: (modality, path relative to the real-data folder).
SOURCES = (("histology", "breakhis/images"), ("dermoscopy", "skin_ph2_seg/ph2_lesion_seg_64.npz"),
           ("brain MRI", "lgg_mri_seg/lgg_flair_seg_64.npz"))
PH2_CLASSES = ("common nevus", "atypical nevus", "melanoma")
LGG_CLASSES = ("no FLAIR abnormality", "FLAIR abnormality")


def _resized(images, size: int) -> np.ndarray:
    return np.stack([to_uint8(box_resize(np.asarray(im, np.float32), (size, size))) for im in images])


def load_histo_derm_mri(root: Optional[str | os.PathLike] = None, *, image_size: int = 28) -> LabeledImages:
    """The pooled set (module docstring)."""
    if not 4 <= image_size <= 256:
        raise ValueError(f"histo_derm_mri: image_size must be in [4, 256], got {image_size}")
    base = real_data_root(root)
    records = scan_breakhis(base / SOURCES[0][1])
    histo = LabeledImages(_resized([load_breakhis_image(r.path) for r in records], image_size),
                          np.array([r.tumor_class_id for r in records], np.int32),
                          np.zeros(len(records), np.int32), tuple(TUMOR_CLASSES), (SOURCES[0][0],))
    ph2 = load_arrays(base / SOURCES[1][1], ("images", "diagnosis"))
    derm = LabeledImages(_resized(ph2["images"], image_size), ph2["diagnosis"].astype(np.int32),
                         np.zeros(len(ph2["images"]), np.int32), PH2_CLASSES, (SOURCES[1][0],))
    lgg = load_arrays(base / SOURCES[2][1], ("images", "masks"))
    mri = LabeledImages(_resized(lgg["images"], image_size),
                        lgg["masks"].reshape(len(lgg["masks"]), -1).any(axis=1).astype(np.int32),
                        np.zeros(len(lgg["images"]), np.int32), LGG_CLASSES, (SOURCES[2][0],))
    return combine([histo, derm, mri], prefixes=[m for m, _ in SOURCES], channels=3)


@DATASETS.register("histo_derm_mri")
def _histo_derm_mri(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    fed_kw, data_kw = split_federate_options("histo_derm_mri", kw, load_histo_derm_mri, ("root", "image_size"))
    data = load_histo_derm_mri(**data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    test = fed.info["test_fraction"]
    fed.info.update(dataset="histo_derm_mri", root=str(real_data_root(data_kw.get("root"))),
                    split_note=f"one pool of the three sources; each client's share split {1 - test:.0%}/{test:.0%} "
                               "train/test at random")
    return fed
