"""Table 6 (segmentation) smoke run on real TCGA-LGG slices, CPU-sized.

    python -m experiments.table6_seg [--rounds 10] [--algorithms omnifm,fedavg,fedper,local]
        [--json FILE] [--md FILE] [--set k=v ...]

Runs ``omnifm_jax/configs/seg_lgg_sites.py`` (4 clients = the 5 TCGA-LGG hospitals, EZ's
single patient merged into CS; MONAI UNet at half the tutorial widths; Dice + CE;
task=segmentation of omnifm_jax/tasks/segmentation.py) for each algorithm through
``omnifm_jax.experiment.run``, and reports the LAST round's per-client Dice and IoU (per-image
means, in %; the pooled ones are in the JSON) in Table 6's layout, beside the paper's numbers.

Not a reproduction: TCGA-LGG FLAIR-abnormality slices from 5 hospitals (64x64, all three
MR channels) replace FeTS2022's enhancing tumour from T1ce, the columns are the hospitals of
ONE federation (the paper's are four separate federations of 9/6/5/3 FeTS institutions), and
the runs are 10 rounds x 1 local epoch instead of 50 x 1.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax

from experiments import seg_runs

RESULTS = Path(__file__).resolve().parent / "results"

#: OmniFM paper, Table 6 (Dice, IoU in %): Group 1 (9 clients), Group 2 (6), Group 3 (5), Group 4 (3), Avg.
PAPER_GROUPS = ("Group 1 (9 clients)", "Group 2 (6 clients)", "Group 3 (5 clients)", "Group 4 (3 clients)", "Avg.")
PAPER = {
    "Local":  ((45.24, 29.33), (44.21, 25.00), (41.25, 27.22), (46.23, 30.00), (44.23, 27.89)),
    "FedAvg": ((44.02, 28.56), (44.91, 25.32), (40.93, 26.10), (46.78, 30.95), (44.16, 27.73)),
    "FedProx": ((42.32, 25.23), (44.00, 24.43), (38.99, 25.32), (45.35, 29.76), (42.66, 26.19)),
    "FedPer": ((71.23, 66.99), (75.24, 62.12), (72.43, 57.34), (76.54, 62.99), (73.86, 62.36)),
    "OmniFM": ((79.84, 74.93), (80.82, 68.74), (78.62, 66.01), (78.03, 65.31), (77.41, 68.75)),
}
NAMES = {"omnifm": "OmniFM", "fedavg": "FedAvg", "fedper": "FedPer", "local": "Local", "fedprox": "FedProx"}
SUBSTITUTION = ("TCGA-LGG FLAIR-abnormality slices from 5 hospitals (Kaggle 'LGG MRI segmentation', Buda et al.; "
                "64x64, pre-contrast T1 / FLAIR / post-contrast T1Gd) replace FeTS2022's enhancing tumour from T1ce: "
                "FeTS2022 is not available here. Columns are the hospitals of one 4-client federation "
                "(EZ, one patient, merged into CS), not the paper's four separate federations of FeTS institutions.")


def run_one(algorithm: str, rounds: int, overrides) -> dict:
    r = seg_runs.run("seg_lgg_sites", algorithm, rounds, overrides)
    fed, summary = r["fed"], r["summary"]
    names = fed.info["client_names"]
    last = summary["last"]
    return {
        "algorithm": algorithm,
        "config": r["config"],
        "wall_s": r["wall_s"],
        "client_names": names,
        "test_slices": [int(n) for n in fed.test.n],
        "test_patients": [len(p) for p in fed.info["test_patients"]],
        "clients": seg_runs.per_client(summary, names, ("dice", "iou", "dice_pooled", "iou_pooled", "n")),
        "avg": {k: last[k] for k in ("dice", "iou", "dice_pooled", "iou_pooled", "test_loss")},
        "best_round": summary["best"]["round"],
        "best_dice": summary["best"]["dice"],
        "curve_dice": [[h["round"], h["dice"]] for h in r["history"]],
        "params_sha256": summary["params_sha256"],
    }


def markdown(results: list, rounds: int, total_wall: float) -> str:
    names = results[0]["client_names"]
    lines = ["# Table 6 (segmentation), CPU smoke run", "",
             f"**Data substitution.** {SUBSTITUTION}", "",
             f"Protocol here: {rounds} rounds x 1 local epoch (paper: 50 x 1), MONAI UNet "
             f"channels {results[0]['config']['backbone_kwargs']['channels']}, strides "
             f"{results[0]['config']['backbone_kwargs']['strides']}, "
             f"{results[0]['config']['backbone_kwargs']['num_res_units']} "
             "residual units, PReLU, instance norm; Dice + CE (1:1); Adam 1e-3, batch "
             f"{results[0]['config']['batch_size']}; seed {results[0]['config']['seed']}. "
             "Last round, per-image Dice / IoU of the foreground (%), mean over each hospital's test slices; "
             "Avg. = mean over the 4 clients. Empty ground truth and empty prediction scores 1 "
             "(one tumour-free slice per patient is kept).", "",
             "## Measured (TCGA-LGG, 4 hospital clients)", "",
             "| Method | " + " | ".join(f"{n} Dice | {n} IoU" for n in names) + " | Avg. Dice | Avg. IoU |",
             "|---|" + "---:|" * (2 * len(names) + 2)]
    for r in results:
        cells = [f"{100 * r['clients'][n]['dice']:.2f} | {100 * r['clients'][n]['iou']:.2f}" for n in names]
        lines.append(f"| {NAMES.get(r['algorithm'], r['algorithm'])} | " + " | ".join(cells)
                     + f" | {100 * r['avg']['dice']:.2f} | {100 * r['avg']['iou']:.2f} |")
    r0 = results[0]
    lines += ["", "Test slices (patients) per client: "
              + ", ".join(f"{n} {s} ({p})" for n, s, p in zip(names, r0["test_slices"], r0["test_patients"])) + ".",
              "", "Pooled Dice (2 sum I / (sum P + sum T) over a client's test slices), Avg. over clients: "
              + ", ".join(f"{NAMES.get(r['algorithm'], r['algorithm'])} {100 * r['avg']['dice_pooled']:.2f}"
                          for r in results) + ".",
              "", "## Paper, Table 6 (FeTS2022 enhancing tumour, T1ce; 50 rounds)", "",
              "| Method | " + " | ".join(f"{g} Dice | {g} IoU" for g in PAPER_GROUPS) + " |",
              "|---|" + "---:|" * (2 * len(PAPER_GROUPS))]
    for m, vals in PAPER.items():
        lines.append(f"| {m} | " + " | ".join(f"{d:.2f} | {i:.2f}" for d, i in vals) + " |")
    lines += ["", f"Wall time: {total_wall:.0f} s for {len(results)} runs on {platform.processor() or 'CPU'} "
              f"({jax.device_count()} {jax.default_backend()} device(s)); per run: "
              + ", ".join(f"{NAMES.get(r['algorithm'], r['algorithm'])} {r['wall_s']:.0f} s" for r in results) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--algorithms", default="omnifm,fedavg,fedper,local")
    p.add_argument("--json", default=str(RESULTS / "table6_seg_smoke.json"))
    p.add_argument("--md", default=str(RESULTS / "table6_seg_smoke.md"))
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every run")
    args = p.parse_args(argv)
    t0 = time.time()
    results = []
    for alg in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        r = run_one(alg, args.rounds, args.set)
        print(f"{alg}: avg Dice {100 * r['avg']['dice']:.2f} IoU {100 * r['avg']['iou']:.2f} "
              f"({r['wall_s']:.0f} s)", flush=True)
        results.append(r)
    total = time.time() - t0
    out = {"substitution": SUBSTITUTION, "rounds": args.rounds, "paper_rounds": 50, "wall_s": round(total, 1),
           "metric_note": "last round; per-image Dice/IoU of the foreground averaged over a client's test slices "
                          "(empty truth and empty prediction = 1); avg = mean over clients; *_pooled from summed "
                          "counts",
           "paper_table6": {"groups": PAPER_GROUPS, "dice_iou_percent": PAPER},
           "results": results}
    seg_runs.write(args.json, args.md, out, markdown(results, args.rounds, total))
    print(f"wrote {args.json} and {args.md} ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
