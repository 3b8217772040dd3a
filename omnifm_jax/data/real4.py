"""The local real four-modality classification set, registered as ``real4``.

Blood-cell microscopy (the BloodMNIST-style PBC file), fundus (RetinaMNIST), chest X-ray
(PneumoniaMNIST) and breast ultrasound (BreastMNIST), read from the real-data folder
(:func:`~omnifm_jax.data.paths.default_real_data_dir`) and merged into one label space with
:func:`~omnifm_jax.data.pool.combine`: 17 classes, 4 modalities, 28x28x3.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omnifm_jax.registry import DATASETS

from .federation import Federation, federate
from .io import DatasetNotFoundError
from .medmnist import load_medmnist, load_npz_images
from .medmnist_facts import BLOODMNIST_CLASSES, SPLITS
from .options import split_federate_options
from .paths import default_real_data_dir
from .pool import LabeledImages, combine, concat_splits, pooled_split_note

__all__ = ["REAL4_MODALITIES", "load_real4"]

#: The local real four-modality set: (modality name, file relative to the real-data folder).
REAL4_MODALITIES: tuple[tuple[str, str], ...] = (
    ("blood microscopy", "blood_pbc/pbc_bloodmnist_style_28.npz"),
    ("fundus", "medmnist/retinamnist.npz"),
    ("chest X-ray", "medmnist/pneumoniamnist.npz"),
    ("breast ultrasound", "medmnist/breastmnist.npz"),
)


def load_real4(root: str | os.PathLike, *, splits: Sequence[str] = SPLITS) -> LabeledImages:
    """The real four-modality classification pool from a local real-data folder.

    ``root`` must hold ``blood_pbc/pbc_bloodmnist_style_28.npz`` (blood-cell
    microscopy, 8 classes), ``medmnist/retinamnist.npz`` (fundus, 5 grades),
    ``medmnist/pneumoniamnist.npz`` (chest X-ray, 2 classes) and
    ``medmnist/breastmnist.npz`` (breast ultrasound, 2 classes); the three
    official files are MD5-checked.  Result: 17 classes, 4 modalities, 28x28x3.
    """
    root = Path(root).expanduser()
    missing = [str(root / rel) for _, rel in REAL4_MODALITIES if not (root / rel).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"real 4-modality set incomplete in {root}; missing: {', '.join(missing)}. Put the files there, set "
            "OMNIFM_REAL_DATA to the real-data folder that holds them (the default is ../shared/data/real from "
            "the current directory or from the checkout), or pass dataset_kwargs.root=FOLDER")
    blood = load_npz_images(
        root / REAL4_MODALITIES[0][1],
        class_names=BLOODMNIST_CLASSES,
        modality_name=REAL4_MODALITIES[0][0],
        splits=splits,
    )
    parts = [concat_splits(blood)]
    for (name, _), subset in zip(REAL4_MODALITIES[1:], ("retinamnist", "pneumoniamnist", "breastmnist")):
        d = concat_splits(load_medmnist(subset, root=root / "medmnist", splits=splits, download=False))
        parts.append(d._replace(modality_names=(name,)))
    return combine(parts, prefixes=[m for m, _ in REAL4_MODALITIES], channels=3)


@DATASETS.register("real4")
def _real4(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    fed_kw, data_kw = split_federate_options("real4", kw, load_real4, ("root", "splits"))
    root = data_kw.pop("root", None)
    root = Path(root) if root is not None else default_real_data_dir()
    data = load_real4(root, **data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    fed.info.update(dataset="real4", root=str(root),
                    split_note=pooled_split_note(data_kw.get("splits", SPLITS), fed.info["test_fraction"]))
    return fed
