"""The one registration mechanism: a component file registers itself, the first lookup of its
kind imports its package's modules, unknown names are refused with the known ones."""
from __future__ import annotations

import sys

import pytest

from omnifm_jax.registry import ALGORITHMS, BACKBONES, DATASETS, TASKS, Registry


def test_a_new_component_file_registers_itself_without_edits_elsewhere(tmp_path, monkeypatch):
    pkg = tmp_path / "plugins_for_test"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "widget.py").write_text(
        "from tests_registry_target import REG\n\n@REG.register('widget', color='blue')\ndef widget():\n    return 42\n")
    reg = Registry("thing", "plugins_for_test")
    module = type(sys)("tests_registry_target")
    module.REG = reg
    monkeypatch.setitem(sys.modules, "tests_registry_target", module)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert reg.available() == ["widget"]  # found by importing the package's modules
    assert reg.get("widget")() == 42 and reg.entry("widget").meta == {"color": "blue"}
    with pytest.raises(ValueError, match=r"unknown thing 'gadget'; known: widget"):
        reg.get("gadget")
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("widget")(lambda: 0)


def test_every_kind_lists_its_components():
    assert {"omnifm", "fedavg", "fedprox", "scaffold"} <= set(ALGORITHMS.available())
    assert {"classification", "super_resolution", "segmentation"} <= set(TASKS.available())
    assert {"cnn", "resnet18", "edsr", "unet"} <= set(BACKBONES.available())
    assert {"synthetic", "medmnist", "real4", "synthetic_sr", "breakhis_sr", "lgg_seg", "brats_seg",
            "ph2_dsb_seg", "nifti_seg", "harvard_fusion", "synthetic_fusion", "lgg_multimodal_seg",
            "brats_multimodal_seg"} <= set(DATASETS.available())
