"""Does OmniFM's mechanism do any work on real data? The study behind the "OmniFM's mechanism,
measured" section of docs/method.md.

    python -m experiments.omnifm_mechanism                       # the study: test split, seeds 0-2
    python -m experiments.omnifm_mechanism --validation --seeds 0 --rounds 20 --variants ...
                                                                 # choosing settings (no test data)
    python -m experiments.omnifm_mechanism --render-only         # rewrite the markdown from the JSON

real4 (20 clients, Dirichlet 0.1, 20% participation, FedAvgCNN, batch 32, lr 0.05), 50 rounds,
evaluation every round (PFLlib's best round and the last one), OmniFM's diagnostics
(:mod:`omnifm_jax.diagnostics`) at rounds 1, 10, 20, ..., 50. Variants: OmniFM as the paper
reads (the library's defaults), OmniFM with the switches on (``ACTIVATED``, the
``real4_mechanism`` config), FedPer, FedAvg, Local, and the activated variant without GSKR,
without ECA and without SPAlign. ``--validation`` evaluates on 20% of each client's TRAINING
samples instead of the test split (``validation_fraction=0.2``): the switches were chosen there.

Runs are appended to the JSON as they finish, so an interrupted study continues where it
stopped (a run already in the JSON is not repeated).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

from omnifm_jax import config as config_lib
from omnifm_jax import experiment
from omnifm_jax.reproduce.methods import method

#: The switches of the activated variant (chosen on the validation split; see docs/method.md),
#: as the shipped ``real4_mechanism`` config sets them.
ACTIVATED = method("OmniFM (activated)").overrides[1:]

VARIANTS: Dict[str, tuple] = {
    "OmniFM (paper)": ("algorithm=omnifm",),
    "OmniFM (activated)": ("algorithm=omnifm",) + ACTIVATED,
    "FedPer": ("algorithm=fedper",),
    "FedAvg": ("algorithm=fedavg",),
    "Local": ("algorithm=local",),
    "activated w/o GSKR": ("algorithm=omnifm",) + ACTIVATED + ("algorithm_kwargs.use_gskr=False",),
    "activated w/o ECA": ("algorithm=omnifm",) + ACTIVATED + ("algorithm_kwargs.use_eca=False",),
    "activated w/o SPAlign": ("algorithm=omnifm",) + ACTIVATED + ("algorithm_kwargs.lambda_align=0.0",),
    # the activated variant as first chosen, before ECA's logits were scaled: attention near uniform
    "activated, logit factor 1": ("algorithm=omnifm",) + ACTIVATED + ("algorithm_kwargs.eca_logit_scale=1.0",),
}
DIAG_ROUNDS = (1, 10, 50)
#: The paired comparisons the markdown reports: every OmniFM variant against FedPer (the verdict
#: the study exists for), and each ablation against the activated variant it removes a part of.
PAIRS = (("OmniFM (paper)", "FedPer"), ("OmniFM (activated)", "FedPer"),
         ("OmniFM (activated)", "OmniFM (paper)"),
         ("activated w/o GSKR", "OmniFM (activated)"), ("activated w/o ECA", "OmniFM (activated)"),
         ("activated w/o SPAlign", "OmniFM (activated)"), ("activated w/o ECA", "FedPer"),
         ("OmniFM (activated)", "activated, logit factor 1"))
DIAG_KEYS = ("diag/s_cos_to_mean", "diag/s_modality_purity", "diag/bank_pairwise_cos", "diag/bank_distinct",
             "diag/attn_entropy_ratio", "diag/z_logit_share", "diag/acc_normal", "diag/acc_z_constant",
             "diag/acc_bank_random", "diag/acc_s_shuffled")


def run_config(variant: str, seed: int, rounds: int, validation: bool, extra: Sequence[str] = ()) -> dict:
    overrides = list(VARIANTS[variant]) + [f"rounds={rounds}", f"seed={seed}", "data_seed=0", "checkpoint_every=0",
                                           "diagnostics=10", "eval_train_loss=False"] + list(extra)
    if validation:
        overrides.append("validation_fraction=0.2")
    return config_lib.apply_overrides(config_lib.load_config("real4"), overrides)


def run_one(cfg: dict) -> dict:
    start = time.time()
    summary = experiment.run(cfg, None, progress=False, log=lambda _: None)
    history = [{k: v for k, v in h.items() if k != "clients"} for h in summary["history"]]
    return {"best_accuracy": summary["best"]["accuracy"], "best_round": summary["best"]["round"],
            "last_accuracy": summary["last"]["accuracy"], "best_macro_f1": summary["best"]["macro_f1"],
            "history": history, "wall_s": round(time.time() - start, 1)}


def _ms(values) -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], np.float64)
    if v.size == 0:
        return "-"
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if v.size > 1 else f"{v.mean():.3f}"


def _diag_at(history: List[dict], r: int, key: str):
    for h in history:
        if h["round"] == r and key in h:
            return h[key]
    return None


def paired(runs: dict, a: str, b: str, metric: str = "best_accuracy") -> str:
    seeds = sorted(set(runs.get(a, {})) & set(runs.get(b, {})))
    if not seeds:
        return "-"
    d = np.array([runs[a][s][metric] - runs[b][s][metric] for s in seeds])
    wins = int(np.sum(d > 0))
    spread = d.std(ddof=1) if d.size > 1 else float("nan")
    if d.size > 1 and abs(d.mean()) > 2 * spread / np.sqrt(d.size):
        word = "better" if d.mean() > 0 else "worse"
    else:
        word = "level (the difference is within 2 standard errors of the per-seed differences)"
    return (f"{a} - {b}: {d.mean():+.4f} ± {spread:.4f} over {d.size} paired seeds "
            f"({wins}/{d.size} seeds ahead): {word}")


def markdown(data: dict) -> str:
    runs = data["runs"]
    lines = [f"# OmniFM's mechanism on real4 ({data['split']} split)", "",
             f"Measured with `{data['command']}` on {data['device']}; {data['rounds']} rounds, seeds "
             f"{data['seeds']}; real4: 20 clients, Dirichlet 0.1, 20% participation, FedAvgCNN, batch 32, lr 0.05.",
             f"Activated switches: `{' '.join(ACTIVATED)}`. 'activated, logit factor 1' is the same without the "
             "factor on ECA's logits (Eq. 4 as written); the factor acts on ECA only, so 'activated w/o ECA' "
             "computes the same with or without it.", "",
             "| variant | best accuracy | last accuracy | best macro-F1 | runs |", "|---|---|---|---|---|"]
    for v in VARIANTS:
        if v not in runs:
            continue
        r = runs[v]
        lines.append(f"| {v} | {_ms([x['best_accuracy'] for x in r.values()])} | "
                     f"{_ms([x['last_accuracy'] for x in r.values()])} | "
                     f"{_ms([x['best_macro_f1'] for x in r.values()])} | {len(r)} |")
    lines += ["", "Paired differences of the best accuracy (same seeds):", ""]
    for a, b in PAIRS:
        if a in runs and b in runs:
            lines.append(f"- {paired(runs, a, b)}")
    lines += ["", "Diagnostics (mean ± std over seeds; `diag/` names of metrics.jsonl, see omnifm_jax/diagnostics.py):",
              "", "| variant | round | " + " | ".join(k[5:] for k in DIAG_KEYS) + " |",
              "|---|---|" + "---|" * len(DIAG_KEYS)]
    for v in VARIANTS:
        if v not in runs or not v.lower().startswith(("omnifm", "activated")):
            continue
        for rnd in sorted(set(DIAG_ROUNDS[:-1] + (data["rounds"],))):
            vals = [_ms([_diag_at(x["history"], rnd, k) for x in runs[v].values()]) for k in DIAG_KEYS]
            if all(c == "-" for c in vals):
                continue
            lines.append(f"| {v} | {rnd} | " + " | ".join(vals) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    import jax

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    p.add_argument("--validation", action="store_true", help="evaluate on 20%% of the training samples")
    p.add_argument("--set", action="append", default=[], help="extra override for every run (tuning)")
    p.add_argument("--out", default=None,
                   help="JSON path (default experiments/results/omnifm_mechanism[_validation].json)")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    default = "omnifm_mechanism_validation" if args.validation else "omnifm_mechanism"
    path = Path(args.out or f"experiments/results/{default}.json")
    data = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    if not args.render_only:
        seeds = [int(s) for s in args.seeds.split(",")]
        variants = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            raise SystemExit(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
        data.update(split="validation" if args.validation else "test", rounds=args.rounds,
                    seeds=sorted(set(data.get("seeds", [])) | set(seeds)), device=str(jax.devices()[0]),
                    command="python -m experiments.omnifm_mechanism" + (" --validation" if args.validation else ""))
        for v in variants:
            for seed in seeds:
                if str(seed) in data["runs"].get(v, {}):
                    continue
                cfg = run_config(v, seed, args.rounds, args.validation, args.set)
                res = run_one(cfg)
                data["runs"].setdefault(v, {})[str(seed)] = res
                print(f"{v} seed {seed}: best {res['best_accuracy']:.4f} last {res['last_accuracy']:.4f} "
                      f"({res['wall_s']} s)", flush=True)
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(data, indent=1))
    path.with_suffix(".md").write_text(markdown(data))
    print(markdown(data))


if __name__ == "__main__":
    main()
