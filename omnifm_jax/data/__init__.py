"""Data: MedMNIST loaders, synthetic cross-modality images, client partitions, federations.

Everything here is numpy on the host (no TensorFlow); arrays are built once and
handed to the JAX engine as :class:`Federation` objects.
"""

from .federation import ClientArrays, Federation, client_ids, client_slice, federate, stack_clients, validate_federation
from .medmnist import (
    ChecksumError,
    DatasetNotFoundError,
    LabeledImages,
    combine,
    concat_splits,
    load_cross_modality,
    load_medmnist,
    load_npz_images,
    load_real4,
)
from .partition import PARTITIONS, split_train_test
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
