"""LoRA adapters (Hu et al., 2022) on a backbone's dense layers, without touching its code.

``LoRA(inner=backbone, targets=("fc1",), rank=8, alpha=32.0)`` runs ``backbone`` with every
``flax.linen.Dense`` whose module path (``backbone/fc1``, ...) matches one of ``targets``
(regexes, searched) computing ``y = x W + b + (alpha / rank) * (x A) B``. ``A`` (``lora_a``,
``(d_in, rank)``, normal with std ``1 / rank``) and ``B`` (``lora_b``, ``(rank, d_out)``,
zeros) are new parameters of that layer (``params/backbone/fc1/lora_a``), so the adapted
model starts as the backbone and every other path is unchanged (personal-parameter patterns,
``init_from`` and ``trainable`` rules work as before). The wrapper shares the backbone's
scope (``nn.share_scope``): it adds no level to the parameter tree.

Parameter-efficient regimes are configs: ``lora={"targets": [...], "rank": 8, "alpha": 32}``
adds the adapters, ``trainable=["lora_", "params/head/"]`` trains only them and the head
(:mod:`omnifm_jax.finetune`), ``init_from`` loads the pretrained weights (the adapters are
not in the source: select the others with ``init_params``).
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from omnifm_jax.checks import ConfigError

__all__ = ["LoRA", "check_options", "wrap"]

OPTIONS = {"targets": None, "rank": 8, "alpha": 32.0}


class LoRA(nn.Module):
    """``inner`` with LoRA adapters on its matching dense layers (module docstring)."""
    inner: nn.Module
    targets: Sequence[str]
    rank: int = 8
    alpha: float = 32.0

    def setup(self):
        nn.share_scope(self, self.inner)

    def image_of(self, x: Any) -> Any:
        """The wrapped backbone's :meth:`image_of` (see ``models.omnifm.image_part``)."""
        image_of = getattr(self.inner, "image_of", None)
        return x if image_of is None else image_of(x)

    def __call__(self, *args, **kwargs) -> Any:
        with nn.intercept_methods(_interceptor(tuple(self.targets), int(self.rank), float(self.alpha))):
            return self.inner(*args, **kwargs)


def _interceptor(targets, rank, alpha):
    compiled = [re.compile(t) for t in targets]

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if not (type(module) is nn.Dense and context.method_name == "__call__"
                and any(c.search("/".join(str(p) for p in module.path)) for c in compiled)):
            return next_fun(*args, **kwargs)
        x = args[0]
        a = module.param("lora_a", nn.initializers.normal(1.0 / rank), (x.shape[-1], rank), jnp.float32)
        b = module.param("lora_b", nn.initializers.zeros, (rank, module.features), jnp.float32)
        y = next_fun(*args, **kwargs)
        delta = (x.astype(y.dtype) @ a.astype(y.dtype)) @ b.astype(y.dtype)
        return y + (alpha / rank) * delta

    return intercept


def check_options(options: Any) -> dict:
    """``lora`` config value -> its options with defaults (ConfigError when malformed)."""
    if not isinstance(options, dict):
        raise ConfigError(f"lora must be None or a dict like {{'targets': ['fc1'], 'rank': 8, 'alpha': 32}}, "
                          f"got {options!r}")
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"lora: unknown option(s) {unknown}; options: {sorted(OPTIONS)}")
    out = {**OPTIONS, **options}
    targets = out["targets"]
    if not isinstance(targets, (list, tuple)) or not targets or not all(isinstance(t, str) and t for t in targets):
        raise ConfigError(f"lora.targets must be a non-empty list of regexes on module paths, got {targets!r}")
    for t in targets:
        try:
            re.compile(t)
        except re.error as exc:
            raise ConfigError(f"lora.targets {t!r}: bad regular expression ({exc})") from None
    if not (isinstance(out["rank"], int) and not isinstance(out["rank"], bool) and out["rank"] >= 1):
        raise ConfigError(f"lora.rank must be an integer >= 1, got {out['rank']!r}")
    if not (isinstance(out["alpha"], (int, float)) and not isinstance(out["alpha"], bool) and out["alpha"] > 0):
        raise ConfigError(f"lora.alpha must be a number > 0, got {out['alpha']!r}")
    return out


def wrap(backbone: nn.Module, options: Any) -> nn.Module:
    """``backbone`` with the adapters of the ``lora`` config value (None: unchanged)."""
    if options is None:
        return backbone
    o = check_options(options)
    return LoRA(inner=backbone, targets=tuple(o["targets"]), rank=int(o["rank"]), alpha=float(o["alpha"]))
