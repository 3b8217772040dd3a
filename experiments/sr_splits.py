"""How much an image-level BreaKHis split inflates super-resolution scores.

    python -m experiments.sr_splits [--rounds 40] [--seeds 0,1,2] [--algorithms omnifm,fedavg]
        [--json FILE] [--md FILE]

Runs the ``sr_breakhis`` config (3 clients by magnification, x2) with the default
patient-level split (test patients, i.e. accession numbers, held out from every client)
and with ``group_split=image`` (test images held out, but other fields of their slides
trained on), for each algorithm and seed. Each seed draws its own split. Reports the PSNR
and SSIM of the last round and of the best round (the engine's "best", chosen on the test
set as PFLlib does), and the bicubic baseline on the same test patches, so the gain over
bicubic is comparable between splits whose test images differ.
Needs the BreaKHis PNGs (``OMNIFM_REAL_DATA``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from omnifm_jax import config as config_lib
from omnifm_jax import experiment

SPLITS = ("patient", "image")


def run_one(algorithm: str, split: str, seed: int, rounds: int) -> dict:
    cfg = config_lib.load_config("sr_breakhis")
    cfg = config_lib.apply_overrides(cfg, [f"algorithm={algorithm}", f"rounds={rounds}", f"seed={seed}",
                                           f"dataset_kwargs.group_split={split}", "checkpoint_every=0"])
    t0 = time.time()
    s = experiment.run(cfg, progress=False, log=lambda _: None)
    return {"algorithm": algorithm, "group_split": split, "seed": seed, "rounds": rounds,
            "psnr_last": s["last"]["psnr"], "ssim_last": s["last"]["ssim"],
            "psnr_best": s["best"]["psnr"], "ssim_best": s["best"]["ssim"],
            "psnr_bicubic": s["baseline"]["psnr"], "ssim_bicubic": s["baseline"]["ssim"],
            "wall_s": round(time.time() - t0, 1)}


def table(rows: list[dict]) -> str:
    def ms(vals):
        vals = np.asarray(vals, np.float64)
        return f"{vals.mean():.2f} ± {vals.std(ddof=1) if vals.size > 1 else 0.0:.2f}"

    algs = list(dict.fromkeys(r["algorithm"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    lines = [f"BreaKHis x2, 3 clients by magnification, {rows[0]['rounds']} rounds, seeds {seeds} "
             f"(mean ± std over seeds; PSNR in dB)", "",
             "| algorithm | split | PSNR last | PSNR best | bicubic PSNR | last − bicubic | SSIM last |",
             "|---|---|---|---|---|---|---|"]
    for a in algs:
        for sp in SPLITS:
            rr = [r for r in rows if r["algorithm"] == a and r["group_split"] == sp]
            if not rr:
                continue
            lines.append(f"| {a} | {sp} | {ms([r['psnr_last'] for r in rr])} | {ms([r['psnr_best'] for r in rr])} | "
                         f"{ms([r['psnr_bicubic'] for r in rr])} | "
                         f"{ms([r['psnr_last'] - r['psnr_bicubic'] for r in rr])} | "
                         f"{ms([r['ssim_last'] for r in rr])} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--algorithms", default="omnifm,fedavg")
    p.add_argument("--json", default="experiments/results/sr_breakhis_splits.json")
    p.add_argument("--md", default="experiments/results/sr_breakhis_splits.md")
    args = p.parse_args(argv)
    rows = []
    for a in args.algorithms.split(","):
        for sp in SPLITS:
            for seed in (int(s) for s in args.seeds.split(",")):
                rows.append(run_one(a, sp, seed, args.rounds))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
    Path(args.md).write_text(table(rows))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
