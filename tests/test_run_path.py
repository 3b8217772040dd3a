"""One run path: ``experiment.setup`` is what the CLI, sweeps, reproduce and scripts build a
run with; ``config.set_dotted`` is the one dotted-key setter; a task declares the data it
accepts, its options and its metrics; options that moved into ``task_kwargs`` are refused at
their old place, naming the new key."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from omnifm_jax import cli, experiment, reproduce, sweep, tasks
from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError
from omnifm_jax.data.federation import ServerData
from omnifm_jax.registry import TASKS

TINY = ["rounds=1", "num_clients=3", "batch_size=8", "checkpoint_every=0", "eval_train_loss=False",
        "dataset_kwargs.samples_per_class_per_modality=3", "dataset_kwargs.image_size=16", "backbone_kwargs.hidden=16",
        "algorithm=fedavg"]


def tiny_cfg(*overrides):
    return config_lib.apply_overrides(config_lib.load_config("default"), TINY + list(overrides))


# ----------------------------------------------------------------------------- set_dotted

def test_set_dotted_sets_nested_keys_on_a_copy():
    cfg = config_lib.load_config("default")
    out = config_lib.set_dotted(cfg, "task_kwargs.regions.et", [4])
    assert out["task_kwargs"] == {"regions": {"et": [4]}}          # intermediate dicts created
    assert cfg["task_kwargs"] == {}                                # the input is left alone
    out2 = config_lib.set_dotted(out, "task_kwargs.regions.tc", [1, 4])
    assert out2["task_kwargs"]["regions"] == {"et": [4], "tc": [1, 4]} and out["task_kwargs"]["regions"] == {"et": [4]}
    assert config_lib.set_dotted(cfg, "lr", 0.5)["lr"] == 0.5 and cfg["lr"] != 0.5
    assert config_lib.set_dotted(cfg, "algorithm_kwargs.mu", 0.1)["algorithm_kwargs"] == {"mu": 0.1}
    assert config_lib.get_dotted(out2, "task_kwargs.regions.tc") == [1, 4]
    assert config_lib.get_dotted(out2, "task_kwargs.nothing.here", "absent") == "absent"


def test_set_dotted_refuses_unknown_moved_and_non_dict_keys():
    cfg = config_lib.load_config("default")
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'; known keys: \["):
        config_lib.set_dotted(cfg, "lrr", 1)
    with pytest.raises(ConfigError, match=r"unknown config key 'nope'"):
        config_lib.set_dotted(cfg, "nope.deeper", 1)
    with pytest.raises(ConfigError, match=r"'seed' is not a dict; cannot set 'seed.x'"):
        config_lib.set_dotted(cfg, "seed.x", 1)
    with pytest.raises(ConfigError, match=r"'algorithm_kwargs.mu' is not a dict; cannot set 'algorithm_kwargs.mu.x'"):
        config_lib.set_dotted(config_lib.set_dotted(cfg, "algorithm_kwargs.mu", 0.1), "algorithm_kwargs.mu.x", 1)
    with pytest.raises(ConfigError, match=r"^scale moved to task_kwargs.scale$"):
        config_lib.set_dotted(cfg, "scale", 4)


def test_overrides_sweeps_and_tables_set_keys_through_set_dotted(monkeypatch):
    calls = []
    real = config_lib.set_dotted

    def spy(cfg, key, value):
        calls.append(key)
        return real(cfg, key, value)

    monkeypatch.setattr(config_lib, "set_dotted", spy)
    config_lib.apply_overrides(config_lib.load_config("default"), ["task_kwargs.head_pool=attention"])
    assert calls == ["task_kwargs.head_pool"]
    cfgs, _ = sweep._run_configs(tiny_cfg("algorithm=fedprox"), [{"algorithm_kwargs.mu": 0.5}])
    assert calls[-1] == "algorithm_kwargs.mu" and cfgs[0]["algorithm_kwargs"]["mu"] == 0.5
    calls.clear()
    reproduce.build_plan("table8", scale="tiny", seeds=(0, 1), rows=["omnifm", "no_spalign"], cols=["CLS"])
    assert "seed" in calls or "algorithm_kwargs.lambda_align" in calls   # programs mapped back with it


# ----------------------------------------------------------------------------- moved keys

@pytest.mark.parametrize("key, value", [("scale", 4), ("head_pool", "attention")])
def test_former_top_level_task_options_are_refused_naming_the_new_key(key, value, tmp_path, capsys):
    message = f"{key} moved to task_kwargs.{key}"
    cfg = config_lib.load_config("default")
    with pytest.raises(ConfigError, match=f"^{message}$"):
        config_lib.apply_overrides(cfg, [f"{key}={value}"])
    with pytest.raises(ConfigError, match=f"^{message}$"):
        config_lib.validate(dict(cfg, **{key: value}))
    path = tmp_path / "old.py"
    path.write_text(f"def get_config():\n    return {{'task': 'super_resolution', {key!r}: {value!r}}}\n")
    with pytest.raises(ConfigError, match=f"old.py: {message}$"):
        config_lib.load_config(str(path))
    out = tmp_path / "never"
    assert cli.main(["train", "--quiet", "--out", str(out), "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert err == f"omnifm: error: {message}\n" and not out.exists()


def test_task_options_live_in_task_kwargs_and_are_checked_by_the_task():
    sr = config_lib.load_config("sr_synthetic")
    assert sr["task_kwargs"]["scale"] == 2 and "scale" not in sr and "head_pool" not in config_lib.DEFAULTS
    with pytest.raises(ConfigError, match=r"task_kwargs.scale must be 2, 4 or 8, got 3"):
        config_lib.validate(config_lib.apply_overrides(sr, ["task_kwargs.scale=3"]))
    with pytest.raises(ConfigError, match=r"task_kwargs.head_pool must be one of \('mean', 'attention'\), got 'max'"):
        config_lib.validate(config_lib.apply_overrides(config_lib.load_config(), ["task_kwargs.head_pool=max"]))
    with pytest.raises(ConfigError, match=r"task 'classification': unknown task_kwargs \['scale'\]; it accepts: "
                                          r"\['head_pool'\]"):
        config_lib.validate(config_lib.apply_overrides(config_lib.load_config("default"), ["task_kwargs.scale=2"]))
    # the task reads its own option: the attention head
    cfg = tiny_cfg("task_kwargs.head_pool=attention")
    assert experiment.setup(cfg).task.make_head().pool == "attention"


# ----------------------------------------------------------------------------- the one run path

class _Sentinel(ConfigError):
    pass


def _refuse(*args, **kwargs):
    raise _Sentinel("setup was called")


def test_cli_run_sweep_and_reproduce_all_go_through_setup(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(experiment, "setup", _refuse)
    cfg = tiny_cfg()
    with pytest.raises(_Sentinel):
        experiment.run(cfg, None, progress=False, log=lambda s: None)
    out = tmp_path / "cli"
    assert cli.main(["train", "--quiet", "--out", str(out)] + sum((["--set", o] for o in TINY), [])) == 2
    assert "setup was called" in capsys.readouterr().err
    with pytest.raises(_Sentinel):
        sweep.run_sweep(cfg, [{"seed": 0}, {"seed": 1}], log=lambda s: None)
    plan = reproduce.build_plan("table8", scale="tiny", seeds=(0,), rows=["omnifm"], cols=["CLS"])
    with pytest.raises(ConfigError, match="setup was called"):
        reproduce.check_data(plan)
    assert cli.main(["reproduce", "table8", "--scale", "tiny", "--only", "omnifm", "--cols", "CLS", "--seeds", "0",
                     "--dry-run"]) == 2
    assert "setup was called" in capsys.readouterr().err


def test_setup_builds_what_a_run_needs():
    s = experiment.setup(tiny_cfg())
    assert isinstance(s, experiment.Setup) and s.cfg["algorithm"] == "fedavg"
    assert s.fed.num_clients == 3 and s.task.name == "classification" and s.algorithm.name == "fedavg"
    assert s.fed.server is None
    summary = experiment.run(s, None, progress=False, log=lambda _: None)   # a Setup runs as it is
    assert summary["rounds"] == 1 and summary["config"] is s.cfg


def test_an_algorithm_without_server_is_unaffected_by_a_server_split(monkeypatch):
    """A federation that carries a server split: FedAvg's factory (no ``server`` argument)
    gets exactly the arguments it gets without one."""
    from omnifm_jax import algorithms

    cfg = tiny_cfg()
    fed = experiment.load_data(cfg)
    with_server = dataclasses.replace(fed, server=ServerData(fed.train.x[:2], fed.train.y[:2]))
    seen = []
    real = algorithms.unchecked

    def spy(name):
        factory = real(name)

        def recording(**kw):
            seen.append(sorted(kw))
            return factory(**kw)
        recording.__wrapped__ = factory   # the signature ``build_algorithm`` inspects
        return recording

    monkeypatch.setattr(algorithms, "unchecked", spy)
    a = experiment.setup(cfg, fed=fed).algorithm
    b = experiment.setup(cfg, fed=with_server).algorithm
    assert seen[0] == seen[1] and "server" not in seen[0] and a.name == b.name == "fedavg"
    assert not experiment._takes_server("fedavg") and experiment._takes_server("fedmepd")


def test_a_server_split_must_fit_the_clients():
    cfg = tiny_cfg()
    fed = experiment.load_data(cfg)
    bad = dataclasses.replace(fed, server=ServerData(fed.train.x[:2, :8], fed.train.y[:2]))
    with pytest.raises(ValueError, match=r"server.x must be uint8\[Ns, 16, 16, 3\] like the clients' images"):
        experiment.setup(cfg, fed=bad)


# ----------------------------------------------------------------------------- tasks accept data

def test_a_segmentation_task_given_a_classification_federation_is_one_clear_config_error():
    cfg = dict(tiny_cfg("task=segmentation"), backbone="unet",
               backbone_kwargs={"channels": (4, 8), "strides": (2,), "num_res_units": 0})
    with pytest.raises(ConfigError) as info:
        experiment.setup(cfg)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith("dataset 'synthetic' is not a segmentation set: its targets are labels (the data of "
                          "task=classification); task=segmentation needs per-pixel class masks")
    assert msg.endswith("; use task=classification")


def test_every_registered_task_declares_its_data_options_and_metrics():
    names = tasks.available()
    assert set(names) == {"classification", "segmentation", "super_resolution", "fusion", "vqa"}
    kinds = [k for n in names for k in tasks.declaration(n).targets]
    assert len(kinds) == len(set(kinds))                      # one task per kind of targets
    for name in names:
        info = tasks.declaration(name)
        assert info.name == name and info.needs
        assert info.primary_metric in [m.key for m in info.metrics]
        assert tasks.metric_spec(name, info.primary_metric).higher_is_better
        assert tasks.check_options(info, {}) == info.options  # the defaults pass the task's own check
        assert name in tasks.__all__ and TASKS.get(name).__doc__
    assert callable(tasks.fusion.fusion) and tasks.fusion.INFO is tasks.declaration("fusion")
    assert not tasks.metric_spec("fusion", "l1").higher_is_better


def test_reproduce_metrics_come_from_the_tasks():
    where = {"acc": "classification", "f1": "classification", "psnr": "super_resolution", "ssim": "super_resolution",
             "dice": "segmentation", "iou": "segmentation", "vif": "fusion", "fssim": "fusion", "l1": "fusion"}
    assert set(reproduce.METRICS) == set(where)
    for name, metric in reproduce.METRICS.items():
        spec = tasks.metric_spec(where[name], metric.key)
        assert metric.label.startswith(spec.label) and metric.higher_is_better == spec.higher_is_better
    assert reproduce.METRICS["acc"].label == "Acc (%)" and reproduce.METRICS["l1"].higher_is_better is False


def test_the_best_round_follows_the_tasks_direction():
    lower = tasks.Task("t", None, None, None, None, None, None, None, "loss",
                       metrics=(tasks.MetricSpec("loss", "Loss", higher_is_better=False),))
    history = [{"round": 0, "loss": 2.0}, {"round": 1, "loss": 1.0}, {"round": 2, "loss": 3.0}]
    assert experiment.best_line(history, lower)["round"] == 1
    assert experiment.best_line(history, lower._replace(metrics=()))["round"] == 2
    assert np.isclose(experiment.best_line(history, lower)["loss"], 1.0)
