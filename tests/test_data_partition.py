"""Client partitions: coverage, determinism, skew, min_size and error handling."""

from __future__ import annotations

import numpy as np
import pytest

from omnifm_jax.data import partition as P


def _labels(n=2000, classes=10, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def _assert_exact_cover(parts, n):
    allidx = np.concatenate(parts)
    assert allidx.size == n
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))
    assert all(p.size > 0 for p in parts)


def _mean_entropy(labels, parts, classes):
    ent = []
    for p in parts:
        q = np.bincount(labels[p], minlength=classes) / p.size
        q = q[q > 0]
        ent.append(-(q * np.log(q)).sum() / np.log(classes))
    return float(np.mean(ent))


@pytest.mark.parametrize("scheme", ["dirichlet", "pathological", "modality", "iid", "dir", "pat", "extra_hard"])
def test_every_sample_exactly_once_and_deterministic(scheme):
    labels = _labels()
    modality = np.random.default_rng(5).integers(0, 3, labels.size)
    kw = dict(num_clients=12, scheme=scheme, modality=modality, alpha=0.3, classes_per_client=3)
    a = P.partition(labels, seed=1, **kw)
    b = P.partition(labels, seed=1, **kw)
    c = P.partition(labels, seed=2, **kw)
    assert len(a) == 12
    _assert_exact_cover(a, labels.size)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = _labels(3000, 10)
    ent = {
        alpha: np.mean([_mean_entropy(labels, P.partition(labels, num_clients=10, alpha=alpha, seed=s), 10) for s in range(3)])
        for alpha in (0.1, 0.5, 100.0)
    }
    assert ent[0.1] < ent[0.5] < ent[100.0]
    assert ent[0.1] < 0.6 and ent[100.0] > 0.95


@pytest.mark.parametrize("min_size", [1, 10, 40])
def test_dirichlet_min_size_respected(min_size):
    labels = _labels(3000, 10)
    parts = P.partition(labels, num_clients=20, alpha=0.1, min_size=min_size, seed=3)
    assert min(p.size for p in parts) >= min_size
    _assert_exact_cover(parts, labels.size)


def test_dirichlet_gives_up_with_clear_error():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="no draw .* in 5 tries"):
        P.dirichlet_partition(labels, num_clients=10, alpha=0.01, min_size=10, max_tries=5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds 100 samples"):
        P.dirichlet_partition(labels, num_clients=10, alpha=0.5, min_size=11, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha must be a positive"):
        P.partition(labels, num_clients=2, alpha=0.0)


def test_pathological_classes_per_client():
    labels = _labels(2000, 10)
    parts = P.partition(labels, num_clients=15, scheme="pathological", classes_per_client=2, seed=0)
    assert [np.unique(labels[p]).size for p in parts] == [2] * 15
    with pytest.raises(ValueError, match="cannot cover all 10 classes"):
        P.partition(labels, num_clients=4, scheme="pathological", classes_per_client=2)
    with pytest.raises(ValueError, match="exceeds the 10 classes"):
        P.partition(labels, num_clients=4, scheme="pathological", classes_per_client=11)


def test_modality_partition_single_modality_and_proportional():
    modality = np.repeat([0, 1, 2], [600, 300, 100])
    labels = np.zeros(1000, np.int64)
    parts = P.partition(labels, num_clients=10, scheme="modality", modality=modality, seed=0)
    per_client = [np.unique(modality[p]) for p in parts]
    assert all(m.size == 1 for m in per_client)
    counts = np.bincount([int(m[0]) for m in per_client], minlength=3)
    assert counts.tolist() == [6, 3, 1]
    rr = P.modality_partition(modality, num_clients=10, rng=np.random.default_rng(0), assign="round_robin")
    assert np.bincount([int(np.unique(modality[p])[0]) for p in rr]).tolist() == [4, 3, 3]
    with pytest.raises(ValueError, match="at least one client per modality"):
        P.partition(labels, num_clients=2, scheme="modality", modality=modality)
    with pytest.raises(ValueError, match="needs per-sample modality"):
        P.partition(labels, num_clients=2, scheme="modality")


def test_split_train_test_pfllib_fraction():
    parts = P.partition(_labels(1000), num_clients=5, scheme="iid", seed=0)
    train, test = P.split_train_test(parts, test_fraction=0.25, seed=0)
    for p, tr, te in zip(parts, train, test):
        assert tr.size == int(np.floor(0.75 * p.size)) and tr.size + te.size == p.size
        assert np.intersect1d(tr, te).size == 0
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), p)
    train2, _ = P.split_train_test(parts, test_fraction=0.25, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(train, train2))
    with pytest.raises(ValueError, match="test_fraction"):
        P.split_train_test(parts, test_fraction=1.0)
    with pytest.raises(ValueError, match="client 1 is empty"):
        P.split_train_test([parts[0], np.array([], np.int64)])


@pytest.mark.parametrize(
    "labels, kwargs, match",
    [
        (np.array([0, 1, -1, 2]), {}, "non-negative"),
        (np.array([0, 1, 7, 2]), {"num_classes": 3}, r"out of range \[0, 3\)"),
        (np.zeros((4, 2), np.int64), {}, "1-D"),
        (np.array([0.0, 1.0]), {}, "integers"),
        (np.arange(5), {"num_clients": 0}, "num_clients must be >= 1"),
        (np.arange(5), {"num_clients": 6}, r"more clients \(6\) than samples \(5\)"),
        (np.arange(5), {"scheme": "random"}, "unknown partition 'random'.*dirichlet"),
        # class 1 has one sample but two holders -> a client ends up empty
        (np.array([0, 0, 0, 0, 1]), {"num_clients": 4, "scheme": "pathological", "classes_per_client": 1}, "empty"),
    ],
)
def test_bad_inputs(labels, kwargs, match):
    kw = {"num_clients": 2, "min_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        P.partition(labels, **kw)
