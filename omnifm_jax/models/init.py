"""PyTorch's default weight initialisation (PFLlib's models) for a flax params tree.

PyTorch's ``nn.Linear`` and ``nn.Conv2d`` draw the weight with ``kaiming_uniform_(a=sqrt(5))``
and the bias uniform in ``+-1/sqrt(fan_in)``; both bounds are ``1/sqrt(fan_in)``
(``gain * sqrt(3 / fan_in)`` with ``gain = sqrt(2 / (1 + 5))``). Norm layers start at scale 1,
bias 0, as flax's do. Flax's defaults are ``lecun_normal`` kernels and zero biases.

:func:`pytorch_default_init` re-draws every ``kernel`` leaf of a Dense (2-D, ``(in, out)``) or
2-D convolution (4-D, HWIO) module and the module's ``bias`` next to it, with
``fan_in = prod(kernel.shape[:-1])`` (a grouped/depthwise convolution's kernel holds
``in / groups`` on axis -2, as PyTorch's weight does on axis 1, so the product is PyTorch's).
Every other leaf is returned as it is: norm scales/biases, prompts, PReLU slopes, and the
3-D ``DenseGeneral`` kernels of attention layers (``nn.MultiheadAttention`` has its own init in
PyTorch, not this one).

Transposed convolutions: PyTorch's ``ConvTranspose2d`` weight is ``(in, out / groups, kh,
kw)``, so its fan_in is ``out * kh * kw``. No model here uses ``nn.ConvTranspose``; the UNet's
up-sampling convolution (:class:`omnifm_jax.models.unet.ConvTranspose`, module path
``.../upconv/conv/conv``) is a transposed convolution written as an ordinary HWIO one, and
modules whose path matches :data:`TRANSPOSED` get ``fan_in = kh * kw * out``.

Each re-drawn module gets its own key: ``fold_in(key, crc32(module path))``, so that the draw
of a leaf depends on the key and its path only (a sub-tree cut out of the full tree, as the
shared or personal part of a model, draws the same values).
"""
from __future__ import annotations

import math
import re
import zlib
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from omnifm_jax import checks
from omnifm_jax.config import WEIGHT_INITS

__all__ = ["WEIGHT_INITS", "PYTORCH_MODULES", "TRANSPOSED", "torch_fan_in", "pytorch_default_init",
           "apply_weight_init"]

#: Top-level modules of a model's params that stand for PFLlib's model (``weight_init="pytorch"``);
#: OmniFM's own modules (tokenizer, ECA/FiLM, prompts) keep their initialisers.
PYTORCH_MODULES = ("backbone", "head")
#: Module paths (``/``-joined, from the tree's root) of transposed convolutions stored as HWIO.
TRANSPOSED = (r"(^|/)upconv/conv/conv$",)


def torch_fan_in(kernel_shape: Sequence[int], transposed: bool = False) -> int:
    """PyTorch's fan_in of a flax kernel: ``prod(shape[:-1])`` (Dense ``(in, out)``, Conv HWIO);
    for a transposed convolution stored as HWIO, ``kh * kw * out``."""
    shape = tuple(int(d) for d in kernel_shape)
    if transposed:
        return math.prod(shape[:-2]) * shape[-1]
    return math.prod(shape[:-1])


def _redraw(key, module: dict, path: str, transposed: Tuple[str, ...]) -> dict:
    kernel = module["kernel"]
    fan_in = torch_fan_in(kernel.shape, any(re.search(p, path) for p in transposed))
    bound = 1.0 / math.sqrt(fan_in)
    k_kernel, k_bias = jax.random.split(jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF))
    out = dict(module)
    out["kernel"] = jax.random.uniform(k_kernel, kernel.shape, jnp.float32, -bound, bound).astype(kernel.dtype)
    if "bias" in module and module["bias"] is not None:
        bias = module["bias"]
        out["bias"] = jax.random.uniform(k_bias, bias.shape, jnp.float32, -bound, bound).astype(bias.dtype)
    return out


def pytorch_default_init(key: jax.Array, params: Any, *, only: Optional[Sequence[str]] = None,
                         transposed: Sequence[str] = TRANSPOSED) -> Any:
    """``params`` with every Dense/Conv ``kernel`` and its sibling ``bias`` re-drawn as PyTorch's
    default (uniform in ``+-1/sqrt(fan_in)``); all other leaves unchanged (the same arrays).

    Args:
      key: PRNG key; each module's key is ``fold_in(key, crc32(its path))``.
      params: a flax ``params`` collection (nested dicts).
      only: top-level keys to re-draw (e.g. :data:`PYTORCH_MODULES`); None: the whole tree.
      transposed: regexes on module paths of transposed convolutions (see :data:`TRANSPOSED`).
    """
    transposed = tuple(transposed)

    def walk(node, path):
        if not isinstance(node, dict):
            return node
        kernel = node.get("kernel")
        if kernel is not None and not isinstance(kernel, dict) and getattr(kernel, "ndim", 0) in (2, 4):
            return _redraw(key, node, path, transposed)
        return {k: walk(v, f"{path}/{k}" if path else str(k)) for k, v in node.items()}

    if only is None:
        return walk(dict(params), "")
    return {k: walk(v, str(k)) if k in only else v for k, v in dict(params).items()}


def apply_weight_init(weight_init: str, key: jax.Array, variables: Any) -> Any:
    """``variables`` (a model's ``init`` output) under the config's ``weight_init``: ``"flax"``
    returns them as they are; ``"pytorch"`` re-draws the ``params`` of :data:`PYTORCH_MODULES`
    with :func:`pytorch_default_init`."""
    checks.choice("weight_init", weight_init, WEIGHT_INITS)
    if weight_init == "flax" or "params" not in variables:
        return variables
    return {**variables, "params": pytorch_default_init(key, variables["params"], only=PYTORCH_MODULES)}
