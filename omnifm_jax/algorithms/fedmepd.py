"""FedMEPD (Wei et al., MedIA 2025, "Federated Modality-specific Encoders and Partially
Personalized Fusion Decoder for Multimodal Brain Tumor Segmentation"), from the ABSTRACT
only (the full paper was not available): every choice the abstract leaves open is stated
here and is a keyword argument.

Built on :func:`~omnifm_jax.algorithms.sgd.personalized_sgd` (its hooks express all of it):
``download`` (partial personalisation of the decoder, the client's modality mask from its
data), ``finish`` (the client keeps its trained decoder and its local update), ``aggregate``
(per-modality encoder means, then the server's own training and the anchors), and
``init_server`` wrapped to compute the first anchors, and ``predict`` replaced so that a client
is evaluated with its personalised decoder.

Model (:class:`FedMEPDModel`, segmentation only; its output are per-pixel logits
``(B, H, W, C)`` that the ``segmentation`` task's ``predict``/``loss`` (Dice + CE) take as
they are, so no task head is used):

* one small conv encoder per modality (``enc0``, ``enc1``, ...), each reading ONE input
  channel: level 0 a 3x3 conv at full resolution, level ``i`` a stride-2 3x3 conv, ReLU,
  widths ``channels``; the deepest level is the bottleneck;
* presence per SAMPLE and modality is read from the input: a modality is present iff its
  channel is not constant over the image (the loaders zero an absent sequence; real MRI
  slices are never constant; this holds under any affine input scaling). No Python branch
  per client: a client's subset is a mask, derived from its data;
* fusion: at every level the masked mean of the encoders' features over the PRESENT
  modalities (``jnp.where``: an absent modality's encoder gets exactly zero gradient);
* calibration (``calibrate_missing=True``) at the bottleneck: scaled dot-product
  cross-attention from each pixel's fused feature (query: a bias-free linear map
  ``calib_q`` to ``attn_dim``) to the server's anchors (key: ``calib_k`` of the anchors,
  value the anchors themselves, so the result lies in the span of the full-modal anchors):
  ``a = softmax(q k^T / sqrt(attn_dim)) anchors``; with
  ``r`` the fraction of missing modalities of the sample, ``fused' = (1 - r) fused + r a``
  (the missing share of the representation is replaced by its full-modal estimate), and
  ``fused' = fused`` EXACTLY (``jnp.where``) when nothing is missing;
* decoder: from the bottleneck up, nearest x2 up-sampling, concatenation with the fused
  skip of that level, 3x3 conv + ReLU (``dec<i>``), then a 1x1 conv to the classes
  (``out``). Every conv's output channel is a "filter" for personalisation.

Shared and personal: everything is uploaded (encoders, decoder, calibration projections).
A client's upload of encoder ``m`` counts only if the client has modality ``m`` (it also
uploads its modality mask, float ``[M]``, a fact the server needs to weight the encoders):
the server's encoder ``m`` is the ``n_k``-weighted mean over the participants that have
``m`` (unchanged when none has it); the decoder and the calibration projections are the
``n_k``-weighted mean over all participants (FedAvg).

Decoder partial personalisation (``personalize=True``): at download in round ``t`` a
client compares, per decoder filter ``f`` (the kernel's output channel ``f`` with its bias,
flattened), its own last local update ``dl_f = trained_{t-1} - start_{t-1}`` with the
server's last global update ``dg_f = global_t - global_{t-1}`` (aggregation plus server
training). Discrepancy ``d_f = 1 - cos(dl_f, dg_f)`` in ``[0, 2]`` (0 when either update is
zero, e.g. before a client has trained). Filters with ``d_f > personalize_threshold``
(default 1.0: the local update points away from the global one, ``cos < 0``) keep the
client's own trained values; the others take the global values. Why cosine: it is scale
free (local updates are ``E`` local steps, the global one an average plus server steps),
and the threshold has a fixed meaning. ``personalize=False``: every filter global.

Patience (``personalize_patience``, default 0; the official code, ``ccarliu/FedMEPD``, uses
10 after 30 warm-up rounds): with ``P >= 1`` a filter is personal only once its discrepancy
has exceeded the threshold in ``P`` consecutive rounds of that client, and then stays
personal for good (a per-filter counter in the client's state starts at ``P``, drops by one
in a round over the threshold, resets to ``P`` otherwise; personal when it reaches 0). With
``P = 0`` the rule above applies afresh every round. ``personalize_after``: rounds before
this one keep every filter global and leave the counters alone (default 0).

Server (``server_steps``, ``server_lr``, ``server_batch_size``): after aggregation, the
server trains encoders + fusion decoder on its full-modal set for ``server_steps`` plain
SGD steps of the task loss inside the jitted round (minibatches of a per-round permutation
``fold_in(key(server_seed), round)``). The engine hands the server update only the
uploads, so the server's set lives in the server state's algorithm slot
(``ServerState.algorithm_state["data_x"]``/``["data_y"]``, uint8; it is part of the server
state, never in an upload or a download: a client's update reads only ``anchors`` and
``delta_global`` from it). ``server``: the federation's server split
(:class:`~omnifm_jax.data.federation.ServerData` ``(x uint8[Ns, H, W, M], y uint8[Ns, H, W, 1])``,
or such a pair), which a run passes from ``Federation.server``: the ``lgg_multimodal_seg`` /
``brats_multimodal_seg`` loaders hold the server's full-modal patients out of every client and
return them there, so the algorithm loads no data itself. None: refused (FedMEPD needs a
server with full-modal data), as is a server set with an all-zero channel.

Anchors (``num_anchors``): after the server's training, the fused full-modal bottleneck
features of ALL server images are averaged per spatial band: the ``h*w`` bottleneck
positions (row-major) are cut into ``num_anchors`` contiguous equal bands, anchor ``j`` is
the mean feature over band ``j`` and all server images. Why: no k-means iterations inside
the jit (deterministic, one forward pass), brain slices are roughly aligned so location
bands carry anatomical context, and class-conditional pooling would give only 2 anchors for
a binary mask. The first anchors come from the initial model (in ``init_server``).

Defaults: ``channels=(8, 16, 32)``, ``attn_dim=16``, ``num_anchors=4``,
``personalize_threshold=1.0``, ``personalize_patience=0``, ``personalize_after=0``,
``server_steps=5``, ``server_lr=0.01``,
``server_batch_size=8``, ``server_seed=0`` (``omnifm_jax/configs/fedmepd_lgg.py`` uses
``channels=(8, 16, 32, 64)``). The run's ``backbone`` is not used (the engine still builds
it to check the input size).

How the official code (``github.com/ccarliu/FedMEPD``, read after this module was written
from the abstract) differs; only the patience rule has been adopted, as an option:

* network: RFNet in 3D (80^3 crops), encoders 16..128 wide, a region-aware fusion decoder
  and an auxiliary decoder per modality, each with a Dice + weighted-CE loss; here a small
  2D conv encoder per modality, a UNet-style decoder and the task's Dice + CE only;
* anchors: per class and decoder scale, masked average pooling per server case, k-means
  (k = 4) over cases at round 0, then an EMA (0.999) of the cluster means; calibration at
  all 4 scales with multi-head attention, the result replacing the feature; here 4
  band-pooled anchors at the bottleneck, one head, mixed in by the missing fraction;
* personalisation: cosine of the filters' server and client updates, patience 10 after 30
  warm-up rounds (``personalize_patience=10, personalize_after=30`` here), and per-filter
  aggregation weights from the ratio of update norms; here plain ``n_k`` weights;
* server: one epoch of its full-modal set per round (Adam); here ``server_steps`` SGD steps.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms import aggregation
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import ServerState, personalized_sgd
from omnifm_jax.models.common import Conv

__all__ = ["fedmepd", "validate", "FedMEPDModel", "ModalityEncoder", "modality_presence", "masked_fusion", "calibrate",
           "extract_anchors", "filter_discrepancy", "personal_filters", "mix_filters", "patience_step",
           "personalized_decoder", "decoder_keys", "decoder_of"]


# ----------------------------------------------------------------------------- model

def modality_presence(x: jax.Array) -> jax.Array:
    """``bool[B, M]``: channel ``m`` of sample ``b`` is not constant over the image."""
    return jnp.max(x, axis=(-3, -2)) > jnp.min(x, axis=(-3, -2))


def masked_fusion(feats: jax.Array, present: jax.Array) -> jax.Array:
    """Mean of ``feats [M, B, h, w, c]`` over the present modalities ``present bool[B, M]``."""
    p = present.T[:, :, None, None, None]
    total = jnp.sum(jnp.where(p, feats, 0.0), axis=0)
    count = jnp.sum(present, axis=-1).astype(feats.dtype)[:, None, None, None]
    return total / jnp.maximum(count, 1.0)


def calibrate(fused: jax.Array, anchors: jax.Array, q_kernel: jax.Array, k_kernel: jax.Array,
              missing_fraction: jax.Array) -> jax.Array:
    """Cross-attention calibration of the bottleneck ``fused (B, h, w, d)`` toward
    ``anchors (A, d)``; exactly ``fused`` for samples with ``missing_fraction == 0``."""
    q = fused @ q_kernel                          # (B, h, w, a)
    k = anchors @ k_kernel                        # (A, a)
    att = jax.nn.softmax(jnp.einsum("bhwa,na->bhwn", q, k) / math.sqrt(q.shape[-1]), axis=-1)
    est = jnp.einsum("bhwn,nd->bhwd", att, anchors)
    r = missing_fraction[:, None, None, None]
    return jnp.where(r > 0, (1.0 - r) * fused + r * est, fused)


class ModalityEncoder(nn.Module):
    """One channel -> feature maps per level (level 0 full resolution, then stride 2)."""
    channels: Sequence[int]

    @nn.compact
    def __call__(self, x):
        feats = []
        y = x
        for i, c in enumerate(self.channels):
            s = 1 if i == 0 else 2
            y = nn.relu(Conv(c, (3, 3), strides=(s, s), padding=1, name=f"conv{i}")(y))
            feats.append(y)
        return feats


class FedMEPDModel(nn.Module):
    """``(x (B, H, W, M), anchors (A, d) or None) -> (logits (B, H, W, C), aux)``."""
    num_modalities: int
    num_classes: int
    channels: Sequence[int] = (8, 16, 32)
    attn_dim: int = 16
    use_calibration: bool = True

    @nn.compact
    def __call__(self, x, context=None, *, train: bool = False, mask=None):
        del train, mask  # no batch statistics
        m = self.num_modalities
        if x.shape[-1] != m:
            raise ValueError(f"fedmepd: the model has {m} modality encoders, the input has {x.shape[-1]} channels")
        present = modality_presence(x)                                  # (B, M)
        levels = [ModalityEncoder(tuple(self.channels), name=f"enc{j}")(x[..., j:j + 1]) for j in range(m)]
        fused = [masked_fusion(jnp.stack([levels[j][i] for j in range(m)]), present)
                 for i in range(len(self.channels))]
        bottleneck = fused[-1]
        d = bottleneck.shape[-1]
        missing = 1.0 - jnp.mean(present.astype(jnp.float32), axis=-1)  # (B,)
        if self.use_calibration:
            qk = self.param("calib_q", nn.initializers.lecun_normal(), (d, self.attn_dim))
            kk = self.param("calib_k", nn.initializers.lecun_normal(), (d, self.attn_dim))
            anchors = context if context is not None else jnp.zeros((1, d), bottleneck.dtype)
            bottleneck = calibrate(bottleneck, anchors, qk, kk, missing)
        y = bottleneck
        for i in reversed(range(len(self.channels) - 1)):
            y = jnp.repeat(jnp.repeat(y, 2, axis=-3), 2, axis=-2)
            y = jnp.concatenate([fused[i], y], axis=-1)
            y = nn.relu(Conv(self.channels[i], (3, 3), padding=1, name=f"dec{i}")(y))
        logits = Conv(self.num_classes, (1, 1), name="out")(y)
        return logits.astype(jnp.float32), {"fused": fused[-1], "present": present}


def extract_anchors(fused: jax.Array, num_anchors: int) -> jax.Array:
    """``(N, h, w, d) -> (num_anchors, d)``: mean over images and each contiguous band of the
    row-major bottleneck positions."""
    n, h, w, d = fused.shape
    band = (jnp.arange(h * w) * num_anchors) // (h * w)                  # band of each position
    flat = fused.reshape(n, h * w, d)
    onehot = jax.nn.one_hot(band, num_anchors, dtype=fused.dtype)       # (hw, A)
    sums = jnp.einsum("npd,pa->ad", flat, onehot)
    return sums / (n * jnp.sum(onehot, axis=0))[:, None]


# ----------------------------------------------------------------------------- personalisation

def _filter_matrix(module: dict) -> jax.Array:
    """A conv module's ``kernel (..., c_out)`` and ``bias (c_out,)`` as ``(rows, c_out)``."""
    k = module["kernel"]
    parts = [k.reshape(-1, k.shape[-1])]
    if "bias" in module:
        parts.append(module["bias"][None, :])
    return jnp.concatenate(parts, axis=0)


def filter_discrepancy(delta_local: dict, delta_global: dict, eps: float = 1e-12) -> dict:
    """Per conv module of a decoder tree: ``1 - cos`` of each output filter's local and global
    update, ``f32[c_out]`` (0 where either update is zero)."""
    out = {}
    for name, mod in delta_local.items():
        a, b = _filter_matrix(mod), _filter_matrix(delta_global[name])
        na, nb = jnp.linalg.norm(a, axis=0), jnp.linalg.norm(b, axis=0)
        cos = jnp.sum(a * b, axis=0) / jnp.maximum(na * nb, eps)
        out[name] = jnp.where((na > 0) & (nb > 0), 1.0 - cos, 0.0)
    return out


def personal_filters(delta_local: dict, delta_global: dict, threshold: float) -> dict:
    """Per conv module: ``bool[c_out]``, True where the filter stays personal."""
    return {k: v > threshold for k, v in filter_discrepancy(delta_local, delta_global).items()}


def mix_filters(personal: dict, own: dict, glob: dict) -> dict:
    """The decoder with the personal filters from ``own`` and the rest from ``glob``."""
    return {name: {leaf: jnp.where(personal[name], own[name][leaf], glob[name][leaf]) for leaf in glob[name]}
            for name in glob}


def patience_step(over: dict, left: dict, patience: int, active) -> dict:
    """Per-filter patience counters after one round: ``left - 1`` where the discrepancy is
    over the threshold, ``patience`` where it is not, 0 for good once 0 (unchanged while
    ``active`` is False)."""
    return {k: jnp.where(active, jnp.where(left[k] <= 0, 0, jnp.where(over[k], left[k] - 1, patience)), left[k])
            for k in left}


def personalized_decoder(params: dict, client_state: dict, server_state: dict, *, personalize: bool,
                         threshold: float, patience: int = 0, after: int = 0):
    """The decoder a client starts a round from, how many filters stay personal, and the
    client's patience counters after this round (module docstring): its own trained filters
    where ``1 - cos(delta_local, delta_global) > threshold`` (with ``patience`` P >= 1: where
    that has held in P consecutive rounds, then for good), else the server's; every filter
    the server's when ``personalize`` is False or before round ``after``."""
    dec_global = decoder_of(params)
    left = client_state.get("patience_left")
    if not personalize:
        return dec_global, jnp.zeros((), jnp.int32), left
    active = server_state["round"] >= after
    over = personal_filters(client_state["delta_local"], server_state["delta_global"], threshold)
    if patience > 0:
        left = patience_step(over, left, patience, active)
        personal = {k: v <= 0 for k, v in left.items()}
    else:
        personal = {k: v & active for k, v in over.items()}
    count = sum(jnp.sum(v).astype(jnp.int32) for v in personal.values())
    return mix_filters(personal, client_state["decoder"], dec_global), count, left


def decoder_keys(params: dict) -> tuple:
    return tuple(sorted(k for k in params if k.startswith("dec") or k == "out"))


def decoder_of(params: dict) -> dict:
    """The decoder modules (``dec<i>``, ``out``) of a parameter tree."""
    return {k: params[k] for k in decoder_keys(params)}


# ----------------------------------------------------------------------------- the algorithm

def _server_arrays(server, num_classes: int):
    if server is None:
        raise checks.ConfigError("fedmepd needs a server with full-modal data: its federation carries no server "
                                 "split (Federation.server); use a data set that holds one out, e.g. "
                                 "dataset=lgg_multimodal_seg or brats_multimodal_seg")
    x, y = server
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4 or len(x) == 0:
        raise checks.ConfigError(f"fedmepd server data: x must be a non-empty uint8[Ns, H, W, M], got "
                                 f"{x.dtype}{list(x.shape)}")
    if y.shape != x.shape[:3] + (1,):
        raise checks.ConfigError(f"fedmepd server data: y must be uint8[Ns, H, W, 1] matching x, got {list(y.shape)}")
    const = x.reshape(len(x), -1, x.shape[-1])
    if (const.max(axis=1) == const.min(axis=1)).any():
        bad = sorted(set(np.argwhere(const.max(axis=1) == const.min(axis=1))[:, 1].tolist()))
        raise checks.ConfigError(f"fedmepd server data is not full-modal: channel(s) {bad} are constant (absent) "
                                 "in some server images")
    if y.size and int(y.max()) >= num_classes:
        raise checks.ConfigError(f"fedmepd server data: masks hold class index {int(y.max())}, but the task has "
                                 f"{num_classes} classes (is the server set's target the dataset's target?)")
    return x, y.astype(np.uint8)


def validate(hp, context):
    del context
    for k in ("num_anchors", "attn_dim", "server_batch_size"):
        if not isinstance(hp[k], (int, np.integer)) or hp[k] < 1:
            raise checks.ConfigError(f"{k} must be an integer >= 1, got {hp[k]!r}")
    for k in ("server_steps", "personalize_patience", "personalize_after"):
        if not isinstance(hp[k], (int, np.integer)) or hp[k] < 0:
            raise checks.ConfigError(f"{k} must be an integer >= 0, got {hp[k]!r}")
    checks.finite("server_lr", hp["server_lr"], positive=False)
    checks.finite("personalize_threshold", hp["personalize_threshold"], positive=False)
    if not hp["channels"] or any(int(c) < 1 for c in hp["channels"]):
        raise checks.ConfigError(f"channels must be positive widths, got {hp['channels']!r}")


@register("fedmepd", validate=validate, tasks=("segmentation",))
def fedmepd(*, task, backbone, optimizer, local_epochs, batch_size, drop_last=True,
            server: Any, channels: Sequence[int] = (8, 16, 32), attn_dim: int = 16,
            num_anchors: int = 4, calibrate_missing: bool = True, personalize: bool = True,
            personalize_threshold: float = 1.0, personalize_patience: int = 0, personalize_after: int = 0,
            server_steps: int = 5, server_lr: float = 0.01,
            server_batch_size: int = 8, server_seed: int = 0):
    """FedMEPD (module docstring). ``backbone`` is not used: the model is FedMEPD's own
    per-modality encoders and fusion decoder. ``server``: the federation's server split (a
    run argument, not a hyper-parameter: ``experiment.build_algorithm`` passes
    ``Federation.server``)."""
    del backbone
    if task.name != "segmentation":
        raise checks.ConfigError("fedmepd is a segmentation method: it needs task=segmentation")
    num_classes = int(task.make_head().num_classes)
    sx, sy = _server_arrays(server, num_classes)
    num_m = int(sx.shape[-1])
    channels = tuple(int(c) for c in channels)
    total = 2 ** (len(channels) - 1)
    if sx.shape[1] % total or sx.shape[2] % total:
        raise checks.ConfigError(f"fedmepd: images {sx.shape[1]}x{sx.shape[2]} must be divisible by {total} "
                                 f"for channels={channels}")
    bh, bw = sx.shape[1] // total, sx.shape[2] // total
    if num_anchors > bh * bw:
        raise checks.ConfigError(f"num_anchors={num_anchors} exceeds the {bh}x{bw} bottleneck positions")
    model = FedMEPDModel(num_modalities=num_m, num_classes=num_classes, channels=channels, attn_dim=attn_dim,
                         use_calibration=bool(calibrate_missing))
    bs = int(min(server_batch_size, len(sx)))
    personalization = dict(personalize=bool(personalize), threshold=personalize_threshold,
                           patience=int(personalize_patience), after=int(personalize_after))

    def apply_all(params, x, anchors):
        return model.apply({"params": params}, x, anchors, train=False)

    def anchors_of(params, data_x, anchors_in):
        _, aux = apply_all(params, task.scale_inputs(data_x), anchors_in)
        return extract_anchors(aux["fused"], num_anchors)

    def server_train(params, state):
        if server_steps == 0:
            return params
        key = jax.random.fold_in(jax.random.key(server_seed), state["round"])
        perm = jax.random.permutation(key, state["data_x"].shape[0])
        tx = optax.sgd(server_lr)

        def loss_fn(p, x, y):
            out, _ = apply_all(p, x, state["anchors"])
            return jnp.mean(task.loss(task.predict(out, x), task.prepare_targets(y)))

        def step(i, carry):
            p, s = carry
            rows = perm[(i * bs + jnp.arange(bs)) % perm.shape[0]]
            x = task.scale_inputs(state["data_x"][rows])
            g = jax.grad(loss_fn)(p, x, state["data_y"][rows])
            upd, s = tx.update(g, s, p)
            return optax.apply_updates(p, upd), s

        params, _ = jax.lax.fori_loop(0, server_steps, step, (params, tx.init(params)))
        return params

    def init_algorithm_state(key):
        del key
        return None  # filled by init_server below (needs the model's parameters)

    def init_client_algorithm_state(key, server_state, variables):
        del key, server_state
        p = variables["params"]
        dec = decoder_of(p)
        return {"decoder": dec, "delta_local": jax.tree_util.tree_map(jnp.zeros_like, dec),
                "modality_mask": jnp.ones((num_m,), jnp.float32),
                "personal_filters": jnp.zeros((), jnp.int32),
                "patience_left": {k: jnp.full((v["kernel"].shape[-1],), personalize_patience, jnp.int32)
                                  for k, v in dec.items()}}

    def download(server, client, data, key):
        del key
        params = server.params["params"]
        dec, count, left = personalized_decoder(params, client.algorithm_state, server.algorithm_state,
                                                **personalization)
        rows = jnp.arange(data.capacity)
        x = data.x[jnp.minimum(data.offset + rows, data.x.shape[0] - 1)]
        per_row = modality_presence(x) & (rows < data.n)[:, None]
        mask = jnp.any(per_row, axis=0).astype(jnp.float32)
        variables = dict(server.params, params={**params, **dec})
        return variables, dict(client.algorithm_state, modality_mask=mask, personal_filters=count,
                               patience_left=left)

    def finish(inputs):
        p, p0 = inputs.variables["params"], inputs.global_variables["params"]
        dec = decoder_of(p)
        delta = jax.tree_util.tree_map(jnp.subtract, dec, decoder_of(p0))
        client_state = dict(inputs.client, decoder=dec, delta_local=delta)
        return client_state, inputs.client["modality_mask"]

    def aggregate(server, uploads, weights):
        old = server.params["params"]
        up = uploads.shared["params"]
        new = {}
        for k in old:
            if k.startswith("enc"):
                j = int(k[3:])
                new[k] = aggregation.weighted_mean(up[k], weights * uploads.algorithm_upload[:, j], old[k])
            else:
                new[k] = aggregation.weighted_mean(up[k], weights, old[k])
        accepted = aggregation.any_accepted(weights)
        state = server.algorithm_state
        trained = server_train(new, state)
        new = aggregation.where_accepted(accepted, trained, old)
        delta = jax.tree_util.tree_map(jnp.subtract, decoder_of(new), decoder_of(old))
        anchors = anchors_of(new, state["data_x"], state["anchors"]) if calibrate_missing else state["anchors"]
        state = dict(state, anchors=anchors, delta_global=delta, round=state["round"] + 1)
        return ServerState(params=dict(server.params, params=new), algorithm_state=state, opt_state=server.opt_state)

    base = personalized_sgd(name="fedmepd", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                            local_epochs=local_epochs, batch_size=batch_size, drop_last=drop_last,
                            init_algorithm_state=init_algorithm_state,
                            init_client_algorithm_state=init_client_algorithm_state,
                            model_context=lambda server_state, client_state: (
                                None if server_state is None else server_state["anchors"]),
                            finish=finish, aggregate=aggregate, download=download)

    data_x, data_y = jnp.asarray(sx), jnp.asarray(sy)

    def init_server(key, x_example):
        server = base.init_server(key, x_example)
        params = server.params["params"]
        d = channels[-1]
        dec = decoder_of(params)
        # The barrier keeps XLA from constant-folding the model over the (constant) server set
        # at compile time (measured: seconds per reduction on 245 LGG slices).
        dx, dy = jax.lax.optimization_barrier((data_x, data_y))
        state = {"data_x": dx, "data_y": dy, "anchors": jnp.zeros((num_anchors, d), jnp.float32),
                 "delta_global": jax.tree_util.tree_map(jnp.zeros_like, dec), "round": jnp.zeros((), jnp.int32)}
        state["anchors"] = anchors_of(params, dx, state["anchors"])
        return server._replace(algorithm_state=state)

    def predict(server, client, x, mask=None):
        # The client's personalised model: the global encoders and calibration with the
        # decoder it would start its next round from (its personal filters, the rest global).
        params = server.params["params"]
        dec, _, _ = personalized_decoder(params, client.algorithm_state, server.algorithm_state, **personalization)
        anchors = server.algorithm_state["anchors"]
        out, _ = model.apply({"params": {**params, **dec}}, x, anchors, train=False, mask=mask)
        return task.predict(out, x)

    return base._replace(init_server=init_server, predict=predict, inspect=None)
