"""Reading data files with errors that name the file and the data set: a truncated or
corrupt ``.npz`` or an image file Pillow cannot read stops the run with one clear line
instead of a ``zipfile.BadZipFile`` or ``PIL.UnidentifiedImageError`` traceback; an absent
file that a loader cannot fetch is a :class:`DatasetNotFoundError` saying where to put it."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

__all__ = ["DataFileError", "DatasetNotFoundError", "read_npz", "open_image"]


class DatasetNotFoundError(FileNotFoundError):
    """A data file is absent and could not be downloaded."""


class DataFileError(ValueError):
    """A data file exists but cannot be read (corrupt, truncated, not what its name says)."""


def read_npz(path: str | Path, dataset: str, keys: Optional[Sequence[str]] = None) -> Dict[str, np.ndarray]:
    """The arrays of an ``.npz`` (those of ``keys`` that it holds; every one when None), read
    now, so that a corrupt member is reported here, naming the file. A missing key is the
    caller's to report (it knows what the file should hold)."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            names = z.files if keys is None else [k for k in keys if k in z.files]
            return {k: z[k] for k in names}
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataFileError(f"data set {dataset!r}: cannot read {path}: {type(exc).__name__}: {exc} "
                            "(truncated or corrupt? replace the file)") from None


def open_image(path: str | Path, dataset: str):
    """``PIL.Image.open(path)`` with the image decoded (``load()``), as a context manager."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        im = Image.open(path)
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataFileError(f"data set {dataset!r}: {path} is not a readable image: {type(exc).__name__}: "
                            f"{exc}") from None
    return im
