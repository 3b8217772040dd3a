"""Every bad input is refused before any work, with an error naming the problem: configs
(unknown keys, impossible values), data (shape, dtype, NaN, label range, empty client),
and checkpoints that do not fit the run being resumed.

docs/robustness.md's table "Bad input and the error it gives" is generated from CONFIG_CASES and
DATA_CASES below (``omnifm docs`` runs each case and prints the error it raises).
"""
from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax import checkpoint as ck
from omnifm_jax import cli, experiment, federated
from omnifm_jax import config as config_lib
from omnifm_jax.config import ConfigError
from omnifm_jax.data.registry import load_federation

# ----------------------------------------------------------------------------- configs

CONFIG_CASES = [
    # (what is wrong, overrides, error message pattern)
    ("unknown key", {"learning_rate": 0.1}, r"unknown key\(s\) \['learning_rate'\]"),
    ("low-pass ratio 0", {"algorithm_kwargs": {"low_pass_ratio": 0}},
     r"algorithm 'omnifm': low_pass_ratio must be a number in \(0, 1\], got 0"),
    ("low-pass ratio > 1", {"algorithm_kwargs": {"low_pass_ratio": 1.5}}, r"low_pass_ratio must be a number in \(0, 1\]"),
    ("top-k larger than the bank", {"algorithm_kwargs": {"top_k": 9, "bank_capacity": 8}},
     r"algorithm 'omnifm': top_k=9 is larger than bank_capacity=8"),
    ("more participants than bank slots", {"num_clients": 20, "algorithm_kwargs": {"bank_capacity": 16}},
     r"20 participants per round upload more embeddings than bank_capacity=16"),
    ("unknown algorithm hyper-parameter", {"algorithm_kwargs": {"topk": 3}},
     r"algorithm 'omnifm' takes no hyper-parameter\(s\) \['topk'\]; its hyper-parameters \(defaults\): "
     r"lambda_align=0.1, top_k=2, "),
    ("hyper-parameter of another algorithm", {"algorithm": "fedavg", "algorithm_kwargs": {"top_k": 3}},
     r"algorithm 'fedavg' takes no hyper-parameter\(s\) \['top_k'\]; its hyper-parameters \(defaults\): none"),
    ("algorithm_kwargs not a dict", {"algorithm_kwargs": ["top_k", 3]},
     r"dataset_kwargs, backbone_kwargs, algorithm_kwargs and task_kwargs must be dicts"),
    ("participation 0", {"participation": 0.0}, r"participation must be a number in \(0, 1\], got 0.0"),
    ("unknown spectrum normalisation", {"algorithm_kwargs": {"spectrum_norm": "layer"}},
     r"algorithm 'omnifm': spectrum_norm must be one of \('none', 'batch'\), got 'layer'"),
    ("unknown ECA keys", {"algorithm_kwargs": {"eca_keys": "raw"}},
     r"eca_keys must be one of \('unit', 'scaled', 'centered'\), got 'raw'"),
    ("unknown ECA temperature", {"algorithm_kwargs": {"eca_temperature": "hot"}},
     r"eca_temperature must be one of \('fixed', 'learned'\), got 'hot'"),
    ("negative uniformity weight", {"algorithm_kwargs": {"lambda_uniform": -1.0}},
     r"lambda_uniform must be a finite number >= 0, got -1.0"),
    ("negative FedProx mu", {"algorithm": "fedprox", "algorithm_kwargs": {"mu": -1}},
     r"algorithm 'fedprox': mu must be a finite number >= 0, got -1"),
    ("diagnostics -1", {"diagnostics": -1}, r"diagnostics must be 'auto' or an integer >= 0"),
    ("validation fraction 1", {"validation_fraction": 1.0}, r"validation_fraction must be a number in \(0, 1\), got 1.0"),
    ("client_dropout 1", {"client_dropout": 1.0}, r"client_dropout must be a number in \[0, 1\), got 1.0"),
    ("negative client_dropout", {"client_dropout": -0.1}, r"client_dropout must be a number in \[0, 1\)"),
    ("negative checkpoint_every", {"checkpoint_every": -1}, r"checkpoint_every must be an integer >= 0, got -1"),
    ("checkpoint_keep 0", {"checkpoint_keep": 0}, r"checkpoint_keep must be an integer >= 1, got 0"),
    ("zero clients", {"num_clients": 0}, r"num_clients must be an integer >= 1, got 0"),
    ("unknown weight init", {"weight_init": "torch"},
     r"weight_init must be one of \('auto', 'flax', 'pytorch'\), got 'torch'"),
    ("rounds as text", {"rounds": "ten"}, r"rounds must be an integer >= 1, got 'ten'"),
    ("fractional batch size", {"batch_size": 8.5}, r"batch_size must be an integer >= 1, got 8.5"),
    ("negative seed", {"seed": -1}, r"seed must be an integer >= 0, got -1"),
    ("lr 0", {"lr": 0}, r"lr must be a finite number > 0, got 0"),
    ("lr as text", {"lr": "fast"}, r"lr must be a finite number > 0, got 'fast'"),
    ("lr NaN", {"lr": float("nan")}, r"lr must be a finite number > 0, got nan"),
    ("momentum 1", {"momentum": 1.0}, r"momentum must be a number in \[0, 1\), got 1.0"),
    ("rho 0", {"algorithm_kwargs": {"rho": 0.0}}, r"rho must be a finite number > 0, got 0.0"),
    ("negative lambda", {"algorithm_kwargs": {"lambda_align": -0.1}}, r"lambda_align must be a finite number >= 0, got -0.1"),
    ("attention heads do not divide", {"algorithm_kwargs": {"attn_dim": 10, "num_heads": 3}},
     r"attn_dim=10 is not divisible by num_heads=3"),
    ("unknown algorithm", {"algorithm": "fedsgd"}, r"algorithm 'fedsgd' unknown; available: \["),
    ("unknown task", {"task": "captioning"}, r"task must be one of \('classification', .*'vqa'\), got 'captioning'"),
    ("unknown backbone", {"backbone": "vit"}, r"backbone must be one of \('cnn', 'edsr', 'resnet18'.*\), got 'vit'"),
    ("unknown optimizer", {"optimizer": "rmsprop"}, r"optimizer must be one of \('sgd', 'adam'\), got 'rmsprop'"),
    ("unknown sharing mode", {"algorithm_kwargs": {"sharing": "everything"}},
     r"sharing must be one of \['bank_only', 'fedper', 'full'\]"),
    ("flag as text", {"algorithm_kwargs": {"use_gskr": "yes"}}, r"use_gskr must be True or False, got 'yes'"),
    ("SR scale 3", {"task": "super_resolution", "task_kwargs": {"scale": 3}}, r"task_kwargs.scale must be 2, 4 or 8, got 3"),
    ("scale at the top level", {"scale": 4}, r"scale moved to task_kwargs.scale"),
    ("former key dropout", {"dropout": 0.3}, r"dropout was renamed to client_dropout"),
    ("former hyper-parameter name (MOON's mu)", {"algorithm": "moon", "algorithm_kwargs": {"mu": 1.0}},
     r"algorithm 'moon': hyper-parameter 'mu' was renamed to 'contrastive_weight'"),
    ("former data set name", {"dataset": "fusion_harvard"}, r"dataset 'fusion_harvard' was renamed to 'harvard_fusion'"),
    ("client_chunk 0", {"client_chunk": 0}, r"client_chunk must be 'auto', None or an integer >= 1, got 0"),
    ("participants per round 0", {"num_clients": 4, "participation": 0.2},
     r"participation=0.2 of num_clients=4 selects int\(4 \* 0.2\) = 0 clients per round"),
    ("unknown input scaling", {"input_scaling": "zscore"}, r"input_scaling must be one of \('auto', 'pflib', 'unit'\)"),
    ("unknown head pool", {"task_kwargs": {"head_pool": "max"}},
     r"task_kwargs.head_pool must be one of \('mean', 'attention'\), got 'max'"),
    ("hit decay > 1", {"algorithm_kwargs": {"hit_decay": 1.5}}, r"hit_decay must be a number in \[0, 1\], got 1.5"),
    ("protocol flag as text", {"drop_last": "yes"}, r"drop_last must be True or False, got 'yes'"),
    ("algorithm that does not run the task", {"algorithm": "gpfl", "task": "super_resolution"},
     r"algorithm 'gpfl' does not run task 'super_resolution'; algorithms that do: \['ditto', "),
    ("task_kwargs not a dict", {"task_kwargs": "dice"}, r"task_kwargs must be dicts"),
    ("dataset_kwargs not a dict", {"dataset_kwargs": ["alpha", 0.5]}, r"dataset_kwargs, backbone_kwargs, algorithm_kwargs and task_kwargs must be dicts"),
]


@pytest.mark.parametrize("what,overrides,match", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_value(what, overrides, match):
    cfg = dict(config_lib.load_config(), **overrides)
    with pytest.raises(ConfigError, match=match):
        config_lib.validate(cfg)


def test_missing_key():
    cfg = config_lib.load_config()
    del cfg["rounds"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) \['rounds'\]"):
        config_lib.validate(cfg)


def test_bad_overrides_and_config_files(tmp_path):
    base = config_lib.load_config()
    with pytest.raises(ConfigError, match=r"unknown config key 'lrr'"):
        config_lib.apply_overrides(base, ["lrr=0.1"])
    with pytest.raises(ConfigError, match=r"override 'rounds' is not key=value"):
        config_lib.apply_overrides(base, ["rounds"])
    with pytest.raises(ConfigError, match=r"'seed' is not a dict; cannot set 'seed.x'"):
        config_lib.apply_overrides(base, ["seed.x=1"])
    path = tmp_path / "typo.py"
    path.write_text("def get_config():\n    return {'rouns': 3}\n")
    with pytest.raises(ConfigError, match=r"typo.py: unknown key\(s\) \['rouns'\]"):
        config_lib.load_config(str(path))
    with pytest.raises(ConfigError, match=r"config 'no_such_config' not found"):
        config_lib.load_config("no_such_config")


def test_bad_backbone_kwargs():
    cfg = dict(config_lib.load_config(), backbone_kwargs={"width": 3})
    with pytest.raises(ConfigError, match=r"backbone_kwargs \{'width': 3\} do not fit backbone 'cnn'"):
        experiment.build_backbone(cfg)


# ----------------------------------------------------------------------------- data

TINY = dict(image_size=16, samples_per_class_per_modality=4, num_classes=3, num_modalities=2, channels=1, min_size=4)


def tiny_cfg(**overrides):
    cfg = config_lib.apply_overrides(config_lib.load_config(), [])
    cfg.update(algorithm="fedavg", dataset="synthetic", dataset_kwargs=dict(TINY), num_clients=3, rounds=2,
               backbone_kwargs={"hidden": 16}, batch_size=8, checkpoint_every=1)
    cfg.update(overrides)
    return cfg


@pytest.fixture(scope="module")
def fed():
    return load_federation("synthetic", num_clients=3, seed=0, **TINY)


def replace_split(fed, split="train", **arrays):
    return dataclasses.replace(fed, **{split: getattr(fed, split)._replace(**arrays)})


def _float_images_with_nan(fed):
    x = fed.train.x.astype(np.float32)
    x[0, 0, 0, 0] = np.nan
    return replace_split(fed, x=x)


def _labels_out_of_range(fed):
    y = fed.train.y.copy()
    y[int(fed.train.offsets[1])] = 7
    return replace_split(fed, y=y)


def _negative_label(fed):
    y = fed.train.y.copy()
    y[0] = -3
    return replace_split(fed, y=y)


def _without_rows_of(split, k):
    """``split`` with client k's rows removed and its count set to 0 (a valid ragged layout)."""
    keep = np.ones(split.x.shape[0], bool)
    lo = int(split.offsets[k])
    keep[lo:lo + int(split.n[k])] = False
    n = split.n.copy()
    n[k] = 0
    offsets = np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int32)
    return split._replace(x=split.x[keep], y=split.y[keep], modality=split.modality[keep], n=n, offsets=offsets)


def _empty_client(fed):
    return dataclasses.replace(fed, train=_without_rows_of(fed.train, 1))


def _n_too_large(fed):
    n = fed.train.n.copy()
    n[0] += 1
    return replace_split(fed, n=n)


def _offsets_not_running_sum(fed):
    offsets = fed.train.offsets.copy()
    offsets[1] += 1
    return replace_split(fed, offsets=offsets)


def _single_class(fed):
    return replace_split(fed, y=np.zeros_like(fed.train.y))


def _fewer_test_clients(fed):
    t = fed.test
    rows = int(t.n[:2].sum())
    return dataclasses.replace(fed, test=t._replace(x=t.x[:rows], y=t.y[:rows], modality=t.modality[:rows],
                                                    n=t.n[:2], offsets=t.offsets[:2]))


def _test_images_other_size(fed):
    t = fed.test
    return dataclasses.replace(fed, test=t._replace(x=np.zeros(t.x.shape[:1] + (12, 12, 1), np.uint8)))


def _client_without_test_sample(fed):
    t = fed.test
    lo, hi = int(t.offsets[1]), int(t.offsets[1] + t.n[1])
    keep = np.r_[0:lo, hi:t.x.shape[0]]
    n = t.n.copy()
    n[1] = 0
    return dataclasses.replace(fed, test=t._replace(x=t.x[keep], y=t.y[keep], modality=t.modality[keep], n=n,
                                                    offsets=np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int32)))


DATA_CASES = [
    ("float32 images with NaN", _float_images_with_nan,
     r"train.x images must be uint8, got float32 with 1 NaN/Inf values"),
    ("float32 images", lambda f: replace_split(f, x=f.train.x.astype(np.float32)),
     r"train.x images must be uint8, got float32 \(convert them first"),
    ("images without a channel axis", lambda f: replace_split(f, x=f.train.x[..., 0]),
     r"train.x must be \[N, H, W, C\] \(all clients' samples, flat\), got shape \(\d+, 16, 16\)"),
    ("float labels", lambda f: replace_split(f, y=f.train.y.astype(np.float32)),
     r"train.y labels must be int32, got float32"),
    ("int64 labels", lambda f: replace_split(f, y=f.train.y.astype(np.int64)),
     r"train.y must be int32\[\d+\] labels, got int64"),
    ("label >= num_classes", _labels_out_of_range, r"train.y labels out of range \[0, 3\): min 0, max 7"),
    ("negative label", _negative_label, r"train.y labels out of range \[0, 3\): min -3"),
    ("client without training samples", _empty_client, r"client\(s\) \[1\] have no training samples"),
    ("counts that do not add up to the rows", _n_too_large, r"train.n sums to \d+ samples but x holds \d+"),
    ("offsets that are not the running sum", _offsets_not_running_sum,
     r"train.offsets must be int32\[3\] = the running sum of n"),
    ("one class only", _single_class, r"training labels hold only class\(es\) \[0\]"),
    ("train/test client counts differ", _fewer_test_clients, r"train has 3 clients but test has 2"),
    ("client without a test sample", _client_without_test_sample, r"client\(s\) \[1\] have no test sample"),
    ("train/test image sizes differ", _test_images_other_size, r"train and test image shapes differ"),
]


@pytest.mark.parametrize("what,corrupt,match", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_bad_data(fed, what, corrupt, match):
    with pytest.raises(ValueError, match=match):
        experiment.validate_data(tiny_cfg(), corrupt(fed))


def test_data_that_does_not_fit_the_config(fed):
    with pytest.raises(ConfigError, match=r"dataset built 3 clients, config asks 4"):
        experiment.validate_data(tiny_cfg(num_clients=4), fed)
    small = load_federation("synthetic", num_clients=3, seed=0, **dict(TINY, image_size=12))
    with pytest.raises(ConfigError, match=r"backbone 'cnn' cannot take images of shape \(12, 12, 1\)"):
        experiment.validate_data(tiny_cfg(), small)
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['alpha_typo'\]"):
        experiment.load_data(tiny_cfg(dataset_kwargs=dict(TINY, alpha_typo=0.5)))
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'"):
        experiment.load_data(tiny_cfg(dataset="mnist"))


def test_drop_last_with_every_client_smaller_than_a_batch(fed):
    """PFLlib's drop_last with batches larger than every client: nothing would ever train."""
    largest = int(fed.train.n.max())
    with pytest.raises(ConfigError, match=rf"drop_last=True and batch_size={largest + 1}, but every client has "
                                          rf"fewer than {largest + 1} training samples \(largest: {largest}\)"):
        experiment.validate_data(tiny_cfg(batch_size=largest + 1), fed)
    experiment.validate_data(tiny_cfg(batch_size=largest, drop_last=False), fed)  # partial batches: fine
    # beyond the largest client a batch only pads (batch_size=largest trains exactly the same): refused
    with pytest.raises(ConfigError, match=rf"batch_size={largest + 1} is larger than every client's training set "
                                          rf"\(largest: {largest} samples\).*set batch_size <= {largest}"):
        experiment.validate_data(tiny_cfg(batch_size=largest + 1, drop_last=False), fed)
    smallest = int(fed.train.n.min())
    if smallest < largest:
        with pytest.warns(UserWarning, match=r"run no local step"):
            experiment.validate_data(tiny_cfg(batch_size=smallest + 1), fed)


def test_run_refuses_bad_data_before_any_work(fed, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "load_data", lambda cfg: _float_images_with_nan(fed))
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"train.x images must be uint8, got float32 with 1 NaN"):
        experiment.run(tiny_cfg(), out, progress=False, log=lambda s: None)
    assert not out.exists()  # nothing was written, nothing was trained


def test_run_refuses_bad_config_before_loading_data(tmp_path, monkeypatch):
    def no_data(cfg):
        raise AssertionError("data loaded before the config was validated")

    monkeypatch.setattr(experiment, "load_data", no_data)
    with pytest.raises(ConfigError, match=r"top_k=9 is larger than bank_capacity=8"):
        experiment.run(tiny_cfg(algorithm="omnifm", algorithm_kwargs={"top_k": 9, "bank_capacity": 8}),
                       tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match=r"backbone_kwargs \{'width': 3\} do not fit backbone 'cnn'"):
        experiment.run(tiny_cfg(backbone_kwargs={"width": 3}), tmp_path / "run", progress=False)


# ----------------------------------------------------------------------------- checkpoints

def write_checkpoint(out, cfg, *, state=None, data_sha256=None, round_=1):
    """A checkpoint in ``out/checkpoints`` as a run with ``cfg`` would leave it."""
    if state is None:
        state = federated.FederatedState(jnp.int32(round_), {"w": jnp.zeros(3)}, {"c": jnp.zeros((3, 2))},
                                         jax.random.key(0))
    c = ck.RunCheckpointer(out / ck.CHECKPOINT_SUBDIR)
    c.save(state, {"config": cfg, "data_sha256": data_sha256, "history": [], "totals": {"faulty": 0, "dropped": 0}})
    c.close()
    (out / "config.json").write_text(json.dumps(cfg))


def test_resume_with_another_config_names_the_keys(tmp_path):
    write_checkpoint(tmp_path, tiny_cfg(lr=0.3, local_epochs=3))
    with pytest.raises(ConfigError, match=r"cannot resume from .*differs in \['local_epochs', 'lr'\] "
                                          r"\(local_epochs: checkpoint 3 vs now 2, lr: checkpoint 0.3 vs now 0.1\)"):
        experiment.run(tiny_cfg(), tmp_path, resume=True, progress=False)


def test_resume_with_fewer_rounds_than_done(tmp_path):
    write_checkpoint(tmp_path, tiny_cfg(rounds=4), round_=3)
    with pytest.raises(ConfigError, match=r"it is at round 3 but rounds=2"):
        experiment.run(tiny_cfg(rounds=2), tmp_path, resume=True, progress=False)


def test_resume_with_other_data(tmp_path):
    write_checkpoint(tmp_path, tiny_cfg(), data_sha256="0" * 64)
    with pytest.raises(ConfigError, match=r"the training/test data differ from the data the checkpoint was trained on"):
        experiment.run(tiny_cfg(), tmp_path, resume=True, progress=False)


def test_resume_a_checkpoint_of_another_model(tmp_path, fed):
    cfg = tiny_cfg()
    write_checkpoint(tmp_path, cfg, data_sha256=ck.data_fingerprint(fed.train, fed.test))
    with pytest.raises(ck.CheckpointMismatchError,
                       match=r"does not fit this run's state: checkpoint has server/w float32\[3\] where this run has"):
        experiment.run(cfg, tmp_path, resume=True, progress=False)


def test_resume_without_checkpoint_and_fresh_run_over_one(tmp_path):
    with pytest.raises(ck.CheckpointError, match=r"no checkpoint to resume from in .*checkpoints"):
        experiment.run(tiny_cfg(), tmp_path / "empty", resume=True, progress=False)
    with pytest.raises(ConfigError, match=r"resume needs the output directory"):
        experiment.run(tiny_cfg(), None, resume=True, progress=False)
    write_checkpoint(tmp_path / "used", tiny_cfg())
    with pytest.raises(ConfigError, match=r"already holds the outputs of an earlier run \(config.json, checkpoints\); "
                                          r"continue it with --resume, replace it with --overwrite"):
        experiment.run(tiny_cfg(), tmp_path / "used", progress=False)


def test_cli_errors(tmp_path, capsys):
    assert cli.main(["train", "--resume", "--quiet"]) == 2
    assert "--resume needs --out" in capsys.readouterr().err
    assert cli.main(["train", "--resume", "--out", str(tmp_path / "nothing"), "--quiet"]) == 2
    assert "cannot resume: " in capsys.readouterr().err
    assert cli.main(["train", "--set", "client_dropout=1.5", "--quiet"]) == 2
    assert "client_dropout must be a number in [0, 1), got 1.5" in capsys.readouterr().err


@pytest.mark.parametrize("task", ["classification", "super_resolution"])
def test_unknown_task_kwargs_named(task):
    from omnifm_jax.registry import TASKS

    cfg = dict(config_lib.load_config(), task=task, task_kwargs={"dice_weight": 1.0})
    with pytest.raises(ConfigError, match=rf"task '{task}': unknown task_kwargs \['dice_weight'\]; it accepts: "):
        TASKS.get(task)(cfg, None)
