"""GPFL (Zhang et al., ICCV 2023, "GPFL: Simultaneously Learning Global and Personalized
Feature Information for Personalized Federated Learning"), as PFLlib implements it.

The model: ``feat = base(x)`` (the backbone's tokens averaged: FedAvgCNN's fc1 output), a
Conditional Valve ``CoV(feat, ctx) = ReLU(feat * (gamma(ctx) + 1) + beta(ctx))`` with
``gamma, beta = LayerNorm(ReLU(Linear(ctx)))``, a Global Category Embedding (``GCE``: one
``d``-vector per class, N(0, 1) at init), and the head on the personalised feature
``CoV(feat, c_personal)``. Local loss per batch:
``CE(head(CoV(feat, c_personal)), y) + CE(cos(CoV(feat, c_generic), GCE), y)
+ lambda_reg * ||CoV(feat, c_generic) - GCE_frozen[y]||_F`` (the Frobenius norm of the batch's
matrix, not squared; ``GCE_frozen``: the global GCE the round started from): ``lambda_reg``
weighs this regulariser, the paper's magnitude-level global guidance. GCE and CoV get weight
decay ``weight_decay`` (PFLlib's ``SGD(weight_decay=mu)``); base and head none. Shared (n_k-
weighted): base, CoV, GCE; personal: the head and the two conditional inputs. After a round a
participant sets ``c_generic = mean_l E_l`` and ``c_personal = sum_l E_l p_l`` from its own
trained GCE ``E`` and its class proportions ``p`` (PFLlib's ``set_GCE``, before the global GCE
overwrites it).

Where this differs from PFLlib: PFLlib rebuilds every client's conditional inputs each round
(a client not selected takes them from the previous global GCE) and evaluates before
training; here a client's inputs change when it participates, and it is evaluated after the
round. Class proportions are over all of a client's training samples (PFLlib counts one
``drop_last`` pass, leaving out a random remainder). Defaults: PFLlib's ``-lam 1.0``,
``-mu 0.0``; GPFL's own scripts use ``lamda=0.01, mu=0.1`` for small CNNs.

Names: ``lambda_reg`` is PFLlib's ``-lam`` (``lamda``) and ``weight_decay`` its ``-mu``,
renamed here (``mu`` is the proximal weight of FedProx and Ditto); the old names are refused,
naming the new ones.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax import checks
from omnifm_jax.algorithms import labels
from omnifm_jax.algorithms.local_training import masked_mean
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.common import TokenLayout

__all__ = ["SHARED_EXTRAS", "ConditionalValve", "GPFLModel", "gce_loss", "conditional_inputs", "validate",
           "gpfl"]

SHARED_EXTRAS = r"^params/(gce|cov)/"


class ConditionalValve(nn.Module):
    """``ReLU(x * (gamma(ctx) + 1) + beta(ctx))``, ``gamma/beta = LayerNorm(ReLU(Dense(ctx)))``."""

    @nn.compact
    def __call__(self, x, ctx):
        d = x.shape[-1]
        gamma = nn.LayerNorm(epsilon=1e-5, name="gamma_norm")(nn.relu(nn.Dense(d, name="gamma")(ctx)))
        beta = nn.LayerNorm(epsilon=1e-5, name="beta_norm")(nn.relu(nn.Dense(d, name="beta")(ctx)))
        return nn.relu(x * (gamma + 1.0) + beta)


class GPFLModel(nn.Module):
    """``(x, (c_generic, c_personal)) -> (logits, {"feat_g": f32[B, d]})``; contexts None: zeros."""
    backbone: nn.Module
    head: nn.Module
    num_classes: int

    @nn.compact
    def __call__(self, x, context=None, *, train: bool = False, mask=None):
        r = self.backbone(x, train=train, mask=mask)
        if isinstance(r, tuple):
            raise ValueError("gpfl needs a token backbone; this one returns (tokens, skips) (an encoder pyramid "
                             "such as the UNet, for segmentation): GPFL is classification-only")
        feat = jnp.mean(r.astype(jnp.float32), axis=-2)
        d = feat.shape[-1]
        self.param("gce", nn.initializers.normal(1.0), (self.num_classes, d))
        c_generic, c_personal = context if context is not None else (jnp.zeros((d,)), jnp.zeros((d,)))
        cov = ConditionalValve(name="cov")
        feat_p = cov(feat, c_personal)
        feat_g = cov(feat, c_generic)
        layout = TokenLayout(0, 1, 0, x.shape[-3:-1])
        out = self.head(feat_p[:, None, :], layout=layout, train=train)
        return out, {"feat_g": feat_g}


def _unit_rows(a, eps=1e-12):
    return a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)


def gce_loss(feat_g, embedding, y):
    """Per-sample cross-entropy of the cosine similarities to the class embeddings (no temperature)."""
    cos = _unit_rows(feat_g) @ _unit_rows(embedding).T
    return jax.nn.logsumexp(cos, axis=-1) - jnp.take_along_axis(cos, y[:, None], axis=-1)[:, 0]


def conditional_inputs(embedding, proportions):
    """``(mean_l E_l, sum_l E_l p_l)`` (PFLlib's ``set_GCE``)."""
    return jnp.mean(embedding, axis=0), proportions @ embedding


def validate(hp, context):
    del context
    checks.finite("lambda_reg", hp["lambda_reg"], positive=False)
    checks.finite("weight_decay", hp["weight_decay"], positive=False)


@register("gpfl", validate=validate, tasks=("classification",), renamed={"lamda": "lambda_reg", "mu": "weight_decay"})
def gpfl(*, task, backbone, optimizer, local_epochs, batch_size,
         weight_init="flax", drop_last=True, aggregate_bn_stats=False,
         lambda_reg: float = 1.0, weight_decay: float = 0.0):
    """GPFL; classification only (the GCE needs class labels)."""
    head = task.make_head()
    num_classes = getattr(head, "num_classes", None)
    if task.name != "classification" or not num_classes:
        raise checks.ConfigError("gpfl needs the classification task (its global category embedding is per class)")
    model = GPFLModel(backbone=backbone, head=head, num_classes=num_classes)

    def init_client_algorithm_state(key, server_state, variables):
        del key, server_state
        d = variables["params"]["gce"].shape[-1]
        return {"generic": jnp.zeros((d,)), "personal": jnp.zeros((d,)), "proportions": jnp.zeros((num_classes,))}

    def download(server, client, data, key):
        del key
        variables = labels.combine(server.params, client.personal)
        rows = jnp.arange(data.capacity)
        y = data.y[jnp.minimum(data.offset + rows, data.y.shape[0] - 1)]
        counts = jnp.zeros((num_classes,)).at[y].add((rows < data.n).astype(jnp.float32))
        return variables, dict(client.algorithm_state, proportions=counts / jnp.maximum(jnp.sum(counts), 1.0))

    def loss_terms(inputs):
        feat_g = inputs.aux["feat_g"]
        y = inputs.y
        frozen = jax.lax.stop_gradient(inputs.global_params["gce"][y])
        per_sample = gce_loss(feat_g, inputs.params["gce"], y)
        dist = jnp.sqrt(jnp.sum(jnp.where(inputs.mask[:, None], (feat_g - frozen) ** 2, 0.0)) + 1e-30)
        return masked_mean(per_sample, inputs.mask) + lambda_reg * dist, {}

    def grad_transform(grads, params, server_state, client_state):
        del server_state, client_state
        decay = lambda g, p: g + weight_decay * p
        return {k: (jax.tree_util.tree_map(decay, grads[k], params[k]) if k in ("gce", "cov") else grads[k])
                for k in grads}

    def finish(inputs):
        generic, personal = conditional_inputs(inputs.variables["params"]["gce"], inputs.client["proportions"])
        return dict(inputs.client, generic=generic, personal=personal), None

    return personalized_sgd(name="gpfl", model=model, task=task, optimizer=optimizer,
                            personal_patterns=(r"^params/head/",), local_epochs=local_epochs, batch_size=batch_size,
                            weight_init=weight_init,
                            drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats,
                            init_client_algorithm_state=init_client_algorithm_state, download=download,
                            model_context=lambda server_state, client_state: (
                                None if client_state is None else (client_state["generic"], client_state["personal"])),
                            loss_terms=loss_terms, grad_transform=grad_transform, finish=finish)
