"""Super-resolution: L1 loss on [0, 1] images; PSNR and SSIM (dm-pix) per client and mean.

The prediction is ``model_output + bicubic_upsample(lr)`` (a global residual skip), so the
network learns the detail that bicubic interpolation misses. Inputs are scaled to [0, 1]
like the targets (the skip needs both in one range). Metrics are computed on the
prediction clipped to [0, 1].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax.checks import ConfigError
from omnifm_jax.models.sr import PixelShuffleHead
from omnifm_jax.registry import TASKS
from omnifm_jax.tasks.base import Task, task_options


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

    def eval_stats(pred, target):
        # Imported here, not at module level: classification runs (and the speed
        # benchmarks) then need no dm-pix, e.g. on a machine where only JAX is installed.
        import dm_pix

        clipped = jnp.clip(pred, 0.0, 1.0)
        return {"psnr": dm_pix.psnr(clipped, target), "ssim": dm_pix.ssim(clipped, target),
                "loss": loss(pred, target)}

    def client_metrics(stats):
        n = int(np.shape(stats["psnr"])[0])
        if n == 0:
            return {"psnr": float("nan"), "ssim": float("nan"), "n": 0}
        return {"psnr": float(np.mean(np.asarray(stats["psnr"], np.float64))),
                "ssim": float(np.mean(np.asarray(stats["ssim"], np.float64))), "n": n}

    def summarize(stats, counts):
        counts = np.asarray(counts)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        per = [client_metrics({k: v[bounds[i]:bounds[i + 1]] for k, v in stats.items()})
               for i in range(counts.size) if counts[i] > 0]
        # Mean over clients of the per-client means (the paper's "Avg." rows).
        return {"psnr": float(np.mean([m["psnr"] for m in per])) if per else float("nan"),
                "ssim": float(np.mean([m["ssim"] for m in per])) if per else float("nan"),
                "test_loss": float(np.mean(np.asarray(stats["loss"], np.float64))) if per else float("nan")}

    return Task("super_resolution", lambda: PixelShuffleHead(scale, channels), prepare_targets, predict,
                loss, eval_stats, client_metrics, summarize, "psnr",
                baseline=lambda x: bicubic_upsample(x, scale))


@TASKS.register("super_resolution")
def from_config(cfg, fed) -> Task:
    """The task of a run: ``scale`` from the config, checked against the data's HR/LR sizes;
    inputs stay in [0, 1] (its bicubic skip and its targets are)."""
    task_options(cfg, {})
    target = (getattr(fed, "info", None) or {}).get("target")
    if target in ("mask", "fusion"):
        other = "segmentation" if target == "mask" else "fusion"
        raise ConfigError(f"dataset {cfg['dataset']!r} is a {other} set (its targets are "
                          f"{'masks' if target == 'mask' else 'the source images'}); use task={other}")
    if fed.num_classes != 0:
        raise ConfigError(f"dataset {cfg['dataset']!r} is a classification set; use task=classification")
    if cfg["input_scaling"] not in ("auto", "unit"):
        raise ConfigError(f"input_scaling={cfg['input_scaling']!r} does not fit task=super_resolution: "
                          "its bicubic skip and its targets are in [0, 1] (use 'auto' or 'unit')")
    hr, lr = fed.train.y.shape[1], fed.train.x.shape[1]
    if hr != lr * cfg["scale"]:
        raise ConfigError(f"scale={cfg['scale']} but the data's HR/LR ratio is {hr}/{lr}")
    return super_resolution(cfg["scale"], channels=fed.train.y.shape[-1])
