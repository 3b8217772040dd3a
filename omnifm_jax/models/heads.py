"""Task heads that read a token sequence ``r'`` (see :class:`TokenLayout`)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import TokenLayout

__all__ = ["POOLS", "segment_means", "TokenMixer", "ClassificationHead"]

POOLS = ("mean", "attention")


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


class TokenMixer(nn.Module):
    """One pre-norm single-head self-attention layer over ``r'`` with a residual.

    After it, every output token (the suffix prompts ``c`` included) depends on the
    input's tokens, so a client's prompts can act differently on different images instead
    of adding a constant to the pooled features. The output projection starts at zero, so
    the layer starts as the identity (the head then starts as ``pool="mean"``).
    """

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        d = tokens.shape[-1]
        h = nn.LayerNorm(name="norm")(tokens)
        mixed = nn.SelfAttention(num_heads=1, qkv_features=d, out_features=d, deterministic=True,
                                 out_kernel_init=nn.initializers.zeros, name="attn")(h)
        return tokens + mixed


class ClassificationHead(nn.Module):
    """Pool over ALL tokens of ``r'`` (prefix, body and suffix; each segment mean-pooled,
    see :func:`segment_means`), then one linear layer. Without prefix/suffix this is the
    usual global-average-pool + fc (PFLlib's ``fc`` for FedAvgCNN).

    ``pool="attention"`` first mixes the tokens with one self-attention layer
    (:class:`TokenMixer`), so the suffix prompts interact with each input's tokens.
    """
    num_classes: int
    pool: str = "mean"

    @nn.compact
    def __call__(self, tokens: jax.Array, *, layout: TokenLayout, train: bool = False) -> jax.Array:
        del train
        if self.pool not in POOLS:
            raise ValueError(f"unknown head pool {self.pool!r}; expected one of {POOLS}")
        if self.pool == "attention":
            tokens = TokenMixer(name="mixer")(tokens)
        return nn.Dense(self.num_classes, name="fc")(segment_means(tokens, layout))
