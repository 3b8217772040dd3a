"""MOON (Li et al., CVPR 2021, "Model-Contrastive Federated Learning"), as PFLlib implements it.

Local loss per batch: ``CE + contrastive_weight * mean_b l_con`` with
``l_con = -log( exp(sim(z, z_g)/tau) / (exp(sim(z, z_g)/tau) + exp(sim(z, z_prev)/tau)) )``:
``z`` the representation of the model being trained (the backbone's output the head reads:
PFLlib's ``model.base(x)``, no projection head), ``z_g`` that of the global model the round
started from, ``z_prev`` that of the client's model after its previous round (the initial
model before its first), both constants; ``sim`` is the cosine similarity
(``F.cosine_similarity``, eps 1e-8). Everything is shared and averaged by n_k as in FedAvg.
Defaults: PFLlib's ``-tau 1.0`` and ``-mu 0.0`` (``contrastive_weight`` is PFLlib's and the
paper's ``mu``, renamed here: ``mu`` is the proximal weight of FedProx and Ditto) -- with
``contrastive_weight=0`` MOON is FedAvg; the MOON paper uses ``mu`` in {0.1, 1, 5, 10}. The
other two models run in evaluation mode (PFLlib runs them in training mode; that differs only
for BatchNorm models).
"""
import jax
import jax.numpy as jnp

from omnifm_jax import checks
from omnifm_jax.algorithms.local_training import masked_mean
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["cosine_similarity", "contrastive_loss", "moon_loss_terms", "validate", "moon"]


def cosine_similarity(a, b, eps: float = 1e-8):
    """Row-wise cosine similarity, each norm clamped at ``eps`` (``torch.nn.functional``'s)."""
    na = jnp.maximum(jnp.linalg.norm(a, axis=-1), eps)
    nb = jnp.maximum(jnp.linalg.norm(b, axis=-1), eps)
    return jnp.sum(a * b, axis=-1) / (na * nb)


def contrastive_loss(z, z_global, z_prev, tau):
    """Per-sample ``l_con`` (the cross-entropy of ``[sim_g, sim_prev] / tau`` with label 0)."""
    logits = jnp.stack([cosine_similarity(z, z_global), cosine_similarity(z, z_prev)], axis=-1) / tau
    return jax.nn.logsumexp(logits, axis=-1) - logits[..., 0]


def moon_loss_terms(contrastive_weight: float, tau: float):
    """The ``loss_terms`` hook: ``contrastive_weight * mean_b l_con`` with ``z_g`` from the round's global
    model and ``z_prev`` from the client's previous model (its algorithm state)."""
    def loss_terms(inputs):
        z_global = jax.lax.stop_gradient(inputs.apply(inputs.global_params)[1])
        z_prev = jax.lax.stop_gradient(inputs.apply(inputs.client)[1])
        return contrastive_weight * masked_mean(contrastive_loss(inputs.aux, z_global, z_prev, tau), inputs.mask), {}
    return loss_terms


def validate(hp, context):
    del context
    checks.finite("contrastive_weight", hp["contrastive_weight"], positive=False)
    checks.finite("tau", hp["tau"], positive=True)


@register("moon", validate=validate, renamed={"mu": "contrastive_weight"})
def moon(*, task, backbone, optimizer, local_epochs, batch_size,
         weight_init="flax", drop_last=True, aggregate_bn_stats=False,
         contrastive_weight: float = 0.0, tau: float = 1.0):
    """MOON with contrastive weight ``contrastive_weight`` and temperature ``tau``."""
    model = TokenModel(backbone=backbone, head=task.make_head(), features=True)

    def finish(inputs):  # the trained model is the next round's "previous" model
        return inputs.variables["params"], None

    return personalized_sgd(name="moon", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                            local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                            drop_last=drop_last,
                            aggregate_bn_stats=aggregate_bn_stats,
                            init_client_algorithm_state=lambda key, server, variables: variables["params"],
                            loss_terms=moon_loss_terms(contrastive_weight, tau), finish=finish)
