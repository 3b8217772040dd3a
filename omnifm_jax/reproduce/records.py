"""Records: one per cell and seed, in the paper's units, as the CSV and ``<table>_cells.jsonl``
hold them (pure functions and file I/O; nothing is run here).

A record holds the data split it ran on (``data_seed``), the measured value of each metric
under both evaluation rules (``<metric>_best``, ``<metric>_last``), the paper's number
(``<metric>_paper``), the task's model-free baseline (``<metric>_baseline``, e.g. bicubic for
SR), whether the run had plateaued on the metric :func:`~omnifm_jax.reproduce.stats.judged_metric`
picks (``converged``, the rule of :func:`omnifm_jax.reproduce.stats.converged`; None without a
round history), and how it was run (config, overrides, program, ``config_sha`` for ``--resume``).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omnifm_jax.reproduce.plan import Plan, config_sha
from omnifm_jax.reproduce.spec import Cell, Metric
from omnifm_jax.reproduce.stats import client_entry, converged, judged_metric

__all__ = ["CSV_FIXED", "records_from", "references_from", "write_csv", "read_csv", "append_jsonl", "read_jsonl",
           "record_key", "merge_records"]

CSV_FIXED = ("table", "scale", "row", "col", "row_key", "col_key", "seed", "data_seed", "config", "dataset",
             "algorithm", "rounds", "best_round", "last_round")


def _round_line(summary: Mapping[str, Any], r: Any) -> Optional[Mapping[str, Any]]:
    return next((h for h in summary.get("history") or () if h.get("round") == r), None)


def _line(summary: Mapping[str, Any], cell: Cell, which: str) -> Optional[Mapping[str, Any]]:
    """The metrics a cell reads from a run's summary under rule ``which`` (best / last)."""
    if cell.at_round is not None:
        line = _round_line(summary, cell.at_round)
        if line is None or cell.client is None:
            return line
        return client_entry(line.get("clients"), cell.client)
    if cell.client is None:
        return summary.get(which)
    if which == "last" and "last_clients" in summary:
        return summary["last_clients"][cell.client]
    line = _round_line(summary, (summary.get(which) or {}).get("round"))
    return None if line is None or "clients" not in line else line["clients"][cell.client]


def _value(line: Optional[Mapping[str, Any]], metric: Metric, base: Optional[Mapping[str, Any]]) -> Optional[float]:
    v = None if line is None else line.get(metric.key)
    if v is None:
        return None
    if metric.minus_baseline:
        if not base or base.get(metric.key) is None:
            return None
        v = float(v) - float(base[metric.key])
    return float(v) * metric.factor


def records_from(plan: Plan, results: Mapping[Tuple[int, int], Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One record per cell and seed that ``results`` holds, metrics in the paper's units."""
    recs = []
    t = plan.table
    for ci, pc in enumerate(plan.cells):
        cell = pc.cell
        for si, seed in enumerate(plan.seeds):
            s = results.get((ci, si))
            if s is None:
                continue
            cfg = pc.configs[si]
            rec = {"table": t.name, "scale": plan.scale, "row": cell.row, "col": cell.col,
                   "row_key": cell.row_key, "col_key": cell.col_key, "seed": seed, "data_seed": cfg.get("data_seed"),
                   "config": pc.setting.config, "dataset": cfg["dataset"], "algorithm": cfg["algorithm"],
                   "rounds": cfg["rounds"], "best_round": (s.get("best") or {}).get("round"),
                   "last_round": (s.get("last") or {}).get("round")}
            base = s.get("baseline") or None
            if base and cell.client is not None:
                base = client_entry(s.get("baseline_clients"), cell.client)
            reported = cell.reports(t.metrics)
            history = s.get("history")
            rec["converged"] = None   # judged below, once the metric values are in (the CSV keeps its column order)
            for m in reported:
                metric = t.metric(m)
                for which in ("best", "last"):
                    rec[f"{m}_{which}"] = _value(_line(s, cell, which), metric, base)
                rec[f"{m}_paper"] = cell.paper_value(m)
                if base and metric.key in base and not metric.minus_baseline:
                    rec[f"{m}_baseline"] = float(base[metric.key]) * metric.factor
            judged = judged_metric(reported, rec)
            if history and judged is not None:
                rec["converged"] = converged(history, t.metric(judged), cell.client)
            rec.update(program=s.get("program"), runs_in_program=s.get("runs_in_program", 1),
                       program_mode=s.get("program_mode", ""), program_wall_time_s=s.get("wall_time_s"),
                       overrides=";".join(pc.setting.overrides + cell.overrides + plan.overrides
                                          + ((f"rounds={plan.rounds}",) if plan.rounds is not None else ())),
                       config_sha=config_sha(cfg, plan.pretrained_dir))
            recs.append(rec)
    return recs


def references_from(plan: Plan, data: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """``{reference name: {col_key: {metric: value}}}`` in the paper's units, from the
    references :func:`~omnifm_jax.reproduce.execution.check_data` computed per federation
    (a column's value: its client's, or the mean over clients)."""
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    t = plan.table
    for d in data:
        for name, ref in (d.get("references") or {}).items():
            for ci in d["cell_indices"]:
                cell = plan.cells[ci].cell
                line = ref["avg"] if cell.client is None else ref["clients"][cell.client]
                vals = {m: float(line[t.metric(m).key]) * t.metric(m).factor for m in cell.reports(t.metrics)
                        if line.get(t.metric(m).key) is not None and not t.metric(m).minus_baseline}
                out.setdefault(name, {}).setdefault(cell.col_key, {}).update(vals)
    return out


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """One row per cell and seed; metric columns ``<metric>_best``, ``<metric>_last``,
    ``<metric>_paper`` (and ``<metric>_baseline`` for SR), in the paper's units."""
    extra = list(dict.fromkeys(k for r in records for k in r if k not in CSV_FIXED))
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIXED) + extra)
        w.writeheader()
        for r in records:
            w.writerow({k: ("" if v is None else v) for k, v in r.items()})


def read_csv(path: Path) -> List[Dict[str, Any]]:
    with Path(path).open() as f:
        return [{k: (v if v != "" else None) for k, v in row.items()} for row in csv.DictReader(f)]


def append_jsonl(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Append records, one JSON line each, flushed (a finished cell survives an interrupt)."""
    with Path(path).open("a") as f:
        for r in records:
            f.write(json.dumps(r, default=repr) + "\n")
        f.flush()


def read_jsonl(path: Path) -> List[Dict[str, Any]]:
    """The records of a ``_cells.jsonl`` (a torn last line, from a killed run, is skipped)."""
    if not Path(path).is_file():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def record_key(r: Mapping[str, Any]) -> Tuple[str, str, int]:
    return (str(r["row_key"]), str(r["col_key"]), int(r["seed"]))


def merge_records(old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """``old`` then ``new`` records, a later record of the same (row, column, seed) replacing
    an earlier one in place."""
    out: Dict[Tuple[str, str, int], Dict[str, Any]] = {}
    for r in list(old) + list(new):
        out[record_key(r)] = dict(r)
    return list(out.values())
