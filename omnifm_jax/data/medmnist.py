"""MedMNIST v2 loaders and the ``medmnist`` data set.

Reads the official MedMNIST v2 ``.npz`` files (keys ``train_images``,
``train_labels``, ``val_*``, ``test_*``) of every 2D subset at sizes 28, 64,
128 and 224, verifying the official MD5 of each file (the facts are in
:mod:`omnifm_jax.data.medmnist_facts`).  Files are looked up in an explicit
``root`` or in ``$OMNIFM_DATA`` (default ``~/.cache/omnifm``); a missing file is
downloaded from the official Zenodo record when the network works, otherwise
:class:`~omnifm_jax.data.io.DatasetNotFoundError` says exactly which file to put
where.  There is never a silent fallback to other data.

:func:`load_npz_images` reads a local MedMNIST-style file (same keys, no MD5).
:func:`load_cross_modality` merges a list of subsets into one label space
(:func:`~omnifm_jax.data.pool.combine`); registered as
``"medmnist:<subset>+<subset>..."`` (e.g. ``"medmnist:pathmnist+dermamnist+bloodmnist"``).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation, federate
from .io import DatasetNotFoundError, read_npz
from .medmnist_facts import (
    MEDMNIST_MODALITY,
    SPLITS,
    check_size,
    check_subset,
    medmnist_filename,
    medmnist_info,
    medmnist_url,
)
from .options import split_federate_options
from .paths import default_data_dir
from .pool import LabeledImages, combine, concat_splits, pooled_split_note

__all__ = [
    "ChecksumError",
    "md5_of_file",
    "load_medmnist",
    "load_npz_images",
    "load_cross_modality",
]


class ChecksumError(ValueError):
    """A data file does not have its official MD5."""


def md5_of_file(path: str | os.PathLike, *, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- download


def _download(url: str, dest: Path, *, timeout: float = 60.0) -> None:
    """Download ``url`` to ``dest`` atomically (temporary file, then rename)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _ensure_file(subset: str, size: int, root: Path, *, download: bool) -> Path:
    path = root / medmnist_filename(subset, size)
    if path.is_file():
        return path
    url = medmnist_url(subset, size)
    how = (
        f"MedMNIST file {path.name} not found at {path}. Download it from {url} "
        f"and save it as {path} (or pass root=... / set OMNIFM_DATA to the folder that holds it)."
    )
    if not download:
        raise DatasetNotFoundError(how)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _download(url, path)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DatasetNotFoundError(f"{how} Automatic download failed: {exc}") from exc
    if not path.is_file():
        raise DatasetNotFoundError(how)
    return path


# --------------------------------------------------------------------------- readers


def _as_nhwc(images: np.ndarray, *, where: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{where}: images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"{where}: images must be [N, H, W] or [N, H, W, 1|3], got shape {images.shape}")
    return np.ascontiguousarray(images)


def _as_labels(labels: np.ndarray, n: int, *, where: str, multilabel: bool = False) -> np.ndarray:
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got {labels.dtype}")
    if labels.shape[:1] != (n,):
        raise ValueError(f"{where}: {labels.shape[0] if labels.ndim else 0} labels for {n} images")
    if multilabel:
        return labels.astype(np.int32).reshape(n, -1)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"{where}: labels must be [N] or [N, 1], got shape {labels.shape}")
    return labels.astype(np.int32)


def _read_splits(
    path: Path,
    *,
    class_names: Sequence[str],
    modality_name: str,
    splits: Iterable[str],
    multilabel: bool = False,
) -> dict[str, LabeledImages]:
    out: dict[str, LabeledImages] = {}
    num_classes = len(class_names)
    splits = tuple(splits)
    for split in splits:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    arrays = read_npz(path, modality_name, [f"{s}_{k}" for s in splits for k in ("images", "labels")])
    for split in splits:
        ki, kl = f"{split}_images", f"{split}_labels"
        if ki not in arrays or kl not in arrays:
            raise ValueError(f"{path}: missing keys {ki!r}/{kl!r}; has {sorted(arrays)} of the requested splits")
        where = f"{path.name}[{split}]"
        images = _as_nhwc(arrays[ki], where=where)
        labels = _as_labels(arrays[kl], images.shape[0], where=where, multilabel=multilabel)
        if labels.size and (labels.min() < 0 or (not multilabel and labels.max() >= num_classes)):
            raise ValueError(
                f"{where}: labels out of range [0, {num_classes}): min {labels.min()}, max {labels.max()}"
            )
        out[split] = LabeledImages(
            images=images,
            labels=labels,
            modality=np.zeros(images.shape[0], np.int32),
            class_names=tuple(class_names),
            modality_names=(modality_name,),
        )
    return out


def load_medmnist(
    subset: str,
    *,
    size: int = 28,
    root: str | os.PathLike | None = None,
    splits: Sequence[str] = SPLITS,
    download: bool = True,
    verify_md5: bool = True,
) -> dict[str, LabeledImages]:
    """Load an official MedMNIST v2 2D subset.

    Args:
        subset: e.g. ``"breastmnist"`` (see :data:`~omnifm_jax.data.medmnist_facts.MEDMNIST_SUBSETS`).
        size: 28, 64, 128 or 224.
        root: folder holding ``<subset>.npz`` / ``<subset>_<size>.npz``;
            defaults to :func:`default_data_dir`.
        splits: which of ``"train"``, ``"val"``, ``"test"`` to return.
        download: fetch a missing file from Zenodo (else raise at once).
        verify_md5: check the official MD5 before reading.

    Returns:
        ``{split: LabeledImages}``; labels ``int32[N]`` (``int32[N, 14]`` for
        the multi-label ChestMNIST), images ``uint8[N, H, W, C]``.

    Raises:
        ValueError: unknown subset/size/split or malformed file.
        DatasetNotFoundError: file absent and not downloadable (message gives
            the URL and the expected path).
        ChecksumError: MD5 mismatch (message names the file and both hashes).
    """
    subset, size = check_subset(subset), check_size(size)
    folder = Path(root).expanduser() if root is not None else default_data_dir()
    path = _ensure_file(subset, size, folder, download=download)
    if verify_md5:
        expected = medmnist_info(subset)["md5"][size]
        actual = md5_of_file(path)
        if actual != expected:
            raise ChecksumError(
                f"MD5 mismatch for {path}: expected {expected} (official {medmnist_filename(subset, size)}), "
                f"got {actual}. The file is corrupt or not the official release; delete it and download "
                f"it again from {medmnist_url(subset, size)}."
            )
    info = medmnist_info(subset)
    return _read_splits(
        path,
        class_names=info["labels"],
        modality_name=MEDMNIST_MODALITY[subset],
        splits=splits,
        multilabel=info["task"].startswith("multi-label"),
    )


def load_npz_images(
    path: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
    modality_name: str | None = None,
    splits: Sequence[str] = SPLITS,
) -> dict[str, LabeledImages]:
    """Load a MedMNIST-style local ``.npz`` (same keys, no MD5 check).

    Args:
        path: the ``.npz`` file.
        class_names: names of the classes; defaults to ``"0", "1", ...`` up to
            the largest label found.
        modality_name: name of the (single) modality; defaults to the file stem.
        splits: which splits to return.

    Returns:
        ``{split: LabeledImages}``.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(f"MedMNIST-style file not found: {path}")
    if class_names is None:
        top = -1
        z = read_npz(path, modality_name or path.stem, [f"{split}_labels" for split in splits])
        for labels in z.values():
            if labels.size:
                top = max(top, int(np.max(labels)))
        class_names = tuple(str(i) for i in range(top + 1))
    return _read_splits(
        path,
        class_names=tuple(class_names),
        modality_name=modality_name or path.stem,
        splits=splits,
    )


def load_cross_modality(
    subsets: Sequence[str] = ("pathmnist", "dermamnist", "bloodmnist"),
    *,
    size: int = 28,
    root: str | os.PathLike | None = None,
    splits: Sequence[str] = ("train",),
    download: bool = True,
) -> LabeledImages:
    """Cross-modality classification pool from MedMNIST subsets.

    The default ``pathmnist + dermamnist + bloodmnist`` gives 9 + 7 + 8 = 24
    classes in three modalities.  By default only the official TRAIN splits are
    used: 89,996 + 7,007 + 11,959 = 108,962 images, the paper's ~110k (Sec. 4.1);
    pass ``splits=("train", "val", "test")`` to pool all of them.  The pool is then
    re-split per client (75/25) by the federated partitioning, as in PFLlib.
    """
    subsets = [check_subset(s) for s in subsets]
    if not subsets:
        raise ValueError("load_cross_modality: need at least one subset")
    if len(set(subsets)) != len(subsets):
        raise ValueError(f"load_cross_modality: repeated subsets in {subsets}")
    for s in subsets:
        if medmnist_info(s)["task"].startswith("multi-label"):
            raise ValueError(f"load_cross_modality: {s} is multi-label and cannot join a single-label space")
    parts = [
        concat_splits(load_medmnist(s, size=size, root=root, splits=splits, download=download)) for s in subsets
    ]
    return combine(parts, prefixes=subsets)


@DATASETS.register("medmnist", display="medmnist:<subset>+<subset>...")
def _medmnist(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    subsets = [s for s in spec.split("+") if s.strip()]
    if not subsets:
        raise ValueError("dataset 'medmnist:' needs subsets, e.g. 'medmnist:pathmnist+dermamnist+bloodmnist'")
    fed_kw, data_kw = split_federate_options("medmnist", kw, load_cross_modality,
                                             ("size", "root", "splits", "download"))
    data = load_cross_modality(subsets, **data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    fed.info.update(dataset="medmnist:" + "+".join(s.strip().lower() for s in subsets), size=data_kw.get("size", 28),
                    split_note=pooled_split_note(data_kw.get("splits", ("train",)), fed.info["test_fraction"]))
    return fed
