"""One registration mechanism for the project's components: algorithms, tasks, backbones and
data sets. A component registers itself with a decorator in its own file
(``@BACKBONES.register("cnn")``); the first lookup of a kind imports every module of its
package, so adding a component is one new file and no edit elsewhere."""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Dict, List, NamedTuple, Optional


class Entry(NamedTuple):
    name: str
    obj: Any
    meta: Dict[str, Any]


class Registry:
    """Components of one kind (``"algorithm"``, ...), registered with :meth:`register`.

    ``package``: where components of this kind live; every module in it is imported on the
    first lookup (so a component file registers itself without being imported by name).
    """

    def __init__(self, kind: str, package: Optional[str] = None):
        self.kind = kind
        self.package = package
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

    def _discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{module.name}")

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
DATASETS = Registry("dataset", "omnifm_jax.data")
