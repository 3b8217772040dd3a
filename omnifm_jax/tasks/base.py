"""A task is a value: how targets are read, the head, the loss and the metrics.

The engine never branches on the task: it calls these functions.

Each task owns its metrics (accuracy and macro-F1 in ``classification.py``, PSNR/SSIM via
dm-pix in ``superres.py``) rather than a shared ``metrics.py``: a metric is only meaningful
with the targets and reductions of its task, and a new task stays one file.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional


class Task(NamedTuple):
    """A learning task.

    Attributes:
      name: e.g. ``"classification"``.
      make_head: ``() -> flax module`` reading a token sequence (see models/heads.py).
      prepare_targets: ``y (device dtype) -> float/int targets`` (e.g. uint8 HR -> [0, 1]).
      predict: ``(model_output, x_float) -> prediction`` (e.g. adds SR's bicubic skip).
      loss: ``(prediction, targets) -> per-sample loss (B,)``.
      eval_stats: ``(prediction, targets, mask (B,)) -> pytree of sums`` (accumulated
        over batches; masked samples contribute nothing).
      client_metrics: ``summed stats of one client (numpy) -> {name: value}``.
      summarize: ``(stats stacked over clients (numpy)) -> {name: value}`` the federation
        metrics (e.g. sample-weighted accuracy and macro-F1).
      primary_metric: name of the metric used to pick the best round (higher is better).
      baseline: optional ``x_float -> prediction`` of a model-free reference (SR: bicubic
        upsampling), evaluated once so runs can report how far they beat it.
    """
    name: str
    make_head: Callable[[], Any]
    prepare_targets: Callable[[Any], Any]
    predict: Callable[[Any, Any], Any]
    loss: Callable[[Any, Any], Any]
    eval_stats: Callable[[Any, Any, Any], Any]
    client_metrics: Callable[[Any], Dict[str, float]]
    summarize: Callable[[Any], Dict[str, float]]
    primary_metric: str
    baseline: Optional[Callable[[Any], Any]] = None
