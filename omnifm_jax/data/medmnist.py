"""MedMNIST v2 loaders and cross-modality label spaces.

Reads the official MedMNIST v2 ``.npz`` files (keys ``train_images``,
``train_labels``, ``val_*``, ``test_*``) of every 2D subset at sizes 28, 64,
128 and 224, verifying the official MD5 of each file.  Files are looked up in
an explicit ``root`` or in ``$OMNIFM_DATA`` (default ``~/.cache/omnifm``); a
missing file is downloaded from the official Zenodo record when the network
works, otherwise :class:`DatasetNotFoundError` says exactly which file to put
where.  There is never a silent fallback to other data.

Several data sets can be merged into one label space with :func:`combine`
(class offsets per data set, one modality id per data set, grey images
promoted to three channels); :func:`load_cross_modality` does that for a list
of MedMNIST subsets and :func:`load_real4` for the local four-modality set
(blood microscopy, fundus, chest X-ray, breast ultrasound).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from .io import read_npz

__all__ = [
    "LabeledImages",
    "DatasetNotFoundError",
    "ChecksumError",
    "MEDMNIST_SUBSETS",
    "MEDMNIST_SIZES",
    "MEDMNIST_MODALITY",
    "ZENODO_RECORD",
    "BLOODMNIST_CLASSES",
    "medmnist_info",
    "medmnist_filename",
    "medmnist_url",
    "default_data_dir",
    "md5_of_file",
    "load_medmnist",
    "load_npz_images",
    "concat_splits",
    "combine",
    "load_cross_modality",
    "load_real4",
    "REAL4_MODALITIES",
    "SPLITS",
]

SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Official Zenodo record of MedMNIST v2 (MedMNIST+ sizes included).
ZENODO_RECORD = "https://zenodo.org/records/10519652"

MEDMNIST_SIZES: tuple[int, ...] = (28, 64, 128, 224)

#: Imaging modality of every 2D MedMNIST subset (from the MedMNIST v2 paper).
MEDMNIST_MODALITY: dict[str, str] = {
    "pathmnist": "colon pathology",
    "chestmnist": "chest X-ray",
    "dermamnist": "dermatoscopy",
    "octmnist": "retinal OCT",
    "pneumoniamnist": "chest X-ray",
    "retinamnist": "fundus camera",
    "breastmnist": "breast ultrasound",
    "bloodmnist": "blood cell microscopy",
    "tissuemnist": "kidney cortex microscopy",
    "organamnist": "abdominal CT (axial)",
    "organcmnist": "abdominal CT (coronal)",
    "organsmnist": "abdominal CT (sagittal)",
}

# Official facts of MedMNIST v2 (as published with ``medmnist`` 3.0.2):
# task, channels, split sizes (28x28 release), MD5 per size, class names, licence.
# The three organ sets (axial / coronal / sagittal views of the same CT volumes) share labels.
_ORGAN_LABELS = ('bladder', 'femur-left', 'femur-right', 'heart', 'kidney-left', 'kidney-right', 'liver',
                 'lung-left', 'lung-right', 'pancreas', 'spleen')


_INFO: dict[str, dict] = {
    'pathmnist': dict(
        task='multi-class',
        channels=3,
        n_samples={'train': 89996, 'val': 10004, 'test': 7180},
        md5={28: 'a8b06965200029087d5bd730944a56c1', 64: '55aa9c1e0525abe5a6b9d8343a507616', 128: 'ac42d08fb904d92c244187169d1fd1d9', 224: '2c51a510bcdc9cf8ddb2af93af1eadec'},
        labels=(
            'adipose',
            'background',
            'debris',
            'lymphocytes',
            'mucus',
            'smooth muscle',
            'normal colon mucosa',
            'cancer-associated stroma',
            'colorectal adenocarcinoma epithelium',
        ),
        license='CC BY 4.0',
    ),
    'chestmnist': dict(
        task='multi-label, binary-class',
        channels=1,
        n_samples={'train': 78468, 'val': 11219, 'test': 22433},
        md5={28: '02c8a6516a18b556561a56cbdd36c4a8', 64: '9de6cd0b934ebb5b7426cfba5efbae16', 128: 'db107e5590b27930b62dbaf558aebee3', 224: '45bd33e6f06c3e8cdb481c74a89152aa'},
        labels=(
            'atelectasis',
            'cardiomegaly',
            'effusion',
            'infiltration',
            'mass',
            'nodule',
            'pneumonia',
            'pneumothorax',
            'consolidation',
            'edema',
            'emphysema',
            'fibrosis',
            'pleural',
            'hernia',
        ),
        license='CC BY 4.0',
    ),
    'dermamnist': dict(
        task='multi-class',
        channels=3,
        n_samples={'train': 7007, 'val': 1003, 'test': 2005},
        md5={28: '0744692d530f8e62ec473284d019b0c7', 64: 'b70a2f5635c6199aeaa28c31d7202e1f', 128: '2defd784463fa5243564e855ed717de1', 224: '8974907d8e169bef5f5b96bc506ae45d'},
        labels=(
            'actinic keratoses and intraepithelial carcinoma',
            'basal cell carcinoma',
            'benign keratosis-like lesions',
            'dermatofibroma',
            'melanoma',
            'melanocytic nevi',
            'vascular lesions',
        ),
        license='CC BY-NC 4.0',
    ),
    'octmnist': dict(
        task='multi-class',
        channels=1,
        n_samples={'train': 97477, 'val': 10832, 'test': 1000},
        md5={28: 'c68d92d5b585d8d81f7112f81e2d0842', 64: 'e229e9440236b774d9f0dfef9d07bdaf', 128: '0a97e76651ace45c5d943ee3f65b63ae', 224: 'abc493b6d529d5de7569faaef2773ba3'},
        labels=(
            'choroidal neovascularization',
            'diabetic macular edema',
            'drusen',
            'normal',
        ),
        license='CC BY 4.0',
    ),
    'pneumoniamnist': dict(
        task='binary-class',
        channels=1,
        n_samples={'train': 4708, 'val': 524, 'test': 624},
        md5={28: '28209eda62fecd6e6a2d98b1501bb15f', 64: '8f4eceb4ccffa70c672198ea285246c6', 128: '05b46931834c231683c68f40c47b2971', 224: 'd6a3c71de1b945ea11211b03746c1fe1'},
        labels=(
            'normal',
            'pneumonia',
        ),
        license='CC BY 4.0',
    ),
    'retinamnist': dict(
        task='ordinal-regression',
        channels=3,
        n_samples={'train': 1080, 'val': 120, 'test': 400},
        md5={28: 'bd4c0672f1bba3e3a89f0e4e876791e4', 64: 'afda852cc34dcda56f86ad2b2457dbcc', 128: 'e48e916a24454daf90583d4e6efb1a18', 224: 'eae7e3b6f3fcbda4ae613ebdcbe35348'},
        labels=(
            '0',
            '1',
            '2',
            '3',
            '4',
        ),
        license='CC BY 4.0',
    ),
    'breastmnist': dict(
        task='binary-class',
        channels=1,
        n_samples={'train': 546, 'val': 78, 'test': 156},
        md5={28: '750601b1f35ba3300ea97c75c52ff8f6', 64: '742edef2a1fd1524b2efff4bd7ba9364', 128: '363e4b3f8d712e9b5de15470a2aaadf1', 224: 'b56378a6eefa9fed602bb16d192d4c8b'},
        labels=(
            'malignant',
            'normal, benign',
        ),
        license='CC BY 4.0',
    ),
    'bloodmnist': dict(
        task='multi-class',
        channels=3,
        n_samples={'train': 11959, 'val': 1712, 'test': 3421},
        md5={28: '7053d0359d879ad8a5505303e11de1dc', 64: '2b94928a2ae4916078ca51e05b6b800b', 128: 'adace1e0ed228fccda1f39692059dd4c', 224: 'b718ff6835fcbdb22ba9eacccd7b2601'},
        labels=(
            'basophil',
            'eosinophil',
            'erythroblast',
            'immature granulocytes(myelocytes, metamyelocytes and promyelocytes)',
            'lymphocyte',
            'monocyte',
            'neutrophil',
            'platelet',
        ),
        license='CC BY 4.0',
    ),
    'tissuemnist': dict(
        task='multi-class',
        channels=1,
        n_samples={'train': 165466, 'val': 23640, 'test': 47280},
        md5={28: 'ebe78ee8b05294063de985d821c1c34b', 64: '123ece2eba09d0aa5d698fda57103344', 128: '61b955355d7425a89687b06cca3ce0c2', 224: 'b077128c4a949f0a4eb01517f9037b9c'},
        labels=(
            'Collecting Duct, Connecting Tubule',
            'Distal Convoluted Tubule',
            'Glomerular endothelial cells',
            'Interstitial endothelial cells',
            'Leukocytes',
            'Podocytes',
            'Proximal Tubule Segments',
            'Thick Ascending Limb',
        ),
        license='CC BY 4.0',
    ),
    'organamnist': dict(
        task='multi-class',
        channels=1,
        n_samples={'train': 34561, 'val': 6491, 'test': 17778},
        md5={28: '68e3f8846a6bd62f0c9bf841c0d9eacc', 64: '2dcccc29b88e6da5a01161ef20cda288', 128: 'eeae80d0a227a8d099027e1b3cfd3b60', 224: '50747347e05c87dd3aaf92c49f9f3170'},
        labels=_ORGAN_LABELS,
        license='CC BY 4.0',
    ),
    'organcmnist': dict(
        task='multi-class',
        channels=1,
        n_samples={'train': 12975, 'val': 2392, 'test': 8216},
        md5={28: 'b9ceb9546e10131b32923c5bbeaea2b1', 64: '3ce34a8724ea6f548e6db4744d03b6a9', 128: '773c1f009daa3fe5d9a2a201b2a7ed94', 224: '050f5e875dc056f6768abf94ec9995d1'},
        labels=_ORGAN_LABELS,
        license='CC BY 4.0',
    ),
    'organsmnist': dict(
        task='multi-class',
        channels=1,
        n_samples={'train': 13932, 'val': 2452, 'test': 8827},
        md5={28: '9ab87b696fb54e2a387ebe992d6ed5f1', 64: '53a6d115339d874c25e309a994ff46d3', 128: 'ded0c5fa01a95dc4978b956f613e9b8e', 224: 'b354719e553fbbb2513d5533f52a4cb1'},
        labels=_ORGAN_LABELS,
        license='CC BY 4.0',
    ),
}

MEDMNIST_SUBSETS: tuple[str, ...] = tuple(_INFO)

#: BloodMNIST class order (also used by the BloodMNIST-style PBC file).
BLOODMNIST_CLASSES: tuple[str, ...] = _INFO["bloodmnist"]["labels"]


class LabeledImages(NamedTuple):
    """A pool of labelled images.

    Attributes:
        images: ``uint8[N, H, W, C]`` (grey images have ``C == 1``).
        labels: ``int32[N]`` class ids in ``[0, len(class_names))``
            (``int32[N, L]`` only for the multi-label ChestMNIST).
        modality: ``int32[N]`` modality ids in ``[0, len(modality_names))``.
        class_names: one name per class.
        modality_names: one name per modality.
    """

    images: np.ndarray
    labels: np.ndarray
    modality: np.ndarray
    class_names: tuple[str, ...]
    modality_names: tuple[str, ...]

    @property
    def num_samples(self) -> int:
        """Number of images ``N``."""
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)


class DatasetNotFoundError(FileNotFoundError):
    """A data file is absent and could not be downloaded."""


class ChecksumError(ValueError):
    """A data file does not have its official MD5."""


# --------------------------------------------------------------------------- facts


def _check_subset(subset: str) -> str:
    key = subset.lower().strip()
    if key not in _INFO:
        raise ValueError(
            f"unknown MedMNIST subset {subset!r}; known 2D subsets: {', '.join(MEDMNIST_SUBSETS)}"
        )
    return key


def _check_size(size: int) -> int:
    if size not in MEDMNIST_SIZES:
        raise ValueError(f"unknown MedMNIST size {size!r}; choose one of {MEDMNIST_SIZES}")
    return int(size)


def medmnist_info(subset: str) -> dict:
    """Official facts of a 2D MedMNIST subset (task, channels, n_samples, md5, labels, licence)."""
    info = dict(_INFO[_check_subset(subset)])
    info["modality"] = MEDMNIST_MODALITY[_check_subset(subset)]
    return info


def medmnist_filename(subset: str, size: int = 28) -> str:
    """Official file name: ``<subset>.npz`` for size 28, ``<subset>_<size>.npz`` otherwise."""
    subset, size = _check_subset(subset), _check_size(size)
    return f"{subset}.npz" if size == 28 else f"{subset}_{size}.npz"


def medmnist_url(subset: str, size: int = 28) -> str:
    """Official Zenodo download URL of a subset at a size."""
    return f"{ZENODO_RECORD}/files/{medmnist_filename(subset, size)}?download=1"


def default_data_dir() -> Path:
    """Cache directory: ``$OMNIFM_DATA`` or ``~/.cache/omnifm``."""
    env = os.environ.get("OMNIFM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "omnifm"


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
        subset: e.g. ``"breastmnist"`` (see :data:`MEDMNIST_SUBSETS`).
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
    subset, size = _check_subset(subset), _check_size(size)
    folder = Path(root).expanduser() if root is not None else default_data_dir()
    path = _ensure_file(subset, size, folder, download=download)
    if verify_md5:
        expected = _INFO[subset]["md5"][size]
        actual = md5_of_file(path)
        if actual != expected:
            raise ChecksumError(
                f"MD5 mismatch for {path}: expected {expected} (official {medmnist_filename(subset, size)}), "
                f"got {actual}. The file is corrupt or not the official release; delete it and download "
                f"it again from {medmnist_url(subset, size)}."
            )
    info = _INFO[subset]
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
        for key, labels in z.items():
            if labels.size:
                top = max(top, int(np.max(labels)))
        class_names = tuple(str(i) for i in range(top + 1))
    return _read_splits(
        path,
        class_names=tuple(class_names),
        modality_name=modality_name or path.stem,
        splits=splits,
    )


# --------------------------------------------------------------------------- merging


def concat_splits(parts: Mapping[str, LabeledImages] | Sequence[LabeledImages]) -> LabeledImages:
    """Concatenate pools sharing the same class and modality names (e.g. train+val+test)."""
    items = list(parts.values()) if isinstance(parts, Mapping) else list(parts)
    if not items:
        raise ValueError("concat_splits: nothing to concatenate")
    first = items[0]
    for it in items[1:]:
        if it.class_names != first.class_names or it.modality_names != first.modality_names:
            raise ValueError("concat_splits: parts have different class or modality names")
        if it.images.shape[1:] != first.images.shape[1:]:
            raise ValueError(
                f"concat_splits: image shapes differ: {it.images.shape[1:]} vs {first.images.shape[1:]}"
            )
    return LabeledImages(
        images=np.concatenate([it.images for it in items]),
        labels=np.concatenate([it.labels for it in items]).astype(np.int32),
        modality=np.concatenate([it.modality for it in items]).astype(np.int32),
        class_names=first.class_names,
        modality_names=first.modality_names,
    )


def combine(
    datasets: Sequence[LabeledImages],
    *,
    prefixes: Sequence[str] | None = None,
    channels: int | None = None,
) -> LabeledImages:
    """Merge data sets into one cross-modality label space.

    Classes of data set ``i`` are offset by the number of classes of data sets
    ``0..i-1``; modality ids are offset the same way (each data set keeps its
    own modalities).  Class names become ``"<prefix>: <name>"``.

    Args:
        datasets: pools with identical image height and width.
        prefixes: one prefix per data set for the class names; defaults to the
            data set's modality name(s).
        channels: output channels (1 or 3); defaults to 3 when any input has
            3 channels.  Grey images are promoted by repetition.

    Returns:
        A single :class:`LabeledImages`.
    """
    datasets = list(datasets)
    if not datasets:
        raise ValueError("combine: need at least one data set")
    if prefixes is not None and len(prefixes) != len(datasets):
        raise ValueError(f"combine: {len(prefixes)} prefixes for {len(datasets)} data sets")
    hw = {d.images.shape[1:3] for d in datasets}
    if len(hw) != 1:
        raise ValueError(f"combine: image sizes differ: {sorted(hw)}; load all at the same size")
    for i, d in enumerate(datasets):
        if d.labels.ndim != 1:
            raise ValueError(
                f"combine: data set {i} has multi-label labels of shape {d.labels.shape}; "
                "only single-label data sets can share a label space"
            )
    if channels is None:
        channels = max(d.images.shape[-1] for d in datasets)
    if channels not in (1, 3):
        raise ValueError(f"combine: channels must be 1 or 3, got {channels}")
    images, labels, modality = [], [], []
    class_names: list[str] = []
    modality_names: list[str] = []
    for i, d in enumerate(datasets):
        img = d.images
        if img.shape[-1] != channels:
            if img.shape[-1] == 1:
                img = np.repeat(img, channels, axis=-1)
            else:
                raise ValueError(f"combine: cannot reduce data set {i} from 3 channels to 1")
        prefix = prefixes[i] if prefixes is not None else "+".join(d.modality_names)
        images.append(img)
        labels.append(d.labels.astype(np.int32) + len(class_names))
        modality.append(d.modality.astype(np.int32) + len(modality_names))
        class_names.extend(f"{prefix}: {c}" for c in d.class_names)
        modality_names.extend(d.modality_names)
    return LabeledImages(
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        modality=np.concatenate(modality),
        class_names=tuple(class_names),
        modality_names=tuple(modality_names),
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
    subsets = [_check_subset(s) for s in subsets]
    if not subsets:
        raise ValueError("load_cross_modality: need at least one subset")
    if len(set(subsets)) != len(subsets):
        raise ValueError(f"load_cross_modality: repeated subsets in {subsets}")
    for s in subsets:
        if _INFO[s]["task"].startswith("multi-label"):
            raise ValueError(f"load_cross_modality: {s} is multi-label and cannot join a single-label space")
    parts = [
        concat_splits(load_medmnist(s, size=size, root=root, splits=splits, download=download)) for s in subsets
    ]
    return combine(parts, prefixes=subsets)


#: The local real four-modality set: (modality name, relative file, loader kind).
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
        raise DatasetNotFoundError(f"real 4-modality set incomplete; missing: {', '.join(missing)}")
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
