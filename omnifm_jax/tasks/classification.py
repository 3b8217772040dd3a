"""Classification: cross-entropy; accuracy, macro-F1 and AUC as PFLlib reports them.

Per test sample the evaluation keeps the logits, the label and the loss. From them:
  * ``accuracy``: pooled over clients (total correct / total test samples), i.e.
    sample-weighted over clients, as PFLlib's ``evaluate``;
  * ``acc_std``: the (population) standard deviation of the per-client accuracies, as
    PFLlib's "Std Test Accuracy";
  * ``auc``: PFLlib's AUC: per client, the micro-averaged ROC AUC of the one-hot labels
    against the raw logits (``roc_auc_score(label_binarize(y), logits, average="micro")``),
    then weighted by the client's test samples;
  * ``macro_f1``: F1 averaged over the classes of the POOLED confusion matrix (all
    clients' held-out predictions together), over classes that occur in the targets or
    the predictions;
  * ``test_loss``: mean cross-entropy over all test samples.
"""
from __future__ import annotations

from typing import Tuple

import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax import checks
from omnifm_jax.checks import ConfigError
from omnifm_jax.models.heads import ClassificationHead
from omnifm_jax.tasks.base import MetricSpec, Task, TaskInfo, integer_targets, model_output, register_task, scale_uint8

__all__ = ["classification", "macro_f1", "roc_auc", "micro_auc", "INFO", "METRIC_SPECS", "HEAD_POOLS",
           "INPUT_RANGES"]

#: The metrics the task reports (``accuracy`` is the headline).
METRIC_SPECS = (MetricSpec("accuracy", "Acc"), MetricSpec("macro_f1", "F1-Score"), MetricSpec("auc", "AUC"),
                MetricSpec("acc_std", "Acc std", higher_is_better=False),
                MetricSpec("test_loss", "Test loss", higher_is_better=False))
#: ``task_kwargs.head_pool``: how the head pools its token sequence (see ClassificationHead).
HEAD_POOLS = ("mean", "attention")


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


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Binary ROC AUC (ties count one half): the normalised Mann-Whitney U statistic.

    Equals the area under the ROC curve with linear interpolation between thresholds
    (sklearn's ``roc_auc_score``). NaN when only one class is present.
    """
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, np.float64).ravel()
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, np.float64)
    # average ranks (1-based) over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[labels].sum() - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def micro_auc(labels: np.ndarray, logits: np.ndarray, num_classes: int) -> float:
    """PFLlib's per-client AUC: micro-averaged one-vs-rest ROC AUC over the raw logits."""
    labels = np.asarray(labels)
    onehot = np.zeros((labels.size, num_classes), bool)
    onehot[np.arange(labels.size), labels] = True
    return roc_auc(onehot, np.asarray(logits)[:, :num_classes])


def classification(num_classes: int, *, input_range: Tuple[float, float] = (-1.0, 1.0),
                   head_pool: str = "mean") -> Task:
    """The classification task over ``num_classes`` classes.

    ``input_range``: uint8 images are scaled to it (default ``(-1, 1)``, PFLlib's
    ``Normalize(0.5, 0.5)``); ``head_pool``: see :class:`ClassificationHead`.
    """
    if num_classes < 2:
        raise ValueError(f"classification needs >= 2 classes, got {num_classes}")

    def loss(logits, labels):
        return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)

    def eval_stats(logits, labels):
        logits = logits.astype(jnp.float32)
        return {"logits": logits, "label": labels.astype(jnp.int32), "loss": loss(logits, labels)}

    def _confusion(stats):
        pred = np.argmax(stats["logits"], axis=-1)
        conf = np.zeros((num_classes, num_classes), np.int64)
        np.add.at(conf, (np.asarray(stats["label"]), pred), 1)
        return conf

    def client_metrics(stats):
        n = int(np.shape(stats["label"])[0])
        if n == 0:
            return {"accuracy": float("nan"), "auc": float("nan"), "n": 0}
        conf = _confusion(stats)
        return {"accuracy": float(np.trace(conf) / n),
                "auc": micro_auc(stats["label"], stats["logits"], num_classes), "n": n}

    def summarize(stats, counts):
        counts = np.asarray(counts)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        accs, aucs, ns = [], [], []
        for k in range(counts.size):
            if counts[k] == 0:
                continue
            part = {key: v[bounds[k]:bounds[k + 1]] for key, v in stats.items()}
            m = client_metrics(part)
            accs.append(m["accuracy"])
            aucs.append(m["auc"])
            ns.append(m["n"])
        ns = np.asarray(ns, np.float64)
        total = ns.sum()
        if total == 0:
            return {"accuracy": float("nan"), "macro_f1": float("nan"), "auc": float("nan"),
                    "acc_std": float("nan"), "test_loss": float("nan")}
        accs, aucs = np.asarray(accs), np.asarray(aucs)
        ok = np.isfinite(aucs)
        return {
            # sum_k n_k * acc_k / sum_k n_k == pooled correct / pooled n
            "accuracy": float(np.sum(accs * ns) / total),
            "macro_f1": macro_f1(_confusion(stats)),
            "auc": float(np.sum(aucs[ok] * ns[ok]) / ns[ok].sum()) if ok.any() else float("nan"),
            "acc_std": float(np.std(accs)),
            "test_loss": float(np.mean(np.asarray(stats["loss"], np.float64))),
        }

    return Task("classification", lambda: ClassificationHead(num_classes, pool=head_pool), integer_targets,
                model_output, loss, eval_stats, client_metrics, summarize, "accuracy",
                scale_inputs=lambda x: scale_uint8(x, tuple(input_range)), metrics=METRIC_SPECS)


#: ``input_scaling`` -> the range uint8 images are scaled to (``auto``: PFLlib's [-1, 1]).
INPUT_RANGES = {"auto": (-1.0, 1.0), "pflib": (-1.0, 1.0), "unit": (0.0, 1.0)}


def _check_options(opts) -> None:
    checks.choice("task_kwargs.head_pool", opts["head_pool"], HEAD_POOLS)


def _check_data(cfg, fed, opts) -> None:
    del opts
    if fed.num_classes < 2:
        raise ConfigError(f"dataset {cfg['dataset']!r} has {fed.num_classes} class(es); classification needs "
                          "at least two")
    y = np.asarray(fed.train.y)
    present = np.unique(y[y >= 0])
    if present.size < 2:
        # A data problem (ValueError, as the other data checks), not a config one.
        raise ValueError(f"data: the training labels hold only class(es) {present.tolist()}; "
                         "classification needs at least two")


INFO = TaskInfo("classification", targets=("labels",), needs="one class label per image (>= 2 classes)",
                metrics=METRIC_SPECS, primary_metric="accuracy", options={"head_pool": "mean"},
                check=_check_options, check_data=_check_data)


@register_task(INFO)
def from_config(cfg, fed, opts) -> Task:
    """The task of a run: classes from the data, ``input_scaling`` from the config,
    ``task_kwargs.head_pool`` (``mean`` or ``attention``)."""
    return classification(fed.num_classes, input_range=INPUT_RANGES[cfg["input_scaling"]],
                          head_pool=opts["head_pool"])
