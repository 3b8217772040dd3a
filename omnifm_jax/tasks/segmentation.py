"""Segmentation: Dice + cross-entropy loss (MONAI's ``DiceCELoss``); Dice and IoU per client
and over the federation (paper Sec. 4.4, Table 6).

Data: inputs ``uint8[N, H, W, C]``; targets are class-index masks ``uint8[N, H, W, 1]``
with indices ``0..C-1`` into ``fed.info["label_values"]`` (e.g. ``(0, 1)`` for a binary
mask, ``(0, 1, 2, 4)`` for BraTS' multi-class labels; index 0 is the background). The
federation says it is a segmentation set with ``fed.info["target"] == "mask"`` (loaders in
:mod:`omnifm_jax.data.segmentation` set it; ``num_classes`` is 0 there, as for
super-resolution, because ``Federation.num_classes`` means image-level labels).

Inputs are scaled to [0, 1] (``input_scaling`` ``auto`` or ``unit``; MONAI's tutorials use
``ScaleIntensity`` to [0, 1]); ``pflib`` gives [-1, 1].

Model output: per-pixel logits ``(B, H, W, C)`` (softmax over C classes, also for a binary
mask: C = 2, so ``argmax`` is ``p(foreground) > 0.5``).

Loss per sample (``task_kwargs``: ``dice_weight``, ``ce_weight``, defaults 1 and 1 as
``DiceCELoss(lambda_dice=1, lambda_ce=1)``; ``smooth`` = MONAI's ``smooth_nr = smooth_dr =
1e-5``)::

    dice_weight * mean_c (1 - (2 sum(p_c t_c) + smooth) / (sum(p_c) + sum(t_c) + smooth))
    + ce_weight * mean_pixels CE(logits, t)

with softmax probabilities ``p``, one-hot targets ``t``, sums over the image's pixels,
and ``c`` over the FOREGROUND classes only (``include_background=False``; for a binary mask
that is the Dice of the foreground).

Metrics (on ``argmax`` predictions): per image and foreground class ``c`` the counts
``I = |P_c & T_c|``, ``P = |P_c|``, ``T = |T_c|`` (``eval_stats`` keeps them, so metrics can
be pooled too); ``Dice = 2I / (P + T)``, ``IoU = I / (P + T - I)``.

Empty masks (a stated convention, not MONAI's ``ignore_empty``): when ``T = 0`` and
``P = 0`` the image scores Dice = IoU = 1 (absence correctly predicted); ``T = 0`` and
``P > 0`` scores 0 (a false positive); ``P = 0`` and ``T > 0`` scores 0. Why: the LGG set
keeps one tumour-free slice per patient and BraTS' enhancing-tumour target is empty on some
tumour slices; MONAI's ``ignore_empty=True`` would drop those images from the mean, so false
positives on healthy slices would cost nothing, while scoring them 0 without the matching
reward for a correct empty prediction would punish every model on them.

Regions (``task_kwargs.regions``, BraTS' evaluation): named unions of label values, e.g.
``{"et": [4], "tc": [1, 4], "wt": [1, 2, 4]}`` (enhancing tumour, tumour core, whole
tumour). With regions the metrics are computed per REGION instead of per foreground class:
``P_r = pred in r``, ``T_r = target in r``, then the counts and scores below with ``r`` in
place of ``c``. The loss stays per class. Default ``"auto"``: the loader's
``info["regions"]`` when it gives them (the multi-class BraTS loaders do), else one region
per foreground class; ``None``: per class.

Reported per client: ``dice`` and ``iou``, the mean over the client's test images of the
per-image score (averaged over the foreground classes, or the regions); ``dice_pooled``/``iou_pooled``,
from the client's summed counts (``2 sum I / (sum P + sum T)``; pixel-weighted, no empty
case unless the client's whole test set is empty); with more than one foreground class also
``dice_<class>``/``iou_<class>`` (per-image means; ``dice_<region>`` with regions). Federation: the same names, each the
mean over clients of the per-client values (the paper's "Avg." column), plus
``test_loss`` (mean over all test images). ``primary_metric`` is ``dice``.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax import checks
from omnifm_jax.checks import ConfigError
from omnifm_jax.models.unet import SegmentationHead, UNetBackbone
from omnifm_jax.tasks.base import MetricSpec, Task, TaskInfo, register_task, scale_uint8

__all__ = ["segmentation", "dice_ce_loss", "overlap_counts", "region_membership", "dice_iou", "head_options",
           "INFO", "METRIC_SPECS", "DEFAULTS", "INPUT_RANGES"]

#: ``input_scaling`` -> input range (``auto``: [0, 1], MONAI's ``ScaleIntensity``).
INPUT_RANGES = {"auto": (0.0, 1.0), "unit": (0.0, 1.0), "pflib": (-1.0, 1.0)}

#: ``task_kwargs`` of the segmentation task and their defaults (MONAI ``DiceCELoss``).
DEFAULTS = {"dice_weight": 1.0, "ce_weight": 1.0, "smooth": 1e-5, "regions": "auto"}

#: The federation-level metrics the task always reports (``dice`` is the headline); with more
#: than one foreground class or region also ``dice_<name>`` / ``iou_<name>``.
METRIC_SPECS = (MetricSpec("dice", "Dice"), MetricSpec("iou", "IoU"), MetricSpec("dice_pooled", "Dice (pooled)"),
                MetricSpec("iou_pooled", "IoU (pooled)"), MetricSpec("test_loss", "Test loss", higher_is_better=False))


def dice_ce_loss(logits: jax.Array, target: jax.Array, *, dice_weight: float = 1.0, ce_weight: float = 1.0,
                 smooth: float = 1e-5) -> jax.Array:
    """Per-sample soft Dice (foreground classes) + cross-entropy: ``(B, H, W, C), int (B, H, W) -> (B,)``."""
    logits = logits.astype(jnp.float32)
    c = logits.shape[-1]
    ce = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, target), axis=(-2, -1))
    p = jax.nn.softmax(logits, axis=-1)[..., 1:]
    t = jax.nn.one_hot(target, c, dtype=jnp.float32)[..., 1:]
    inter = jnp.sum(p * t, axis=(-3, -2))
    denom = jnp.sum(p, axis=(-3, -2)) + jnp.sum(t, axis=(-3, -2))
    dice = 1.0 - (2.0 * inter + smooth) / (denom + smooth)
    return dice_weight * jnp.mean(dice, axis=-1) + ce_weight * ce


def overlap_counts(pred: jax.Array, target: jax.Array, num_classes: int,
                   membership: Optional[np.ndarray] = None) -> Dict[str, jax.Array]:
    """Per image and foreground class: ``inter``, ``pred``, ``true`` pixel counts ``int32[B, C-1]``.

    ``membership`` (``bool[C, R]``): count per region ``r`` (the classes ``c`` with
    ``membership[c, r]``) instead, ``int32[B, R]``."""
    if membership is None:
        membership = np.eye(num_classes, dtype=bool)[:, 1:]
    member = jnp.asarray(membership, bool)
    p = member[pred]
    t = member[target]
    count = lambda m: jnp.sum(m, axis=(-3, -2), dtype=jnp.int32)
    return {"inter": count(p & t), "pred": count(p), "true": count(t)}


def region_membership(regions, label_values: Sequence[int]) -> Tuple[Tuple[str, ...], np.ndarray]:
    """``{name: label values}`` -> ``(names, bool[C, R])`` over the classes of ``label_values``
    (the background, ``label_values[0]``, may belong to no region)."""
    if not isinstance(regions, dict) or not regions:
        raise ValueError(f"regions must be a non-empty dict name -> label values, got {regions!r}")
    label_values = [int(v) for v in label_values]
    names, cols = [], []
    for name, values in regions.items():
        values = [values] if isinstance(values, (int, np.integer)) else list(values)
        unknown = sorted(set(int(v) for v in values) - set(label_values))
        if not values or unknown:
            raise ValueError(f"region {name!r}: label values {values} must be a non-empty subset of the data's "
                             f"label_values {label_values} (unknown: {unknown})")
        if label_values[0] in [int(v) for v in values]:
            raise ValueError(f"region {name!r} contains the background label {label_values[0]}")
        names.append(str(name))
        cols.append([v in [int(u) for u in values] for v in label_values])
    return tuple(names), np.array(cols, bool).T


def dice_iou(inter, pred, true) -> Tuple[np.ndarray, np.ndarray]:
    """Dice and IoU (float64) from counts, with the module's empty-mask convention."""
    inter, pred, true = (np.asarray(a, np.float64) for a in (inter, pred, true))
    union = pred + true - inter
    empty = (pred + true) == 0
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(empty, 1.0, 2.0 * inter / np.where(empty, 1.0, pred + true))
        iou = np.where(empty, 1.0, inter / np.where(empty, 1.0, union))
    return dice, iou


def segmentation(num_classes: int, *, class_names: Sequence[str] = (), dice_weight: float = 1.0,
                 ce_weight: float = 1.0, smooth: float = 1e-5,
                 input_range: Tuple[float, float] = (0.0, 1.0), head_kwargs=None,
                 regions: Optional[Tuple[Tuple[str, ...], np.ndarray]] = None) -> Task:
    """The segmentation task over ``num_classes`` mask classes (background included, >= 2).

    ``regions``: ``(names, bool[C, R])`` from :func:`region_membership`: metrics per region
    instead of per foreground class (module docstring).

    ``class_names``: one per class (used in the per-class metric names when there is more
    than one foreground class; default ``"1", "2", ...``). ``head_kwargs``: options of
    :class:`~omnifm_jax.models.unet.SegmentationHead` (its decoder should match the
    backbone's ``kernel_size``/``num_res_units``/``norm_affine``).
    """
    if num_classes < 2:
        raise ValueError(f"segmentation needs >= 2 classes (background + foreground), got {num_classes}")
    for name, v in (("dice_weight", dice_weight), ("ce_weight", ce_weight), ("smooth", smooth)):
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if dice_weight == 0 and ce_weight == 0:
        raise ValueError("dice_weight and ce_weight are both 0: nothing to train")
    names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    fg_names = names[1:]
    membership = None
    if regions is not None:
        fg_names, membership = tuple(regions[0]), np.asarray(regions[1], bool)
        if membership.shape != (num_classes, len(fg_names)) or not membership.any(axis=0).all():
            raise ValueError(f"regions: membership must be bool[{num_classes}, {len(fg_names)}] with every region "
                             f"non-empty, got shape {list(membership.shape)}")
    head_kwargs = dict(head_kwargs or {})

    def prepare_targets(y):
        return y[..., 0].astype(jnp.int32)

    def predict(out, x):
        del x
        return out

    def loss(logits, target):
        return dice_ce_loss(logits, target, dice_weight=dice_weight, ce_weight=ce_weight, smooth=smooth)

    def eval_stats(logits, target):
        pred = jnp.argmax(logits, axis=-1)
        return {**overlap_counts(pred, target, num_classes, membership), "loss": loss(logits, target)}

    def client_metrics(stats):
        n = int(np.shape(stats["inter"])[0])
        keys = ["dice", "iou", "dice_pooled", "iou_pooled"]
        if len(fg_names) > 1:
            keys += [f"{m}_{c}" for c in fg_names for m in ("dice", "iou")]
        if n == 0:
            return {**{k: float("nan") for k in keys}, "n": 0}
        dice, iou = dice_iou(stats["inter"], stats["pred"], stats["true"])   # [n, C-1] (or [n, R])
        sums = [np.sum(np.asarray(stats[k], np.float64), axis=0) for k in ("inter", "pred", "true")]
        dice_p, iou_p = dice_iou(*sums)                                        # [C-1]
        out = {"dice": float(dice.mean(axis=1).mean()), "iou": float(iou.mean(axis=1).mean()),
               "dice_pooled": float(dice_p.mean()), "iou_pooled": float(iou_p.mean())}
        if len(fg_names) > 1:
            for j, c in enumerate(fg_names):
                out[f"dice_{c}"] = float(dice[:, j].mean())
                out[f"iou_{c}"] = float(iou[:, j].mean())
        out["n"] = n
        return out

    def summarize(stats, counts):
        counts = np.asarray(counts)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        per = [client_metrics({k: v[bounds[i]:bounds[i + 1]] for k, v in stats.items()})
               for i in range(counts.size) if counts[i] > 0]
        keys = [k for k in client_metrics({k: v[:0] for k, v in stats.items()}) if k != "n"]
        # Mean over clients of the per-client values (the paper's "Avg." column).
        out = {k: float(np.mean([m[k] for m in per])) if per else float("nan") for k in keys}
        out["test_loss"] = float(np.mean(np.asarray(stats["loss"], np.float64))) if per else float("nan")
        return out

    return Task("segmentation", lambda: SegmentationHead(num_classes, **head_kwargs), prepare_targets, predict,
                loss, eval_stats, client_metrics, summarize, "dice",
                scale_inputs=lambda x: scale_uint8(x, tuple(input_range)), metrics=METRIC_SPECS)


def head_options(cfg) -> dict:
    """The decoder's ``kernel_size``/``num_res_units``/``norm_affine`` (and MONAI's
    ``up_kernel_size`` 3): the UNet backbone's values, so encoder and decoder match."""
    if cfg["backbone"] != "unet":
        return {}
    kw = dict(cfg["backbone_kwargs"])
    return {"kernel_size": int(kw.get("kernel_size", UNetBackbone.kernel_size)),
            "num_res_units": int(kw.get("num_res_units", UNetBackbone.num_res_units)),
            "norm_affine": bool(kw.get("norm_affine", UNetBackbone.norm_affine))}


def _check_options(opts) -> None:
    for key in ("dice_weight", "ce_weight", "smooth"):
        checks.finite(f"task_kwargs.{key}", opts[key], positive=False)
    checks.require(opts["dice_weight"] > 0 or opts["ce_weight"] > 0,
                   "task_kwargs: dice_weight and ce_weight are both 0: nothing to train")
    regions = opts["regions"]
    checks.require(regions is None or regions == "auto" or isinstance(regions, dict),
                   f"task_kwargs.regions must be 'auto', None or a dict name -> label values, got {regions!r}")


def _check_data(cfg, fed, opts) -> None:
    del opts
    label_values = list(fed.info.get("label_values") or ())
    c = len(label_values)
    if c < 2:
        raise ConfigError(f"dataset {cfg['dataset']!r}: info['label_values'] must list >= 2 mask values "
                          f"(background first), got {label_values}")
    for split in ("train", "test"):
        x, y = np.asarray(getattr(fed, split).x), np.asarray(getattr(fed, split).y)
        if y.ndim != 4 or y.shape[-1] != 1 or y.shape[1:3] != x.shape[1:3]:
            raise ConfigError(f"dataset {cfg['dataset']!r}: {split} masks must be uint8[N, H, W, 1] matching the "
                              f"images {list(x.shape)}, got {y.dtype}{list(y.shape)}")
        if y.size and int(y.max()) >= c:
            raise ConfigError(f"dataset {cfg['dataset']!r}: {split} masks hold class index {int(y.max())}, but "
                              f"label_values {label_values} give only {c} classes")
    if cfg["input_scaling"] not in INPUT_RANGES:
        raise ConfigError(f"input_scaling={cfg['input_scaling']!r} does not fit task=segmentation")


INFO = TaskInfo("segmentation", targets=("mask",),
                needs="per-pixel class masks (a loader that sets info['target'] = 'mask', e.g. lgg_seg, brats_seg)",
                metrics=METRIC_SPECS, primary_metric="dice", options=dict(DEFAULTS), check=_check_options,
                check_data=_check_data)


@register_task(INFO)
def from_config(cfg, fed, opts) -> Task:
    """The task of a run: classes from the data's ``label_values``, loss weights from
    ``task_kwargs``, the decoder from the UNet's ``backbone_kwargs``. Data that are not a
    segmentation set and masks out of range are refused before (``INFO.check_data``)."""
    info = fed.info
    label_values = list(info["label_values"])
    regions = opts["regions"]
    if isinstance(regions, str):
        regions = info.get("regions")
    try:
        membership = None if regions is None else region_membership(regions, label_values)
        return segmentation(len(label_values), class_names=tuple(info.get("class_names") or ()),
                            dice_weight=opts["dice_weight"], ce_weight=opts["ce_weight"], smooth=opts["smooth"],
                            input_range=INPUT_RANGES[cfg["input_scaling"]], head_kwargs=head_options(cfg),
                            regions=membership)
    except ValueError as e:
        raise ConfigError(f"task=segmentation: {e}") from None
