"""Small pieces several test files share (not collected as tests)."""
from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn
import numpy as np

from omnifm_jax.data.federation import ClientArrays

NUM_CLASSES = 3


def real_data_dir() -> Path:
    """``$OMNIFM_REAL_DATA`` or ``../shared/data/real`` beside the repository (may not exist)."""
    env = os.environ.get("OMNIFM_REAL_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


class TinyBackbone(nn.Module):
    """One 3x3 convolution (stride 2) + ReLU, flattened into tokens ``(B, L, d)``."""
    features: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool = False):
        del train
        h = nn.relu(nn.Conv(self.features, (3, 3), strides=(2, 2), name="conv")(x))
        b, hh, ww, d = h.shape
        return h.reshape(b, hh * ww, d)


def make_clients(ns, n_max, *, size=8, seed=0, num_classes=NUM_CLASSES) -> ClientArrays:
    """Random uint8 images and labels, padded like the real federations (x=0, y=-1)."""
    rng = np.random.default_rng(seed)
    k = len(ns)
    x = np.zeros((k, n_max, size, size, 3), np.uint8)
    y = np.full((k, n_max), -1, np.int32)
    for i, n in enumerate(ns):
        x[i, :n] = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        y[i, :n] = rng.integers(0, num_classes, n)
    mod = np.where(y >= 0, 0, -1).astype(np.int32)
    return ClientArrays(x=x, y=y, n=np.asarray(ns, np.int32), modality=mod)
