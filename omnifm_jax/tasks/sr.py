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

from omnifm_jax import checks
from omnifm_jax.checks import ConfigError
from omnifm_jax.models.sr import PixelShuffleHead
from omnifm_jax.tasks.base import MetricSpec, Task, TaskInfo, register_task

__all__ = ["super_resolution", "bicubic_upsample", "INFO", "METRIC_SPECS", "SCALES"]

#: The metrics the task reports (``psnr`` is the headline).
METRIC_SPECS = (MetricSpec("psnr", "PSNR (dB)"), MetricSpec("ssim", "SSIM"),
                MetricSpec("test_loss", "Test loss", higher_is_better=False))
#: Super-resolution factors (``task_kwargs.scale``).
SCALES = (2, 4, 8)


def bicubic_upsample(lr: jax.Array, scale: int) -> jax.Array:
    """Bicubic upsampling ``(..., h, w, C) -> (..., h*scale, w*scale, C)`` (jax.image).

    The in-graph twin of :func:`omnifm_jax.data.sr.bicubic_upsample` (Pillow, on the
    host), which builds the data; tests/test_tasks.py checks the two agree.
    """
    shape = lr.shape[:-3] + (lr.shape[-3] * scale, lr.shape[-2] * scale, lr.shape[-1])
    return jax.image.resize(lr, shape, method="bicubic")


def super_resolution(scale: int, channels: int = 3) -> Task:
    """The super-resolution task at ``scale`` (2, 4 or 8)."""
    if scale not in SCALES:
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
                baseline=lambda x: bicubic_upsample(x, scale), metrics=METRIC_SPECS, baseline_name="bicubic")


def _check_options(opts) -> None:
    scale = opts["scale"]
    checks.require(checks.is_int(scale) and scale in SCALES, f"task_kwargs.scale must be 2, 4 or 8, got {scale!r}")


def _check_data(cfg, fed, opts) -> None:
    if cfg["input_scaling"] not in ("auto", "unit"):
        raise ConfigError(f"input_scaling={cfg['input_scaling']!r} does not fit task=super_resolution: "
                          "its bicubic skip and its targets are in [0, 1] (use 'auto' or 'unit')")
    hr, lr = fed.train.y.shape[1], fed.train.x.shape[1]
    if hr != lr * opts["scale"]:
        raise ConfigError(f"task_kwargs.scale={opts['scale']} but the data's HR/LR ratio is {hr}/{lr}")


INFO = TaskInfo("super_resolution", targets=("images",),
                needs="a high-resolution target image per low-resolution input (e.g. synthetic_sr, breakhis_sr)",
                metrics=METRIC_SPECS, primary_metric="psnr", options={"scale": 2}, check=_check_options,
                check_data=_check_data)


@register_task(INFO)
def from_config(cfg, fed, opts) -> Task:
    """The task of a run: ``task_kwargs.scale``, checked against the data's HR/LR sizes;
    inputs stay in [0, 1] (its bicubic skip and its targets are)."""
    return super_resolution(opts["scale"], channels=fed.train.y.shape[-1])
