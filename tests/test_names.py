"""One spelling per concept: every former name of a config key, an algorithm
hyper-parameter or a data set is refused with an error naming the new one, through the
validation ``omnifm train --set ...`` runs (no training), and the tree holds none of the old
spellings (docs/protocol.md, "Renamed keys")."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from omnifm_jax import algorithms, cli
from omnifm_jax import config as config_lib
from omnifm_jax.algorithms.sgd import ClientState, ServerState, Upload
from omnifm_jax.config import ConfigError
from omnifm_jax.data.registry import RENAMED_DATASETS, load_federation
from omnifm_jax.registry import DATASETS

REPO = Path(__file__).resolve().parents[1]

#: (the old spelling as ``--set`` overrides, the old name, the new name the error must give)
RENAMED = [
    (["dropout=0.3"], "dropout", "client_dropout"),
    (["algorithm=moon", "algorithm_kwargs.mu=1.0"], "mu", "contrastive_weight"),
    (["algorithm=gpfl", "algorithm_kwargs.mu=0.1"], "mu", "weight_decay"),
    (["algorithm=gpfl", "algorithm_kwargs.lamda=0.01"], "lamda", "lambda_reg"),
    (["dataset=fusion_harvard"], "fusion_harvard", "harvard_fusion"),
    (["dataset=seg_cross_modality"], "seg_cross_modality", "ph2_dsb_seg"),
    (["dataset=fedmepd_lgg"], "fedmepd_lgg", "lgg_multimodal_seg"),
    (["dataset=fedmepd_brats"], "fedmepd_brats", "brats_multimodal_seg"),
]
IDS = [" ".join(sets) for sets, _, _ in RENAMED]


def _validated(sets):
    """What ``omnifm train --set ...`` does before any work: overrides, then validation."""
    cfg = config_lib.apply_overrides(config_lib.load_config(), sets)
    config_lib.validate(cfg)
    return cfg


def _renamed(sets, old, new):
    """``sets`` with the old name replaced by the new one (as a key or as a value)."""
    out = []
    for s in sets:
        key, value = s.split("=", 1)
        parts = [new if part == old else part for part in key.split(".")]
        out.append(f"{'.'.join(parts)}={new if value == old else value}")
    return out


@pytest.mark.parametrize("sets,old,new", RENAMED, ids=IDS)
def test_old_spelling_is_refused_naming_the_new_one(sets, old, new):
    with pytest.raises(ConfigError, match=rf"\b{re.escape(old)}'? was renamed to '?{re.escape(new)}\b"):
        _validated(sets)
    cfg = _validated(_renamed(sets, old, new))  # the new spelling is accepted
    assert new in cfg or new in cfg["algorithm_kwargs"] or cfg["dataset"] == new


@pytest.mark.parametrize("sets,old,new", RENAMED, ids=IDS)
def test_old_spelling_is_refused_on_the_command_line(sets, old, new, tmp_path, capsys):
    argv = ["train", "--quiet", "--out", str(tmp_path / "out")] + [a for s in sets for a in ("--set", s)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{old}" in err and "was renamed to" in err and new in err
    assert not (tmp_path / "out").exists()  # refused before any work


def test_old_key_is_refused_in_a_config_and_a_config_file(tmp_path):
    cfg = config_lib.load_config()
    cfg["dropout"] = cfg.pop("client_dropout")
    with pytest.raises(ConfigError, match="dropout was renamed to client_dropout"):
        config_lib.validate(cfg)
    path = tmp_path / "old.py"
    path.write_text("def get_config():\n    return {'dropout': 0.2}\n")
    with pytest.raises(ConfigError, match=r"old.py: dropout was renamed to client_dropout"):
        config_lib.load_config(str(path))


def test_mu_is_only_a_proximal_weight():
    for name in ("fedprox", "ditto"):
        assert "mu" in algorithms.hyperparameters(name)
    assert "mu" not in algorithms.hyperparameters("moon") and "contrastive_weight" in algorithms.hyperparameters("moon")
    assert {"lambda_reg", "weight_decay"} <= set(algorithms.hyperparameters("gpfl"))
    assert not {"mu", "lamda"} & set(algorithms.hyperparameters("gpfl"))
    algorithms.check("fedprox", {"mu": 0.1})


@pytest.mark.parametrize("old,new", sorted(RENAMED_DATASETS.items()))
def test_data_registry_refuses_old_names(old, new):
    assert old not in DATASETS.available() and new in DATASETS.available()
    with pytest.raises(ValueError, match=rf"dataset '{old}' was renamed to '{new}'"):
        load_federation(old, num_clients=2)


def test_data_set_names_follow_one_pattern():
    """``<source>`` for classification sets, ``<source>_<task>`` otherwise (task suffixes
    ``sr``, ``seg``, ``fusion``); a VQA set by its own name, which names the task (``vqa_rad``)."""
    classification = {"synthetic", "real4", "medmnist", "histo_derm_mri"}
    for name in DATASETS.available():
        assert name in classification or re.fullmatch(r"[a-z0-9]+(_[a-z0-9]+)*_(sr|seg|fusion)", name) \
            or re.fullmatch(r"vqa_[a-z0-9]+", name), name


def _tree_files():
    for top in ("omnifm_jax", "tests", "docs", "notebooks", "experiments"):
        for path in (REPO / top).rglob("*"):
            if path.is_file() and path.suffix in (".py", ".md", ".ipynb", ".toml", ".cfg", ".txt") \
                    and "__pycache__" not in path.parts and "results" not in path.relative_to(REPO).parts:
                yield path
    for name in ("README.md", "CONTRIBUTING.md", "pyproject.toml"):
        if (REPO / name).is_file():
            yield REPO / name


def test_no_old_super_resolution_spelling_in_the_tree():
    old = "super" + "res"  # spelled apart so that this file does not hold it
    hits = [str(p.relative_to(REPO)) for p in _tree_files() if old in p.name.lower()
            or old in p.read_text(errors="replace").lower()]
    assert hits == []


def test_algorithm_state_slot_has_one_name():
    assert ServerState._fields == ("params", "algorithm_state", "opt_state")
    assert ClientState._fields == ("personal", "opt_state", "algorithm_state")
    assert Upload._fields == ("shared", "algorithm_upload")
    old = "extra"  # the former name of the slot: no attribute, keyword or hook spelled with it
    hits = [f"{p.relative_to(REPO)}:{i}" for p in (REPO / "omnifm_jax").rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1)
            if re.search(rf"\.{old}\b|\b{old}=|_{old}\b", line)]
    assert hits == []
