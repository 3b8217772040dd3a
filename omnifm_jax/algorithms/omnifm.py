"""OmniFM (the paper's full method): GSKR + ECA + PSP with the SPAlign objective (Eq. 6).

Local objective for one batch (Eq. 6):
    L = L_task(h([Z || r || c]), y) + lambda * mean_i ||s_i - mean_k S_g,i||^2
Server state: the shared parameters and the knowledge bank (:mod:`omnifm_jax.bank`).

Per round, each participant uploads (a) its trained shared parameters, (b) ONE spectral
embedding, the L2-normalised mean of the spectral tokens it computed during local
training, with a flag saying whether it computed any (a client that ran no step --
``drop_last`` with fewer samples than a batch -- has none), and (c) how often it
retrieved each bank slot. The server then
  1. averages the shared parameters weighted by n_k;
  2. sets the bank's retrieval frequency (Eq. 8's freq) to this round's counts
     (``hit_decay=0``; ``hit_decay=1`` accumulates them over all rounds);
  3. prunes prototypes retrieved fewer than ``min_hits`` times once they are
     ``prune_warmup`` rounds old (Eq. 8);
  4. ages the bank by one round;
  5. inserts the new embeddings (only flagged ones of accepted participants) and
     projects onto B(rho) (Eq. 7).
At round 0 the bank is empty: clients retrieve nothing (Z = 0, no alignment term) and
their uploads seed it, K^(0) = {s_k^(0)} (all K clients at full participation).

Switches beyond the paper's text (defaults: the paper's reading; the mechanism study in docs/method.md
measures them on real4):
  * ``spectrum_norm="batch"``: per-bin standardisation of the low-pass spectrum before the
    tokenizer's MLP (the DC and lowest bins, shared by all images, otherwise make every ``s``
    point the same way: mean cosine 0.997 to the mean token on real4);
  * ``upload="class_means"``: each participant uploads the normalised mean ``s`` of every class
    it trained on (flagged where it saw none) instead of one mean over all its samples;
  * ``eca_keys="scaled"`` / ``"centered"``: ECA's keys lifted from unit norm to unit entries,
    optionally after removing the bank's mean direction (at unit norm ECA stays uniform and its
    output nearly constant: replacing it by a constant changed nothing);
  * ``eca_temperature="learned"``: a per-head temperature on ECA's logits (starting at the
    paper's 1/sqrt(d_h)), so that attention can sharpen;
  * ``eca_logit_scale > 1``: a fixed factor on ECA's logits that forces sharper attention;
  * ``lambda_uniform > 0``: a uniformity term on ``s`` (:func:`uniformity`) against the collapse
    that SPAlign alone permits.

Sharing modes (``sharing``):
  * ``"fedper"`` (default): backbone, spectral tokenizer and ECA (or the ablations' FiLM /
    projection) are aggregated; the task head and the suffix prompt tokens ``c`` stay personal;
  * ``"bank_only"``: no parameter is shared; clients share only spectral embeddings
    through the bank (the paper's Sec. 3.3 reading);
  * ``"full"``: every parameter is aggregated, suffix prompts included.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from omnifm_jax import bank as bank_lib
from omnifm_jax import checks
from omnifm_jax.algorithms.local_training import masked_mean
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import OmniFM
from omnifm_jax.modules import spectral_alignment
from omnifm_jax.spectral import l2_normalize

__all__ = ["SPECTRUM_NORMS", "UPLOADS", "ECA_KEYS", "ECA_TEMPERATURES", "SHARING", "uniformity", "validate",
           "omnifm"]

SPECTRUM_NORMS = ("none", "batch")
UPLOADS = ("mean", "class_means")
ECA_KEYS = ("unit", "scaled", "centered")
ECA_TEMPERATURES = ("fixed", "learned")

SHARING = {
    "fedper": (r"^params/head/", r"^params/prompt/"),
    "bank_only": (r".*",),
    "full": (),
}


def uniformity(s: jax.Array, mask: jax.Array, t: float = 2.0) -> jax.Array:
    """Wang & Isola's (2020) uniformity loss ``log mean_{i != j} exp(-t ||s_i - s_j||^2)`` over
    the batch's real samples: lowest when the unit-norm tokens spread over the sphere, highest
    (0) when they all coincide. ``lambda_uniform`` adds it to the local objective against the
    collapse of ``s`` that SPAlign alone allows."""
    w = mask.astype(jnp.float32)
    pair = w[:, None] * w[None, :] * (1.0 - jnp.eye(s.shape[0], dtype=jnp.float32))
    d2 = jnp.sum(jnp.square(s[:, None, :] - s[None, :, :]), axis=-1)
    total = jnp.sum(pair * jnp.exp(-t * d2))
    return jnp.where(jnp.sum(pair) > 0, jnp.log(jnp.maximum(total, 1e-30) / jnp.maximum(jnp.sum(pair), 1.0)), 0.0)


def validate(hp, context):
    """OmniFM's hyper-parameters; ``context["participants"]``: uploads per round."""
    checks.choice("sharing", hp["sharing"], sorted(SHARING))
    for key in ("top_k", "bank_capacity", "spectral_dim", "attn_dim", "num_heads"):
        checks.integer(key, hp[key], 1)
    for key in ("num_suffix", "min_hits", "prune_warmup"):
        checks.integer(key, hp[key], 0)
    for key in ("log_magnitude", "use_gskr", "use_eca", "use_psp", "local_spectral_in_eca"):
        checks.boolean(key, hp[key])
    checks.choice("spectrum_norm", hp["spectrum_norm"], SPECTRUM_NORMS)
    checks.choice("upload", hp["upload"], UPLOADS)
    checks.choice("eca_keys", hp["eca_keys"], ECA_KEYS)
    checks.choice("eca_temperature", hp["eca_temperature"], ECA_TEMPERATURES)
    checks.finite("lambda_uniform", hp["lambda_uniform"], positive=False)
    checks.finite("eca_logit_scale", hp["eca_logit_scale"], positive=True)
    checks.interval("low_pass_ratio", hp["low_pass_ratio"], 0, 1, lo_open=True, hi_open=False)
    checks.interval("hit_decay", hp["hit_decay"], 0, 1, lo_open=False, hi_open=False)
    checks.finite("rho", hp["rho"], positive=True)
    checks.finite("lambda_align", hp["lambda_align"], positive=False)
    checks.require(hp["top_k"] <= hp["bank_capacity"],
                   f"top_k={hp['top_k']} is larger than bank_capacity={hp['bank_capacity']}")
    checks.require(hp["attn_dim"] % hp["num_heads"] == 0,
                   f"attn_dim={hp['attn_dim']} is not divisible by num_heads={hp['num_heads']}")
    m = context.get("participants")
    checks.require(m is None or m <= hp["bank_capacity"],
                   f"{m} participants per round upload more embeddings than bank_capacity={hp['bank_capacity']}")


@register("omnifm", validate=validate)
def omnifm(*, task, backbone, optimizer, local_epochs, batch_size,
           weight_init="flax", lambda_align: float = 0.1,
           top_k: int = 2, bank_capacity: int = 256, rho: float = 1.0, min_hits: int = 1,
           prune_warmup: int = 2, low_pass_ratio: float = 0.25, log_magnitude: bool = True,
           spectral_dim: int = 64, attn_dim: int = 64, num_heads: int = 1, num_suffix: int = 4,
           sharing: str = "fedper", use_gskr: bool = True, use_eca: bool = True, use_psp: bool = True,
           local_spectral_in_eca: bool = True, hit_decay: float = 0.0, spectrum_norm: str = "none",
           upload: str = "mean", lambda_uniform: float = 0.0, eca_keys: str = "unit", eca_temperature: str = "fixed",
           eca_logit_scale: float = 1.0, drop_last: bool = True,
           aggregate_bn_stats: bool = False, num_clients: int = 1):
    """OmniFM. Table 8 ablations: ``use_gskr=False``, ``use_eca=False``, ``use_psp=False``,
    and ``lambda_align=0`` (w/o SPAlign). ``local_spectral_in_eca``: ECA attends to the local
    spectral token too (see :class:`~omnifm_jax.models.omnifm.OmniFM`); ``hit_decay``: see
    :func:`~omnifm_jax.bank.add_hits`; ``sharing``: see the module docstring.

    Switches beyond the paper's text (defaults = the paper; see the module docstring):
    ``spectrum_norm``, ``upload``, ``lambda_uniform``, ``eca_keys``, ``eca_temperature``,
    ``eca_logit_scale``."""
    head = task.make_head()
    slots = 1
    if upload == "class_means":
        slots = getattr(head, "num_classes", None)
        checks.require(slots is not None, f"upload='class_means' needs a classification task, got {task.name!r}")
        checks.require(num_clients * slots <= bank_capacity,
                       f"upload='class_means': {num_clients} clients x {slots} classes can upload "
                       f"{num_clients * slots} embeddings in a round, more than bank_capacity={bank_capacity}; "
                       f"raise bank_capacity to >= {num_clients * slots}")
    model = OmniFM(backbone=backbone, head=head, spectral_dim=spectral_dim, spectrum_norm=spectrum_norm,
                   eca_keys=eca_keys,
                   eca_temperature=eca_temperature, eca_logit_scale=eca_logit_scale,
                   low_pass_ratio=low_pass_ratio, log_magnitude=log_magnitude, attn_dim=attn_dim,
                   num_heads=num_heads, num_suffix=num_suffix, top_k=top_k, use_gskr=use_gskr,
                   use_eca=use_eca, use_psp=use_psp, local_spectral_in_eca=local_spectral_in_eca)

    def init_algorithm_state(key):
        del key
        return bank_lib.init(bank_capacity, spectral_dim)

    def loss_terms(inputs):
        aux, mask = inputs.aux, inputs.mask
        align = masked_mean(spectral_alignment(aux.s, aux.prototypes, aux.valid), mask)
        w = mask.astype(jnp.float32)
        s = jax.lax.stop_gradient(aux.s)
        if upload == "class_means":  # per-class sums: (C, d) and (C,)
            onehot = jax.nn.one_hot(inputs.y, slots, dtype=jnp.float32) * w[:, None]
            s_sum, count = onehot.T @ s, jnp.sum(onehot, axis=0)
        else:
            s_sum, count = jnp.sum(s * w[:, None], axis=0)[None], jnp.sum(w)[None]
        stats = {
            "hits": bank_lib.hit_counts(inputs.server.capacity, aux.indices, mask[:, None].astype(jnp.int32)),
            "s_sum": s_sum,
            "count": count,
            "align": align * jnp.sum(w),
        }
        extra_loss = lambda_align * align
        if lambda_uniform > 0:
            extra_loss = extra_loss + lambda_uniform * uniformity(aux.s, mask)
        return extra_loss, stats

    def finish(inputs):
        stats = inputs.stats
        embedding = l2_normalize(stats["s_sum"] / jnp.maximum(stats["count"], 1.0)[:, None])
        has = stats["count"] > 0
        if slots == 1:  # the paper's upload: ONE embedding f32[d]
            embedding, has = embedding[0], has[0]
        return inputs.client, {"embedding": embedding, "has_embedding": has, "hits": stats["hits"]}

    def update_algorithm_state(bank, up, weights):
        ok = weights > 0
        hits = jnp.sum(jnp.where(ok[:, None], up["hits"], 0), axis=0)
        bank = bank_lib.add_hits(bank, hits, decay=hit_decay)
        bank = bank_lib.prune(bank, min_hits=min_hits, warmup=prune_warmup)
        bank = bank_lib.tick(bank)
        # uploads (P, U, d) with U = 1 (the mean) or the number of classes
        flags = ok[:, None] & up["has_embedding"].reshape(ok.shape[0], -1)
        return bank_lib.insert(bank, up["embedding"].reshape(-1, spectral_dim), rho=rho, mask=flags.reshape(-1))

    return personalized_sgd(name="omnifm", model=model, task=task, optimizer=optimizer,
                            personal_patterns=SHARING[sharing], local_epochs=local_epochs, weight_init=weight_init,
                            batch_size=batch_size, drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats,
                            init_algorithm_state=init_algorithm_state, model_context=lambda bank, client_state: bank,
                            loss_terms=loss_terms, finish=finish, update_algorithm_state=update_algorithm_state)
