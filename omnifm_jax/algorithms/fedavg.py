"""FedAvg (McMahan et al., 2017): every parameter shared, weighted by n_k."""
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["fedavg"]


@register("fedavg")
def fedavg(*, task, backbone, optimizer, local_epochs, batch_size,
           weight_init="flax", drop_last=True, aggregate_bn_stats=False):
    model = TokenModel(backbone=backbone, head=task.make_head())
    return personalized_sgd(name="fedavg", model=model, task=task, optimizer=optimizer,
                            personal_patterns=(), local_epochs=local_epochs, batch_size=batch_size,
                            weight_init=weight_init,
                            drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats)
