"""FedMEPD vs baselines on TCGA-LGG with missing modalities, CPU smoke run.

    python -m experiments.fedmepd_table [--rounds 3] [--algorithms fedmepd,fedavg,fedper,local,omnifm]
        [--json FILE] [--md FILE] [--set k=v ...]

Every algorithm runs ``experiments/configs/fedmepd_lgg.py``'s federation (``fedmepd_lgg``: 4
hospital clients, each with its modality subset, absent channels zeroed; the full-modal
server patients held out of every client) through ``omnifm_jax.experiment.run``. FedMEPD
uses its own per-modality encoders + fusion decoder and the server's full-modal set; the
baselines use the config's MONAI UNet backbone (``unet``, channels 8..128) on the same
zeroed 3-channel inputs and never see the server's set. Reported: the LAST round's
per-client Dice (per-image mean, %), with each client's modality subset.

Caveat: FedMEPD is implemented from the paper's ABSTRACT only (Wei et al., MedIA 2025); its
evaluation is BraTS 2018/2020 (4 MR sequences, 3 tumour regions), which is not available
here; TCGA-LGG FLAIR-abnormality slices (3 sequences, one binary target) stand in. A few
rounds on CPU: a smoke comparison, not a reproduction.
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import jax

from omnifm_jax import config as config_lib, experiment

RESULTS = Path(__file__).resolve().parent / "results"
NAMES = {"fedmepd": "FedMEPD", "omnifm": "OmniFM", "fedavg": "FedAvg", "fedper": "FedPer", "local": "Local"}
SHORT = ("T1", "FLAIR", "T1Gd")
CAVEAT = ("FedMEPD implemented from the abstract only (Wei et al., MedIA 2025); the paper evaluates on BraTS "
          "2018/2020 (4 sequences), not available here: TCGA-LGG FLAIR-abnormality slices (64x64; pre-contrast "
          "T1 / FLAIR / post-contrast T1Gd) stand in, with per-hospital modality subsets imposed by zeroing "
          "channels. A few CPU rounds: a smoke comparison, not a reproduction.")
#: Small OmniFM hyper-parameters as in the other CPU smoke runs (its defaults otherwise).
ALG_SETS = {"omnifm": []}


def run_one(algorithm: str, rounds: int, overrides) -> dict:
    base = config_lib.load_config("fedmepd_lgg")
    sets = [f"rounds={rounds}", "eval_train_loss=False", "checkpoint_every=0", *overrides]
    if algorithm != "fedmepd":
        # switching the algorithm resets algorithm_kwargs (FedMEPD's server set is FedMEPD's only)
        sets = [f"algorithm={algorithm}", *ALG_SETS.get(algorithm, []), *sets]
    cfg = config_lib.apply_overrides(base, sets)
    config_lib.validate(cfg)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        summary = experiment.run(cfg, tmp, progress=False, log=lambda s: None)
        wall = time.time() - t0
        history = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    fed = experiment.load_data(cfg)
    names = fed.info["client_names"]
    subsets = fed.info["modality_subsets"]
    return {
        "algorithm": algorithm, "config": cfg, "wall_s": round(wall, 1), "client_names": names,
        "modality_subsets": subsets, "test_slices": [int(n) for n in fed.test.n],
        "server_patients": len(fed.info["server_patients"]), "dropped_patients": fed.info["dropped_patients"],
        "clients": {n: {k: c[k] for k in ("dice", "iou", "dice_pooled", "n")}
                    for n, c in zip(names, summary["last_clients"])},
        "avg": {k: summary["last"][k] for k in ("dice", "iou", "dice_pooled", "test_loss")},
        "curve_dice": [[h["round"], h["dice"]] for h in history],
    }


def markdown(results: list, rounds: int, total_wall: float) -> str:
    r0 = results[0]
    names, subsets = r0["client_names"], r0["modality_subsets"]
    head = [f"{n} [{'+'.join(SHORT[m] for m in s)}]" for n, s in zip(names, subsets)]
    lines = ["# FedMEPD on TCGA-LGG with missing modalities, CPU smoke run", "",
             f"**Caveat.** {CAVEAT}", "",
             f"{rounds} rounds x 1 local epoch, Adam 1e-3, batch {r0['config']['batch_size']}, Dice + CE, seed "
             f"{r0['config']['seed']}. Server: {r0['server_patients']} full-modal patients held out of every client "
             f"(used by FedMEPD only). Patients left out for lacking a declared sequence: "
             f"{', '.join(r0['dropped_patients']) or 'none'}. Baselines: MONAI UNet (channels "
             f"{r0['config']['backbone_kwargs']['channels']}) on the same zeroed inputs. Last round, per-image "
             "Dice of the foreground (%); Avg. = mean over clients.", "",
             "| Method | " + " | ".join(head) + " | Avg. Dice | wall s |",
             "|---|" + "---:|" * (len(names) + 2)]
    for r in results:
        cells = [f"{100 * r['clients'][n]['dice']:.2f}" for n in names]
        lines.append(f"| {NAMES.get(r['algorithm'], r['algorithm'])} | " + " | ".join(cells)
                     + f" | {100 * r['avg']['dice']:.2f} | {r['wall_s']:.0f} |")
    lines += ["", "Test slices per client: " + ", ".join(f"{n} {s}" for n, s in zip(names, r0["test_slices"])) + ".",
              "", f"Wall time {total_wall:.0f} s on {platform.processor() or 'CPU'} ({jax.device_count()} "
              f"{jax.default_backend()} device(s), shared with other jobs)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--algorithms", default="fedmepd,fedavg,fedper,local,omnifm")
    p.add_argument("--json", default=str(RESULTS / "fedmepd_lgg_smoke.json"))
    p.add_argument("--md", default=str(RESULTS / "fedmepd_lgg_smoke.md"))
    p.add_argument("--set", dest="set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    t0 = time.time()
    results = []
    for alg in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        r = run_one(alg, args.rounds, args.set)
        print(f"{alg}: avg Dice {100 * r['avg']['dice']:.2f} ({r['wall_s']:.0f} s) "
              + ", ".join(f"{n} {100 * c['dice']:.1f}" for n, c in r["clients"].items()), flush=True)
        results.append(r)
        total = time.time() - t0
        out = {"caveat": CAVEAT, "rounds": args.rounds, "wall_s": round(total, 1), "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2, default=list))
        Path(args.md).write_text(markdown(results, args.rounds, total))
    print(f"wrote {args.json} and {args.md} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
