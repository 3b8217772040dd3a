"""Value checks shared by the run configuration and the components' own hyper-parameters
(algorithms, later tasks, backbones, data sets): each raises :class:`ConfigError` with a
message that names the key, what it must be and what it got."""
from __future__ import annotations

from typing import Any, Sequence

__all__ = ["ConfigError", "require", "is_int", "is_number", "integer", "boolean", "interval", "finite",
           "choice"]


class ConfigError(ValueError):
    """A configuration is invalid (unknown key, impossible value)."""


def require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def integer(name: str, v: Any, lo: int) -> None:
    """An integer ``>= lo``."""
    require(is_int(v) and v >= lo, f"{name} must be an integer >= {lo}, got {v!r}")


def boolean(name: str, v: Any) -> None:
    require(isinstance(v, bool), f"{name} must be True or False, got {v!r}")


def interval(name: str, v: Any, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> None:
    """A number in ``[lo, hi]``, either end open."""
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    ok = is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    require(ok, f"{name} must be a number in {text}, got {v!r}")


def finite(name: str, v: Any, *, positive: bool) -> None:
    """A finite number ``> 0`` (``positive``) or ``>= 0``."""
    ok = is_number(v) and v < float("inf") and (v > 0 if positive else v >= 0)
    require(ok, f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {v!r}")


def choice(name: str, v: Any, options: Sequence[Any]) -> None:
    require(v in options, f"{name} must be one of {options!r}, got {v!r}")
