"""Several rounds fused into one lax.scan equal the same rounds dispatched one by one."""
import jax
import numpy as np
import optax
import pytest
from _helpers import TinyBackbone

from omnifm_jax import algorithms, federated
from omnifm_jax.data import load_federation
from omnifm_jax.tasks import classification


def test_fused_rounds_equal_one_by_one():
    fed = load_federation("synthetic", num_clients=4, seed=2, image_size=8, num_classes=3,
                          samples_per_class_per_modality=6, partition="iid")
    task = classification(fed.num_classes)
    alg = algorithms.build("fedper", task=task, backbone=TinyBackbone(), optimizer=optax.sgd(0.1), local_epochs=1,
                           batch_size=4)
    train = jax.device_put(fed.train)
    state0 = jax.jit(lambda k: federated.init(alg, k, train))(jax.random.key(0))
    one = federated.make_round(alg, fed.train, participation=0.5, donate=False)
    fused = federated.make_rounds(alg, fed.train, num_rounds=3, participation=0.5, donate=False)
    s1 = state0
    parts = []
    for _ in range(3):
        s1, m = one(s1, train)
        parts.append(np.asarray(m.participants))
    s3, ms = fused(state0, train)
    assert int(s3.round) == 3
    np.testing.assert_array_equal(np.asarray(ms.participants), np.stack(parts))
    for a, b in zip(jax.tree_util.tree_leaves((s1.server, s1.clients)),
                    jax.tree_util.tree_leaves((s3.server, s3.clients))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="num_rounds"):
        federated.make_rounds(alg, fed.train, num_rounds=0)
