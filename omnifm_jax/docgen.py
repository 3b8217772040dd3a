"""The lists in the docs that the code knows, generated from the code: ``omnifm docs [--check]``.

A generated list sits in a markdown file between two markers::

    <!-- generated:algorithms (omnifm docs) -->
    ...
    <!-- /generated:algorithms -->

``omnifm docs`` rewrites what lies between them in ``README.md``, ``docs/*.md``,
``experiments/**/README.md`` and ``CONTRIBUTING.md`` of a checkout; ``--check`` rewrites
nothing and exits 1 when a block differs from what the code gives (``tests/test_docs.py`` runs
it). The blocks (:data:`BLOCKS`):

- ``algorithms``: the algorithm registry: each algorithm's summary (its module's docstring),
  the tasks it runs and its ``algorithm_kwargs`` with their defaults;
- ``configs``: the named configs of ``omnifm_jax/configs/`` with their main keys;
- ``config-keys``: every config key, its default and the comment beside it in ``DEFAULTS``;
- ``datasets``: the data-set registry, each data set's ``dataset_kwargs`` and their defaults;
- ``tasks``: the task registry: the data each task needs, its metrics and ``task_kwargs``;
- ``bad-input``: every bad input and the error it gives, from the tests that check them
  (``CONFIG_CASES`` and ``DATA_CASES`` of ``tests/test_validation.py``, run here to print the
  error they raise, and ``tests/bad_inputs.py``).
"""
from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import io
import os
import re
import tokenize
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["DocError", "BLOCKS", "find_root", "doc_files", "render", "bad_input_rows", "update", "add_parser"]

_BLOCK = re.compile(r"(<!-- generated:(?P<name>[\w-]+)[^>]*-->\n)(?P<body>.*?)(<!-- /generated:(?P=name) -->)",
                    re.DOTALL)


class DocError(ValueError):
    """A docs file without a checkout, a block of an unknown name, or a list with no block."""


def find_root(root: Optional[str] = None) -> Path:
    """The checkout whose docs to generate: ``root``, else the one this package lies in, else
    the current directory; it must hold ``README.md`` and ``docs/``."""
    here = Path(__file__).resolve().parent.parent
    for cand in ([Path(root)] if root else [here, Path.cwd()]):
        if (cand / "README.md").is_file() and (cand / "docs").is_dir():
            return cand.resolve()
    raise DocError(f"no checkout with README.md and docs/ at {root or f'{here} or {Path.cwd()}'} "
                   "(omnifm docs runs in a clone of the repository)")


def doc_files(root: Path) -> List[Path]:
    """The markdown files that may hold generated blocks (and whose links tests/test_docs.py checks)."""
    files = [root / "README.md", root / "CONTRIBUTING.md", *sorted((root / "docs").rglob("*.md")),
             *sorted((root / "experiments").rglob("README.md"))]
    return [f for f in files if f.is_file()]


# ----------------------------------------------------------------------------- helpers

def _cell(value: Any) -> str:
    """Text for one cell of a markdown table."""
    return " ".join(str(value).split()).replace("|", "\\|").replace("<", "&lt;")


def _table(head: Tuple[str, ...], rows: List[Tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def _summary(doc: Optional[str], sentence: bool = False) -> str:
    """A docstring's first paragraph (``sentence``: its first sentence) on one line, reST markup removed."""
    text = " ".join((doc or "").strip().split("\n\n")[0].split())
    if sentence:
        text = re.split(r"(?<=[a-z0-9)])\. (?=[A-Z])", text)[0].rstrip(".") + "."
    return _cell(re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "`"))


def _kwargs(values: Dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v!r}`" if v is not inspect.Parameter.empty else f"`{k}`"
                     for k, v in values.items()) or "none"


def _link(root: Path, where: Path, target: str, text: str) -> str:
    return f"[{text}]({Path(os.path.relpath(root / target, where.parent)).as_posix()})"


def _load(root: Path, relpath: str):
    """A module of the checkout that is not part of the package (tests/), imported by path."""
    path = root / relpath
    spec = importlib.util.spec_from_file_location("omnifm_docgen_" + path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------- the lists

def _algorithms(root: Path, where: Path) -> str:
    from omnifm_jax import algorithms
    from omnifm_jax.registry import ALGORITHMS

    rows = []
    for name in algorithms.available():
        tasks = ALGORITHMS.entry(name).meta.get("tasks")
        rows.append((f"`{name}`", _summary(inspect.getmodule(algorithms.get(name)).__doc__),
                     ", ".join(tasks) if tasks else "all", _kwargs(algorithms.hyperparameters(name))))
    return _table(("name", "what it is (its module)", "tasks", "`algorithm_kwargs` (defaults)"), rows)


def _configs(root: Path, where: Path) -> str:
    from omnifm_jax import config as config_lib

    rows = []
    for path in sorted(config_lib.CONFIG_DIR.glob("*.py")):
        if path.stem.startswith("_"):
            continue
        cfg = config_lib.load_config(path.stem)
        doc = ast.get_docstring(ast.parse(path.read_text()))
        parts = (f"`{cfg[k]}`" for k in ("algorithm", "task", "dataset", "backbone"))
        rows.append((f"`{path.stem}`", _summary(doc, sentence=True), *parts, str(cfg["num_clients"]),
                     str(cfg["rounds"])))
    return _table(("config", "what it is", "algorithm", "task", "dataset", "backbone", "clients", "rounds"), rows)


def _config_keys(root: Path, where: Path) -> str:
    from omnifm_jax import config as config_lib

    source = Path(config_lib.__file__).read_text()
    comments = {tok.start[0]: tok.string.lstrip("# ") for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    lines = {}
    for node in ast.walk(ast.parse(source)):
        target = getattr(node, "target", None) or (node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "DEFAULTS" and isinstance(node.value, ast.Dict):
            lines = {k.value: k.lineno for k in node.value.keys if isinstance(k, ast.Constant)}
    rows = [(f"`{k}`", f"`{v!r}`", _cell(comments.get(lines.get(k), ""))) for k, v in config_lib.DEFAULTS.items()]
    return _table(("key", "default", "meaning"), rows)


def _dataset_options(obj: Callable) -> Optional[Dict[str, Any]]:
    """The options a registered loader checks (``dataset_options`` / ``split_federate_options``
    in its body), with their defaults; None when it checks them some other way."""
    from omnifm_jax.data import options as opt

    tree = ast.parse(inspect.getsource(obj).strip())
    space = dict(vars(inspect.getmodule(obj)))
    value = lambda node: eval(compile(ast.Expression(node), "<docgen>", "eval"), space)  # noqa: E731
    for stmt in tree.body[0].body:  # the loader's own simple assignments (``allowed = (...)``)
        if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Name):
            try:
                space[stmt.targets[0].id] = value(stmt.value)
            except Exception:  # depends on the call's arguments: not an option list
                pass
    for node in ast.walk(tree):
        name = getattr(getattr(node, "func", None), "id", None)
        if name not in ("dataset_options", "split_federate_options"):
            continue
        kw = {k.arg: k.value for k in node.keywords}
        if name == "dataset_options":
            functions = [value(a) for a in node.args[2:]]
            allowed = value(kw["allowed"]) if "allowed" in kw else None
        else:
            functions = [value(node.args[2]), opt.federate]
            allowed = tuple(value(node.args[3] if len(node.args) > 3 else kw["allowed"])) + opt.FEDERATE_OPTIONS
        defaults = opt.defaults_of(*functions)
        return {k: defaults.get(k, inspect.Parameter.empty) for k in (allowed or defaults)}
    return None


def _datasets(root: Path, where: Path) -> str:
    from omnifm_jax.data.registry import DATASETS

    rows = []
    for name in DATASETS.available():
        entry = DATASETS.entry(name)
        module = inspect.getmodule(entry.obj)
        options = _dataset_options(entry.obj)
        rows.append((f"`{entry.meta.get('display', name)}`", _summary(module.__doc__),
                     _link(root, where, module.__name__.replace(".", "/") + ".py", module.__name__.split(".")[-1]),
                     "see its module" if options is None else _kwargs(options)))
    return _table(("name", "what it is (its module)", "module", "`dataset_kwargs` (defaults)"), rows)


def _tasks(root: Path, where: Path) -> str:
    from omnifm_jax.registry import TASKS

    rows = []
    for name in TASKS.available():
        info = TASKS.entry(name).meta["info"]
        metrics = ", ".join(f"`{m.key}`" + (" (headline)" if m.key == info.primary_metric else "")
                            for m in info.metrics)
        rows.append((f"`{name}`", _cell(info.needs), metrics, _kwargs(info.options)))
    return _table(("task", "data it needs", "metrics", "`task_kwargs` (defaults)"), rows)


def _flat(overrides: Dict[str, Any]) -> str:
    """``{"algorithm_kwargs": {"top_k": 9}}`` -> ``algorithm_kwargs.top_k=9``."""
    out = []
    for key, value in overrides.items():
        if isinstance(value, dict) and key.endswith("_kwargs"):
            out += [f"{key}.{k}={v!r}" for k, v in value.items()]
        else:
            out.append(f"{key}={value!r}")
    return ", ".join(out)


def _message(exc: BaseException, limit: int = 180) -> str:
    text = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return _cell(text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " …")


def _raised(fn: Callable[[], Any]) -> BaseException:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except Exception as exc:  # the case's error is what the row shows
            return exc
    raise DocError("a bad-input case of tests/test_validation.py raised nothing")


def bad_input_rows(root: Path) -> Dict[str, List[Tuple[str, str, Tuple[str, ...]]]]:
    """``group -> [(bad input, error, tests)]``: test_validation's cases (run here) first."""
    tv = _load(root, "tests/test_validation.py")
    catalogue = _load(root, "tests/bad_inputs.py")
    from omnifm_jax import config as config_lib
    from omnifm_jax import experiment
    from omnifm_jax.data.registry import load_federation

    groups: Dict[str, List[Tuple[str, str, Tuple[str, ...]]]] = {g: [] for g in catalogue.GROUPS}
    for what, overrides, _ in tv.CONFIG_CASES:
        exc = _raised(lambda: config_lib.validate(dict(config_lib.load_config(), **overrides)))
        groups["config"].append((f"{_cell(what)}: `{_flat(overrides)}`", _message(exc),
                                 (f"test_validation.py::test_bad_config_value[{what}]",)))
    fed = load_federation("synthetic", num_clients=3, seed=0, **tv.TINY)
    for what, corrupt, _ in tv.DATA_CASES:
        exc = _raised(lambda: experiment.validate_data(tv.tiny_cfg(), corrupt(fed)))
        groups["data"].append((_cell(what), _message(exc), (f"test_validation.py::test_bad_data[{what}]",)))
    for group, what, error, tests in catalogue.CASES:
        groups[group].append((what.replace("|", "\\|"), _cell(error), tuple(tests)))
    return groups


def _bad_input(root: Path, where: Path) -> str:
    catalogue = _load(root, "tests/bad_inputs.py")
    parts = []
    for group, rows in bad_input_rows(root).items():
        table = [(what, error, ", ".join(_link(root, where, "tests/" + t.split("::")[0], t.split("[")[0])
                                         for t in tests)) for what, error, tests in rows]
        parts.append(f"**{catalogue.GROUPS[group]}**\n\n" + _table(("bad input", "error", "test"), table))
    return "\n".join(parts)


#: Block name -> ``renderer(root, file the block is in) -> markdown``.
BLOCKS: Dict[str, Callable[[Path, Path], str]] = {
    "algorithms": _algorithms, "configs": _configs, "config-keys": _config_keys, "datasets": _datasets,
    "tasks": _tasks, "bad-input": _bad_input,
}


def render(name: str, root: Path, where: Path) -> str:
    """The markdown of block ``name`` for the file ``where`` (links are relative to it)."""
    if name not in BLOCKS:
        raise DocError(f"{where}: unknown generated block {name!r}; known: {sorted(BLOCKS)}")
    return BLOCKS[name](root, where)


def update(root: Path, *, check: bool = False) -> List[str]:
    """Regenerate every block under ``root`` (``check``: write nothing).

    Returns:
      ``"path [name]"`` of each block that differed from the code (and, unless ``check``, was
      rewritten).

    Raises:
      DocError: a block of an unknown name, or a list of :data:`BLOCKS` that no file holds.
    """
    stale, seen = [], set()
    for path in doc_files(root):
        text = path.read_text()
        cache: Dict[str, str] = {}

        def fill(m: re.Match) -> str:
            name = m.group("name")
            seen.add(name)
            if name not in cache:
                cache[name] = render(name, root, path)
            body = cache[name]
            if body != m.group("body"):
                stale.append(f"{path.relative_to(root)} [{name}]")
            return m.group(1) + body + m.group(4)

        new = _BLOCK.sub(fill, text)
        if new != text and not check:
            path.write_text(new)
    missing = sorted(set(BLOCKS) - seen)
    if missing:
        raise DocError(f"no docs file holds the generated block(s) {missing} "
                       "(add <!-- generated:NAME --> ... <!-- /generated:NAME --> where the list belongs)")
    return stale


def _run(args: argparse.Namespace) -> int:
    root = find_root(args.root)
    stale = update(root, check=args.check)
    for item in stale:
        print(("stale: " if args.check else "updated: ") + item)
    if args.check and stale:
        print("run `omnifm docs` to regenerate them")
        return 1
    if not stale:
        print(f"generated docs are current ({', '.join(sorted(BLOCKS))})")
    return 0


def add_parser(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Mount ``omnifm docs [--check] [--root DIR]``."""
    p = subparsers.add_parser("docs", help="regenerate the lists in the docs that come from the code "
                                            "(algorithms, configs, data sets, tasks, bad inputs)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 if a generated list is stale")
    p.add_argument("--root", default=None, help="the checkout (default: the one this package is in, else .)")
    p.set_defaults(func=_run)
    return p
