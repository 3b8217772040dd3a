"""Super-resolution: L1 loss on [0, 1] images; PSNR and SSIM (dm-pix) per client and mean.

The prediction is ``model_output + bicubic_upsample(lr)`` (a global residual skip), so the
network learns the detail that bicubic interpolation misses. Metrics are computed on the
prediction clipped to [0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax.models.sr import PixelShuffleHead
from omnifm_jax.tasks.base import Task


def bicubic_upsample(lr: jax.Array, scale: int) -> jax.Array:
    """Bicubic upsampling ``(..., h, w, C) -> (..., h*scale, w*scale, C)`` (jax.image).

    The in-graph twin of :func:`omnifm_jax.data.superres.bicubic_upsample` (Pillow, on the
    host), which builds the data; tests/test_tasks.py checks the two agree.
    """
    shape = lr.shape[:-3] + (lr.shape[-3] * scale, lr.shape[-2] * scale, lr.shape[-1])
    return jax.image.resize(lr, shape, method="bicubic")


def super_resolution(scale: int, channels: int = 3) -> Task:
    """The super-resolution task at ``scale`` (2, 4 or 8)."""
    if scale not in (2, 4, 8):
        raise ValueError(f"scale must be 2, 4 or 8, got {scale}")

    def prepare_targets(y):
        return y.astype(jnp.float32) / 255.0

    def predict(out, x):
        return out + bicubic_upsample(x, scale)

    def loss(pred, target):
        return jnp.mean(jnp.abs(pred - target), axis=(-3, -2, -1))

    def eval_stats(pred, target, mask):
        # Imported here, not at module level: classification runs (and the speed
        # benchmarks) then need no dm-pix, e.g. on a machine where only JAX is installed.
        import dm_pix

        pred = jnp.clip(pred, 0.0, 1.0)
        w = mask.astype(jnp.float32)
        psnr = jnp.where(mask, dm_pix.psnr(pred, target), 0.0)
        ssim = jnp.where(mask, dm_pix.ssim(pred, target), 0.0)
        return {"psnr_sum": jnp.sum(psnr), "ssim_sum": jnp.sum(ssim), "n": jnp.sum(w)}

    def client_metrics(stats):
        n = float(stats["n"])
        return {"psnr": float(stats["psnr_sum"]) / n if n else float("nan"),
                "ssim": float(stats["ssim_sum"]) / n if n else float("nan"), "n": int(n)}

    def summarize(stats):
        n = np.asarray(stats["n"], np.float64)
        has = n > 0
        psnr = np.asarray(stats["psnr_sum"], np.float64)[has] / n[has]
        ssim = np.asarray(stats["ssim_sum"], np.float64)[has] / n[has]
        # Mean over clients of the per-client means (the paper's "Avg." rows).
        return {"psnr": float(psnr.mean()), "ssim": float(ssim.mean())}

    return Task("super_resolution", lambda: PixelShuffleHead(scale, channels), prepare_targets, predict,
                loss, eval_stats, client_metrics, summarize, "psnr",
                baseline=lambda x: bicubic_upsample(x, scale))
