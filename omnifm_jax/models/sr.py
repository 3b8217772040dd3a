"""Super-resolution: an EDSR-style residual conv backbone that yields tokens, and a
pixel-shuffle head that rebuilds an image from the OmniFM token sequence ``r'``.

The backbone keeps the LR resolution, so its ``h*w`` tokens map one-to-one onto LR
pixels. The head adds the prefix tokens ``Z`` (one per body token; ECA's output) to the
body, adds a linear read-out of the mean suffix token (a per-client bias), reshapes to
``(h, w, d)`` and upsamples with sub-pixel convolutions (pixel shuffle). The task adds
the bicubic upsampling of the input as a global skip connection (see tasks/sr.py).
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax

from omnifm_jax.models.common import Conv, TokenLayout, feature_map_to_tokens, prompted_body
from omnifm_jax.registry import BACKBONES

__all__ = ["ResBlock", "EDSRBackbone", "pixel_shuffle", "PixelShuffleHead"]


class ResBlock(nn.Module):
    features: int
    res_scale: float = 0.1

    @nn.compact
    def __call__(self, x):
        y = nn.relu(Conv(self.features, (3, 3), padding=1, name="conv1")(x))
        y = Conv(self.features, (3, 3), padding=1, name="conv2")(y)
        return x + self.res_scale * y


@BACKBONES.register("edsr")
class EDSRBackbone(nn.Module):
    """``(B, h, w, C) -> tokens (B, h*w, features)`` (EDSR body without upsampler)."""
    features: int = 32
    num_blocks: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        del train, mask  # no normalisation: samples never interact
        head = Conv(self.features, (3, 3), padding=1, name="conv_in")(x)
        y = head
        for i in range(self.num_blocks):
            y = ResBlock(self.features, name=f"block{i + 1}")(y)
        y = Conv(self.features, (3, 3), padding=1, name="conv_body")(y) + head
        return feature_map_to_tokens(y)


def pixel_shuffle(x: jax.Array, factor: int) -> jax.Array:
    """``(B, h, w, C*f*f) -> (B, h*f, w*f, C)`` (depth-to-space, PyTorch's channel order)."""
    b, h, w, c = x.shape
    out_c = c // (factor * factor)
    x = x.reshape(b, h, w, out_c, factor, factor)
    x = x.transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(b, h * factor, w * factor, out_c)


class PixelShuffleHead(nn.Module):
    """Token sequence -> residual image at ``scale`` x the input resolution."""
    scale: int = 2
    channels: int = 3

    @nn.compact
    def __call__(self, tokens: jax.Array, *, layout: TokenLayout, train: bool = False) -> jax.Array:
        del train
        if self.scale not in (2, 4, 8):
            raise ValueError(f"scale must be 2, 4 or 8, got {self.scale}")
        h, w = layout.input_hw
        if layout.n_body != h * w:
            raise ValueError(f"SR head needs one body token per input pixel: {layout.n_body} != {h}*{w}")
        body = prompted_body(tokens, layout)
        d = body.shape[-1]
        y = body.reshape(body.shape[:-2] + (h, w, d))
        for i in range(int(math.log2(self.scale))):
            y = Conv(4 * d, (3, 3), padding=1, name=f"up{i + 1}")(y)
            y = pixel_shuffle(y, 2)
        # Zero-initialised: the model starts exactly at the task's bicubic skip connection.
        return Conv(self.channels, (3, 3), padding=1, kernel_init=nn.initializers.zeros,
                       name="conv_out")(y)
