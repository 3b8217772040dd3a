"""TensorFlow Datasets builders for MedMNIST v2 and BreaKHis (optional extra).

This module is never imported by the rest of the package; import it explicitly::

    from omnifm_jax.data.tfds_builders import MedMNISTBuilder, BreakHisBuilder

    b = MedMNISTBuilder(config="breastmnist_28", data_dir="~/tfds")
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir="~/medmnist"))
    ds = b.as_data_source(split="train")         # numpy, random access, no TensorFlow needed
    # tf.data instead: MedMNISTBuilder(..., file_format="tfrecord") and b.as_dataset(split="train")
    # (needs TensorFlow; array_record files cannot be read by as_dataset)

Both builders read local files only (``manual_dir``): MedMNIST from the official
``<subset>.npz`` / ``<subset>_<size>.npz`` files (Zenodo record 10519652), BreaKHis
from the original ``BreaKHis_v1/...`` tree or a flat folder of PNGs. The records hold
exactly the arrays the NumPy loaders (:func:`omnifm_jax.data.medmnist.load_medmnist`,
:func:`omnifm_jax.data.breakhis.load_breakhis_image`) return.

Images are stored as zlib-compressed ``uint8`` tensors and the default file format
is ``array_record``, so preparing and reading (``as_data_source``) work with
``tensorflow-datasets`` alone. ``as_dataset`` (tf.data) needs TensorFlow and
``file_format="tfrecord"`` at construction.
Examples are shuffled on disk: use the ``index`` / ``filename`` feature to restore order.
"""

from __future__ import annotations

try:
    import tensorflow_datasets as tfds
except ImportError as exc:  # pragma: no cover - exercised only without tfds
    raise ImportError(
        "omnifm_jax.data.tfds_builders needs tensorflow-datasets, which is not installed. "
        "Install the optional extra with: pip install 'omnifm-jax[tfds]'"
    ) from exc

from pathlib import Path

import numpy as np

from omnifm_jax.data import breakhis as _bh
from omnifm_jax.data import medmnist as _mm
from omnifm_jax.data import medmnist_facts as _facts

__all__ = ["MedMNISTBuilder", "MedMNISTConfig", "BreakHisBuilder"]

_TFDS_SPLITS = {"train": "train", "val": "validation", "test": "test"}


class MedMNISTConfig(tfds.core.BuilderConfig):
    """One MedMNIST v2 2D subset at one image size (config name ``<subset>_<size>``)."""

    def __init__(self, *, subset: str, size: int, **kwargs):
        info = _facts.medmnist_info(subset)
        super().__init__(
            name=f"{subset}_{size}",
            description=f"MedMNIST v2 {subset} ({info['modality']}), {size}x{size}, {info['task']}.",
            **kwargs,
        )
        self.subset = subset
        self.size = size
        self.channels = int(info["channels"])
        self.class_names = tuple(info["labels"])
        self.multilabel = info["task"].startswith("multi-label")


def _manual_dir(dl_manager, instructions: str) -> Path:
    """The manual dir, or a FileNotFoundError (tfds itself raises AssertionError) saying what to put there."""
    try:
        manual = dl_manager.manual_dir
    except AssertionError as exc:  # tfds: "Manual directory ... does not exist or is empty"
        raise FileNotFoundError(f"{exc}".split("\n")[0] + " " + instructions) from exc
    if manual is None:
        raise FileNotFoundError(
            "no manual_dir given: pass download_config=tfds.download.DownloadConfig(manual_dir=...). " + instructions
        )
    return Path(str(manual))


class OmnifmMedmnist(tfds.core.GeneratorBasedBuilder):
    """MedMNIST v2 2D subsets from the official npz files (registered as ``omnifm_medmnist``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "MedMNIST v2 2D subsets at 28/64/128/224 px."}
    BUILDER_CONFIGS = [
        MedMNISTConfig(subset=s, size=z, version=tfds.core.Version("1.0.0"))
        for s in _facts.MEDMNIST_SUBSETS
        for z in _facts.MEDMNIST_SIZES
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the official MedMNIST v2 file <subset>.npz (28 px) or <subset>_<size>.npz from "
        f"{_facts.ZENODO_RECORD} and put it in the manual_dir."
    )

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        if cfg.multilabel:
            label = tfds.features.Tensor(shape=(len(cfg.class_names),), dtype=np.int32)
        else:
            label = tfds.features.ClassLabel(names=[str(n) for n in cfg.class_names])
        return tfds.core.DatasetInfo(
            builder=self,
            description="MedMNIST v2 (Yang et al., 2023), official npz release.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=(cfg.size, cfg.size, cfg.channels), dtype=np.uint8, encoding="zlib"
                    ),
                    "label": label,
                    "index": tfds.features.Scalar(dtype=np.int64, doc="position in the official split"),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://medmnist.com/",
            license=_facts.medmnist_info(cfg.subset).get("license"),
        )

    def _split_generators(self, dl_manager):
        cfg = self.builder_config
        path = (_manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
                / _facts.medmnist_filename(cfg.subset, cfg.size))
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found. {self.MANUAL_DOWNLOAD_INSTRUCTIONS} "
                f"(direct link: {_facts.medmnist_url(cfg.subset, cfg.size)})"
            )
        return {tfds_split: self._generate_examples(path, split) for split, tfds_split in _TFDS_SPLITS.items()}

    def _generate_examples(self, path: Path, split: str):
        cfg = self.builder_config
        data = _mm.load_medmnist(
            cfg.subset, size=cfg.size, root=path.parent, splits=(split,), download=False, verify_md5=False
        )[split]
        if data.images.shape[1:] != (cfg.size, cfg.size, cfg.channels):
            raise ValueError(
                f"{path}[{split}]: images have shape {data.images.shape[1:]}, "
                f"expected {(cfg.size, cfg.size, cfg.channels)}"
            )
        for i in range(data.num_samples):
            yield f"{split}_{i}", {"image": data.images[i], "label": data.labels[i], "index": i}


class OmnifmBreakhis(tfds.core.GeneratorBasedBuilder):
    """BreaKHis histopathology images with labels from their file names (registered as ``omnifm_breakhis``).

    One ``train`` split holds every image found (BreaKHis has no official split; build
    patient-disjoint splits from the ``patient`` feature).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "BreaKHis v1, original resolution, labels parsed from file names."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put the BreaKHis PNGs in the manual_dir: either the original BreaKHis_v1/histology_slides/breast/... "
        "tree or a flat folder of files named like SOB_B_F-14-25197-100-001.png."
    )

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="BreaKHis breast-cancer histopathology (Spanhol et al., 2016).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(None, None, 3), dtype=np.uint8, encoding="zlib"),
                    "tumor_class": tfds.features.ClassLabel(names=list(_bh.TUMOR_CLASSES)),
                    "subtype": tfds.features.ClassLabel(names=list(_bh.SUBTYPES)),
                    "magnification": tfds.features.ClassLabel(names=[f"{m}X" for m in _bh.MAGNIFICATIONS]),
                    "patient": tfds.features.Text(),
                    "seq": tfds.features.Scalar(dtype=np.int32),
                    "filename": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "subtype"),
            homepage="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/",
        )

    def _split_generators(self, dl_manager):
        records = _bh.scan_breakhis(_manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS))
        return {"train": self._generate_examples(records)}

    def _generate_examples(self, records):
        for r in records:
            yield r.path.name, {
                "image": _bh.load_breakhis_image(r.path),
                "tumor_class": r.tumor_class,
                "subtype": r.subtype,
                "magnification": f"{r.magnification}X",
                "patient": r.patient,
                "seq": r.seq,
                "filename": r.path.name,
            }


MedMNISTBuilder = OmnifmMedmnist
BreakHisBuilder = OmnifmBreakhis
