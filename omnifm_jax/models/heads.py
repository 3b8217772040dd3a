"""Task heads that read a token sequence ``r'`` (see :class:`TokenLayout`)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import TokenLayout


def segment_means(tokens: jax.Array, layout: TokenLayout) -> jax.Array:
    """Mean of each non-empty segment of ``r'`` (prefix, body, suffix), concatenated.

    Pooling each segment on its own keeps the body's scale: one mean over all
    ``2L + p`` tokens would shrink the backbone's contribution (and its gradient) by
    ``L / (2L + p)``, which slowed training several-fold in our runs.
    """
    parts, start = [], 0
    for n in (layout.n_prefix, layout.n_body, layout.n_suffix):
        if n:
            parts.append(jnp.mean(tokens[..., start:start + n, :], axis=-2))
        start += n
    return jnp.concatenate(parts, axis=-1)


class ClassificationHead(nn.Module):
    """Pool over ALL tokens of ``r'`` (prefix, body and suffix; each segment mean-pooled,
    see :func:`segment_means`), then one linear layer. Without prefix/suffix this is the
    usual global-average-pool + fc (PFLlib's ``fc`` for FedAvgCNN)."""
    num_classes: int

    @nn.compact
    def __call__(self, tokens: jax.Array, *, layout: TokenLayout, train: bool = False) -> jax.Array:
        del train
        return nn.Dense(self.num_classes, name="fc")(segment_means(tokens, layout))
