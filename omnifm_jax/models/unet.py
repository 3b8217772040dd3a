"""A 2D UNet after MONAI's ``monai.networks.nets.UNet``, split into a token backbone
(the encoder) and a segmentation head (the decoder) so that it runs inside the OmniFM
wrapper and every baseline unchanged.

MONAI settings followed (``UNet(spatial_dims=2, ..., channels=(16, 32, 64, 128, 256),
strides=(2, 2, 2, 2), num_res_units=2)``, the configuration of MONAI's 2D segmentation
tutorials, with the class's own defaults for the rest):

* ``kernel_size=3``, ``up_kernel_size=3``, ``act=PRELU`` (one learnable slope per layer,
  initialised at 0.25 as ``torch.nn.PReLU``), ``norm=INSTANCE`` (``InstanceNorm2d``:
  eps 1e-5, biased variance, **no affine parameters**: MONAI passes none, and torch's
  default is ``affine=False``), ``dropout=0``, ``bias=True``, ``adn_ordering="NDA"``
  (conv -> norm -> act);
* down layer ``i`` is a ``ResidualUnit`` of ``num_res_units`` sub-units, the first with
  stride ``strides[i]``, plus a residual convolution (kernel ``kernel_size`` when
  strided, 1x1 when only the width changes, identity otherwise); the bottom layer is a
  stride-1 down layer to ``channels[-1]``;
* up layer ``i`` takes ``concat([skip_i, y])`` (skip first, as MONAI's ``SkipConnection``)
  and applies a transposed convolution (stride ``strides[i]``, kernel
  ``up_kernel_size``, output exactly ``stride`` x the input) with norm and act, then (when
  ``num_res_units > 0``) a one-sub-unit ``ResidualUnit``; in the top layer the last
  convolution is "conv only" (no norm, no act): its output are the logits.

Deviations:

* Defaults of :class:`UNetBackbone` are the tutorial's; the experiment configs use
  smaller widths (e.g. ``channels=(8, 16, 32, 64, 128)``) so that 4 algorithms x 10
  rounds fit in minutes on 2 CPU cores. The depth (4 strides) is kept.
* Kernels start as PyTorch's default (``kaiming_uniform(a=sqrt(5))``: uniform in
  ``+-1/sqrt(fan_in)``, :data:`TORCH_KERNEL_INIT`); biases start at zero (PyTorch draws
  them uniform in the same range). Nothing here loads PyTorch weights.
* A transposed convolution is written as zero insertion followed by an ordinary
  convolution (:func:`conv_transpose`), equal to ``torch.nn.ConvTranspose2d(k, s,
  padding=k // 2, output_padding=s - 1)`` with a spatially flipped kernel (a learned
  kernel, so the flip is a relabelling). That keeps every convolution of the training
  loop in XLA:CPU's fast canonical form (see :func:`omnifm_jax.models.common.conv_general_dilated`).
* ``norm_affine=True`` adds a per-channel scale and bias to every instance norm
  (MONAI's ``norm=("instance", {"affine": True})``). Off by default (MONAI's default); with
  it off the UNet has no normalisation parameters, so FedBN equals FedAvg on it.

Instance normalisation uses each sample's own statistics (over H, W per channel), so
padded samples of a partial batch can never influence real ones: the ``mask`` argument
is accepted and ignored, and there are no running statistics.

The split: :class:`UNetBackbone` returns ``(tokens, skips)``: ``tokens`` the bottleneck
feature map ``(B, h*w, channels[-1])`` (row-major), ``skips`` the encoder's down-layer
outputs, shallowest first. The OmniFM wrapper conditions the bottleneck tokens (ECA,
prefix/suffix prompts) and passes ``skips`` to the head by keyword;
:class:`SegmentationHead` is MONAI's decoder. For FedPer-style sharing the head (the
whole decoder) is the personal part.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax.models.common import Conv, TokenLayout, feature_map_to_tokens, prompted_body
from omnifm_jax.registry import BACKBONES

__all__ = ["TORCH_KERNEL_INIT", "MONAI_TUTORIAL", "InstanceNorm", "zero_insert", "ConvTranspose",
           "conv_transpose", "ConvNormAct", "ResidualUnit", "UpLayer", "UNetBackbone", "check_unet_config",
           "SegmentationHead"]

#: PyTorch's default convolution kernel init (``kaiming_uniform_(a=sqrt(5))``).
TORCH_KERNEL_INIT = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

#: MONAI 2D tutorial UNet: ``channels``, ``strides``, ``num_res_units``.
MONAI_TUTORIAL = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}


class InstanceNorm(nn.Module):
    """``torch.nn.InstanceNorm2d``: per sample and channel, over H and W; eps 1e-5, biased
    variance, optional affine (``scale``/``bias``), no running statistics."""
    affine: bool = False
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        xf = x.astype(jnp.float32)
        mean = jnp.mean(xf, axis=(-3, -2), keepdims=True)
        var = jnp.mean(jnp.square(xf - mean), axis=(-3, -2), keepdims=True)
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon)
        if self.affine:
            c = x.shape[-1]
            y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32) \
                + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return y.astype(x.dtype)


def zero_insert(x: jax.Array, stride: Tuple[int, int]) -> jax.Array:
    """``(B, h, w, C) -> (B, h*sh, w*sw, C)`` with ``x`` at rows/columns ``0, s, 2s, ...``
    and zeros elsewhere (the input dilation of a transposed convolution)."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return x
    b, h, w, c = x.shape
    y = x[:, :, None, :, None, :]
    y = jnp.pad(y, ((0, 0), (0, 0), (0, sh - 1), (0, 0), (0, sw - 1), (0, 0)))
    return y.reshape(b, h * sh, w * sw, c)


class ConvTranspose(nn.Module):
    """Transposed convolution whose output is exactly ``stride`` x the input size.

    Equals ``torch.nn.ConvTranspose2d(kernel, stride, padding=kernel // 2,
    output_padding=stride - 1)`` (MONAI's up-sampling convolution) with the kernel flipped
    in H and W: zero insertion (:func:`zero_insert`), then a stride-1 convolution with
    padding ``kernel // 2`` (odd kernels).
    """
    features: int
    kernel_size: int = 3
    stride: Tuple[int, int] = (2, 2)
    use_bias: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"up_kernel_size must be odd, got {k}")
        y = zero_insert(x, tuple(self.stride))
        return Conv(self.features, (k, k), padding=k // 2, use_bias=self.use_bias, kernel_init=TORCH_KERNEL_INIT,
                    name="conv")(y)


def conv_transpose(x, kernel, bias, stride):
    """Functional form of :class:`ConvTranspose` (``kernel`` HWIO), for tests."""
    k = kernel.shape[0]
    y = zero_insert(x, stride)
    out = jax.lax.conv_general_dilated(y, kernel, (1, 1), [(k // 2, k // 2)] * 2,
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return out + bias


class ConvNormAct(nn.Module):
    """MONAI ``Convolution`` with ``adn_ordering="NDA"``: conv -> instance norm -> PReLU
    (``conv_only``: the convolution alone). ``transposed``: up-sampling convolution."""
    features: int
    kernel_size: int = 3
    stride: Tuple[int, int] = (1, 1)
    transposed: bool = False
    conv_only: bool = False
    norm_affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        if self.transposed:
            y = ConvTranspose(self.features, k, tuple(self.stride), name="conv")(x)
        else:
            y = Conv(self.features, (k, k), strides=tuple(self.stride), padding=k // 2,
                     kernel_init=TORCH_KERNEL_INIT, name="conv")(x)
        if self.conv_only:
            return y
        y = InstanceNorm(affine=self.norm_affine, name="norm")(y)
        return nn.PReLU(negative_slope_init=0.25, name="act")(y)


class ResidualUnit(nn.Module):
    """MONAI ``ResidualUnit``: ``subunits`` x :class:`ConvNormAct` (the first strided) plus a
    residual path (a convolution when the stride or width changes: kernel ``kernel_size``
    when strided, else 1x1; identity otherwise); ``last_conv_only``: the last sub-unit has
    no norm/act."""
    features: int
    stride: Tuple[int, int] = (1, 1)
    kernel_size: int = 3
    subunits: int = 2
    last_conv_only: bool = False
    norm_affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        subunits = max(1, self.subunits)
        y = x
        for su in range(subunits):
            y = ConvNormAct(self.features, k, self.stride if su == 0 else (1, 1),
                            conv_only=self.last_conv_only and su == subunits - 1,
                            norm_affine=self.norm_affine, name=f"unit{su}")(y)
        res = x
        if tuple(self.stride) != (1, 1) or x.shape[-1] != self.features:
            rk = k if tuple(self.stride) != (1, 1) else 1
            res = Conv(self.features, (rk, rk), strides=tuple(self.stride), padding=rk // 2,
                       kernel_init=TORCH_KERNEL_INIT, name="residual")(x)
        return y + res


def _down_layer(features, stride, *, kernel_size, num_res_units, norm_affine, name):
    if num_res_units > 0:
        return ResidualUnit(features, (stride, stride), kernel_size, num_res_units, norm_affine=norm_affine,
                            name=name)
    return ConvNormAct(features, kernel_size, (stride, stride), norm_affine=norm_affine, name=name)


class UpLayer(nn.Module):
    """MONAI ``_get_up_layer``: transposed conv (+ norm/act unless the top layer without
    residual units), then a one-sub-unit :class:`ResidualUnit` when ``num_res_units > 0``."""
    features: int
    stride: Tuple[int, int]
    is_top: bool
    kernel_size: int = 3
    up_kernel_size: int = 3
    num_res_units: int = 2
    norm_affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        y = ConvNormAct(self.features, self.up_kernel_size, tuple(self.stride), transposed=True,
                        conv_only=self.is_top and self.num_res_units == 0, norm_affine=self.norm_affine,
                        name="upconv")(x)
        if self.num_res_units > 0:
            y = ResidualUnit(self.features, (1, 1), self.kernel_size, 1, last_conv_only=self.is_top,
                             norm_affine=self.norm_affine, name="res")(y)
        return y


@BACKBONES.register("unet")
class UNetBackbone(nn.Module):
    """MONAI UNet encoder: ``(B, H, W, C) -> (tokens (B, h*w, channels[-1]), skips)``.

    ``skips[i]`` is down layer ``i``'s output ``(B, H/(s_0...s_i), ..., channels[i])``;
    ``tokens`` the bottom layer's output at the deepest resolution. ``H`` and ``W`` must be
    multiples of ``prod(strides)`` (as in MONAI).
    """
    channels: Sequence[int] = MONAI_TUTORIAL["channels"]
    strides: Sequence[int] = MONAI_TUTORIAL["strides"]
    kernel_size: int = 3
    num_res_units: int = MONAI_TUTORIAL["num_res_units"]
    norm_affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, mask=None):
        del train, mask  # instance norm: per-sample statistics, nothing to mask or to track
        channels, strides = tuple(self.channels), tuple(self.strides)
        check_unet_config(channels, strides, self.kernel_size, self.num_res_units)
        total = math.prod(strides)
        h, w = x.shape[-3:-1]
        if h % total or w % total:
            raise ValueError(f"UNet with strides {strides} needs H and W divisible by {total}, got {h}x{w}")
        skips = []
        y = x
        for i, (c, s) in enumerate(zip(channels[:-1], strides)):
            y = _down_layer(c, s, kernel_size=self.kernel_size, num_res_units=self.num_res_units,
                            norm_affine=self.norm_affine, name=f"down{i + 1}")(y)
            skips.append(y)
        y = _down_layer(channels[-1], 1, kernel_size=self.kernel_size, num_res_units=self.num_res_units,
                        norm_affine=self.norm_affine, name="bottom")(y)
        return feature_map_to_tokens(y), tuple(skips)


def check_unet_config(channels, strides, kernel_size, num_res_units) -> None:
    """MONAI's constructor checks (``len(strides) == len(channels) - 1``, odd kernels)."""
    if len(channels) < 2:
        raise ValueError(f"UNet channels need at least 2 entries, got {channels}")
    if len(strides) != len(channels) - 1:
        raise ValueError(f"UNet needs len(strides) == len(channels) - 1, got {len(strides)} strides for "
                         f"{len(channels)} channels")
    if any(int(s) < 1 for s in strides) or any(int(c) < 1 for c in channels):
        raise ValueError(f"UNet channels and strides must be positive, got {channels}, {strides}")
    if kernel_size % 2 != 1:
        raise ValueError(f"UNet kernel_size must be odd, got {kernel_size}")
    if num_res_units < 0:
        raise ValueError(f"num_res_units must be >= 0, got {num_res_units}")


def _grid(n_body: int, input_hw: Tuple[int, int]) -> Tuple[int, int]:
    """The power-of-two down-sampling ``(h, w)`` of ``input_hw`` with ``h * w == n_body``."""
    hh, ww = input_hw
    f = 1
    while hh % f == 0 and ww % f == 0 and (hh // f) * (ww // f) >= n_body:
        if (hh // f) * (ww // f) == n_body:
            return hh // f, ww // f
        f *= 2
    raise ValueError(f"segmentation head: {n_body} body tokens are no power-of-two down-sampling of the "
                     f"{hh}x{ww} input")


class SegmentationHead(nn.Module):
    """Token sequence (+ encoder skips) -> per-pixel logits ``(B, H, W, num_classes)``.

    Reads the body tokens of ``r'``, adds the prefix tokens ``Z`` when there is one per
    body token (ECA's output, as the SR head does) and a linear read-out of the mean
    suffix token (a per-client bias), reshapes them to the bottleneck grid and runs
    MONAI's decoder: for each level, deepest first, ``UpLayer(concat([skip, y]))`` up to
    the next shallower skip's size (the top layer to the input size, ``num_classes``
    outputs). The bottleneck grid is the deepest skip's ``(h, w)``.

    Without ``skips`` (a backbone without an encoder pyramid) the grid is the power-of-two
    down-sampling of the input with ``n_body`` cells and the decoder up-samples by 2 per
    level without concatenation (width ``d`` inside, ``num_classes`` at the top).

    ``kernel_size``, ``up_kernel_size``, ``num_res_units`` and ``norm_affine`` should match
    the backbone's (the segmentation task takes them from the UNet's ``backbone_kwargs``).
    """
    num_classes: int
    kernel_size: int = 3
    up_kernel_size: int = 3
    num_res_units: int = MONAI_TUTORIAL["num_res_units"]
    norm_affine: bool = False

    @nn.compact
    def __call__(self, tokens: jax.Array, *, layout: TokenLayout, train: bool = False,
                 skips: Optional[Sequence[jax.Array]] = None) -> jax.Array:
        del train
        hh, ww = layout.input_hw
        body = prompted_body(tokens, layout)
        d = body.shape[-1]
        skips = tuple(skips) if skips else ()
        if skips:
            h, w = skips[-1].shape[-3:-1]
            if h * w != layout.n_body:
                raise ValueError(f"segmentation head: {layout.n_body} body tokens but the deepest skip is {h}x{w}")
        else:
            h, w = _grid(layout.n_body, (hh, ww))
        y = body.reshape(body.shape[:-2] + (h, w, d))
        kw = dict(kernel_size=self.kernel_size, up_kernel_size=self.up_kernel_size,
                  num_res_units=self.num_res_units, norm_affine=self.norm_affine)
        if skips:
            for i in reversed(range(len(skips))):
                y = jnp.concatenate([skips[i].astype(y.dtype), y], axis=-1)
                top = i == 0
                target = (hh, ww) if top else skips[i - 1].shape[-3:-1]
                features = self.num_classes if top else skips[i - 1].shape[-1]
                y = UpLayer(features, _stride(y.shape[-3:-1], target), top, name=f"up{i + 1}", **kw)(y)
        else:
            levels = int(round(math.log2(hh // h)))
            for j in range(levels):
                top = j == levels - 1
                y = UpLayer(self.num_classes if top else d, (2, 2), top, name=f"up{levels - j}", **kw)(y)
            if levels == 0:
                y = Conv(self.num_classes, (1, 1), kernel_init=TORCH_KERNEL_INIT, name="conv_out")(y)
        return y.astype(jnp.float32)


def _stride(current, target) -> Tuple[int, int]:
    (h, w), (th, tw) = current, target
    if th % h or tw % w:
        raise ValueError(f"segmentation head: cannot up-sample {h}x{w} to {th}x{tw} by an integer stride")
    return th // h, tw // w
