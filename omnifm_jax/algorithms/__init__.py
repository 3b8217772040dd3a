"""Federated algorithms, each a factory in its own module returning a FederatedAlgorithm.

Every factory takes ``task, backbone, optimizer, local_epochs, batch_size`` and its own
hyper-parameters as keyword arguments: ``build("fedavg", task=..., backbone=..., ...)``.
:func:`hyperparameters` lists an algorithm's own keyword arguments and their defaults.
"""
from omnifm_jax.algorithms.base import ClientData, ClientResult, FederatedAlgorithm
from omnifm_jax.algorithms.registry import (
    available,
    check,
    get,
    hyperparameters,
    register,
    renamed,
    run_args,
    supports,
    unchecked,
)


def build(name: str, **kwargs) -> FederatedAlgorithm:
    """Build the algorithm ``name`` with the factory's keyword arguments."""
    return get(name)(**kwargs)


__all__ = ["ClientData", "ClientResult", "FederatedAlgorithm", "available", "build", "check", "get", "supports",
           "unchecked", "hyperparameters", "register", "renamed", "run_args"]
