"""Where tables come from: table files, one per table, found in folders.

A table file is a Python file (its name not starting with ``_``) that defines ``TABLE`` (a
:class:`~omnifm_jax.reproduce.spec.Table`) or ``TABLES`` (several). The default folders are
``experiments/paper`` and ``experiments/studies`` of the checkout that holds this package
(:func:`default_dirs`); ``--tables DIR`` adds a folder. The files of one folder load as the
modules of one package, so a table file may import its neighbours (``from .table8 import
TASK_COLUMNS``) and helper files (``_common.py``).

An installed package without its checkout has no default folder: :func:`missing_text` says
where it looked and how to pass ``--tables``.
"""
from __future__ import annotations

import hashlib
import importlib
import re
import sys
import types
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce.spec import Table

__all__ = ["default_dirs", "load_dir", "find_tables", "get_table", "unavailable_reason", "available_tables",
           "missing_text", "TABLES"]

_CACHE: Dict[Tuple[str, Tuple[Tuple[str, int, int], ...]], Dict[str, Table]] = {}


def default_dirs() -> List[Path]:
    """``experiments/paper`` and ``experiments/studies`` next to the package's folder (they
    exist in a checkout, not in an installed package)."""
    import omnifm_jax

    root = Path(omnifm_jax.__file__).resolve().parents[1] / "experiments"
    return [root / "paper", root / "studies"]


def _natural(name: str):
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def load_dir(path: Union[str, Path]) -> Dict[str, Table]:
    """The tables defined by the files of ``path`` (reloaded when a file changes)."""
    path = Path(path).resolve()
    if not path.is_dir():
        raise ConfigError(f"table folder {path} does not exist")
    files = sorted(p for p in path.glob("*.py") if not p.name.startswith("_"))
    key = (str(path), tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(path.glob("*.py"))))
    if key in _CACHE:
        return _CACHE[key]
    pkg = "omnifm_tables_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    for name in [m for m in sys.modules if m == pkg or m.startswith(pkg + ".")]:
        del sys.modules[name]  # a file changed: load the folder afresh
    package = types.ModuleType(pkg, f"table files of {path}")
    package.__path__ = [str(path)]
    sys.modules[pkg] = package
    found: Dict[str, Table] = {}
    for file in files:
        try:
            module = importlib.import_module(f"{pkg}.{file.stem}")
        except Exception as exc:
            raise ConfigError(f"table file {file} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        tables = list(getattr(module, "TABLES", ())) + ([module.TABLE] if hasattr(module, "TABLE") else [])
        for t in tables:
            if not isinstance(t, Table):
                raise ConfigError(f"table file {file}: TABLE / TABLES must hold Table objects, got {type(t)}")
            try:
                t.check()
            except ValueError as exc:
                raise ConfigError(f"table file {file}: {exc}") from None
            if t.name in found:
                raise ConfigError(f"table {t.name!r} is defined twice: {found[t.name].source} and {file}")
            found[t.name] = replace(t, source=str(file))
    _CACHE[key] = found
    return found


def find_tables(dirs: Sequence[Union[str, Path]] = ()) -> Dict[str, Table]:
    """Every table of the default folders that exist and of ``dirs`` (which must exist),
    sorted (paper tables first, then by name)."""
    folders = [d for d in default_dirs() if d.is_dir()] + [Path(d) for d in dirs]
    seen, out = set(), {}
    for folder in folders:
        if folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        for name, t in load_dir(folder).items():
            if name in out:
                raise ConfigError(f"table {name!r} is defined twice: {out[name].source} and {t.source}")
            out[name] = t
    return dict(sorted(out.items(), key=lambda kv: (kv[1].kind != "paper", _natural(kv[0]))))


def missing_text(dirs: Sequence[Union[str, Path]] = ()) -> str:
    """Why no table was found: where the search looked, and how to name a folder."""
    looked = [str(d) for d in default_dirs()] + [str(d) for d in dirs]
    return ("no table files found; looked in " + ", ".join(looked) + " (the experiments/ folder of a checkout; an "
            "installed package has none). Pass a folder of table files with --tables DIR, e.g. --tables "
            "path/to/omnifm-jax/experiments/paper")


def get_table(name: str, dirs: Sequence[Union[str, Path]] = ()) -> Table:
    """The table ``name`` (ConfigError naming the known ones, or where the search looked)."""
    tables = find_tables(dirs)
    if not tables:
        raise ConfigError(missing_text(dirs))
    if name not in tables:
        raise ConfigError(f"unknown table {name!r}; tables: {', '.join(tables)}")
    return tables[name]


def unavailable_reason(table: Table) -> Optional[str]:
    """None if the table can run here, else why not (its task is not registered in
    :data:`omnifm_jax.registry.TASKS`)."""
    from omnifm_jax.registry import TASKS

    tasks = TASKS.available()
    if table.task is None or table.task in tasks:
        return None
    return f"{table.name} needs the task {table.task!r}, which is not registered here (tasks: {list(tasks)})"


def available_tables(dirs: Sequence[Union[str, Path]] = ()) -> Dict[str, Optional[str]]:
    """``{table: None}`` if it can run here, else ``{table: why not}``."""
    return {name: unavailable_reason(t) for name, t in find_tables(dirs).items()}


class _DefaultTables(Mapping):
    """The tables of the default folders, found on first use."""

    def _tables(self) -> Dict[str, Table]:
        return find_tables()

    def __getitem__(self, name: str) -> Table:
        return self._tables()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tables())

    def __len__(self) -> int:
        return len(self._tables())

    def __repr__(self) -> str:
        return f"TABLES({list(self)})"


#: ``{name: Table}`` of the default folders (looked up when used).
TABLES: Mapping = _DefaultTables()
