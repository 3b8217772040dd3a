"""FedProx (Li et al., MLSys 2020, "Federated Optimization in Heterogeneous Networks"): FedAvg
whose local objective adds the proximal term ``(mu / 2) ||w - w_g||^2`` to the global model
``w_g`` the round started from.

PFLlib applies it as a gradient perturbation (``grad + mu (w - w_g)`` in its
``PerturbedGradientDescent``), the gradient of the same term; here it is a loss term, so the
reported local loss includes it. Every parameter is shared and the server averages by n_k,
as in FedAvg. ``mu=0.0`` is PFLlib's default (``-mu``) and makes FedProx FedAvg exactly; the
FedProx paper tunes ``mu`` in {0.001, 0.01, 0.1, 1}.
"""
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["proximal_term", "validate", "fedprox"]


def proximal_term(params, global_params, mu):
    """``(mu / 2) ||params - global_params||^2`` over every leaf."""
    return 0.5 * mu * optax.tree_utils.tree_norm(optax.tree_utils.tree_sub(params, global_params), squared=True)


def validate(hp, context):
    del context
    checks.finite("mu", hp["mu"], positive=False)


@register("fedprox", validate=validate)
def fedprox(*, task, backbone, optimizer, local_epochs, batch_size,
            weight_init="flax", drop_last=True, aggregate_bn_stats=False,
            mu: float = 0.0):
    """FedProx with proximal weight ``mu``."""
    model = TokenModel(backbone=backbone, head=task.make_head())

    def loss_terms(inputs):
        return proximal_term(inputs.params, inputs.global_params, mu), {}

    return personalized_sgd(name="fedprox", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                            local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                            drop_last=drop_last,
                            aggregate_bn_stats=aggregate_bn_stats, loss_terms=loss_terms)
