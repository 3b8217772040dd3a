"""Backbones (one file each), task heads and the OmniFM wrapper."""
from omnifm_jax.models.cnn import FedAvgCNN
from omnifm_jax.models.common import TokenLayout
from omnifm_jax.models.heads import ClassificationHead
from omnifm_jax.models.omnifm import OmniFM, OmniFMAux, TokenModel
from omnifm_jax.models.resnet import ResNet18

__all__ = ["FedAvgCNN", "TokenLayout", "ClassificationHead", "OmniFM", "OmniFMAux", "TokenModel", "ResNet18"]
