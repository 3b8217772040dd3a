"""The interfaces every federated algorithm implements.

An algorithm is a value (after optax's ``GradientTransformation`` and fedjax's
``FederatedAlgorithm``): a NamedTuple of pure functions. The engine
(:mod:`omnifm_jax.federated`) maps ``client_update`` over the participants and calls
``server_update`` with what they uploaded -- and nothing else: the server never sees a
client's personal state or data (the privacy boundary is the signature).

The pieces most algorithms are built from live in modules named for what they do:
:mod:`~omnifm_jax.algorithms.labels` (which variables are shared: path rules),
:mod:`~omnifm_jax.algorithms.local_training` (PFLlib's local minibatch SGD loop),
:mod:`~omnifm_jax.algorithms.aggregation` (weighted means, server optimizers) and
:mod:`~omnifm_jax.algorithms.sgd` (personalised local SGD with hooks).
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional, Protocol, Tuple

import jax
import jax.numpy as jnp

__all__ = ["ClientData", "ClientResult", "FederatedAlgorithm", "InitServerFn", "InitClientFn",
           "ClientUpdateFn", "ServerUpdateFn", "PredictFn", "LocalStepsFn", "InspectFn"]

#: A pytree of arrays (parameters, optimizer states, algorithm slots, uploads).
PyTree = Any


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ClientData:
    """One client's view of a ragged split (see :class:`omnifm_jax.data.ClientArrays`).

    Attributes:
      x: uint8[N, H, W, C] inputs of ALL clients of the split (not copied per client).
      y: int32[N] labels or uint8[N, H2, W2, C] targets of all clients.
      offset: int32[] first row of this client.
      n: int32[] number of this client's samples (rows ``offset .. offset + n - 1``).
      capacity: static; the largest client's ``n`` (size of the shuffling buffer).
    """
    x: jax.Array
    y: jax.Array
    offset: jax.Array
    n: jax.Array
    capacity: int = dataclasses.field(metadata=dict(static=True), default=1)


class ClientResult(NamedTuple):
    """What ``client_update`` returns.

    Attributes:
      state: the client's new personal state (stays on the client).
      upload: what crosses to the server (shared-parameter update, spectral embedding, ...).
      metrics: scalars for the training log (mean loss, steps); never given to the server.
    """
    state: Any
    upload: Any
    metrics: Any


class InitServerFn(Protocol):
    def __call__(self, key: jax.Array, x_example: jax.Array) -> PyTree:
        """The server state (shared parameters, server optimizer state, bank, ...)."""


class InitClientFn(Protocol):
    def __call__(self, key: jax.Array, server_state: PyTree, x_example: jax.Array) -> PyTree:
        """ONE client's personal state."""


class ClientUpdateFn(Protocol):
    def __call__(self, server_state: PyTree, client_state: PyTree, data: ClientData,
                 key: jax.Array) -> ClientResult:
        """ONE client's round: local training from the broadcast state."""


class ServerUpdateFn(Protocol):
    def __call__(self, server_state: PyTree, uploads: PyTree, weights: jax.Array) -> PyTree:
        """The new server state from the uploads stacked over participants (weight 0: ignore)."""


class PredictFn(Protocol):
    def __call__(self, server_state: PyTree, client_state: PyTree, x: jax.Array,
                 mask: jax.Array) -> jax.Array:
        """The client's personalised prediction on ``x`` (``mask`` marks real samples)."""


class LocalStepsFn(Protocol):
    def __call__(self, n: jax.Array) -> jax.Array:
        """Local steps a client with ``n`` samples runs in a round."""


class InspectFn(Protocol):
    def __call__(self, server_state: PyTree, client_state: PyTree, x: jax.Array, mask: jax.Array, *,
                 probe: Any = None, context: Any = None) -> Tuple[Any, Any, PyTree]:
        """``(model_output, aux, intermediates)`` of the client's model in evaluation mode."""


def _no_steps(n):
    return jnp.zeros_like(n)


class FederatedAlgorithm(NamedTuple):
    """A federated algorithm as a value.

    Attributes:
      name: short name.
      init_server: ``(key, x_example f32[1, H, W, C]) -> server_state``.
      init_client: ``(key, server_state, x_example) -> client_state`` for ONE client. The
        engine passes every client the key it gave ``init_server`` (all clients start
        from ONE initial model, as in PFLlib) unless asked for independent inits.
      client_update: ``(server_state, client_state, ClientData, key) -> ClientResult`` for ONE client.
      server_update: ``(server_state, uploads stacked over participants, weights f32[m]) -> server_state``;
        weight 0 means "ignore this participant" (dropped out, faulty or not sampled).
      predict: ``(server_state, client_state, x f32[B, H, W, C], mask bool[B]) -> prediction``
        with the client's personalised model (evaluation).
      local_steps: ``n int32[...] -> int32[...]`` local steps a client with ``n`` samples
        runs in a round (the engine groups clients of similar work with it).
      inspect: optional ``(server_state, client_state, x, mask, *, probe=None, context=None)
        -> (model_output, aux, intermediates)``: the client's model in evaluation mode with
        its sown intermediates, a model ``probe`` and another model context (OmniFM: the
        bank); used by :mod:`omnifm_jax.diagnostics`.
    """
    name: str
    init_server: InitServerFn
    init_client: InitClientFn
    client_update: ClientUpdateFn
    server_update: ServerUpdateFn
    predict: PredictFn
    local_steps: LocalStepsFn = _no_steps
    inspect: Optional[InspectFn] = None
