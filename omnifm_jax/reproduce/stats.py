"""Statistics over seeds and the claims' verdicts (pure functions of records).

* Cells report mean ± sample std (ddof=1) over the seeds (:func:`mean_std`, :func:`aggregate`).
* Verdicts (:func:`verdict`): per seed, the margin of the claim (e.g. OmniFM's accuracy
  minus the hardest other method's, paired by seed); "holds" when the mean margin is positive
  and at least 2 sample std of the per-seed margins; "holds weakly" when it is positive but
  smaller than 2 std (or only one seed ran); "does not hold here" when it is zero or
  negative. Each claim is also checked on the paper's own numbers.
* Convergence (:func:`converged`, the one home of the rule): a run has plateaued when its
  best-so-far primary metric changed by less than the metric's tolerance
  (:data:`~omnifm_jax.reproduce.spec.PLATEAU`: 0.01 = 1 point of accuracy, 0.1 dB of PSNR)
  over its last :data:`PLATEAU_ROUNDS` evaluated rounds; fewer than ``PLATEAU_ROUNDS + 1``
  evaluated rounds never count as converged.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from omnifm_jax.reproduce.spec import Metric, Table

__all__ = ["mean_std", "per_seed", "aggregate", "verdict", "evaluate_claims", "PLATEAU_ROUNDS", "converged",
           "judged_metric", "convergence_rule", "unconverged", "client_entry"]

#: The convergence window: the last this-many evaluated rounds (see :func:`converged`).
PLATEAU_ROUNDS = 10


def client_entry(values: Optional[Sequence[Any]], client: int) -> Any:
    """Entry ``client`` of a per-client list of a run's output (``None`` when the list is absent)."""
    return (values or [None] * (client + 1))[client]


def converged(history: Sequence[Mapping[str, Any]], metric: Metric, client: Optional[int] = None) -> bool:
    """Whether a run has plateaued on ``metric``: its best-so-far value (the best under
    ``metric.higher_is_better``, over the evaluated rounds of ``history``, round 0 included)
    changed by less than ``metric.tolerance`` (run units) over the last
    :data:`PLATEAU_ROUNDS` evaluated rounds. A run with fewer than ``PLATEAU_ROUNDS + 1``
    evaluated rounds has not converged. ``client``: read that client's line of each round."""
    values = []
    for line in history:
        if client is not None:
            line = client_entry(line.get("clients"), client) or {}
        v = line.get(metric.key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            values.append(float(v))
    if len(values) < PLATEAU_ROUNDS + 1:
        return False
    pick = max if metric.higher_is_better else min
    best, best_so_far = values[0], []
    for v in values:
        best = pick(best, v)
        best_so_far.append(best)
    return abs(best_so_far[-1] - best_so_far[-1 - PLATEAU_ROUNDS]) < metric.tolerance


def judged_metric(reported: Sequence[str], record: Mapping[str, Any]) -> Optional[str]:
    """The metric a run's convergence is judged on: the first of its cell's ``reported``
    metrics that its record holds a value of (``<metric>_best``), so an SR run in a table
    that also reports accuracy is judged on PSNR, not on the accuracy it never logs; None
    when it holds none."""
    return next((m for m in reported if record.get(f"{m}_best") not in (None, "")), None)


def convergence_rule(metric: Metric) -> str:
    """The rule in words, for the tables' footnotes."""
    tol = f"{metric.tolerance * metric.factor:g}" + (" point" if metric.factor == 100.0 else "")
    return (f"converged = the best-so-far {metric.label} changed by less than {tol} over the last "
            f"{PLATEAU_ROUNDS} evaluated rounds (at least {PLATEAU_ROUNDS + 1} evaluated rounds)")


def unconverged(records: Sequence[Mapping[str, Any]]) -> Dict[Tuple[str, str], Tuple[int, int]]:
    """``{(row_key, col_key): (seeds not converged, seeds with a convergence mark)}`` for the
    cells with at least one seed that had not converged (records without the mark, e.g. older
    results, count neither way)."""
    out: Dict[Tuple[str, str], List[int]] = {}
    for r in records:
        c = r.get("converged")
        if c is None or c == "":
            continue
        no = str(c).lower() in ("false", "0")
        n = out.setdefault((r["row_key"], r["col_key"]), [0, 0])
        n[0] += no
        n[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items() if v[0]}


def mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
    """``(mean, sample std, n)``; NaN std for one value, NaN mean for none."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan"), 0
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else float("nan")
    return mean, std, n


def per_seed(records: Sequence[Mapping[str, Any]],
             rule: str = "best") -> Dict[Tuple[str, str], Dict[str, Dict[int, float]]]:
    """``{(row_key, col_key): {metric: {seed: value}}}`` under the evaluation rule."""
    out: Dict[Tuple[str, str], Dict[str, Dict[int, float]]] = {}
    for r in records:
        cell = out.setdefault((r["row_key"], r["col_key"]), {})
        for k, v in r.items():
            if k.endswith(f"_{rule}") and v is not None and v != "":
                cell.setdefault(k[: -len(rule) - 1], {})[int(r["seed"])] = float(v)
    return out


def aggregate(records: Sequence[Mapping[str, Any]],
              rule: str = "best") -> Dict[Tuple[str, str], Dict[str, Tuple[float, float, int]]]:
    """``{(row_key, col_key): {metric: (mean, sample std, n seeds)}}``."""
    return {cell: {m: mean_std([v[s] for s in sorted(v)]) for m, v in metrics.items()}
            for cell, metrics in per_seed(records, rule).items()}


def verdict(margins: Sequence[float]) -> Tuple[str, float, float, int]:
    """``(label, mean, std, n)`` of per-seed margins (positive = the claim's direction).

    "holds": mean > 0 and mean >= 2 * sample std (n >= 2); "holds weakly": mean > 0 but
    below 2 std, or a single seed; "does not hold here": mean <= 0; "not measured": no seed.
    """
    mean, std, n = mean_std(list(margins))
    if n == 0:
        return "not measured", mean, std, n
    if not mean > 0:
        return "does not hold here", mean, std, n
    if n >= 2 and mean >= 2 * std:
        return "holds", mean, std, n
    return "holds weakly", mean, std, n


def evaluate_claims(table: Table, records: Sequence[Mapping[str, Any]], rule: str = "best") -> List[Dict[str, Any]]:
    """Each claim of the table whose cells were measured: verdict, margin (vs the measured
    best of the compared cells, paired by seed), and the margin on the paper's numbers over
    the same compared cells (vs the paper's best of them). A "beats" claim is judged on the
    compared cells that ran; ``compared`` is ``(measured, in the claim)``, so that a verdict
    read off a few of them says so."""
    values = per_seed(records, rule)
    paper = {(c.row_key, c.col_key): c for c in table.cells}
    labels = {(c.row_key, c.col_key): (c.row, c.col) for c in table.cells}
    out = []
    for claim in table.claims:
        metric = table.metric(claim.metric)
        sign = 1.0 if metric.higher_is_better else -1.0
        get = lambda cell: values.get(cell, {}).get(claim.metric)  # noqa: E731
        if claim.kind == "beats":
            win = get(claim.winner)
            others = [(o, get(o)) for o in claim.others if get(o)]
            if not win or not others:
                continue
            # The hardest opponent is the one with the smallest mean margin paired by seed (with
            # equal seeds, the best by mean; ties: the first): cells run with other seeds (seed 0
            # of a row, 0-2 of another) are each compared on the seeds they share with the winner.
            paired = [(o, [sign * (win[s] - ov[s]) for s in sorted(set(win) & set(ov))]) for o, ov in others]
            best_other, margins = min((t for t in paired if t[1]), key=lambda t: round(mean_std(t[1])[0], 9),
                                      default=(others[0][0], []))
            # On the paper's numbers: the winner vs the paper's best of the same compared cells.
            pw = paper[claim.winner].paper_value(claim.metric)
            po = [paper[o].paper_value(claim.metric) for o, _ in others]
            pm = None if pw is None or any(v is None for v in po) else min(sign * (pw - v) for v in po)
            (wr, wc), (orow, ocol) = labels[claim.winner], labels[best_other]
            vs = ocol if orow == wr else orow if ocol == wc else f"{orow} / {ocol}"
            compared = (len(others), len(claim.others))
        else:
            series = [(c, get((r, k))) for c, r, k in claim.terms]
            if not all(v for _, v in series):
                continue
            seeds = sorted(set.intersection(*(set(v) for _, v in series)))
            margins = [sign * sum(c * v[s] for c, v in series) for s in seeds]
            pv = [paper[(r, k)].paper_value(claim.metric) for _, r, k in claim.terms]
            pm = None if any(v is None for v in pv) else sign * sum(c * v for (c, _, _), v in zip(claim.terms, pv))
            vs, compared = "", None
        label, mean, std, n = verdict(margins)
        out.append({"claim": claim.text, "metric": claim.metric, "verdict": label, "margin": mean, "std": std,
                    "n": n, "vs": vs, "compared": compared, "paper_margin": pm,
                    "paper_verdict": None if pm is None else ("holds" if pm > 0 else "does not hold")})
    return out
