"""Visual question answering as answer classification over the training answers (VQA-RAD).

The data (:mod:`omnifm_jax.data.vqa_rad`) pack the question into the image array and encode
each label as ``answer + (V + 1) * is_open`` over the ``V`` training answers (``answer = V``:
a test answer no training question has, which the model cannot give: it counts as wrong).
The head is a linear classifier over the ``V`` answers reading the backbone's tokens
(``backbone="vqa"``). Metrics, per client and pooled over clients (correct / questions):

  * ``accuracy``: all test questions;
  * ``closed_accuracy``: closed (yes/no-type) questions; ``open_accuracy``: open ones;
  * ``test_loss``: mean cross-entropy over the test questions whose answer is known.

Inputs: image channels scaled to ``[-1, 1]``; the question plane is handed on unscaled (its
bytes are token ids, read by the backbone).
"""
from __future__ import annotations

from collections import Counter

import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax.checks import ConfigError
from omnifm_jax.models.heads import ClassificationHead
from omnifm_jax.tasks.base import MetricSpec, Task, TaskInfo, integer_targets, model_output, register_task, scale_uint8

__all__ = ["vqa", "INFO", "METRIC_SPECS", "majority_baseline"]

#: The metrics the task reports (``accuracy`` over all questions is the headline).
METRIC_SPECS = (MetricSpec("accuracy", "Acc"), MetricSpec("closed_accuracy", "Closed"),
                MetricSpec("open_accuracy", "Open"),
                MetricSpec("test_loss", "Test loss", higher_is_better=False))


def _split_label(labels, num_answers: int):
    return labels % (num_answers + 1), labels // (num_answers + 1)


def _rates(correct, is_open) -> dict:
    correct, is_open = np.asarray(correct, bool), np.asarray(is_open, bool)

    def rate(sel):
        return float(correct[sel].mean()) if sel.any() else float("nan")

    return {"accuracy": rate(np.ones_like(correct)), "closed_accuracy": rate(~is_open),
            "open_accuracy": rate(is_open), "n": int(correct.size), "n_closed": int((~is_open).sum()),
            "n_open": int(is_open.sum())}


def majority_baseline(labels: np.ndarray, counts: np.ndarray, num_answers: int) -> dict:
    """The accuracy of answering every test question of a client with the most frequent
    answer among that client's test questions (of all of them for ``accuracy``; of its closed
    / open ones for ``closed_accuracy`` / ``open_accuracy``): an upper bound of any constant
    answer, read off the test labels. ``labels``: encoded, flat, client after client.
    Returns ``{"clients": [{metric: value}, ...], "avg": {metric: value}}`` (``avg`` pooled
    over clients by questions, as the task's metrics; NaN where a client has no such
    question)."""
    labels, counts = np.asarray(labels), np.asarray(counts)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    clients, hits, totals = [], Counter(), Counter()
    for k in range(counts.size):
        ans, is_open = _split_label(labels[bounds[k]:bounds[k + 1]], num_answers)
        row = {}
        for name, sel in (("accuracy", np.ones_like(ans, bool)), ("closed_accuracy", is_open == 0),
                          ("open_accuracy", is_open == 1)):
            known = ans[sel][ans[sel] < num_answers]
            best = int(np.bincount(known).max()) if known.size else 0
            row[name] = best / int(sel.sum()) if sel.any() else float("nan")
            hits[name] += best
            totals[name] += int(sel.sum())
        clients.append(row)
    avg = {name: hits[name] / totals[name] if totals[name] else float("nan") for name in totals}
    return {"clients": clients, "avg": avg}


def vqa(num_answers: int) -> Task:
    """The VQA task over ``num_answers`` training answers (labels encoded as above)."""
    if num_answers < 2:
        raise ValueError(f"vqa needs >= 2 training answers, got {num_answers}")
    v = num_answers

    def loss(logits, labels):
        answer, _ = _split_label(labels, v)
        known = answer < v
        ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(known, answer, 0))
        return jnp.where(known, ce, 0.0)

    def eval_stats(logits, labels):
        answer, is_open = _split_label(labels, v)
        return {"correct": jnp.argmax(logits, axis=-1) == answer, "open": is_open == 1,
                "known": answer < v, "loss": loss(logits, labels)}

    def client_metrics(stats):
        return _rates(stats["correct"], stats["open"])

    def summarize(stats, counts):
        m = _rates(stats["correct"], stats["open"])
        known = np.asarray(stats["known"], bool)
        m["test_loss"] = float(np.asarray(stats["loss"], np.float64)[known].mean()) if known.any() else float("nan")
        return {k: m[k] for k in ("accuracy", "closed_accuracy", "open_accuracy", "test_loss")}

    def scale_inputs(x):
        return jnp.concatenate([scale_uint8(x[..., :-1], (-1.0, 1.0)), x[..., -1:].astype(jnp.float32)], axis=-1)

    return Task("vqa", lambda: ClassificationHead(v), integer_targets, model_output, loss, eval_stats, client_metrics,
                summarize, "accuracy", scale_inputs=scale_inputs, metrics=METRIC_SPECS)


def _check_data(cfg, fed, opts) -> None:
    del opts
    info = fed.info
    if cfg["backbone"] != "vqa":
        raise ConfigError(f"task=vqa needs backbone='vqa' (it reads the packed question), got {cfg['backbone']!r}")
    from omnifm_jax.models.vqa import VQABackbone

    kw = cfg["backbone_kwargs"]
    length = kw.get("question_length", VQABackbone.question_length)
    if length != info["question_length"]:
        raise ConfigError(f"backbone_kwargs.question_length={length} but the data hold questions of "
                          f"{info['question_length']} tokens (set both, or dataset_kwargs.question_length)")
    words = len(info["vocabulary"]["questions"])
    vocab = kw.get("vocab_size", VQABackbone.vocab_size)
    if vocab < words:
        raise ConfigError(f"backbone_kwargs.vocab_size={vocab} is smaller than the data's question vocabulary "
                          f"({words} words)")
    if cfg["input_scaling"] != "auto":
        raise ConfigError(f"task=vqa scales its inputs itself (image to [-1, 1], question unscaled); "
                          f"input_scaling must be 'auto', got {cfg['input_scaling']!r}")


INFO = TaskInfo("vqa", targets=("answers",),
                needs="questions packed with their images and encoded answers (dataset vqa_rad)",
                metrics=METRIC_SPECS, primary_metric="accuracy", options={}, check_data=_check_data)


@register_task(INFO)
def from_config(cfg, fed, opts) -> Task:
    """The task of a run: the answer vocabulary from the data."""
    del cfg, opts
    return vqa(int(fed.info["num_answers"]))
