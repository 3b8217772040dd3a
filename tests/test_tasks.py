"""Task metrics against independent NumPy references on fresh random inputs."""
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax.data.superres import bicubic_upsample as host_bicubic_upsample
from omnifm_jax.tasks import bicubic_upsample, classification, macro_f1, super_resolution


def _ref_macro_f1(y_true, y_pred):
    f1s = []
    for c in sorted(set(y_true) | set(y_pred)):
        tp = sum(t == c and p == c for t, p in zip(y_true, y_pred))
        fp = sum(t != c and p == c for t, p in zip(y_true, y_pred))
        fn = sum(t == c and p != c for t, p in zip(y_true, y_pred))
        f1s.append(0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_stats_accuracy_and_macro_f1_match_numpy(seed):
    rng = np.random.default_rng(seed)
    c, k, n = 5, 3, 40
    task = classification(c)
    confs, trues, preds = [], [], []
    for _ in range(k):
        logits = rng.normal(size=(n, c)).astype(np.float32)
        labels = rng.integers(0, c - 1, n).astype(np.int32)  # class c-1 never true: only predicted
        mask = rng.random(n) < 0.8
        stats = task.eval_stats(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
        confs.append(np.asarray(stats["confusion"]))
        trues += labels[mask].tolist()
        preds += logits.argmax(-1)[mask].tolist()
    out = task.summarize({"confusion": np.stack(confs)})
    np.testing.assert_allclose(out["accuracy"], np.mean(np.array(trues) == np.array(preds)), rtol=1e-12)
    np.testing.assert_allclose(out["macro_f1"], _ref_macro_f1(trues, preds), rtol=1e-12)
    np.testing.assert_allclose(macro_f1(sum(confs)), _ref_macro_f1(trues, preds), rtol=1e-12)


def test_in_graph_bicubic_equals_the_data_pipelines_bicubic():
    lr = np.random.default_rng(3).random((2, 12, 10, 3)).astype(np.float32)
    for scale in (2, 4):
        np.testing.assert_allclose(np.asarray(bicubic_upsample(jnp.asarray(lr), scale)),
                                   host_bicubic_upsample(lr, scale), atol=1e-5)


def test_sr_psnr_matches_numpy_and_masked_images_do_not_count():
    rng = np.random.default_rng(4)
    task = super_resolution(2)
    target = rng.random((3, 8, 8, 3)).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 0.05, target.shape), 0, 1).astype(np.float32)
    mask = np.array([True, False, True])
    stats = task.eval_stats(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask))
    mse = ((pred.astype(np.float64) - target) ** 2).mean(axis=(1, 2, 3))
    want = (-10 * np.log10(mse))[mask].sum()
    np.testing.assert_allclose(float(stats["psnr_sum"]), want, rtol=1e-4)
    assert float(stats["n"]) == 2
