"""Segmentation: Dice/IoU and the Dice+CE loss against NumPy float64 references, the UNet
(encoder as token backbone + decoder head) inside OmniFM and TokenModel, the loaders (real
files when present, else skipped; tiny synthetic files for the error paths and a NIfTI
folder), and one end-to-end run per algorithm through the unchanged engine."""
from __future__ import annotations

import importlib
import json
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import config as config_lib
from omnifm_jax import experiment
from omnifm_jax.checks import ConfigError
from omnifm_jax.data import segmentation as seg_data
from omnifm_jax.data.brats import BRATS_FILE, BRATS_REGIONS
from omnifm_jax.data.federation import ClientArrays, Federation, stack_clients
from omnifm_jax.data.image import resize_mask
from omnifm_jax.data.lgg import LGG_FILE, lgg_patient
from omnifm_jax.data.paths import default_real_data_dir
from omnifm_jax.data.ph2_dsb_seg import DSB_FILE, PH2_FILE
from omnifm_jax.data.registry import load_federation
from omnifm_jax.models.common import TokenLayout
from omnifm_jax.models.heads import ClassificationHead
from omnifm_jax.models.omnifm import OmniFM, TokenModel, split_backbone_output
from omnifm_jax.models.unet import ConvTranspose, InstanceNorm, SegmentationHead, UNetBackbone, conv_transpose
from omnifm_jax.tasks import segmentation
from omnifm_jax.tasks.segmentation import dice_ce_loss, dice_iou

# the module (the package re-exports the function under the same name)
seg_task = importlib.import_module("omnifm_jax.tasks.segmentation")
bank_lib = importlib.import_module("omnifm_jax.bank")

#: The smallest MONAI-style UNet (one level, residual units): compiles in seconds.
TINY_UNET = dict(channels=(4, 8), strides=(2,), num_res_units=1)


# ----------------------------------------------------------------------------- references

def _ref_scores(pred, true, num_classes):
    """Per image, per foreground class Dice and IoU (float64) straight from the masks,
    with the convention: both empty -> 1, else 2|P&T|/(|P|+|T|) and |P&T|/|P|T|."""
    n = pred.shape[0]
    dice = np.zeros((n, num_classes - 1))
    iou = np.zeros((n, num_classes - 1))
    for i in range(n):
        for j, c in enumerate(range(1, num_classes)):
            p, t = pred[i] == c, true[i] == c
            inter, union, total = np.sum(p & t), np.sum(p | t), p.sum() + t.sum()
            dice[i, j] = 1.0 if total == 0 else 2.0 * inter / total
            iou[i, j] = 1.0 if union == 0 else inter / union
    return dice, iou


def _ref_loss(logits, target, dice_weight=1.0, ce_weight=1.0, smooth=1e-5):
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    p = np.exp(logp)
    c = logits.shape[-1]
    onehot = np.eye(c)[target]
    ce = -(onehot * logp).sum(-1).mean(axis=(1, 2))
    inter = (p * onehot)[..., 1:].sum(axis=(1, 2))
    denom = p[..., 1:].sum(axis=(1, 2)) + onehot[..., 1:].sum(axis=(1, 2))
    dice = (1.0 - (2 * inter + smooth) / (denom + smooth)).mean(-1)
    return dice_weight * dice + ce_weight * ce


def _random_variables(init, *args, seed=0, scale=0.3):
    """Variables of ``init(key, *args)`` drawn with NumPy (no compiled init: it costs seconds)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(init, jax.random.key(0), *args)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(rng.normal(0.0, scale, s.shape), s.dtype), shapes)


def _stats(task, logits, target):
    return {k: np.asarray(v) for k, v in jax.jit(task.eval_stats)(jnp.asarray(logits), jnp.asarray(target)).items()}


# ----------------------------------------------------------------------------- metrics and loss

@pytest.mark.parametrize("num_classes,seed", [(2, 0), (2, 1), (4, 2)])
def test_dice_iou_match_numpy_on_random_masks(num_classes, seed):
    rng = np.random.default_rng(seed)
    counts = np.array([5, 0, 7, 4])
    n, h, w = counts.sum(), 12, 10
    logits = rng.normal(size=(n, h, w, num_classes)).astype(np.float32)
    logits[..., 0] += rng.uniform(0, 2.5, size=(n, 1, 1))  # some images predict (nearly) all background
    true = (rng.random((n, h, w)) < rng.uniform(0, 0.4, (n, 1, 1))) * rng.integers(1, num_classes, (n, h, w))
    true[1] = 0                                             # an empty ground truth
    logits[2, ..., 0] = 50.0                                # an empty prediction
    true[3], logits[3, ..., 0] = 0, 50.0                    # both empty
    task = segmentation(num_classes)
    stats = _stats(task, logits, true)
    pred = logits.argmax(-1)
    dice, iou = _ref_scores(pred, true, num_classes)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    per_dice, per_iou, pooled_dice = [], [], []
    for k in range(counts.size):
        sl = slice(bounds[k], bounds[k + 1])
        m = task.client_metrics({key: v[sl] for key, v in stats.items()})
        if counts[k] == 0:
            assert m["n"] == 0 and math.isnan(m["dice"])
            continue
        np.testing.assert_allclose(m["dice"], dice[sl].mean(), rtol=1e-12)
        np.testing.assert_allclose(m["iou"], iou[sl].mean(), rtol=1e-12)
        pd = []
        for j, c in enumerate(range(1, num_classes)):
            p, t = pred[sl] == c, true[sl] == c
            total = p.sum() + t.sum()
            pd.append(1.0 if total == 0 else 2.0 * np.sum(p & t) / total)
            if num_classes > 2:
                np.testing.assert_allclose(m[f"dice_{c}"], dice[sl, j].mean(), rtol=1e-12)
        np.testing.assert_allclose(m["dice_pooled"], np.mean(pd), rtol=1e-12)
        per_dice.append(dice[sl].mean())
        per_iou.append(iou[sl].mean())
        pooled_dice.append(np.mean(pd))
    out = task.summarize(stats, counts)
    np.testing.assert_allclose(out["dice"], np.mean(per_dice), rtol=1e-12)
    np.testing.assert_allclose(out["iou"], np.mean(per_iou), rtol=1e-12)
    np.testing.assert_allclose(out["dice_pooled"], np.mean(pooled_dice), rtol=1e-12)
    np.testing.assert_allclose(out["test_loss"], _ref_loss(logits, true).mean(), rtol=1e-5)
    assert task.primary_metric == "dice"


@pytest.mark.parametrize("seed", [3, 4])
def test_region_dice_matches_numpy_on_random_label_maps(seed):
    """BraTS regions (ET = {4}, TC = {1, 4}, WT = {1, 2, 4}) over class indices of (0, 1, 2, 4):
    per-image and pooled Dice from unions of classes, against NumPy on the label VALUES."""
    rng = np.random.default_rng(seed)
    values = np.array([0, 1, 2, 4])
    n, h, w = 9, 12, 10
    logits = rng.normal(size=(n, h, w, 4)).astype(np.float32)
    logits[..., 0] += rng.uniform(0, 2.0, size=(n, 1, 1))
    true = rng.integers(0, 4, (n, h, w)) * (rng.random((n, h, w)) < 0.5)
    true[0] = 0                                       # nothing: every region empty
    true[1] = np.where(true[1] == 3, 1, true[1])      # no enhancing tumour: ET empty
    logits[1, ..., 3] = -50.0                         # ... and none predicted: ET scores 1
    names, member = seg_task.region_membership(BRATS_REGIONS, values)
    assert names == ("et", "tc", "wt")
    np.testing.assert_array_equal(member, [[0, 0, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1]])
    task = segmentation(4, regions=(names, member))
    stats = _stats(task, logits, true)
    m = task.client_metrics(stats)
    pred_v, true_v = values[logits.argmax(-1)], values[true]
    dices = []
    for name, labels in BRATS_REGIONS.items():
        p, t = np.isin(pred_v, labels), np.isin(true_v, labels)
        inter, tot = (p & t).sum(axis=(1, 2)), p.sum(axis=(1, 2)) + t.sum(axis=(1, 2))
        d = np.where(tot == 0, 1.0, 2.0 * inter / np.maximum(tot, 1))
        np.testing.assert_allclose(m[f"dice_{name}"], d.mean(), rtol=1e-12)
        dices.append(d)
        assert f"dice_{name}" in m and "dice_ncr" not in m
    np.testing.assert_allclose(m["dice"], np.mean(dices, axis=0).mean(), rtol=1e-12)
    assert m["dice_et"] != m["dice_wt"]
    # per class (no regions) differs: WT is a union, not class 'ed'
    plain = segmentation(4).client_metrics(_stats(segmentation(4), logits, true))
    assert plain["dice"] != m["dice"]


def test_regions_from_the_loader_and_bad_regions():
    x = np.zeros((2, 4, 4, 1), np.uint8)
    arrays = ClientArrays(x=x, y=x.copy(), n=np.array([2], np.int32), offsets=np.array([0], np.int32),
                          modality=np.zeros(2, np.int32))
    fed = types.SimpleNamespace(train=arrays, test=arrays, num_classes=0, info={
        "target": "mask", "label_values": [0, 1, 2, 4], "class_names": ["bg", "ncr", "ed", "et"],
        "regions": dict(BRATS_REGIONS)})
    cfg = config_lib.apply_overrides(config_lib.load_config("seg_brats_et"), [])
    names = lambda task: [k for k in task.client_metrics(_stats(task, np.zeros((1, 4, 4, 4), np.float32),
                                                                np.zeros((1, 4, 4), np.int64))) if k.startswith("dice_")]
    assert names(seg_task.from_config(cfg, fed)) == ["dice_pooled", "dice_et", "dice_tc", "dice_wt"]
    cfg_none = config_lib.apply_overrides(cfg, ["task_kwargs.regions=None"])
    assert names(seg_task.from_config(cfg_none, fed)) == ["dice_pooled", "dice_ncr", "dice_ed", "dice_et"]
    for bad, match in (({"x": [3]}, "unknown: \\[3\\]"), ({"x": [0, 1]}, "background"), ({}, "non-empty"),
                       ("brats", "'auto', None or a dict")):
        with pytest.raises(ConfigError, match=match):
            seg_task.from_config(dict(cfg, task_kwargs={"regions": bad}), fed)


def test_dice_iou_hand_made_masks_and_empty_convention():
    task = segmentation(2)
    true = np.zeros((5, 4, 4), np.int64)
    pred = np.zeros((5, 4, 4), np.int64)
    # 0: both empty -> 1, 1
    # 1: truth empty, prediction 2 px -> 0, 0
    pred[1, 0, :2] = 1
    # 2: prediction empty, truth 3 px -> 0, 0
    true[2, 1, :3] = 1
    # 3: truth 3 px, prediction 2 px, overlap 1 -> Dice 2/5, IoU 1/4
    true[3, 0, :3] = 1
    pred[3, 0, 2:4] = 1
    # 4: identical 5 px -> 1, 1
    true[4, 2:, 1:] = 0
    true[4, 3, :] = 1
    true[4, 2, 0] = 1
    pred[4] = true[4]
    logits = np.stack([1.0 - pred, pred.astype(np.float64)], -1).astype(np.float32) * 10
    stats = _stats(task, logits, true)
    dice, iou = dice_iou(stats["inter"], stats["pred"], stats["true"])
    np.testing.assert_allclose(dice[:, 0], [1.0, 0.0, 0.0, 0.4, 1.0], rtol=1e-15)
    np.testing.assert_allclose(iou[:, 0], [1.0, 0.0, 0.0, 0.25, 1.0], rtol=1e-15)
    m = task.client_metrics(stats)
    np.testing.assert_allclose(m["dice"], (1 + 0 + 0 + 0.4 + 1) / 5, rtol=1e-15)
    np.testing.assert_allclose(m["iou"], (1 + 0 + 0 + 0.25 + 1) / 5, rtol=1e-15)
    # pooled: I = 1 + 5, |P| = 2 + 2 + 5, |T| = 3 + 3 + 5
    np.testing.assert_allclose(m["dice_pooled"], 2 * 6 / (9 + 11), rtol=1e-15)
    np.testing.assert_allclose(m["iou_pooled"], 6 / (9 + 11 - 6), rtol=1e-15)


def test_loss_matches_numpy_and_weights():
    rng = np.random.default_rng(7)
    loss = jax.jit(dice_ce_loss)  # weights traced: one compile per shape
    for c in (2, 4):
        logits = rng.normal(size=(3, 6, 5, c)).astype(np.float32) * 2
        target = rng.integers(0, c, (3, 6, 5))
        target[0] = 0  # empty foreground
        for dw, cw in ((1.0, 1.0), (0.0, 1.0), (2.0, 0.5)):
            got = np.asarray(loss(jnp.asarray(logits), jnp.asarray(target), dice_weight=dw, ce_weight=cw))
            np.testing.assert_allclose(got, _ref_loss(logits, target, dw, cw), rtol=2e-5, atol=1e-6)
    task = segmentation(2, dice_weight=2.0, ce_weight=0.5)
    np.testing.assert_allclose(np.asarray(task.loss(jnp.asarray(logits[..., :2]), jnp.asarray(target % 2))),
                               _ref_loss(logits[..., :2], target % 2, 2.0, 0.5), rtol=2e-5, atol=1e-6)


def test_unet_training_loss_is_finite_and_decreases():
    rng = np.random.default_rng(0)
    x = rng.random((4, 8, 8, 2)).astype(np.float32)
    y = (x[..., 0] > 0.6).astype(np.int32)  # a learnable mask
    task = segmentation(2)
    model = TokenModel(UNetBackbone(**TINY_UNET), task.make_head())
    variables = _random_variables(model.init, x)
    tx = optax.adam(1e-2)

    @jax.jit
    def train(v):
        def step(carry, _):
            v, o = carry
            l, g = jax.value_and_grad(lambda v: jnp.mean(task.loss(model.apply(v, x)[0], y)))(v)
            u, o = tx.update(g, o, v)
            return (optax.apply_updates(v, u), o), l
        return jax.lax.scan(step, (v, tx.init(v)), None, length=8)[1]

    losses = np.asarray(train(variables)).tolist()
    assert all(math.isfinite(l) for l in losses)
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.8 * losses[0], losses


# ----------------------------------------------------------------------------- the UNet

def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def test_unet_shapes_and_size_check():
    x = jax.ShapeDtypeStruct((3, 16, 24, 2), jnp.float32)
    bb = UNetBackbone(channels=(4, 8, 16, 32), strides=(2, 2, 2), num_res_units=2)
    tokens, skips = _shapes(jax.eval_shape(lambda x: bb.init_with_output(jax.random.key(0), x)[0], x))
    assert tokens == (3, 2 * 3, 32)
    assert list(skips) == [(3, 8, 12, 4), (3, 4, 6, 8), (3, 2, 3, 16)]
    model = TokenModel(bb, SegmentationHead(3))
    out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(1), x)[0][0], x)
    assert out.shape == (3, 16, 24, 3)
    with pytest.raises(ValueError, match="divisible by 8"):
        jax.eval_shape(lambda x: bb.init(jax.random.key(0), x), jax.ShapeDtypeStruct((1, 12, 16, 2), jnp.float32))
    with pytest.raises(ValueError, match="len\\(strides\\)"):
        jax.eval_shape(lambda x: UNetBackbone(channels=(4, 8), strides=(2, 2)).init(jax.random.key(0), x),
                       jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32))


def test_conv_transpose_is_torch_conv_transpose_with_flipped_kernel():
    """Scatter-form reference of ``ConvTranspose2d(k=3, s=2, padding=1, output_padding=1)``."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 4, 2))
    v = rng.normal(size=(3, 3, 2, 5))       # our (correlation) kernel, HWIO
    b = rng.normal(size=(5,))
    w = v[::-1, ::-1]                        # torch's scatter kernel
    s, p, k = 2, 1, 3
    ref = np.zeros((2, 3 * s + 2 * k, 4 * s + 2 * k, 5))
    for i in range(3):
        for j in range(4):
            ref[:, i * s:i * s + k, j * s:j * s + k] += np.einsum("bc,hwco->bhwo", x[:, i, j], w)
    ref = ref[:, p:p + 3 * s, p:p + 4 * s] + b
    got = conv_transpose(jnp.asarray(x, jnp.float32), jnp.asarray(v, jnp.float32), jnp.asarray(b, jnp.float32),
                         (2, 2))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-5, atol=1e-5)
    layer = ConvTranspose(5, 3, (2, 2))
    params = {"params": {"conv": {"kernel": jnp.asarray(v, jnp.float32), "bias": jnp.asarray(b, jnp.float32)}}}
    np.testing.assert_allclose(np.asarray(layer.apply(params, jnp.asarray(x, jnp.float32))), ref, rtol=1e-5,
                               atol=1e-5)


def test_instance_norm_is_per_sample():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(3, 5, 4, 2)).astype(np.float32)
    got = np.asarray(InstanceNorm().apply({}, jnp.asarray(x)))
    xd = x.astype(np.float64)
    ref = (xd - xd.mean(axis=(1, 2), keepdims=True)) / np.sqrt(xd.var(axis=(1, 2), keepdims=True) + 1e-5)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    # padded (garbage) samples change nothing for the real ones, through the whole model
    model = TokenModel(UNetBackbone(**TINY_UNET), SegmentationHead(2))
    a = rng.random((4, 8, 8, 1)).astype(np.float32)
    b = a.copy()
    b[2:] = 1e3 * rng.random((2, 8, 8, 1))
    v = _random_variables(model.init, a)
    apply = jax.jit(lambda x, m: model.apply(v, x, mask=m)[0])
    mask = jnp.array([True, True, False, False])
    np.testing.assert_allclose(np.asarray(apply(b, mask)[:2]), np.asarray(apply(a, mask)[:2]), rtol=1e-5, atol=1e-5)


def test_omnifm_with_unet_gives_full_resolution_logits():
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    bank = bank_lib.init(4, 8)
    model = OmniFM(UNetBackbone(**TINY_UNET), SegmentationHead(3), spectral_dim=8, attn_dim=8, num_suffix=2)
    variables = _random_variables(model.init, x, bank)
    assert {"backbone", "head", "eca", "prompt", "tokenizer"} <= set(variables["params"])
    assert "suffix_bias" in variables["params"]["head"]
    moved = dict(variables["params"], prompt=jax.tree_util.tree_map(lambda a: a + 1.0, variables["params"]["prompt"]))
    tm = TokenModel(UNetBackbone(**TINY_UNET), SegmentationHead(3), features=True)
    tv = _random_variables(tm.init, x, seed=1)

    @jax.jit
    def run(variables, moved, tv):
        out = model.apply(variables, x, bank)[0]
        out_moved = model.apply({**variables, "params": moved}, x, bank)[0]
        tokens, _ = UNetBackbone(**TINY_UNET).apply({"params": tv["params"]["backbone"]}, x)
        return out, out_moved, tm.apply(tv, x), tokens

    out, out_moved, (o, feat), tokens = run(variables, moved, tv)
    assert out.shape == (2, 8, 8, 3) and o.shape == (2, 8, 8, 3)
    # the decoder reads the prompts: other suffix tokens, other logits
    assert not np.allclose(np.asarray(out_moved), np.asarray(out))
    # TokenModel(features=True): the mean bottleneck token
    np.testing.assert_allclose(np.asarray(feat), np.asarray(tokens.mean(axis=1)), rtol=1e-6)


def test_split_backbone_output_leaves_token_backbones_alone():
    r = jnp.ones((2, 5, 4))
    assert split_backbone_output(r, ClassificationHead(3)) == (r, {})
    skips = (jnp.zeros((2, 4, 4, 1)),)
    assert split_backbone_output((r, skips), SegmentationHead(2))[1] == {"skips": skips}
    assert split_backbone_output((r, skips), ClassificationHead(3))[1] == {}  # a head without skips= never gets it
    with pytest.raises(ValueError, match="tuple of 3"):
        split_backbone_output((r, skips, skips), SegmentationHead(2))
    # a classification head on the UNet's bottleneck tokens still works
    out = jax.eval_shape(lambda x: TokenModel(UNetBackbone(**TINY_UNET), ClassificationHead(3)).init_with_output(
        jax.random.key(0), x)[0][0], jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32))
    assert out.shape == (2, 3)


def test_head_without_skips_upsamples_power_of_two_grid():
    head = SegmentationHead(2)
    layout = TokenLayout(3, 16, 1, (16, 16))  # prefix != body: the prefix is not added
    out = jax.eval_shape(lambda t: head.init_with_output(jax.random.key(0), t, layout=layout)[0],
                         jax.ShapeDtypeStruct((2, 3 + 16 + 1, 6), jnp.float32))
    assert out.shape == (2, 16, 16, 2)


# ----------------------------------------------------------------------------- task / data checks

def _mask_federation(n_per_client=(6, 6), size=16, label_values=(0, 1), seed=0, channels=1):
    rng = np.random.default_rng(seed)
    n = sum(n_per_client)
    x = rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8)
    y = (x[..., :1] > 150).astype(np.uint8)
    idx = np.split(np.arange(n), np.cumsum(n_per_client)[:-1])
    tr = [i[: len(i) // 2] for i in idx]
    te = [i[len(i) // 2:] for i in idx]
    mod = np.zeros(n, np.int32)
    return Federation(stack_clients(x, y, mod, tr), stack_clients(x, y, mod, te), 0, (), ("m",),
                      {"target": "mask", "label_values": list(label_values)})


def test_tasks_refuse_the_wrong_kind_of_data():
    cfg = config_lib.load_config("default")
    seg = _mask_federation()
    for task in ("classification", "super_resolution"):
        with pytest.raises(ConfigError, match="segmentation"):
            experiment.build_task(dict(cfg, task=task), seg)
    cls = load_federation("synthetic", num_clients=2, samples_per_class_per_modality=2, image_size=16)
    with pytest.raises(ConfigError, match="not a segmentation set|classification set"):
        experiment.build_task(dict(cfg, task="segmentation"), cls)
    bad = _mask_federation()
    bad.info["label_values"] = [0]
    with pytest.raises(ConfigError, match="label_values"):
        experiment.build_task(dict(cfg, task="segmentation"), bad)
    with pytest.raises(ConfigError, match="unknown task_kwargs"):
        experiment.build_task(dict(cfg, task="segmentation", task_kwargs={"dice": 1}), seg)
    with pytest.raises(ConfigError, match="both 0"):
        experiment.build_task(dict(cfg, task="segmentation", task_kwargs={"dice_weight": 0, "ce_weight": 0}), seg)
    task = experiment.build_task(dict(cfg, task="segmentation", backbone="unet",
                                      backbone_kwargs={"num_res_units": 0, "channels": (4, 8), "strides": (2,)}), seg)
    assert task.make_head().num_res_units == 0 and task.name == "segmentation"


def test_groups_to_clients_merge_split_and_patient_split():
    groups = {"A": ["a1", "a2", "a3", "a4", "a5"], "B": ["b1", "b2"], "C": ["c1"]}
    slices = {p: 3 for ps in groups.values() for p in ps}
    clients, names = seg_data.groups_to_clients(groups, slices, 2)
    assert names == ["A", "B+C"] and clients[1] == ["b1", "b2", "c1"]
    clients, names = seg_data.groups_to_clients(groups, slices, 3)
    assert names == ["A#1", "A#2", "B+C"] and sorted(clients[0] + clients[1]) == groups["A"]
    clients, names = seg_data.groups_to_clients(groups, slices, 1)
    assert names == ["A+B+C"] and len(clients[0]) == 8
    with pytest.raises(ValueError, match="use fewer clients"):
        seg_data.groups_to_clients(groups, slices, 5)
    tr, te = seg_data.split_by_patient(clients, slices, test_fraction=0.25, seed=0)
    assert not set(tr[0]) & set(te[0]) and sorted(tr[0] + te[0]) == sorted(clients[0]) and len(te[0]) == 2


def test_resize_mask_is_box_majority_ties_up():
    m = np.zeros((4, 4), np.uint8)
    m[0, 0] = 1                      # 1/4 of the top-left block -> 0
    m[0, 2:4] = 1                    # 2/4 of the top-right block -> tie -> 1
    m[2:4, 0:2] = [[2, 2], [1, 1]]   # tie between 1 and 2 -> 2
    m[2:4, 2:4] = [[1, 1], [1, 0]]   # 3/4 -> 1
    np.testing.assert_array_equal(resize_mask(m, (2, 2), 3), [[0, 1], [2, 1]])


# ----------------------------------------------------------------------------- synthetic files

def _write_lgg(root, *, sites=("AA", "BB"), patients=3, slices=4, size=16, seed=0, mask_shape=None, bad_value=None):
    rng = np.random.default_rng(seed)
    case, site, imgs, masks = [], [], [], []
    for s in sites:
        for p in range(patients):
            for _ in range(slices):
                case.append(f"TCGA_{s}_{p:04d}_20000101")
                site.append(s)
                im = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                mk = np.zeros((size, size), np.uint8)
                r, c = rng.integers(2, size - 6, 2)
                mk[r:r + 5, c:c + 5] = 1
                im[mk == 1] += 120
                imgs.append(im)
                masks.append(mk)
    masks = np.stack(masks)
    if bad_value is not None:
        masks[0, 0, 0] = bad_value
    if mask_shape is not None:
        masks = np.zeros(mask_shape, np.uint8)
    path = root / "lgg_mri_seg" / "lgg_flair_seg_64.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.stack(imgs), masks=masks, case=np.array(case), site=np.array(site))
    return path


def test_loader_errors_name_the_file(tmp_path):
    path = _write_lgg(tmp_path / "a", mask_shape=(24, 8, 8))
    with pytest.raises(ValueError, match="do not match images") as e:
        load_federation("lgg_seg", num_clients=2, root=str(tmp_path / "a"))
    assert str(path) in str(e.value)
    path = _write_lgg(tmp_path / "b", bad_value=3)
    with pytest.raises(ValueError, match=r"mask values \[3\] are outside") as e:
        load_federation("lgg_seg", num_clients=2, root=str(tmp_path / "b"))
    assert str(path) in str(e.value)
    with pytest.raises(FileNotFoundError, match="lgg_flair_seg_64.npz"):
        load_federation("lgg_seg", num_clients=2, root=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown option"):
        load_federation("lgg_seg", num_clients=2, root=str(tmp_path / "b"), sitez=("AA",))


def test_synthetic_lgg_layout_split_by_patient(tmp_path):
    _write_lgg(tmp_path, sites=("AA", "BB", "CC"), patients=3)
    fed = load_federation("lgg_seg", num_clients=3, root=str(tmp_path), seed=4)
    assert fed.info["client_names"] == ["AA", "BB", "CC"] and fed.info["target"] == "mask"
    assert fed.train.y.shape[1:] == (16, 16, 1) and fed.train.y.dtype == np.uint8
    for k in range(3):
        assert not set(fed.info["train_patients"][k]) & set(fed.info["test_patients"][k])
        lo, hi = fed.test.offsets[k], fed.test.offsets[k] + fed.test.n[k]
        assert set(fed.test.modality[lo:hi].tolist()) == {k}
    again = load_federation("lgg_seg", num_clients=3, root=str(tmp_path), seed=4)
    assert again.info["test_patients"] == fed.info["test_patients"]
    np.testing.assert_array_equal(again.test.y, fed.test.y)


# ----------------------------------------------------------------------------- NIfTI

def _write_nifti(root, cases, *, shape=(20, 20, 6), skip=None, bad_label=None, seed=0):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(seed)
    for case in cases:
        d = root / case
        d.mkdir(parents=True)
        seg = np.zeros(shape, np.uint8)
        seg[5:12, 6:13, 2:4] = 2
        seg[7:10, 8:11, 2:4] = 4
        seg[6:8, 6:8, 3] = 1
        if bad_label is not None and case == cases[0]:
            seg[0, 0, 0] = bad_label
        brain = np.zeros(shape, bool)
        brain[2:18, 2:18, :] = True
        for seq in ("t1", "t1ce", "t2", "flair", "seg"):
            if skip == (case, seq):
                continue
            vol = seg if seq == "seg" else (rng.normal(100, 10, shape) * brain + 50.0 * (seg == 4)).astype(np.float32)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / f"{case}_{seq}.nii.gz"))


def test_nifti_folder_loader(tmp_path):
    cases = ["Brats18_AA_1_1", "Brats18_AA_2_1", "Brats18_BB_3_1", "Brats18_BB_4_1"]
    _write_nifti(tmp_path / "ok", cases)
    fed = load_federation("nifti_seg", num_clients=2, root=str(tmp_path / "ok"), size=10)
    assert fed.info["client_names"] == ["Brats18_AA", "Brats18_BB"]
    assert fed.train.x.shape[1:] == (10, 10, 1) and fed.train.n.tolist() == [2, 2] and fed.test.n.tolist() == [2, 2]
    assert fed.info["label_values"] == [0, 1]
    # slices z = 2, 3 of each case; ET (label 4) at rows 7..9, cols 8..10 of the volume = the
    # transposed plane's rows 8..10, cols 7..9; 20 -> 10: 2x2 blocks, foreground where >= 50 %
    et = np.zeros((20, 20), np.uint8)
    et[8:11, 7:10] = 1
    ref = et.reshape(10, 2, 10, 2).mean(axis=(1, 3)) >= 0.5
    np.testing.assert_array_equal(fed.train.y[0, ..., 0], ref)
    x = fed.train.x[0, ..., 0]
    assert x.max() > 150 and x[0, 0] == 0 and x[5, 5] > 0  # percentile-normalised brain, zero background
    part = tmp_path / "partitioning_1.csv"
    part.write_text("Partition_ID,Subject_ID\n1,Brats18_AA_1_1\n1,Brats18_BB_3_1\n2,Brats18_AA_2_1\n2,Brats18_BB_4_1\n")
    fed2 = load_federation("nifti_seg", num_clients=2, root=str(tmp_path / "ok"), size=10, partition_file=str(part),
                           target="multiclass")
    assert fed2.info["client_names"] == ["1", "2"] and fed2.info["label_values"] == [0, 1, 2, 4]
    assert set(np.unique(fed2.train.y).tolist()) <= {0, 1, 2, 3}


def test_nifti_errors_name_the_file(tmp_path):
    cases = ["X_A_1_1", "X_A_2_1"]
    _write_nifti(tmp_path / "miss", cases, skip=("X_A_2_1", "t1ce"))
    with pytest.raises(FileNotFoundError, match="has no t1ce sequence") as e:
        load_federation("nifti_seg", num_clients=1, root=str(tmp_path / "miss"))
    assert "X_A_2_1_t1ce.nii.gz" in str(e.value)
    _write_nifti(tmp_path / "bad", cases, bad_label=3)
    with pytest.raises(ValueError, match=r"label values \[3\] outside") as e:
        load_federation("nifti_seg", num_clients=1, root=str(tmp_path / "bad"))
    assert "X_A_1_1_seg.nii.gz" in str(e.value)


# ----------------------------------------------------------------------------- real files

def _real(rel):
    path = default_real_data_dir() / rel
    if not path.is_file():
        pytest.skip(f"real data file {path} not found")
    return path


@pytest.mark.real_data
def test_real_lgg_sites_as_clients_split_by_patient():
    path = _real(LGG_FILE)
    fed = load_federation("lgg_seg", num_clients=4, seed=0)
    assert fed.info["client_names"] == ["CS+EZ", "DU", "FG", "HT"]
    with np.load(path) as z:
        case, site = z["case"].astype(str), z["site"].astype(str)
        masks = z["masks"]
    patient = np.array([lgg_patient(c) for c in case])
    train_pat, test_pat = set(), set()
    for k, name in enumerate(fed.info["client_names"]):
        tr, te = fed.info["train_indices"][k], fed.info["test_indices"][k]
        assert set(site[tr]) | set(site[te]) == set(name.split("+"))
        assert not set(patient[tr]) & set(patient[te])
        assert fed.test.n[k] >= 1
        train_pat |= set(patient[tr])
        test_pat |= set(patient[te])
        lo = fed.train.offsets[k]
        np.testing.assert_array_equal(fed.train.y[lo:lo + fed.train.n[k], ..., 0], masks[tr])
    assert not train_pat & test_pat and len(train_pat | test_pat) == 110
    assert fed.train.n.sum() + fed.test.n.sum() == len(case)
    other = load_federation("lgg_seg", num_clients=4, seed=1)
    assert other.info["test_patients"] != fed.info["test_patients"]


@pytest.mark.real_data
def test_real_brats_et_target_and_same_patient_together():
    path = _real(BRATS_FILE)
    with np.load(path) as z:
        labels, case = z["labels"], z["case"].astype(str)
    for seed in (0, 1, 2):
        fed = load_federation("brats_seg", num_clients=2, seed=seed)
        where = {}
        for k in range(2):
            for split in ("train", "test"):
                rows = fed.info[f"{split}_indices"][k]
                arr = getattr(fed, split)
                lo = arr.offsets[k]
                np.testing.assert_array_equal(arr.y[lo:lo + arr.n[k], ..., 0], (labels[rows] == 4).astype(np.uint8))
                for c in set(case[rows]):
                    where.setdefault(c, set()).add((k, split))
        assert where["Brats18_2013_2_1"] == where["brats_2013_pat0002_1"] and len(where["Brats18_2013_2_1"]) == 1
    assert fed.train.x.shape[1:] == (96, 96, 1)
    assert fed.info["label_values"] == [0, 1]
    with pytest.raises(ValueError, match="missing"):
        load_federation("brats_seg", num_clients=2, channels=("t1",))
    wt = load_federation("brats_seg", num_clients=2, target="multiclass", channels=("t1ce", "flair"))
    assert wt.info["label_values"] == [0, 1, 2, 4] and wt.train.x.shape[-1] == 2 and wt.train.y.max() == 3


@pytest.mark.real_data
def test_real_cross_modality_shapes():
    _real(PH2_FILE)
    dsb = _real(DSB_FILE)
    fed = load_federation("ph2_dsb_seg", num_clients=2, seed=0)
    assert fed.train.x.shape[1:] == (64, 64, 3) and fed.train.y.shape[1:] == (64, 64, 1)
    assert fed.info["client_names"] == ["skin_dermoscopy", "nuclei_microscopy"]
    assert (fed.train.n + fed.test.n).tolist() == [200, 250]
    for k in range(2):
        lo = fed.train.offsets[k]
        assert set(fed.train.modality[lo:lo + fed.train.n[k]].tolist()) == {k}
    with np.load(dsb) as z:
        m0 = z["masks"][0]
    # pool row 200 is DSB's image 0 (PH2's 200 rows come first): 2x2 box mean, foreground where >= 50 %
    row = 200
    split = "train" if row in fed.info["train_indices"][1] else "test"
    arr = getattr(fed, split)
    pos = fed.info[f"{split}_indices"][1].index(row)
    np.testing.assert_array_equal(arr.y[arr.offsets[1] + pos, ..., 0],
                                  (m0.reshape(64, 2, 64, 2).mean(axis=(1, 3)) >= 0.5).astype(np.uint8))


# ----------------------------------------------------------------------------- end to end

@pytest.mark.parametrize("algorithm", ["omnifm", "fedavg"])
def test_end_to_end_run_through_the_engine(tmp_path, algorithm):
    _write_lgg(tmp_path / "data", sites=("AA", "BB"), patients=3, slices=4, size=16)
    cfg = config_lib.apply_overrides(config_lib.load_config("seg_lgg_sites"), [
        f"algorithm={algorithm}", "num_clients=2", "rounds=1", "batch_size=4", "eval_batch_size=8",
        "eval_train_loss=False",
        f"dataset_kwargs.root={tmp_path / 'data'}", "backbone_kwargs.channels=(4, 8)",
        "backbone_kwargs.strides=(2,)", "backbone_kwargs.num_res_units=0"]
        + (["algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8", "algorithm_kwargs.bank_capacity=8",
            "algorithm_kwargs.num_suffix=2"] if algorithm == "omnifm" else []))
    config_lib.validate(cfg)
    summary = experiment.run(cfg, tmp_path / "out", progress=False, log=lambda s: None)
    assert summary["task"] == "segmentation" and summary["primary_metric"] == "dice"
    lines = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [l["round"] for l in lines] == [0, 1]
    for l in lines:
        for key in ("dice", "iou", "dice_pooled", "iou_pooled", "test_loss"):
            assert math.isfinite(l[key]) and (key == "test_loss" or 0.0 <= l[key] <= 1.0), key
        assert len(l["clients"]) == 2 and all(c["n"] >= 1 for c in l["clients"])
    assert math.isfinite(lines[1]["local_loss"]) and lines[1]["useful_client_steps"] > 0
    assert summary["last"]["round"] == 1 and lines[1]["test_loss"] != lines[0]["test_loss"]  # it trained
