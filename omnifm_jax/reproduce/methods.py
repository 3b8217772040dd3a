"""The methods the tables compare: display name, row key, and the overrides that select the
algorithm with the hyper-parameters the tables use. Written once here; every table file
takes its rows from :func:`method`.

The papers give no hyper-parameters for the baselines. Where PFLlib's default switches a
method off (a weight of 0) a usual value is set: FedProx ``mu=0.01``, Ditto ``mu=0.1``, MOON
``contrastive_weight=1.0`` (MOON's value for CIFAR-100), GPFL ``lambda_reg=0.01,
weight_decay=0.1`` (GPFL's scripts: ``lamda=0.01, mu=0.1``).
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

from omnifm_jax.checks import ConfigError

__all__ = ["Method", "METHODS", "method"]


class Method(NamedTuple):
    """A compared method: ``label`` (as the papers print it), ``key`` (the row key: the
    registered algorithm's name, or a variant's), ``overrides`` (``algorithm=...`` and its
    hyper-parameters)."""
    label: str
    key: str
    overrides: Tuple[str, ...]

    @property
    def algorithm(self) -> str:
        """The registered algorithm's name (its ``algorithm=`` override)."""
        return next(o.split("=", 1)[1] for o in self.overrides if o.startswith("algorithm="))


def _m(label: str, algorithm: str, *kwargs: str, key: str = "") -> Method:
    return Method(label, key or algorithm,
                  (f"algorithm={algorithm}",) + tuple(f"algorithm_kwargs.{kw}" for kw in kwargs))


def _activated() -> Tuple[str, ...]:
    """OmniFM's switches of the shipped ``real4_mechanism`` config (the mechanism study's
    "activated" variant, docs/method.md), read from that config so they are written once."""
    from omnifm_jax.configs import real4_mechanism

    return tuple(f"{k}={v}" for k, v in real4_mechanism.get_config()["algorithm_kwargs"].items())


METHODS: Tuple[Method, ...] = (
    _m("FedAvg", "fedavg"),
    _m("FedProx", "fedprox", "mu=0.01"),
    _m("Ditto", "ditto", "mu=0.1"),
    _m("SCAFFOLD", "scaffold"),
    _m("MOON", "moon", "contrastive_weight=1.0"),
    _m("GPFL", "gpfl", "lambda_reg=0.01", "weight_decay=0.1"),
    _m("FedDyn", "feddyn"),
    _m("FedRep", "fedrep"),
    _m("FedPer", "fedper"),
    _m("OmniFM", "omnifm"),
    _m("OmniFM (activated)", "omnifm", *_activated(), key="omnifm_activated"),
    _m("Local", "local"),
    _m("FedMEPD", "fedmepd"),
)


def method(name: str) -> Method:
    """The method by display name or key (case-insensitive)."""
    for m in METHODS:
        if name.lower() in (m.label.lower(), m.key):
            return m
    raise ConfigError(f"unknown method {name!r}; methods: {', '.join(m.label for m in METHODS)}")
