"""The client axis sharded over 8 (virtual CPU) devices gives the single-device round."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(r"""
    import os, sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import flax.linen as nn
    assert jax.device_count() == 8, jax.devices()
    from omnifm_jax import algorithms, federated, sharding
    from omnifm_jax.data import load_federation
    from omnifm_jax.tasks import classification

    from omnifm_jax.models.common import make_conv

    class Tiny(nn.Module):
        @nn.compact
        def __call__(self, x, *, train=False, mask=None):
            y = nn.relu(make_conv(sys.argv[2])(4, (3, 3), strides=(2, 2))(x))
            return y.reshape(y.shape[0], -1, 4)

    fed = load_federation("synthetic", num_clients=8, seed=1, image_size=8, num_classes=3,
                          samples_per_class_per_modality=8, partition="iid")
    task = classification(fed.num_classes)
    alg = algorithms.build(sys.argv[1], task=task, backbone=Tiny(), optimizer=optax.sgd(0.1),
                           local_epochs=1, batch_size=4,
                           **({"spectral_dim": 8, "attn_dim": 8, "bank_capacity": 16, "num_suffix": 2}
                              if sys.argv[1] == "omnifm" else {}))
    train = jax.device_put(fed.train)
    state0 = jax.jit(lambda k: federated.init(alg, k, train))(jax.random.key(0))
    # all participants vmapped at once (the accelerator strategy), so that the per-client
    # convolution's batching rule runs under the sharded client axis
    round_fn = federated.make_round(alg, fed.train, participation=0.5, donate=False, client_chunk=None)

    single = state0
    for _ in range(2):
        single, _ = round_fn(single, train)

    mesh = sharding.client_mesh()
    s_train = sharding.replicate(train, mesh)  # ragged data: replicated; client states: split
    sharded = sharding.shard_state(state0, mesh)
    for leaf in jax.tree_util.tree_leaves(sharded.clients):
        assert len(leaf.sharding.device_set) == 8 and leaf.addressable_shards[0].data.shape[0] == 1
    for _ in range(2):
        sharded, _ = round_fn(sharded, s_train)
    for leaf in jax.tree_util.tree_leaves(sharded.clients):
        assert len(leaf.sharding.device_set) == 8  # still spread over the devices

    a = jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, (single.server, single.clients)))
    b = jax.tree_util.tree_leaves(jax.tree_util.tree_map(np.asarray, (sharded.server, sharded.clients)))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
    try:
        sharding.shard_clients(jnp.zeros((6, 2)), mesh)
    except ValueError as e:
        assert "divisible by 8" in str(e)
    else:
        raise AssertionError("6 clients over 8 devices must be refused")
    from omnifm_jax import config, experiment
    cfg = config.apply_overrides(config.load_config("default"), ["shard_clients=True", "num_clients=6"])
    try:
        experiment.run(cfg, None, progress=False)
    except config.ConfigError as e:
        assert "divisible by the 8 devices" in str(e), e
    else:
        raise AssertionError("shard_clients with 6 clients on 8 devices must be refused")
    print("SHARDED-OK")
""")


def _run(algorithm, conv):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, algorithm, conv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and "SHARDED-OK" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_sharded_fedavg_round_equals_single_device():
    _run("fedavg", "per_client")  # the accelerator path's convolution (models.common.CONV_PATHS)


def test_sharded_omnifm_round_equals_single_device():
    _run("omnifm", "xla")
