"""Ragged client arrays, federate/validate, the registry and the describe command."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
from _helpers import real_data_dir

from omnifm_jax.data import breakhis_sr, sr
from omnifm_jax.data import describe as D
from omnifm_jax.data import federation as F
from omnifm_jax.data import registry as R
from omnifm_jax.data.synthetic import make_cross_modality


@pytest.fixture(scope="module")
def real() -> Path:
    root = real_data_dir()
    if not (root / "blood_pbc").is_dir() or not (root / "medmnist").is_dir():
        pytest.skip(f"real data not found at {root}")
    return root


@pytest.fixture(scope="module")
def real4_pool(real):
    from omnifm_jax.data.real4 import load_real4

    return load_real4(real)


def _indices(fed):
    return fed.info["train_indices"], fed.info["test_indices"]


def _check_exactly_once(fed, n):
    """Every kept pool sample in exactly one client split; only de-duplicated copies left out."""
    tr, te = _indices(fed)
    allidx = np.sort(np.concatenate([np.asarray(i, np.int64) for i in tr + te]))
    d = fed.info["dedup"]
    dropped = d["removed_copies"] + d["conflicting_images"] if d["enabled"] else 0
    assert np.unique(allidx).size == allidx.size == n - dropped == fed.info["num_samples"]
    assert allidx[0] >= 0 and allidx[-1] < n


def _assert_ragged(a):
    """Clients stored one after another: offsets = running sum of n, n sums to the rows."""
    n = np.asarray(a.n)
    assert n.dtype == np.int32 and a.offsets.dtype == np.int32
    np.testing.assert_array_equal(a.offsets, np.concatenate([[0], np.cumsum(n)[:-1]]))
    assert int(n.sum()) == a.x.shape[0] == a.y.shape[0] == a.modality.shape[0]


def test_stack_clients_packs_clients_flat():
    x = np.arange(5 * 2 * 2 * 1, dtype=np.uint8).reshape(5, 2, 2, 1) + 1
    y = np.array([0, 1, 2, 1, 0])
    m = np.array([0, 0, 1, 1, 1])
    a = F.stack_clients(x, y, m, [np.array([4, 0]), np.array([2]), np.array([], np.int64), np.array([3, 1])])
    _assert_ragged(a)
    assert a.x.shape == (5, 2, 2, 1) and a.x.dtype == np.uint8  # no padding rows
    assert a.n.tolist() == [2, 1, 0, 2] and a.offsets.tolist() == [0, 2, 3, 3]
    # client after client, each in its index order
    np.testing.assert_array_equal(a.x, x[[4, 0, 2, 3, 1]])
    assert a.y.tolist() == [0, 0, 2, 1, 1] and a.y.dtype == np.int32
    assert a.modality.tolist() == [1, 0, 1, 1, 0] and a.modality.dtype == np.int32
    assert F.client_ids(a).tolist() == [0, 0, 1, 3, 3]
    xs, ys, ms = F.client_slice(a, 3)
    np.testing.assert_array_equal(xs, x[[3, 1]])
    assert ys.tolist() == [1, 1] and ms.tolist() == [1, 0]
    xs, ys, ms = F.client_slice(a, 2)
    assert xs.shape == (0, 2, 2, 1) and ys.size == 0 and ms.size == 0
    assert a.num_clients == 4 and a.sample_shape == (2, 2, 1)


def test_stack_clients_super_resolution_targets():
    x = np.ones((4, 8, 8, 3), np.uint8)
    y = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 16, 16, 3), np.uint8)
    a = F.stack_clients(x, y, np.zeros(4, np.int32), [np.array([0, 1, 2]), np.array([3])])
    _assert_ragged(a)
    assert a.y.shape == (4, 16, 16, 3) and a.y.dtype == np.uint8
    assert F.client_slice(a, 1)[1].shape == (1, 16, 16, 3) and np.all(F.client_slice(a, 1)[1] == 3)
    np.testing.assert_array_equal(F.client_slice(a, 0)[1][:, 0, 0, 0], [0, 1, 2])
    fed = F.Federation(train=a, test=a, num_classes=0, class_names=(), modality_names=("m",), info={})
    F.validate_federation(fed)


@pytest.mark.parametrize(
    "args, match",
    [
        ((np.zeros((3, 4, 4), np.uint8), np.zeros(3, int), np.zeros(3, int)), r"\[N, H, W, C\]"),
        ((np.zeros((3, 4, 4, 1), np.float32), np.zeros(3, int), np.zeros(3, int)), "uint8"),
        ((np.zeros((3, 4, 4, 1), np.uint8), np.zeros(2, int), np.zeros(3, int)), "samples"),
        ((np.zeros((3, 4, 4, 1), np.uint8), np.zeros(3), np.zeros(3, int)), "integers"),
        ((np.zeros((3, 4, 4, 1), np.uint8), np.zeros((3, 2)), np.zeros(3, int)), "labels"),
    ],
)
def test_stack_clients_bad_shapes(args, match):
    with pytest.raises(ValueError, match=match):
        F.stack_clients(*args, [np.array([0, 1, 2])])
    with pytest.raises(ValueError, match="out of range"):
        F.stack_clients(np.zeros((3, 4, 4, 1), np.uint8), np.zeros(3, int), np.zeros(3, int), [np.array([3])])


@pytest.fixture(scope="module")
def syn_fed():
    return F.federate(make_cross_modality(0), num_clients=6, partition="dirichlet", alpha=0.5, seed=0)


def test_federate_synthetic(syn_fed):
    F.validate_federation(syn_fed)
    assert syn_fed.num_clients == 6 and syn_fed.num_classes == 6
    _check_exactly_once(syn_fed, 1080)
    _assert_ragged(syn_fed.train)
    _assert_ragged(syn_fed.test)
    tr, te = _indices(syn_fed)
    assert [len(t) for t in tr] == syn_fed.train.n.tolist()
    assert [len(e) for e in te] == syn_fed.test.n.tolist()
    for t, e in zip(tr, te):
        assert len(t) == int(np.floor(0.75 * (len(t) + len(e))))
    # the flat arrays hold exactly the indexed pool samples, client after client
    pool = make_cross_modality(0)
    for k in range(6):
        xs, ys, ms = F.client_slice(syn_fed.train, k)
        np.testing.assert_array_equal(xs, pool.images[tr[k]])
        np.testing.assert_array_equal(ys, pool.labels[tr[k]])
        np.testing.assert_array_equal(ms, pool.modality[tr[k]])
        np.testing.assert_array_equal(F.client_slice(syn_fed.test, k)[1], pool.labels[te[k]])
    assert syn_fed.train.y.min() >= 0 and syn_fed.train.y.max() < 6
    # PFLlib's minimum client size: int(min(40, 1080 / 6 / 2)) = 40
    assert syn_fed.info["min_size"] == 40 and syn_fed.info["balance"] is None
    assert min(len(t) + len(e) for t, e in zip(tr, te)) >= 40
    import json

    json.dumps(syn_fed.info)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda a: a._replace(x=a.x.astype(np.float32)), "x must be uint8"),
        (lambda a: a._replace(x=a.x[None]), r"x must be \[N, H, W, C\]"),
        (lambda a: a._replace(y=np.full_like(a.y, 99)), r"out of range \[0, 6\)"),
        (lambda a: a._replace(y=(a.y - 1).astype(np.int32)), r"out of range \[0, 6\)"),
        (lambda a: a._replace(y=a.y[:-1]), "y must be int32"),
        (lambda a: a._replace(y=a.y.astype(np.int64)), "y must be int32"),
        (lambda a: a._replace(n=(a.n + 1).astype(np.int32)), "n sums to"),
        # one sample moved from client 2 to client 3 without moving the offsets
        (lambda a: a._replace(n=(a.n + np.isin(np.arange(len(a.n)), [3]) - np.isin(np.arange(len(a.n)), [2]))
                              .astype(np.int32)), "offsets must be int32.*running sum"),
        (lambda a: a._replace(offsets=a.offsets[::-1].copy()), "running sum"),
        (lambda a: a._replace(offsets=a.offsets.astype(np.int64)), "offsets must be int32"),
        (lambda a: a._replace(n=np.where(np.arange(len(a.n)) == 1, -1, a.n).astype(np.int32)), "n must be >= 0"),
        (lambda a: a._replace(n=a.n.astype(np.int64)), "n must be int32"),
        (lambda a: a._replace(modality=a.modality[:-1]), "modality must be int32"),
        (lambda a: a._replace(modality=np.full_like(a.modality, 3)), r"modality ids out of range \[0, 3\)"),
    ],
)
def test_validate_federation_catches_problems(syn_fed, mutate, match):
    import dataclasses

    bad = dataclasses.replace(syn_fed, train=mutate(syn_fed.train))
    with pytest.raises(ValueError, match=match):
        F.validate_federation(bad)


def test_validate_federation_empty_client(syn_fed):
    import dataclasses

    t = syn_fed.train
    keep = F.client_ids(t) != 3  # drop client 3's rows, keep a consistent ragged layout
    n = np.where(np.arange(6) == 3, 0, t.n).astype(np.int32)
    empty = t._replace(
        x=t.x[keep], y=t.y[keep], modality=t.modality[keep], n=n,
        offsets=np.concatenate([[0], np.cumsum(n)[:-1]]).astype(np.int32),
    )
    _assert_ragged(empty)
    with pytest.raises(ValueError, match=r"client\(s\) \[3\] have no training samples"):
        F.validate_federation(dataclasses.replace(syn_fed, train=empty))


def test_federate_bad_input():
    d = make_cross_modality(0, samples_per_class_per_modality=4)
    with pytest.raises(ValueError, match="out of range"):
        F.federate(d._replace(labels=d.labels + 3), num_clients=2)
    with pytest.raises(ValueError, match="inconsistent sizes"):
        F.federate(d._replace(labels=d.labels[:-1]), num_clients=2)
    with pytest.raises(ValueError, match="uint8"):
        F.federate(d._replace(images=d.images[..., 0]), num_clients=2)
    with pytest.raises(ValueError, match="unknown partition"):
        F.federate(d, num_clients=2, partition="nope")
    with pytest.raises(ValueError, match="more clients"):
        F.federate(d, num_clients=1000, partition="iid")


def test_federate_pathological_pfllib_options():
    d = make_cross_modality(0)  # 6 classes x 180 samples
    fed = F.federate(d, num_clients=6, partition="pat", classes_per_client=2, balance=True, seed=0)
    assert fed.info["partition"] == "pathological" and fed.info["balance"] is True
    assert fed.info["classes_per_client"] == 2 and fed.info["min_size"] == 40 and fed.info["alpha"] is None
    _check_exactly_once(fed, 1080)
    # PFLlib: ceil(6 / 6 * 2) = 2 holders per class; clients 2j, 2j+1 share classes 2j, 2j+1, 90 each
    tr, te = _indices(fed)
    for k in range(6):
        labels = d.labels[np.concatenate([tr[k], te[k]]).astype(np.int64)]
        expected = np.zeros(6, np.int64)
        expected[[2 * (k // 2), 2 * (k // 2) + 1]] = 90
        np.testing.assert_array_equal(np.bincount(labels, minlength=6), expected)
    assert fed.train.n.tolist() == [135] * 6 and fed.test.n.tolist() == [45] * 6
    # the registry passes the partition options through
    via_registry = R.load_federation("synthetic", num_clients=6, partition="pat", classes_per_client=2, balance=True)
    assert via_registry.info["train_indices"] == fed.info["train_indices"]
    unbalanced = R.load_federation("synthetic", num_clients=6, partition="pat", classes_per_client=2, min_size=40)
    assert unbalanced.info["balance"] is False and unbalanced.info["min_size"] == 40
    sizes = (unbalanced.train.n + unbalanced.test.n).tolist()
    assert sum(sizes) == 1080 and sizes != [180] * 6


def test_registry_synthetic_and_unknown():
    fed = R.load_federation("synthetic", num_clients=4, seed=1, partition="modality", num_modalities=2,
                            samples_per_class_per_modality=10)
    assert fed.info["dataset"] == "synthetic" and fed.info["partition"] == "modality"
    for k in range(4):
        mods = F.client_slice(fed.train, k)[2]
        assert mods.size > 0 and np.unique(mods).size == 1
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: (.*, )?breakhis_sr, (.*, )?"
                                         "medmnist:<subset>.*, real4, (.*, )?synthetic, (.*, )?synthetic_sr"):
        R.load_federation("imagenet", num_clients=2)
    with pytest.raises(ValueError, match="unknown option"):
        R.load_federation("synthetic", num_clients=2, colour="red")
    with pytest.raises(ValueError, match="unknown MedMNIST subset 'fakemnist'"):
        R.load_federation("medmnist:pathmnist+fakemnist", num_clients=2)


def test_registry_sr_is_forwarded(monkeypatch):
    calls = []
    monkeypatch.setattr(sr, "synthetic_sr_federation", lambda **kw: calls.append(("synthetic", kw)) or "SYN")
    monkeypatch.setattr(breakhis_sr, "breakhis_sr_federation", lambda **kw: calls.append(("breakhis", kw)) or "BRK")
    assert R.load_federation("synthetic_sr", num_clients=3, seed=2, scale=2) == "SYN"
    assert R.load_federation("breakhis_sr", num_clients=4) == "BRK"
    assert calls == [("synthetic", {"num_clients": 3, "seed": 2, "scale": 2}), ("breakhis", {"num_clients": 4, "seed": 0})]


def test_registry_medmnist_offline_missing(monkeypatch, tmp_path):
    import urllib.error

    from omnifm_jax.data import medmnist as mm

    def offline(url, dest, **kw):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(mm, "_download", offline)
    with pytest.raises(FileNotFoundError, match="pathmnist.npz"):
        R.load_federation("medmnist:pathmnist+dermamnist+bloodmnist", num_clients=3, root=tmp_path)


@pytest.mark.real_data
def test_registry_medmnist_from_real_files(real):
    fed = R.load_federation("medmnist:breastmnist+pneumoniamnist", num_clients=5, root=real / "medmnist",
                            download=False, alpha=0.5)
    assert fed.num_classes == 4 and fed.modality_names == ("breast ultrasound", "chest X-ray")
    # by default only the official train splits are pooled: 546 + 4708
    _check_exactly_once(fed, 546 + 4708)
    both = np.concatenate([fed.train.modality, fed.test.modality])
    d = fed.info["dedup"]  # the official train splits' duplicates are all PneumoniaMNIST's
    assert d["groups"] > 0 and np.bincount(both).tolist() == [546, 4708 - d["removed_copies"] - d["conflicting_images"]]
    pooled = R.load_federation("medmnist:breastmnist+pneumoniamnist", num_clients=5, root=real / "medmnist",
                               download=False, alpha=0.5, splits=("train", "val", "test"))
    _check_exactly_once(pooled, 780 + 5856)


@pytest.mark.real_data
@pytest.mark.parametrize("partition, alpha", [("dirichlet", 0.1), ("dirichlet", 0.5), ("modality", 0.5)])
def test_real4_federation(real4_pool, partition, alpha):
    n = real4_pool.labels.size
    fed = F.federate(real4_pool, num_clients=20, partition=partition, alpha=alpha, seed=0)
    F.validate_federation(fed)
    assert fed.num_clients == 20 and fed.num_classes == 17 and len(fed.modality_names) == 4
    _check_exactly_once(fed, n)
    tr, te = _indices(fed)
    _assert_ragged(fed.train)
    _assert_ragged(fed.test)
    for k in range(20):  # the flat arrays hold exactly the indexed samples
        np.testing.assert_array_equal(F.client_slice(fed.train, k)[1], real4_pool.labels[tr[k]])
        np.testing.assert_array_equal(F.client_slice(fed.test, k)[2], real4_pool.modality[te[k]])
    if partition == "modality":
        for k in range(20):
            mods = np.concatenate([F.client_slice(fed.train, k)[2], F.client_slice(fed.test, k)[2]])
            assert np.unique(mods).size == 1
        assert {int(F.client_slice(fed.train, k)[2][0]) for k in range(20)} == {0, 1, 2, 3}
    else:  # PFLlib's least_samples: int(min(40, n / 20 / 2)) = 40
        assert fed.info["min_size"] == 40
        assert min(len(a) + len(b) for a, b in zip(tr, te)) >= 40
    same = F.federate(real4_pool, num_clients=20, partition=partition, alpha=alpha, seed=0)
    other = F.federate(real4_pool, num_clients=20, partition=partition, alpha=alpha, seed=1)
    assert same.info["train_indices"] == fed.info["train_indices"]
    np.testing.assert_array_equal(same.train.x, fed.train.x)
    assert other.info["train_indices"] != fed.info["train_indices"]
    text = D.describe(fed)
    # header (+ duplicates line), column header + rule, clients, rule + total
    assert len(text.splitlines()) == 4 + 2 + 20 + 2
    assert f"partition: {partition}" in text and "breast ultrasound" in text
    assert f" total  {int(fed.train.n.sum())}  {int(fed.test.n.sum())}" in text


@pytest.mark.real_data
def test_real4_dirichlet_skew(real4_pool):
    def skew(alpha):
        fed = F.federate(real4_pool, num_clients=20, alpha=alpha, seed=0)
        ent = []
        for k in range(20):
            q = np.bincount(F.client_slice(fed.train, k)[1], minlength=17) / fed.train.n[k]
            q = q[q > 0]
            ent.append(-(q * np.log(q)).sum())
        return np.mean(ent)

    assert skew(0.1) < skew(0.5)


@pytest.mark.real_data
def test_registry_real4_env(real, monkeypatch):
    monkeypatch.setenv("OMNIFM_REAL_DATA", str(real))
    fed = R.load_federation("real4", num_clients=4, partition="iid")
    assert fed.info["root"] == str(real) and fed.train.n.sum() + fed.test.n.sum() == 16782 - 34
    # 34 = 32 extra copies of label-consistent duplicate groups + one conflicting pair
    text = D.describe(fed)
    assert "official train/val/test splits are pooled" in text and "32 extra copies removed" in text
    monkeypatch.setenv("OMNIFM_REAL_DATA", str(real / "absent"))
    with pytest.raises(FileNotFoundError, match="missing"):
        R.load_federation("real4", num_clients=4)


def test_describe_main_synthetic(capsys):
    assert D.main(["--dataset", "synthetic", "--clients", "5", "--set", "num_modalities=2", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].startswith("dataset: synthetic  partition: dirichlet  alpha: 0.5  seed: 3  clients: 5")
    assert lines[3] == "duplicates: none (images compared byte for byte)"
    assert len(lines) == 4 + 2 + 5 + 2 and lines[-1].split()[0] == "total"
    train_total = sum(int(l.split()[1]) for l in lines[6:11])
    assert int(lines[-1].split()[1]) == train_total
    assert int(lines[-1].split()[1]) + int(lines[-1].split()[2]) == 2 * 6 * 60


def test_describe_errors_and_mounting(capsys):
    with pytest.raises(SystemExit) as ex:
        D.main(["--dataset", "nope"])
    assert ex.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "unknown dataset 'nope'" in captured.err
    parser = argparse.ArgumentParser(prog="omnifm")
    sub = parser.add_subparsers(dest="cmd")
    data = sub.add_parser("data").add_subparsers(dest="data_cmd")
    D.add_data_parser(data)
    args = parser.parse_args(["data", "describe", "--dataset", "synthetic", "--clients", "3", "--partition", "iid",
                              "--set", "samples_per_class_per_modality=5", "--set", "image_size=16"])
    assert args.func(args) == 0
    assert "partition: iid" in capsys.readouterr().out
    assert D.parse_set_options(["a=1", "b=[1, 2]", "c=hello", "d=0.5"]) == {"a": 1, "b": [1, 2], "c": "hello", "d": 0.5}
    with pytest.raises(ValueError, match="key=value"):
        D.parse_set_options(["novalue"])


def test_deduplicate_hand_made():
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (9, 4, 4, 3), dtype=np.uint8)
    imgs[3] = imgs[0]; imgs[7] = imgs[0]          # a label-consistent triple: keep index 0
    imgs[5] = imgs[2]                              # a pair with conflicting labels: drop both
    imgs[8] = imgs[6]; imgs[8, 0, 0, 0] ^= 1       # differs in one bit: not a duplicate
    labels = np.array([1, 0, 4, 1, 2, 3, 0, 1, 0])
    keep, report = F.deduplicate(imgs, labels)
    np.testing.assert_array_equal(keep, [0, 1, 4, 6, 8])
    assert report == {"enabled": True, "groups": 2, "images_in_groups": 5, "removed_copies": 2,
                      "conflicting_groups": 1, "conflicting_images": 2, "kept": 5}
    data = make_cross_modality(0)
    data = data._replace(images=np.concatenate([data.images, data.images[:3]]),
                         labels=np.concatenate([data.labels, data.labels[:3]]),
                         modality=np.concatenate([data.modality, data.modality[:3]]))
    fed = F.federate(data, num_clients=4, seed=0)
    assert fed.info["dedup"]["removed_copies"] == 3 and fed.info["num_samples"] == data.labels.size - 3
    assert F.federate(data, num_clients=4, seed=0, dedup=False).info["num_samples"] == data.labels.size
    with pytest.raises(ValueError, match="dedup must be True or False"):
        F.federate(data, num_clients=4, dedup="yes")


def _test_copies_in_training(fed):
    """How many test samples have a byte-identical image in some client's training set."""
    seen = {x.tobytes() for x in fed.train.x}
    return sum(x.tobytes() in seen for x in fed.test.x)


@pytest.mark.real_data
def test_real4_duplicates_found_and_kept_out_of_test(real4_pool):
    _, report = F.deduplicate(real4_pool.images, real4_pool.labels)
    assert (report["groups"], report["images_in_groups"], report["conflicting_groups"]) == (31, 64, 1)
    from omnifm_jax import config as config_lib

    cfg = config_lib.load_config("real4")  # the shipped split
    kw = dict(num_clients=cfg["num_clients"], seed=cfg["seed"], **cfg["dataset_kwargs"])
    assert _test_copies_in_training(F.federate(real4_pool, **kw)) == 0
    assert _test_copies_in_training(F.federate(real4_pool, dedup=False, **kw)) > 0


def test_one_sample_client_is_an_error_not_an_unevaluated_client():
    from omnifm_jax.data.partition import split_train_test

    with pytest.raises(ValueError, match="client 1 has a single sample"):
        split_train_test([np.arange(5), np.array([7])], test_fraction=0.25)
    tr, te = split_train_test([np.arange(n) for n in (2, 3, 4, 9)], test_fraction=0.01)
    assert all(len(t) >= 1 for t in te) and all(len(t) >= 1 for t in tr)
    tr, te = split_train_test([np.array([7])], test_fraction=0.0)  # nothing held out: allowed
    assert tr[0].tolist() == [7] and te[0].size == 0
