"""ResNet-18 backbone returning a token sequence (the flattened last feature map).

Two stems:
  * ``cifar``: 3x3 conv, stride 1, no max-pool (the usual choice for 28x28 MedMNIST);
  * ``imagenet``: 7x7 conv, stride 2, then 3x3 max-pool stride 2 (torchvision's).
Normalisation ``batch`` (BatchNorm with PyTorch's semantics, statistics over the real
samples of a batch only; its running statistics live in the ``batch_stats`` collection,
per-client state that never leaves the client by default) or ``group`` (GroupNorm).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import Conv, feature_map_to_tokens, make_norm
from omnifm_jax.registry import BACKBONES

__all__ = ["STEMS", "BasicBlock", "ResNet18"]

STEMS = ("cifar", "imagenet")


class BasicBlock(nn.Module):
    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        residual = x
        y = Conv(self.features, (3, 3), (self.strides, self.strides), padding=1, use_bias=False,
                    dtype=self.dtype, name="conv1")(x)
        y = make_norm(self.norm, train=train, name="norm1")(y, mask)
        y = nn.relu(y)
        y = Conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        y = make_norm(self.norm, train=train, name="norm2")(y, mask)
        if residual.shape != y.shape:
            residual = Conv(self.features, (1, 1), (self.strides, self.strides), use_bias=False,
                               dtype=self.dtype, name="down_conv")(residual)
            residual = make_norm(self.norm, train=train, name="down_norm")(residual, mask)
        return nn.relu(y + residual)


@BACKBONES.register("resnet18")
class ResNet18(nn.Module):
    """ResNet-18 trunk: ``(B, H, W, C) -> tokens (B, L, width*8)``.

    Attributes:
      stem: ``cifar`` or ``imagenet``.
      norm: ``batch``, ``group`` or ``none``.
      width: channels of the first stage (64 in the standard network).
      stage_sizes: blocks per stage (2, 2, 2, 2 for ResNet-18).
      dtype: computation dtype (e.g. ``"bfloat16"``); parameters stay float32 (master
        weights), tokens are returned in float32.
    """
    stem: str = "cifar"
    norm: str = "batch"
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        if self.stem == "cifar":
            x = Conv(self.width, (3, 3), padding=1, use_bias=False, dtype=dtype, name="stem_conv")(x)
            x = nn.relu(make_norm(self.norm, train=train, name="stem_norm")(x, mask))
        elif self.stem == "imagenet":
            x = Conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, dtype=dtype,
                        name="stem_conv")(x)
            x = nn.relu(make_norm(self.norm, train=train, name="stem_norm")(x, mask))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(self.width * 2 ** i, strides, self.norm, dtype,
                               name=f"stage{i + 1}_block{j + 1}")(x, train=train, mask=mask)
        return feature_map_to_tokens(x).astype(jnp.float32)
