"""CONTRIBUTING.md's four recipes, followed as written: each example file and each test file is
taken out of the page (a fenced block whose first line is ``# file: NAME``), each ``omnifm train``
command too, and run: the component file from a temporary directory through the config key
``imports`` (the command as printed, plus tiny sizes), the test file with the component standing
in for its module of the package. Also the ``imports`` error paths: a missing module and a
module that raises are one ConfigError naming it, a name the package already has is refused
naming the file, and importing the same file twice registers nothing twice.

Every test leaves the registries as it found them (:func:`isolated`): a component registered
here must not reach the suite's checks over every registered component."""
from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from omnifm_jax import algorithms, cli, tasks
from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError
from omnifm_jax.registry import ALGORITHMS, BACKBONES, DATASETS, TASKS, import_components

PAGE = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"
REGISTRIES = (ALGORITHMS, TASKS, BACKBONES, DATASETS)
#: Tiny sizes appended to every command (later ``--set`` values win).
TINY = ["rounds=1", "num_clients=3", "batch_size=8", "local_epochs=1", "eval_train_loss=False",
        "checkpoint_every=0", "diagnostics=0"]  # OmniFM's diagnostics: tests/test_diagnostics.py
#: The default config's data set at tiny size (for recipes that keep it).
TINY_SYNTHETIC = ["dataset_kwargs.samples_per_class_per_modality=3", "dataset_kwargs.image_size=16"]


def _blocks():
    """``{file name: code}`` of the page's ``# file:`` blocks, and its ``omnifm train`` lines."""
    text = PAGE.read_text()
    files, commands = {}, []
    for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M):
        first, _, rest = body.partition("\n")
        found = re.fullmatch(r"# file: (\S+)", first.strip())
        if lang == "python" and found:
            assert found.group(1) not in files, f"two blocks are {found.group(1)}"
            files[found.group(1)] = rest
        if lang == "bash":
            commands += [line for line in body.splitlines() if line.startswith("omnifm train ")]
    return files, commands


FILES, COMMANDS = _blocks()


def _command(component_file: str) -> list:
    """The page's ``omnifm train`` command that imports ``component_file``, as argv for cli.main."""
    found = [c for c in COMMANDS if f'imports=["{component_file}"]' in c]
    assert len(found) == 1, f"CONTRIBUTING.md has {len(found)} commands importing {component_file}"
    argv = shlex.split(found[0])
    assert argv[:2] == ["omnifm", "train"]
    return argv[1:]


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """Registries, ``sys.modules`` and the working directory as they were, after the test.

    The package's components are discovered first, so the snapshot holds all of them; the
    test then registers into copies of the registries.
    """
    for registry in REGISTRIES:
        registry.available()
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
    before = set(sys.modules)
    monkeypatch.chdir(tmp_path)  # the page's commands name the files relative to the current directory
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith(("omnifm_user_", "contrib_")):
            del sys.modules[name]


def _write(directory: Path, name: str) -> Path:
    path = directory / Path(name).name
    path.write_text(FILES[name])
    return path


def _train(argv, out: Path, capsys, *extra) -> dict:
    full = list(argv) + [a for o in list(extra) + TINY for a in ("--set", o)] + ["--quiet", "--out", str(out)]
    rc = cli.main(full)
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads((out / "summary.json").read_text())


def _run_page_tests(name: str, module_name: str, package_module: str, monkeypatch) -> int:
    """Run the page's test file ``name`` with the imported component ``module_name`` standing in
    for ``package_module`` (where the recipe puts it in the package); returns the tests run."""
    monkeypatch.setitem(sys.modules, package_module, sys.modules[module_name])
    namespace = {"__name__": "contrib_" + Path(name).stem}
    exec(compile(FILES[name], name, "exec"), namespace)  # the page's own test code
    names = [k for k in namespace if k.startswith("test_") and callable(namespace[k])]
    for test in names:
        namespace[test]()
    return len(names)


def test_the_page_has_four_recipes_each_with_its_file_command_and_tests():
    assert {"fedavg_l2.py", "smooth_classification.py", "mlp.py", "quadrants.py"} <= set(FILES)
    for name in ("fedavg_l2", "smooth_classification", "mlp", "quadrants"):
        assert f"tests/test_{name}.py" in FILES
        assert _command(f"{name}.py")
    text = PAGE.read_text()
    for where in ("omnifm_jax/algorithms/fedavg_l2.py", "omnifm_jax/tasks/smooth_classification.py",
                  "omnifm_jax/models/mlp.py", "omnifm_jax/data/quadrants.py"):
        assert where in text  # each recipe says where the file goes in the package too
    assert "pip install -e '.[test]' && ruff check . && pytest -q" in text


def test_algorithm_recipe_runs_and_its_term_changes_the_model(isolated, capsys, monkeypatch):
    path = _write(isolated, "fedavg_l2.py")
    argv = _command("fedavg_l2.py")
    tiny = TINY_SYNTHETIC + ["backbone_kwargs.hidden=16"]
    summary = _train(argv, isolated / "l2", capsys, *tiny)
    assert summary["algorithm"] == "fedavg_l2" and summary["config"]["algorithm_kwargs"] == {"weight_decay": 0.01}
    assert summary["learned"] is True
    # The same run with the penalty off is FedAvg bit for bit; with it on, the model differs.
    off = _train(argv, isolated / "off", capsys, *tiny, "algorithm_kwargs.weight_decay=0.0")
    fedavg = _train(["train"], isolated / "fedavg", capsys, *tiny, "algorithm=fedavg")
    assert off["params_sha256"] == fedavg["params_sha256"]
    assert summary["params_sha256"] != fedavg["params_sha256"]
    assert algorithms.hyperparameters("fedavg_l2") == {"weight_decay": 1e-3}
    with pytest.raises(ConfigError, match=r"algorithm 'fedavg_l2': weight_decay must be a finite number >= 0"):
        algorithms.check("fedavg_l2", {"weight_decay": float("nan")})
    module = import_components([str(path)])[0]
    assert _run_page_tests("tests/test_fedavg_l2.py", module, "omnifm_jax.algorithms.fedavg_l2", monkeypatch) == 2


def test_task_recipe_runs_and_reports_as_a_classification(isolated, capsys, monkeypatch):
    path = _write(isolated, "smooth_classification.py")
    summary = _train(_command("smooth_classification.py"), isolated / "run", capsys, *TINY_SYNTHETIC)
    assert summary["task"] == "smooth_classification" and summary["primary_metric"] == "accuracy"
    assert summary["config"]["task_kwargs"] == {"smoothing": 0.2}
    assert 0.0 <= summary["last"]["accuracy"] <= 1.0 and summary["learned"] is True
    assert tasks.declaration("smooth_classification").options == {"head_pool": "mean", "smoothing": 0.1}
    module = import_components([str(path)])[0]
    assert _run_page_tests("tests/test_smooth_classification.py", module,
                           "omnifm_jax.tasks.smooth_classification", monkeypatch) == 2


def test_backbone_recipe_runs(isolated, capsys, monkeypatch):
    path = _write(isolated, "mlp.py")
    summary = _train(_command("mlp.py"), isolated / "run", capsys, *TINY_SYNTHETIC)
    assert summary["config"]["backbone"] == "mlp" and summary["config"]["backbone_kwargs"] == {"hidden": 128}
    assert summary["learned"] is True
    module = import_components([str(path)])[0]
    assert _run_page_tests("tests/test_mlp.py", module, "omnifm_jax.models.mlp", monkeypatch) == 1
    # A backbone_kwargs key the module lacks is refused before any work, naming the backbone.
    assert cli.main(_command("mlp.py") + ["--set", "backbone_kwargs.depth=3", "--quiet",
                                          "--out", str(isolated / "bad")]) == 2
    assert "do not fit backbone 'mlp'" in capsys.readouterr().err


def test_data_set_recipe_runs(isolated, capsys, monkeypatch):
    path = _write(isolated, "quadrants.py")
    summary = _train(_command("quadrants.py"), isolated / "run", capsys,
                     "dataset_kwargs.num_samples=96")
    assert summary["dataset"] == "quadrants"
    assert summary["config"]["dataset_kwargs"] == {"partition": "pathological", "num_samples": 96}
    assert summary["learned"] is True and len(summary["last_clients"]) == 3
    # tests/test_layout.py's rule, met once the file is in omnifm_jax/data/: the registered
    # function calls the public loader its module defines.
    assert "make_quadrants" in DATASETS.get("quadrants").__code__.co_names
    module = import_components([str(path)])[0]
    assert _run_page_tests("tests/test_quadrants.py", module, "omnifm_jax.data.quadrants", monkeypatch) == 2


# ----------------------------------------------------------------------------- imports: error paths

def _validate_imports(imports, **overrides):
    cfg = config_lib.load_config()
    cfg.update(imports=imports, **overrides)
    config_lib.validate(cfg)


def test_a_missing_module_is_one_config_error_naming_it(isolated, capsys):
    for missing, named in (("contrib_no_such_module", "'contrib_no_such_module'"),
                           (str(isolated / "absent.py"), "absent.py")):
        with pytest.raises(ConfigError) as info:
            _validate_imports([missing])
        msg = str(info.value)
        assert msg.startswith("imports: cannot import ") and named in msg and "\n" not in msg
    assert cli.main(["train", "--set", 'imports=["absent.py"]', "--quiet", "--out", str(isolated / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("omnifm: error: imports: cannot import 'absent.py': FileNotFoundError: no file ")
    assert len(err.splitlines()) == 1 and not (isolated / "o").exists()
    with pytest.raises(ConfigError, match="imports must be a list"):
        _validate_imports("absent.py")


def test_a_module_that_raises_is_one_config_error_naming_it(isolated):
    (isolated / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(ConfigError) as info:
        _validate_imports(["broken.py"])
    assert str(info.value) == "imports: cannot import 'broken.py': RuntimeError: boom at import"
    assert not [m for m in sys.modules if m.startswith("omnifm_user_broken_")]  # a later try imports it afresh


def test_reusing_a_name_of_the_package_is_refused_naming_the_file(isolated):
    (isolated / "clash.py").write_text(FILES["mlp.py"].replace('register("mlp")', 'register("cnn")'))
    with pytest.raises(ConfigError, match=r"^imports: cannot import 'clash.py': ValueError: backbone 'cnn' "
                                          r"registered twice$"):
        _validate_imports(["clash.py"])


def test_the_same_file_twice_registers_once(isolated):
    path = _write(isolated, "fedavg_l2.py")
    first = import_components([str(path), "fedavg_l2.py", "./fedavg_l2.py"])
    assert len(set(first)) == 1  # one module, however the path is written
    _validate_imports(["fedavg_l2.py"], algorithm="fedavg_l2")
    _validate_imports([str(path)], algorithm="fedavg_l2")
    assert import_components([str(path)]) == first[:1]
    assert algorithms.available().count("fedavg_l2") == 1


def test_a_dotted_module_name_on_the_path_is_imported(isolated, monkeypatch):
    (isolated / "contrib_components.py").write_text(FILES["fedavg_l2.py"])
    monkeypatch.syspath_prepend(str(isolated))
    _validate_imports(["contrib_components"], algorithm="fedavg_l2", algorithm_kwargs={"weight_decay": 0.5})
    assert algorithms.hyperparameters("fedavg_l2") == {"weight_decay": 1e-3}


def test_the_registries_are_left_as_found():
    """Runs after the tests above in this file (pytest keeps a file's order): none of the recipes'
    components is registered any more."""
    assert "fedavg_l2" not in ALGORITHMS.available() and "smooth_classification" not in TASKS.available()
    assert "mlp" not in BACKBONES.available() and "quadrants" not in DATASETS.available()
