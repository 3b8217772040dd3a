"""FedMEPD vs baselines with missing modalities, on TCGA-LGG or on the BraTS slices (CPU).

    python -m experiments.fedmepd_table [--config fedmepd_lgg|fedmepd_brats] [--rounds 50]
        [--seeds 0,1,2] [--algorithms fedmepd,fedavg,fedper,local,omnifm]
        [--json FILE] [--md FILE] [--set k=v ...]

Ablations of FedMEPD: ``--algorithms fedmepd,fedmepd-nocal,fedmepd-nopers,fedmepd-noserver``
(no calibration, no decoder personalisation, no server training; ``fedmepd-patience``: the
official code's patience rule, shortened to 3 rounds after 5).

Every algorithm runs the config's federation (``fedmepd_lgg``: 4 hospital clients;
``fedmepd_brats``: 3 clients of 2 patients; each client with its modality subset, absent
channels zeroed; the full-modal server patients held out of every client) through
``omnifm_jax.experiment.run``. FedMEPD uses its own per-modality encoders + fusion decoder
and the server's full-modal set; the baselines use the config's MONAI UNet backbone
(``unet``, channels 8..128) on the same zeroed inputs and never see the server's set.

Seeds: ``seed`` varies the initialisation and the batches; ``data_seed=0`` keeps the same
clients and train/test patients in every run, so a column is one client in every seed.
Reported: the LAST round's per-client Dice (per-image mean, %), mean ± std over seeds; on
BraTS also ET / TC / WT (the task's regions; Dice is their mean). Outputs:
``experiments/results/<config>.{json,md}``.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import numpy as np

from experiments import seg_runs
from omnifm_jax.data import multimodal

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"fedmepd": "FedMEPD", "omnifm": "OmniFM", "fedavg": "FedAvg", "fedper": "FedPer", "local": "Local",
         "fedmepd-nocal": "FedMEPD w/o calibration", "fedmepd-nopers": "FedMEPD w/o personalisation",
         "fedmepd-noserver": "FedMEPD w/o server training", "fedmepd-patience": "FedMEPD, patience 3 after 5"}
#: Ablations of FedMEPD (``--algorithms fedmepd,fedmepd-nocal,...``): the algorithm and its overrides.
VARIANTS = {"fedmepd-nocal": ("fedmepd", ["algorithm_kwargs.calibrate_missing=False"]),
            "fedmepd-nopers": ("fedmepd", ["algorithm_kwargs.personalize=False"]),
            "fedmepd-noserver": ("fedmepd", ["algorithm_kwargs.server_steps=0"]),
            "fedmepd-patience": ("fedmepd", ["algorithm_kwargs.personalize_patience=3",
                                             "algorithm_kwargs.personalize_after=5"])}
SOURCE = {"fedmepd_lgg": "lgg", "fedmepd_brats": "brats"}
ABSTRACT = ("FedMEPD implemented from the abstract only (Wei et al., MedIA 2025; the full paper's network, "
            "anchor extraction and personalisation rule are not known here).")
CAVEAT = {
    "fedmepd_lgg": "The paper evaluates on BraTS 2018/2020 (hundreds of 3D cases, 4 sequences), not available here: "
                   "TCGA-LGG FLAIR-abnormality slices (64x64; pre-contrast T1 / FLAIR / post-contrast T1Gd) stand "
                   "in, with per-hospital modality subsets imposed by zeroing channels and one binary target "
                   "(whole abnormality).",
    "fedmepd_brats": "The paper evaluates on BraTS 2018/2020 (hundreds of 3D cases); here 8 BraTS cases (7 "
                     "patients) as 96x96 axial tumour slices: the one patient with all 4 sequences is the server's "
                     "set, and each of the 3 clients has 2 patients (one to train on, one to test), so a client's "
                     "test score is one patient's. The clients' cases have only T1ce and FLAIR; the T1 and T2 "
                     "encoders learn from the server only.",
}
#: What the paper reports. The abstract (the text we have) gives no numbers.
PAPER = ("The abstract reports no numbers, only that FedMEPD outperforms up-to-date multimodal and personalised FL "
         "methods on BraTS 2018 and 2020.")
#: BraTS 2018 test set, mean Dice of ET/TC/WT (%) per client modality set, 3D, 8 clients + a
#: full-modal server, from a third-party summary of the paper (en.papernotes.org), NOT
#: checked against the paper itself; BraTS 2020 gives only the client average.
PAPER_SOURCE = ("third-party summary of the paper (en.papernotes.org notes on arXiv 2603.04887), not checked against "
                "the paper; BraTS 2018 test set, 3D volumes, 8 clients + a full-modal server")
PAPER_SUBSETS = ("T1c", "T2", "FLAIR+T1c", "T1+T2", "FLAIR+T1c+T1", "FLAIR+T1+T2", "full", "full")
PAPER_BRATS2018 = {
    "FedMEPD": ((58.87, 59.35, 93.73, 75.83, 82.99, 74.58, 90.69, 69.62), 75.70, 75.90),
    "FedAvg": ((18.46, 42.12, 82.11, 59.59, 61.13, 61.91, 84.88, 62.09), 59.04, 61.91),
    "Local": ((42.37, 48.13, 87.74, 64.93, 71.59, 63.99, 89.15, 67.67), 66.95, 71.38),
}
PAPER_PER_CLIENT = {"source": PAPER_SOURCE, "client_modalities": PAPER_SUBSETS,
                    "mdsc_brats2018_clients_avg2018_avg2020": PAPER_BRATS2018}


def run_one(config: str, algorithm: str, rounds: int, seed: int, overrides) -> dict:
    base, extra = VARIANTS.get(algorithm, (algorithm, []))
    r = seg_runs.run(config, base, rounds, [f"seed={seed}", "data_seed=0", *extra, *overrides])
    fed, summary = r["fed"], r["summary"]
    names = fed.info["client_names"]
    regions = list((fed.info.get("regions") or {}).keys())
    keys = ("dice", "iou", "dice_pooled", *[f"dice_{g}" for g in regions], "n")
    return {
        "algorithm": algorithm, "seed": seed, "config": r["config"], "wall_s": r["wall_s"], "client_names": names,
        "modality_subsets": fed.info["modality_subsets"], "regions": regions,
        "test_slices": [int(n) for n in fed.test.n], "train_slices": [int(n) for n in fed.train.n],
        "test_patients": fed.info["test_patients"], "server_patients": fed.info["server_patients"],
        "dropped_patients": fed.info["dropped_patients"],
        "clients": seg_runs.per_client(summary, names, keys),
        "avg": {k: summary["last"][k] for k in (*keys[:-1], "test_loss")},
        "best_round": summary["best"]["round"], "best_dice": summary["best"]["dice"],
        "curve_dice": [[h["round"], h["dice"]] for h in r["history"]],
    }


def no_prediction_reference(config: str, overrides=()) -> dict:
    """What a model that predicts background everywhere scores (per-image Dice, in %), per
    client and on average, on the test split the runs use: the share of (slice, region)
    pairs where the region is empty (pooled Dice is 0)."""
    from omnifm_jax import config as config_lib
    from omnifm_jax import experiment

    cfg = config_lib.apply_overrides(config_lib.load_config(config), ["data_seed=0", *overrides])
    fed = experiment.setup(cfg).fed  # the runs' federation, through the same run path
    values = list(fed.info["label_values"])
    regions = fed.info.get("regions") or {"fg": values[1:]}
    out = {}
    for k, name in enumerate(fed.info["client_names"]):
        lo, n = int(fed.test.offsets[k]), int(fed.test.n[k])
        labels = np.asarray(values)[fed.test.y[lo:lo + n, ..., 0]]
        empty = [~np.isin(labels, v).reshape(n, -1).any(axis=1) for v in regions.values()]
        out[name] = {"dice": 100.0 * float(np.mean(empty)),
                     **{f"dice_{g}": 100.0 * float(np.mean(e)) for g, e in zip(regions, empty)}}
    out["avg"] = {k: float(np.mean([c[k] for c in out.values()])) for k in next(iter(out.values()))}
    return out


def _stat(values) -> dict:
    v = 100.0 * np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def aggregate(runs: list) -> dict:
    """Per algorithm: mean and std over seeds (in %) of each client's and the average's metrics."""
    out = {}
    for alg in dict.fromkeys(r["algorithm"] for r in runs):
        rs = [r for r in runs if r["algorithm"] == alg]
        names, keys = rs[0]["client_names"], [k for k in rs[0]["avg"] if k != "test_loss"]
        out[alg] = {"seeds": [r["seed"] for r in rs],
                    "clients": {n: {k: _stat([r["clients"][n][k] for r in rs]) for k in keys} for n in names},
                    "avg": {k: _stat([r["avg"][k] for r in rs]) for k in keys},
                    "best_dice": _stat([r["best_dice"] for r in rs]),
                    "best_round": [r["best_round"] for r in rs], "wall_s": sum(r["wall_s"] for r in rs)}
    return out


def _pm(s: dict) -> str:
    return f"{s['mean']:.1f} ± {s['std']:.1f}" if s["n"] > 1 else f"{s['mean']:.1f}"


def markdown(config: str, runs: list, agg: dict, rounds: int, total_wall: float, reference=None) -> str:
    r0 = runs[0]
    short = multimodal.SHORT_NAMES[SOURCE[config]]
    names, subsets, regions = r0["client_names"], r0["modality_subsets"], r0["regions"]
    head = [f"{n} [{'+'.join(short[m] for m in s)}]" for n, s in zip(names, subsets)]
    seed_lists = {alg: a["seeds"] for alg, a in agg.items()}
    seeds = ", ".join(map(str, agg[r0["algorithm"]]["seeds"])) if len({tuple(v) for v in seed_lists.values()}) == 1 \
        else "; ".join(f"{NAMES.get(alg, alg)} {', '.join(map(str, v))}" for alg, v in seed_lists.items())
    where = "BraTS slices" if config == "fedmepd_brats" else "TCGA-LGG"
    lines = [f"# FedMEPD with missing modalities on {where}, CPU", "",
             f"**Caveat.** {ABSTRACT} {CAVEAT[config]} {rounds} CPU rounds: a small-scale comparison, not a "
             "reproduction.", "",
             f"`--config {config}`, {rounds} rounds x 1 local epoch, Adam 1e-3, batch {r0['config']['batch_size']}, "
             f"Dice + CE; seeds {seeds} (initialisation and batches; the same split in every "
             f"seed). Server: {len(r0['server_patients'])} full-modal patient(s) held out of every client (used by "
             "FedMEPD only). Patients left out for lacking a declared sequence: "
             f"{', '.join(r0['dropped_patients']) or 'none'}. Baselines: MONAI UNet (channels "
             f"{r0['config']['backbone_kwargs']['channels']}) on the same zeroed inputs. Last round, per-image Dice "
             "(%), mean ± std over seeds" + ("; Dice is the mean of ET, TC and WT" if regions else "")
             + "; Avg. = mean over clients.", "",
             "| Method | " + " | ".join(head) + " | Avg. Dice | Avg. pooled Dice | best-round Avg. Dice |",
             "|---|" + "---:|" * (len(names) + 3)]
    for alg, a in agg.items():
        cells = [_pm(a["clients"][n]["dice"]) for n in names]
        lines.append(f"| {NAMES.get(alg, alg)} | " + " | ".join(cells) + f" | {_pm(a['avg']['dice'])} | "
                     f"{_pm(a['avg']['dice_pooled'])} | {_pm(a['best_dice'])} |")
    if reference:
        lines.append("| *no tumour predicted (reference)* | " + " | ".join(f"{reference[n]['dice']:.1f}" for n in names)
                     + f" | {reference['avg']['dice']:.1f} | 0.0 | - |")
    lines += ["", "Per-image Dice scores an empty prediction on a slice where the region is empty as 1 (the task's "
              "convention), so a model that predicts nothing still scores the share of such slices; pooled Dice "
              "(2 sum I / (sum P + sum T) over a client's slices, then the mean over clients) does not reward that. "
              "Pooled per client: " + "; ".join(
                  f"{NAMES.get(alg, alg)} " + " / ".join(f"{a['clients'][n]['dice_pooled']['mean']:.1f}" for n in names)
                  for alg, a in agg.items()) + "."]
    if regions:
        tags = " / ".join(g.upper() for g in regions)
        lines += ["", f"Per region ({tags}, last round, mean over seeds):", "",
                  "| Method | " + " | ".join(f"{h} {tags}" for h in head) + " | "
                  + " | ".join(f"Avg. {g.upper()}" for g in regions) + " |",
                  "|---|" + "---:|" * (len(names) + len(regions))]
        for alg, a in agg.items():
            cells = [" / ".join(f"{a['clients'][n][f'dice_{g}']['mean']:.1f}" for g in regions) for n in names]
            lines.append(f"| {NAMES.get(alg, alg)} | " + " | ".join(cells) + " | "
                         + " | ".join(_pm(a["avg"][f"dice_{g}"]) for g in regions) + " |")
        if reference:
            lines.append("| *no tumour predicted (reference)* | "
                         + " | ".join(" / ".join(f"{reference[n][f'dice_{g}']:.1f}" for g in regions) for n in names)
                         + " | " + " | ".join(f"{reference['avg'][f'dice_{g}']:.1f}" for g in regions) + " |")
    lines += ["", "Train / test slices per client: "
              + ", ".join(f"{n} {a} / {b}" for n, a, b in zip(names, r0["train_slices"], r0["test_slices"])) + ".",
              "", f"Paper: {PAPER} Per client, as given by a {PAPER_SOURCE} (mean Dice of ET/TC/WT, %; "
              "FedPer and OmniFM not reported):", "",
              "| Method | " + " | ".join(PAPER_SUBSETS) + " | Avg. (BraTS 2018) | Avg. (BraTS 2020) |",
              "|---|" + "---:|" * (len(PAPER_SUBSETS) + 2)]
    for m, (cells, a18, a20) in PAPER_BRATS2018.items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in cells) + f" | {a18:.2f} | {a20:.2f} |")
    lines += ["",
              f"Wall time {total_wall:.0f} s for {len(runs)} runs on {platform.processor() or 'CPU'} "
              f"({jax.device_count()} {jax.default_backend()} device(s)); per method: "
              + ", ".join(f"{NAMES.get(k, k)} {v['wall_s']:.0f} s" for k, v in agg.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="fedmepd_lgg", choices=sorted(SOURCE))
    p.add_argument("--rounds", type=int, default=50)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--algorithms", default="fedmepd,fedavg,fedper,local,omnifm")
    p.add_argument("--json", default=None, help="default experiments/results/<config>.json")
    p.add_argument("--md", default=None, help="default experiments/results/<config>.md")
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--render-only", action="store_true", help="rewrite the markdown from the JSON, run nothing")
    args = p.parse_args(argv)
    json_path = args.json or str(RESULTS / f"{args.config}.json")
    md_path = args.md or str(RESULTS / f"{args.config}.md")
    if args.render_only:
        import json

        out = json.loads(Path(json_path).read_text())
        if "no_prediction_reference" not in out:
            out["no_prediction_reference"] = no_prediction_reference(out["config"], args.set)
        out.update(paper=PAPER, paper_per_client=PAPER_PER_CLIENT)
        seg_runs.write(json_path, md_path, out, markdown(out["config"], out["runs"], out["summary"], out["rounds"],
                                                         out["wall_s"], out["no_prediction_reference"]))
        print(f"rewrote {md_path} from {json_path}")
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.time()
    runs = []
    reference = no_prediction_reference(args.config, args.set)
    for alg in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        for seed in seeds:
            r = run_one(args.config, alg, args.rounds, seed, args.set)
            print(f"{alg} seed {seed}: avg Dice {100 * r['avg']['dice']:.2f} ({r['wall_s']:.0f} s) "
                  + ", ".join(f"{n} {100 * c['dice']:.1f}" for n, c in r["clients"].items()), flush=True)
            runs.append(r)
            agg = aggregate(runs)
            total = time.time() - t0
            out = {"config": args.config, "caveat": f"{ABSTRACT} {CAVEAT[args.config]}", "paper": PAPER,
                   "paper_per_client": PAPER_PER_CLIENT,
                   "no_prediction_reference": reference,
                   "rounds": args.rounds, "seeds": seeds, "wall_s": round(total, 1), "summary": agg, "runs": runs}
            seg_runs.write(json_path, md_path, out, markdown(args.config, runs, agg, args.rounds, total, reference))
    print(f"wrote {json_path} and {md_path} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
