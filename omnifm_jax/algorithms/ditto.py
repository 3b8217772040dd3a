"""Ditto (Li et al., ICML 2021, "Ditto: Fair and Robust Federated Learning Through
Personalization"), as PFLlib implements it.

Each client keeps a personal model ``v`` (all its variables; initialised as the shared initial
model) besides the global one. A participant trains a copy of the global model ``w_g`` as in
FedAvg (``local_epochs``) and uploads it; it also trains ``v`` for ``plocal_epochs`` epochs on
``L(v) + (mu / 2) ||v - w_g||^2`` (PFLlib's ``PerturbedGradientDescent``: the gradient of that
term) from where ``v`` was. The server averages the global copies by n_k. Each client is
evaluated with its personal model ``v`` (PFLlib evaluates both models and reports the better;
the personal one is Ditto's). Defaults: PFLlib's ``-mu 0.0`` (``v`` trains as in Local) and
``-pls 1``; the Ditto paper tunes ``mu`` (its lambda) in {0.01, 0.1, 1, 2}.
"""
import jax

from omnifm_jax import checks
from omnifm_jax.algorithms import labels
from omnifm_jax.algorithms import local_training as lt
from omnifm_jax.algorithms.base import ClientResult
from omnifm_jax.algorithms.fedprox import proximal_term
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import make_task_loss, personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["validate", "ditto"]

_GLOBAL_COPY = 0x676C  # key stream of the global copy's training; the personal model uses the client's key


def validate(hp, context):
    del context
    checks.finite("mu", hp["mu"], positive=False)
    checks.integer("plocal_epochs", hp["plocal_epochs"], 1)


@register("ditto", validate=validate)
def ditto(*, task, backbone, optimizer, local_epochs, batch_size,
          weight_init="flax", drop_last=True, aggregate_bn_stats=False,
          mu: float = 0.0, plocal_epochs: int = 1):
    """Ditto with proximal weight ``mu`` and ``plocal_epochs`` personal epochs."""
    model = TokenModel(backbone=backbone, head=task.make_head())
    base = personalized_sgd(name="ditto", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                            local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                            drop_last=drop_last,
                            aggregate_bn_stats=aggregate_bn_stats,
                            init_client_algorithm_state=lambda key, server, variables: variables)

    def personal_terms(inputs):
        return proximal_term(inputs.params, inputs.global_params, mu), {}

    def client_update(server, client, data, key):
        result = base.client_update(server, client, data, jax.random.fold_in(key, _GLOBAL_COPY))
        w_g = labels.combine(server.params, client.personal)["params"]
        v = client.algorithm_state
        loss_fn = make_task_loss(model, task, None, personal_terms, global_params=w_g)
        out = lt.local_train(loss_fn, optimizer, v, optimizer.init(v["params"]), data, key, epochs=plocal_epochs,
                             batch_size=batch_size, drop_last=drop_last, scale_inputs=task.scale_inputs)
        metrics = dict(result.metrics, personal_loss=out.mean_loss,
                       local_steps=result.metrics["local_steps"] + out.steps)
        return ClientResult(result.state._replace(algorithm_state=out.variables), result.upload, metrics)

    def local_steps(n):
        return lt.num_local_steps(n, batch_size, local_epochs + plocal_epochs, drop_last)

    def predict(server, client, x, mask=None):
        del server
        out, _ = model.apply(client.algorithm_state, x, None, train=False, mask=mask)
        return task.predict(out, x)

    return base._replace(client_update=client_update, local_steps=local_steps, predict=predict, inspect=None)
