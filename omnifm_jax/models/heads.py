"""Task heads that read a token sequence ``r'`` (see :class:`TokenLayout`)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import TokenLayout


class ClassificationHead(nn.Module):
    """Mean-pool over ALL tokens of ``r'`` (prefix, body and suffix) then a linear layer."""
    num_classes: int

    @nn.compact
    def __call__(self, tokens: jax.Array, *, layout: TokenLayout, train: bool = False) -> jax.Array:
        del layout, train
        pooled = jnp.mean(tokens, axis=-2)
        return nn.Dense(self.num_classes, name="fc")(pooled)
