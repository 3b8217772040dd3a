"""bf16 computation with float32 master weights still trains."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import algorithms, federated
from omnifm_jax.data import load_federation
from omnifm_jax.models import FedAvgCNN
from omnifm_jax.tasks import classification


def _train(dtype, rounds=6):
    fed = load_federation("synthetic", num_clients=2, seed=3, image_size=16, num_classes=3,
                          samples_per_class_per_modality=12, partition="iid")
    task = classification(fed.num_classes)
    alg = algorithms.build("fedavg", task=task, backbone=FedAvgCNN(hidden=64, dtype=dtype),
                           optimizer=optax.sgd(0.1), local_epochs=2, batch_size=8)
    train = jax.device_put(fed.train)
    state = federated.init(alg, jax.random.key(0), train)
    round_fn = federated.make_round(alg, fed.train)
    losses = []
    for _ in range(rounds):
        state, info = round_fn(state, train)
        losses.append(float(jnp.mean(info.client_metrics["train_loss"])))
    return state, losses


@pytest.mark.optimized  # trains many steps: tests/conftest.py
def test_bfloat16_compute_keeps_float32_weights_and_converges():
    state, losses = _train("bfloat16")
    leaves = jax.tree_util.tree_leaves(state.server.params)
    assert leaves and all(l.dtype == jnp.float32 for l in leaves)  # master weights stay f32
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses  # it learns
    _, losses32 = _train("float32")
    print("bf16", losses, "f32", losses32)
    # bf16 ends close to the float32 run of the same math
    assert abs(losses[-1] - losses32[-1]) < 0.25 * losses32[0], (losses, losses32)
