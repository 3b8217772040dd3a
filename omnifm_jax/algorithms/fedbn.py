"""FedBN (Li et al., 2021): FedAvg with every normalisation layer's affine parameters personal
(BatchNorm running statistics are personal for every algorithm here, as in PFLlib)."""
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["fedbn"]


@register("fedbn")
def fedbn(*, task, backbone, optimizer, local_epochs, batch_size,
          weight_init="flax", drop_last=True):
    model = TokenModel(backbone=backbone, head=task.make_head())
    return personalized_sgd(name="fedbn", model=model, task=task, optimizer=optimizer,
                            personal_patterns=(r"norm[^/]*/(scale|bias)$",), local_epochs=local_epochs,
                            weight_init=weight_init,
                            batch_size=batch_size, drop_last=drop_last)
