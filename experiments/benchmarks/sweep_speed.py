"""Seeds as a run axis: an N-seed sweep as ONE program vs N separate runs.

    python -m experiments.benchmarks.sweep_speed [--config default] [--seeds 3] [--rounds 5]
        [--set key=value ...] [--json FILE] [--md FILE]

Both paths train the same runs on the same data split (``data_seed`` fixed) and evaluate
every round. Reported, each measured in this one process:
  total_s        wall time from the call to the results, compilation and data loading
                 included (what a user waits for);
  rounds_s       the round loop only (training + per-round evaluation), summed over the
                 separate runs;
  ratio          separate / sweep for both.
The first separate run also pays the process's one-off costs (imports, data loading caches);
the sweep runs first, so those costs fall on the sweep.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax

from omnifm_jax import config as config_lib
from omnifm_jax import experiment, sweep


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="default")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    cfg = config_lib.apply_overrides(config_lib.load_config(args.config),
                                     [f"rounds={args.rounds}", "checkpoint_every=0", "data_seed=0"] + args.set)
    seeds = list(range(args.seeds))
    quiet = lambda _: None  # noqa: E731
    t = time.perf_counter()
    swept = sweep.run_sweep(cfg, [{"seed": s} for s in seeds], log=quiet)
    sweep_total = time.perf_counter() - t
    singles, single_total = [], 0.0
    for s in seeds:
        t = time.perf_counter()
        singles.append(experiment.run(dict(cfg, seed=s), progress=False, log=quiet))
        single_total += time.perf_counter() - t
    same = all(abs(a["last"][a["primary_metric"]] - b["last"][b["primary_metric"]]) < 1e-6
               for a, b in zip(swept, singles))
    rec = {"config": args.config, "algorithm": cfg["algorithm"], "dataset": cfg["dataset"], "seeds": args.seeds,
           "rounds": args.rounds, "clients": cfg["num_clients"], "overrides": args.set,
           "sweep_total_s": round(sweep_total, 2), "separate_total_s": round(single_total, 2),
           "total_ratio": round(single_total / sweep_total, 2),
           "sweep_rounds_s": swept[0]["wall_time_s"],
           "separate_rounds_s": round(sum(s["wall_time_s"] for s in singles), 2),
           "rounds_ratio": round(sum(s["wall_time_s"] for s in singles) / swept[0]["wall_time_s"], 2),
           "same_last_metric": same, "device": str(jax.devices()[0]), "backend": jax.default_backend()}
    md = ("| config | algorithm | seeds x rounds | one program (s) | separate runs (s) | separate / one | "
          "round loops: one program (s) | separate (s) | separate / one | same results |\n"
          "|---|---|---|---|---|---|---|---|---|---|\n"
          f"| {rec['config']} {' '.join(args.set)} | {rec['algorithm']} | {args.seeds} x {args.rounds} | "
          f"{rec['sweep_total_s']} | {rec['separate_total_s']} | {rec['total_ratio']} | {rec['sweep_rounds_s']} | "
          f"{rec['separate_rounds_s']} | {rec['rounds_ratio']} | {same} |\n\nDevice: {rec['device']} "
          f"({rec['backend']}). Totals include compilation and data loading.\n")
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2))
    if args.md:
        Path(args.md).write_text(md)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
