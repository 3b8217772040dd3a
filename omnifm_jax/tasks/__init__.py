"""Tasks as values: head, loss and metrics (one file per task)."""
from omnifm_jax.tasks.base import Task
from omnifm_jax.tasks.classification import classification, macro_f1
from omnifm_jax.tasks.segmentation import segmentation
from omnifm_jax.tasks.superres import bicubic_upsample, super_resolution

__all__ = ["Task", "classification", "macro_f1", "segmentation", "super_resolution", "bicubic_upsample"]
