"""Operations on a flat pool of labelled images (before it is partitioned into clients).

A pool is a :class:`LabeledImages`: every sample of a data set in one array, with its class
and modality ids. :func:`concat_splits` joins pools of one data set (e.g. its official
train/val/test splits); :func:`combine` merges pools of several data sets into one
cross-modality label space (class offsets per data set, one modality id per data set, grey
images promoted to three channels). :func:`pooled_split_note` says how such a pool was split
into train and test once federated (shown by ``omnifm data describe``).
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import numpy as np

__all__ = ["LabeledImages", "concat_splits", "combine", "pooled_split_note"]


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


def pooled_split_note(splits: Sequence[str], test_fraction: float) -> str:
    """How a pooled cross-modality federation was split (shown by ``omnifm data describe``)."""
    splits = tuple(splits)
    resplit = (f"each client's share is re-split {1 - test_fraction:.0%}/{test_fraction:.0%} train/test at "
               "random (PFLlib's protocol)")
    if "test" in splits:
        return (f"the official {'/'.join(splits)} splits are pooled, then {resplit}; "
                "the official test split is not held apart")
    return f"only the official {'/'.join(splits)} split(s) are used; {resplit}"
