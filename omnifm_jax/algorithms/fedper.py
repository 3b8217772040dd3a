"""FedPer (Arivazhagan et al., 2019): the task head stays personal, the rest is averaged."""
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["fedper"]


@register("fedper")
def fedper(*, task, backbone, optimizer, local_epochs, batch_size,
           weight_init="flax", drop_last=True, aggregate_bn_stats=False):
    model = TokenModel(backbone=backbone, head=task.make_head())
    return personalized_sgd(name="fedper", model=model, task=task, optimizer=optimizer,
                            personal_patterns=(r"^params/head/",), local_epochs=local_epochs, weight_init=weight_init,
                            batch_size=batch_size, drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats)
