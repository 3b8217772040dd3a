"""Runs on a leading run axis (omnifm_jax.sweep): one program for several seeds or
shape-free hyper-parameter values, equal to the runs done one by one."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from omnifm_jax import config as config_lib
from omnifm_jax import experiment, sweep
from omnifm_jax.checks import ConfigError

TINY = dict(image_size=16, samples_per_class_per_modality=4, num_classes=3, num_modalities=2, channels=1, min_size=4)


def tiny_cfg(**overrides):
    cfg = config_lib.load_config()
    cfg.update(algorithm="fedprox", algorithm_kwargs={"mu": 0.01}, dataset="synthetic", dataset_kwargs=dict(TINY),
               num_clients=3, rounds=2, backbone_kwargs={"hidden": 16}, batch_size=8, checkpoint_every=0,
               eval_train_loss=False)
    cfg.update(overrides)
    return cfg


def _close(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("run_axis", ["vmap", "map"])
def test_sweep_equals_runs_one_by_one(run_axis):
    """Seeds, lr and FedProx's mu vary in ONE program, batched (vmap) or stepped through
    (map); each run's metrics and final state equal experiment.run of its config on the
    same data split."""
    cfg = tiny_cfg()
    runs = [{"seed": 0, "lr": 0.05, "algorithm_kwargs.mu": 0.0},
            {"seed": 1, "lr": 0.2, "algorithm_kwargs.mu": 0.5}]
    out = sweep.run_sweep(cfg, runs, log=lambda s: None, run_axis=run_axis)
    assert [o["runs_in_program"] for o in out] == [2, 2]
    for i, run in enumerate(runs):
        c = dict(tiny_cfg(data_seed=0, seed=run["seed"], lr=run["lr"]),
                 algorithm_kwargs={"mu": run["algorithm_kwargs.mu"]})
        single = experiment.run(c, progress=False, log=lambda s: None)
        assert set(out[i]) - {"runs_in_program"} == set(single)   # one summary builder (experiment.run_summary)
        assert out[i]["learned"] is True and out[i]["accepted_updates_total"] == single["accepted_updates_total"]
        assert out[i]["config"]["seed"] == run["seed"] and out[i]["config"]["data_seed"] == 0
        assert [h["round"] for h in out[i]["history"]] == [0, 1, 2]
        for which in ("best", "last"):
            assert out[i][which]["round"] == single[which]["round"]
            assert out[i][which]["accuracy"] == pytest.approx(single[which]["accuracy"], abs=1e-9)
            assert out[i][which]["test_loss"] == pytest.approx(single[which]["test_loss"], rel=1e-4)
        _close(out[i]["state"].server.params, single["state"].server.params)
        _close(out[i]["state"].clients, single["state"].clients)
    # the runs really differ: a sweep that ran one configuration three times would pass the above
    assert len({o["params_sha256"] for o in out}) == 2


def test_the_run_axis_is_chosen_by_backend_and_a_bad_one_is_refused_before_any_work():
    assert sweep.resolve_run_axis("auto") == ("map" if jax.default_backend() == "cpu" else "vmap")
    assert [sweep.resolve_run_axis(a) for a in ("vmap", "map")] == ["vmap", "map"]
    with pytest.raises(ConfigError, match=r"run_axis='pmap'; choose from \('auto', 'vmap', 'map'\)"):
        sweep.run_sweep(tiny_cfg(), [{"seed": 0}], run_axis="pmap")


def test_over_runs_maps_and_vmaps_alike_and_passes_shared_arguments_whole():
    """Both run axes give fn of each run's slice, with the shared argument unbatched, on
    fresh random inputs against a NumPy loop."""
    rng = np.random.default_rng()
    a, b = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=(3,)).astype(np.float32)
    shared = rng.normal(size=(4, 2)).astype(np.float32)
    fn = lambda x, s, w: (x * s) @ w  # noqa: E731
    ref = np.stack([(a[i].astype(np.float64) * b[i]) @ shared for i in range(3)])
    for axis in ("vmap", "map"):
        got = jax.jit(sweep.over_runs(fn, axis, shared=1))(a, b, shared)
        np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=1e-5, atol=1e-6)


def test_keys_that_change_the_program_are_refused_before_any_work():
    cfg = tiny_cfg(algorithm="omnifm", algorithm_kwargs={})
    with pytest.raises(ConfigError, match=r"run 1: \['algorithm_kwargs.top_k'\] cannot vary inside one program"):
        sweep.run_sweep(cfg, [{"seed": 0}, {"algorithm_kwargs.top_k": 3}])
    with pytest.raises(ConfigError, match=r"\['participation'\] cannot vary"):
        sweep.run_sweep(cfg, [{"participation": 0.5}])
    with pytest.raises(ConfigError, match="at least one run"):
        sweep.run_sweep(cfg, [])
    assert "algorithm_kwargs.lambda_align" in sweep.sweepable_keys("omnifm")
    assert "algorithm_kwargs.top_k" not in sweep.sweepable_keys("omnifm")


def test_group_runs_splits_programs_by_shape():
    base = tiny_cfg(data_seed=0)
    cfgs = [dict(base, seed=s) for s in (0, 1, 2)] + [dict(base, participation=0.5)] + \
        [dict(base, algorithm="fedavg", algorithm_kwargs={})] + [dict(base, seed=5, data_seed=None)]
    groups = sweep.group_runs(cfgs)
    assert [len(runs) for _, runs in groups] == [3, 1, 1, 1]  # participation differs; FedAvg; its own split
    assert [r["seed"] for r in groups[0][1]] == [0, 1, 2]
    assert groups[1][0]["participation"] == 0.5 and groups[3][0]["data_seed"] == 5
    # a config that leaves mu unset runs with mu's default, not with the value a group-mate sets
    unset = dict(base, algorithm_kwargs={})
    (g, runs), = sweep.group_runs([dict(base, algorithm_kwargs={"mu": 0.5}), unset])
    assert [r["algorithm_kwargs.mu"] for r in runs] == [0.5, 0.0]
