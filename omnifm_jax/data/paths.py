"""Where data files are looked for: the one definition of the real-data folder
(``$OMNIFM_REAL_DATA``) and of the MedMNIST download cache (``$OMNIFM_DATA``).

Every loader that reads the real-data folder calls :func:`default_real_data_dir` (directly or
through :func:`real_data_root`); none defines its own."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_data_dir", "default_real_data_dir", "real_data_root"]


def default_real_data_dir() -> Path:
    """``$OMNIFM_REAL_DATA``; else ``../shared/data/real`` relative to the current directory
    if that folder exists; else ``shared/data/real`` beside the checkout this package runs from
    (``<checkout>/../shared/data/real``) if that exists, so that a command works from any
    directory of a checkout; else the first (for the error message that names it)."""
    env = os.environ.get("OMNIFM_REAL_DATA")
    if env:
        return Path(env).expanduser()
    here = Path.cwd().parent / "shared" / "data" / "real"
    beside = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"
    return beside if not here.is_dir() and beside.is_dir() else here


def real_data_root(root: str | os.PathLike | None = None, *parts: str) -> Path:
    """The folder a loader reads: ``root`` as given (``~`` expanded), else
    :func:`default_real_data_dir` joined with ``parts`` (e.g. ``"fusion_harvard"``)."""
    return Path(root).expanduser() if root is not None else default_real_data_dir().joinpath(*parts)


def default_data_dir() -> Path:
    """MedMNIST download cache: ``$OMNIFM_DATA`` or ``~/.cache/omnifm``."""
    env = os.environ.get("OMNIFM_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "omnifm"
