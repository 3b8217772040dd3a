"""Multi-modal image fusion data (OmniFM Sec. 4.5, Table 7): registered source pairs.

``harvard_fusion`` reads the Harvard Whole Brain Atlas (AANLIB) pairs laid out as
``<root>/fusion_harvard/<PAIR>/{<OTHER>,MRI}/<name>.png`` with ``PAIR`` in ``CT-MRI``,
``PET-MRI``, ``SPECT-MRI``. As in the paper, each pair type is one client (client 1
CT-MRI, client 2 PET-MRI, client 3 SPECT-MRI): the federation is heterogeneous across
modalities, and ``modality`` (the sample's id) is the client's pair type.

Layout of a sample (``uint8``, ``H = W = image_size``):

* ``x[..., 0]`` = MRI, ``x[..., 1]`` = the other source (CT, PET or SPECT) as grey;
* ``y`` = the same two sources. Fusion is unsupervised (there is no reference fused
  image), and the engine hands the loss and the metrics only ``(prediction, y)``, so the
  targets must carry the sources; storing them twice costs 2 bytes a pixel a pair
  (30 MB for all 232 pairs at 256x256) and leaves the engine untouched.

Colour: PET and SPECT are pseudo-colour RGB. As the fusion literature does (U2Fusion,
CDDFuse, ...: fuse the luminance, keep the chroma aside), an RGB source is converted to the
**Y channel of YCbCr** (ITU-R BT.601, ``Y = 0.299 R + 0.587 G + 0.114 B``, the weights of
OpenCV's ``COLOR_RGB2YCrCb``), in float64. Grey sources are used as they are.

Resizing (``image_size`` < the native 256): Pillow's BOX filter (area averaging) on the
float image (:func:`~omnifm_jax.data.image.box_resize`), so a factor-2 reduction is the mean
of each 2x2 block; the float result is rounded to uint8 once, after colour conversion and
resizing. ``image_size`` = 256 (the
paper's resolution) reads the files unchanged.

Splits: per client, its pairs are shuffled with ``numpy.random.default_rng([seed, k])``
and ``max(1, round(test_fraction * n))`` of them are held out (at least one test pair and
one training pair per client). A pair is one slice: train and test never share an image.

Bad input is refused before any pixel is read, naming the file: a file in one folder of a
pair type without its partner of the same name in the other, two sources of a pair with
different sizes, or a non-square image.

``synthetic_fusion`` is a tiny deterministic stand-in with the same layout, for tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from omnifm_jax.registry import DATASETS

from .federation import Federation, stack_clients, validate_federation
from .image import box_resize, to_uint8
from .io import open_image
from .options import dataset_options
from .paths import real_data_root

__all__ = [
    "PAIR_TYPES",
    "Y_WEIGHTS",
    "rgb_to_y",
    "Pair",
    "scan_pairs",
    "load_pair_images",
    "harvard_fusion_federation",
    "synthetic_fusion_federation",
]

#: The paper's clients, in its order; the folder of a pair type holds ``MRI/`` and ``<OTHER>/``.
PAIR_TYPES: tuple[str, ...] = ("CT-MRI", "PET-MRI", "SPECT-MRI")

#: BT.601 luma weights (R, G, B) of the Y channel of YCbCr.
Y_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)

def rgb_to_y(rgb: np.ndarray) -> np.ndarray:
    """Luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of ``[..., 3]`` images, float64, not rounded."""
    rgb = np.asarray(rgb, np.float64)
    if rgb.shape[-1] != 3:
        raise ValueError(f"rgb_to_y expects [..., 3] images, got shape {rgb.shape}")
    return rgb @ np.asarray(Y_WEIGHTS, np.float64)


def _other_name(pair: str) -> str:
    return pair.split("-")[0]


class Pair(NamedTuple):
    """One registered pair: its file name, the two files and the (square) side in pixels."""
    name: str
    mri: Path
    other: Path
    size: int


def scan_pairs(root: str | os.PathLike, pair: str) -> list[Pair]:
    """The :class:`Pair` s of one pair type, sorted by file name.

    Only the file names and image headers are read (no pixels).

    Raises:
        FileNotFoundError: a folder of the pair type is missing or holds no PNG.
        ValueError: a file without its partner of the same name (named), two sources of a
            pair with different sizes (named), or a non-square image (named).
    """
    base = Path(root) / pair
    other = _other_name(pair)
    dirs = {"MRI": base / "MRI", other: base / other}
    files = {}
    for key, d in dirs.items():
        if not d.is_dir():
            raise FileNotFoundError(f"fusion data: folder {d} not found (expected {base}/{{MRI,{other}}}/*.png)")
        files[key] = {p.name: p for p in d.iterdir() if p.suffix.lower() == ".png"}
        if not files[key]:
            raise FileNotFoundError(f"fusion data: no PNG file in {d}")
    only_mri = sorted(set(files["MRI"]) - set(files[other]))
    only_other = sorted(set(files[other]) - set(files["MRI"]))
    if only_mri or only_other:
        lines = [f"{dirs['MRI'] / n} has no partner {dirs[other] / n}" for n in only_mri]
        lines += [f"{dirs[other] / n} has no partner {dirs['MRI'] / n}" for n in only_other]
        raise ValueError(f"fusion data: {len(lines)} unpaired file(s) in {base}: " + "; ".join(lines))
    out = []
    for name in sorted(files["MRI"]):
        a, b = files["MRI"][name], files[other][name]
        with open_image(a, "harvard_fusion") as ia, open_image(b, "harvard_fusion") as ib:
            sa, sb = ia.size, ib.size
        if sa != sb:
            raise ValueError(f"fusion data: pair {name!r} of {pair} has different sizes: {a} is {sa[0]}x{sa[1]}, "
                             f"{b} is {sb[0]}x{sb[1]} (width x height); the sources of a pair must be registered")
        if sa[0] != sa[1]:
            raise ValueError(f"fusion data: {a} is {sa[0]}x{sa[1]}; fusion pairs must be square")
        out.append(Pair(name, a, b, int(sa[0])))
    return out


def _read_grey(path: Path) -> np.ndarray:
    """float64 ``[H, W]`` grey levels of a PNG: luma Y of an RGB image, grey as stored."""
    with open_image(path, "harvard_fusion") as im:
        mode = im.mode
        if mode == "L":
            return np.asarray(im, np.float64)
        if mode in ("RGB", "RGBA", "P", "LA"):
            return rgb_to_y(np.asarray(im.convert("RGB")))
        raise ValueError(f"fusion data: {path} has unsupported image mode {mode!r} (expected 8-bit grey or RGB)")


def _check_sizes(pairs: Sequence[Pair], image_size: int) -> None:
    for p in pairs:
        if p.size < image_size:
            raise ValueError(f"fusion data: {p.mri} is {p.size}x{p.size}, smaller than image_size={image_size} "
                             "(images are only shrunk)")


def load_pair_images(pairs: Sequence[Pair], image_size: int) -> np.ndarray:
    """``uint8[N, image_size, image_size, 2]`` (MRI, other as grey) of scanned pairs.

    Colour conversion and resizing happen in float; one rounding at the end.
    """
    _check_sizes(pairs, image_size)
    out = np.zeros((len(pairs), image_size, image_size, 2), np.uint8)
    for i, p in enumerate(pairs):
        for c, path in enumerate((p.mri, p.other)):
            out[i, :, :, c] = to_uint8(box_resize(_read_grey(path), (image_size, image_size)))
    return out


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    return int(v)


def _split(n: int, k: int, seed: int, test_fraction: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise ValueError(f"{what} has {n} pair(s); a train/test split needs at least 2")
    n_test = min(n - 1, max(1, int(round(test_fraction * n))))
    perm = np.random.default_rng([int(seed), int(k)]).permutation(n)
    return np.sort(perm[n_test:]).astype(np.int64), np.sort(perm[:n_test]).astype(np.int64)


def _federation(images: list[np.ndarray], names: list[list[str]], modality_names: tuple[str, ...], *,
                seed: int, test_fraction: float, info: dict) -> Federation:
    """One client per entry of ``images`` (uint8[n_k, H, W, 2]); y = x (the two sources)."""
    pool = np.concatenate(images)
    modality = np.concatenate([np.full(len(im), k, np.int32) for k, im in enumerate(images)])
    train_idx, test_idx, train_names, test_names, base = [], [], [], [], 0
    for k, im in enumerate(images):
        tr, te = _split(len(im), k, seed, test_fraction, f"client {k} ({modality_names[k]})")
        train_idx.append(base + tr)
        test_idx.append(base + te)
        train_names.append([names[k][i] for i in tr])
        test_names.append([names[k][i] for i in te])
        base += len(im)
    info = dict(info)
    info.update(
        target="fusion",
        task="fusion",
        partition="pair_type",
        num_clients=len(images),
        seed=int(seed),
        test_fraction=float(test_fraction),
        channels=["MRI", "other source (CT, or luma Y of PET/SPECT)"],
        image_shape=[int(v) for v in pool.shape[1:]],
        train_pairs=train_names,
        test_pairs=test_names,
    )
    fed = Federation(
        train=stack_clients(pool, pool, modality, train_idx),
        test=stack_clients(pool, pool, modality, test_idx),
        num_classes=0,
        class_names=(),
        modality_names=tuple(modality_names),
        info=info,
    )
    validate_federation(fed)
    return fed


def harvard_fusion_federation(
    *,
    num_clients: int = 3,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    pairs: Sequence[str] = PAIR_TYPES,
    image_size: int = 256,
    test_fraction: float = 0.25,
    max_pairs_per_client: int | None = None,
) -> Federation:
    """Harvard atlas fusion federation: one client per pair type (see the module docstring).

    Args:
        num_clients: must equal ``len(pairs)`` (one client per pair type).
        seed: seed of the train/test split (and of ``max_pairs_per_client``'s subset).
        root: folder holding ``CT-MRI/``, ``PET-MRI/``, ``SPECT-MRI/``; default
            ``default_real_data_dir() / "fusion_harvard"``.
        pairs: which pair types, in client order (default: the paper's three).
        image_size: side of the (square) images; 256 = the files as they are; smaller
            sizes are box-filtered (area averaging).
        test_fraction: per-client held-out fraction of pairs (at least one pair).
        max_pairs_per_client: keep at most this many pairs per client (a seeded random
            subset, in name order) to make CPU runs smaller; ``None`` keeps all.

    Returns:
        A :class:`Federation` with ``x = y = uint8[N, image_size, image_size, 2]``
        (MRI, other), ``num_classes = 0``, ``modality_names = pairs``,
        ``info["target"] = "fusion"`` and the file names of every client's pairs.
    """
    if isinstance(pairs, str):
        pairs = (pairs,)
    pairs = tuple(pairs)
    unknown = [p for p in pairs if p not in PAIR_TYPES]
    if unknown or not pairs or len(set(pairs)) != len(pairs):
        raise ValueError(f"pairs must be distinct pair types out of {PAIR_TYPES}, got {list(pairs)}")
    num_clients = _check_int("num_clients", num_clients, 1)
    if num_clients != len(pairs):
        raise ValueError(f"harvard_fusion has one client per pair type: {len(pairs)} pair type(s) {list(pairs)} "
                         f"but num_clients={num_clients} (choose the pair types with dataset_kwargs.pairs)")
    image_size = _check_int("image_size", image_size, 1)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    if max_pairs_per_client is not None:
        max_pairs_per_client = _check_int("max_pairs_per_client", max_pairs_per_client, 2)
    folder = real_data_root(root, "fusion_harvard")
    if not folder.is_dir():
        raise FileNotFoundError(
            f"fusion data folder not found at {folder}. Put the Harvard atlas pairs there as "
            "<PAIR>/{<OTHER>,MRI}/*.png (PAIR in CT-MRI, PET-MRI, SPECT-MRI), pass root=..., or set "
            "OMNIFM_REAL_DATA to a folder holding fusion_harvard/.")
    scanned = [scan_pairs(folder, p) for p in pairs]  # every pair type checked before any pixel is read
    for sc in scanned:
        _check_sizes(sc, image_size)
    if max_pairs_per_client is not None:
        kept = []
        for k, sc in enumerate(scanned):
            if len(sc) > max_pairs_per_client:
                rng = np.random.default_rng([int(seed), 100 + k])
                keep = np.sort(rng.choice(len(sc), size=max_pairs_per_client, replace=False))
                sc = [sc[i] for i in keep]
            kept.append(sc)
        scanned = kept
    images = [load_pair_images(sc, image_size) for sc in scanned]
    native = sorted({p.size for sc in scanned for p in sc})
    info = {
        "dataset": "harvard_fusion",
        "root": str(folder),
        "pairs": list(pairs),
        "image_size": image_size,
        "native_sizes": native,
        "resize": "none" if set(native) == {image_size} else "Pillow BOX (area) filter, float, rounded once",
        "colour": "RGB sources -> Y of YCbCr (BT.601: 0.299 R + 0.587 G + 0.114 B); grey as stored",
        "max_pairs_per_client": max_pairs_per_client,
        "num_pairs": [len(sc) for sc in scanned],
    }
    return _federation(images, [[p.name for p in sc] for sc in scanned], pairs, seed=seed,
                       test_fraction=float(test_fraction), info=info)


def _synthetic_pair(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """``float[size, size, 2]`` in [0, 255]: an "MRI" with fine texture and a client-specific other source."""
    v, u = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    head = 1.0 / (1.0 + np.exp(-(0.8 - np.sqrt(u * u + v * v)) / 0.05))
    blobs = np.zeros_like(u)
    for _ in range(3):
        cu, cv, s = rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(0.1, 0.3)
        blobs += np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s * s))
    f = rng.uniform(6, 10)
    mri = head * (0.5 + 0.3 * np.sin(f * np.pi * u) * np.cos(f * np.pi * v) + 0.2 * np.tanh(blobs))
    if kind % 3 == 0:  # "CT": bright skull ring, dark interior
        other = np.exp(-((np.sqrt(u * u + v * v) - 0.78) ** 2) / 0.002) + 0.15 * head
    elif kind % 3 == 1:  # "PET": smooth hot spots
        other = head * blobs / blobs.max()
    else:  # "SPECT": blurred, blocky hot spots
        other = head * np.round(3 * blobs / blobs.max()) / 3
    out = np.stack([mri, other], axis=-1)
    return 255.0 * np.clip(out, 0.0, 1.0)


def synthetic_fusion_federation(*, num_clients: int = 3, seed: int = 0, image_size: int = 24,
                                pairs_per_client: int = 8, test_fraction: float = 0.25) -> Federation:
    """A tiny deterministic fusion federation with :func:`harvard_fusion_federation`'s layout.

    Client ``k`` fuses an MRI-like source (head mask, fine grating, blobs) with a source
    of kind ``k mod 3`` (a CT-like bright rim, PET-like smooth hot spots or SPECT-like
    quantised hot spots); every image is drawn with ``default_rng([seed, k, i])``.
    """
    num_clients = _check_int("num_clients", num_clients, 1)
    image_size = _check_int("image_size", image_size, 4)
    pairs_per_client = _check_int("pairs_per_client", pairs_per_client, 2)
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction!r}")
    kinds = ("CT", "PET", "SPECT")
    images = [np.stack([to_uint8(_synthetic_pair(np.random.default_rng([int(seed), k, i]), image_size, k))
                        for i in range(pairs_per_client)]) for k in range(num_clients)]
    names = tuple(f"synthetic-{kinds[k % 3]}-MRI-{k}" for k in range(num_clients))
    info = {"dataset": "synthetic_fusion", "image_size": image_size, "pairs_per_client": pairs_per_client}
    return _federation(images, [[f"{i:03d}" for i in range(pairs_per_client)] for _ in range(num_clients)],
                       names, seed=seed, test_fraction=float(test_fraction), info=info)


@DATASETS.register("harvard_fusion")
def _harvard_fusion(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("harvard_fusion", kw, harvard_fusion_federation)
    return harvard_fusion_federation(num_clients=num_clients, seed=seed, **kw)


@DATASETS.register("synthetic_fusion")
def _synthetic_fusion(spec: str, num_clients: int, seed: int, kw: dict) -> Federation:
    del spec
    kw = dataset_options("synthetic_fusion", kw, synthetic_fusion_federation)
    return synthetic_fusion_federation(num_clients=num_clients, seed=seed, **kw)
