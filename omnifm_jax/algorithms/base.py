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
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp


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
    init_server: Callable[..., Any]
    init_client: Callable[..., Any]
    client_update: Callable[..., ClientResult]
    server_update: Callable[..., Any]
    predict: Callable[..., Any]
    local_steps: Callable[[Any], Any] = _no_steps
    inspect: Optional[Callable[..., Any]] = None
