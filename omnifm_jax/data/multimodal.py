"""Multimodal federations with missing modalities (FedMEPD, Wei et al., MedIA 2025).

Two loaders (registered in :data:`omnifm_jax.registry.DATASETS`), one protocol: every client
holds only a SUBSET of the MR sequences, and a held-out full-modal set of patients is the
server's.

* ``lgg_multimodal_seg``: TCGA-LGG FLAIR-abnormality slices (the ``lgg_seg`` file, 64x64, channels
  pre-contrast T1, FLAIR, post-contrast T1Gd; binary target). Clients are hospitals, as in
  ``lgg_seg`` (small ones merged). Default subsets of the 4 clients: ``[[0, 1, 2], [1], [0,
  1], [1, 2]]`` (FLAIR, index 1, always present since the masks are FLAIR abnormality).
* ``brats_multimodal_seg``: BraTS tumour slices (the ``brats_seg`` file, 96x96, channels T1, T1ce,
  T2, FLAIR; 8 cases of 7 patients). ``target`` as ``brats_seg``: ``multiclass`` by default
  (labels {0, 1, 2, 4}; ``info["regions"]`` names ET/TC/WT, so the segmentation task
  reports Dice per region), or a binary ``et``/``tc``/``wt``. Only 2 cases have all four
  sequences, and one of them is the same patient as a T1ce + FLAIR case, so the ONE
  full-modal patient (``Brats18_TCIA05_396_1``) is the server's set and the other 6 patients
  (3 clients of 2, dealt as ``brats_seg`` deals them) hold T1ce and FLAIR at most. Default
  subsets of the 3 clients: ``[[1, 3], [3], [1]]`` (T1ce + FLAIR, FLAIR, T1ce): the T1 and
  T2 encoders learn from the server's set only.

Common rules:

* ``modality_subsets``: one list per client of channel indices or names (``"flair"``,
  ``"t1ce"``, ...). The channels a client lacks are ZEROED in its train and test inputs (an
  absent sequence is a constant-zero channel; FedMEPD's model reads a modality as present in
  a sample iff its channel is not constant).
* The server's full-modal set: ``server_fraction`` of all patients (rounded, at least one),
  drawn from the patients whose every slice has every sequence (``modality_present`` in
  the file) with ``numpy.random.default_rng([server_seed, 7])``, and removed from the
  clients (no patient is both on the server and on a client). It does NOT depend on
  ``seed`` or ``num_clients``, so :func:`server_set` gives the algorithm the same arrays the
  loader held out (the federation's ``info["server_patients"]`` lists them).
* Clients are split train/test by patient (:func:`~omnifm_jax.data.segmentation.split_by_patient`).
* The sources are read and labelled as their own loaders read them (:mod:`omnifm_jax.data.lgg`,
  :mod:`omnifm_jax.data.brats`), through their public functions.
* A source file fills a missing sequence with a copy (LGG: FLAIR) or zeros (BraTS);
  wherever ``modality_present`` is 0 the channel is zeroed here first.

Refused before any work (``ValueError``): a subset list whose length differs from the
number of clients, an empty subset or an unknown channel, a client declaring a modality that
some of its patients lack (``modality_present`` 0) or whose channel is all zeros (with
``incomplete="drop"`` those patients are left out of that client instead, listed in
``info["dropped_patients"]``; LGG needs it for subsets other than FLAIR-only: 10 of 110
cases lack T1Gd, 6 lack pre-contrast T1), and a server without full-modal data.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Dict, NamedTuple, Optional, Tuple

import numpy as np

from omnifm_jax.registry import DATASETS

from .brats import BRATS_CHANNELS, BRATS_FILE, BRATS_LABELS, BRATS_REGIONS, brats_patient, encode_brats_target
from .federation import ServerData
from .lgg import LGG_ALIASES, LGG_CHANNELS, LGG_FILE, lgg_patient
from .options import dataset_options
from .paths import real_data_root
from .segmentation import (
    channel_indices,
    check_masks,
    deal_patients,
    groups_to_clients,
    load_arrays,
    mask_federation,
    split_by_patient,
)

__all__ = ["DEFAULT_SUBSETS", "SHORT_NAMES", "brats_multimodal_seg_federation", "lgg_multimodal_seg_federation",
           "missing_modality_federation", "server_set"]

#: Default modality subsets per source (indices into the source's channels).
DEFAULT_SUBSETS = {"lgg": ((0, 1, 2), (1,), (0, 1), (1, 2)), "brats": ((1, 3), (3,), (1,))}
#: Short channel names per source (tables).
SHORT_NAMES = {"lgg": ("T1", "FLAIR", "T1Gd"), "brats": ("T1", "T1ce", "T2", "FLAIR")}
_DEFAULT_TARGET = {"lgg": "mask", "brats": "multiclass"}


class _Source(NamedTuple):
    path: str
    images: np.ndarray        # uint8[N, H, W, M], absent sequences zeroed
    masks: np.ndarray         # uint8[N, H, W] class indices
    patient: np.ndarray       # str[N]
    site: np.ndarray          # str[N]: institution (LGG) or source collection (BraTS)
    present: np.ndarray       # bool[N, M]
    channels: Tuple[str, ...]
    aliases: Dict[str, int]
    label_values: Tuple[int, ...]
    class_names: Tuple[str, ...]
    regions: Optional[dict]
    clients_by_site: bool     # LGG: clients are institutions; BraTS: patients dealt to clients


def _present(z: dict, path, n: int, m: int) -> np.ndarray:
    """``bool[n, m]`` from the file's ``modality_present`` (every sequence present without it)."""
    present = np.asarray(z.get("modality_present", np.ones((n, m), np.uint8))).astype(bool)
    if present.shape != (n, m):
        raise ValueError(f"{path}: modality_present has shape {list(present.shape)}, expected {[n, m]}")
    return present


def _load_lgg(root, target: str) -> _Source:
    if target != "mask":
        raise ValueError(f"lgg_multimodal_seg has one target (the FLAIR abnormality mask): target must be 'mask', got "
                         f"{target!r}")
    path = real_data_root(root) / LGG_FILE
    z = load_arrays(path, ("images", "masks", "case", "site"), optional=("modality_present",))
    images, masks = z["images"], z["masks"]
    check_masks(images, masks, (0, 1), str(path))
    present = _present(z, path, len(images), images.shape[-1])
    patient = np.array([lgg_patient(c) for c in z["case"].astype(str)])
    return _Source(str(path), images, masks, patient, z["site"].astype(str), present, LGG_CHANNELS,
                   dict(LGG_ALIASES), (0, 1), ("background", "flair_abnormality"), None, True)


def _load_brats(root, target: str) -> _Source:
    path = real_data_root(root) / BRATS_FILE
    z = load_arrays(path, ("images", "labels", "case", "modality_present"))
    images, labels, case = z["images"], z["labels"], z["case"].astype(str)
    check_masks(images, labels, BRATS_LABELS, str(path))
    present = _present(z, path, len(images), images.shape[-1])
    masks, label_values, class_names = encode_brats_target(labels, target)
    source = np.array(["brats2018" if c.startswith("Brats18") else "brats2015" for c in case])
    regions = dict(BRATS_REGIONS) if target == "multiclass" else None
    return _Source(str(path), images, masks, np.array([brats_patient(c) for c in case]), source, present,
                   BRATS_CHANNELS, {}, tuple(label_values), tuple(class_names), regions, False)


_LOADERS = {"lgg": _load_lgg, "brats": _load_brats}


@functools.lru_cache(maxsize=4)
def _source(dataset: str, root: Optional[str], target: str) -> _Source:
    src = _LOADERS[dataset](root, target)
    # A source may fill a missing sequence with a copy of another: absent becomes zeros here.
    images = np.where(src.present[:, None, None, :], src.images, np.uint8(0))
    for a in (images, src.masks, src.present):
        a.setflags(write=False)
    return src._replace(images=images)


def _load(dataset: str, root, target: Optional[str]) -> _Source:
    if dataset not in _LOADERS:
        raise ValueError(f"missing-modality source must be one of {sorted(_LOADERS)}, got {dataset!r}")
    return _source(dataset, None if root is None else str(root),
                   _DEFAULT_TARGET[dataset] if target is None else str(target))


def _server_patients(src: _Source, server_fraction: float, server_seed: int, name: str) -> list:
    if not 0.0 < float(server_fraction) < 1.0:
        raise ValueError(f"{name}: server_fraction must lie in (0, 1), got {server_fraction!r}")
    pats = sorted(set(src.patient.tolist()))
    full = [p for p in pats if src.present[src.patient == p].all()]
    n = int(round(float(server_fraction) * len(pats)))
    if n < 1 or not full:
        raise ValueError(f"{name}: the server has no full-modal data: server_fraction={server_fraction} of "
                         f"{len(pats)} patients gives {n}, and {len(full)} patients of {src.path} have all sequences; "
                         "FedMEPD's server needs full-modal patients")
    order = np.random.default_rng([int(server_seed), 7]).permutation(len(full))
    return sorted(full[i] for i in order[:min(n, len(full))])


@functools.lru_cache(maxsize=4)
def _server_set_cached(dataset: str, root: Optional[str], target: Optional[str], server_fraction: float,
                       server_seed: int):
    src = _load(dataset, root, target)
    name = f"fedmepd_{dataset}"
    chosen = _server_patients(src, server_fraction, server_seed, name)
    rows = np.flatnonzero(np.isin(src.patient, chosen))
    x = np.ascontiguousarray(src.images[rows])
    if (x.reshape(len(x), -1, x.shape[-1]).max(axis=1) == 0).any():
        raise ValueError(f"{name}: a server slice of {src.path} has an all-zero channel: not full-modal")
    y = np.asarray(src.masks[rows], np.uint8)[..., None]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def server_set(*, dataset: str = "lgg", root=None, target: Optional[str] = None, server_fraction: float = 0.2,
               server_seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The server's full-modal set ``(x uint8[Ns, H, W, M], y uint8[Ns, H, W, 1])``: the
    patients :func:`missing_modality_federation` holds out with the same arguments
    (``dataset`` ``"lgg"`` or ``"brats"``; ``target`` as the loader's)."""
    return _server_set_cached(dataset, None if root is None else str(root), target, float(server_fraction),
                              int(server_seed))


def _subsets(dataset: str, src: _Source, modality_subsets, num_clients: int) -> list:
    name = f"fedmepd_{dataset}"
    if modality_subsets is None:
        modality_subsets = DEFAULT_SUBSETS[dataset]
    if len(modality_subsets) != num_clients:
        raise ValueError(f"{name}: {len(modality_subsets)} modality subsets for {num_clients} clients (default "
                         f"subsets: {[list(s) for s in DEFAULT_SUBSETS[dataset]]})")
    out = []
    for k, s in enumerate(modality_subsets):
        items = [s] if isinstance(s, (str, int, np.integer)) else list(s)
        idx = []
        for c in items:
            if isinstance(c, (int, np.integer)):
                if not 0 <= int(c) < len(src.channels):
                    raise ValueError(f"{name}: client {k}'s modality subset {items}: index {c} is not a channel "
                                     f"of {list(src.channels)}")
                idx.append(int(c))
            else:
                idx += channel_indices([c], src.channels, src.aliases, f"{name} client {k}")
        if not idx:
            raise ValueError(f"{name}: client {k}'s modality subset is empty; a client needs one sequence")
        out.append(sorted(set(idx)))
    return out


def missing_modality_federation(dataset: str, *, num_clients: Optional[int] = None, seed: int = 0, root=None,
                                target: Optional[str] = None, modality_subsets=None, server_fraction: float = 0.2,
                                server_seed: int = 0, test_fraction: float = 0.25, min_patients: int = 2,
                                incomplete: str = "error"):
    """Clients with per-client modality subsets and a held-out full-modal server set
    (module docstring); ``dataset`` ``"lgg"`` or ``"brats"``."""
    name = f"fedmepd_{dataset}"
    src = _load(dataset, root, target)
    if num_clients is None:
        num_clients = len(DEFAULT_SUBSETS[dataset] if modality_subsets is None else modality_subsets)
    subsets = _subsets(dataset, src, modality_subsets, num_clients)
    if incomplete not in ("error", "drop"):
        raise ValueError(f"{name}: incomplete must be 'error' or 'drop', got {incomplete!r}")
    m_total = src.images.shape[-1]
    server_p = _server_patients(src, server_fraction, server_seed, name)
    keep = ~np.isin(src.patient, server_p)
    source_rows = np.flatnonzero(keep)
    images, masks, patient, site, present = (a[keep] for a in (src.images, src.masks, src.patient, src.site,
                                                                src.present))
    slices_of = {str(p): int(n) for p, n in zip(*np.unique(patient, return_counts=True))}
    if src.clients_by_site:
        groups = {s: sorted(set(patient[site == s].tolist())) for s in sorted(set(site.tolist()))}
        clients, names = groups_to_clients(groups, slices_of, num_clients, min_patients=min_patients, seed=seed)
    else:
        clients, names = deal_patients(slices_of, num_clients, min_patients=min_patients, seed=seed, what=name)
    # Check every declared modality before any work (or, with incomplete="drop", leave out the
    # client's patients lacking one), then zero the absent ones.
    nonzero = images.reshape(len(images), -1, m_total).max(axis=1) > 0
    dropped = []
    for k, pats in enumerate(clients):
        rows = np.isin(patient, pats)
        lacking_m = {m: rows & (~present[:, m] | ~nonzero[:, m]) for m in subsets[k]}
        bad = sorted(set(patient[np.any(list(lacking_m.values()), axis=0)].tolist()))
        if bad and incomplete == "error":
            m = next(m for m in subsets[k] if lacking_m[m].any())
            raise ValueError(f"{name}: client {k} ({names[k]}) declares modality {m} ({src.channels[m]}) but it is "
                             f"absent or all zeros in patient(s) {bad[:5]} of {src.path} (incomplete='drop' leaves "
                             "such patients out)")
        if bad:
            clients[k] = [p for p in pats if p not in set(bad)]
            dropped += bad
            if len(clients[k]) < 2:
                raise ValueError(f"{name}: client {k} ({names[k]}) keeps {len(clients[k])} patient(s) with all of "
                                 f"its modalities {subsets[k]}; a split by patient needs two")
    train_p, test_p = split_by_patient(clients, slices_of, test_fraction=test_fraction, seed=seed)
    images = images.copy()
    for k, pats in enumerate(clients):
        rows = np.flatnonzero(np.isin(patient, pats))
        absent = [m for m in range(m_total) if m not in subsets[k]]
        if absent:
            images[np.ix_(rows, np.arange(images.shape[1]), np.arange(images.shape[2]), absent)] = 0
    site_names = sorted(set(site.tolist()))
    modality = np.array([site_names.index(s) for s in site], np.int32)
    info = {"dataset": name, "root": src.path, "seed": int(seed), "num_clients": int(num_clients),
            "test_fraction": float(test_fraction), "channels": list(src.channels),
            "partition": "institution" if src.clients_by_site else "patients", "modality_subsets": subsets,
            "server_fraction": float(server_fraction), "server_seed": int(server_seed), "server_patients": server_p,
            "incomplete": incomplete, "dropped_patients": sorted(dropped),
            **({"brats_target": target or _DEFAULT_TARGET[dataset]} if dataset == "brats" else {}),
            **({"regions": dict(src.regions)} if src.regions else {}),
            "split_note": ("clients are institutions" if src.clients_by_site else "clients are groups of patients")
            + "; each holds a modality subset (absent channels zeroed); a full-modal server set of patients is "
              "held out from every client; split by patient"}
    fed = mask_federation(images, masks, modality, patient, train_p, test_p, label_values=src.label_values,
                          class_names=src.class_names, modality_names=site_names, client_names=names, info=info,
                          source_rows=source_rows)
    # The held-out patients travel with the federation as its server split (FedMEPD's full-modal set).
    server = server_set(dataset=dataset, root=root, target=target, server_fraction=server_fraction,
                        server_seed=server_seed)
    return dataclasses.replace(fed, server=ServerData(*server))


def lgg_multimodal_seg_federation(**kw):
    """LGG with per-client modality subsets and a held-out full-modal server set (module docstring)."""
    return missing_modality_federation("lgg", **kw)


def brats_multimodal_seg_federation(**kw):
    """BraTS slices with per-client modality subsets and the full-modal server patient (module docstring)."""
    return missing_modality_federation("brats", **kw)


_OPTIONS = ("root", "modality_subsets", "server_fraction", "server_seed", "test_fraction", "min_patients",
            "incomplete")


@DATASETS.register("lgg_multimodal_seg")
def _lgg_multimodal_seg(spec: str, num_clients: int, seed: int, kw: dict):
    del spec
    kw = dataset_options("lgg_multimodal_seg", kw, missing_modality_federation, allowed=_OPTIONS)
    return lgg_multimodal_seg_federation(num_clients=num_clients, seed=seed, **kw)


@DATASETS.register("brats_multimodal_seg")
def _brats_multimodal_seg(spec: str, num_clients: int, seed: int, kw: dict):
    del spec
    kw = dataset_options("brats_multimodal_seg", kw, missing_modality_federation, allowed=_OPTIONS + ("target",))
    return brats_multimodal_seg_federation(num_clients=num_clients, seed=seed, **kw)
