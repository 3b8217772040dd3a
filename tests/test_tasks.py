"""Task metrics against independent NumPy references on fresh random inputs."""
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax.data.sr import bicubic_upsample as host_bicubic_upsample
from omnifm_jax.tasks import bicubic_upsample, classification, macro_f1, super_resolution


def _ref_macro_f1(y_true, y_pred):
    f1s = []
    for c in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


def _pairwise_auc(labels, scores):
    """ROC AUC by brute force over every positive/negative pair (ties count 1/2)."""
    pos, neg = scores[labels], scores[~labels]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_match_numpy(seed):
    """Accuracy (pooled), macro-F1 (pooled confusion), PFLlib's AUC (per-client micro AUC on
    the logits, weighted by n_k) and the std of per-client accuracy, from per-sample stats."""
    rng = np.random.default_rng(seed)
    c = 5
    counts = np.array([40, 0, 25, 31])
    task = classification(c)
    logits = rng.normal(size=(counts.sum(), c)).astype(np.float32)
    logits[:10, 0] = logits[:10, 1]  # ties
    labels = rng.integers(0, c - 1, counts.sum()).astype(np.int32)  # class c-1 only predicted
    stats = {k: np.asarray(v) for k, v in task.eval_stats(jnp.asarray(logits), jnp.asarray(labels)).items()}
    out = task.summarize(stats, counts)
    preds = logits.argmax(-1)
    np.testing.assert_allclose(out["accuracy"], np.mean(labels == preds), rtol=1e-12)
    np.testing.assert_allclose(out["macro_f1"], _ref_macro_f1(labels.tolist(), preds.tolist()), rtol=1e-12)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    accs, aucs, ns = [], [], []
    for k in range(counts.size):
        if counts[k] == 0:
            continue
        sl = slice(bounds[k], bounds[k + 1])
        onehot = np.eye(c, dtype=bool)[labels[sl]]
        accs.append(np.mean(labels[sl] == preds[sl]))
        aucs.append(_pairwise_auc(onehot.ravel(), logits[sl].astype(np.float64).ravel()))
        ns.append(counts[k])
    np.testing.assert_allclose(out["auc"], np.dot(aucs, ns) / np.sum(ns), rtol=1e-10)
    np.testing.assert_allclose(out["acc_std"], np.std(accs), rtol=1e-10)
    ce = -np.log(np.exp(logits.astype(np.float64)) / np.exp(logits.astype(np.float64)).sum(1, keepdims=True))
    np.testing.assert_allclose(out["test_loss"], ce[np.arange(len(labels)), labels].mean(), rtol=1e-5)
    np.testing.assert_allclose(macro_f1(np.histogram2d(labels, preds, bins=[range(c + 1)] * 2)[0]),
                               _ref_macro_f1(labels.tolist(), preds.tolist()), rtol=1e-12)


def test_roc_auc_hand_cases():
    from omnifm_jax.tasks.classification import roc_auc
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_in_graph_bicubic_equals_the_data_pipelines_bicubic():
    lr = np.random.default_rng(3).random((2, 12, 10, 3)).astype(np.float32)
    for scale in (2, 4):
        np.testing.assert_allclose(np.asarray(bicubic_upsample(jnp.asarray(lr), scale)),
                                   host_bicubic_upsample(lr, scale), atol=1e-5)


def test_sr_psnr_matches_numpy_per_client_mean():
    rng = np.random.default_rng(4)
    task = super_resolution(2)
    target = rng.random((5, 8, 8, 3)).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    stats = {k: np.asarray(v) for k, v in task.eval_stats(jnp.asarray(pred), jnp.asarray(target)).items()}
    mse = ((pred.astype(np.float64) - target) ** 2).mean(axis=(1, 2, 3))
    psnr = -10 * np.log10(mse)
    np.testing.assert_allclose(stats["psnr"], psnr, rtol=1e-4)
    out = task.summarize(stats, np.array([2, 0, 3]))
    np.testing.assert_allclose(out["psnr"], (psnr[:2].mean() + psnr[2:].mean()) / 2, rtol=1e-4)


# ----------------------------------------------------------------------------- which data a task takes

def _federations():
    """One small federation of every kind of targets: labels, images (SR), masks, fusion pairs."""
    from omnifm_jax.data.federation import Federation, stack_clients
    from omnifm_jax.data.fusion import synthetic_fusion_federation
    from omnifm_jax.data.registry import load_federation
    from omnifm_jax.data.sr import synthetic_sr_federation

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (8, 16, 16, 1), dtype=np.uint8)
    y = (x > 128).astype(np.uint8)
    idx = [np.arange(0, 2), np.arange(4, 6)]
    test = [np.arange(2, 4), np.arange(6, 8)]
    mod = np.zeros(8, np.int32)
    masks = Federation(stack_clients(x, y, mod, idx), stack_clients(x, y, mod, test), 0, (), ("m",),
                       {"target": "mask", "label_values": [0, 1]})
    return {"labels": load_federation("synthetic", num_clients=2, samples_per_class_per_modality=2, image_size=16),
            "images": synthetic_sr_federation(num_clients=2, images_per_client=4, patch=16),
            "mask": masks,
            "fusion": synthetic_fusion_federation(num_clients=2, image_size=24, pairs_per_client=4)}


def test_each_task_accepts_its_kind_of_targets_and_names_the_task_for_the_others():
    from omnifm_jax import tasks

    feds = _federations()
    taker = {kind: next(n for n in tasks.available() if kind in tasks.declaration(n).targets) for kind in feds}
    assert taker == {"labels": "classification", "images": "super_resolution", "mask": "segmentation",
                     "fusion": "fusion"}
    for kind, fed in feds.items():
        assert tasks.target_kind(fed) == kind
        for name in tasks.available():
            why_not = tasks.accepts(name, fed, dataset="d")
            if name == taker[kind]:
                assert why_not is None
            else:
                assert why_not.startswith(f"dataset 'd' is not a {name} set: its targets are {kind} (the data of "
                                          f"task={taker[kind]}); task={name} needs ")
                assert why_not.endswith(f"; use task={taker[kind]}")
