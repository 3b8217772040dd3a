"""Does OmniFM's spectral token collapse, and do its prompts act per input?

    python -m experiments.omnifm_gaps [--config real4] [--rounds 30] [--every 5]
        [--variants default,retrieved_only,attention_head] [--json FILE] [--md FILE] [--set k=v ...]

Variants (each a config override of the chosen config):
  default         ECA attends to the local spectral token ``s`` and the retrieved prototypes
                  (the task loss trains the tokenizer); mean-pooled head;
  retrieved_only  ``local_spectral_in_eca=False``: ECA attends to the retrieved prototypes
                  only, so only SPAlign trains the tokenizer (a constant ``s`` costs nothing);
  attention_head  ``task_kwargs.head_pool=attention``: one self-attention layer over ``[Z || r || c]``
                  before pooling, so the suffix prompts interact with each input.

Every ``--every`` rounds (and at round 0) it records accuracy and macro-F1 (all clients,
personalised models, as ``omnifm train``) and, from every test image's spectral token ``s``
(each client's own model):
  ``spread``        RMS distance of ``s`` to the mean ``s`` over all test images (a collapsed
                    tokenizer gives 0);
  ``modality_gap``  mean distance between the per-modality means of ``s`` (do modalities
                    stay apart in the spectral space the bank indexes?).
Needs the real images for ``real4`` (``OMNIFM_REAL_DATA``); ``--config default`` runs on the
built-in synthetic set.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax import algorithms, experiment, federated
from omnifm_jax import config as config_lib
from omnifm_jax.algorithms.labels import combine
from omnifm_jax.data.federation import client_slice
from omnifm_jax.models.omnifm import OmniFM

VARIANTS = {
    "default": [],
    "retrieved_only": ["algorithm_kwargs.local_spectral_in_eca=False"],
    "attention_head": ["task_kwargs.head_pool=attention"],
}
MODEL_KEYS = ("spectral_dim", "low_pass_ratio", "log_magnitude", "attn_dim", "num_heads", "num_suffix", "top_k",
              "use_gskr", "use_eca", "use_psp", "local_spectral_in_eca")


def spectral_stats(model, state, fed, task) -> dict:
    """``spread`` and ``modality_gap`` of the spectral tokens of every test image."""
    apply = jax.jit(lambda v, x, bank: model.apply(v, x, bank)[1].s)
    tokens, mods = [], []
    for k in range(fed.num_clients):
        x, _, m = client_slice(fed.test, k)
        if not len(x):
            continue
        variables = combine(state.server.params, jax.tree_util.tree_map(lambda a: a[k], state.clients.personal))
        tokens.append(np.asarray(apply(variables, task.scale_inputs(jnp.asarray(x)), state.server.extra)))
        mods.append(m)
    s, mods = np.concatenate(tokens).astype(np.float64), np.concatenate(mods)
    spread = float(np.sqrt(np.mean(np.sum((s - s.mean(0)) ** 2, axis=1))))
    means = [s[mods == i].mean(0) for i in np.unique(mods)]
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(means, 2)]
    return {"spread": spread, "modality_gap": float(np.mean(gaps)) if gaps else float("nan")}


def run_variant(cfg: dict, rounds: int, every: int, log=print) -> list:
    prepared = experiment.setup(cfg)
    fed, task, alg = prepared.fed, prepared.task, prepared.algorithm
    hp = {**algorithms.hyperparameters("omnifm"), **cfg["algorithm_kwargs"]}
    model = OmniFM(backbone=prepared.backbone, head=task.make_head(), **{k: hp[k] for k in MODEL_KEYS})
    train, test = jax.device_put(fed.train), jax.device_put(fed.test)
    state = federated.init(alg, jax.random.key(cfg["seed"]), train)
    round_fn = federated.make_round(alg, fed.train, participation=cfg["participation"])
    evaluate = federated.make_evaluate(alg, task, fed.test, batch_size=cfg["eval_batch_size"])
    history = []
    t = time.time()
    for r in range(rounds + 1):
        if r:
            state, _ = round_fn(state, train)
        if r % every == 0 or r == rounds:
            summary = federated.summarize(task, evaluate(state, test), fed.test.n)
            line = {"round": r, "accuracy": summary["accuracy"], "macro_f1": summary["macro_f1"],
                    **spectral_stats(model, state, fed, task), "elapsed_s": round(time.time() - t, 1)}
            history.append(line)
            log("  " + json.dumps(line))
    return history


def to_markdown(results: dict, cfg_name: str) -> str:
    lines = [f"OmniFM on `{cfg_name}` (seed 0). s = spectral token of each test image, each client's model.", "",
             "| variant | round | accuracy | macro-F1 | spread of s | modality gap of s |", "|---|---|---|---|---|---|"]
    for name, hist in results.items():
        for h in hist:
            lines.append(f"| {name} | {h['round']} | {h['accuracy']:.3f} | {h['macro_f1']:.3f} | "
                         f"{h['spread']:.3f} | {h['modality_gap']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="real4")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    base = config_lib.apply_overrides(config_lib.load_config(args.config), ["algorithm=omnifm"] + args.set)
    results = {}
    for name in args.variants.split(","):
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}; choose from {list(VARIANTS)}")
        print(f"{name}:", file=sys.stderr, flush=True)
        cfg = config_lib.apply_overrides(base, VARIANTS[name])
        results[name] = run_variant(cfg, args.rounds, args.every, log=lambda s: print(s, file=sys.stderr, flush=True))
        if args.json:
            Path(args.json).write_text(json.dumps({"config": args.config, "overrides": args.set,
                                                   "results": results}, indent=2))
    table = to_markdown(results, args.config)
    print(table)
    if args.md:
        Path(args.md).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
