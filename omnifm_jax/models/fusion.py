"""Image fusion: a U2Fusion-style densely connected backbone that yields one token per
pixel, and a head that decodes the OmniFM token sequence ``r'`` into the fused image.

U2Fusion (Xu et al., TPAMI 2020; the authors' TensorFlow ``Net.py``, hanna-xu/U2Fusion)
fuses two registered grey sources with a plain DenseNet at full resolution:

* encoder: the two sources concatenated (2 channels) -> 3x3 conv to ``n = 44`` features,
  then 5 densely connected 3x3 conv layers (``n`` outputs each, each layer's input the
  concatenation of all previous outputs), so the code has ``6n = 264`` channels;
* decoder: 3x3 convs ``264 -> 128 -> 64 -> 32 -> 1``;
* every conv: reflection padding, bias, LeakyReLU(0.2); no normalisation; the last conv
  ends in ``tanh(z) / 2 + 0.5`` (= ``sigmoid(2z)``), a fused image in (0, 1).

Kept here: the dense encoder (5 dense layers, LeakyReLU 0.2, reflection padding, no
normalisation), the 4-conv decoder shape and the ``tanh / 2 + 0.5`` output. Shrunk for
CPU: ``features`` (``n``, default 16 instead of 44) and the decoder ``widths`` (default
``(64, 32, 16)`` instead of ``(128, 64, 32)``); both are options, ``features=44,
widths=(128, 64, 32)`` is the published size.

Split for OmniFM: the backbone is the encoder, and its ``6n``-channel code at each pixel
is that pixel's token, ``(B, H*W, 6n)`` (like the EDSR body in models/sr.py). The head
(:class:`FusionHead`) is the decoder: it adds the prefix tokens ``Z`` (one per body token,
ECA's output) to the body when ``n_prefix == n_body``, adds a Dense read-out of the mean
suffix token as a per-client bias (as ``PixelShuffleHead`` does), reshapes the tokens to
``(H, W, 6n)`` and decodes. No BatchNorm anywhere: samples never interact, so the
backbone's ``mask`` argument (which marks padded samples for batch statistics) is unused.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import Conv, TokenLayout, feature_map_to_tokens, prompted_body
from omnifm_jax.registry import BACKBONES

__all__ = ["U2FusionBackbone", "FusionHead"]


def _lrelu(x):
    return nn.leaky_relu(x, negative_slope=0.2)


def _conv(features: int, name: str, **kw) -> nn.Module:
    """U2Fusion's conv: 3x3, reflection padding, bias."""
    return Conv(features, (3, 3), padding="REFLECT", name=name, **kw)


@BACKBONES.register("u2fusion")
class U2FusionBackbone(nn.Module):
    """``(B, H, W, 2) -> tokens (B, H*W, (num_dense + 1) * features)``: U2Fusion's encoder.

    Attributes:
      features: ``n``, the width of the first conv and the growth of every dense layer
        (U2Fusion: 44).
      num_dense: densely connected layers (U2Fusion: 5).
    """
    features: int = 16
    num_dense: int = 5

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None) -> jax.Array:
        del train, mask  # no normalisation: samples never interact
        y = _lrelu(_conv(self.features, "conv_in")(x))
        for i in range(self.num_dense):
            y = jnp.concatenate([_lrelu(_conv(self.features, f"dense{i + 1}")(y)), y], axis=-1)
        return feature_map_to_tokens(y)


class FusionHead(nn.Module):
    """Token sequence -> fused image ``(B, H, W, 1)`` in (0, 1): U2Fusion's decoder.

    Attributes:
      widths: the decoder's hidden widths (U2Fusion: ``(128, 64, 32)``).
    """
    widths: Sequence[int] = (64, 32, 16)

    @nn.compact
    def __call__(self, tokens: jax.Array, *, layout: TokenLayout, train: bool = False) -> jax.Array:
        del train
        h, w = layout.input_hw
        if layout.n_body != h * w:
            raise ValueError(f"fusion head needs one body token per input pixel: {layout.n_body} != {h}*{w}")
        body = prompted_body(tokens, layout)
        y = body.reshape(body.shape[:-2] + (h, w, body.shape[-1]))
        for i, width in enumerate(self.widths):
            y = _lrelu(_conv(int(width), f"dec{i + 1}")(y))
        y = _conv(1, "conv_out")(y)
        return jnp.tanh(y) / 2.0 + 0.5
