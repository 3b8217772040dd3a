"""Single entry point from a data-set name to a :class:`Federation`.

Every data set is a loader registered in :data:`omnifm_jax.registry.DATASETS` under the part of
its name before any ``:``, in its own module of this package (a new data set is one new file
with ``@DATASETS.register("name")`` on a ``loader(spec, num_clients, seed, kwargs) ->
Federation`` that checks ``kwargs`` with :mod:`omnifm_jax.data.options`). Nothing is
registered here; the known names are the registry's (:func:`dataset_names`), e.g.
``"medmnist:<subset>+<subset>..."`` (official MedMNIST v2 subsets merged into one label space,
:mod:`omnifm_jax.data.medmnist`), ``"real4"`` (:mod:`omnifm_jax.data.real4`) or
``"synthetic"`` (:mod:`omnifm_jax.data.synthetic`).

Names follow one pattern: ``<source>`` for a classification set (``synthetic``, ``real4``,
``medmnist``, ``histo_derm_mri``), ``<source>_<task>`` otherwise, with the task suffixes ``sr``,
``seg`` and ``fusion`` (``breakhis_sr``, ``lgg_seg``, ``harvard_fusion``); a VQA set keeps its
own name, which names the task (``vqa_rad``: VQA-RAD). Former names
(:data:`RENAMED_DATASETS`) are refused, naming the new one.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from omnifm_jax.registry import DATASETS

from .federation import Federation

__all__ = ["DATASETS", "RENAMED_DATASETS", "renamed_dataset", "dataset_names", "load_federation"]

#: Former data set names and their new ones: refused (:func:`renamed_dataset`), naming the new one.
RENAMED_DATASETS: Dict[str, str] = {
    "fusion_harvard": "harvard_fusion",
    "seg_cross_modality": "ph2_dsb_seg",
    "fedmepd_lgg": "lgg_multimodal_seg",
    "fedmepd_brats": "brats_multimodal_seg",
}


def renamed_dataset(name: Any) -> Optional[str]:
    """Why ``name`` is refused if it is a former data set name (``"dataset 'old' was renamed
    to 'new'"``), else None."""
    if not isinstance(name, str):
        return None
    key = name.strip().partition(":")[0].lower()
    if key not in RENAMED_DATASETS:
        return None
    return f"dataset {name!r} was renamed to {RENAMED_DATASETS[key]!r}"


def dataset_names() -> List[str]:
    """The registered data sets, sorted, as a user writes them (``display`` of a registration,
    e.g. ``"medmnist:<subset>+<subset>..."``, else its name)."""
    return [DATASETS.entry(n).meta.get("display", n) for n in DATASETS.available()]


def load_federation(name: str, *, num_clients: int, seed: int = 0, **kwargs: Any) -> Federation:
    """Build the federation called ``name``.

    Args:
        name: a registered data set (:func:`dataset_names`); ``"<loader>:<spec>"`` hands
            ``spec`` to the loader (e.g. ``"medmnist:pathmnist+dermamnist"``).
        num_clients: number of clients.
        seed: seed of data generation, partition and train/test split.
        **kwargs: data-set options (e.g. ``size``, ``root``,
            ``num_modalities``) and partition options (``partition``,
            ``alpha``, ``classes_per_client``, ``balance``, ``min_size``,
            ``test_fraction``).

    Raises:
        ValueError: unknown or former name (listing the known ones, or naming the new one) or
            unknown option.
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    why = renamed_dataset(name)
    if why:
        raise ValueError(why)
    key, _, spec = name.strip().partition(":")  # "medmnist:pathmnist+..." -> loader "medmnist"
    if key.lower() not in DATASETS.available():
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(dataset_names())}")
    return DATASETS.get(key.lower())(spec, num_clients, seed, dict(kwargs))
