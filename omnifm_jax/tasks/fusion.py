"""Multi-modal image fusion (OmniFM Sec. 4.5, Table 7): an unsupervised U2Fusion-style loss,
and VIF / SSIM / L1 of the fused image against both sources.

Data (see data/fusion.py): inputs ``x`` and targets ``y`` are the two registered sources,
``uint8[..., 2]`` (channel 0 MRI = source A, channel 1 CT/PET/SPECT as grey = source B);
both are scaled to [0, 1]. The model (e.g. ``u2fusion`` + :class:`FusionHead`) outputs the
fused image ``F`` ``(B, H, W, 1)`` in (0, 1); ``predict`` is the identity.

Loss per sample (U2Fusion, Xu et al. TPAMI 2020, Eq. 3-6, with a gradient term added)::

    w = softmax((info_A, info_B) / (info_A + info_B) / temperature)       (constants)
    L = ssim_weight      * sum_i w_i (1 - SSIM(F, I_i))
      + intensity_weight * sum_i w_i mean((F - I_i)^2)
      + grad_weight      * mean| |grad F| - max(|grad A|, |grad B|) |

* Information measure: U2Fusion weighs each source by the mean squared response of its
  VGG16 feature maps to the operator ``[[1,1,1],[1,-8,1],[1,1,1]] / 8`` (neighbour mean
  minus centre), averaged over 5 layers, divided by a data-set constant ``c`` and
  soft-maxed. There is no pretrained VGG here, so the same operator is applied to the
  source intensities themselves (zero padding, [0, 1] scale): ``info_i = mean((lap8 *
  I_i)^2)``, U2Fusion's measure at "layer 0". It is cheap, exact in JAX and responds to the
  same thing (local detail). The measures are divided by their sum before the softmax, so
  ``temperature`` means the same at every resolution and intensity scale (U2Fusion's ``c``
  had to be retuned per data set); equal information gives equal weights, and the default
  ``temperature = 0.5`` turns a 30/70 split of the information into weights 0.31/0.69.
  The weights depend on the sources only (no gradient), as in U2Fusion.
* SSIM: dm-pix (11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, 'valid' filtering,
  mean of the SSIM map), which is U2Fusion's ``SSIM_LOSS``.
* Intensity: mean squared error (U2Fusion's ``Fro_LOSS`` / HW; its weight 20 is the default).
* Gradient (not in U2Fusion; the max-gradient texture loss of SwinFusion / CDDFuse): Sobel
  ``|G_x| + |G_y|`` with zero padding; it keeps the sharper edge of either source.

Metrics (``eval_stats`` per sample, then per client, then the unweighted mean over clients
as the paper's "Avg" rows), following the evaluation code of CDDFuse (Zhao et al. CVPR
2023, ``utils/Evaluator.py``, used by most recent MMIF papers):

* ``vif`` = ``VIFF(F, A, B) = VIF(A -> F) + VIF(B -> F)``, the SUM over the two sources,
  each the multi-scale pixel-domain VIF (VIFP, Sheikh & Bovik 2006): 4 scales with
  Gaussian windows of ``N = 17, 9, 5, 3`` pixels (``sd = N / 5``, MATLAB ``fspecial``),
  'valid' filtering, decimation by 2 between scales, ``sigma_nsq = 2``, on [0, 255] grey
  levels, with CDDFuse's guards for flat windows and NaN -> 1. ``vif_mri`` / ``vif_other``
  are the two terms. (Table 7's values, 0.18-0.33, are on the scale of ONE term; the paper
  does not say which convention it used, so both are reported: ``vif / 2`` is the mean.)
* ``ssim`` = ``SSIM(F, A) + SSIM(F, B)`` (CDDFuse's sum; dm-pix SSIM on [0, 1], not
  skimage's 7x7 uniform window), with ``ssim_mri`` / ``ssim_other``.
* ``l1`` = ``(mean|F - A| + mean|F - B|) / 2`` on [0, 1] (as CDDFuse averages its MSE over
  the two sources), with ``l1_mri`` / ``l1_other``. Lower is better.
* The fused image is clipped to [0, 1] and quantised to 8 bits before every metric, as
  the reference evaluates fused images saved as 8-bit PNGs; the sources are uint8 already.
* ``primary_metric = "vif"`` (higher is better).

The VIF is computed in float32 (JAX's default) with HIGHEST-precision convolutions;
``E[x^2] - E[x]^2`` on [0, 255] values then carries absolute errors of ~1e-2 grey
levels^2 in the local variances, against ``sigma_nsq = 2``: tests/test_fusion.py checks
it against a float64 NumPy transcription of the reference to 1e-4 relative.
"""
from __future__ import annotations

from typing import Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from omnifm_jax import checks
from omnifm_jax.checks import ConfigError
from omnifm_jax.models.fusion import FusionHead
from omnifm_jax.tasks.base import MetricSpec, Task, TaskInfo, register_task

#: Task options (``task_kwargs``) and their defaults.
DEFAULTS = {
    "ssim_weight": 1.0,
    "intensity_weight": 20.0,
    "grad_weight": 1.0,
    "temperature": 0.5,
    "vif_scales": 4,
    "head_widths": (64, 32, 16),
}

VIF_SIGMA_NSQ = 2.0
VIF_EPS = 1e-10
MAX_VIF_SCALES = 4

LAPLACIAN8 = np.array([[1, 1, 1], [1, -8, 1], [1, 1, 1]], np.float64) / 8.0
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], np.float64)
SOBEL_Y = SOBEL_X.T.copy()


# ----------------------------------------------------------------------------- VIF

def vif_window_1d(scale: int) -> np.ndarray:
    """The 1-D factor of the scale's Gaussian window (``N = 2^(5 - scale) + 1``, ``sd = N/5``).

    The reference's 2-D window (MATLAB ``fspecial('gaussian', N, N/5)``: ``exp(-(x^2 +
    y^2) / 2 sd^2)``, entries below ``eps * max`` zeroed, normalised to sum 1) is the outer
    product of this vector with itself: no entry falls below ``eps * max`` for these N.
    """
    n = 2 ** (MAX_VIF_SCALES - scale + 1) + 1
    sd = n / 5.0
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    g = np.exp(-(x * x) / (2.0 * sd * sd))
    if (np.outer(g, g) < np.finfo(np.float64).eps * g.max() ** 2).any():  # pragma: no cover - not for N <= 17
        raise AssertionError("VIF window is not separable")
    return g / g.sum()


def vif_sizes(size: int, num_scales: int = MAX_VIF_SCALES) -> Tuple[int, ...]:
    """Side of the statistics map at each scale for a ``size``-pixel side (<= 0: too small)."""
    out, s = [], int(size)
    for scale in range(1, num_scales + 1):
        n = 2 ** (MAX_VIF_SCALES - scale + 1) + 1
        if scale > 1:
            s = -(-(s - n + 1) // 2) if s - n + 1 > 0 else 0  # filter 'valid', then keep every 2nd
        out.append(s - n + 1 if s > 0 else 0)
    return tuple(out)


def vif_min_size(num_scales: int = MAX_VIF_SCALES) -> int:
    """Smallest image side for which every one of ``num_scales`` scales has a statistic (4 -> 41)."""
    size = 1
    while min(vif_sizes(size, num_scales)) < 1:
        size += 1
    return size


def _filter_valid(x: jax.Array, g: np.ndarray) -> jax.Array:
    """Separable 'valid' Gaussian filtering of ``(M, H, W)`` (a correlation; the window is symmetric)."""
    n = g.shape[0]
    k = jnp.asarray(g, jnp.float32)
    y = lax.conv_general_dilated(x[..., None], k.reshape(n, 1, 1, 1), (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
    y = lax.conv_general_dilated(y, k.reshape(1, n, 1, 1), (1, 1), "VALID",
                                 dimension_numbers=("NHWC", "HWIO", "NHWC"), precision=lax.Precision.HIGHEST)
    return y[..., 0]


def vifp(ref: jax.Array, dist: jax.Array, *, num_scales: int = MAX_VIF_SCALES,
         sigma_nsq: float = VIF_SIGMA_NSQ) -> jax.Array:
    """Multi-scale pixel-domain VIF of ``dist`` against ``ref``, ``(B, H, W) -> (B,)``.

    CDDFuse's ``compare_viff(ref, dist)`` (itself the usual Python port of Sheikh &
    Bovik's ``vifvec`` pixel-domain MATLAB code), with its guards, in the same order:
    negative variances -> 0; where ``sigma_ref^2 < eps``: ``g = 0``, ``sv^2 = sigma_dist^2``;
    where ``sigma_dist^2 < eps``: ``g = 0``, ``sv^2 = 0``; where ``g < 0``: ``sv^2 =
    sigma_dist^2``, ``g = 0``; ``sv^2 <= eps`` -> ``eps``. ``num / den`` over all scales;
    a 0/0 (a flat reference) is 1. Inputs on the [0, 255] scale (``sigma_nsq`` is in grey
    levels^2). ``num_scales < 4`` keeps the first (finest) scales only.
    """
    if not 1 <= num_scales <= MAX_VIF_SCALES:
        raise ValueError(f"num_scales must be in 1..{MAX_VIF_SCALES}, got {num_scales}")
    ref = jnp.asarray(ref, jnp.float32)
    dist = jnp.asarray(dist, jnp.float32)
    b = ref.shape[0]
    num = jnp.zeros((b,), jnp.float32)
    den = jnp.zeros((b,), jnp.float32)
    eps = VIF_EPS
    for scale in range(1, num_scales + 1):
        g1 = vif_window_1d(scale)
        if scale > 1:
            both = _filter_valid(jnp.concatenate([ref, dist]), g1)[:, ::2, ::2]
            ref, dist = both[:b], both[b:]
        stats = _filter_valid(jnp.concatenate([ref, dist, ref * ref, dist * dist, ref * dist]), g1)
        mu1, mu2, e11, e22, e12 = (stats[i * b:(i + 1) * b] for i in range(5))
        s1 = jnp.maximum(e11 - mu1 * mu1, 0.0)
        s2 = jnp.maximum(e22 - mu2 * mu2, 0.0)
        s12 = e12 - mu1 * mu2
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat1 = s1 < eps
        g = jnp.where(flat1, 0.0, g)
        sv = jnp.where(flat1, s2, sv)
        s1 = jnp.where(flat1, 0.0, s1)
        flat2 = s2 < eps
        g = jnp.where(flat2, 0.0, g)
        sv = jnp.where(flat2, 0.0, sv)
        neg = g < 0
        sv = jnp.where(neg, s2, sv)
        g = jnp.where(neg, 0.0, g)
        sv = jnp.where(sv <= eps, eps, sv)
        num = num + jnp.sum(jnp.log10(1.0 + g * g * s1 / (sv + sigma_nsq)), axis=(1, 2))
        den = den + jnp.sum(jnp.log10(1.0 + s1 / sigma_nsq), axis=(1, 2))
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 1.0)


# ----------------------------------------------------------------------------- loss pieces

def _correlate3x3(img: jax.Array, kernel: np.ndarray) -> jax.Array:
    """3x3 correlation of ``(..., H, W)`` with zero padding ('same' size), as 9 shifted adds."""
    p = jnp.pad(img, [(0, 0)] * (img.ndim - 2) + [(1, 1), (1, 1)])
    h, w = img.shape[-2:]
    out = jnp.zeros_like(img)
    for i in range(3):
        for j in range(3):
            if kernel[i, j] != 0:
                out = out + float(kernel[i, j]) * p[..., i:i + h, j:j + w]
    return out


def information(img: jax.Array) -> jax.Array:
    """U2Fusion's information measure on intensities: ``mean((lap8 * img)^2)`` over H, W."""
    return jnp.mean(jnp.square(_correlate3x3(img, LAPLACIAN8)), axis=(-2, -1))


def info_weights(a: jax.Array, b: jax.Array, temperature: float) -> jax.Array:
    """``(B, 2)`` source weights: softmax of the information shares over ``temperature``.

    ``a``, ``b``: ``(B, H, W)`` sources in [0, 1]. No gradient flows (constants of the loss).
    """
    ia, ib = information(a), information(b)
    tiny = 1e-12
    total = ia + ib + 2 * tiny
    shares = jnp.stack([(ia + tiny) / total, (ib + tiny) / total], axis=-1)
    return jax.lax.stop_gradient(jax.nn.softmax(shares / temperature, axis=-1))


def sobel_magnitude(img: jax.Array) -> jax.Array:
    """``|G_x| + |G_y|`` (Sobel, zero padding) of ``(..., H, W)``."""
    return jnp.abs(_correlate3x3(img, SOBEL_X)) + jnp.abs(_correlate3x3(img, SOBEL_Y))


def loss_terms(fused: jax.Array, sources: jax.Array, temperature: float) -> Dict[str, jax.Array]:
    """The loss's per-sample terms: ``fused (B, H, W, 1)``, ``sources (B, H, W, 2)`` in [0, 1].

    Returns ``{"weights" (B, 2), "ssim" (B,), "intensity" (B,), "grad" (B,)}`` (unweighted by
    the task's term weights; ``ssim`` is the weighted ``sum_i w_i (1 - SSIM(F, I_i))``).
    """
    import dm_pix

    f = fused[..., 0]
    a, b = sources[..., 0], sources[..., 1]
    n = f.shape[0]
    w = info_weights(a, b, temperature)
    # Both sources in one batched call each (a smaller program than two calls).
    ssim_ab = dm_pix.ssim(jnp.concatenate([fused, fused]), jnp.concatenate([sources[..., 0:1], sources[..., 1:2]]))
    ssim_a, ssim_b = ssim_ab[:n], ssim_ab[n:]
    mse_a = jnp.mean(jnp.square(f - a), axis=(-2, -1))
    mse_b = jnp.mean(jnp.square(f - b), axis=(-2, -1))
    mag = sobel_magnitude(jnp.concatenate([f, a, b]))
    grad = jnp.mean(jnp.abs(mag[:n] - jnp.maximum(mag[n:2 * n], mag[2 * n:])), axis=(-2, -1))
    return {"weights": w,
            "ssim": w[:, 0] * (1.0 - ssim_a) + w[:, 1] * (1.0 - ssim_b),
            "intensity": w[:, 0] * mse_a + w[:, 1] * mse_b,
            "grad": grad}


# ----------------------------------------------------------------------------- metrics

def quantize(img: jax.Array) -> jax.Array:
    """``[0, 1]`` float -> integer grey levels ``[0, 255]`` (float32), as an 8-bit PNG stores them."""
    return jnp.round(jnp.clip(img, 0.0, 1.0) * 255.0)


def fusion_metrics(fused: jax.Array, sources: jax.Array, *, vif_scales: int = MAX_VIF_SCALES) -> Dict[str, jax.Array]:
    """Per-sample VIF, SSIM and L1 of ``fused (B, H, W, 1)`` against each of ``sources (B, H, W, 2)``.

    Keys ``vif_a, vif_b, ssim_a, ssim_b, l1_a, l1_b`` (``a`` = channel 0, the MRI).
    """
    import dm_pix

    f255 = quantize(fused[..., 0])
    s255 = quantize(sources)
    n = f255.shape[0]
    refs = jnp.concatenate([s255[..., 0], s255[..., 1]])  # both sources in one batched call
    dists = jnp.concatenate([f255, f255])
    vif = vifp(refs, dists, num_scales=vif_scales)
    ssim = dm_pix.ssim((dists / 255.0)[..., None], (refs / 255.0)[..., None])
    l1 = jnp.mean(jnp.abs(dists - refs), axis=(-2, -1)) / 255.0
    return {"vif_a": vif[:n], "vif_b": vif[n:], "ssim_a": ssim[:n], "ssim_b": ssim[n:],
            "l1_a": l1[:n], "l1_b": l1[n:]}


def _client_means(stats) -> Dict[str, float]:
    n = int(np.shape(stats["vif_a"])[0])
    if n == 0:
        return {k: float("nan") for k in METRICS} | {"n": 0}
    m = {k: float(np.mean(np.asarray(stats[k], np.float64))) for k in
         ("vif_a", "vif_b", "ssim_a", "ssim_b", "l1_a", "l1_b")}
    return {"vif": m["vif_a"] + m["vif_b"], "vif_mri": m["vif_a"], "vif_other": m["vif_b"],
            "ssim": m["ssim_a"] + m["ssim_b"], "ssim_mri": m["ssim_a"], "ssim_other": m["ssim_b"],
            "l1": (m["l1_a"] + m["l1_b"]) / 2.0, "l1_mri": m["l1_a"], "l1_other": m["l1_b"], "n": n}


#: Per-client and federation metrics, in report order.
METRICS = ("vif", "vif_mri", "vif_other", "ssim", "ssim_mri", "ssim_other", "l1", "l1_mri", "l1_other")
#: Their declarations (``vif`` is the headline; L1 is lower-is-better).
METRIC_SPECS = tuple(MetricSpec(k, k.upper().replace("_MRI", " (MRI)").replace("_OTHER", " (other)"),
                                higher_is_better=not k.startswith("l1")) for k in METRICS) + (
    MetricSpec("test_loss", "Test loss", higher_is_better=False),)


def average_fusion(x: jax.Array) -> jax.Array:
    """The model-free reference ``F = (A + B) / 2``: ``(B, H, W, 2) -> (B, H, W, 1)``."""
    return jnp.mean(x, axis=-1, keepdims=True)


def fusion(*, ssim_weight: float = DEFAULTS["ssim_weight"], intensity_weight: float = DEFAULTS["intensity_weight"],
           grad_weight: float = DEFAULTS["grad_weight"], temperature: float = DEFAULTS["temperature"],
           vif_scales: int = DEFAULTS["vif_scales"], head_widths=DEFAULTS["head_widths"]) -> Task:
    """The fusion task (see the module docstring for the loss and the metrics)."""
    head_widths = tuple(int(w) for w in head_widths)

    def prepare_targets(y):
        return y.astype(jnp.float32) / 255.0

    def predict(out, x):
        del x
        return out

    def loss(pred, target):
        t = loss_terms(pred, target, temperature)
        return ssim_weight * t["ssim"] + intensity_weight * t["intensity"] + grad_weight * t["grad"]

    def eval_stats(pred, target):
        return {**fusion_metrics(pred, target, vif_scales=vif_scales), "loss": loss(pred, target)}

    def client_metrics(stats):
        return _client_means(stats)

    def summarize(stats, counts):
        counts = np.asarray(counts)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        per = [_client_means({k: v[bounds[i]:bounds[i + 1]] for k, v in stats.items()})
               for i in range(counts.size) if counts[i] > 0]
        # Unweighted mean over clients of the per-client means (Table 7's "Avg" rows).
        out = {k: float(np.mean([m[k] for m in per])) if per else float("nan") for k in METRICS}
        out["test_loss"] = float(np.mean(np.asarray(stats["loss"], np.float64))) if per else float("nan")
        return out

    return Task("fusion", lambda: FusionHead(widths=head_widths), prepare_targets, predict, loss, eval_stats,
                client_metrics, summarize, "vif", metrics=METRIC_SPECS)


def _check_options(opts) -> None:
    for key in ("ssim_weight", "intensity_weight", "grad_weight"):
        checks.finite(f"task_kwargs.{key}", opts[key], positive=False)
    checks.require(opts["ssim_weight"] + opts["intensity_weight"] + opts["grad_weight"] > 0,
                   "task_kwargs: ssim_weight, intensity_weight and grad_weight are all 0 (no loss)")
    checks.finite("task_kwargs.temperature", opts["temperature"], positive=True)
    checks.require(checks.is_int(opts["vif_scales"]) and 1 <= opts["vif_scales"] <= MAX_VIF_SCALES,
                   f"task_kwargs.vif_scales must be an integer in 1..{MAX_VIF_SCALES}, got {opts['vif_scales']!r}")
    widths = opts["head_widths"]
    checks.require(isinstance(widths, (list, tuple)) and all(checks.is_int(w) and w >= 1 for w in widths),
                   f"task_kwargs.head_widths must be a list of positive integers, got {widths!r}")


def _check_data(cfg, fed, opts) -> None:
    if cfg["input_scaling"] not in ("auto", "unit"):
        raise ConfigError(f"input_scaling={cfg['input_scaling']!r} does not fit task=fusion: the sources and "
                          "the fused image are in [0, 1] (use 'auto' or 'unit')")
    x_shape, y_shape = tuple(fed.train.x.shape[1:]), tuple(fed.train.y.shape[1:])
    if x_shape[-1] != 2 or y_shape != x_shape:
        raise ConfigError(f"task=fusion needs inputs and targets of two source channels each, got x {x_shape} "
                          f"and y {y_shape}")
    need = vif_min_size(opts["vif_scales"])
    if min(x_shape[:2]) < need:
        raise ConfigError(f"images of {x_shape[0]}x{x_shape[1]} are too small for a {opts['vif_scales']}-scale VIF "
                          f"(needs >= {need}x{need}); lower task_kwargs.vif_scales or use larger images")


INFO = TaskInfo("fusion", targets=("fusion",),
                needs="paired registered sources (info['target'] = 'fusion', e.g. dataset=harvard_fusion)",
                metrics=METRIC_SPECS, primary_metric="vif", options=dict(DEFAULTS), check=_check_options,
                check_data=_check_data)


@register_task(INFO)
def from_config(cfg, fed, opts) -> Task:
    """The fusion task of a run; the data must be a fusion federation (``info["target"] ==
    "fusion"``, two source channels, targets = the sources) large enough for the VIF's scales,
    with inputs in [0, 1] (checked before: ``INFO.check_data``)."""
    del cfg, fed
    return fusion(**opts)


__all__ = ["fusion", "vifp", "vif_min_size", "vif_sizes", "vif_window_1d", "information", "info_weights",
           "sobel_magnitude", "loss_terms", "fusion_metrics", "average_fusion", "quantize", "METRICS", "METRIC_SPECS",
           "DEFAULTS", "INFO"]
