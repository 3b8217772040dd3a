"""A task is a value: how inputs and targets are read, the head, the loss and the metrics.

The engine never branches on the task: it calls these functions.

Evaluation is per sample: the engine runs every client's personalised model over its
held-out samples and returns ``eval_stats`` for each sample, in the split's flat order
(client after client); ``client_metrics`` and ``summarize`` turn those into numbers on
the host. Each task owns its metrics (accuracy, macro-F1 and AUC in
``classification.py``, PSNR/SSIM via dm-pix in ``superres.py``) rather than a shared
``metrics.py``: a metric is only meaningful with the targets and reductions of its task,
and a new task stays one file.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax.numpy as jnp

from omnifm_jax.checks import ConfigError


def scale_uint8(x, value_range: Tuple[float, float] = (0.0, 1.0)):
    """uint8 ``[0, 255]`` -> float32 ``[lo, hi]`` (done inside the jitted step; data stays uint8).

    ``(-1, 1)`` is PFLlib's ``ToTensor()`` + ``Normalize(0.5, 0.5)``.
    """
    lo, hi = value_range
    x = x.astype(jnp.float32) / 255.0
    if (lo, hi) == (0.0, 1.0):
        return x
    return x * (hi - lo) + lo


class Task(NamedTuple):
    """A learning task.

    Attributes:
      name: e.g. ``"classification"``.
      make_head: ``() -> flax module`` reading a token sequence (see models/heads.py).
      prepare_targets: ``y (device dtype) -> float/int targets`` (e.g. uint8 HR -> [0, 1]).
      predict: ``(model_output, x_float) -> prediction`` (e.g. adds SR's bicubic skip).
      loss: ``(prediction, targets) -> per-sample loss (B,)``.
      eval_stats: ``(prediction, targets) -> pytree of per-sample arrays (B, ...)``.
      client_metrics: ``per-sample stats of ONE client (numpy) -> {name: value}``.
      summarize: ``(per-sample stats of all clients in flat order (numpy), counts int[K])
        -> {name: value}``, the federation metrics.
      primary_metric: name of the metric used to pick the best round (higher is better).
      baseline: optional ``x_float -> prediction`` of a model-free reference (SR: bicubic
        upsampling), evaluated once so runs can report how far they beat it.
      scale_inputs: ``uint8 images -> float model inputs``.
    """
    name: str
    make_head: Callable[[], Any]
    prepare_targets: Callable[[Any], Any]
    predict: Callable[[Any, Any], Any]
    loss: Callable[[Any, Any], Any]
    eval_stats: Callable[[Any, Any], Any]
    client_metrics: Callable[[Any], Dict[str, float]]
    summarize: Callable[[Any, Any], Dict[str, float]]
    primary_metric: str
    baseline: Optional[Callable[[Any], Any]] = None
    scale_inputs: Callable[[Any], Any] = scale_uint8


def task_options(cfg, defaults: Dict[str, Any]) -> Dict[str, Any]:
    """The run's ``task_kwargs`` over the task's ``defaults``; an unknown key stops the run
    before any work, naming the keys the task accepts."""
    given = dict(cfg.get("task_kwargs") or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        accepted = sorted(defaults) or "none"
        raise ConfigError(f"task {cfg['task']!r}: unknown task_kwargs {unknown}; it accepts: {accepted}")
    return {**defaults, **given}
