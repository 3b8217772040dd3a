"""One registration mechanism for the project's components (algorithms, and the other kinds
as they move over): a name -> object table filled by a decorator in the component's own
file, so adding one is one new file and no edit elsewhere."""
from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple


class Entry(NamedTuple):
    name: str
    obj: Any
    meta: Dict[str, Any]


class Registry:
    """Components of one kind (``"algorithm"``, ...), registered with :meth:`register`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}

    def register(self, name: str, **meta: Any) -> Callable[[Any], Any]:
        """Decorator: ``@REG.register("name", key=value...)``; ``meta`` travels with it."""
        def deco(obj):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = Entry(name, obj, dict(meta))
            return obj
        return deco

    def available(self) -> List[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.available())}") from None

    def get(self, name: str) -> Any:
        return self.entry(name).obj
