"""Data: loaders of every data set, pools, client partitions, federations.

Everything here is numpy on the host (no TensorFlow); arrays are built once and
handed to the JAX engine as :class:`Federation` objects. The modules by concern:

* entry point: :mod:`.registry` (``load_federation``: a name to a :class:`Federation`;
  each data set registers itself in its own module, options checked by :mod:`.options`);
* federations and partitions: :mod:`.federation`, :mod:`.partition`;
* pools of labelled images (concatenate, merge label spaces): :mod:`.pool`;
* image operations (the one resize, masks): :mod:`.image`; files: :mod:`.io`,
  :mod:`.paths` (the real-data folder);
* one module per source: :mod:`.synthetic`, :mod:`.medmnist` (facts in
  :mod:`.medmnist_facts`), :mod:`.real4`, :mod:`.breakhis` and :mod:`.breakhis_sr`
  (SR pairs in :mod:`.sr`), :mod:`.lgg`, :mod:`.brats`, :mod:`.ph2_dsb_seg`,
  :mod:`.nifti` (shared segmentation rules in :mod:`.segmentation`), :mod:`.multimodal`,
  :mod:`.fusion`;
* ``omnifm data describe``: :mod:`.describe`.
"""

from .federation import ClientArrays, Federation, client_ids, client_slice, federate, stack_clients, validate_federation
from .io import DatasetNotFoundError
from .medmnist import ChecksumError, load_cross_modality, load_medmnist, load_npz_images
from .partition import PARTITIONS, split_train_test
from .pool import LabeledImages, combine, concat_splits
from .real4 import load_real4
from .registry import DATASETS, load_federation
from .synthetic import make_cross_modality

__all__ = [
    "ClientArrays",
    "Federation",
    "client_ids",
    "client_slice",
    "federate",
    "stack_clients",
    "validate_federation",
    "ChecksumError",
    "DatasetNotFoundError",
    "LabeledImages",
    "combine",
    "concat_splits",
    "load_cross_modality",
    "load_medmnist",
    "load_npz_images",
    "load_real4",
    "PARTITIONS",
    "split_train_test",
    "DATASETS",
    "load_federation",
    "make_cross_modality",
]
