"""Run a table end to end (:func:`reproduce`), re-render one from its results without running
anything (:func:`render`), and list the tables (:func:`table_listing`).

A table writes under ``out``: ``<table>.md``, ``.csv``, ``.png``, ``.json``,
``<table>_protocol.md`` and ``<table>_cells.jsonl``, the records of the finished cells,
appended as each compiled program finishes. ``resume=True`` keeps the finished cells whose
config is the one planned now and runs only the others, so a table can be built over
several sittings (and an interrupted run continues where it stopped).

A table's files in ``out`` belong to one sitting at a time (the rules of
:mod:`omnifm_jax.rundir`): a sitting holds a lock of its own table (``.omnifm-<table>.lock``)
from before its first write to its end, so a second sitting of the same table on the same folder
is refused while the first runs; and a folder that already holds the table's files is refused
unless the sitting continues them (``resume``) or replaces them as a whole (``overwrite``), so
a command run again without ``--resume`` cannot wipe the cells of hours of earlier sittings.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from omnifm_jax import rundir
from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce import registry
from omnifm_jax.reproduce.execution import check_data, execute, pretrain_state, run_pretrains
from omnifm_jax.reproduce.plan import build_plan
from omnifm_jax.reproduce.records import (
    append_jsonl,
    merge_records,
    read_csv,
    read_jsonl,
    record_key,
    records_from,
    references_from,
    write_csv,
)
from omnifm_jax.reproduce.spec import Table
from omnifm_jax.reproduce.stats import evaluate_claims
from omnifm_jax.reproduce.writers import estimate_text, protocol_text, with_earlier_sittings, write_markdown, write_plot

__all__ = ["output_files", "table_claim", "reproduce", "render", "table_listing"]

Dirs = Sequence[Union[str, Path]]


def output_files(table: str, out: Path) -> List[Path]:
    """What a table writes under ``out``: ``<table>.md``, ``.csv``, ``.png``, ``.json``,
    ``<table>_protocol.md`` and ``<table>_cells.jsonl``. Every name starts with the table's,
    so tables can share an ``out``."""
    return [out / f"{table}.md", out / f"{table}.csv", out / f"{table}.png", out / f"{table}.json",
            out / f"{table}_protocol.md", out / f"{table}_cells.jsonl"]


def table_claim(table: str, out: Path, *, resume: bool = False, overwrite: bool = False) -> rundir.RunDirectory:
    """The claim of one sitting of ``table`` on its files in ``out`` (a :class:`~omnifm_jax.rundir.RunDirectory`,
    not yet acquired; not to be confused with the paper's claims, :class:`Claim`)."""
    return rundir.RunDirectory(out, resume=resume, overwrite=overwrite,
                               outputs=[f.name for f in output_files(table, out)],
                               lock_name=f".omnifm-{table}.lock", what=f"an earlier sitting of {table}")


def _sorted(table: Table, records: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    order = {(c.row_key, c.col_key): i for i, c in enumerate(table.cells)}
    return sorted(records, key=lambda r: (order.get((r["row_key"], r["col_key"]), len(order)), int(r["seed"])))


def _seeds(plan_seeds: Sequence[int], records: Sequence[Dict[str, Any]]) -> List[int]:
    """Every seed of the table, in order (a sitting and :func:`render` both list them with this,
    so a sitting that adds seeds 1-2 to a table of seed 0 lists [0, 1, 2] and a re-render is
    byte-identical)."""
    return sorted(set(plan_seeds) | {int(r["seed"]) for r in records})


def _finished_records(files: List[Path], *, write: bool) -> Tuple[List[Dict[str, Any]], Path]:
    """The records of a table's finished cells and the file they come from: ``<table>_cells.jsonl``,
    or, where there is none, ``<table>.json`` (with ``write``, its records are copied into a new
    ``_cells.jsonl`` first, so that an interrupted sitting still finds them)."""
    cells_path, json_path = files[5], files[3]
    if cells_path.is_file() or not json_path.is_file():
        return read_jsonl(cells_path), cells_path
    try:
        records = json.loads(json_path.read_text())["records"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot resume from {json_path}: {exc}") from None
    if write:
        append_jsonl(records, cells_path)
    return records, json_path


def _resplit(plan, old: Sequence[Dict[str, Any]]) -> Dict[Tuple[str, str, int], int]:
    """The finished pairs of ``old`` that this plan runs again because they ran on another data
    split: ``{(row_key, col_key, seed): their data_seed}`` (records without one are not counted)."""
    planned = {(pc.cell.row_key, pc.cell.col_key, s): cfg.get("data_seed")
               for pc in plan.cells for s, cfg in zip(plan.seeds, pc.configs)}
    out = {}
    for r in old:
        key = record_key(r)
        if key in planned and r.get("data_seed") not in (None, "") and int(r["data_seed"]) != planned[key]:
            out[key] = int(r["data_seed"])
    return out


def reproduce(table: Union[str, Table], *, scale: Optional[str] = None, out: Optional[Union[str, Path]] = None,
              seeds: Sequence[int] = (0, 1, 2), rounds: Optional[int] = None, rows: Optional[Sequence[str]] = None,
              cols: Optional[Sequence[str]] = None, overrides: Sequence[str] = (), rule: Optional[str] = None,
              progress: bool = False, log: Callable[[str], None] = print, command: Optional[str] = None,
              dry_run: bool = False, data_root: Optional[Path] = None, tables: Dirs = (),
              resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Run a table and write its outputs (:func:`output_files`) under ``out`` (default
    ``runs/reproduce/<table>``).

    Everything (table, rows, columns, every cell's config, and every federation's data) is
    checked before any training. ``dry_run`` stops after the checks and the plan.
    ``resume``: keep the finished cells of ``<table>_cells.jsonl`` (same scale and config)
    and run the others; a folder without it (a committed table: md, csv, json, png, protocol)
    resumes from the records of ``<table>.json``, e.g. to add seeds to it. ``overwrite``: replace
    the table's files in ``out`` (all of them, before anything is written). Without either, a
    folder that holds the table's files is refused (:class:`~omnifm_jax.rundir.RunDirError`),
    and so is one another sitting of the table is writing to. ``tables``: folders of table
    files besides the default ones.
    Returns ``{"out", "files", "records", "claims", "plan", "markdown"}``.
    """
    t = table if isinstance(table, Table) else registry.get_table(table, tables)
    name = t.name
    out = Path(out) if out is not None else Path("runs") / "reproduce" / name
    files = output_files(name, out)
    cells_path = files[5]
    scale_name = t.default_scale if scale is None else scale
    sitting = table_claim(name, out, resume=resume, overwrite=overwrite)
    sitting.check()  # before any work
    old, source = _finished_records(files, write=False) if resume else ([], cells_path)
    old = [r for r in old if r.get("scale") == scale_name]
    plan = build_plan(t, scale=scale, seeds=seeds, rows=rows, cols=cols, rounds=rounds, overrides=overrides,
                      rule=rule, data_root=data_root, done={record_key(r): r.get("config_sha") for r in old},
                      pretrained_dir=out / "pretrained")
    command = command or (f"omnifm_jax.reproduce.reproduce({name!r}, scale={plan.scale!r}, seeds={list(seeds)}, "
                          f"rounds={rounds!r}, rows={rows!r}, cols={cols!r}, overrides={list(overrides)!r}, "
                          f"rule={plan.rule!r})")
    estimate = estimate_text(plan)
    log(f"{t.title}: {len(plan.cells)} cells x {len(plan.seeds)} seeds at scale {plan.scale!r}, "
        f"{len(plan.programs)} compiled program(s)")
    if resume:
        mine = {(pc.cell.row_key, pc.cell.col_key, s) for pc in plan.cells for s in plan.seeds}
        others = len({record_key(r) for r in old} - mine)   # e.g. the rows an `--only` leaves out
        log(f"  resuming: {len(plan.done)} of {len(plan.cells) * len(plan.seeds)} (cell, seed) pair(s) finished "
            f"in {source} are kept" + (f"; {others} finished pair(s) of other rows, columns or seeds stay in the "
                                       f"table" if others else ""))
        resplit = _resplit(plan, old)
        if resplit:
            log(f"  {len(resplit)} finished (cell, seed) pair(s) ran on another data split (data_seed "
                f"{', '.join(map(str, sorted(set(resplit.values()))))}) and run again, on data_seed "
                f"{', '.join(map(str, sorted({c['data_seed'] for pc in plan.cells for c in pc.configs})))}")
    for note in plan.notes:
        log(f"  {note}")
    for paper_cfg, s in dict.fromkeys((pc.cell.config, pc.setting) for pc in plan.cells):
        log(f"  {paper_cfg} -> {s.config}: {s.note}")
    log(f"  {estimate}")
    for pp in plan.pretrains_to_run():
        log(f"  pretrain {pp.pretrain.key} ({pp.config['rounds']} rounds, seed {pp.config['seed']}) -> {pp.path}: "
            f"{pp.pretrain.note} [{pretrain_state(pp.path, pp.config)}]")
    if dry_run:
        check_data(plan)
        return {"out": out, "files": [], "records": [], "claims": [], "plan": plan, "markdown": ""}
    with sitting:
        return _sitting(t, plan, files, old, source, sitting=sitting, command=command, estimate=estimate,
                        progress=progress, log=log)


def _sitting(t: Table, plan, files: List[Path], old: List[Dict[str, Any]], source: Path, *,
             sitting: rundir.RunDirectory, command: str, estimate: str, progress: bool,
             log: Callable[[str], None]) -> Dict[str, Any]:
    """The part of :func:`reproduce` that writes: runs under the table's claim on ``out``."""
    name, out, cells_path, resume = t.name, sitting.out, files[5], sitting.resume
    if resume and source != cells_path:  # a committed table: its records go into a new _cells.jsonl first
        _finished_records(files, write=True)
    if plan.pretrains_to_run():
        run_pretrains(plan, progress=progress, log=log)
    data = check_data(plan)
    references = references_from(plan, data)
    if not resume:
        cells_path.write_text("")  # a fresh table
    new: List[Dict[str, Any]] = []

    def finished(p, results) -> None:
        recs = records_from(p, results)
        append_jsonl(recs, cells_path)
        new.extend(recs)

    start = time.time()
    execute(plan, progress=progress, log=log, on_program=finished)
    wall = time.time() - start
    records = _sorted(t, merge_records(old, new))
    claims = evaluate_claims(t, records, plan.rule)
    shown_seeds = _seeds(plan.seeds, records)
    # cells of earlier sittings that stay in the table keep their commands and protocol
    earlier = bool({record_key(r) for r in old} - {record_key(r) for r in new})
    commands = (_earlier_commands(files[3]) if earlier else []) + [command]
    write_csv(records, files[1])
    md = write_markdown(t, records, files[0], rule=plan.rule, seeds=shown_seeds, scale=plan.scale, claims=claims,
                        header=[_measured_with(commands, name), ""], references=references)
    write_plot(t, records, files[2], rule=plan.rule)
    files[3].write_text(json.dumps({"table": name, "scale": plan.scale, "seeds": shown_seeds, "rule": plan.rule,
                                    "command": command, "commands": commands, "wall_time_s": round(wall, 2),
                                    "records": records, "claims": claims, "references": references},
                                   indent=1, default=repr))
    protocol = protocol_text(plan, data=data, command=command, wall_time_s=wall, estimate=estimate)
    if earlier and files[4].is_file():
        protocol = with_earlier_sittings(protocol, files[4].read_text())
    files[4].write_text(protocol)
    log(f"outputs in {out}")
    return {"out": out, "files": files, "records": records, "claims": claims, "plan": plan, "markdown": md}


def _commands(meta: Mapping[str, Any]) -> List[str]:
    """The commands of the sittings recorded in a table's json (oldest first)."""
    return list(meta.get("commands") or ([meta["command"]] if meta.get("command") else []))


def _earlier_commands(json_path: Path) -> List[str]:
    """:func:`_commands` of ``<table>.json``; none when it is absent or unreadable."""
    try:
        return _commands(json.loads(json_path.read_text()))
    except (OSError, ValueError):
        return []


def _measured_with(commands: Sequence[str], name: str) -> str:
    sittings = "`" + "`, then `".join(commands) + "`" if commands else "(command not recorded)"
    return f"Measured with {sittings}; protocol: `{name}_protocol.md`."


def render(table: Union[str, Table], out: Union[str, Path], *, rule: Optional[str] = None,
           tables: Dirs = ()) -> str:
    """Rewrite ``<table>.md``, ``<table>.png`` and the claims in ``<table>.json`` in ``out``
    from its ``<table>.csv`` (or, for a run that did not finish, its ``_cells.jsonl``), e.g.
    with the other evaluation rule, without running anything; returns the markdown."""
    t = table if isinstance(table, Table) else registry.get_table(table, tables)
    name, out = t.name, Path(out)
    rule = t.rule if rule is None else rule
    path, cells = out / f"{name}.csv", out / f"{name}_cells.jsonl"
    if path.is_file():
        records = read_csv(path)
    elif read_jsonl(cells):
        records = _sorted(t, merge_records([], read_jsonl(cells)))
    else:
        raise FileNotFoundError(f"{path} not found: run `omnifm reproduce {name} --out {out}` first")
    seeds = _seeds((), records)
    scale = records[0].get("scale") if records else ""
    meta = out / f"{name}.json"
    data = json.loads(meta.read_text()) if meta.is_file() else {}
    md = write_markdown(t, records, out / f"{name}.md", rule=rule, seeds=seeds, scale=scale,
                        header=[_measured_with(_commands(data), name)
                                + ("" if rule == "best" else " Rendered with the last-round rule."), ""],
                        references=data.get("references"))
    write_plot(t, records, out / f"{name}.png", rule=rule)
    if meta.is_file():
        data.update(rule=rule, claims=evaluate_claims(t, records, rule))
        meta.write_text(json.dumps(data, indent=1, default=repr))
    return md


def table_listing(names: Optional[Sequence[str]] = None, tables: Dirs = ()) -> str:
    """Every table (or those named): whether it can run here, its file, rows and columns
    (keys for --only / --cols) and scales (with their default rows, columns and rounds)."""
    found = registry.find_tables(tables)
    if not found:
        return registry.missing_text(tables)
    lines = []
    for name, t in found.items():
        if names is not None and name not in names:
            continue
        why = registry.unavailable_reason(t)
        lines.append(f"{name}: {t.title}" + (f"  [unavailable: {why}]" if why else ""))
        lines.append(f"    file: {t.source}")
        lines.append("    rows: " + ", ".join(f"{k} ({l})" for k, l in t.rows))
        lines.append("    cols: " + ", ".join(f"{k} ({l})" for k, l in t.cols))
        lines.append("    scales: " + ", ".join(s + (" (default)" if s == t.default_scale else "") for s in t.scales))
        for s, sc in t.scales.items():
            if sc.rows or sc.cols or sc.rounds:
                lines.append(f"    {s} default: rows {list(sc.rows or ['all'])}, cols {list(sc.cols or ['all'])}"
                             + (f", {sc.rounds} rounds" if sc.rounds else ""))
    return "\n".join(lines)
