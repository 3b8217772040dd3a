"""Local: every client trains alone; nothing is uploaded and the server never changes."""
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["local"]


@register("local")
def local(*, task, backbone, optimizer, local_epochs, batch_size,
          weight_init="flax", drop_last=True):
    model = TokenModel(backbone=backbone, head=task.make_head())
    return personalized_sgd(name="local", model=model, task=task, optimizer=optimizer,
                            personal_patterns=(r".*",), local_epochs=local_epochs, weight_init=weight_init,
                            batch_size=batch_size, drop_last=drop_last, communicate=False)
