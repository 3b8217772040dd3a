"""ResNet-18 backbone returning a token sequence (the flattened last feature map).

Two stems:
  * ``cifar``: 3x3 conv, stride 1, no max-pool (the usual choice for 28x28 MedMNIST);
  * ``imagenet``: 7x7 conv, stride 2, then 3x3 max-pool stride 2 (torchvision's).
Normalisation ``batch`` (BatchNorm with PyTorch's semantics, statistics over the real
samples of a batch only; its running statistics live in the ``batch_stats`` collection,
per-client state that never leaves the client by default) or ``group`` (GroupNorm).

Formulation switches (same parameters, same values; they change only what the compiler is
given, see ``experiments/benchmarks/formulations.py``): ``conv`` (the gradient formulation,
:data:`~omnifm_jax.models.common.CONV_PATHS`), ``downsample`` (the 1x1 stride-2 shortcut as a
strided convolution or as a slice then a 1x1 convolution; ``auto``: the slice on
accelerators, where an H200 ran the ResNet-18 round 13% faster with it, the strided
convolution on CPU) and ``norm_dtype`` (GroupNorm's output in the compute dtype, or flax's
float32 promotion).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import feature_map_to_tokens, make_conv, make_norm
from omnifm_jax.registry import BACKBONES

__all__ = ["STEMS", "DOWNSAMPLES", "NORM_DTYPES", "BasicBlock", "ResNet18", "resolve_downsample"]

STEMS = ("cifar", "imagenet")
DOWNSAMPLES = ("auto", "conv", "slice")
NORM_DTYPES = ("compute", "float32")


class BasicBlock(nn.Module):
    features: int
    strides: int = 1
    norm: str = "batch"
    dtype: Any = jnp.float32
    conv: str = "auto"
    downsample: str = "auto"
    norm_dtype: str = "compute"

    @nn.compact
    def __call__(self, x, *, train: bool, mask=None):
        conv = make_conv(self.conv)
        norm_dtype = jnp.dtype(self.dtype) if self.norm_dtype == "compute" else None
        norm = lambda name: make_norm(self.norm, train=train, name=name, dtype=norm_dtype)
        residual = x
        y = conv(self.features, (3, 3), (self.strides, self.strides), padding=1, use_bias=False,
                 dtype=self.dtype, name="conv1")(x)
        y = nn.relu(norm("norm1")(y, mask))
        y = conv(self.features, (3, 3), padding=1, use_bias=False, dtype=self.dtype, name="conv2")(y)
        y = norm("norm2")(y, mask)
        if residual.shape != y.shape:
            s = self.strides
            if resolve_downsample(self.downsample) == "slice":
                # A 1x1 kernel reads only the strided positions (with 'SAME' padding a 1x1
                # window has no low padding): the slice then a stride-1 1x1 convolution is the
                # same map, without the zero-interleaved input gradient of the strided form.
                residual, s = residual[:, ::s, ::s, :], 1
            residual = conv(self.features, (1, 1), (s, s), use_bias=False, dtype=self.dtype,
                            name="down_conv")(residual)
            residual = norm("down_norm")(residual, mask)
        return nn.relu(y + residual)


def resolve_downsample(downsample: str) -> str:
    """``"auto"`` -> ``"slice"`` on accelerators, ``"conv"`` on CPU; others unchanged.

    On one H200 (``experiments/benchmarks/results/formulations_gpu_h200.md``) the ResNet-18
    round with per-client convolutions ran 13% faster with the slice (11.6 vs 13.1 ms per
    local step; the strided form's input gradient is a convolution over a zero-interleaved
    map). On the 2-core CPU the smoke run saw no gain, so CPU keeps the strided convolution.
    """
    if downsample not in DOWNSAMPLES:
        raise ValueError(f"unknown downsample {downsample!r}; expected one of {DOWNSAMPLES}")
    if downsample == "auto":
        return "conv" if jax.default_backend() == "cpu" else "slice"
    return downsample


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
      conv: the convolutions' gradient formulation (:data:`~omnifm_jax.models.common.CONV_PATHS`;
        ``auto``: the backend's).
      downsample: the shortcut's 1x1 stride-2 convolution as ``conv`` or ``slice`` (a slice
        then a 1x1 convolution: same parameters and values); ``auto`` (default): see
        :func:`resolve_downsample`.
      norm_dtype: ``compute`` (GroupNorm's output in ``dtype``) or ``float32`` (flax's
        promotion with the float32 parameters: a bfloat16 network returns to float32 after
        every GroupNorm).
    """
    stem: str = "cifar"
    norm: str = "batch"
    width: int = 64
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    dtype: Any = jnp.float32
    conv: str = "auto"
    downsample: str = "auto"
    norm_dtype: str = "compute"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        dtype = jnp.dtype(self.dtype)
        for key, value, allowed in (("downsample", self.downsample, DOWNSAMPLES),
                                    ("norm_dtype", self.norm_dtype, NORM_DTYPES)):
            if value not in allowed:
                raise ValueError(f"unknown {key} {value!r}; expected one of {allowed}")
        conv = make_conv(self.conv)
        norm_dtype = dtype if self.norm_dtype == "compute" else None
        if self.stem == "cifar":
            x = conv(self.width, (3, 3), padding=1, use_bias=False, dtype=dtype, name="stem_conv")(x)
            x = nn.relu(make_norm(self.norm, train=train, name="stem_norm", dtype=norm_dtype)(x, mask))
        elif self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), padding=3, use_bias=False, dtype=dtype,
                     name="stem_conv")(x)
            x = nn.relu(make_norm(self.norm, train=train, name="stem_norm", dtype=norm_dtype)(x, mask))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            raise ValueError(f"unknown stem {self.stem!r}; expected one of {STEMS}")
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(self.width * 2 ** i, strides, self.norm, dtype, self.conv, self.downsample,
                               self.norm_dtype, name=f"stage{i + 1}_block{j + 1}")(x, train=train, mask=mask)
        return feature_map_to_tokens(x).astype(jnp.float32)
