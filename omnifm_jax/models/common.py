"""Pieces shared by the backbones: convolution, normalisation and feature-map -> tokens.

Every backbone takes ``(x, *, train, mask=None)``: ``mask`` (``bool[B]``) marks the real
samples of a batch; padded samples (a partial last batch) must not reach a batch
statistic, so :class:`BatchNorm` computes its statistics over the masked samples only.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["NORMS", "CONV_PATHS", "TokenLayout", "conv_general_dilated", "resolve_conv_path", "make_conv",
           "BatchNorm", "make_norm", "feature_map_to_tokens", "masked_batch_mean", "prompted_body"]

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


# ----------------------------------------------------------------------------- convolution

_NHWC = ("NHWC", "HWIO", "NHWC")


def _nhwc_conv(x, w, strides, pads, lhs_dilation=(1, 1), rhs_dilation=(1, 1)):
    return lax.conv_general_dilated(x, w, strides, pads, lhs_dilation=lhs_dilation,
                                    rhs_dilation=rhs_dilation, dimension_numbers=_NHWC)


def _conv_with_backward(backward):
    """An NHWC convolution ``(x, w, strides, pads)`` whose VJP is ``backward(strides, pads, x,
    w, g) -> (dx, dw)`` (cast back to the operands' dtypes)."""
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
    def conv(x, w, strides, pads):
        return _nhwc_conv(x, w, strides, pads)

    def fwd(x, w, strides, pads):
        return _nhwc_conv(x, w, strides, pads), (x, w)

    def bwd(strides, pads, res, g):
        x, w = res
        dx, dw = backward(strides, pads, x, w, g)
        return dx.astype(x.dtype), dw.astype(w.dtype)

    conv.defvjp(fwd, bwd)
    return conv


def _canonical_grads(strides, pads, x, w, g):
    in_hw, k_hw, out_hw = x.shape[1:3], w.shape[0:2], g.shape[1:3]
    # d/dx: the stride-dilated output gradient convolved with the spatially reversed kernel,
    # its input/output channels swapped by an explicit transpose (HWOI -> HWIO).
    w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    pad_x = [(k - 1 - p[0], n - 1 + p[0] - (o - 1) * s)
             for n, k, o, s, p in zip(in_hw, k_hw, out_hw, strides, pads)]
    dx = _nhwc_conv(g, w_t, (1, 1), pad_x, lhs_dilation=strides)
    # d/dw: batch and channels swapped by explicit transposes, so the reduction over the
    # batch becomes the reduction over input channels of an ordinary NHWC convolution whose
    # (stride-dilated) kernel is the output gradient; [I, kh, kw, O] -> [kh, kw, I, O].
    pad_w = [(p[0], k + (o - 1) * s - n - p[0]) for n, k, o, s, p in zip(in_hw, k_hw, out_hw, strides, pads)]
    dw = _nhwc_conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), (1, 1), pad_w,
                    rhs_dilation=strides)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


_canonical_conv2d = _conv_with_backward(_canonical_grads)


def _xla_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
              feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, batch_group_count,
                                    precision, preferred_element_type)


def _is_simple_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                    batch_group_count, preferred_element_type) -> bool:
    return (lhs.ndim == 4 and feature_group_count == 1 and batch_group_count == 1
            and preferred_element_type is None
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))


def _static_pads(lhs, rhs, window_strides, padding):
    strides = tuple(int(s) for s in window_strides)
    if isinstance(padding, str):
        pads = tuple(lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[0:2], strides, padding))
    else:
        pads = tuple((int(lo), int(hi)) for lo, hi in padding)
    return strides, tuple((int(lo), int(hi)) for lo, hi in pads)


def _custom_path(conv2d, doc: str):
    """A ``lax.conv_general_dilated``-like function that computes plain 2-D NHWC convolutions
    with ``conv2d`` and every other convolution with XLA's own."""
    def path(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
             feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
        if not _is_simple_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                               batch_group_count, preferred_element_type):
            return _xla_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                             feature_group_count, batch_group_count, precision, preferred_element_type)
        strides, pads = _static_pads(lhs, rhs, window_strides, padding)
        return conv2d(lhs, rhs.astype(lhs.dtype), strides, pads)

    path.__doc__ = doc
    return path


# ----------------------------------------------------------------------------- per-client convolution
#
# Under the engine's client ``vmap`` the gradient is taken INSIDE the map: JAX transposes each
# client's convolution first and batches the transposed convolution afterwards, so every weight
# gradient becomes a FEATURE-grouped convolution (the client's batch acting as input channels,
# the whole image as the window), which XLA:GPU runs as a cuDNN *forward* convolution with a
# huge window (its backward-filter rewrite needs ``feature_group_count == 1``). Here the
# backward pass is a function with its own batching rule: under ``vmap`` over per-client
# kernels it is computed as the VJP of the batched (grouped) forward convolution, whose weight
# gradient JAX writes as a BATCH-grouped convolution -- what cuDNN's backward-filter takes.


@functools.lru_cache(maxsize=None)
def _grads_for(strides, pads):
    """The backward pass for one (strides, padding): ``(x, w, g) -> (dx, dw)`` with a batching
    rule that keeps per-client weight gradients batch-grouped."""
    conv = lambda a, b: _nhwc_conv(a, b, strides, pads)

    @jax.custom_batching.custom_vmap
    def grads(x, w, g):
        return jax.vjp(conv, x, w)[1](g)

    @grads.def_vmap
    def rule(axis_size, in_batched, x, w, g):
        x_b, w_b, g_b = in_batched
        if not w_b:
            # A kernel shared by the mapped axis: JAX's own batching folds that axis into the
            # batch, already the backward-filter form.
            one = lambda a, c: jax.vjp(conv, a, w)[1](c)
            return jax.vmap(one, in_axes=(0 if x_b else None, 0 if g_b else None))(x, g), (True, True)
        x, g = (a if b else jnp.broadcast_to(a, (axis_size,) + a.shape) for a, b in ((x, x_b), (g, g_b)))
        return jax.vjp(jax.vmap(conv), x, w)[1](g), (True, True)

    return grads


# Strides and padding travel as a closure: custom_vmap maps over array arguments only.
_per_client_conv2d = _conv_with_backward(lambda strides, pads, x, w, g: _grads_for(strides, pads)(x, w, g))


# ----------------------------------------------------------------------------- convolution as patches
#
# On one H200 the per-client round's weight gradients ran as cuDNN backward-filter
# convolutions, but every forward and input-gradient convolution stayed FEATURE-grouped (one
# group per client): 2.1x the shared-model floor, and no faster in bf16, whose dense floor ran
# 1.66x faster. Written as patches times a matrix, a convolution has no groups to form: under
# the client vmap the forward pass and both gradients are batched matrix products (the
# clients as their batch dimension), and the patches' gradient is a sum of shifted slices.
# The price is memory: the patches hold kh x kw times the input.


def _patches_conv2d(x, w, strides, pads):
    """NHWC x HWIO convolution as ``patches(x) @ w``: the ``kh * kw`` shifted, strided views
    of the padded input concatenated on the channel axis (kernel-row, kernel-column, channel
    order, as ``w.reshape(kh * kw * C, F)`` reads them), then one matrix product."""
    kh, kw, c, f = w.shape
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    views = [xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] for i in range(kh) for j in range(kw)]
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return lax.dot_general(patches, w.reshape(kh * kw * c, f), (((3,), (0,)), ((), ())))


def _patches_path(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                  feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
    """Plain 2-D NHWC convolutions with non-negative padding as patches times a matrix (see
    ``_patches_conv2d``); every other convolution with XLA's own."""
    if _is_simple_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                       batch_group_count, preferred_element_type):
        strides, pads = _static_pads(lhs, rhs, window_strides, padding)
        if all(p >= 0 for pair in pads for p in pair):
            return _patches_conv2d(lhs, rhs.astype(lhs.dtype), strides, pads)
    return _xla_conv(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                     feature_group_count, batch_group_count, precision, preferred_element_type)


#: How a backbone computes its convolutions (the backbones' ``conv`` attribute).
CONV_PATHS = ("auto", "xla", "canonical", "per_client", "patches")
_PATHS = {"xla": _xla_conv,
          "canonical": _custom_path(_canonical_conv2d, "XLA:CPU's fast form (see conv_general_dilated)"),
          "per_client": _custom_path(_per_client_conv2d, "per-client weight gradients batch-grouped under vmap"),
          "patches": _patches_path}


def _check_conv_path(path: str) -> None:
    if path not in CONV_PATHS:
        raise ValueError(f"unknown conv path {path!r}; expected one of {CONV_PATHS}")


def resolve_conv_path(path: str) -> str:
    """``"auto"`` -> ``"canonical"`` on CPU, ``"per_client"`` on accelerators; others unchanged.

    * ``xla``: ``lax.conv_general_dilated`` and the gradients JAX derives;
    * ``canonical``: gradients as canonical NHWC convolutions with explicit transposes
      (XLA:CPU runs only that form fast inside loops; see :func:`conv_general_dilated`);
    * ``per_client``: gradients with a batching rule that keeps per-client weight gradients
      batch-grouped (cuDNN's backward-filter convolution on GPU) under the client ``vmap``;
    * ``patches``: the convolution as patches times a matrix, so that under the client
      ``vmap`` the forward pass and both gradients are batched matrix products (no grouped
      convolution at all); kh x kw times the input's memory for the patches. A candidate for
      accelerators, not yet measured on one (``experiments/benchmarks/formulations.py``).
    All four give the same values (tests compare forward and gradients, under ``vmap`` and
    ``jit``). Forward-mode differentiation (``jax.jvp``) of ``canonical`` and ``per_client``
    raises JAX's custom-VJP error; use ``xla`` for it.
    """
    _check_conv_path(path)
    if path == "auto":
        return "canonical" if jax.default_backend() == "cpu" else "per_client"
    return path


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None, *, path: str = "auto"):
    """``lax.conv_general_dilated`` with the gradient formulation ``path`` (:data:`CONV_PATHS`,
    :func:`resolve_conv_path`); ``"auto"`` picks the backend's.

    Why ``canonical`` on CPU: XLA:CPU runs a convolution through its fast library kernel only
    in the canonical ``NHWC x HWIO -> NHWC`` form. The gradients JAX derives are convolutions
    in other dimension orders (the weight gradient ``f01b_i01o->01bf``), which XLA:CPU rewrites
    into the canonical form -- but only in the program's entry computation
    (``ConvCanonicalization`` visits nothing else). Inside a ``while`` loop (every
    ``lax.scan``, ``fori_loop`` or ``lax.map`` of local steps) they fall back to a generic
    loop nest: measured 9x slower for FedAvgCNN's training step. ``canonical`` writes the
    backward pass as canonical convolutions with explicit transposes, so every convolution
    inside a loop is a fast one. GPU libraries take any dimension order (the transposes would
    only cost memory traffic there); what they need is the weight gradient as a backward-filter
    convolution, which ``per_client`` gives under the client ``vmap``.
    """
    return _PATHS[resolve_conv_path(path)](lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                           dimension_numbers, feature_group_count, batch_group_count,
                                           precision, preferred_element_type)


def make_conv(path: str = "auto"):
    """``flax.linen.Conv`` computing with :func:`conv_general_dilated` and ``path``."""
    _check_conv_path(path)  # unknown path: error here, at model construction (without asking for the
    # backend, which would start it: a multi-process run must join before that)
    return functools.partial(nn.Conv, conv_general_dilated=functools.partial(conv_general_dilated, path=path))


Conv = make_conv("auto")
Conv.__doc__ = ("``flax.linen.Conv`` with :func:`conv_general_dilated` (the backend's gradient formulation: "
                "fast in XLA:CPU loops, backward-filter convolutions on GPU).")


# ----------------------------------------------------------------------------- normalisation

class BatchNorm(nn.Module):
    """Batch normalisation with PyTorch's semantics and a sample mask.

    Training: normalise with the batch mean and biased variance over the ``mask``-ed
    samples (all positions of each real sample); update the running statistics as
    ``torch.nn.BatchNorm2d`` does: ``running = (1 - momentum) * running + momentum * batch``
    with the UNBIASED batch variance. Evaluation: the running statistics. Padded samples
    (mask False) change neither the output of the real samples nor the statistics.
    Variables: ``params/{scale, bias}``, ``batch_stats/{mean, var}``.
    """
    use_running_average: bool = False
    momentum: float = 0.1
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.float32)
        if self.use_running_average:
            mean, var = ra_mean.value, ra_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            if mask is None:
                w = jnp.ones(x.shape[:1] + (1,) * (x.ndim - 1), jnp.float32)
            else:
                w = mask.astype(jnp.float32).reshape(x.shape[:1] + (1,) * (x.ndim - 1))
            per_sample = 1
            for d in x.shape[1:-1]:
                per_sample *= d
            count = jnp.sum(w) * per_sample
            mean = jnp.sum(xf * w, axis=axes) / jnp.maximum(count, 1.0)
            var = jnp.sum(jnp.square(xf - mean) * w, axis=axes) / jnp.maximum(count, 1.0)
            if not self.is_initializing():
                unbiased = var * count / jnp.maximum(count - 1.0, 1.0)
                ra_mean.value = (1.0 - self.momentum) * ra_mean.value + self.momentum * mean
                ra_var.value = (1.0 - self.momentum) * ra_var.value + self.momentum * unbiased
        y = (xf - mean) * jax.lax.rsqrt(var + self.epsilon) * scale + bias
        return y.astype(x.dtype)


class _GroupNormAuto(nn.Module):
    groups: int = 32
    dtype: Optional[Any] = None  # output dtype; None: flax's promotion with the f32 parameters

    @nn.compact
    def __call__(self, x, mask=None):
        del mask  # per-sample statistics: padded samples touch nothing else
        c = x.shape[-1]
        g = min(self.groups, c)
        while c % g:
            g -= 1
        return nn.GroupNorm(num_groups=g, epsilon=1e-5, dtype=self.dtype)(x)


class _Identity(nn.Module):

    @nn.compact
    def __call__(self, x, mask=None):
        del mask
        return x


def make_norm(kind: str, *, train: bool, name: str, groups: int = 32, dtype: Optional[Any] = None) -> nn.Module:
    """BatchNorm (running statistics in the ``batch_stats`` collection) or GroupNorm.

    The returned module is called as ``norm(x, mask)``. ``dtype``: GroupNorm's output dtype
    (its statistics are computed in float32 either way; parameters stay float32). Pass the
    compute dtype: with ``None``, flax promotes a bfloat16 input with the float32 scale and
    bias to a float32 output, and a bfloat16 network goes back to float32 after every norm.
    BatchNorm returns its input's dtype.
    """
    if kind == "batch":
        return BatchNorm(use_running_average=not train, name=name)
    if kind == "group":
        return _GroupNormAuto(groups=groups, dtype=dtype, name=name)
    if kind == "none":
        return _Identity(name=name)
    raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


def feature_map_to_tokens(fmap: jax.Array) -> jax.Array:
    """``(B, h, w, d) -> (B, h*w, d)`` in row-major (h, w) order."""
    b, h, w, d = fmap.shape
    return jnp.reshape(fmap, (b, h * w, d))


def masked_batch_mean(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """Mean of ``x (B, ...)`` over the batch axis, over ``mask``-ed samples only."""
    if mask is None:
        return jnp.mean(x, axis=0)
    w = mask.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return jnp.sum(x * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)



def prompted_body(tokens: jax.Array, layout: TokenLayout) -> jax.Array:
    """The body tokens a dense head reads from ``[Z || r || c]``: ``r``, plus the prefix
    tokens ``Z`` when there is one per body token (ECA's output), plus a linear read-out of
    the mean suffix token (a per-client bias). Call it inside a compact ``__call__``: the
    read-out is a submodule of the calling head, named ``suffix_bias``."""
    body = tokens[..., layout.n_prefix:layout.n_prefix + layout.n_body, :]
    if layout.n_prefix == layout.n_body:
        body = body + tokens[..., :layout.n_prefix, :]
    if layout.n_suffix:
        suffix = tokens[..., layout.n_prefix + layout.n_body:, :].mean(axis=-2, keepdims=True)
        body = body + nn.Dense(body.shape[-1], name="suffix_bias")(suffix)
    return body
