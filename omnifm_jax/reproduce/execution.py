"""Run a plan: set up every federation first (:func:`check_data`), then run its programs
(:func:`execute`), handing each program's summaries on as soon as it finishes (so a long
table is written cell by cell and can be resumed).

A program runs through :func:`omnifm_jax.sweep.run_sweep`; if that refuses it
(ConfigError), its runs run one by one through :func:`omnifm_jax.experiment.run`, and the
log and ``protocol.md`` say so.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce import plan as plan_lib
from omnifm_jax.reproduce.plan import Plan, Program

__all__ = ["check_data", "execute", "run_program", "pretrain_state", "run_pretrains", "time_left"]

Results = Dict[Tuple[int, int], Dict[str, Any]]


def _data_key(cfg: Dict[str, Any]) -> str:
    return plan_lib.canonical({k: cfg[k] for k in ("dataset", "dataset_kwargs", "num_clients", "data_seed", "task",
                                                   "backbone", "backbone_kwargs", "batch_size", "drop_last")})


def _check_clients(plan: Plan, ci: int, fed) -> None:
    cell = plan.cells[ci].cell
    if cell.client is None:
        return
    where = f"{plan.table.name} cell ({cell.row}, {cell.col})"
    if not 0 <= cell.client < fed.num_clients:
        raise ConfigError(f"{where}: client {cell.client} of a federation of {fed.num_clients} clients")
    names = fed.info.get("client_names")
    if cell.client_name is not None and names is not None and names[cell.client] != cell.client_name:
        raise ConfigError(f"{where}: client {cell.client} is {names[cell.client]!r} in the data, the table says "
                          f"{cell.client_name!r}")


def _quiet(_: str) -> None:
    pass


def pretrain_state(path: Path, cfg: Dict[str, Any]) -> str:
    """``"finished"`` (a run with this config finished there), ``"unfinished"`` (a run with
    this config started there and did not finish), ``"absent"`` (nothing there), or
    ``"other"`` (anything else: another config, files that are not a run)."""
    path = Path(path)
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return "absent"
    try:
        saved = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return "other"
    if plan_lib.config_sha(saved, path.parent) != plan_lib.config_sha(cfg, path.parent):
        return "other"
    return "finished" if (path / "summary.json").is_file() else "unfinished"


def run_pretrains(plan: Plan, *, progress: bool = False, log: Callable[[str], None] = print,
                  run_log: Callable[[str], None] = _quiet) -> None:
    """Run the plan's pretraining runs in order (each an ordinary run into its folder); one
    that finished with the same config is kept, one that started with the same config and was
    interrupted runs again from the start (its only checkpoint is at its last round). A folder
    holding anything else stops here (ConfigError): its cells would start from a model this
    table did not plan."""
    from omnifm_jax import experiment

    for pp in plan.pretrains_to_run():
        state = pretrain_state(pp.path, pp.config)
        if state == "finished":
            log(f"  pretrain {pp.pretrain.key}: kept ({pp.path} finished with the same config)")
            continue
        if state == "other":
            raise ConfigError(f"{plan.table.name} pretrain {pp.pretrain.key!r}: {pp.path} holds another run (or "
                              "files that are not a run); delete it (or use another --out) to pretrain again")
        log(f"  pretrain {pp.pretrain.key}: {pp.config['algorithm']} on {pp.config['dataset']}, "
            f"{pp.config['rounds']} rounds -> {pp.path}" + (" (again: interrupted before)" * (state == "unfinished")))
        start = time.time()
        experiment.run(copy.deepcopy(pp.config), pp.path, progress=progress, log=run_log,
                       overwrite=state == "unfinished")
        log(f"    done in {time.time() - start:.1f} s")


def check_data(plan: Plan) -> List[Dict[str, Any]]:
    """Set up every distinct federation of the plan through the one run path
    (:func:`omnifm_jax.experiment.setup`: data, task, model; the fine-tuning checks of a cell
    whose pretrained model is not trained yet wait for it) before any training (a missing
    file, a bad data option, a client without a test sample, a task that does not fit the
    images, or a per-client column that names another client stops here), and compute the
    table's model-free references on it. Returns one description per federation for
    ``protocol.md``: its data, the cells it serves (``cell_indices``) and ``references``
    (``{name: {"avg": ..., "clients": [...]}}``)."""
    from omnifm_jax import experiment
    from omnifm_jax.data.describe import describe

    seen: Dict[str, Dict[str, Any]] = {}
    pending = {str(pp.path) for pp in plan.pretrains_to_run() if pretrain_state(pp.path, pp.config) != "finished"}
    for ci, pc in enumerate(plan.cells):
        cfg = pc.configs[0]
        key = _data_key(cfg)
        kept = all((ci, si) in plan.done for si in range(len(plan.seeds)))
        if cfg.get("init_from") in pending or kept:  # pretrained later (dry run), or not run: check all else now
            cfg = dict(cfg, init_from=None, init_params=None)
        where = f"{plan.table.name} cell ({pc.cell.row}, {pc.cell.col})"
        if key in seen:  # the data are loaded once; the cell's own task and algorithm are built on them
            seen[key]["cells"].append(f"{pc.cell.row} / {pc.cell.col}")
            seen[key]["cell_indices"].append(ci)
            _check_clients(plan, ci, seen[key]["_fed"])
            if not kept:
                try:
                    experiment.setup(cfg, fed=seen[key]["_fed"])
                except (ValueError, FileNotFoundError, ConfigError) as exc:
                    raise ConfigError(f"{where}: {exc}") from None
            continue
        try:
            prepared = experiment.setup(cfg)
        except (ValueError, FileNotFoundError, ConfigError) as exc:
            raise ConfigError(f"{where}: data: {exc}") from None
        fed = prepared.fed
        _check_clients(plan, ci, fed)
        try:
            text = describe(fed)
        except Exception as exc:  # a description is a nicety; never block the run on it
            text = f"(no description: {type(exc).__name__}: {exc})"
        seen[key] = {"dataset": cfg["dataset"], "dataset_kwargs": cfg["dataset_kwargs"],
                     "num_clients": cfg["num_clients"], "data_seed": cfg["data_seed"],
                     "train": int(sum(int(n) for n in fed.train.n)), "test": int(sum(int(n) for n in fed.test.n)),
                     "describe": text, "cells": [f"{pc.cell.row} / {pc.cell.col}"], "cell_indices": [ci],
                     "references": {ref.name: ref.compute(prepared) for ref in plan.table.references},
                     "_fed": fed}
    return [{k: v for k, v in d.items() if k != "_fed"} for d in seen.values()]


def run_program(prog: Program, *, progress: bool = False, log: Callable[[str], None] = print,
                run_log: Callable[[str], None] = _quiet) -> List[Dict[str, Any]]:
    """The summaries of one program's runs (in ``prog.runs`` order); sets ``prog.mode`` when
    ``run_sweep`` refuses it and the runs run one by one."""
    from omnifm_jax import experiment

    sweep = plan_lib._import_sweep()
    if prog.mode == "sweep" and sweep is not None:
        try:
            return list(sweep.run_sweep(prog.base, prog.runs, progress=progress, log=run_log))
        except ConfigError as exc:
            prog.mode = f"separate: run_sweep refused it ({exc})"
            log(f"    run_sweep refused this program ({exc}); its {len(prog.runs)} runs run as separate programs")
    summaries = []
    for run in prog.runs:
        cfg = copy.deepcopy(prog.base)
        for k, v in run.items():
            cfg = config_lib.set_dotted(cfg, k, v)
        s = experiment.run(cfg, None, progress=progress, log=run_log)
        s.pop("state", None)
        s["runs_in_program"] = 1
        summaries.append(s)
    return summaries


def execute(plan: Plan, *, progress: bool = False, log: Callable[[str], None] = print,
            run_log: Callable[[str], None] = _quiet,
            on_program: Optional[Callable[[Plan, Results], None]] = None) -> Results:
    """Run every program; returns ``{(cell index, seed index): summary}``. ``on_program``
    gets each program's results as soon as it finishes."""
    out: Results = {}
    total = len(plan.programs)
    run_rounds = [sum(int({**prog.base, **r}["rounds"]) for r in prog.runs) for prog in plan.programs]
    began = time.time()
    for pi, prog in enumerate(plan.programs):
        names = sorted({f"{plan.cells[ci].cell.row} / {plan.cells[ci].cell.col}"
                        for ms in prog.members for ci, _ in ms})
        log(f"[{pi + 1}/{total}] {len(prog.runs)} run(s): {'; '.join(names)}")
        start = time.time()
        summaries = run_program(prog, progress=progress, log=log, run_log=run_log)
        prog.wall_time_s = round(time.time() - start, 2)
        done: Results = {}
        for members, summary in zip(prog.members, summaries):
            summary = dict(summary, program=pi, program_mode=prog.mode)
            summary.pop("state", None)
            for m in members:
                done[m] = summary
        out.update(done)
        if on_program is not None:
            on_program(plan, done)
        log(f"    done in {prog.wall_time_s:.1f} s" + time_left(time.time() - began, sum(run_rounds[:pi + 1]),
                                                               sum(run_rounds[pi + 1:]), total - pi - 1))
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min" if seconds < 5400 else \
        f"{seconds / 3600:.1f} h"


def time_left(elapsed_s: float, done_run_rounds: int, left_run_rounds: int, left_programs: int) -> str:
    """``"; ~X left ..."``: the programs still to run at this sitting's pace so far (seconds per
    run-round), or ``""`` when none is left."""
    if not left_programs or done_run_rounds <= 0:
        return ""
    return (f"; ~{_duration(elapsed_s / done_run_rounds * left_run_rounds)} left for {left_programs} program(s) "
            "at this sitting's pace")
