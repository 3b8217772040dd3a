"""A small VQA model with LLaVA's shape, as a token backbone (``backbone="vqa"``).

LLaVA-1.5 reads an image with a vision encoder, maps its patch tokens through a connector
into the language model's width and runs the language model over ``[visual tokens ;
question tokens]``. This is that pipeline at a size a CPU trains:

  image   -> ``vision``: a patch embedding (``patch x patch`` patches) and ``vision_depth``
             pre-norm transformer blocks (``vision_block<i>``)       -> (B, Tv, vision_dim)
          -> ``connector``: Dense -> GELU -> Dense (LLaVA-1.5's MLP)  -> (B, Tv, dim)
  question-> ``embed``: word embedding (``vocab_size`` rows)         -> (B, L, dim)
  [visual ; question] + positions -> ``depth`` pre-norm blocks (``llm_block<i>``, padding
             words masked out of attention) -> final LayerNorm       -> (B, Tv + L, dim)

The task's head (an answer classifier) reads the returned tokens. Every projection is a
``flax.linen.Dense`` (``query``, ``key``, ``value``, ``out``, ``mlp_in``, ``mlp_out``,
``fc1``, ``fc2``), so LoRA adapters (:mod:`omnifm_jax.models.lora`) attach to any of them by
path, e.g. ``lora={"targets": ["llm_block"]}``; the tuning regimes (connector only, language
model only, both, two stages) are ``trainable`` path rules (docs/finetuning.md).

The input is the packed array of :mod:`omnifm_jax.data.vqa_rad` (image channels, then the
question plane); :func:`unpack` reads it inside the jitted model. OmniFM's spectral path reads
the image only (:meth:`VQABackbone.image_of`).
"""
from __future__ import annotations

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.registry import BACKBONES

__all__ = ["VQABackbone", "unpack", "Block"]


def unpack(x: jax.Array, length: int) -> Tuple[jax.Array, jax.Array]:
    """``(image, tokens)`` of a packed batch ``(B, H, W, C + 1)``: the image channels as given
    (scaled by the task) and ``int32[B, length]`` token ids from the raw question plane
    (``x[..., -1]`` holds bytes 0..255; the task leaves it unscaled)."""
    plane = jnp.round(x[..., -1]).astype(jnp.int32).reshape(x.shape[0], -1)
    return x[..., :-1], plane[:, 0:2 * length:2] * 256 + plane[:, 1:2 * length:2]


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention (keys masked by ``valid``) and
    a GELU MLP, each with a residual. Projections are plain ``Dense`` layers (LoRA-capable)."""
    num_heads: int
    mlp_ratio: int = 2
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: jax.Array, valid: jax.Array) -> jax.Array:
        d = h.shape[-1]
        if d % self.num_heads:
            raise ValueError(f"width {d} is not divisible by num_heads={self.num_heads}")
        dh = d // self.num_heads
        y = nn.LayerNorm(name="norm1")(h)

        def heads(name):
            return nn.Dense(d, dtype=self.dtype, name=name)(y).reshape(h.shape[:-1] + (self.num_heads, dh))

        q, k, v = heads("query"), heads("key"), heads("value")
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(jnp.float32(dh))
        logits = jnp.where(valid[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
        att = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        o = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(h.shape)
        h = h + nn.Dense(d, dtype=self.dtype, name="out")(o)
        y = nn.LayerNorm(name="norm2")(h)
        y = nn.Dense(d * self.mlp_ratio, dtype=self.dtype, name="mlp_in")(y)
        return h + nn.Dense(d, dtype=self.dtype, name="mlp_out")(nn.gelu(y))


@BACKBONES.register("vqa")
class VQABackbone(nn.Module):
    """``packed (B, H, W, C + 1) -> (B, Tv + L, dim)`` (module docstring).

    ``question_length`` must be the data's (``dataset_kwargs.question_length``) and
    ``vocab_size`` at least its question vocabulary (the task checks both).
    """
    question_length: int = 16
    vocab_size: int = 2048
    patch: int = 8
    vision_dim: int = 64
    vision_depth: int = 1
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    dtype: Any = jnp.float32

    def image_of(self, x: jax.Array) -> jax.Array:
        """The image channels of a packed batch (what OmniFM's spectral tokenizer reads)."""
        return x[..., :-1]

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        del train, mask  # no dropout or normalisation across samples
        dtype = jnp.dtype(self.dtype)
        image, tokens = unpack(x, self.question_length)
        b, h, w, _ = image.shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"image {h}x{w} is not divisible into {self.patch}x{self.patch} patches")
        v = nn.Conv(self.vision_dim, (self.patch, self.patch), strides=(self.patch, self.patch), padding="VALID",
                    dtype=dtype, name="patch")(image.astype(dtype))
        v = v.reshape(b, -1, self.vision_dim)
        tv = v.shape[1]
        v = v + self.param("vision_pos", nn.initializers.normal(0.02), (tv, self.vision_dim), jnp.float32)
        all_valid = jnp.ones((b, tv), bool)
        for i in range(self.vision_depth):
            v = Block(self.num_heads, self.mlp_ratio, dtype, name=f"vision_block{i}")(v, all_valid)
        v = nn.LayerNorm(name="vision_norm")(v)
        c = nn.Dense(self.dim, dtype=dtype, name="connector_fc1")(v)
        c = nn.Dense(self.dim, dtype=dtype, name="connector_fc2")(nn.gelu(c))
        q = nn.Embed(self.vocab_size, self.dim, name="embed")(jnp.clip(tokens, 0, self.vocab_size - 1))
        seq = jnp.concatenate([c, q.astype(c.dtype)], axis=1)
        seq = seq + self.param("llm_pos", nn.initializers.normal(0.02), seq.shape[1:], jnp.float32)
        valid = jnp.concatenate([all_valid, tokens != 0], axis=1)
        for i in range(self.depth):
            seq = Block(self.num_heads, self.mlp_ratio, dtype, name=f"llm_block{i}")(seq, valid)
        return nn.LayerNorm(name="llm_norm")(seq).astype(jnp.float32)
