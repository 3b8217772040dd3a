"""Seeds as a run axis: an N-seed sweep as ONE program vs N separate runs.

    python -m experiments.benchmarks.sweep_speed [--config default] [--seeds 3] [--rounds 5]
        [--set key=value ...] [--json FILE] [--md FILE]

Both paths train the same runs on the same data split (``data_seed`` fixed) and evaluate
every round. Reported, each measured in this one process:
  total_s        wall time from the call to the results, compilation and data loading
                 included (what a user waits for);
  rounds_s       the round loop only (training + per-round evaluation), summed over the
                 separate runs;
  ratio          separate / sweep for both;
for each run axis of the one program (``--run-axis``: ``vmap`` batches the runs, ``map``
steps through them inside the program; ``omnifm_jax.sweep``).
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

#: Largest relative difference of the last primary metric that counts as the same result.
RESULT_TOL = 1e-3


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="default")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--run-axis", default="vmap,map",
                   help=f"comma-separated run axes of the one program to measure, from {sweep.RUN_AXES[1:]}")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    args = p.parse_args(argv)
    axes = [sweep.resolve_run_axis(a) for a in args.run_axis.split(",") if a]  # validates; "auto" resolved
    cfg = config_lib.apply_overrides(config_lib.load_config(args.config),
                                     [f"rounds={args.rounds}", "checkpoint_every=0", "data_seed=0"] + args.set)
    seeds = list(range(args.seeds))
    quiet = lambda _: None  # noqa: E731
    swept = {}
    for a in axes:
        t = time.perf_counter()
        out = sweep.run_sweep(cfg, [{"seed": s} for s in seeds], log=quiet, run_axis=a)
        swept[a] = (out, time.perf_counter() - t)
    singles, single_total = [], 0.0
    for s in seeds:
        t = time.perf_counter()
        singles.append(experiment.run(dict(cfg, seed=s), progress=False, log=quiet))
        single_total += time.perf_counter() - t
    metric = singles[0]["primary_metric"]
    separate_rounds = sum(s["wall_time_s"] for s in singles)
    records = []
    for a, (out, total) in swept.items():
        diff = max(abs(x["last"][metric] - y["last"][metric]) for x, y in zip(out, singles))
        records.append({
            "config": args.config, "algorithm": cfg["algorithm"], "dataset": cfg["dataset"], "seeds": args.seeds,
            "rounds": args.rounds, "clients": cfg["num_clients"], "overrides": args.set, "run_axis": a,
            "sweep_total_s": round(total, 2), "separate_total_s": round(single_total, 2),
            "total_ratio": round(single_total / total, 2), "sweep_rounds_s": out[0]["wall_time_s"],
            "separate_rounds_s": round(separate_rounds, 2),
            "rounds_ratio": round(separate_rounds / out[0]["wall_time_s"], 2),
            "metric": metric, "max_last_metric_diff": diff,
            # float rounding only: the one program may order operations otherwise, and training
            # amplifies that over rounds (the sweep module's docstring)
            "same_last_metric": diff <= RESULT_TOL * max(1.0, abs(singles[0]["last"][metric])),
            "device": str(jax.devices()[0]), "backend": jax.default_backend()})
    md = ("| config | algorithm | run axis | seeds x rounds | one program (s) | separate runs (s) | separate / one | "
          "round loops: one program (s) | separate (s) | separate / one | max diff of the last metric |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|\n")
    for r in records:
        md += (f"| {r['config']} {' '.join(args.set)} | {r['algorithm']} | {r['run_axis']} | {args.seeds} x "
               f"{args.rounds} | {r['sweep_total_s']} | {r['separate_total_s']} | {r['total_ratio']} | "
               f"{r['sweep_rounds_s']} | {r['separate_rounds_s']} | {r['rounds_ratio']} | "
               f"{r['max_last_metric_diff']:.2e} ({r['metric']}) |\n")
    md += (f"\nDevice: {records[0]['device']} ({records[0]['backend']}). Totals include compilation and data "
           "loading; the separate runs are measured once and compared with each run axis.\n")
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    if args.md:
        Path(args.md).write_text(md)
    return 0 if all(r["same_last_metric"] for r in records) else 1


if __name__ == "__main__":
    raise SystemExit(main())
