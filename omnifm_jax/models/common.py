"""Pieces shared by the backbones: normalisation choice and feature-map -> tokens."""
from __future__ import annotations

from typing import NamedTuple, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "group", "none")


class TokenLayout(NamedTuple):
    """How a token sequence ``r'`` is laid out, for the task head.

    ``r' = [prefix (n_prefix) || body (n_body) || suffix (n_suffix)]``; ``input_hw`` is the
    spatial size of the model input (super-resolution heads rebuild the body's grid).
    """
    n_prefix: int
    n_body: int
    n_suffix: int
    input_hw: Tuple[int, int]


def make_norm(kind: str, *, train: bool, name: str, groups: int = 32) -> nn.Module:
    """BatchNorm (running statistics in the ``batch_stats`` collection) or GroupNorm."""
    if kind == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)
    if kind == "group":
        return _GroupNormAuto(groups=groups, name=name)
    if kind == "none":
        return _Identity(name=name)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


class _GroupNormAuto(nn.Module):
    groups: int = 32

    @nn.compact
    def __call__(self, x):
        c = x.shape[-1]
        g = min(self.groups, c)
        while c % g:
            g -= 1
        return nn.GroupNorm(num_groups=g, epsilon=1e-5)(x)


class _Identity(nn.Module):

    @nn.compact
    def __call__(self, x):
        return x


def feature_map_to_tokens(fmap: jax.Array) -> jax.Array:
    """``(B, h, w, d) -> (B, h*w, d)`` in row-major (h, w) order."""
    b, h, w, d = fmap.shape
    return jnp.reshape(fmap, (b, h * w, d))
