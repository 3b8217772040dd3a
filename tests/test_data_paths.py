"""Where the real-data folder is looked for (omnifm_jax.data.paths)."""
from __future__ import annotations

from pathlib import Path

from omnifm_jax.data import breakhis_sr, paths


def _tree(root: Path, *dirs: str) -> None:
    for d in dirs:
        (root / d).mkdir(parents=True)


def test_the_real_data_folder_is_the_variable_then_beside_the_directory_then_beside_the_checkout(tmp_path,
                                                                                               monkeypatch):
    _tree(tmp_path, "work/run", "work/shared/data/real", "elsewhere/deep", "co/main/omnifm_jax/data",
          "co/shared/data/real")
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "co/main/omnifm_jax/data/paths.py"))  # a checkout
    monkeypatch.delenv("OMNIFM_REAL_DATA", raising=False)

    monkeypatch.chdir(tmp_path / "work/run")            # ../shared/data/real exists here: it wins
    assert paths.default_real_data_dir() == tmp_path / "work/shared/data/real"
    monkeypatch.chdir(tmp_path / "elsewhere/deep")      # none beside this directory: the checkout's
    assert paths.default_real_data_dir() == tmp_path / "co/shared/data/real"
    assert breakhis_sr.default_breakhis_root() == tmp_path / "co/shared/data/real/breakhis"
    monkeypatch.setattr(paths, "__file__", str(tmp_path / "site-packages/omnifm_jax/data/paths.py"))  # installed
    assert paths.default_real_data_dir() == tmp_path / "elsewhere/shared/data/real"   # named in the error
    monkeypatch.setenv("OMNIFM_REAL_DATA", str(tmp_path / "mine"))  # the variable wins, existing or not
    assert paths.default_real_data_dir() == tmp_path / "mine"
    assert paths.real_data_root(None, "fusion_harvard") == tmp_path / "mine" / "fusion_harvard"
    assert paths.real_data_root(tmp_path / "given") == tmp_path / "given"
