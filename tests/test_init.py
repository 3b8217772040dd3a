"""weight_init="pytorch": PyTorch's default Linear/Conv init (PFLlib's models), checked against
the formula computed here in NumPy float64 (bound 1/sqrt(fan_in) for weight and bias)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax import algorithms, experiment
from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError
from omnifm_jax.models.init import pytorch_default_init, torch_fan_in

RNG = np.random.default_rng(20240611)


def _shapes():
    """Fresh random shapes: Dense (in, out), Conv HWIO, a depthwise conv (in/groups = 1)."""
    d_in, d_out = (int(v) for v in RNG.integers(3, 40, 2))
    k, c_in, c_out = int(RNG.integers(1, 6)), int(RNG.integers(2, 17)), int(RNG.integers(2, 17))
    groups = int(RNG.integers(2, 9))
    return {"dense": (d_in, d_out), "conv": (k, k, c_in, c_out), "depthwise": (3, 3, 1, groups)}


def _torch_bound(shape, transposed=False):
    # torch.nn.init._calculate_fan_in_and_fan_out on the PyTorch weight layout, in float64.
    if len(shape) == 2:                  # Linear weight (out, in): fan_in = in
        fan_in = shape[0]
    elif transposed:                     # ConvTranspose2d weight (in, out/g, kh, kw): out/g * kh * kw
        fan_in = shape[3] * shape[0] * shape[1]
    else:                                # Conv2d weight (out, in/g, kh, kw): in/g * kh * kw
        fan_in = shape[2] * shape[0] * shape[1]
    gain = np.sqrt(2.0 / (1.0 + 5.0))    # kaiming_uniform_(a=sqrt(5))
    return float(gain * np.sqrt(3.0 / np.float64(fan_in))), 1.0 / np.sqrt(np.float64(fan_in))


def _tree(shapes):
    params = {}
    for name, shape in shapes.items():
        params[name] = {"kernel": jnp.zeros(shape), "bias": jnp.zeros(shape[-1])}
    params["norm"] = {"scale": jnp.ones(7), "bias": jnp.zeros(7)}
    params["prompt"] = {"suffix": jnp.asarray(RNG.normal(size=(4, 5)), jnp.float32)}
    params["attn"] = {"query": {"kernel": jnp.ones((6, 1, 6)), "bias": jnp.zeros((1, 6))}}
    return params


def test_kernels_and_biases_follow_pytorchs_bound_and_the_rest_is_untouched():
    shapes = _shapes()
    params = _tree(shapes)
    out = pytorch_default_init(jax.random.PRNGKey(3), params)
    for name, shape in shapes.items():
        w_bound, b_bound = _torch_bound(shape)
        assert np.isclose(w_bound, b_bound)             # kaiming_uniform(a=sqrt(5)) == 1/sqrt(fan_in)
        assert torch_fan_in(shape) == round(1 / b_bound ** 2)
        w, b = np.asarray(out[name]["kernel"], np.float64), np.asarray(out[name]["bias"], np.float64)
        assert w.shape == shape and np.all(np.abs(w) <= w_bound) and np.std(w) > 0
        assert np.all(np.abs(b) <= b_bound) and np.all(b != 0)
    for name in ("norm", "prompt", "attn"):             # norm layers, other leaves, 3-D attention kernels
        for a, b in zip(jax.tree_util.tree_leaves(params[name]), jax.tree_util.tree_leaves(out[name])):
            assert a is b


def test_sample_std_is_uniforms_on_a_large_layer():
    shape = (int(RNG.integers(300, 500)), int(RNG.integers(300, 500)))
    out = pytorch_default_init(jax.random.PRNGKey(0), {"fc": {"kernel": jnp.zeros(shape)}})
    w = np.asarray(out["fc"]["kernel"], np.float64)
    bound, _ = _torch_bound(shape)
    # std of U(-b, b) is b/sqrt(3); with n >= 90000 samples the sample std is within ~0.3% (1 sigma)
    assert abs(np.std(w) / (bound / np.sqrt(3.0)) - 1.0) < 0.01
    assert abs(np.mean(w)) < 0.01 * bound
    assert np.max(np.abs(w)) > 0.99 * bound


def test_transposed_conv_uses_out_channels_as_pytorch():
    shape = (3, 3, 16, 4)                               # UNet up-conv, HWIO: PyTorch fan_in = 4 * 3 * 3
    tree = {"up1": {"upconv": {"conv": {"conv": {"kernel": jnp.zeros(shape), "bias": jnp.zeros(4)}}}}}
    out = pytorch_default_init(jax.random.PRNGKey(1), tree)["up1"]["upconv"]["conv"]["conv"]
    bound = _torch_bound(shape, transposed=True)[1]
    assert torch_fan_in(shape, transposed=True) == 36
    w = np.asarray(out["kernel"], np.float64)
    assert np.all(np.abs(w) <= bound) and np.max(np.abs(w)) > 1.0 / np.sqrt(3 * 3 * 16)


def test_deterministic_per_key_and_a_subtree_draws_the_same():
    params = _tree(_shapes())
    a = pytorch_default_init(jax.random.PRNGKey(5), params)
    b = pytorch_default_init(jax.random.PRNGKey(5), params)
    c = pytorch_default_init(jax.random.PRNGKey(6), params)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["dense"]["kernel"], c["dense"]["kernel"])
    assert not np.array_equal(a["dense"]["kernel"], a["conv"]["kernel"].reshape(-1)[:1])
    part = pytorch_default_init(jax.random.PRNGKey(5), params, only=("conv",))
    np.testing.assert_array_equal(part["conv"]["kernel"], a["conv"]["kernel"])
    assert part["dense"] is params["dense"]


def _server_params(weight_init, algorithm="omnifm"):
    cfg = dict(config_lib.load_config(), algorithm=algorithm, num_clients=2, weight_init=weight_init,
               dataset_kwargs={"samples_per_class_per_modality": 4, "image_size": 16},
               algorithm_kwargs={"spectral_dim": 8, "attn_dim": 8, "bank_capacity": 4} if algorithm == "omnifm" else {})
    s = experiment.setup(cfg)
    x = jnp.zeros((1,) + tuple(s.fed.train.x.shape[-3:]), jnp.float32)
    server = s.algorithm.init_server(jax.random.PRNGKey(0), x)
    client = s.algorithm.init_client(jax.random.PRNGKey(0), server, x)
    from omnifm_jax.algorithms import labels
    return labels.combine(server.params, client.personal)["params"]


def test_run_path_pytorch_redraws_backbone_and_head_only():
    flax_p, torch_p = _server_params("flax"), _server_params("pytorch")
    checked = 0
    for part in ("backbone", "head"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(torch_p[part])[0]:
            names = [p.key for p in path]
            if names[-1] == "kernel" and leaf.ndim in (2, 4):
                bound = 1.0 / np.sqrt(np.float64(np.prod(leaf.shape[:-1])))
                assert np.all(np.abs(np.asarray(leaf, np.float64)) <= bound), names
                checked += 1
    assert checked >= 4
    b = np.asarray(torch_p["head"]["fc"]["bias"])
    assert np.all(b != 0) and np.all(np.asarray(flax_p["head"]["fc"]["bias"]) == 0)
    assert not np.array_equal(flax_p["backbone"]["conv1"]["kernel"], torch_p["backbone"]["conv1"]["kernel"])
    others = [k for k in flax_p if k not in ("backbone", "head")]
    assert "tokenizer" in others and "eca" in others
    for k in others:
        for x, y in zip(jax.tree_util.tree_leaves(flax_p[k]), jax.tree_util.tree_leaves(torch_p[k])):
            np.testing.assert_array_equal(x, y)


def test_bad_weight_init_refused():
    cfg = dict(config_lib.load_config(), weight_init="torch")
    with pytest.raises(ConfigError, match=r"weight_init must be one of \('auto', 'flax', 'pytorch'\), got 'torch'"):
        config_lib.validate(cfg)


def test_every_algorithm_with_backbone_and_head_takes_the_switch():
    without = [n for n in algorithms.available() if "weight_init" not in algorithms.run_args(n)]
    assert without == ["fedmepd"]  # its own model (no backbone/head): weight_init='pytorch' is refused


@pytest.mark.parametrize("overrides, expected", [
    ({}, "pytorch"),                                                   # FedAvgCNN, classification: PFLlib's
    ({"algorithm": "fedavg"}, "pytorch"),
    ({"backbone": "resnet18"}, "flax"),                                # torchvision's init, not PyTorch's default
    ({"task": "super_resolution", "backbone": "edsr"}, "flax"),        # no PFLlib model
    ({"algorithm": "fedmepd"}, "flax"),                                # builds its own model
    ({"weight_init": "flax"}, "flax"),                                 # explicit values are kept
    ({"weight_init": "pytorch", "backbone": "resnet18"}, "pytorch"),
])
def test_auto_init_is_pytorch_for_pfllib_models_only(overrides, expected):
    cfg = dict(config_lib.load_config(), **overrides)
    assert cfg["weight_init"] == overrides.get("weight_init", "auto")
    assert config_lib.resolved_weight_init(cfg) == expected
    assert config_lib.comparable(cfg)["weight_init"] == expected
    if "weight_init" in algorithms.run_args(cfg["algorithm"]):
        assert config_lib.algorithm_kwargs(cfg)["weight_init"] == expected


def test_default_run_draws_pytorch_init_and_fingerprints_compare_resolved_values():
    default, torch_p = _server_params("auto"), _server_params("pytorch")
    for x, y in zip(jax.tree_util.tree_leaves(default), jax.tree_util.tree_leaves(torch_p)):
        np.testing.assert_array_equal(x, y)
    from omnifm_jax import checkpoint

    cfg = config_lib.load_config()
    assert checkpoint.config_differences(dict(cfg, weight_init="pytorch"), cfg) == []
    assert checkpoint.config_differences(dict(cfg, weight_init="flax"), cfg) == ["weight_init"]
    sr = dict(cfg, task="super_resolution", backbone="edsr")
    assert checkpoint.config_differences(dict(sr, weight_init="flax"), sr) == []  # written when flax was the default
