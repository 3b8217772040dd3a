"""Checking a data set's options (``dataset_kwargs``) before any file is read: unknown names
and values of the wrong type are refused with a message naming the data set, the option, the
expected type and the value (a list where a number belongs would otherwise surface as a
``TypeError`` deep inside a partition).

Every registered loader checks its options here: :func:`dataset_options`, or, for a pooled
data set made into clients by :func:`~omnifm_jax.data.federation.federate`,
:func:`split_federate_options` (its own options and the partition's, checked together)."""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from omnifm_jax.checks import ConfigError, is_int, is_number

from .federation import federate

__all__ = ["RUN_PARAMETERS", "FEDERATE_OPTIONS", "defaults_of", "dataset_options", "split_federate_options"]

#: Parameters of a loader that the run sets itself, never ``dataset_kwargs``.
RUN_PARAMETERS = ("num_clients", "seed", "data")

#: Options of :func:`~omnifm_jax.data.federation.federate` (partition and train/test split)
#: that a pooled data set accepts besides its own.
FEDERATE_OPTIONS = ("partition", "alpha", "classes_per_client", "balance", "min_size", "test_fraction", "dedup")


def defaults_of(*functions: Callable) -> Dict[str, Any]:
    """Keyword parameters of ``functions`` and their defaults (later functions win)."""
    out: Dict[str, Any] = {}
    for fn in functions:
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in RUN_PARAMETERS:
                out[p.name] = p.default
    return out


def _kind(default: Any) -> Optional[tuple[str, Callable[[Any], bool]]]:
    """What a value must be, judged by the parameter's default (None: anything)."""
    if isinstance(default, bool):
        return "True or False", lambda v: isinstance(v, bool)
    if is_int(default):
        return "an integer", is_int
    if isinstance(default, float):
        return "a number", lambda v: is_number(v) or v != v  # NaN is a number (checked by the loader)
    if isinstance(default, str):
        return "a string", lambda v: isinstance(v, str)
    if isinstance(default, (tuple, list)):
        return "a list", lambda v: isinstance(v, (tuple, list, str))
    return None


def dataset_options(name: str, kw: Dict[str, Any], *functions: Callable,
                    allowed: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """``kw`` checked against the options of data set ``name``.

    ``allowed``: the option names (default: every keyword parameter of ``functions`` except
    :data:`RUN_PARAMETERS`); their types are judged by the defaults in ``functions``
    (an option whose default is None may take any value; the loader checks it).
    Raises :class:`ConfigError` (a ``ValueError``) naming the first problem.
    """
    defaults = defaults_of(*functions)
    names = sorted(defaults if allowed is None else allowed)
    # A loader that forwards **kwargs decides itself which names it takes.
    open_ended = allowed is None and any(p.kind == p.VAR_KEYWORD for fn in functions
                                         for p in inspect.signature(fn).parameters.values())
    unknown = [] if open_ended else sorted(set(kw) - set(names))
    if unknown:
        raise ConfigError(f"dataset {name!r}: unknown option(s) {unknown}; allowed: {names}")
    for key, value in kw.items():
        kind = _kind(defaults.get(key, inspect.Parameter.empty))
        if kind is not None and not kind[1](value):
            raise ConfigError(f"dataset {name!r}: dataset_kwargs.{key} must be {kind[0]} "
                              f"(default {defaults[key]!r}), got {value!r} ({type(value).__name__})")
    return dict(kw)


def split_federate_options(name: str, kw: Dict[str, Any], loader: Callable,
                           allowed: Sequence[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """``(federate options, loader options)`` of a pooled data set: ``kw`` checked (names and
    types) against ``loader``'s parameters ``allowed`` and :data:`FEDERATE_OPTIONS` of
    :func:`~omnifm_jax.data.federation.federate`, then split between the two."""
    kw = dataset_options(name, kw, loader, federate, allowed=tuple(allowed) + FEDERATE_OPTIONS)
    fed_kw = {k: kw.pop(k) for k in FEDERATE_OPTIONS if k in kw}
    return fed_kw, kw
