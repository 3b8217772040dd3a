"""Tasks as values: head, loss and metrics (one file per task, each registered in
:data:`omnifm_jax.registry.TASKS` with its declaration, :class:`TaskInfo`).

By name, for every registered task: :func:`available`, :func:`declaration` (accepted
targets, options, metrics), :func:`build` (the run's task from a config and a federation),
:func:`check_data` / :func:`accepts` (does it take this federation), :func:`metric_spec`.

The task constructors: :func:`classification`, :func:`segmentation`,
:func:`super_resolution`, :func:`vqa` and ``fusion.fusion`` (``tasks.fusion`` is the module, which shares
the task's name: ``from omnifm_jax.tasks import fusion`` gives its VIF and loss functions
too).
"""
from omnifm_jax.tasks import fusion
from omnifm_jax.tasks.base import (
                                   MetricSpec,
                                   Task,
                                   TaskInfo,
                                   accepts,
                                   available,
                                   build,
                                   check_data,
                                   check_options,
                                   declaration,
                                   higher_is_better,
                                   metric_spec,
                                   register_task,
                                   target_kind,
)
from omnifm_jax.tasks.classification import classification, macro_f1
from omnifm_jax.tasks.segmentation import segmentation
from omnifm_jax.tasks.sr import bicubic_upsample, super_resolution
from omnifm_jax.tasks.vqa import vqa

__all__ = ["Task", "TaskInfo", "MetricSpec", "available", "declaration", "build", "check_data", "check_options",
           "accepts", "target_kind", "metric_spec", "higher_is_better", "register_task",
           "classification", "segmentation", "super_resolution", "fusion", "vqa", "macro_f1", "bicubic_upsample"]
