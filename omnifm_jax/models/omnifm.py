"""The OmniFM model (Fig. 3) and the plain backbone+head model used by the baselines.

OmniFM forward pass for a batch ``x (B, H, W, C)`` and the server's bank:

  r   = backbone(x)                          tokens (B, L, d)
  s   = tokenizer(x)                         spectral tokens (B, d_s), unit norm (Eq. 3)
  S_g = top-k(bank, s)                       retrieved prototypes (B, k, d_s), constants
  Z   = ECA(r, [s || S_g])                   (B, L, d)                           (Eq. 4)
  r'  = [Z || r || c]                        (B, 2L + p, d)                      (PSP)
  y   = head(r')

ECA attends to the local spectral token ``s`` next to the retrieved prototypes (Fig. 3
fuses local and retrieved spectral embeddings), so the task loss reaches the tokenizer.
With ``local_spectral_in_eca=False`` ECA attends to ``S_g`` only: then ``s`` enters the
forward pass only through the retrieval (under stop-gradient), only SPAlign trains the
tokenizer, and a constant ``s`` is a zero-loss solution.

``mask`` (``bool[B]``) marks the real samples of a batch: it reaches the backbone
(BatchNorm statistics) and the batch mean of the "w/o GSKR" ablation, so padded samples
influence nothing.

The model returns ``(y, OmniFMAux)``; the auxiliaries carry what the local objective
(Eq. 6, the SPAlign term Eq. 5), the bank's hit counts (Eq. 8) and the upload need.

Table 8 ablations are switches:
  * ``use_gskr=False`` (w/o GSKR): ``S_g`` is the batch's mean spectral embedding over the
    real samples (one prototype, stop-gradient) instead of a retrieval from the bank;
  * ``use_eca=False`` (w/o ECA): ``Z = FiLM(r; mean S_g)``;
  * ``use_psp=False`` (w/o PSP): ``r' = Proj([Z ; r])`` (L tokens, no suffix);
  * w/o SPAlign is ``lambda = 0`` in the algorithm, not a model switch.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, NamedTuple, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from omnifm_jax import bank as bank_lib
from omnifm_jax.models.common import TokenLayout, masked_batch_mean
from omnifm_jax.modules import EmbeddingCrossAttention, FiLM, PrefixSuffixPrompt, TokenProjection
from omnifm_jax.spectral import SpectralTokenizer, l2_normalize

__all__ = ["split_backbone_output", "OmniFMAux", "Probe", "OmniFM", "TokenModel"]


def split_backbone_output(out: Any, head: nn.Module) -> Tuple[jax.Array, Dict[str, Any]]:
    """``(tokens, head keyword arguments)`` from a backbone's output.

    A token backbone returns ``r (B, L, d)``: no extra argument. An encoder with a pyramid
    (the UNet) returns ``(r, skips)``: ``skips`` is passed to the head as ``skips=`` when
    the head's ``__call__`` takes that keyword (a segmentation decoder); a head that does
    not (e.g. the classification head) reads ``r`` alone.
    """
    if not isinstance(out, tuple):
        return out, {}
    if len(out) != 2:
        raise ValueError(f"a backbone returns tokens or (tokens, skips), got a tuple of {len(out)}")
    r, skips = out
    takes_skips = "skips" in inspect.signature(type(head).__call__).parameters
    return r, ({"skips": skips} if takes_skips else {})


class OmniFMAux(NamedTuple):
    """What OmniFM's loss and the server need besides the prediction.

    Attributes:
      s: f32[B, d_s] unit-norm spectral tokens (differentiable).
      prototypes: f32[B, k, d_s] retrieved ``S_g`` (stop-gradient; zero where missing).
      valid: bool[B, k] which prototypes are real.
      indices: int32[B, k] bank slots retrieved (-1: missing or not retrieved).
    """
    s: jax.Array
    prototypes: jax.Array
    valid: jax.Array
    indices: jax.Array


class Probe(NamedTuple):
    """Interventions for the diagnostics (:mod:`omnifm_jax.diagnostics`); None: no change.

    Attributes:
      z: ``f32[L, d]`` replaces ECA's output ``Z`` of every sample (e.g. a client's mean Z).
      s_permutation: ``int32[B]`` reorders the spectral tokens across the batch before
        retrieval and ECA (each sample gets another sample's ``s``).
    """
    z: Optional[jax.Array] = None
    s_permutation: Optional[jax.Array] = None


class OmniFM(nn.Module):
    """OmniFM wrapper around any token backbone and task head.

    Attributes:
      backbone: module ``(x, train=) -> tokens (B, L, d)``, or ``(tokens, skips)`` (an
        encoder pyramid, see :func:`split_backbone_output`: ECA and the prompts act on the
        tokens; ``skips`` go to the head unchanged).
      head: module ``(tokens, layout=, train=) -> output`` (``skips=`` too with such a backbone).
      spectral_dim: ``d_s``, the tokenizer's and bank's width.
      low_pass_ratio: ratio of P_LP.
      log_magnitude: ``log1p`` magnitudes in the tokenizer.
      attn_dim: ECA width ``d_h``.
      num_heads: ECA heads.
      num_suffix: ``p``, suffix prompt tokens.
      top_k: prototypes retrieved (paper default 2).
      use_gskr, use_eca, use_psp: Table 8 switches.
      local_spectral_in_eca: ECA (or FiLM) also conditions on the local ``s``.
      spectrum_norm: normalisation of the low-pass spectrum before the tokenizer's MLP
        (:class:`~omnifm_jax.spectral.SpectralTokenizer`): ``"none"`` (the paper) or
        ``"batch"`` (per-bin standardisation).
      eca_keys: what ECA attends to: ``"unit"`` (the paper: the unit-norm ``s`` and
        prototypes), ``"scaled"`` (times ``sqrt(d_s)``, so that their entries have the scale a
        standard initialisation expects; at unit norm the attention logits and values are
        ~``1/sqrt(d_s)`` of that and ECA stays uniform and nearly constant on real4) or
        ``"centered"`` (minus the mean of the bank's valid slots, then unit norm times
        ``sqrt(d_s)``: the component all tokens share removed, so that keys differ).
      eca_temperature: ``"fixed"`` (the paper's Eq. 4) or ``"learned"`` (a per-head
        temperature parameter, see :class:`~omnifm_jax.modules.EmbeddingCrossAttention`).
      eca_logit_scale: fixed factor on ECA's logits (1 = Eq. 4).

    ``probe`` (:class:`Probe`) intervenes for the diagnostics; ECA's attention weights and
    ``Z`` are sown into the ``intermediates`` collection.
    """
    backbone: nn.Module
    head: nn.Module
    spectral_dim: int = 64
    low_pass_ratio: float = 0.25
    log_magnitude: bool = True
    attn_dim: int = 64
    num_heads: int = 1
    num_suffix: int = 4
    top_k: int = 2
    use_gskr: bool = True
    use_eca: bool = True
    use_psp: bool = True
    local_spectral_in_eca: bool = True
    spectrum_norm: str = "none"
    eca_keys: str = "unit"
    eca_temperature: str = "fixed"
    eca_logit_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, bank: bank_lib.Bank, *, train: bool = False, mask=None,
                 probe: Optional[Probe] = None):
        r, head_kw = split_backbone_output(self.backbone(x, train=train, mask=mask), self.head)
        s = SpectralTokenizer(dim=self.spectral_dim, ratio=self.low_pass_ratio,
                              log_magnitude=self.log_magnitude, norm=self.spectrum_norm,
                              name="tokenizer")(image_part(self.backbone, x), train=train, mask=mask)
        if probe is not None and probe.s_permutation is not None:
            s = s[probe.s_permutation]
        if self.use_gskr:
            frozen = jax.tree_util.tree_map(jax.lax.stop_gradient, bank)
            protos, idx, _ = bank_lib.retrieve(frozen, jax.lax.stop_gradient(s), self.top_k)
            valid = idx >= 0
        else:
            mean_s = jax.lax.stop_gradient(masked_batch_mean(s, mask))
            protos = jnp.broadcast_to(mean_s, (s.shape[0], 1, s.shape[-1]))
            valid = jnp.ones((s.shape[0], 1), bool)
            idx = jnp.full((s.shape[0], 1), bank_lib.MISSING, jnp.int32)
        keys, keys_valid = protos, valid
        if self.local_spectral_in_eca:
            keys = jnp.concatenate([s[:, None, :], protos], axis=1)
            keys_valid = jnp.concatenate([jnp.ones((s.shape[0], 1), bool), valid], axis=1)
        if self.eca_keys == "centered":  # without the component every token shares (the bank's mean)
            mean, _ = bank_lib.mean_valid(jax.lax.stop_gradient(bank.embeddings), bank.valid)
            keys = l2_normalize(keys - mean)
        if self.eca_keys in ("scaled", "centered"):  # unit norm = per-entry scale 1/sqrt(d_s); lift it to ~1
            keys = keys * jnp.sqrt(jnp.float32(keys.shape[-1]))
        keys = keys.astype(r.dtype)
        if self.use_eca:
            z = EmbeddingCrossAttention(self.attn_dim, self.num_heads, out_dim=r.shape[-1],
                                        learned_temperature=self.eca_temperature == "learned",
                                        logit_scale=self.eca_logit_scale, name="eca")(
                r, keys, keys_valid)
        else:
            cond, _ = bank_lib.mean_valid(keys, keys_valid)
            z = FiLM(name="film")(r, cond)
        self.sow("intermediates", "z", z)
        if probe is not None and probe.z is not None:
            z = jnp.broadcast_to(probe.z.astype(z.dtype), z.shape)
        if self.use_psp:
            tokens = PrefixSuffixPrompt(self.num_suffix, name="prompt")(z, r)
            layout = TokenLayout(z.shape[-2], r.shape[-2], self.num_suffix, x.shape[-3:-1])
        else:
            tokens = TokenProjection(name="proj")(z, r)
            layout = TokenLayout(0, r.shape[-2], 0, x.shape[-3:-1])
        out = self.head(tokens, layout=layout, train=train, **head_kw)
        return out, OmniFMAux(s=s, prototypes=protos, valid=valid, indices=idx)


def image_part(backbone: nn.Module, x: jax.Array) -> jax.Array:
    """The image in a backbone's input: ``backbone.image_of(x)`` where the backbone defines
    it (an input that carries more than the image, e.g. VQA's packed question plane), else
    ``x``. OmniFM's spectral tokenizer reads this."""
    image_of = getattr(backbone, "image_of", None)
    return x if image_of is None else image_of(x)


class TokenModel(nn.Module):
    """Backbone + head, no OmniFM modules: the model of FedAvg, FedPer, Local, ...

    Returns ``(output, None)`` so every model has the same ``(y, aux)`` signature; with
    ``features=True`` the aux is the representation the head reads, the backbone's tokens
    averaged over the token axis ``f32[B, d]`` (FedAvgCNN: the 512-wide fc1 output, PFLlib's
    ``model.base(x)``; a UNet: its bottleneck), for algorithms that use it (MOON). A backbone
    that returns ``(tokens, skips)`` hands ``skips`` to the head (see
    :func:`split_backbone_output`).
    """
    backbone: nn.Module
    head: nn.Module
    features: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, bank: Any = None, *, train: bool = False, mask=None):
        del bank
        r, head_kw = split_backbone_output(self.backbone(x, train=train, mask=mask), self.head)
        layout = TokenLayout(0, r.shape[-2], 0, x.shape[-3:-1])
        out = self.head(r, layout=layout, train=train, **head_kw)
        return out, (jnp.mean(r.astype(jnp.float32), axis=-2) if self.features else None)
