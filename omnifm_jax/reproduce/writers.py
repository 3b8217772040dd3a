"""Writers: the table in the paper's layout (markdown), its plot, and ``protocol.md``.

Every measured cell is shown as ``mean ± sample std (n seeds) | paper | difference`` in
the paper's units (a column without paper numbers shows the measurement only), a dagger
(†) after a cell some seed of which had not converged (:func:`omnifm_jax.reproduce.stats.converged`,
with a footnote), then the references (model-free rows), the claims with their verdicts, and the table's appendix.
"""
from __future__ import annotations

import math
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omnifm_jax import config as config_lib
from omnifm_jax.reproduce.plan import Plan
from omnifm_jax.reproduce.settings import H100_MINUTES_PER_100_ROUNDS
from omnifm_jax.reproduce.spec import Table
from omnifm_jax.reproduce.stats import (
    aggregate,
    convergence_rule,
    evaluate_claims,
    judged_metric,
    mean_std,
    unconverged,
)

__all__ = ["format_measured", "markdown", "write_markdown", "write_plot", "line_ylim", "protocol_text", "estimate_text",
           "with_earlier_sittings"]

References = Mapping[str, Mapping[str, Mapping[str, float]]]


def _fmt(v: Optional[float], d: int, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if round(v, d) == 0:
        v = 0.0  # no "-0.00"
    return f"{v:+.{d}f}" if sign else f"{v:.{d}f}"


def _margin_digits(values: Sequence[float], d: int) -> int:
    """Decimals that show at least two significant digits of the smallest non-zero value
    (a 0.004 dB margin is not printed as +0.00), at least ``d``, at most 6."""
    small = [abs(v) for v in values if v is not None and not math.isnan(v) and v != 0]
    if not small or min(small) >= 10 ** (-d):
        return d
    return min(6, max(d, 1 - math.floor(math.log10(min(small)))))


def format_measured(mean: float, std: float, n: int, decimals: int) -> str:
    """``"62.31 ± 1.20 (3)"``; a single seed has no std: ``"62.31 (1)"``."""
    if n == 0:
        return "—"
    if n == 1 or math.isnan(std):
        return f"{mean:.{decimals}f} ({n})"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f} ({n})"


def _baseline_line(records: Sequence[Mapping[str, Any]], m: str, decimals: int) -> List[str]:
    """The task's baseline (SR: bicubic): one value, else per column when the rows of a
    column share it at each seed (e.g. one split per column), else per row (mean over its
    columns)."""
    by: Dict[str, Dict[str, List[float]]] = {"row": {}, "col": {}}
    same: Dict[Any, set] = {}
    for r in records:
        if r.get(f"{m}_baseline") not in (None, ""):
            v = float(r[f"{m}_baseline"])
            by["row"].setdefault(r["row"], []).append(v)
            by["col"].setdefault(r["col"], []).append(v)
            same.setdefault((r["col"], str(r.get("seed"))), set()).add(_fmt(v, decimals))
    if not by["row"]:
        return []
    rows = {row: _fmt(mean_std(v)[0], decimals) for row, v in by["row"].items()}
    cols = {col: _fmt(mean_std(v)[0], decimals) for col, v in by["col"].items()}
    if len(set(rows.values())) == 1 and len(set(cols.values())) == 1:
        text = f"{next(iter(rows.values()))} (every row)"
    elif len(set(cols.values())) > 1 and all(len(s) == 1 for s in same.values()):
        text = ", ".join(f"{col} {v}" for col, v in cols.items())
    else:
        text = ", ".join(f"{row} {v}" for row, v in rows.items())
    return [f"Model-free bicubic upsampling on the same test patches: {text}", ""]


def _claim_lines(table: Table, claims: List[Dict[str, Any]]) -> List[str]:
    lines = ["## Claims", "",
             "Verdict rule: per seed, the claim's margin (paired by seed); **holds** if the mean margin is > 0 and "
             ">= 2 sample std of the margins, **holds weakly** if > 0 but smaller (or one seed), **does not hold "
             "here** if <= 0. 'Paper' applies the same comparison to the paper's own numbers.", ""]
    if not claims:
        lines.append("No claim of this table can be tested with the cells that ran.")
    for c in claims:
        metric = table.metric(c["metric"])
        d = _margin_digits([c["margin"], c["std"]], metric.decimals)
        margin = _fmt(c["margin"], d, sign=True) + ("" if math.isnan(c["std"]) else f" ± {_fmt(c['std'], d)}")
        vs = f" vs {c['vs']}" if c["vs"] else ""
        ran, of = c["compared"] or (0, 0)   # None for a contrast claim
        if ran < of:
            vs += f", against the {ran} of its {of} compared cells that ran"
        paper_part = ("" if c["paper_margin"] is None else
                      f"; paper: {c['paper_verdict']} ({_fmt(c['paper_margin'], metric.decimals, sign=True)})")
        lines.append(f"- {c['claim']}: **{c['verdict']}** ({margin}{vs}, {c['n']} seed{'s' if c['n'] != 1 else ''}"
                     f"{paper_part})")
    return lines + [""]


def _judged_metrics(table: Table, records: Sequence[Mapping[str, Any]], cells: Mapping[Any, Any]) -> Dict[Any, str]:
    """Per cell, the metric its convergence was judged on (:func:`~omnifm_jax.reproduce.stats.judged_metric`
    of its first record that holds one)."""
    out: Dict[Any, str] = {}
    for r in records:
        key = (r["row_key"], r["col_key"])
        if key in cells and key not in out:
            m = judged_metric(cells[key].reports(table.metrics), r)
            if m is not None:
                out[key] = m
    return out


def _split_lines(records: Sequence[Mapping[str, Any]]) -> List[str]:
    """Which data split (``data_seed``) each seed ran on, from the records that name it: one
    line when all share one, else the split of each seed (and a warning for a seed whose cells
    ran on different splits, whose paired margins then compare different test sets)."""
    by_seed: Dict[int, set] = {}
    for r in records:
        if r.get("data_seed") not in (None, ""):
            by_seed.setdefault(int(r["seed"]), set()).add(int(r["data_seed"]))
    splits = sorted({d for ds in by_seed.values() for d in ds})
    if not splits:
        return []
    if len(splits) == 1:
        return [f"Data split: `data_seed = {splits[0]}` for every seed and method.", ""]
    groups: Dict[Tuple[int, ...], List[int]] = {}
    for seed, ds in sorted(by_seed.items()):
        groups.setdefault(tuple(sorted(ds)), []).append(seed)
    parts = [f"seed{'s' if len(ss) > 1 else ''} {', '.join(map(str, ss))} on `data_seed = "
             f"{' and '.join(map(str, ds))}`" for ds, ss in groups.items()]
    mixed = [s for s, ds in sorted(by_seed.items()) if len(ds) > 1]
    return [f"Data splits: {'; '.join(parts)}. Seeds differ in their data split as well as in initialisation"
            + (f"; seed(s) {', '.join(map(str, mixed))} ran cells on different splits, so their paired margins "
               "compare different test sets." if mixed else "; at each seed every method ran on the same split, "
               "so paired margins compare like with like."), ""]


def _convergence_lines(table: Table, unconv: Mapping[Any, Any], cells: Mapping[Any, Any],
                       judged: Mapping[Any, str]) -> List[str]:
    """The footnote of the † marks: per marked cell, how many of its seeds had not plateaued,
    and the rule (per metric the marked cells were judged on, ``judged``)."""
    if not unconv:
        return []
    marked = [(cells[k], n) for k, n in unconv.items() if k in cells]
    which = "; ".join(f"{c.row} / {c.col}: {no} of {of} seed{'s' if of != 1 else ''}" for c, (no, of) in marked)
    rules = list(dict.fromkeys(convergence_rule(table.metric(m)) for m in (judged.get(k) for k in unconv if k in cells)
                               if m is not None))
    return [f"† Not converged (the run had not plateaued; a longer run may change the value): {which}. "
            f"Rule: {'; '.join(rules)}.", ""]


def markdown(table: Table, records: Sequence[Mapping[str, Any]], *, rule: str = "best", seeds: Sequence[int] = (),
             scale: str = "", claims: Optional[List[Dict[str, Any]]] = None, header: Sequence[str] = (),
             references: Optional[References] = None) -> str:
    """The table in the paper's layout (rows x columns, one block per metric), each
    measured cell as ``measured mean ± std (n seeds) | paper | difference``, then the claims."""
    agg = aggregate(records, rule)
    measured_rows = [(k, l) for k, l in table.rows if any((k, c) in agg for c, _ in table.cols)]
    measured_cols = [(k, l) for k, l in table.cols if any((r, k) in agg for r, _ in table.rows)]
    cells = {(c.row_key, c.col_key): c for c in table.cells}
    n_seeds = sorted({v[2] for cell in agg.values() for v in cell.values()})
    unconv = unconverged(records)
    lines = [f"# {table.title}", ""]
    lines += list(header)
    how = ("best round (PFLlib: round 0 included, the round with the best primary metric; every metric from "
           "that round)" if rule == "best" else "last round")
    lines += [f"Scale: `{scale}`. Evaluation: {how}. "
              f"Each measured cell: mean ± sample std over seeds (n in brackets; seeds {list(seeds)}), the paper's "
              "number, and measured − paper, in the paper's units.", ""]
    lines += _split_lines(records)
    for note in table.notes:
        lines.append(f"- {note}")
    lines.append("")
    for m in table.metrics:
        metric = table.metric(m)
        cols = [(k, l) for k, l in measured_cols if any(m in agg.get((r, k), {}) for r, _ in measured_rows)]
        if not cols:
            continue
        with_paper = {k for k, _ in cols if any(c.col_key == k and c.paper_value(m) is not None
                                                for c in table.cells)}
        lines += [f"## {metric.label}" + ("" if metric.higher_is_better else " (lower is better)"), ""]
        head, sep = [table.row_header], ["---"]
        for k, label in cols:
            head += [f"{label}: measured"] + (["paper", "diff"] if k in with_paper else [])
            sep += ["---:"] * (3 if k in with_paper else 1)
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
        for rk, rl in measured_rows:
            row = [rl]
            for ck, _ in cols:
                stat = agg.get((rk, ck), {}).get(m)
                cell = cells.get((rk, ck))
                pv = cell.paper_value(m) if cell is not None else None
                row.append((format_measured(*stat, metric.decimals) + (" †" if (rk, ck) in unconv else ""))
                           if stat else "—")
                if ck in with_paper:
                    diff = _fmt(stat[0] - pv, metric.decimals, sign=True) if stat and pv is not None else "—"
                    row += [_fmt(pv, metric.decimals), diff]
            lines.append("| " + " | ".join(row) + " |")
        for name, by_col in (references or {}).items():
            if any(m in by_col.get(ck, {}) for ck, _ in cols):
                row = [f"*{name} (reference)*"]
                for ck, _ in cols:
                    row += [_fmt(by_col.get(ck, {}).get(m), metric.decimals)] + (["", ""] if ck in with_paper else [])
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += _baseline_line(records, m, metric.decimals)
    stuck = sorted({f"{r['row']} / {r['col']}" for r in records if str(r.get("best_round")) == "0"})
    if rule == "best" and stuck:
        lines += [f"Best round = 0 (no training round beat the untrained model; for SR, the bicubic skip) in some "
                  f"seed of: {'; '.join(stuck)}. Such cells measure the initial model, not training.", ""]
    lines += _convergence_lines(table, unconv, cells, _judged_metrics(table, records, cells))
    skipped = [f"{c.row} / {c.col}" for c in table.cells if (c.row_key, c.col_key) not in agg]
    if skipped:
        lines += [f"Not run here ({len(skipped)} of {len(table.cells)} cells; `--only` / `--cols` select them).", ""]
    if table.claims:
        lines += _claim_lines(table, evaluate_claims(table, records, rule) if claims is None else claims)
    if n_seeds:
        lines.append(f"Seeds per cell: {', '.join(map(str, n_seeds))}.")
    if table.appendix:
        lines += [""] + list(table.appendix)
    return "\n".join(lines) + "\n"


def write_markdown(table: Table, records, path: Path, **kw) -> str:
    text = markdown(table, records, **kw)
    Path(path).write_text(text)
    return text


def line_ylim(ys: Sequence[float], errs: Sequence[float], min_span: float) -> Tuple[float, float]:
    """The y range of a sweep's line: the points with their error bars, 10 % margin, and at
    least ``min_span`` wide around their middle (twice the convergence tolerance: 2 points, 0.2
    dB), so that a sweep flat within run-to-run noise is drawn flat, not as a peak."""
    lo, hi = min(y - e for y, e in zip(ys, errs)), max(y + e for y, e in zip(ys, errs))
    half = 0.55 * max(hi - lo, min_span)
    return (lo + hi) / 2 - half, (lo + hi) / 2 + half


def write_plot(table: Table, records: Sequence[Mapping[str, Any]], path: Path, *, rule: str = "best") -> None:
    """Bars of measured (mean ± std) next to the paper's number per cell and metric, or for
    ``plot="lines"`` (Fig. 5) lines of the metric against each cell's ``x``. A standalone
    matplotlib Figure."""
    from matplotlib.figure import Figure

    agg = aggregate(records, rule)
    cells = [c for c in table.cells if (c.row_key, c.col_key) in agg]
    if table.plot == "lines":
        cols = list(dict.fromkeys(c.col_key for c in cells))
        series = list(dict.fromkeys(c.series for c in cells))
        fig = Figure(figsize=(4.2 * len(series), 3.2 * max(1, len(cols))))
        axes = fig.subplots(max(1, len(cols)), max(1, len(series)), squeeze=False)
        for i, ck in enumerate(cols):
            for j, ser in enumerate(series):
                ax = axes[i][j]
                pts = sorted((c.x, agg[(c.row_key, c.col_key)]) for c in cells if c.col_key == ck and c.series == ser)
                metric = next(m for m in table.metrics if any(m in a for _, a in pts)) if pts else table.metrics[0]
                xs = [x for x, _ in pts]
                ys = [a[metric][0] for _, a in pts]
                es = [0.0 if math.isnan(a[metric][1]) else a[metric][1] for _, a in pts]
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3)
                spec = table.metric(metric)
                if ys:
                    ax.set_ylim(*line_ylim(ys, es, 2 * spec.tolerance * spec.factor))
                ax.ticklabel_format(axis="y", useOffset=False)
                if ser.startswith("λ"):
                    ax.set_xscale("log")
                ax.set_xlabel(ser)
                ax.set_ylabel(spec.label)
                ax.set_title(next(c.col for c in cells if c.col_key == ck))
                ax.grid(alpha=0.3)
    else:
        metrics = [m for m in table.metrics if any(m in agg[(c.row_key, c.col_key)] for c in cells)]
        fig = Figure(figsize=(max(6.0, 0.45 * len(cells) + 2), 3.4 * max(1, len(metrics))))
        axes = fig.subplots(max(1, len(metrics)), 1, squeeze=False)
        for ax, m in zip(axes[:, 0], metrics):
            mc = [c for c in cells if m in agg[(c.row_key, c.col_key)]]
            xs = list(range(len(mc)))
            means = [agg[(c.row_key, c.col_key)][m][0] for c in mc]
            stds = [0.0 if math.isnan(agg[(c.row_key, c.col_key)][m][1]) else agg[(c.row_key, c.col_key)][m][1]
                    for c in mc]
            paper = [c.paper_value(m) for c in mc]
            ax.bar([x - 0.2 for x in xs], means, 0.4, yerr=stds, capsize=2, label="measured (mean ± std)")
            ax.bar([x + 0.2 for x in xs], [p if p is not None else 0.0 for p in paper], 0.4, label="paper",
                   alpha=0.6)
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{c.row}\n{c.col}" for c in mc], rotation=60, ha="right", fontsize=7)
            ax.set_ylabel(table.metric(m).label)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _config_summary(cfg: Dict[str, Any]) -> str:
    keys = ("dataset", "dataset_kwargs", "num_clients", "participation", "rounds", "local_epochs", "batch_size",
            "optimizer", "lr", "backbone", "backbone_kwargs", "eval_every")
    return ", ".join([f"{k}={cfg[k]!r}" for k in keys] + [f"weight_init={config_lib.resolved_weight_init(cfg)!r}"])


EARLIER = "## Earlier sittings"


def with_earlier_sittings(text: str, earlier: str) -> str:
    """``text`` (this sitting's protocol) followed by the sittings of ``earlier`` (the protocol
    file this sitting resumed from), most recent first: a table built over several sittings
    (e.g. one column at a time, or seeds added to a committed table) keeps the data, runs and
    programs of every sitting that produced its cells. Each earlier sitting's headings move two
    levels down under its command."""
    if not earlier.strip():
        return text
    body, _, older = earlier.partition(EARLIER + "\n")
    lines = body.strip().splitlines()
    command = next((ln[len("Command: "):] for ln in lines if ln.startswith("Command: ")), "(command not recorded)")
    kept = "\n".join(("##" + ln) if ln.startswith("#") else ln for ln in lines
                     if not ln.startswith(("# ", "Command: "))).strip()
    parts = [text.rstrip("\n"), EARLIER, f"### Sitting: {command}", kept] + ([older.strip()] if older.strip() else [])
    return "\n\n".join(parts) + "\n"


def protocol_text(plan: Plan, *, data: Sequence[Mapping[str, Any]], command: str, wall_time_s: float,
                  estimate: str) -> str:
    """``protocol.md``: data used and why, splits, seeds, rounds, evaluation rule, programs,
    hardware, wall time and the exact command."""
    import jax

    t = plan.table
    settings = list(dict.fromkeys((pc.cell.config, pc.setting) for pc in plan.cells))
    lines = [f"# Protocol: {t.title}", "", f"Command: `{command}`", "",
             f"- scale: `{plan.scale}`; cells run: {len(plan.cells)} of {len(t.cells)}; seeds: {list(plan.seeds)} "
             f"(every cell, {len(plan.seeds)} seeds)",
             f"- hardware: `{jax.devices()}` ({platform.processor() or platform.machine()}, {os.cpu_count()} CPU "
             f"cores visible), JAX {jax.__version__}, Python {platform.python_version()}",
             f"- wall time: {wall_time_s:.1f} s in all ({len(plan.programs)} compiled program(s))",
             f"- {estimate}", ""]
    if plan.done:
        lines.insert(-1, f"- resumed: {len(plan.done)} (cell, seed) pair(s) finished in an earlier sitting were "
                         f"kept from `{t.name}_cells.jsonl` (same config), not run again")
    for note in plan.notes:
        lines.append(f"- {note}")
    if plan.overrides:
        lines.append(f"- extra overrides for every cell: `{' '.join(plan.overrides)}`")
    if plan.rounds is not None:
        lines.append(f"- rounds: {plan.rounds} for every cell")
    for pp in plan.pretrains:
        lines.append(f"- pretrained model `{pp.pretrain.key}` ({pp.pretrain.note}): config `{pp.setting.config}` with "
                     f"`{' '.join(pp.setting.overrides + pp.pretrain.overrides)}`, {pp.config['rounds']} rounds, seed "
                     f"{pp.config['seed']}, in `pretrained/{pp.pretrain.key}`; the cells that name it start from its "
                     "last checkpoint (`init_from`)")
    lines += ["", "## Data actually used, and why", ""]
    for paper_cfg, s in settings:
        lines.append(f"- paper protocol `{paper_cfg}` -> config `{s.config}` with `{' '.join(s.overrides)}`: {s.note}.")
    lines += ["", "Per-cell overrides (algorithm, scenario, participation, ablation switch) follow in the table "
              "below; `<table>.csv` lists every run's full override string.", ""]
    split = (f"The data split is the same for every seed, every method and every sitting: `data_seed = "
             f"{t.data_seed}` (the table's; `--set data_seed=N` picks another). The seed sets the model "
             "initialisation, the participant draws and the batch order."
             if t.data_seed != "seed" else
             "Each seed draws its own data split (`data_seed = seed`), and sets the model initialisation, the "
             "participant draws and the batch order; every method sees the same split at a seed.")
    lines += ["## Splits and seeds", "", f"- {split}",
              "- Classification: per-client 75/25 train/test split (PFLlib); super-resolution: test patients held "
              "out from every client; segmentation / fusion: see the configs' docstrings.", ""]
    for d in data:
        lines += [f"### `{d['dataset']}` {d['dataset_kwargs']}, {d['num_clients']} clients, data_seed "
                  f"{d['data_seed']} ({d['train']} train / {d['test']} test samples)", "",
                  f"Used by {len(d['cells'])} cell(s), e.g. {d['cells'][0]}.", "", "```", d["describe"], "```", ""]
    lines += ["## Runs", "", "| cell | config (first seed) |", "|---|---|"]
    for pc in plan.cells:
        lines.append(f"| {pc.cell.row} / {pc.cell.col} | {pc.configs[0]['algorithm']} "
                     f"{pc.configs[0]['algorithm_kwargs'] or ''}; {_config_summary(pc.configs[0])} |")
    lines += ["", "## Evaluation rule", "",
              "All clients are evaluated at round 0 and every `eval_every` rounds with their personalised models "
              "on their own test split (PFLlib). "
              + ("The tables use PFLlib's **best round** (the round with the best primary metric, round 0 "
                 "included; the other metrics are read at that round). "
                 if plan.rule == "best" else "The tables use the **last round**. ")
              + "The CSV holds both (`<metric>_best`, `<metric>_last`, `best_round`).", "",
              "## Programs", "",
              "Runs that differ only in shape-free values (seed, lr, float hyper-parameters) share one compiled "
              "program (`omnifm_jax.sweep.run_sweep`).", "",
              "| program | runs | how | wall time (s) | cells |", "|---|---|---|---|---|"]
    for i, p in enumerate(plan.programs):
        cells = sorted({f"{plan.cells[ci].cell.row} / {plan.cells[ci].cell.col}" for ms in p.members for ci, _ in ms})
        lines.append(f"| {i} | {len(p.runs)} | {p.mode} | {p.wall_time_s if p.wall_time_s is not None else '—'} | "
                     f"{'; '.join(cells)} |")
    lines.append("")
    return "\n".join(lines)


def estimate_text(plan: Plan) -> str:
    """The expected wall time at the paper's scale, from the README's measured H100 figures
    (a Table-1 ResNet-18 run: ~83 min per 100 rounds at 100% participation; scaled by
    rounds x participation, times the seeds: a sweep shares compilation, not training)."""
    configs = [{**p.base, **r} for p in plan.programs for r in p.runs]
    run_rounds = sum(int(c["rounds"]) for c in configs)
    cost = f"{len(plan.programs)} program(s), {len(configs)} run(s), {run_rounds} run-rounds"
    to_run = plan.pretrains_to_run()
    if to_run:  # counted whether or not they are kept from an earlier sitting (an upper bound)
        configs += [pp.config for pp in to_run]
        run_rounds += sum(int(pp.config["rounds"]) for pp in to_run)
        cost += f", plus {len(to_run)} pretraining run(s) ({run_rounds} run-rounds in all)"
    per_round = plan.table.scales[plan.scale].cpu_s_per_round
    if per_round is not None:  # a number, or a function of the run's config (e.g. of its participation)
        seconds = sum((per_round(c) if callable(per_round) else per_round) * int(c["rounds"]) for c in configs)
        figure = (f"~{seconds / max(run_rounds, 1):.1f} s per round of one run on average, the scale's figures"
                  if callable(per_round) else f"~{per_round:g} s per round of one run, the scale's figure")
        return f"expected wall time: ~{seconds / 3600:.1f} h on a 2-core CPU ({cost}; {figure})"
    if plan.scale != "paper":
        return (f"expected wall time: ~{len(plan.programs)} min on a 2-core CPU ({cost}; the smoke defaults "
                "measured 0.5-2 min per program of 3-6 runs, compilation included)")
    minutes, unknown = 0.0, []
    for pc in plan.cells:
        per = H100_MINUTES_PER_100_ROUNDS.get(pc.setting.config)
        cfg = pc.configs[0]
        if per is None:
            unknown.append(pc.setting.config)
            continue
        minutes += per * cfg["rounds"] / 100 * cfg["participation"] * len(pc.configs)
    text = (f"expected wall time on one H100: ~{minutes / 60:.1f} h for {len(plan.cells)} cells x "
            f"{len(plan.seeds)} seeds (README: ~83 min per 100-round ResNet-18 Table-1 run at 100% participation, "
            f"scaled by participation and rounds; {cost})") if minutes else (
        f"expected wall time: not estimated ({cost})")
    if unknown:
        text += (f"; no measured H100 figure for {sorted(set(unknown))} (not included; the README's Performance "
                 "section has none)")
    return text
