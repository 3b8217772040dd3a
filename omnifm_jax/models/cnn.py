"""PFLlib's FedAvgCNN as a token backbone.

PFLlib: conv 5x5 (32) -> ReLU -> max-pool 2 -> conv 5x5 (64) -> ReLU -> max-pool 2 ->
flatten -> fc1 (512) -> ReLU -> fc (classes). PFLlib's personalisation split puts
everything up to fc1 in the "base" and the last fc in the "head"; we do the same, so
with ``tokens="fc"`` the backbone returns ONE token of width 512 and the classification
head's linear layer is PFLlib's ``fc``. ``tokens="map"`` instead returns the last conv
feature map as ``h*w`` tokens of width 64 (no fc1).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import feature_map_to_tokens, make_conv
from omnifm_jax.registry import BACKBONES

__all__ = ["FedAvgCNN"]


@BACKBONES.register("cnn")
class FedAvgCNN(nn.Module):
    """``(B, H, W, C) -> (B, 1, hidden)`` (``tokens="fc"``) or ``(B, h*w, 64)`` (``"map"``)."""
    hidden: int = 512
    tokens: str = "fc"
    dtype: Any = jnp.float32  # computation dtype; parameters stay float32
    conv: str = "auto"        # the convolutions' gradient formulation (models.common.CONV_PATHS)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        del train, mask  # no dropout or normalisation: samples never interact
        dtype = jnp.dtype(self.dtype)
        Conv = make_conv(self.conv)
        x = nn.relu(Conv(32, (5, 5), padding="VALID", dtype=dtype, name="conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(Conv(64, (5, 5), padding="VALID", dtype=dtype, name="conv2")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        if self.tokens == "map":
            return feature_map_to_tokens(x).astype(jnp.float32)
        if self.tokens != "fc":
            raise ValueError(f"tokens must be 'fc' or 'map', got {self.tokens!r}")
        x = jnp.reshape(x, (x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, dtype=dtype, name="fc1")(x))
        return x[:, None, :].astype(jnp.float32)
