"""Single entry point from a data-set name to a :class:`Federation`.

Every data set is a loader registered in :data:`omnifm_jax.registry.DATASETS` under the part of
its name before any ``:`` (a new data set is one new file in this package with
``@DATASETS.register("name")`` on a ``loader(spec, num_clients, seed, kwargs) -> Federation``).
Names:

* ``"synthetic"`` - :func:`omnifm_jax.data.synthetic.make_cross_modality`.
* ``"medmnist:<subset>+<subset>..."`` - official MedMNIST v2 subsets merged
  into one label space (e.g. ``"medmnist:pathmnist+dermamnist+bloodmnist"``).
* ``"real4"`` - the local real four-modality set (blood microscopy, fundus,
  chest X-ray, breast ultrasound).
* ``"synthetic_sr"`` / ``"breakhis_sr"`` - super-resolution federations from
  :mod:`omnifm_jax.data.superres` (imported lazily).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Callable

from omnifm_jax.registry import DATASETS

from .federation import Federation, federate
from .options import dataset_options

__all__ = ["DATASETS", "load_federation", "default_real_data_dir"]

_FEDERATE_KEYS = ("partition", "alpha", "classes_per_client", "balance", "min_size", "test_fraction", "dedup")


def default_real_data_dir() -> Path:
    """``$OMNIFM_REAL_DATA`` or ``../shared/data/real`` relative to the current directory."""
    env = os.environ.get("OMNIFM_REAL_DATA")
    return Path(env).expanduser() if env else Path.cwd().parent / "shared" / "data" / "real"


def pooled_split_note(splits, test_fraction: float) -> str:
    """How a pooled cross-modality federation was split (shown by ``omnifm data describe``)."""
    splits = tuple(splits)
    resplit = (f"each client's share is re-split {1 - test_fraction:.0%}/{test_fraction:.0%} train/test at "
               "random (PFLlib's protocol)")
    if "test" in splits:
        return (f"the official {'/'.join(splits)} splits are pooled, then {resplit}; "
                "the official test split is not held apart")
    return f"only the official {'/'.join(splits)} split(s) are used; {resplit}"


def _split_kwargs(kwargs: dict, allowed: tuple[str, ...], name: str, loader: Callable) -> tuple[dict, dict]:
    """``(federate options, loader options)``, checked against ``loader``'s and
    :func:`federate`'s parameters (names and types)."""
    kwargs = dataset_options(name, kwargs, loader, federate, allowed=allowed + _FEDERATE_KEYS)
    fed_kw = {k: kwargs.pop(k) for k in _FEDERATE_KEYS if k in kwargs}
    return fed_kw, kwargs


@DATASETS.register("synthetic")
def _synthetic(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    from .synthetic import make_cross_modality

    allowed = ("num_modalities", "num_classes", "samples_per_class_per_modality", "image_size", "channels")
    fed_kw, data_kw = _split_kwargs(kw, allowed, "synthetic", make_cross_modality)
    data = make_cross_modality(seed, **data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    fed.info.update(dataset="synthetic", **data_kw)
    return fed


@DATASETS.register("medmnist", display="medmnist:<subset>+<subset>...")
def _medmnist(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    from .medmnist import load_cross_modality

    subsets = [s for s in spec.split("+") if s.strip()]
    if not subsets:
        raise ValueError("dataset 'medmnist:' needs subsets, e.g. 'medmnist:pathmnist+dermamnist+bloodmnist'")
    fed_kw, data_kw = _split_kwargs(kw, ("size", "root", "splits", "download"), "medmnist", load_cross_modality)
    data = load_cross_modality(subsets, **data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    fed.info.update(dataset="medmnist:" + "+".join(s.strip().lower() for s in subsets), size=data_kw.get("size", 28),
                    split_note=pooled_split_note(data_kw.get("splits", ("train",)), fed.info["test_fraction"]))
    return fed


@DATASETS.register("real4")
def _real4(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    from .medmnist import SPLITS, load_real4

    fed_kw, data_kw = _split_kwargs(kw, ("root", "splits"), "real4", load_real4)
    root = data_kw.pop("root", None)
    root = Path(root) if root is not None else default_real_data_dir()
    data = load_real4(root, **data_kw)
    fed = federate(data, num_clients=num_clients, seed=seed, **fed_kw)
    fed.info.update(dataset="real4", root=str(root),
                    split_note=pooled_split_note(data_kw.get("splits", SPLITS), fed.info["test_fraction"]))
    return fed


def _superres(func: str, name: str, num_clients: int, seed: int, kw: dict) -> Federation:
    module = importlib.import_module("omnifm_jax.data.superres")
    fn: Callable[..., Federation] = getattr(module, func)
    return fn(num_clients=num_clients, seed=seed, **dataset_options(name, kw, fn))


@DATASETS.register("synthetic_sr")
def _synthetic_sr(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    return _superres("synthetic_sr_federation", "synthetic_sr", num_clients, seed, kw)


@DATASETS.register("breakhis_sr")
def _breakhis_sr(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    return _superres("breakhis_sr_federation", "breakhis_sr", num_clients, seed, kw)


def load_federation(name: str, *, num_clients: int, seed: int = 0, **kwargs: Any) -> Federation:
    """Build the federation called ``name``.

    Args:
        name: ``synthetic``, ``medmnist:<subset>+...``, ``real4``,
            ``synthetic_sr`` or ``breakhis_sr``.
        num_clients: number of clients.
        seed: seed of data generation, partition and train/test split.
        **kwargs: data-set options (e.g. ``size``, ``root``,
            ``num_modalities``) and partition options (``partition``,
            ``alpha``, ``classes_per_client``, ``balance``, ``min_size``,
            ``test_fraction``).

    Raises:
        ValueError: unknown name (listing the known ones) or unknown option.
    """
    if not isinstance(name, str):
        raise ValueError(f"dataset name must be a string, got {name!r}")
    key, _, spec = name.strip().partition(":")  # "medmnist:pathmnist+..." -> loader "medmnist"
    names = DATASETS.available()
    if key.lower() not in names:
        known = ", ".join(DATASETS.entry(n).meta.get("display", n) for n in names)
        raise ValueError(f"unknown dataset {name!r}; known: {known}")
    return DATASETS.get(key.lower())(spec, num_clients, seed, dict(kwargs))
