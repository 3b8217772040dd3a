"""Name -> algorithm factory. A new algorithm is one new file in this package that
decorates its factory with :func:`register`; the package imports every module in it."""
from __future__ import annotations

from typing import Callable, Dict

_FACTORIES: Dict[str, Callable] = {}


def register(name: str):
    def deco(factory):
        if name in _FACTORIES:
            raise ValueError(f"algorithm {name!r} registered twice")
        _FACTORIES[name] = factory
        return factory
    return deco


def available() -> list:
    return sorted(_FACTORIES)


def get(name: str) -> Callable:
    try:
        return _FACTORIES[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}; known: {', '.join(available())}") from None
