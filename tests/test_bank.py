"""Knowledge bank (Sec. 3.3, Eq. 7-8) against float64 NumPy references."""
from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from omnifm_jax import bank as bank_lib
from omnifm_jax.bank import Bank

M, D, K = 12, 6, 3  # capacity, width, top-k used by the shared compiled wrappers
# Shared shapes: queries (5, D), retrieved indices (4, K), hit weights (4, 1).
RHO = 1.0
SEEDS = (0, 1, 2)
RTOL, ATOL = 1e-4, 1e-5
TRACES: collections.Counter = collections.Counter()


def _counted(name, fn):
    def wrapper(*args):
        TRACES[name] += 1
        return fn(*args)
    return jax.jit(wrapper)


# One compiled wrapper per library function, shared by all tests (fixed shapes).
j_scores = _counted("cosine_scores", bank_lib.cosine_scores)
j_retrieve = _counted("retrieve", lambda b, q: bank_lib.retrieve(b, q, K))
j_insert = _counted("insert", lambda b, e, m: bank_lib.insert(b, e, rho=RHO, mask=m))
j_record = _counted("record_hits", bank_lib.record_hits)
j_record_w = _counted("record_hits_weighted", bank_lib.record_hits)
j_add = _counted("add_hits", bank_lib.add_hits)
j_prune = _counted("prune", lambda b: bank_lib.prune(b, min_hits=2, warmup=2))
j_tick = _counted("tick", bank_lib.tick)
j_mean = _counted("mean_valid", bank_lib.mean_valid)


def random_bank(rng, capacity=M, dim=D, p_valid=0.6, garbage=True) -> Bank:
    """A bank with random prototypes, validity, hits and ages.

    With ``garbage`` the free slots hold non-zero vectors too, so only the mask can keep
    them out of a retrieval.
    """
    valid = rng.random(capacity) < p_valid
    emb = rng.normal(size=(capacity, dim))
    if not garbage:
        emb = emb * valid[:, None]
    hits = np.where(valid, rng.integers(0, 5, capacity), 0)
    age = np.where(valid, rng.integers(0, 5, capacity), 0)
    return Bank(jnp.asarray(emb, jnp.float32), jnp.asarray(valid), jnp.asarray(hits, jnp.float32),
                jnp.asarray(age, jnp.int32))


def as_np(bank: Bank):
    return Bank(*(np.asarray(a) for a in bank))


# ----------------------------------------------------------------------------- retrieval
def ref_retrieve(emb, valid, queries, k):
    """Masked cosine top-k in float64; ties by lower slot index; missing -> (-1, -inf, 0)."""
    emb = np.asarray(emb, np.float64)
    queries = np.asarray(queries, np.float64)
    cos = (queries / np.linalg.norm(queries, axis=-1, keepdims=True)) @ \
        (emb / np.linalg.norm(emb, axis=-1, keepdims=True)).T
    cos[:, ~np.asarray(valid)] = -np.inf
    idx = np.empty((len(queries), k), int)
    sims = np.empty((len(queries), k))
    for q in range(len(queries)):
        order = sorted(range(emb.shape[0]), key=lambda i: (-cos[q, i], i))[:k]
        idx[q] = [i if np.isfinite(cos[q, i]) else -1 for i in order]
        sims[q] = cos[q, order]
    protos = np.where((idx >= 0)[..., None], emb[np.maximum(idx, 0)], 0.0)
    return protos, idx, sims, cos


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("p_valid", [0.15, 0.6, 1.0])
def test_retrieve_matches_numpy_top_k(seed, p_valid):
    rng = np.random.default_rng(seed)
    bank = random_bank(rng, p_valid=p_valid)
    queries = rng.normal(size=(5, D)).astype(np.float32)
    protos, idx, sims = (np.asarray(a) for a in j_retrieve(bank, jnp.asarray(queries)))
    r_protos, r_idx, r_sims, cos = ref_retrieve(bank.embeddings, bank.valid, queries, K)
    assert protos.shape == (5, K, D) and idx.shape == (5, K) and sims.shape == (5, K)
    np.testing.assert_array_equal(np.isfinite(sims), np.isfinite(r_sims))
    fin = np.isfinite(r_sims)
    np.testing.assert_allclose(sims[fin], r_sims[fin], rtol=RTOL, atol=ATOL)
    # Each retrieved slot really has the reference similarity of its rank (robust to near ties)...
    got_cos = np.take_along_axis(cos, np.maximum(idx, 0), axis=1)
    np.testing.assert_allclose(got_cos[fin], r_sims[fin], rtol=RTOL, atol=ATOL)
    # ... and away from near ties the slots are exactly the reference ones.
    sorted_cos = -np.sort(-np.where(np.isfinite(cos), cos, -10.0), axis=1)
    gap = np.minimum(np.abs(sorted_cos[:, :K] - sorted_cos[:, 1:K + 1]),
                     np.abs(sorted_cos[:, :K] - np.concatenate([sorted_cos[:, :1] + 1, sorted_cos[:, :K - 1]], 1)))
    clear = ~fin | (gap > 1e-5)
    np.testing.assert_array_equal(idx[clear], r_idx[clear])
    np.testing.assert_allclose(protos, np.asarray(bank.embeddings)[np.maximum(idx, 0)] * (idx >= 0)[..., None],
                               rtol=0, atol=0)
    np.testing.assert_allclose(protos[clear], r_protos[clear], rtol=1e-6, atol=1e-6)


def test_cosine_scores_match_numpy():
    rng = np.random.default_rng(3)
    bank = random_bank(rng)
    queries = rng.normal(size=(5, D)) * rng.uniform(0.1, 10, size=(5, 1))
    got = np.asarray(j_scores(bank, jnp.asarray(queries, jnp.float32)))
    _, _, _, cos = ref_retrieve(bank.embeddings, bank.valid, queries, K)
    np.testing.assert_array_equal(np.isneginf(got), ~np.asarray(bank.valid)[None].repeat(5, 0))
    fin = np.isfinite(cos)
    np.testing.assert_allclose(got[fin], cos[fin], rtol=RTOL, atol=ATOL)


def test_fewer_valid_than_k_gives_missing_entries():
    rng = np.random.default_rng(4)
    bank = random_bank(rng, p_valid=0.0)
    bank = bank._replace(valid=bank.valid.at[7].set(True))  # exactly one valid slot
    queries = jnp.asarray(rng.normal(size=(5, D)), jnp.float32)
    protos, idx, sims = (np.asarray(a) for a in j_retrieve(bank, queries))
    np.testing.assert_array_equal(idx, np.tile([7, -1, -1], (5, 1)))
    assert np.all(np.isfinite(sims[:, 0])) and np.all(np.isneginf(sims[:, 1:]))
    np.testing.assert_array_equal(protos[:, 0], np.tile(np.asarray(bank.embeddings)[7], (5, 1)))
    assert np.all(protos[:, 1:] == 0)
    # An empty bank: nothing found at all.
    empty = bank_lib.init(M, D)
    protos, idx, sims = (np.asarray(a) for a in j_retrieve(empty, queries))
    assert np.all(idx == -1) and np.all(np.isneginf(sims)) and np.all(protos == 0)


def test_invalid_slots_are_never_retrieved():
    rng = np.random.default_rng(5)
    for _ in range(60):
        bank = random_bank(rng, p_valid=rng.uniform(0, 1))
        # Garbage in the free slots is the exact query direction: the best match, were it not masked.
        queries = rng.normal(size=(5, D)).astype(np.float32)
        free = np.nonzero(~np.asarray(bank.valid))[0]
        emb = np.asarray(bank.embeddings).copy()
        if len(free):
            emb[free] = queries[rng.integers(0, 5, len(free))]
        bank = bank._replace(embeddings=jnp.asarray(emb))
        _, idx, sims = (np.asarray(a) for a in j_retrieve(bank, jnp.asarray(queries)))
        valid = np.asarray(bank.valid)
        found = idx >= 0
        assert np.all(valid[idx[found]])
        assert np.all(found.sum(1) == min(K, valid.sum()))
        assert np.all(np.isfinite(sims) == found)
        # distinct slots within a row
        for row in idx:
            row = row[row >= 0]
            assert len(set(row.tolist())) == len(row)


def test_retrieve_is_deterministic_and_breaks_ties_by_lower_index():
    rng = np.random.default_rng(6)
    bank = random_bank(rng, p_valid=1.0)
    v = rng.normal(size=D).astype(np.float32)
    emb = np.asarray(bank.embeddings).copy()
    emb[[9, 2, 5]] = v  # three identical prototypes
    bank = bank._replace(embeddings=jnp.asarray(emb))
    queries = jnp.asarray(np.stack([v] * 5), jnp.float32)
    a = [np.asarray(t) for t in j_retrieve(bank, queries)]
    b = [np.asarray(t) for t in j_retrieve(bank, queries)]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(a[1], np.tile([2, 5, 9], (5, 1)))
    # un-jitted call gives the same answer
    c = bank_lib.retrieve(bank, queries, K)
    np.testing.assert_array_equal(np.asarray(c[1]), a[1])


def test_retrieve_leading_axes():
    rng = np.random.default_rng(7)
    bank = random_bank(rng)
    queries = rng.normal(size=(2, 4, D)).astype(np.float32)
    protos, idx, sims = bank_lib.retrieve(bank, jnp.asarray(queries), 2)
    assert protos.shape == (2, 4, 2, D) and idx.shape == (2, 4, 2) and sims.shape == (2, 4, 2)
    _, r_idx, r_sims, _ = ref_retrieve(bank.embeddings, bank.valid, queries.reshape(8, D), 2)
    np.testing.assert_allclose(np.asarray(sims).reshape(8, 2), r_sims, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------- insertion (Eq. 7)
def ref_project(x, rho):
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    return x * np.minimum(1.0, rho / np.maximum(n, 1e-300))


def _uploads(rng, n, low=0.2, high=3.0):
    x = rng.normal(size=(n, D))
    x = x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(low, high, size=(n, 1))
    return x.astype(np.float32)


def _insert(bank, uploads, mask=None):
    """Insert up to M uploads through the shared compiled wrapper (padded to M rows)."""
    n = len(uploads)
    pad = np.zeros((M, D), np.float32)
    pad[:n] = uploads
    m = np.zeros(M, bool)
    m[:n] = True if mask is None else mask
    return j_insert(bank, jnp.asarray(pad), jnp.asarray(m))


@pytest.mark.parametrize("seed", SEEDS)
def test_insert_into_empty_bank_projects_onto_ball(seed):
    rng = np.random.default_rng(seed)
    up = _uploads(rng, 5)
    assert (np.linalg.norm(up, axis=1) > RHO).any() and (np.linalg.norm(up, axis=1) < RHO).any()
    new = as_np(_insert(bank_lib.init(M, D), up))
    np.testing.assert_array_equal(new.valid, np.arange(M) < 5)
    np.testing.assert_allclose(new.embeddings[:5], ref_project(up, RHO), rtol=RTOL, atol=ATOL)
    assert np.all(new.embeddings[5:] == 0)
    assert np.all(new.hits == 0) and np.all(new.age == 0)
    # un-jitted, unpadded, other radius
    new2 = as_np(bank_lib.insert(bank_lib.init(M, D), jnp.asarray(up), rho=0.5))
    np.testing.assert_allclose(new2.embeddings[:5], ref_project(up, 0.5), rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(new2.valid, np.arange(M) < 5)


def test_insert_projects_existing_slots_too():
    rng = np.random.default_rng(8)
    bank = random_bank(rng, garbage=False)
    bank = bank._replace(embeddings=bank.embeddings * 4.0)
    new = as_np(_insert(bank, _uploads(rng, 2)))
    assert np.all(np.linalg.norm(new.embeddings.astype(np.float64), axis=1) <= RHO * (1 + 1e-6))
    old = np.asarray(bank.embeddings)
    unchanged = np.all(np.isclose(new.embeddings, ref_project(old, RHO), rtol=1e-4, atol=1e-5), axis=1)
    # exactly the two slots that took an upload differ from the projected old content
    assert (~unchanged).sum() == 2
    assert np.all(new.valid[np.asarray(bank.valid)])


def test_insert_fills_free_slots_first_lowest_index_first():
    valid = np.array([1, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1], bool)
    hits = np.array([0, 0, 9, 0, 0, 1, 5, 5, 5, 5, 5, 5], np.float32)
    age = np.array([9, 0, 1, 0, 0, 3, 1, 1, 1, 1, 1, 1], np.int32)
    emb = np.where(valid[:, None], 0.1, 0.0) * np.ones((M, D))
    bank = Bank(jnp.asarray(emb, jnp.float32), jnp.asarray(valid), jnp.asarray(hits), jnp.asarray(age))
    up = np.arange(1, 6)[:, None] * 0.01 * np.ones((5, D), np.float32)  # norms < rho: no projection
    new = as_np(_insert(bank, up))
    # free slots 1, 3, 4 first; then the least-hit valid slot 0 (0 hits, age 9), then slot 5 (1 hit).
    for upload, slot in enumerate([1, 3, 4, 0, 5]):
        np.testing.assert_allclose(new.embeddings[slot], up[upload], rtol=1e-6)
        assert new.valid[slot] and new.hits[slot] == 0 and new.age[slot] == 0
    for slot in [2, 6, 7, 8, 9, 10, 11]:
        np.testing.assert_allclose(new.embeddings[slot], emb[slot], rtol=1e-6)
        assert new.hits[slot] == hits[slot] and new.age[slot] == age[slot]
    assert new.valid.all()


def test_insert_into_full_bank_replaces_least_hit_then_oldest():
    # Hand-derived: replacement order by (fewest hits, then oldest, then lowest index):
    #   hits 0: slots 4 (age 7), 1 (age 2), 9 (age 2)  -> 4, 1, 9
    #   hits 1: slots 3 (age 1)                        -> 3
    hits = np.array([3, 0, 2, 1, 0, 4, 6, 2, 5, 0, 3, 2], np.float32)
    age = np.array([1, 2, 5, 1, 7, 0, 3, 4, 8, 2, 6, 9], np.int32)
    emb = np.full((M, D), 0.5, np.float32)
    bank = Bank(jnp.asarray(emb), jnp.ones(M, bool), jnp.asarray(hits), jnp.asarray(age))
    up = _uploads(np.random.default_rng(9), 4, low=0.1, high=0.9)
    new = as_np(_insert(bank, up))
    expected = [4, 1, 9, 3]
    np.testing.assert_array_equal(np.asarray(bank_lib.replacement_order(bank))[:4], expected)
    for upload, slot in enumerate(expected):
        np.testing.assert_allclose(new.embeddings[slot], up[upload], rtol=1e-6)
        assert new.hits[slot] == 0 and new.age[slot] == 0
    rest = np.setdiff1d(np.arange(M), expected)
    np.testing.assert_array_equal(new.hits[rest], hits[rest])
    np.testing.assert_array_equal(new.age[rest], age[rest])
    np.testing.assert_allclose(new.embeddings[rest], ref_project(emb[rest], RHO), rtol=RTOL)
    assert new.valid.sum() == M


def test_insert_capacity_never_exceeded_over_many_rounds():
    rng = np.random.default_rng(10)
    bank = bank_lib.init(M, D)
    count = 0
    for _ in range(15):
        n = int(rng.integers(1, M + 1))
        mask = rng.random(n) < 0.7
        bank = _insert(bank, _uploads(rng, n), mask)
        count = min(M, count + int(mask.sum()))
        b = as_np(bank)
        assert b.embeddings.shape == (M, D) and b.valid.shape == (M,)
        assert b.valid.sum() == count
        assert np.all(np.linalg.norm(b.embeddings.astype(np.float64), axis=1) <= RHO * (1 + 1e-6))
        assert np.all(b.embeddings[~b.valid] == 0)
        bank = j_tick(j_record(bank, jnp.asarray(rng.integers(-1, M, size=(4, K)), jnp.int32)))


def test_insert_ignores_masked_and_non_finite_uploads():
    rng = np.random.default_rng(11)
    up = _uploads(rng, 6, low=0.1, high=0.9)
    up[2, 1] = np.nan
    up[4, 0] = np.inf
    mask = np.array([True, False, True, True, True, True])
    new = as_np(_insert(bank_lib.init(M, D), up, mask))
    # accepted uploads 0, 3, 5 take the first three free slots, in upload order
    np.testing.assert_array_equal(new.valid, np.arange(M) < 3)
    np.testing.assert_allclose(new.embeddings[:3], up[[0, 3, 5]], rtol=1e-6)
    assert np.all(np.isfinite(new.embeddings))
    # all masked: nothing changes
    bank = random_bank(rng, garbage=False)
    bank = bank._replace(embeddings=jnp.asarray(ref_project(np.asarray(bank.embeddings), RHO), jnp.float32))
    same = as_np(_insert(bank, up, np.zeros(6, bool)))
    for a, b in zip(same, as_np(bank)):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_insert_errors():
    bank = bank_lib.init(4, D)
    with pytest.raises(ValueError):
        bank_lib.insert(bank, jnp.ones((5, D)), rho=1.0)  # more than capacity
    with pytest.raises(ValueError):
        bank_lib.insert(bank, jnp.ones((2, D + 1)), rho=1.0)  # width
    with pytest.raises(ValueError):
        bank_lib.insert(bank, jnp.ones((D,)), rho=1.0)  # not (n, d)
    with pytest.raises(ValueError):
        bank_lib.insert(bank, jnp.ones((2, D)), rho=0.0)
    with pytest.raises(ValueError):
        bank_lib.init(0, D)
    with pytest.raises(ValueError):
        bank_lib.init(4, 0)


def test_retrieve_errors():
    bank = bank_lib.init(4, D)
    q = jnp.ones((2, D))
    with pytest.raises(ValueError):
        bank_lib.retrieve(bank, q, 5)
    with pytest.raises(ValueError):
        bank_lib.retrieve(bank, q, 0)
    with pytest.raises(ValueError):
        bank_lib.retrieve(bank, jnp.ones((2, D + 1)), 2)
    with pytest.raises(ValueError):
        bank_lib.cosine_scores(bank, jnp.ones((2, D - 1)))


def test_project_to_ball_matches_numpy():
    rng = np.random.default_rng(12)
    x = _uploads(rng, 8, low=0.01, high=5.0)
    got = np.asarray(bank_lib.project_to_ball(jnp.asarray(x), 1.3))
    np.testing.assert_allclose(got, ref_project(x, 1.3), rtol=RTOL, atol=ATOL)
    assert np.all(np.asarray(bank_lib.project_to_ball(jnp.zeros((2, D)), 1.0)) == 0)


# ----------------------------------------------------------------------------- hits and pruning (Eq. 8)
@pytest.mark.parametrize("seed", SEEDS)
def test_record_hits_matches_bincount(seed):
    rng = np.random.default_rng(seed)
    bank = random_bank(rng)
    idx = rng.integers(-1, M, size=(4, K))
    got = as_np(j_record(bank, jnp.asarray(idx, jnp.int32)))
    counts = np.bincount(idx[idx >= 0], minlength=M)
    valid = np.asarray(bank.valid)
    np.testing.assert_array_equal(got.hits, np.asarray(bank.hits) + counts * valid)
    np.testing.assert_array_equal(np.asarray(bank_lib.hit_counts(M, jnp.asarray(idx, jnp.int32))), counts)
    # weights drop padded samples
    w = (rng.random((4, 1)) < 0.5).astype(np.int32)
    got_w = as_np(j_record_w(bank, jnp.asarray(idx, jnp.int32), jnp.asarray(w)))
    wi = np.broadcast_to(w, idx.shape)
    counts_w = np.bincount(idx[idx >= 0], weights=wi[idx >= 0], minlength=M).astype(int)
    np.testing.assert_array_equal(got_w.hits, np.asarray(bank.hits) + counts_w * valid)
    for field in ("embeddings", "valid", "age"):
        np.testing.assert_array_equal(getattr(got, field), np.asarray(getattr(bank, field)))


@pytest.mark.parametrize("decay", [0.0, 0.5, 1.0])
def test_add_hits_only_on_valid_slots(decay):
    """Eq. 8's frequency: ``decay * hits + this round's counts`` on valid slots (0: the
    latest round's count, the default; 1: cumulative)."""
    rng = np.random.default_rng(13)
    bank = random_bank(rng)
    counts = rng.integers(0, 7, M)
    got = as_np(bank_lib.add_hits(bank, jnp.asarray(counts, jnp.int32), decay=decay))
    want = (decay * np.asarray(bank.hits, np.float64) + counts) * np.asarray(bank.valid)
    np.testing.assert_allclose(got.hits, want, rtol=1e-6)
    default = as_np(j_add(bank, jnp.asarray(counts, jnp.int32)))
    np.testing.assert_array_equal(default.hits, counts * np.asarray(bank.valid))
    with pytest.raises(ValueError, match="decay"):
        bank_lib.add_hits(bank, jnp.asarray(counts), decay=1.5)


def ref_prune(b: Bank, min_hits, warmup):
    drop = b.valid & (b.age >= warmup) & (b.hits < min_hits)
    return Bank(np.where(drop[:, None], 0.0, b.embeddings), b.valid & ~drop,
                np.where(drop, 0, b.hits), np.where(drop, 0, b.age))


@pytest.mark.parametrize("seed", SEEDS)
def test_prune_matches_numpy(seed):
    rng = np.random.default_rng(seed)
    bank = random_bank(rng, p_valid=0.8, garbage=False)
    got = as_np(j_prune(bank))
    want = ref_prune(as_np(bank), min_hits=2, warmup=2)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    b = as_np(bank)
    fresh = b.valid & (b.age < 2)
    assert np.all(got.valid[fresh])  # fresh uploads survive whatever their hits
    assert np.all(got.valid[b.valid & (b.hits >= 2)])


def test_prune_hand_case():
    valid = np.array([1, 1, 1, 1, 0, 1, 1, 1, 1, 1, 1, 1], bool)
    hits = np.array([0, 1, 2, 0, 0, 5, 1, 1, 2, 0, 3, 1], np.float32)
    age = np.array([0, 2, 2, 5, 0, 1, 1, 3, 9, 2, 2, 2], np.int32)
    bank = Bank(jnp.ones((M, D)), jnp.asarray(valid), jnp.asarray(hits), jnp.asarray(age))
    got = as_np(j_prune(bank))  # min_hits=2, warmup=2
    dropped = [1, 3, 7, 9, 11]
    np.testing.assert_array_equal(got.valid, valid & ~np.isin(np.arange(M), dropped))
    assert np.all(got.embeddings[dropped] == 0) and np.all(got.hits[dropped] == 0)


def test_tick_ages_valid_slots_only():
    rng = np.random.default_rng(14)
    bank = random_bank(rng)
    got = as_np(j_tick(bank))
    b = as_np(bank)
    np.testing.assert_array_equal(got.age, np.where(b.valid, b.age + 1, 0))
    np.testing.assert_array_equal(got.hits, b.hits)
    np.testing.assert_array_equal(got.valid, b.valid)


def test_mean_valid_matches_numpy():
    rng = np.random.default_rng(15)
    protos = rng.normal(size=(5, K, D)).astype(np.float32)
    valid = rng.random((5, K)) < 0.5
    valid[0] = False
    mean, anyv = (np.asarray(a) for a in j_mean(jnp.asarray(protos), jnp.asarray(valid)))
    for i in range(5):
        want = protos[i][valid[i]].astype(np.float64).mean(0) if valid[i].any() else np.zeros(D)
        np.testing.assert_allclose(mean[i], want, rtol=RTOL, atol=ATOL)
    np.testing.assert_array_equal(anyv, valid.any(1))


# ----------------------------------------------------------------------------- compile once
def test_every_bank_function_traces_once_per_shape():
    rng = np.random.default_rng(16)
    bank = bank_lib.init(M, D)
    for _ in range(4):
        q = jnp.asarray(rng.normal(size=(5, D)), jnp.float32)
        other = random_bank(rng)
        j_scores(other, q)
        j_retrieve(other, q)
        j_retrieve(bank, q)
        bank = j_insert(bank, jnp.asarray(rng.normal(size=(M, D)), jnp.float32), jnp.asarray(rng.random(M) < 0.5))
        idx = jnp.asarray(rng.integers(-1, M, size=(4, K)), jnp.int32)
        bank = j_record(bank, idx)
        j_record_w(bank, idx, jnp.asarray(rng.random((4, 1)) < 0.5, jnp.int32))
        bank = j_add(bank, jnp.asarray(rng.integers(0, 3, M), jnp.int32))
        bank = j_tick(bank)
        bank = j_prune(bank)  # outputs fed back in: the dtypes/shapes must not drift
        j_mean(jnp.asarray(rng.normal(size=(5, K, D)), jnp.float32), jnp.asarray(rng.random((5, K)) < 0.5))
    jax.block_until_ready(bank)
    names = ["cosine_scores", "retrieve", "insert", "record_hits", "record_hits_weighted", "add_hits",
             "tick", "prune", "mean_valid"]
    assert {n: TRACES[n] for n in names} == {n: 1 for n in names}
