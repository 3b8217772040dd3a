"""One registration mechanism for the project's components: algorithms, tasks, backbones and
data sets. A component registers itself with a decorator in its own file
(``@BACKBONES.register("cnn")``); the first lookup of a kind imports every module of its
package, so adding a component is one new file and no edit elsewhere.

Discovery never imports a module that needs an optional extra: such a module either imports
the extra inside the function that needs it (``nibabel`` in ``data/nifti.py``), or is
not a component module and is named in its registry's ``skip`` (``data/tfds_builders.py``).
A module whose import fails leaves the registry undiscovered and raises an error that names
the module and, for a missing optional package, the extra that installs it; the next lookup
tries again instead of answering from a partial registry.

Components outside the package (a researcher's own algorithm, task, backbone or data set) live
in any module that registers them with the same decorators; a run names it in its config's
``imports`` (a module name or a ``.py`` path) and :func:`import_components` imports it before
anything is looked up (CONTRIBUTING.md has the four recipes)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

__all__ = ["EXTRAS", "ComponentImportError", "Entry", "Registry", "ALGORITHMS", "TASKS", "BACKBONES",
           "DATASETS", "import_components"]

#: Optional packages and the ``pip install 'omnifm-jax[EXTRA]'`` extra that brings each.
EXTRAS = {"tensorflow_datasets": "tfds", "tensorflow": "tf", "nibabel": "nifti",
          "nbclient": "test", "nbformat": "test"}


class ComponentImportError(ImportError):
    """A component module could not be imported during discovery."""


class Entry(NamedTuple):
    name: str
    obj: Any
    meta: Dict[str, Any]


class Registry:
    """Components of one kind (``"algorithm"``, ...), registered with :meth:`register`.

    ``package``: where components of this kind live; every module in it is imported on the
    first lookup (so a component file registers itself without being imported by name),
    except private modules (``_name``) and those named in ``skip`` (modules of the package
    that register nothing and need an optional extra).
    """

    def __init__(self, kind: str, package: Optional[str] = None, *, skip: Sequence[str] = ()):
        self.kind = kind
        self.package = package
        self.skip = frozenset(skip)
        self._entries: Dict[str, Entry] = {}
        self._discovered = package is None

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        """Decorator: ``@REG.register("name", key=value...)``; ``meta`` travels with it."""
        def deco(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, dict(meta))
            return obj
        return deco

    def modules(self) -> List[str]:
        """The modules discovery imports (full dotted names)."""
        package = importlib.import_module(self.package)
        return [f"{self.package}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                if not m.name.startswith("_") and m.name not in self.skip]

    def _discover(self) -> None:
        if self._discovered:
            return
        for name in self.modules():
            try:
                importlib.import_module(name)
            except ImportError as exc:
                missing = (getattr(exc, "name", None) or "").split(".")[0]
                hint = (f"; it needs the optional package {missing!r}: pip install 'omnifm-jax[{EXTRAS[missing]}]'"
                        if missing in EXTRAS else "")
                raise ComponentImportError(f"cannot list the {self.kind}s: importing {name} failed: "
                                           f"{type(exc).__name__}: {exc}{hint}") from exc
        # Only now: a failed import above leaves the registry undiscovered, so a later lookup
        # tries again rather than answering from the components imported so far.
        self._discovered = True

    def available(self) -> List[str]:
        self._discover()
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        self._discover()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.available())}") from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj


ALGORITHMS = Registry("algorithm", "omnifm_jax.algorithms")
TASKS = Registry("task", "omnifm_jax.tasks")
BACKBONES = Registry("backbone", "omnifm_jax.models")
# tfds_builders registers nothing and needs tensorflow-datasets: imported only by its users.
DATASETS = Registry("dataset", "omnifm_jax.data", skip=("tfds_builders",))


def import_components(modules: Sequence[str]) -> List[str]:
    """Import the modules that register a run's own components (a config's ``imports``).

    Args:
      modules: dotted module names (importable from ``sys.path``) or paths to ``.py`` files.
        A file is imported once per process under a name derived from its resolved path, so
        naming it again (a resumed run, a sweep) does not register its components twice.

    Returns:
      The names the modules are imported under (keys of ``sys.modules``).

    Raises:
      ComponentImportError: a module that cannot be found or whose import fails, named.
    """
    if isinstance(modules, str) or not all(isinstance(m, str) and m for m in modules):
        raise ComponentImportError(f"imports must be a list of module names or .py paths, got {modules!r}")
    # The package's own components first: a run's module that reuses one of their names is then
    # the import that fails, named, rather than a package module discovered later.
    for registry in (ALGORITHMS, TASKS, BACKBONES, DATASETS) if modules else ():
        registry._discover()
    names = []
    for module in modules:
        try:
            if module.endswith(".py"):
                path = Path(module).expanduser().resolve()
                if not path.is_file():
                    raise FileNotFoundError(f"no file {path}")
                name = f"omnifm_user_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
                if name not in sys.modules:
                    spec = importlib.util.spec_from_file_location(name, path)
                    loaded = importlib.util.module_from_spec(spec)
                    sys.modules[name] = loaded
                    try:
                        spec.loader.exec_module(loaded)
                    except BaseException:
                        del sys.modules[name]
                        raise
            else:
                name = importlib.import_module(module).__name__
        except Exception as exc:  # noqa: BLE001 - any failure of the user's module is reported as one
            raise ComponentImportError(f"imports: cannot import {module!r}: {type(exc).__name__}: {exc}") from exc
        names.append(name)
    return names
