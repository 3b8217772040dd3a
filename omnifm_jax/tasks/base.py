"""A task is a value: how inputs and targets are read, the head, the loss and the metrics.

The engine never branches on the task: it calls these functions.

Evaluation is per sample: the engine runs every client's personalised model over its
held-out samples and returns ``eval_stats`` for each sample, in the split's flat order
(client after client); ``client_metrics`` and ``summarize`` turn those into numbers on
the host. Each task owns its metrics (accuracy, macro-F1 and AUC in
``classification.py``, PSNR/SSIM via dm-pix in ``sr.py``) rather than a shared
``metrics.py``: a metric is only meaningful with the targets and reductions of its task,
and a new task stays one file.

Before any data, a task declares itself (:class:`TaskInfo`, registered with
:func:`register_task`): the kinds of targets it accepts (:func:`target_kind` of a
federation), its ``task_kwargs`` with their defaults and check, and the metrics it reports
(:class:`MetricSpec`: label, higher or lower is better) with its headline metric. The run
path asks :func:`check_data` (options, :func:`accepts`, the task's own checks); no task looks at
another task's data.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import jax.numpy as jnp
import numpy as np

from omnifm_jax.checks import ConfigError
from omnifm_jax.registry import TASKS

__all__ = ["Task", "MetricSpec", "TaskInfo", "register_task", "declaration", "target_kind", "accepts",
           "check_options", "check_data", "task_options", "metric_spec", "higher_is_better", "build", "available",
           "scale_uint8", "integer_targets", "model_output"]


def scale_uint8(x, value_range: Tuple[float, float] = (0.0, 1.0)):
    """uint8 ``[0, 255]`` -> float32 ``[lo, hi]`` (done inside the jitted step; data stays uint8).

    ``(-1, 1)`` is PFLlib's ``ToTensor()`` + ``Normalize(0.5, 0.5)``.
    """
    lo, hi = value_range
    x = x.astype(jnp.float32) / 255.0
    if (lo, hi) == (0.0, 1.0):
        return x
    return x * (hi - lo) + lo


def integer_targets(y):
    """``prepare_targets`` of the tasks whose targets are integer ids (labels, encoded answers)."""
    return y.astype(jnp.int32)


def model_output(out, x):
    """``predict`` of the tasks whose prediction is the model's output itself."""
    del x
    return out


class MetricSpec(NamedTuple):
    """A metric a task reports: ``key`` in its metrics lines, a short ``label`` for tables,
    and whether a higher value is better."""
    key: str
    label: str
    higher_is_better: bool = True


class TaskInfo(NamedTuple):
    """What a task declares before it sees any data (registered with :func:`register_task`).

    Attributes:
      name: the registered name (``cfg["task"]``).
      targets: the kinds of targets it accepts (values of :func:`target_kind`).
      needs: the data it needs, in words (for the error when a data set does not fit).
      metrics: the metrics it reports, in report order.
      primary_metric: the headline: the key that picks the best round.
      options: its ``task_kwargs`` and their defaults.
      check: ``(options, defaults filled in) -> None``; raises :class:`ConfigError` for an
        impossible value (before any data are loaded).
      check_data: ``(cfg, fed, options) -> None``, run once the data are known to be of an
        accepted kind: raises :class:`ConfigError` (or ``ValueError`` for broken data) when
        the federation does not fit the task (shapes, classes, sizes).
    """
    name: str
    targets: Tuple[str, ...]
    needs: str
    metrics: Tuple[MetricSpec, ...]
    primary_metric: str
    options: Dict[str, Any]
    check: Optional[Callable[[Dict[str, Any]], None]] = None
    check_data: Optional[Callable[[Dict[str, Any], Any, Dict[str, Any]], None]] = None


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
      metrics: the metrics it reports (:class:`MetricSpec`; its :class:`TaskInfo`'s).
      baseline_name: how result tables call the baseline (e.g. ``"bicubic"``).
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
    metrics: Tuple[MetricSpec, ...] = ()
    baseline_name: str = "baseline"


def register_task(info: TaskInfo) -> Callable[[Callable], Callable]:
    """Decorator of a task's builder ``(cfg, fed, options) -> Task``: registers, under
    ``info.name`` and with its declaration, ``from_config(cfg, fed) -> Task``, which checks
    the options and the data (:func:`check_data`) before it calls the builder."""
    def deco(builder: Callable[[Dict[str, Any], Any, Dict[str, Any]], Task]) -> Callable[[Dict[str, Any], Any], Task]:
        @functools.wraps(builder)
        def from_config(cfg, fed) -> Task:
            return builder(cfg, fed, _check_data(info, cfg, fed))

        TASKS.register(info.name, info=info)(from_config)
        return from_config
    return deco


def declaration(name: str) -> TaskInfo:
    """The :class:`TaskInfo` of the registered task ``name`` (unknown name: ValueError)."""
    return TASKS.entry(name).meta["info"]


def metric_spec(task: str, key: str) -> MetricSpec:
    """The :class:`MetricSpec` of metric ``key`` of the registered task ``task``."""
    for spec in declaration(task).metrics:
        if spec.key == key:
            return spec
    raise ValueError(f"task {task!r} reports no metric {key!r}; it reports "
                     f"{[m.key for m in declaration(task).metrics]}")


def higher_is_better(task: Task, key: str) -> bool:
    """Whether a higher ``key`` is better for ``task`` (True for a metric it does not declare)."""
    return next((m.higher_is_better for m in task.metrics if m.key == key), True)


def target_kind(fed) -> str:
    """The kind of a federation's targets: the loader's ``info["target"]`` where it sets one
    (``"mask"``, ``"fusion"``), else ``"labels"`` for one class label per sample and
    ``"images"`` for a target image per sample."""
    target = (getattr(fed, "info", None) or {}).get("target")
    if target:
        return str(target)
    ndim = np.ndim(fed.train.y)
    return "labels" if ndim == 1 else "images" if ndim == 4 else f"{ndim}-d arrays"


def accepts(name: str, fed, *, dataset: str = "the data set") -> Optional[str]:
    """None if task ``name`` accepts the federation's kind of targets, else the one-line
    reason (naming the tasks that take such data)."""
    info = declaration(name)
    kind = target_kind(fed)
    if kind in info.targets:
        return None
    takers = [t for t in TASKS.available() if kind in declaration(t).targets]
    what = f"the data of task={' / '.join(takers)}" if takers else "data no registered task takes"
    use = f"; use task={takers[0]}" if takers else ""
    return (f"dataset {dataset!r} is not a {name} set: its targets are {kind} ({what}); "
            f"task={name} needs {info.needs}{use}")


def check_options(info: TaskInfo, given: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """The ``task_kwargs`` ``given`` over the task's defaults, checked: an unknown key or an
    impossible value raises :class:`ConfigError` naming it (before any work)."""
    given = dict(given or {})
    unknown = sorted(set(given) - set(info.options))
    if unknown:
        accepted = sorted(info.options) or "none"
        raise ConfigError(f"task {info.name!r}: unknown task_kwargs {unknown}; it accepts: {accepted}")
    opts = {**info.options, **given}
    if info.check is not None:
        info.check(opts)
    return opts


def task_options(cfg, info: TaskInfo) -> Dict[str, Any]:
    """The run's ``task_kwargs`` over the task's defaults (:func:`check_options`)."""
    return check_options(info, cfg.get("task_kwargs"))


def _check_data(info: TaskInfo, cfg, fed) -> Dict[str, Any]:
    opts = task_options(cfg, info)
    why_not = accepts(info.name, fed, dataset=cfg.get("dataset", "the data set"))
    if why_not:
        raise ConfigError(why_not)
    if info.check_data is not None:
        info.check_data(cfg, fed, opts)
    return opts


def check_data(cfg, fed) -> Dict[str, Any]:
    """Whether the run's task takes the federation: its options (:func:`check_options`),
    the kind of targets (:func:`accepts`) and the task's own data checks
    (``TaskInfo.check_data``). Returns the options; raises :class:`ConfigError` (or
    ``ValueError`` for broken data) naming the problem."""
    return _check_data(declaration(cfg["task"]), cfg, fed)


def build(cfg, fed) -> Task:
    """The run's task: ``cfg["task"]``'s registered ``from_config(cfg, fed)`` (which runs
    :func:`check_data` first)."""
    return TASKS.get(cfg["task"])(cfg, fed)


def available() -> List[str]:
    """The registered task names."""
    return TASKS.available()
