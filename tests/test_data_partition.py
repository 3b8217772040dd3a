"""Client partitions: coverage, determinism, skew, PFLlib's rules and error handling."""

from __future__ import annotations

import math

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
    kw = dict(num_clients=10, scheme=scheme, modality=modality, alpha=0.3, classes_per_client=3)
    a = P.partition(labels, seed=1, **kw)
    b = P.partition(labels, seed=1, **kw)
    c = P.partition(labels, seed=2, **kw)
    assert len(a) == 10
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


def _pfllib_least_samples(n, k):
    # PFLlib dataset_utils: batch_size = 10, train_ratio = 0.75
    return int(min(10 / (1 - 0.75), n / k / 2))


@pytest.mark.parametrize("n, k, expected", [(1000, 10, 40), (100_000, 20, 40), (60, 4, 7), (20, 4, 2), (79, 1, 39)])
def test_pfllib_least_samples(n, k, expected):
    assert _pfllib_least_samples(n, k) == expected
    assert P.pfllib_least_samples(n, k) == expected


def test_dirichlet_default_min_size_is_pfllib_rule():
    # Old default (min_size=10) let clients of 13..39 samples through for these seeds.
    labels = _labels(1000, 10)
    for seed in range(10):
        parts = P.partition(labels, num_clients=10, alpha=0.1, seed=seed)
        assert min(p.size for p in parts) >= 40
        _assert_exact_cover(parts, labels.size)
    # None means exactly the rule: same draws as passing the rule's value explicitly.
    a = P.dirichlet_partition(labels, num_clients=10, alpha=0.1, rng=np.random.default_rng(7))
    b = P.dirichlet_partition(labels, num_clients=10, alpha=0.1, rng=np.random.default_rng(7), min_size=40)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


def test_dirichlet_small_pool_uses_half_share_rule():
    # 20 samples, 4 clients: PFLlib asks for int(min(40, 2.5)) = 2 (the old fixed 10 x 4 > 20 was infeasible).
    labels = np.repeat(np.arange(4), 5)
    for seed in range(5):
        parts = P.partition(labels, num_clients=4, alpha=0.5, seed=seed)
        assert min(p.size for p in parts) >= _pfllib_least_samples(20, 4) == 2
        _assert_exact_cover(parts, 20)
    with pytest.raises(ValueError, match="exceeds 20 samples"):
        P.partition(labels, num_clients=4, alpha=0.5, min_size=10)


@pytest.mark.parametrize("min_size", [1, 10, 60])
def test_dirichlet_min_size_override_respected(min_size):
    labels = _labels(3000, 10)
    parts = P.partition(labels, num_clients=20, alpha=0.1, min_size=min_size, seed=3)
    assert min(p.size for p in parts) >= min_size
    _assert_exact_cover(parts, labels.size)


def test_dirichlet_rich_clients_get_no_more():
    # Balancing rule kept: once a client holds >= N/K samples it gets nothing of later classes,
    # so no client can exceed N/K by more than one class's size.
    labels = np.repeat(np.arange(20), 50)
    for seed in range(5):
        parts = P.partition(labels, num_clients=10, alpha=0.05, seed=seed)
        assert max(p.size for p in parts) < 1000 / 10 + 50


def test_dirichlet_gives_up_with_clear_error():
    labels = np.repeat(np.arange(10), 10)
    with pytest.raises(ValueError, match="no draw .* in 5 tries"):
        P.dirichlet_partition(labels, num_clients=10, alpha=0.01, min_size=10, max_tries=5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="exceeds 100 samples"):
        P.dirichlet_partition(labels, num_clients=10, alpha=0.5, min_size=11, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha must be a positive"):
        P.partition(labels, num_clients=2, alpha=0.0)
    with pytest.raises(ValueError, match="min_size must be an integer or None"):
        P.partition(labels, num_clients=2, min_size=2.5)
    with pytest.raises(ValueError, match="min_size must be >= 0"):
        P.partition(labels, num_clients=2, min_size=-1)


# --------------------------------------------------------------------------- pathological (PFLlib "pat")


def _reference_holders(num_clients, num_classes, per_client):
    """Holders of every class, from the description of PFLlib's algorithm."""
    quota = [per_client] * num_clients
    cap = math.ceil(num_clients / num_classes * per_client)
    out = []
    for _ in range(num_classes):
        hs = [k for k in range(num_clients) if quota[k] > 0][:cap]
        for k in hs:
            quota[k] -= 1
        out.append(hs)
    return out


def _class_counts(labels, parts, num_classes):
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in parts])  # [K, C]


# (class sizes, clients, classes per client)
PAT_CASES = [
    ([50, 37, 61, 45, 29], 7, 2),  # 3 holders per class; client 6 only holds class 4
    ([120, 95, 130, 101, 88, 99, 140, 111, 90, 105], 20, 2),  # PFLlib's default set-up
    ([64, 80, 72, 90], 5, 3),  # 4 holders for classes 0-2, then client 4 alone holds class 3
    ([40] * 50, 14, 25),  # float ceil(14 / 50 * 25) = 8 holders (exactly 7.0, as PFLlib computes it)
]


def _pat_labels(counts, seed=0):
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(len(counts)), counts))


@pytest.mark.parametrize("counts, k, cpc", PAT_CASES)
def test_pathological_balanced_matches_pfllib(counts, k, cpc):
    labels = _pat_labels(counts)
    c = len(counts)
    holders = _reference_holders(k, c, cpc)
    if (k, c, cpc) == (14, 50, 25):
        assert len(holders[0]) == 8
    parts = P.partition(labels, num_clients=k, scheme="pat", classes_per_client=cpc, balance=True, seed=0)
    _assert_exact_cover(parts, labels.size)
    got = _class_counts(labels, parts, c)
    for i in range(c):
        hs = holders[i]
        assert np.flatnonzero(got[:, i]).tolist() == hs, f"class {i}"
        per = counts[i] // len(hs)
        expected = [per] * (len(hs) - 1) + [counts[i] - per * (len(hs) - 1)]
        assert got[hs, i].tolist() == expected, f"class {i}"
    # sizes and holders never depend on the seed
    other = P.partition(labels, num_clients=k, scheme="pat", classes_per_client=cpc, balance=True, seed=5)
    np.testing.assert_array_equal(_class_counts(labels, other, c), got)


@pytest.mark.parametrize("counts, k, cpc", PAT_CASES[:3])
def test_pathological_unbalanced_sizes_in_pfllib_range(counts, k, cpc):
    labels = _pat_labels(counts)
    c, n = len(counts), sum(counts)
    holders = _reference_holders(k, c, cpc)
    least = _pfllib_least_samples(n, k)
    seen = set()
    for seed in range(8):
        parts = P.partition(labels, num_clients=k, scheme="pathological", classes_per_client=cpc, seed=seed)
        _assert_exact_cover(parts, n)
        got = _class_counts(labels, parts, c)
        for i in range(c):
            hs = holders[i]
            per = counts[i] / len(hs)
            lo, hi = int(max(per / 10, least / c)), int(per)
            assert lo >= 1  # so every holder really gets samples of the class
            assert np.flatnonzero(got[:, i]).tolist() == hs
            assert all(lo <= v < hi for v in got[hs[:-1], i]), (i, got[hs, i], lo, hi)
            assert got[hs[-1], i] == counts[i] - got[hs[:-1], i].sum()
            seen.add(tuple(got[hs, i]))
    assert len(seen) > c  # sizes are random, not the balanced split


def test_pathological_min_size_sets_lower_bound():
    # 2 holders per class, 100 samples -> per = 50; least_samples / C = 90 / 2 = 45 -> sizes in [45, 50)
    labels = np.repeat([0, 1], 100)
    for seed in range(5):
        parts = P.partition(labels, num_clients=2, scheme="pat", classes_per_client=2, min_size=90, seed=seed)
        got = _class_counts(labels, parts, 2)
        assert 45 <= got[0, 0] < 50 and 45 <= got[0, 1] < 50


def test_pathological_empty_class_uses_quota():
    # num_classes=3 but class 1 has no samples: it still takes client 1's quota, as in PFLlib,
    # so class 2 finds no holder (PFLlib would drop it silently).
    labels = np.array([0] * 10 + [2] * 10)
    with pytest.raises(ValueError, match=r"used up before class 2.*classes \[2\]"):
        P.partition(labels, num_clients=2, scheme="pat", classes_per_client=1, balance=True, num_classes=3)
    # trailing classes without samples are harmless
    parts = P.partition(np.array([0] * 10 + [1] * 10), num_clients=2, scheme="pat", classes_per_client=1,
                        balance=True, num_classes=4)
    assert [np.unique(np.array([0] * 10 + [1] * 10)[p]).tolist() for p in parts] == [[0], [1]]


def test_pathological_errors():
    labels = _labels(2000, 10)
    with pytest.raises(ValueError, match="cannot cover all 10 classes"):
        P.partition(labels, num_clients=4, scheme="pathological", classes_per_client=2)
    # 12 clients x 3 classes: 4 holders per class, quotas gone after class 8 -> class 9 would be dropped
    with pytest.raises(ValueError, match=r"used up before class 9"):
        P.partition(labels, num_clients=12, scheme="pathological", classes_per_client=3, balance=True)
    with pytest.raises(ValueError, match="exceeds the 10 classes"):
        P.partition(labels, num_clients=4, scheme="pathological", classes_per_client=11)
    with pytest.raises(ValueError, match="classes_per_client must be an integer >= 1"):
        P.partition(labels, num_clients=4, scheme="pathological", classes_per_client=0)
    with pytest.raises(ValueError, match="balance must be True or False"):
        P.partition(labels, num_clients=20, scheme="pathological", balance="false")
    # unbalanced: 3 samples for 2 holders -> per = 1.5, range [int(max(0.15, 4 / 2)), int(1.5)) = [2, 1) is empty
    few = np.array([0] * 100 + [1] * 3)
    with pytest.raises(ValueError, match=r"range of random sizes .* = \[2, 1\) is empty"):
        P.partition(few, num_clients=2, scheme="pat", classes_per_client=2, min_size=4)
    # balanced: 1 sample for 2 holders -> the first holder of class 1 gets nothing and stays empty
    one = np.array([0, 0, 0, 0, 1])
    with pytest.raises(ValueError, match=r"left client\(s\) \[2\] empty"):
        P.partition(one, num_clients=4, scheme="pat", classes_per_client=1, balance=True)


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
        # class 1 has one sample but two holders -> the random-size range [0, 0) is empty
        (np.array([0, 0, 0, 0, 1]), {"num_clients": 4, "scheme": "pathological", "classes_per_client": 1}, "empty"),
    ],
)
def test_bad_inputs(labels, kwargs, match):
    kw = {"num_clients": 2, "min_size": 1, **kwargs}
    with pytest.raises(ValueError, match=match):
        P.partition(labels, **kw)
