"""Does OmniFM's mechanism do any work? Measurements of a trained state, for notebooks
(:func:`omnifm_diagnostics`) and for every evaluation round of an OmniFM run (the
``diag/...`` keys of ``metrics.jsonl``, config key ``diagnostics``).

All are measured on up to ``max_per_client`` test samples of every client (its first ones),
each client with its personalised model; counterfactual metrics are the task's primary
metric (accuracy for classification) on the same samples, next to ``diag/acc_normal``.

==========================  =================================================================
``diag/s_cos_to_mean``      mean cosine of each spectral token ``s`` to the mean token: 1 when
                            every image gets the same token (the tokenizer says nothing)
``diag/s_modality_purity``  after subtracting the mean token, the share of samples whose
                            nearest other sample (cosine) has the same modality (only with >= 2
                            modalities); chance is about the largest modality's share
``diag/bank_pairwise_cos``  mean cosine between distinct valid bank slots (1: near-copies;
                            0: orthogonal prototypes)
``diag/bank_valid``         valid bank slots
``diag/bank_distinct``      distinct slots retrieved over all measured samples
``diag/attn_entropy_ratio`` ECA's attention entropy over its valid keys divided by ln(number
                            of valid keys), mean over samples, heads and queries: 1 = uniform
                            attention (it does not choose), 0 = one key
``diag/z_logit_share``      sum over samples of ||y - y(Z := client mean Z)||^2 divided by the
                            sum of ||y - client mean y||^2: the share of the per-input variation
                            of the model output that the per-input part of Z causes
``diag/acc_normal``         the primary metric on the measured samples
``diag/acc_z_constant``     ... with Z replaced by each client's mean Z
``diag/acc_bank_random``    ... with the bank's valid slots replaced by random unit vectors
``diag/acc_s_shuffled``     ... with ``s`` shuffled across each client's measured samples
==========================  =================================================================

The diagnostics run once per evaluation round, outside the training program; clients are
visited one by one by ONE compiled function (every client padded to the same width).
"""
from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax import bank as bank_lib

NAMES = ("diag/s_cos_to_mean", "diag/s_modality_purity", "diag/bank_pairwise_cos", "diag/bank_valid",
         "diag/bank_distinct", "diag/attn_entropy_ratio", "diag/z_logit_share", "diag/acc_normal",
         "diag/acc_z_constant", "diag/acc_bank_random", "diag/acc_s_shuffled")


def attention_entropy_ratio(weights: np.ndarray, valid: np.ndarray) -> float:
    """Mean of ``H(w) / ln(n_valid)`` over every attention row with >= 2 valid keys.

    ``weights (..., k)`` rows summing to 1 over the valid keys; ``valid`` bool, broadcastable
    to ``weights``. NaN when no row has two valid keys.
    """
    w = np.asarray(weights, np.float64)
    v = np.broadcast_to(np.asarray(valid, bool), w.shape)
    n = v.sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(v & (w > 0), w * np.log(np.where(w > 0, w, 1.0)), 0.0), axis=-1)
        ratio = h / np.log(n)
    ok = n >= 2
    return float(np.mean(ratio[ok])) if ok.any() else float("nan")


def mean_cosine_to_mean(s: np.ndarray) -> float:
    """Mean cosine of the rows of ``s (N, d)`` to their mean."""
    s = np.asarray(s, np.float64)
    mean = s.mean(0)
    num = s @ mean
    den = np.linalg.norm(s, axis=1) * max(np.linalg.norm(mean), 1e-30)
    return float(np.mean(num / np.maximum(den, 1e-30)))


def pairwise_cosine(e: np.ndarray) -> float:
    """Mean cosine between distinct rows of ``e (M, d)`` (NaN with fewer than two rows)."""
    e = np.asarray(e, np.float64)
    if e.shape[0] < 2:
        return float("nan")
    u = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-30)
    c = u @ u.T
    m = e.shape[0]
    return float((c.sum() - np.trace(c)) / (m * (m - 1)))


def modality_purity(s: np.ndarray, modality: np.ndarray, max_samples: int = 2000, seed: int = 0) -> float:
    """Leave-one-out 1-nearest-neighbour (cosine, after centring) modality agreement."""
    s, modality = np.asarray(s, np.float64), np.asarray(modality)
    if np.unique(modality).size < 2 or s.shape[0] < 2:
        return float("nan")
    if s.shape[0] > max_samples:
        keep = np.random.default_rng(seed).choice(s.shape[0], max_samples, replace=False)
        s, modality = s[keep], modality[keep]
    c = s - s.mean(0)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-30)
    sim = c @ c.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(modality[np.argmax(sim, axis=1)] == modality))


def random_bank(bank: bank_lib.Bank, key: jax.Array) -> bank_lib.Bank:
    """``bank`` with every valid slot replaced by a random unit vector (same norm as before)."""
    noise = jax.random.normal(key, bank.embeddings.shape, bank.embeddings.dtype)
    noise = noise / jnp.linalg.norm(noise, axis=-1, keepdims=True)
    norm = jnp.linalg.norm(bank.embeddings, axis=-1, keepdims=True)
    return bank._replace(embeddings=jnp.where(bank.valid[:, None], noise * norm, 0.0))


def _find(tree: Any, name: str):
    """The first sown value called ``name`` in an intermediates tree (None if absent)."""
    if isinstance(tree, dict):
        if name in tree:
            v = tree[name]
            return v[0] if isinstance(v, tuple) else v
        for sub in tree.values():
            found = _find(sub, name)
            if found is not None:
                return found
    return None


def _masked_mean(a, mask):
    w = mask.astype(a.dtype).reshape((-1,) + (1,) * (a.ndim - 1))
    return jnp.sum(a * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)


def make_diagnostics(algorithm, task, data, *, max_per_client: int = 128, seed: int = 0):
    """``diagnose(state) -> {name: float}`` (:data:`NAMES`; NaN where not defined) for an
    OmniFM ``algorithm`` (one with ``inspect``) on the split ``data`` (host ClientArrays)."""
    if getattr(algorithm, "inspect", None) is None:
        raise ValueError(f"algorithm {algorithm.name!r} cannot be inspected (no inspect function)")
    n = np.asarray(data.n).astype(np.int64)
    offsets = np.asarray(data.offsets).astype(np.int64)
    width = int(max(1, min(max_per_client, n.max(initial=1))))
    counts = np.minimum(n, width)
    rows = np.stack([offsets[k] + np.minimum(np.arange(width), max(counts[k] - 1, 0)) for k in range(n.size)])
    masks = np.arange(width)[None, :] < counts[:, None]
    modality = np.asarray(data.modality)
    inspect = algorithm.inspect

    @jax.jit
    def one_client(state, c, x_raw, y_raw, mask, key):
        client = jax.tree_util.tree_map(lambda a: a[c], state.clients)
        server = state.server
        x, y = task.scale_inputs(x_raw), task.prepare_targets(y_raw)
        out, aux, inter = inspect(server, client, x, mask)
        z = _find(inter, "z")
        attn, attn_valid = _find(inter, "attention"), _find(inter, "attention_valid")
        from omnifm_jax.models.omnifm import Probe

        k_bank, k_perm = jax.random.split(key)
        out_zc, _, _ = inspect(server, client, x, mask, probe=Probe(z=_masked_mean(z, mask)))
        out_br, _, _ = inspect(server, client, x, mask, context=random_bank(server.algorithm_state, k_bank))
        # a permutation of the real samples (the first ones) among themselves; padding stays
        perm = jnp.argsort(jnp.where(mask, jax.random.uniform(k_perm, mask.shape), 2.0 + jnp.arange(mask.size)))
        out_ss, _, _ = inspect(server, client, x, mask, probe=Probe(s_permutation=perm))
        stats = [task.eval_stats(task.predict(o, x), y) for o in (out, out_zc, out_br, out_ss)]
        flat = lambda o: o.reshape(o.shape[0], -1).astype(jnp.float32)  # noqa: E731
        w = mask.astype(jnp.float32)
        num = jnp.sum(w * jnp.sum(jnp.square(flat(out) - flat(out_zc)), -1))
        den = jnp.sum(w * jnp.sum(jnp.square(flat(out) - _masked_mean(flat(out), mask)), -1))
        return {"stats": stats, "s": aux.s, "indices": aux.indices, "attn": attn, "attn_valid": attn_valid,
                "num": num, "den": den}

    def diagnose(state) -> Dict[str, float]:
        key = jax.random.key(seed)
        outs = []
        for k in range(n.size):  # diagnostics only: one compiled function, clients one by one
            if counts[k] == 0:
                continue
            outs.append((k, jax.device_get(one_client(state, k, data.x[rows[k]], data.y[rows[k]], masks[k],
                                                      jax.random.fold_in(key, k)))))
        if not outs:
            return {name: float("nan") for name in NAMES}
        sel = [masks[k] for k, _ in outs]
        s = np.concatenate([o["s"][m] for (_, o), m in zip(outs, sel)])
        mod = np.concatenate([modality[rows[k]][m] for (k, _), m in zip(outs, sel)])
        idx = np.concatenate([o["indices"][m] for (_, o), m in zip(outs, sel)])
        bank = jax.device_get(state.server.algorithm_state)
        valid = np.asarray(bank.valid)
        result = {
            "diag/s_cos_to_mean": mean_cosine_to_mean(s),
            "diag/s_modality_purity": modality_purity(s, mod),
            "diag/bank_pairwise_cos": pairwise_cosine(np.asarray(bank.embeddings)[valid]),
            "diag/bank_valid": float(valid.sum()),
            "diag/bank_distinct": float(np.unique(idx[idx >= 0]).size),
            "diag/z_logit_share": float(sum(o["num"] for _, o in outs) / max(sum(o["den"] for _, o in outs), 1e-30)),
        }
        if outs[0][1]["attn"] is not None:
            # attention (B, h, L, k) and its valid keys (B, k), real samples only
            ratios = [attention_entropy_ratio(o["attn"][m], o["attn_valid"][m][:, None, None, :])
                      for (_, o), m in zip(outs, sel)]
            result["diag/attn_entropy_ratio"] = float(np.nanmean(ratios)) if np.isfinite(ratios).any() else float("nan")
        else:
            result["diag/attn_entropy_ratio"] = float("nan")
        sub_counts = np.array([m.sum() for m in sel])
        for i, name in enumerate(("acc_normal", "acc_z_constant", "acc_bank_random", "acc_s_shuffled")):
            stats = jax.tree_util.tree_map(lambda *a: np.concatenate(a),
                                           *[jax.tree_util.tree_map(lambda a: np.asarray(a)[m], o["stats"][i])
                                             for (_, o), m in zip(outs, sel)])
            result[f"diag/{name}"] = float(task.summarize(stats, sub_counts)[task.primary_metric])
        return {k: result.get(k, float("nan")) for k in NAMES}

    return diagnose


def omnifm_diagnostics(algorithm, task, state, data, *, max_per_client: int = 128, seed: int = 0) -> Dict[str, float]:
    """The diagnostics of one state (see the module docstring), e.g. in a notebook::

        from omnifm_jax.diagnostics import omnifm_diagnostics
        omnifm_diagnostics(algorithm, task, summary["state"], fed.test)
    """
    return make_diagnostics(algorithm, task, data, max_per_client=max_per_client, seed=seed)(state)


def diagnostics_due(setting: Any, algorithm_name: str, round_: int, last: bool) -> bool:
    """Whether the config's ``diagnostics`` asks for them at evaluation round ``round_``:
    ``"auto"`` every evaluation round of an OmniFM run, 0 never, N > 0 at round 1, every N-th
    round and the last (OmniFM only)."""
    if algorithm_name != "omnifm" or setting == 0 or round_ < 1:
        return False
    if setting == "auto":
        return True
    return round_ == 1 or round_ % int(setting) == 0 or last


__all__ = ["NAMES", "make_diagnostics", "omnifm_diagnostics", "diagnostics_due", "attention_entropy_ratio",
           "pairwise_cosine", "mean_cosine_to_mean", "modality_purity", "random_bank"]
