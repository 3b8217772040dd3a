"""Classification: cross-entropy; accuracy (sample-weighted over clients) and macro-F1.

Evaluation accumulates a confusion matrix per client; the federation's macro-F1 is
computed over the classes of the POOLED confusion matrix (all clients' held-out
predictions together), averaging F1 over classes that occur in the targets or the
predictions.
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax.models.heads import ClassificationHead
from omnifm_jax.tasks.base import Task


def macro_f1(confusion: np.ndarray) -> float:
    """Macro-F1 from a confusion matrix ``[true, pred]`` over classes present in either axis."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    support = confusion.sum(axis=1)
    predicted = confusion.sum(axis=0)
    present = (support + predicted) > 0
    if not present.any():
        return float("nan")
    denom = support + predicted
    f1 = np.where(denom > 0, 2.0 * tp / np.maximum(denom, 1e-12), 0.0)
    return float(f1[present].mean())


def classification(num_classes: int) -> Task:
    """The classification task over ``num_classes`` classes."""
    if num_classes < 2:
        raise ValueError(f"classification needs >= 2 classes, got {num_classes}")

    def prepare_targets(y):
        return y.astype(jnp.int32)

    def predict(out, x):
        del x
        return out

    def loss(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)

    def eval_stats(logits, labels, mask):
        pred = jnp.argmax(logits, axis=-1)
        w = mask.astype(jnp.int32)
        idx = jnp.clip(labels, 0, num_classes - 1) * num_classes + pred
        conf = jnp.zeros((num_classes * num_classes,), jnp.int32).at[idx].add(w)
        return {"confusion": conf.reshape(num_classes, num_classes)}

    def client_metrics(stats):
        conf = np.asarray(stats["confusion"])
        n = conf.sum()
        return {"accuracy": float(np.trace(conf) / n) if n else float("nan"), "n": int(n)}

    def summarize(stats):
        conf = np.asarray(stats["confusion"])  # [K, C, C]
        per_client_n = conf.sum(axis=(1, 2))
        per_client_correct = np.trace(conf, axis1=1, axis2=2)
        total = per_client_n.sum()
        return {
            # sum_k n_k * acc_k / sum_k n_k == pooled correct / pooled n
            "accuracy": float(per_client_correct.sum() / total) if total else float("nan"),
            "macro_f1": macro_f1(conf.sum(axis=0)),
        }

    return Task("classification", lambda: ClassificationHead(num_classes), prepare_targets, predict,
                loss, eval_stats, client_metrics, summarize, "accuracy")
