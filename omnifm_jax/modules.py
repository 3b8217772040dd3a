"""OmniFM fusion modules (Sec. 3.2, Eq. 4-6) and the Table 8 ablation layers.

* :class:`EmbeddingCrossAttention` -- ECA, Eq. 4: ``Z = softmax(Q K^T / sqrt(d_h)) V``
  with ``Q = r W_Q``, ``K = S_g W_K``, ``V = S_g W_V``; ``Z`` is projected back to the
  token width ``d`` when ``d_h != d``. Retrieved slots that are missing (fewer valid
  prototypes than k) are masked out of the softmax; with none valid, ``Z = 0``.
* :class:`PrefixSuffixPrompt` -- PSP: ``r' = [Z || r || c]`` with learnable,
  client-personal suffix tokens ``c in R^{p x d}``.
* :class:`FiLM` -- replaces ECA in the "w/o ECA" ablation.
* :class:`TokenProjection` -- replaces PSP in the "w/o PSP" ablation (keeps ``L`` tokens).
* :func:`spectral_alignment` -- SPAlign, Eq. 5: ``||s - mean_k S_g||^2`` over valid
  prototypes only.
"""
from __future__ import annotations

from typing import Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax import bank as bank_lib

__all__ = ["EmbeddingCrossAttention", "PrefixSuffixPrompt", "FiLM", "TokenProjection", "spectral_alignment"]


class EmbeddingCrossAttention(nn.Module):
    """Embedding-wise cross-attention (Eq. 4).

    Attributes:
      head_dim: total attention width ``d_h`` (split over ``num_heads``).
      num_heads: number of heads (``head_dim`` must be divisible by it).
      out_dim: width of ``Z``; defaults to the token width ``d``. When it differs from
        ``d_h``, ``Z`` goes through a final linear projection.
      learned_temperature: each head's logits are multiplied by ``exp(t_h)``, ``t_h`` a
        parameter starting at 0 (Eq. 4 exactly at initialisation), so training can sharpen the
        attention without growing ``W_Q`` and ``W_K``. Off by default (the paper's Eq. 4).
      logit_scale: a fixed factor on the logits (1 = the paper's ``1/sqrt(d_h)`` scaling; larger
        values sharpen the attention towards the best-matching key whatever the loss prefers).
    """
    head_dim: int = 64
    num_heads: int = 1
    out_dim: Optional[int] = None
    learned_temperature: bool = False
    logit_scale: float = 1.0

    @nn.compact
    def __call__(self, r: jax.Array, prototypes: jax.Array,
                 valid: Optional[jax.Array] = None) -> jax.Array:
        """Fuse tokens with retrieved prototypes.

        Args:
          r: tokens ``(..., L, d)``.
          prototypes: ``S_g``, ``(..., k, d_s)``.
          valid: ``bool (..., k)``; False entries are masked out.

        Returns:
          ``Z``: ``(..., L, out_dim or d)``.
        """
        if self.head_dim % self.num_heads:
            raise ValueError(f"head_dim={self.head_dim} not divisible by num_heads={self.num_heads}")
        out_dim = self.out_dim or r.shape[-1]
        dh = self.head_dim // self.num_heads
        q = nn.DenseGeneral((self.num_heads, dh), use_bias=False, name="w_q")(r)
        k = nn.DenseGeneral((self.num_heads, dh), use_bias=False, name="w_k")(prototypes)
        v = nn.DenseGeneral((self.num_heads, dh), use_bias=False, name="w_v")(prototypes)
        logits = jnp.einsum("...lhe,...khe->...hlk", q, k) / jnp.sqrt(dh).astype(q.dtype)
        if self.logit_scale != 1.0:
            logits = logits * jnp.asarray(self.logit_scale, logits.dtype)
        if self.learned_temperature:
            t = self.param("log_temperature", nn.initializers.zeros, (self.num_heads,), jnp.float32)
            logits = logits * jnp.exp(t).astype(logits.dtype)[:, None, None]
        if valid is None:
            valid = jnp.ones(prototypes.shape[:-1], bool)
        mask = valid[..., None, None, :]  # (..., 1, 1, k)
        logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
        weights = jax.nn.softmax(logits, axis=-1)
        weights = jnp.where(mask, weights, 0.0)
        self.sow("intermediates", "attention", weights)            # (..., h, L, k), for diagnostics
        self.sow("intermediates", "attention_valid", mask[..., 0, 0, :])  # (..., k)
        z = jnp.einsum("...hlk,...khe->...lhe", weights, v)
        z = z.reshape(z.shape[:-2] + (self.head_dim,))
        if self.head_dim != out_dim:
            z = nn.Dense(out_dim, name="w_o")(z)
        return z


class PrefixSuffixPrompt(nn.Module):
    """Prefix-suffix spectral prompting: ``r' = [Z || r || c]``.

    ``c`` (``num_suffix x d``) is a learnable parameter named ``suffix``; the engine keeps
    it personal to each client by default.
    """
    num_suffix: int = 4

    @nn.compact
    def __call__(self, z: jax.Array, r: jax.Array) -> jax.Array:
        if z.shape[-1] != r.shape[-1]:
            raise ValueError(f"prefix width {z.shape[-1]} != token width {r.shape[-1]}")
        c = self.param("suffix", nn.initializers.normal(0.02), (self.num_suffix, r.shape[-1]))
        c = jnp.broadcast_to(c.astype(r.dtype), r.shape[:-2] + c.shape)
        return jnp.concatenate([z, r, c], axis=-2)


class FiLM(nn.Module):
    """Feature-wise linear modulation: ``r * (1 + gamma(cond)) + beta(cond)``.

    ``cond`` has shape ``(..., d_c)`` and is broadcast over the token axis of ``r``.
    Initialised to the identity (zero gamma and beta).
    """

    @nn.compact
    def __call__(self, r: jax.Array, cond: jax.Array) -> jax.Array:
        d = r.shape[-1]
        gb = nn.Dense(2 * d, kernel_init=nn.initializers.zeros, name="gamma_beta")(cond)
        gamma, beta = jnp.split(gb[..., None, :], 2, axis=-1)
        return r * (1.0 + gamma) + beta


class TokenProjection(nn.Module):
    """Per-token linear projection of ``[Z ; r]`` (feature concat) back to width ``d``."""

    @nn.compact
    def __call__(self, z: jax.Array, r: jax.Array) -> jax.Array:
        return nn.Dense(r.shape[-1], name="proj")(jnp.concatenate([z, r], axis=-1))


def spectral_alignment(s: jax.Array, prototypes: jax.Array, valid: Optional[jax.Array] = None) -> jax.Array:
    """SPAlign (Eq. 5): ``||s - mean_k S_g||_2^2`` over the valid prototypes.

    Args:
      s: spectral tokens ``(..., d)``.
      prototypes: retrieved ``S_g`` ``(..., k, d)`` (treated as constants).
      valid: ``bool (..., k)``; False entries (missing retrievals) are excluded from
        the mean. ``None`` means all are valid.

    Returns:
      ``(...)`` per-sample loss, zero where no prototype is valid.
    """
    prototypes = jax.lax.stop_gradient(prototypes)
    if valid is None:
        valid = jnp.ones(prototypes.shape[:-1], bool)
    centroid, any_valid = bank_lib.mean_valid(prototypes, valid)
    loss = jnp.sum(jnp.square(s - centroid), axis=-1)
    return jnp.where(any_valid, loss, 0.0)
