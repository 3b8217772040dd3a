"""Small pieces several test files share (not collected as tests)."""
from __future__ import annotations

import os
from pathlib import Path

import flax.linen as nn
import numpy as np

from omnifm_jax.data.federation import ClientArrays
from omnifm_jax.models.common import Conv, make_norm

NUM_CLASSES = 3


def real_data_dir() -> Path:
    """``$OMNIFM_REAL_DATA`` or ``../shared/data/real`` beside the repository (may not exist)."""
    env = os.environ.get("OMNIFM_REAL_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"


class TinyBackbone(nn.Module):
    """One 3x3 convolution (stride 2) + ReLU, flattened into tokens ``(B, L, d)``."""
    features: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None):
        del train, mask
        h = nn.relu(Conv(self.features, (3, 3), strides=(2, 2), name="conv")(x))
        b, hh, ww, d = h.shape
        return h.reshape(b, hh * ww, d)


class TinyBNBackbone(nn.Module):
    """One 3x3 convolution (stride 2) + BatchNorm + ReLU: the smallest model where padded
    samples could leak into a batch statistic."""
    features: int = 4

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None):
        h = Conv(self.features, (3, 3), strides=(2, 2), use_bias=False, name="conv")(x)
        h = nn.relu(make_norm("batch", train=train, name="norm")(h, mask))
        b, hh, ww, d = h.shape
        return h.reshape(b, hh * ww, d)


class FlatBackbone(nn.Module):
    """No parameters: the image flattened into one token (with a head: softmax regression)."""

    @nn.compact
    def __call__(self, x, *, train: bool = False, mask=None):
        del train, mask
        return x.reshape(x.shape[0], 1, -1)


def make_clients(ns, n_max=None, *, size=8, seed=0, num_classes=NUM_CLASSES) -> ClientArrays:
    """Random uint8 images and labels of clients with ``ns`` samples, in the ragged layout.

    ``n_max`` is accepted for old call sites and ignored (nothing is padded).
    """
    del n_max
    rng = np.random.default_rng(seed)
    total = int(sum(ns))
    x = rng.integers(0, 256, (total, size, size, 3), dtype=np.uint8)
    y = rng.integers(0, num_classes, total).astype(np.int32)
    n = np.asarray(ns, np.int32)
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int32)
    return ClientArrays(x=x, y=y, n=n, offsets=offsets, modality=np.zeros(total, np.int32))


#: Hyper-parameters that make each algorithm do its own thing at tiny sizes (an algorithm
#: not listed runs with its defaults). Tests that loop over every registered algorithm use it.
ALGORITHM_TEST_KWARGS = {
    "omnifm": dict(spectral_dim=8, attn_dim=8, bank_capacity=8, num_suffix=2, top_k=2),
    "fedprox": dict(mu=0.1),
    "ditto": dict(mu=0.1),
    "moon": dict(contrastive_weight=1.0, tau=0.5),
}


def build_algorithm(name, *, backbone, num_clients, lr=0.1, local_epochs=1, batch_size=4, num_classes=NUM_CLASSES,
                    **overrides):
    """``algorithms.build(name, ...)`` for tests: a classification task, SGD at ``lr``, the
    run values the factory takes (``lr``, ``num_clients``) and :data:`ALGORITHM_TEST_KWARGS`."""
    import optax

    from omnifm_jax import algorithms
    from omnifm_jax.tasks import classification

    run = {"lr": lr, "num_clients": num_clients}
    kw = {k: run[k] for k in algorithms.run_args(name) if k in run}
    kw.update(ALGORITHM_TEST_KWARGS.get(name, {}))
    kw.update(overrides)
    return algorithms.build(name, task=classification(num_classes), backbone=backbone, optimizer=optax.sgd(lr),
                            local_epochs=local_epochs, batch_size=batch_size, **kw)
