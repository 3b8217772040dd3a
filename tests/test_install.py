"""The core works without any optional extra: the CLI's everyday commands run in a process
where the optional packages cannot be imported, component discovery never imports a module
that needs one, and a failed discovery is neither silent nor sticky."""
from __future__ import annotations

import ast
import json
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import omnifm_jax
from omnifm_jax.registry import ALGORITHMS, BACKBONES, DATASETS, EXTRAS, TASKS, ComponentImportError, Registry

OPTIONAL = ("tensorflow_datasets", "tensorflow", "nibabel", "nbclient", "nbformat", "flwr")

# A meta-path finder placed first: importing any optional package fails as if it were absent.
BLOCK = textwrap.dedent(f"""
    import sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {OPTIONAL!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
    sys.meta_path.insert(0, _Block())
""")


def test_cli_runs_without_optional_packages(tmp_path):
    script = BLOCK + textwrap.dedent(f"""
        import json, sys
        import omnifm_jax
        lazy = "jax" not in sys.modules  # the package loads its modules (and JAX) on first use
        from omnifm_jax import cli
        out = {str(tmp_path / "run")!r}
        codes = {{
            "train": cli.main(["train", "--quiet", "--set", "rounds=1", "--set", "checkpoint_every=0",
                               "--set", "num_clients=3", "--set", "dataset_kwargs.samples_per_class_per_modality=6",
                               "--set", "dataset_kwargs.image_size=16", "--set", "backbone_kwargs.hidden=16",
                               "--out", out]),
            "algorithms": cli.main(["algorithms"]),
            "describe": cli.main(["data", "describe", "--dataset", "synthetic", "--clients", "3"]),
            "reproduce list": cli.main(["reproduce", "list"]),
        }}
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in {OPTIONAL!r})
        print("RESULT", json.dumps({{"codes": codes, "loaded": loaded, "lazy": lazy}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["codes"] == {"train": 0, "algorithms": 0, "describe": 0, "reproduce list": 0}, proc.stderr[-3000:]
    assert result["loaded"] == [] and result["lazy"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 1 and summary["last"]["round"] == 1


def _top_level_imports(path: Path):
    """Top-level package names a file imports outside any function or class body."""
    names, todo = [], list(ast.parse(path.read_text()).body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Import):
            names += [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module.split(".")[0])
        todo.extend(ast.iter_child_nodes(node))
    return names


def test_no_discovered_module_imports_an_extra_at_top_level():
    """Every module that discovery imports keeps optional packages inside functions; a module
    that cannot (tfds_builders) must be in its registry's ``skip``. Checked on the source, so a
    new component file that breaks the rule fails here even where the extra is installed."""
    offenders = {}
    for registry in (ALGORITHMS, TASKS, BACKBONES, DATASETS):
        for module in registry.modules():
            path = Path(omnifm_jax.__file__).parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
            if not path.is_file():
                path = path.with_suffix("") / "__init__.py"
            bad = sorted(set(_top_level_imports(path)) & set(OPTIONAL))
            if bad:
                offenders[module] = bad
    assert offenders == {}
    # The rule's exception is real: the skipped module does import tensorflow_datasets at top level.
    skipped = Path(omnifm_jax.__file__).parent / "data" / "tfds_builders.py"
    assert "tensorflow_datasets" in _top_level_imports(skipped)
    assert "omnifm_jax.data.tfds_builders" not in DATASETS.modules()


def test_failed_discovery_names_the_module_and_the_extra_and_is_not_sticky(tmp_path, monkeypatch):
    pkg = tmp_path / "fake_components"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text("from omnifm_jax.registry import Registry\n"
                                 "import fake_components as p\np.REG.register('good')(object)\n")
    (pkg / "needs_nifti.py").write_text("import nibabel_for_the_test\n")
    (pkg / "_private.py").write_text("raise RuntimeError('a private module is never imported')\n")
    (pkg / "skipped.py").write_text("raise RuntimeError('a skipped module is never imported')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(EXTRAS, "nibabel_for_the_test", "nifti")
    import fake_components

    reg = Registry("widget", "fake_components", skip=("skipped",))
    fake_components.REG = reg
    with pytest.raises(ComponentImportError, match=r"cannot list the widgets: importing "
                       r"fake_components.needs_nifti failed: .*pip install 'omnifm-jax\[nifti\]'"):
        reg.available()
    # A second lookup must not answer from the partial registry ('good' alone).
    with pytest.raises(ComponentImportError):
        reg.get("good")
    (pkg / "needs_nifti.py").write_text("")  # the extra "installed"
    sys.modules.pop("fake_components.needs_nifti", None)
    assert reg.available() == ["good"]
    assert sorted(m.name for m in pkgutil.iter_modules([str(pkg)])) == ["_private", "good", "needs_nifti", "skipped"]


def test_named_configs_ship_inside_the_package():
    from omnifm_jax import config as config_lib

    assert config_lib.CONFIG_DIR == Path(omnifm_jax.__file__).resolve().parent / "configs"
    for name in ("default", "real4", "table1_resnet18"):
        assert (config_lib.CONFIG_DIR / f"{name}.py").is_file()
        assert config_lib.load_config(name)["rounds"] >= 1
    text = (Path(omnifm_jax.__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert 'include = ["omnifm_jax*"]' in text
