"""Shared pytest fixtures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Directory of the real data sets (``$OMNIFM_REAL_DATA`` or ``../shared/data/real``).

    Tests that use it are skipped when the directory is absent.
    """
    env = os.environ.get("OMNIFM_REAL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not path.is_dir():
        pytest.skip(f"real data directory {path} not found (set OMNIFM_REAL_DATA)")
    return path
