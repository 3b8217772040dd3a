"""Clients sharded across devices: the client axis of the stacked states and data is
split over a 1-D ``jax.sharding.Mesh``; the server state is replicated.

The round itself does not change: ``jax.jit`` propagates the input shardings, so each
device trains its own clients and XLA inserts the collectives for the participant gather
and the aggregation. Arrays are built with ``jax.make_array_from_callback`` from the
host copy every process holds (federations are built deterministically from the seed),
so the same code runs multi-host after ``jax.distributed.initialize()``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from omnifm_jax.federated import FederatedState

__all__ = ["CLIENT_AXIS", "client_mesh", "shard_clients", "replicate", "shard_state"]

CLIENT_AXIS = "clients"


def client_mesh(devices: Optional[Sequence[Any]] = None) -> Mesh:
    """A 1-D mesh named ``"clients"`` over ``devices`` (default: all devices, all hosts)."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(np.array(devices), (CLIENT_AXIS,))


def _put(x, sharding: NamedSharding):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(_put(jax.random.key_data(x), sharding),
                                        impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_clients(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on ``mesh`` split along its leading (client) axis."""
    n = mesh.devices.size

    def one(x):
        if np.ndim(x) == 0 or np.shape(x)[0] % n:
            raise ValueError(f"cannot split a leading axis of {np.shape(x)[:1]} clients over {n} devices: "
                             f"use a number of clients divisible by {n}")
        return _put(x, NamedSharding(mesh, P(CLIENT_AXIS)))

    return jax.tree_util.tree_map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Put every leaf of ``tree`` on every device of ``mesh``."""
    return jax.tree_util.tree_map(lambda x: _put(x, NamedSharding(mesh, P())), tree)


def shard_state(state: FederatedState, mesh: Mesh) -> FederatedState:
    """Clients split over the mesh; round, server state and key replicated."""
    return FederatedState(round=replicate(state.round, mesh), server=replicate(state.server, mesh),
                          clients=shard_clients(state.clients, mesh), key=replicate(state.key, mesh))
