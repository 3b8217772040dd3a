"""Fine-tuning setups (omnifm_jax/finetune.py): ``init_from`` with path rules, the test-split
disjointness check, ``trainable``, and their errors."""
from __future__ import annotations

import re

import jax
import numpy as np
import pytest

from omnifm_jax import config as config_lib
from omnifm_jax import experiment, finetune, sweep
from omnifm_jax.algorithms.labels import path_name
from omnifm_jax.checks import ConfigError

TINY = ["num_clients=3", "dataset_kwargs.samples_per_class_per_modality=4", "dataset_kwargs.image_size=16",
        "backbone_kwargs.hidden=16", "batch_size=4", "rounds=2", "eval_train_loss=False", "diagnostics=0",
        "checkpoint_every=0"]


def cfg_of(*overrides):
    return config_lib.apply_overrides(config_lib.load_config("default"), TINY + list(overrides))


def flat(tree):
    return {path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-round FedAvg run with checkpoints, and a FedPer one (its head stays personal)."""
    root = tmp_path_factory.mktemp("finetune")
    runs = {}
    for alg in ("fedavg", "fedper"):
        experiment.run(cfg_of(f"algorithm={alg}", "checkpoint_every=1"), root / alg, progress=False,
                       log=lambda _: None)
        runs[alg] = root / alg
    return runs


def test_init_from_starts_every_model_from_the_sources_shared_parameters(source):
    """FedPer fine-tuned from a FedAvg run: the server's shared part and every client's
    personal head start as the source server's parameters (bit for bit); from a checkpoint
    directory the same; the run then trains."""
    src = finetune.load_source_params(source["fedavg"])
    assert src.round == 2 and src.cfg["algorithm"] == "fedavg"
    for where in (source["fedavg"], source["fedavg"] / "checkpoints" / "2"):
        with pytest.warns(UserWarning, match="training images"):  # same data: the training split overlaps
            prepared = experiment.setup(cfg_of("algorithm=fedper", f"init_from={where}"))
        _, mapping = prepared.init
        assert set(mapping) == set(src.params) and all(k == v for k, v in mapping.items())
        state = jax.jit(lambda k: experiment.federated.init(prepared.algorithm, k, prepared.fed.train))(
            jax.random.key(0))
        state = finetune.apply_init(state, src, mapping)
        server, personal = flat(state.server.params), flat(state.clients.personal)
        assert any(k.startswith("params/head/") for k in personal)  # FedPer: the head is personal
        for k, v in server.items():
            np.testing.assert_array_equal(v, src.params[k])
        for k, v in personal.items():
            for c in range(v.shape[0]):
                np.testing.assert_array_equal(v[c], src.params[k])
    with pytest.warns(UserWarning, match="training images"):
        summary = experiment.run(cfg_of("algorithm=fedper", f"init_from={source['fedavg']}", "rounds=1"), None,
                                 progress=False, log=lambda _: None)
    assert summary["rounds"] == 1


def test_path_rules_select_and_rename():
    paths = ["params/backbone/conv1/kernel", "params/backbone/fc1/kernel", "params/head/fc/kernel"]
    assert finetune.select(paths, []) == {p: p for p in paths}
    rules = finetune.parse_rules(["params/backbone/conv", r"params/head/(.*)=params/old_head/\1"])
    assert finetune.select(paths, rules) == {"params/backbone/conv1/kernel": "params/backbone/conv1/kernel",
                                             "params/head/fc/kernel": "params/old_head/fc/kernel"}
    with pytest.raises(ConfigError, match="bad regular expression"):
        finetune.parse_rules(["params/(["])


def test_mismatched_or_missing_parameters_are_refused_before_training(source):
    with pytest.warns(UserWarning, match="training images"), \
            pytest.raises(ConfigError, match=r"cannot load 3 parameter\(s\): params/backbone/fc1/bias: shape \(8,\) "
                                             r"here, \(16,\) in the source"):
        experiment.setup(cfg_of(f"init_from={source['fedavg']}", "algorithm=fedavg", "backbone_kwargs.hidden=8"))
    # the rules can leave the mismatched layers to their fresh initialisation
    with pytest.warns(UserWarning, match="training images"):
        prepared = experiment.setup(cfg_of(f"init_from={source['fedavg']}", "algorithm=fedavg",
                                           "backbone_kwargs.hidden=8", 'init_params=["params/backbone/conv"]'))
    assert sorted(prepared.init[1]) == ["params/backbone/conv1/bias", "params/backbone/conv1/kernel",
                                        "params/backbone/conv2/bias", "params/backbone/conv2/kernel"]
    # a FedPer source keeps its head personal: the server has none to give
    with pytest.warns(UserWarning, match="training images"), \
            pytest.raises(ConfigError, match="params/head/fc/bias: the source has no shared parameter"):
        experiment.setup(cfg_of(f"init_from={source['fedper']}", "algorithm=fedavg"))
    with pytest.raises(ConfigError, match="neither a run directory"):
        experiment.setup(cfg_of(f"init_from={source['fedavg'] / 'metrics.jsonl'}"))


def test_a_source_trained_on_this_runs_test_images_is_refused(source):
    """With validation_fraction the evaluation split is carved from the training samples the
    source trained on: refused (and a run on other data is not)."""
    with pytest.raises(ConfigError, match=r"was trained on \d+ of this run's test images"):
        experiment.setup(cfg_of(f"init_from={source['fedavg']}", "algorithm=fedavg", "validation_fraction=0.5"))
    prepared = experiment.setup(cfg_of(f"init_from={source['fedavg']}", "algorithm=fedavg", "data_seed=1"))
    assert prepared.init is not None  # other synthetic images: no overlap, no warning
    x = np.arange(4 * 2 * 2 * 1, dtype=np.uint8).reshape(4, 2, 2, 1)
    finetune.check_disjoint(x[:2], np.zeros((0, 2, 2, 1), np.uint8), x[2:], where="w")  # disjoint: fine
    with pytest.raises(ConfigError, match="trained on 1 of this run's test images"):
        finetune.check_disjoint(x[:3], x[:0], x[2:], where="w")


def test_trainable_freezes_every_other_parameter_on_server_and_clients():
    """FedPer with trainable = the head: after two rounds every backbone parameter is still its
    initial value on the server (up to the rounding of the server's weighted mean of equal
    uploads, ~1 ulp), the head moved on every client."""
    cfg = cfg_of("algorithm=fedper", 'trainable=["params/head/"]')
    prepared = experiment.setup(cfg)
    init = jax.jit(lambda k: experiment.federated.init(prepared.algorithm, k, prepared.fed.train))(
        jax.random.key(cfg["seed"]))
    summary = experiment.run(prepared, None, progress=False, log=lambda _: None)
    state = summary["state"]
    before, after = flat(init.server.params), flat(state.server.params)
    assert before and all(k.startswith("params/backbone/") for k in before)
    for k in before:
        np.testing.assert_allclose(after[k], before[k], rtol=1e-6, atol=1e-7)
    head_before, head_after = flat(init.clients.personal), flat(state.clients.personal)
    assert all(np.max(np.abs(head_after[k] - head_before[k])) > 1e-3 for k in head_before)
    with pytest.raises(ConfigError, match="trainable pattern 'params/nothing' matches no parameter"):
        experiment.setup(cfg_of('trainable=["params/nothing"]'))


@pytest.mark.parametrize("override, message", [
    ('init_params=["params/backbone/"]', "init_params selects what init_from loads: set init_from too"),
    ("trainable=params/head", "trainable must be None or a non-empty list of path patterns"),
    ('trainable=["params/(["]', "bad regular expression"),
    ("init_from=3", "init_from must be a path"),
])
def test_bad_finetuning_settings(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_lib.validate(cfg_of(override))


@pytest.mark.optimized  # trains many steps: tests/conftest.py
def test_a_sweep_of_fine_tuning_runs_equals_the_runs_one_by_one(source):
    """Seeds of a fine-tuning run as one program: each run starts from the loaded parameters
    (its head, not in the source, from its own seed) and ends where the single run ends."""
    cfg = cfg_of("algorithm=fedper", f"init_from={source['fedavg']}", 'init_params=["params/backbone/"]')
    with pytest.warns(UserWarning, match="training images"):
        out = sweep.run_sweep(cfg, [{"seed": 0}, {"seed": 1}], log=lambda _: None)
    assert len({o["params_sha256"] for o in out}) == 2
    for seed, o in zip((0, 1), out):
        with pytest.warns(UserWarning, match="training images"):
            single = experiment.run(dict(cfg, seed=seed, data_seed=0), None, progress=False, log=lambda _: None)
        assert o["last"]["accuracy"] == pytest.approx(single["last"]["accuracy"], abs=1e-9)
        a, b = flat(o["state"].server.params), flat(single["state"].server.params)
        for k in a:
            np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_inert_keys_stay_out_of_fingerprints():
    """A checkpoint or a finished reproduction cell written before the fine-tuning keys existed
    keeps its fingerprint: keys at their inert value are left out."""
    from omnifm_jax import checkpoint as ck
    from omnifm_jax.reproduce.plan import config_sha

    cfg = cfg_of()
    old = {k: v for k, v in cfg.items() if k not in config_lib.INERT}
    assert ck.config_differences(old, cfg) == [] and config_sha(old) == config_sha(cfg)
    assert ck.config_differences(old, dict(cfg, trainable=["params/head/"])) == ["trainable"]
    assert config_sha(dict(cfg, init_from="x")) != config_sha(cfg)


# ----------------------------------------------------------------------------- LoRA

def test_lora_dense_equals_the_low_rank_formula_in_float64():
    """A LoRA-adapted dense layer computes x W + b + (alpha / r) x A B (NumPy float64 on fresh
    random parameters); at initialisation (B = 0) it is the plain layer; other layers and
    every path are unchanged."""
    import flax.linen as nn

    from omnifm_jax.models.lora import LoRA

    class Two(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3, name="out")(nn.relu(nn.Dense(5, name="fc")(x)))

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6)).astype(np.float32)
    plain, adapted = Two(), LoRA(inner=Two(), targets=("fc",), rank=2, alpha=8.0)
    v = adapted.init(jax.random.key(0), x)
    assert set(v["params"]["fc"]) == {"kernel", "bias", "lora_a", "lora_b"} and set(v["params"]["out"]) == {
        "kernel", "bias"}
    base = {"params": {"fc": {k: v["params"]["fc"][k] for k in ("kernel", "bias")}, "out": v["params"]["out"]}}
    np.testing.assert_allclose(np.asarray(adapted.apply(v, x)), np.asarray(plain.apply(base, x)), rtol=1e-6)
    p = jax.tree_util.tree_map(lambda a: np.asarray(rng.normal(size=a.shape), np.float32), v["params"])
    got = np.asarray(adapted.apply({"params": p}, x), np.float64)
    f = {k: np.asarray(a, np.float64) for k, a in p["fc"].items()}
    h = np.maximum(x @ f["kernel"] + f["bias"] + 8.0 / 2 * (x @ f["lora_a"]) @ f["lora_b"], 0)
    want = h @ np.asarray(p["out"]["kernel"], np.float64) + np.asarray(p["out"]["bias"], np.float64)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_lora_fine_tuning_regime_trains_only_the_adapters_and_head(source):
    """The F-C-like regime as a config: pretrained backbone (init_from), adapters on fc1, only
    the adapters and the head train."""
    cfg = cfg_of("algorithm=fedper", f"init_from={source['fedavg']}", 'init_params=["conv", "fc1/(kernel|bias)"]',
                 'lora={"targets": ["fc1"], "rank": 4}', 'trainable=["lora_", "params/head/"]')
    with pytest.warns(UserWarning, match="training images"):
        prepared = experiment.setup(cfg)
    src = finetune.load_source_params(source["fedavg"])
    summary = experiment.run(prepared, None, progress=False, log=lambda _: None)
    after = flat(summary["state"].server.params)
    for k in ("params/backbone/conv1/kernel", "params/backbone/fc1/kernel"):
        np.testing.assert_allclose(after[k], src.params[k], rtol=1e-6, atol=1e-7)  # loaded, frozen
    assert np.max(np.abs(after["params/backbone/fc1/lora_b"])) > 0  # the adapter trained (from zeros)
    with pytest.raises(ConfigError, match="lora target 'conv9' matches no dense layer"):
        experiment.setup(cfg_of('lora={"targets": ["conv9"]}'))


@pytest.mark.parametrize("value, message", [
    ({"targets": []}, "lora.targets must be a non-empty list"),
    ({"targets": ["fc1"], "rank": 0}, "lora.rank must be an integer >= 1"),
    ({"targets": ["fc1"], "ranks": 2}, "lora: unknown option(s) ['ranks']"),
    ("fc1", "lora must be None or a dict"),
])
def test_bad_lora_settings(value, message):
    cfg = cfg_of()
    cfg["lora"] = value
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_lib.validate(cfg)


def test_a_fine_tuning_run_resumes_without_its_source(source, tmp_path):
    """Resume continues from the run's own checkpoint: the source may be gone by then."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(source["fedavg"], src)
    out = tmp_path / "ft"
    with pytest.warns(UserWarning, match="training images"):
        experiment.run(cfg_of("algorithm=fedper", f"init_from={src}", "rounds=1", "checkpoint_every=1"), out,
                       progress=False, log=lambda _: None)
    shutil.rmtree(src)
    summary = experiment.run(cfg_of("algorithm=fedper", f"init_from={src}", "rounds=2", "checkpoint_every=1"), out,
                             progress=False, log=lambda _: None, resume=True)
    assert summary["rounds"] == 2
    with pytest.raises(ConfigError, match="init_from"):   # a fresh run still needs it
        experiment.setup(cfg_of("algorithm=fedper", f"init_from={src}"))
