"""Personalised local SGD with partial sharing: the family FedAvg, FedPer, FedBN, Local and
OmniFM belong to. Each of those is a few lines that call :func:`personalized_sgd` with its
path rules and hooks.

Round protocol for a participant k:
  1. ``variables = combine(server.params, personal_k)`` (download the shared part);
  2. local training on the client's data (:func:`base.local_train`), loss =
     task loss + the algorithm's auxiliary loss;
  3. upload ``Upload(shared=<trained shared part>, extra=<algorithm's extra>)``.
The server sets its shared params to the mean of the uploads weighted by ``n_k`` (FedAvg
aggregation, PFLlib's ``receive_models``/``aggregate_parameters``) and updates its extra
state (OmniFM: the knowledge bank).

Shared by default: the ``params`` collection minus the personal patterns. BatchNorm
running statistics stay on each client (PFLlib aggregates ``parameters()`` only);
``aggregate_bn_stats=True`` averages them too.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from omnifm_jax.algorithms import base
from omnifm_jax.tasks.base import Task


class ServerState(NamedTuple):
    params: Any  # shared variables (None where personal)
    extra: Any   # algorithm's own server state (e.g. the knowledge bank), or None


class ClientState(NamedTuple):
    personal: Any   # personal variables (None where shared)
    opt_state: Any  # the client optimizer's state


class Upload(NamedTuple):
    shared: Any  # trained shared variables (None for algorithms that do not communicate)
    extra: Any   # e.g. OmniFM's spectral embedding and retrieval counts


def _no_aux_loss(aux, mask, extra):
    del aux, mask, extra
    return jnp.zeros((), jnp.float32), {}


def personalized_sgd(*, name: str, model: nn.Module, task: Task, optimizer: optax.GradientTransformation,
                     personal_patterns: Sequence[str], local_epochs: int, batch_size: int,
                     drop_last: bool = True, aggregate_bn_stats: bool = False,
                     communicate: bool = True,
                     init_extra: Callable[[jax.Array], Any] = lambda key: None,
                     model_context: Callable[[Any], Any] = lambda extra: None,
                     aux_loss: Callable[[Any, jax.Array, Any], Any] = _no_aux_loss,
                     stats_init: Callable[[Any], Any] = lambda extra: {},
                     upload_extra: Callable[[Any, Any], Any] = lambda stats, extra: None,
                     update_extra: Callable[[Any, Any, jax.Array], Any] = lambda extra, up, w: extra,
                     ) -> base.FederatedAlgorithm:
    """Build a partial-sharing local-SGD algorithm.

    Args:
      name: algorithm name.
      model: flax module ``(x, context, train=, mask=) -> (output, aux)``.
      task: the task (loss, targets, prediction, input scaling).
      optimizer: the client optimizer (PFLlib uses plain SGD).
      personal_patterns: regexes on variable paths (``"params/head/..."``) that stay personal.
      local_epochs, batch_size: local work per round.
      drop_last: skip the last partial batch of each epoch (PFLlib); False trains on it
        with its empty places masked out.
      aggregate_bn_stats: also average BatchNorm running statistics (PFLlib keeps them local).
      communicate: False for Local (nothing is uploaded, the server never changes).
      init_extra: ``key -> extra server state``.
      model_context: ``extra -> the model's second argument`` (OmniFM: the bank).
      aux_loss: ``(aux, mask, extra) -> (scalar loss, per-step stats)``.
      stats_init: ``extra -> zero stats`` (same structure as aux_loss's stats).
      upload_extra: ``(summed stats, extra) -> extra upload``.
      update_extra: ``(extra, stacked extra uploads, weights) -> new extra``.
    """
    if local_epochs < 1 or batch_size < 1:
        raise ValueError(f"local_epochs and batch_size must be >= 1, got {local_epochs}, {batch_size}")
    shared_collections = ("params", "batch_stats") if aggregate_bn_stats else ("params",)

    def split(variables):
        return base.partition(variables, base.personal_mask(variables, personal_patterns, shared_collections))

    def initial_variables(key, extra, x_example):
        k_model, _ = jax.random.split(key)
        return model.init(k_model, x_example, model_context(extra), train=False)

    def init_server(key, x_example):
        _, k_extra = jax.random.split(key)
        extra = init_extra(k_extra)
        shared, _ = split(initial_variables(key, extra, x_example))
        return ServerState(params=shared, extra=extra)

    def init_client(key, server, x_example):
        # Given the server's key, this is the personal part of the server's initial model.
        _, personal = split(initial_variables(key, server.extra, x_example))
        full = base.combine(server.params, personal)
        return ClientState(personal=personal, opt_state=optimizer.init(full["params"]))

    def local_steps(n):
        return base.num_local_steps(n, batch_size, local_epochs, drop_last)

    def client_update(server, client, data, key):
        context = model_context(server.extra)
        variables = base.combine(server.params, client.personal)

        def loss_fn(params, rest, x, y, mask, step_key):
            del step_key
            mutable = [c for c in base.MUTABLE if c in rest]
            (out, aux), new_rest = model.apply({"params": params, **rest}, x, context, train=True,
                                               mask=mask, mutable=mutable)
            pred = task.predict(out, x)
            loss = base.masked_mean(task.loss(pred, task.prepare_targets(y)), mask)
            extra_loss, stats = aux_loss(aux, mask, server.extra)
            return loss + extra_loss, (dict(new_rest), stats)

        out = base.local_train(loss_fn, optimizer, variables, client.opt_state, data, key,
                               epochs=local_epochs, batch_size=batch_size, drop_last=drop_last,
                               stats_init=stats_init(server.extra), scale_inputs=task.scale_inputs)
        shared, personal = split(out.variables)
        upload = Upload(shared=shared if communicate else None,
                        extra=upload_extra(out.stats, server.extra) if communicate else None)
        metrics = {"train_loss": out.mean_loss, "local_steps": out.steps}
        return base.ClientResult(ClientState(personal, out.opt_state), upload, metrics)

    def server_update(server, uploads, weights):
        if not communicate:
            return server
        params = base.weighted_mean(uploads.shared, weights, server.params)
        extra = update_extra(server.extra, uploads.extra, weights)
        return ServerState(params=params, extra=extra)

    def predict(server, client, x, mask=None):
        variables = base.combine(server.params, client.personal)
        out, _ = model.apply(variables, x, model_context(server.extra), train=False, mask=mask)
        return task.predict(out, x)

    return base.FederatedAlgorithm(name, init_server, init_client, client_update, server_update, predict,
                                   local_steps)
