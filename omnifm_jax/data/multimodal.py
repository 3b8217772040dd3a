"""Multimodal federations with missing modalities (FedMEPD, Wei et al., MedIA 2025).

Loader ``fedmepd_lgg`` (registered in :data:`omnifm_jax.registry.DATASETS`): TCGA-LGG
FLAIR-abnormality slices (the ``lgg_seg`` file, channels pre-contrast T1, FLAIR,
post-contrast T1Gd) where each client (a hospital, as ``lgg_seg``) holds only a SUBSET of
the three sequences, and a held-out full-modal set for the server.

* ``modality_subsets``: one list of channel indices per client (``[[0, 1, 2], [1], [0, 1],
  [1, 2]]`` by default: FLAIR, index 1, always present since the masks are FLAIR
  abnormality). The channels a client lacks are ZEROED in its train and test inputs (an
  absent sequence is a constant-zero channel; FedMEPD's model reads a modality as present in
  a sample iff its channel is not constant).
* The server's full-modal set: ``server_fraction`` of the patients whose every slice has
  all three sequences (``modality_present`` in the file; absent column: all present) are
  drawn with ``numpy.random.default_rng([server_seed, 7])`` and removed from the clients
  (no patient is both on the server and on a client). It does NOT depend on ``seed`` or
  ``num_clients``, so :func:`server_set` gives the algorithm the same arrays the loader
  held out (the federation's ``info["server_patients"]`` lists them).
* The rest is ``lgg_seg``'s protocol: clients = institutions (small ones merged), split by
  patient (:func:`~omnifm_jax.data.segmentation.split_by_patient`).

The source file fills a missing sequence with a copy of FLAIR (``SOURCES.md``); wherever
``modality_present`` is 0 the channel is zeroed here first.

Refused before any work (``ValueError``): a subset list whose length differs from the
number of clients, an empty subset or an unknown index, a client declaring a modality that
some of its patients lack (``modality_present`` 0) or whose channel is all zeros (with
``incomplete="drop"`` those patients are left out of that client instead, listed in
``info["dropped_patients"]``; the real file needs it for subsets other than FLAIR-only: 10
of 110 cases lack T1Gd, 6 lack pre-contrast T1), and a server without full-modal data
(``server_fraction`` giving no patient).
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import numpy as np

from omnifm_jax.registry import DATASETS

from . import segmentation as seg

__all__ = ["DEFAULT_SUBSETS", "fedmepd_lgg_federation", "server_set"]

#: Default modality subsets of the 4 LGG clients (indices into ``LGG_CHANNELS``).
DEFAULT_SUBSETS = ((0, 1, 2), (1,), (0, 1), (1, 2))


def _load(root):
    path = seg._root(root) / seg.LGG_FILE
    z = seg._load_npz(path, ("images", "masks", "case", "site"))
    with np.load(path, allow_pickle=False) as f:
        present = f["modality_present"] if "modality_present" in f.files else None
    images, masks = z["images"], z["masks"]
    seg.check_masks(images, masks, (0, 1), str(path))
    if present is None:
        present = np.ones((len(images), images.shape[-1]), np.uint8)
    present = np.asarray(present).astype(bool)
    if present.shape != (len(images), images.shape[-1]):
        raise ValueError(f"{path}: modality_present has shape {list(present.shape)}, expected "
                         f"{[len(images), images.shape[-1]]}")
    patient = np.array([seg.lgg_patient(c) for c in z["case"].astype(str)])
    # The source fills a missing sequence with a copy of FLAIR: an absent one becomes zeros here.
    images = np.where(present[:, None, None, :], images, np.uint8(0))
    return path, images, masks, patient, z["site"].astype(str), present


def _server_patients(patient, present, server_fraction: float, server_seed: int, path) -> list:
    if not 0.0 < float(server_fraction) < 1.0:
        raise ValueError(f"fedmepd_lgg: server_fraction must lie in (0, 1), got {server_fraction!r}")
    pats = sorted(set(patient.tolist()))
    full = [p for p in pats if present[patient == p].all()]
    n = int(round(float(server_fraction) * len(pats)))
    if n < 1 or not full:
        raise ValueError(f"fedmepd_lgg: the server has no full-modal data: server_fraction={server_fraction} of "
                         f"{len(pats)} patients gives {n}, and {len(full)} patients of {path} have all sequences; "
                         "FedMEPD's server needs full-modal patients")
    order = np.random.default_rng([int(server_seed), 7]).permutation(len(full))
    return sorted(full[i] for i in order[:min(n, len(full))])


@functools.lru_cache(maxsize=4)
def _server_set_cached(root: Optional[str], server_fraction: float, server_seed: int):
    path, images, masks, patient, _, present = _load(root)
    chosen = _server_patients(patient, present, server_fraction, server_seed, path)
    rows = np.flatnonzero(np.isin(patient, chosen))
    x = np.ascontiguousarray(images[rows])
    if (x.reshape(len(x), -1, x.shape[-1]).max(axis=1) == 0).any():
        raise ValueError(f"fedmepd_lgg: a server slice of {path} has an all-zero channel: not full-modal")
    y = np.asarray(masks[rows], np.uint8)[..., None]
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def server_set(*, root=None, server_fraction: float = 0.2, server_seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """The server's full-modal set ``(x uint8[Ns, H, W, 3], y uint8[Ns, H, W, 1])``: the
    patients :func:`fedmepd_lgg_federation` holds out with the same arguments."""
    return _server_set_cached(None if root is None else str(root), float(server_fraction), int(server_seed))


def fedmepd_lgg_federation(*, num_clients: int = 4, seed: int = 0, root=None,
                           modality_subsets: Sequence[Sequence[int]] = DEFAULT_SUBSETS,
                           server_fraction: float = 0.2, server_seed: int = 0, test_fraction: float = 0.25,
                           min_patients: int = 2, incomplete: str = "error"):
    """LGG with per-client modality subsets and a held-out full-modal server set (module docstring)."""
    path, images, masks, patient, site, present = _load(root)
    m_total = images.shape[-1]
    subsets = [sorted({int(i) for i in s}) for s in modality_subsets]
    if len(subsets) != num_clients:
        raise ValueError(f"fedmepd_lgg: {len(subsets)} modality subsets for {num_clients} clients")
    for k, s in enumerate(subsets):
        if not s or min(s) < 0 or max(s) >= m_total:
            raise ValueError(f"fedmepd_lgg: client {k}'s modality subset {list(modality_subsets[k])} must be a "
                             f"non-empty list of channel indices in 0..{m_total - 1} {list(seg.LGG_CHANNELS)}")
    if incomplete not in ("error", "drop"):
        raise ValueError(f"fedmepd_lgg: incomplete must be 'error' or 'drop', got {incomplete!r}")
    server_p = _server_patients(patient, present, server_fraction, server_seed, path)
    keep = ~np.isin(patient, server_p)
    source_rows = np.flatnonzero(keep)
    images, masks, patient, site, present = images[keep], masks[keep], patient[keep], site[keep], present[keep]
    sites = sorted(set(site.tolist()))
    slices_of = {str(p): int(n) for p, n in zip(*np.unique(patient, return_counts=True))}
    groups = {s: sorted(set(patient[site == s].tolist())) for s in sites}
    clients, names = seg.groups_to_clients(groups, slices_of, num_clients, min_patients=min_patients, seed=seed)
    # Check every declared modality before any work (or, with incomplete="drop", leave out the
    # client's patients lacking one), then zero the absent ones.
    nonzero = images.reshape(len(images), -1, m_total).max(axis=1) > 0
    dropped = []
    for k, pats in enumerate(clients):
        rows = np.isin(patient, pats)
        lacking = np.zeros(len(patient), bool)
        for m in subsets[k]:
            lacking |= rows & (~present[:, m] | ~nonzero[:, m])
        bad = sorted(set(patient[lacking].tolist()))
        if bad and incomplete == "error":
            m = next(m for m in subsets[k] if (rows & (~present[:, m] | ~nonzero[:, m])).any())
            raise ValueError(f"fedmepd_lgg: client {k} ({names[k]}) declares modality {m} "
                             f"({seg.LGG_CHANNELS[m]}) but it is absent or all zeros in patient(s) {bad[:5]} of "
                             f"{path} (incomplete='drop' leaves such patients out)")
        if bad:
            clients[k] = [p for p in pats if p not in set(bad)]
            dropped += bad
            if len(clients[k]) < 2:
                raise ValueError(f"fedmepd_lgg: client {k} ({names[k]}) keeps {len(clients[k])} patient(s) with "
                                 f"all of its modalities {subsets[k]}; a split by patient needs two")
    train_p, test_p = seg.split_by_patient(clients, slices_of, test_fraction=test_fraction, seed=seed)
    images = images.copy()
    for k, pats in enumerate(clients):
        rows = np.isin(patient, pats)
        absent = [m for m in range(m_total) if m not in subsets[k]]
        if absent:
            images[np.ix_(rows, np.arange(images.shape[1]), np.arange(images.shape[2]), absent)] = 0
    modality = np.array([sites.index(s) for s in site], np.int32)
    info = {"dataset": "fedmepd_lgg", "root": str(path), "seed": int(seed), "num_clients": int(num_clients),
            "test_fraction": float(test_fraction), "channels": list(seg.LGG_CHANNELS), "partition": "institution",
            "modality_subsets": subsets, "server_fraction": float(server_fraction), "server_seed": int(server_seed),
            "server_patients": server_p, "incomplete": incomplete, "dropped_patients": sorted(dropped),
            "split_note": "clients are institutions; each holds a modality subset (absent channels zeroed); a "
                          "full-modal server set of patients is held out from every client; split by patient"}
    return seg._federation(images, masks, modality, patient, train_p, test_p, label_values=(0, 1),
                           class_names=("background", "flair_abnormality"), modality_names=sites,
                           client_names=names, info=info, source_rows=source_rows)


@DATASETS.register("fedmepd_lgg")
def _fedmepd_lgg(spec: str, num_clients: int, seed: int, kw: dict):
    del spec
    kw = seg._options(kw, ("root", "modality_subsets", "server_fraction", "server_seed", "test_fraction",
                           "min_patients", "incomplete"), "fedmepd_lgg")
    return fedmepd_lgg_federation(num_clients=num_clients, seed=seed, **kw)
