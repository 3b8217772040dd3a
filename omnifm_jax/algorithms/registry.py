"""Name -> algorithm factory, and each algorithm's own hyper-parameters.

A new algorithm is one new file in this package whose factory is decorated with
:func:`register`; the package imports every module in it. A factory takes the engine's
arguments (``task, backbone, optimizer, local_epochs, batch_size``), the run's protocol
and context values it wants (any of ``drop_last, aggregate_bn_stats, weight_init, lr, num_clients``,
filled from the run config; ``server``, the federation's server-side split), and its own
hyper-parameters as keyword arguments with defaults: those defaults are the algorithm's
defaults, and ``validate(hparams, context)`` in the same file checks them (``algorithm_kwargs``
in a config reaches them; an unknown key stops a run before any work, and a key that was
renamed, ``register(..., renamed={old: new})``, stops it naming the new one).
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Optional

from omnifm_jax.checks import ConfigError
from omnifm_jax.registry import ALGORITHMS

__all__ = ["ENGINE_ARGS", "RUN_ARGS", "DATA_ARGS", "register", "available", "supports", "get", "unchecked",
           "hyperparameters", "renamed", "run_args", "check"]

#: Arguments every factory gets from the engine / experiment, not hyper-parameters.
ENGINE_ARGS = ("task", "backbone", "optimizer", "local_epochs", "batch_size")
#: Run-config values a factory receives when its signature names them (not set in algorithm_kwargs).
RUN_ARGS = ("drop_last", "aggregate_bn_stats", "weight_init", "lr", "num_clients")
#: Arguments filled from the federation, not the config (``server``: its server-side split).
DATA_ARGS = ("server",)


def register(name: str, *, validate: Optional[Callable[[Dict[str, Any], Dict[str, Any]], None]] = None,
             tasks: Optional[tuple] = None, renamed: Optional[Dict[str, str]] = None):
    """Decorator for an algorithm factory; ``validate(hparams, context)`` raises
    :class:`~omnifm_jax.checks.ConfigError` for impossible hyper-parameters (``hparams``:
    every hyper-parameter, defaults filled in; ``context``: ``num_clients``,
    ``participants`` when known). ``tasks``: the only tasks the algorithm runs
    (``None``: every task), checked with the config before any work. ``renamed``: former
    hyper-parameter names and their new ones (``{"mu": "contrastive_weight"}``): refused,
    naming the new one."""
    def deco(factory):
        @functools.wraps(factory)
        def checked(**kwargs):
            check(name, {k: v for k, v in kwargs.items() if k not in ENGINE_ARGS + RUN_ARGS + DATA_ARGS},
                  {"num_clients": kwargs.get("num_clients")})
            return factory(**kwargs)

        ALGORITHMS.register(name, factory=factory, validate=validate, tasks=tasks,
                            renamed=dict(renamed or {}))(checked)
        return checked
    return deco


def available(task: Optional[str] = None) -> list:
    """Registered algorithm names; with ``task``, those that run it."""
    names = ALGORITHMS.available()
    return names if task is None else [n for n in names if supports(n, task)]


def supports(name: str, task: str) -> bool:
    """Whether algorithm ``name`` runs ``task``."""
    tasks = ALGORITHMS.entry(name).meta.get("tasks")
    return tasks is None or task in tasks


def get(name: str) -> Callable:
    return ALGORITHMS.get(name)


def unchecked(name: str) -> Callable:
    """The factory without its hyper-parameter check, for values already checked and now
    traced (a sweep's run axis: a check on a tracer cannot decide)."""
    ALGORITHMS.get(name)  # unknown name: the registry's error
    return ALGORITHMS.entry(name).meta["factory"]


def hyperparameters(name: str) -> Dict[str, Any]:
    """The algorithm's own keyword arguments and their defaults."""
    params = inspect.signature(ALGORITHMS.entry(name).meta["factory"]).parameters
    return {k: p.default for k, p in params.items()
            if k not in ENGINE_ARGS + RUN_ARGS + DATA_ARGS and p.default is not inspect.Parameter.empty}


def renamed(name: str) -> Dict[str, str]:
    """The algorithm's former hyper-parameter names and their new ones (refused by :func:`check`)."""
    return dict(ALGORITHMS.entry(name).meta.get("renamed") or {})


def run_args(name: str) -> tuple:
    """Which of :data:`RUN_ARGS` the factory takes."""
    params = inspect.signature(ALGORITHMS.entry(name).meta["factory"]).parameters
    return tuple(k for k in RUN_ARGS if k in params)


def check(name: str, hparams: Dict[str, Any], context: Optional[Dict[str, Any]] = None) -> None:
    """Renamed keys, unknown keys, then the algorithm's own ``validate``: :class:`ConfigError`
    naming the algorithm and the key (and, for a renamed key, its new name)."""
    if not isinstance(hparams, dict):
        raise ConfigError(f"algorithm_kwargs must be a dict, got {type(hparams).__name__}")
    old = renamed(name)
    for key in sorted(set(hparams) & set(old)):
        raise ConfigError(f"algorithm {name!r}: hyper-parameter {key!r} was renamed to {old[key]!r} "
                          f"(algorithm_kwargs.{old[key]})")
    defaults = hyperparameters(name)
    unknown = sorted(set(hparams) - set(defaults))
    if unknown:
        accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise ConfigError(f"algorithm {name!r} takes no hyper-parameter(s) {unknown}; "
                          f"its hyper-parameters (defaults): {accepted}")
    validate = ALGORITHMS.entry(name).meta["validate"]
    if validate is not None:
        try:
            validate({**defaults, **hparams}, dict(context or {}))
        except ConfigError as e:
            raise ConfigError(f"algorithm {name!r}: {e}") from None
