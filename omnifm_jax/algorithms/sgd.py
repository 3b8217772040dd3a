"""Personalised local SGD with partial sharing, and the hooks that make most federated
algorithms one small file: FedAvg, FedPer, FedBN, Local, FedProx, SCAFFOLD, FedDyn, MOON,
FedRep, GPFL, FedALA, the server optimizers and OmniFM are each a call of
:func:`personalized_sgd` (Ditto wraps one).

Round protocol for a participant k:
  1. ``variables = download(server, client)`` (default: the server's shared part combined
     with the client's personal part);
  2. local training on the client's data (:func:`local_training.local_train`), one phase per
     entry of ``phases``; loss = task loss + the algorithm's ``loss_terms``; gradients pass
     ``grad_transform`` before the client optimizer;
  3. ``finish`` turns the trained model into the client's new algorithm state and the
     algorithm's part of the upload; the trained shared part is uploaded too.
The server (``server_update(server, uploads, weights)``) aggregates the shared parts with
the n_k-weighted mean (PFLlib's ``aggregate_parameters``), optionally followed by a server
optimizer on the mean update, and updates its own algorithm state; an algorithm may replace
that step whole (``aggregate``).

State: :class:`ServerState` ``(params, algorithm_state, opt_state)`` and :class:`ClientState`
``(personal, opt_state, algorithm_state)``; ``algorithm_state`` is the algorithm's own slot on
each side (OmniFM's knowledge bank; SCAFFOLD's control variates; FedDyn's gradient memory;
MOON's previous model). An :class:`Upload` is ``(shared, algorithm_upload)``: the trained
shared variables and the algorithm's own part.

Shared by default: the ``params`` collection minus the personal patterns. BatchNorm
running statistics stay on each client (PFLlib aggregates ``parameters()`` only);
``aggregate_bn_stats=True`` averages them too.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms import aggregation, labels
from omnifm_jax.algorithms import local_training as lt
from omnifm_jax.algorithms.base import ClientResult, FederatedAlgorithm
from omnifm_jax.models import init as init_lib
from omnifm_jax.tasks.base import Task

__all__ = ["ServerState", "ClientState", "Upload", "LossInputs", "FinishInputs", "Phase", "make_task_loss",
           "trainable_mask", "zeros_like_params", "with_zero_server_slot", "personalized_sgd"]


class ServerState(NamedTuple):
    params: Any            # shared variables (None where personal)
    algorithm_state: Any   # the algorithm's own server state (e.g. the knowledge bank), or None
    opt_state: Any = None  # the server optimizer's state (FedAvgM, FedAdam, ...), or None


class ClientState(NamedTuple):
    personal: Any          # personal variables (None where shared)
    opt_state: Any         # the client optimizer's state
    algorithm_state: Any = None  # the algorithm's own per-client state, or None


class Upload(NamedTuple):
    shared: Any            # trained shared variables (None for algorithms that do not communicate)
    algorithm_upload: Any  # the algorithm's part (OmniFM's spectral embedding, SCAFFOLD's control delta, ...)


class LossInputs(NamedTuple):
    """What ``loss_terms`` sees at every local step.

    Attributes:
      params: the ``params`` collection being trained (full tree: shared and personal).
      global_params: the ``params`` this round started from (what was downloaded).
      aux: the model's auxiliary output for the batch.
      mask: bool[B] real samples of the batch.
      server: the server's algorithm state (``ServerState.algorithm_state``).
      client: the client's algorithm state (``ClientState.algorithm_state``).
      x: f32[B, ...] the scaled batch inputs.
      y: the batch's targets (the task's ``prepare_targets``).
      apply: ``params -> (output, aux)``: the model on this batch with other parameters (in
        evaluation mode, the client's other collections), e.g. MOON's global and previous model.
    """
    params: Any
    global_params: Any
    aux: Any
    mask: jax.Array
    server: Any
    client: Any
    x: jax.Array
    y: Any
    apply: Callable[[Any], Any]


class FinishInputs(NamedTuple):
    """What ``finish`` sees after local training.

    Attributes:
      variables: the trained variables (full tree).
      global_variables: the variables this round started from.
      stats: the per-step statistics of ``loss_terms``, summed over steps.
      steps: int32[] local steps run.
      server: the server's algorithm state.
      client: the client's algorithm state before the round.
    """
    variables: Any
    global_variables: Any
    stats: Any
    steps: jax.Array
    server: Any
    client: Any


class Phase(NamedTuple):
    """A stretch of local training: ``epochs`` epochs in which only the parameters whose
    paths match ``trainable`` (regexes; None: all) are updated (FedRep: head, then body)."""
    epochs: int
    trainable: Optional[Tuple[str, ...]] = None


def _no_loss_terms(inputs: LossInputs):
    del inputs
    return jnp.zeros((), jnp.float32), {}


def _no_finish(inputs: FinishInputs):
    return inputs.client, None


def make_task_loss(model: nn.Module, task: Task, context: Any,
                   loss_terms: Callable[[LossInputs], Any] = _no_loss_terms, *, global_params: Any = None,
                   server: Any = None, client: Any = None) -> Callable:
    """The loss of one local step for :func:`~omnifm_jax.algorithms.local_training.local_train`:
    the task loss (masked mean over the batch) plus ``loss_terms(LossInputs)``. Algorithms
    that train a second model (Ditto's personal model) build theirs with it too."""

    def loss_fn(params, rest, x, y, mask, step_key):
        del step_key
        mutable = [c for c in lt.MUTABLE if c in rest]
        (out, aux), new_rest = model.apply({"params": params, **rest}, x, context, train=True,
                                           mask=mask, mutable=mutable)
        pred = task.predict(out, x)
        targets = task.prepare_targets(y)
        loss = lt.masked_mean(task.loss(pred, targets), mask)

        def apply_other(other_params):
            return model.apply({"params": other_params, **rest}, x, context, train=False, mask=mask)

        extra_loss, stats = loss_terms(LossInputs(params, global_params, aux, mask, server, client, x, targets,
                                                  apply_other))
        return loss + extra_loss, (dict(new_rest), stats)

    return loss_fn


def trainable_mask(params: Any, patterns: Optional[Sequence[str]]) -> Any:
    """Tree of bools: True where a parameter's path (``"params/..."``) matches a pattern;
    ``None`` when every parameter trains."""
    if patterns is None:
        return None
    return labels.personal_mask({"params": params}, tuple(patterns), shared_collections=("params",))["params"]


def zeros_like_params(key, server_algorithm_state, variables):
    """``init_client_algorithm_state`` for a per-client slot of zeros shaped like the parameters
    (SCAFFOLD's ``c_i``, FedDyn's ``h_i``)."""
    del key, server_algorithm_state
    return optax.tree_utils.tree_zeros_like(variables["params"])


def with_zero_server_slot(algorithm: FederatedAlgorithm) -> FederatedAlgorithm:
    """``algorithm`` whose server slot starts as zeros shaped like the shared ``params``
    (SCAFFOLD's ``c``, FedDyn's ``h``)."""
    def init_server(key, x_example):
        server = algorithm.init_server(key, x_example)
        return server._replace(algorithm_state=optax.tree_utils.tree_zeros_like(server.params["params"]))

    return algorithm._replace(init_server=init_server)


def personalized_sgd(*, name: str, model: nn.Module, task: Task, optimizer: optax.GradientTransformation,
                     personal_patterns: Sequence[str], local_epochs: int, batch_size: int,
                     drop_last: bool = True, aggregate_bn_stats: bool = False,
                     communicate: bool = True,
                     phases: Optional[Sequence[Phase]] = None,
                     init_algorithm_state: Callable[[jax.Array], Any] = lambda key: None,
                     init_client_algorithm_state: Callable[[jax.Array, Any, Any], Any] = (
                         lambda key, server, variables: None),
                     model_context: Callable[[Any, Any], Any] = lambda server_state, client_state: None,
                     loss_terms: Callable[[LossInputs], Any] = _no_loss_terms,
                     grad_transform: Optional[Callable[..., Any]] = None,
                     finish: Callable[[FinishInputs], Any] = _no_finish,
                     update_algorithm_state: Callable[[Any, Any, jax.Array], Any] = lambda state, up, w: state,
                     server_optimizer: Optional[optax.GradientTransformation] = None,
                     aggregate: Optional[Callable[[ServerState, Upload, jax.Array], ServerState]] = None,
                     download: Optional[Callable[..., Any]] = None,
                     weight_init: str = "flax",
                     grad_barrier: bool = True,
                     ) -> FederatedAlgorithm:
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
      phases: the local work as :class:`Phase` s (default: one phase of ``local_epochs``
        epochs training everything).
      init_algorithm_state: ``key -> the server's algorithm state``.
      init_client_algorithm_state: ``(key, server's algorithm state, initial variables) -> a
        client's algorithm state``.
      model_context: ``(server's algorithm state, client's algorithm state or None) -> the
        model's second argument``
        (OmniFM: the bank; GPFL: the client's conditional inputs). ``None`` for the client
        while the model is initialised.
      loss_terms: ``LossInputs -> (scalar loss, per-step stats)`` added to the task loss
        (FedProx's proximal term, MOON's contrastive term, OmniFM's SPAlign).
      grad_transform: ``(grads, params, server's algorithm state, client's algorithm state)
        -> grads`` before the
        client optimizer (SCAFFOLD's correction).
      finish: ``FinishInputs -> (new client algorithm state, algorithm upload)``.
      update_algorithm_state: ``(server's algorithm state, stacked algorithm uploads, weights)
        -> new server algorithm state``.
      server_optimizer: an optax transformation applied to the mean update (FedAvgM,
        FedAdam, FedYogi: :func:`aggregation.server_optimizer_step`); None: the mean itself.
      aggregate: replaces the whole server step: ``(server, uploads, weights) -> server``
        (SCAFFOLD, FedDyn).
      download: ``(server, client, data, key) -> (variables, client's algorithm state)``: the variables
        the round starts from and the client's algorithm state after receiving them (FedALA's
        adaptive aggregation); default: shared part from the server, personal part the
        client's own, the state unchanged.
      weight_init: ``"flax"`` (flax's initialisers) or ``"pytorch"`` (PyTorch's defaults for
        the model's ``backbone`` and ``head``, PFLlib's models:
        :func:`omnifm_jax.models.init.apply_weight_init`); the config key ``weight_init``.
      grad_barrier: keep the optimization barrier between each local step's gradient and
        update (:func:`~omnifm_jax.algorithms.local_training.local_train`); False only to
        measure its effect.
    """
    if local_epochs < 1 or batch_size < 1:
        raise ValueError(f"local_epochs and batch_size must be >= 1, got {local_epochs}, {batch_size}")
    phases = tuple(phases) if phases is not None else (Phase(local_epochs),)
    if not phases or any(int(p.epochs) < 0 for p in phases) or sum(int(p.epochs) for p in phases) < 1:
        raise ValueError(f"phases must hold >= 1 epoch in all, got {phases}")
    checks.choice("weight_init", weight_init, init_lib.WEIGHT_INITS)
    shared_collections = ("params", "batch_stats") if aggregate_bn_stats else ("params",)

    def split(variables):
        return labels.partition(variables, labels.personal_mask(variables, personal_patterns, shared_collections))

    def initial_variables(key, server_state, x_example):
        k_model, _ = jax.random.split(key)
        variables = model.init(k_model, x_example, model_context(server_state, None), train=False)
        return init_lib.apply_weight_init(weight_init, jax.random.fold_in(k_model, 0x7079), variables)

    def init_server(key, x_example):
        _, k_state = jax.random.split(key)
        server_state = init_algorithm_state(k_state)
        shared, _ = split(initial_variables(key, server_state, x_example))
        opt_state = server_optimizer.init(shared) if server_optimizer is not None else None
        return ServerState(params=shared, algorithm_state=server_state, opt_state=opt_state)

    def init_client(key, server, x_example):
        # Given the server's key, this is the personal part of the server's initial model.
        _, personal = split(initial_variables(key, server.algorithm_state, x_example))
        full = labels.combine(server.params, personal)
        client_state = init_client_algorithm_state(jax.random.fold_in(key, 1), server.algorithm_state, full)
        return ClientState(personal=personal, opt_state=optimizer.init(full["params"]), algorithm_state=client_state)

    def local_steps(n):
        return lt.num_local_steps(n, batch_size, sum(int(p.epochs) for p in phases), drop_last)

    def client_update(server, client, data, key):
        if download is not None:
            variables, client_state = download(server, client, data, jax.random.fold_in(key, 0x646C))
        else:
            variables, client_state = labels.combine(server.params, client.personal), client.algorithm_state
        start = variables
        context = model_context(server.algorithm_state, client_state)
        loss_fn = make_task_loss(model, task, context, loss_terms, global_params=start["params"],
                                 server=server.algorithm_state, client=client_state)
        transform = None
        if grad_transform is not None:
            transform = lambda g, p: grad_transform(g, p, server.algorithm_state, client_state)
        opt_state, stats, loss_sum, steps = client.opt_state, None, jnp.zeros((), jnp.float32), jnp.int32(0)
        for i, phase in enumerate(phases):
            if int(phase.epochs) == 0:
                continue
            phase_key = key if len(phases) == 1 else jax.random.fold_in(key, i)
            out = lt.local_train(loss_fn, optimizer, variables, opt_state, data, phase_key,
                                 epochs=int(phase.epochs), batch_size=batch_size, drop_last=drop_last,
                                 scale_inputs=task.scale_inputs, grad_transform=transform,
                                 trainable=trainable_mask(variables["params"], phase.trainable),
                                 grad_barrier=grad_barrier)
            variables, opt_state = out.variables, out.opt_state
            stats = out.stats if stats is None else jax.tree_util.tree_map(jnp.add, stats, out.stats)
            loss_sum = loss_sum + out.loss_sum
            steps = steps + out.steps
        new_state, algorithm_upload = finish(FinishInputs(variables, start, stats, steps, server.algorithm_state,
                                                          client_state))
        shared, personal = split(variables)
        upload = Upload(shared=shared if communicate else None,
                        algorithm_upload=algorithm_upload if communicate else None)
        metrics = {"train_loss": loss_sum / jnp.maximum(steps, 1).astype(jnp.float32), "local_steps": steps}
        return ClientResult(ClientState(personal, opt_state, new_state), upload, metrics)

    def server_update(server, uploads, weights):
        if not communicate:
            return server
        if aggregate is not None:
            return aggregate(server, uploads, weights)
        mean = aggregation.weighted_mean(uploads.shared, weights, server.params)
        params, opt_state = mean, server.opt_state
        if server_optimizer is not None:
            params, opt_state = aggregation.server_optimizer_step(server_optimizer, server.params, mean,
                                                                  server.opt_state, aggregation.any_accepted(weights))
        server_state = update_algorithm_state(server.algorithm_state, uploads.algorithm_upload, weights)
        return ServerState(params=params, algorithm_state=server_state, opt_state=opt_state)

    def predict(server, client, x, mask=None):
        variables = labels.combine(server.params, client.personal)
        context = model_context(server.algorithm_state, client.algorithm_state)
        out, _ = model.apply(variables, x, context, train=False, mask=mask)
        return task.predict(out, x)

    def inspect(server, client, x, mask=None, *, probe=None, context=None):
        variables = labels.combine(server.params, client.personal)
        ctx = model_context(server.algorithm_state, client.algorithm_state) if context is None else context
        kw = {} if probe is None else {"probe": probe}
        (out, aux), inter = model.apply(variables, x, ctx, train=False, mask=mask, mutable=["intermediates"], **kw)
        return out, aux, inter.get("intermediates", {})

    return FederatedAlgorithm(name, init_server, init_client, client_update, server_update, predict, local_steps,
                              inspect)
