"""What a table is: its metrics, cells, claims, scales and the paper's printed rows.

A table file (``experiments/paper/<name>.py``, see :mod:`omnifm_jax.reproduce.registry`)
builds one :class:`Table` from these dataclasses and the helpers below; nothing here runs
anything.

* :class:`Cell`: one row x column of the table: the config of its protocol, the overrides
  that make it, and the paper's number(s). ``client`` reads one client's metrics instead of
  the federation's; ``at_round`` reads an evaluation round instead of the best / last one.
  Cells whose configs are equal share one run (per-client columns, Fig. 5's default point).
* :class:`Claim`: a sentence of the paper tested on the measured cells (``beats`` or
  ``contrast``), see :mod:`omnifm_jax.reproduce.stats`.
* :class:`Scale` / :class:`Setting`: what runs in place of a cell's config at a scale
  (:mod:`omnifm_jax.reproduce.settings` holds the shared ones).
* :class:`PrintedRow`: a row of numbers as the paper prints it, so a test can check the
  transcription against the paper's text (:func:`transcription_errors`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = ["Metric", "PLATEAU", "paper_metric", "METRICS", "PRETRAINED",
           "Cell", "Claim", "Setting", "Scale", "Reference", "Pretrain", "PrintedRow",
           "PaperText", "Table", "beats_all", "transcription_errors"]


@dataclass(frozen=True)
class Metric:
    """A reported metric: ``key`` in a run's metric line; ``factor`` turns it into the
    paper's units (accuracy 0.97 -> 97 %); ``decimals`` as printed in the paper. The label
    and the direction (``higher_is_better``) are the task's (:func:`paper_metric`).
    ``minus_baseline``: the metric minus the task's model-free baseline on the same test
    samples (e.g. the PSNR gain over bicubic upsampling). ``plateau``: the convergence
    tolerance in the run's units (None: :data:`PLATEAU` by key, else 0.01, one point of a 0-1
    metric such as accuracy), see :func:`omnifm_jax.reproduce.stats.converged`."""
    key: str
    label: str
    factor: float = 1.0
    decimals: int = 2
    higher_is_better: bool = True
    minus_baseline: bool = False
    plateau: Optional[float] = None

    @property
    def tolerance(self) -> float:
        """The convergence tolerance in the run's units (``plateau``, else :data:`PLATEAU`)."""
        return self.plateau if self.plateau is not None else PLATEAU.get(self.key, PLATEAU["*"])


#: Convergence tolerances in the run's units, by metric key ("*": every other metric): one
#: point of a 0-1 metric (accuracy 0.01 = 1 %), 0.1 dB of PSNR. The one place they are set.
PLATEAU: Dict[str, float] = {"*": 0.01, "psnr": 0.1}


def paper_metric(task: str, key: str, factor: float = 1.0, decimals: int = 2, note: str = "",
                 plateau: Optional[float] = None) -> Metric:
    """The task's metric ``key`` (its :class:`~omnifm_jax.tasks.MetricSpec`: label, higher
    or lower is better) in the paper's units: times ``factor`` (100: "%" in the label), shown
    with ``decimals``; ``note`` is appended to the label; ``plateau``: the convergence
    tolerance in the run's units (:class:`Metric`). A key the task does not declare
    gives the bare key as label, higher is better."""
    from omnifm_jax import tasks

    try:
        spec = tasks.metric_spec(task, key)
    except ValueError:
        spec = tasks.MetricSpec(key, key)
    unit = " (%)" if factor == 100.0 else ""
    return Metric(key, spec.label + unit + note, factor, decimals, spec.higher_is_better, plateau=plateau)


#: The paper's metrics, by the names the tables use: the task's metric in the paper's units.
#: A table adds its own in ``Table.metric_defs``.
METRICS: Dict[str, Metric] = {
    "acc": paper_metric("classification", "accuracy", 100.0, 2),
    "f1": paper_metric("classification", "macro_f1", 1.0, 3),
    "psnr": paper_metric("super_resolution", "psnr", 1.0, 2),
    "ssim": paper_metric("super_resolution", "ssim", 1.0, 4),
    "dice": paper_metric("segmentation", "dice", 100.0, 2),
    "iou": paper_metric("segmentation", "iou", 100.0, 2),
    # The fusion task reports VIF and SSIM summed over the two sources (CDDFuse's
    # convention); the paper's values are on the scale of one source, so halve them.
    "vif": paper_metric("fusion", "vif", 0.5, 3, " (mean of 2 sources)"),
    "fssim": paper_metric("fusion", "ssim", 0.5, 3, " (mean of 2 sources)"),
    "l1": paper_metric("fusion", "l1", 1.0, 3),
}


@dataclass(frozen=True)
class Cell:
    """One cell of a table.

    ``config`` names the config of the cell's protocol (``omnifm_jax/configs/<config>.py``);
    the scale maps it to what actually runs (:class:`Scale`). ``overrides`` make the cell
    (``key=value`` strings, applied after the scale's size overrides). ``paper`` maps the
    table's metric names to the paper's number in the paper's units (None where the paper
    gives none); a metric missing from ``paper`` is not reported for this cell; ``paper=None``
    reports every metric of the table, with no paper number.

    ``client``: read the metrics of this client (index into the federation's clients;
    ``client_name`` is checked against the data's ``client_names`` before any training)
    instead of the mean over clients. ``at_round``: read this evaluation round instead of the
    best / last one. ``x`` / ``series`` place the cell on a line plot (Fig. 5).
    """
    row: str
    col: str
    row_key: str
    col_key: str
    config: str
    overrides: Tuple[str, ...]
    paper: Optional[Mapping[str, Optional[float]]] = None
    series: str = ""
    x: Optional[float] = None
    client: Optional[int] = None
    client_name: Optional[str] = None
    at_round: Optional[int] = None

    def reports(self, metrics: Sequence[str]) -> List[str]:
        """The metrics (of ``metrics``) this cell reports."""
        return list(metrics) if self.paper is None else [m for m in metrics if m in self.paper]

    def paper_value(self, metric: str) -> Optional[float]:
        return None if self.paper is None else self.paper.get(metric)


@dataclass(frozen=True)
class Claim:
    """A claim about a table, tested on the measured cells.

    ``kind="beats"``: ``winner`` (row_key, col_key) is better on ``metric`` than the best
    (by mean) of ``others`` that were measured. ``kind="contrast"``: ``sum(coef * value)``
    over ``terms`` ((coef, row_key, col_key), values signed so that better is larger) is
    positive.
    """
    text: str
    metric: str
    kind: str
    winner: Optional[Tuple[str, str]] = None
    others: Tuple[Tuple[str, str], ...] = ()
    terms: Tuple[Tuple[float, str, str], ...] = ()


@dataclass(frozen=True)
class Setting:
    """What runs in place of a cell's config at a scale: ``config`` + ``overrides`` (applied
    before the cell's overrides), used when the files named by ``needs`` (a key of
    :data:`omnifm_jax.reproduce.settings.DATA_FILES`) exist under the real-data folder."""
    config: str
    overrides: Tuple[str, ...] = ()
    needs: Optional[str] = None
    note: str = ""


@dataclass(frozen=True)
class Scale:
    """A scale of a table: ``settings[cell config]`` lists candidate :class:`Setting` s (the
    first whose data are present runs); ``rows`` / ``cols`` / ``rounds``: the defaults when
    the command names none (None: every row / column, each config's rounds); ``also``:
    (row_key, col_key) cells added to that default selection (when the command names
    neither rows nor columns), e.g. a few methods at one more participation;
    ``cpu_s_per_round``: the expected 2-core CPU seconds per round of one run, for the
    ``--dry-run`` estimate: a number, or a function of the run's config (e.g. of its
    participation) where runs of the scale cost differently (None: the smoke rule of thumb)."""
    settings: Mapping[str, Tuple[Setting, ...]]
    rows: Optional[Tuple[str, ...]] = None
    cols: Optional[Tuple[str, ...]] = None
    rounds: Optional[int] = None
    note: str = ""
    also: Tuple[Tuple[str, str], ...] = ()
    cpu_s_per_round: Union[None, float, Callable[[Mapping[str, Any]], float]] = None


@dataclass(frozen=True)
class Reference:
    """A model-free reference computed on a federation's test data, shown as an extra row
    (e.g. the average fusion ``(A + B) / 2``, or a model that predicts background).
    ``compute(setup)`` gets the :class:`~omnifm_jax.experiment.Setup` of a column's
    federation and returns ``{"avg": {metric key: value}, "clients": [{metric key: value},
    ...]}`` in the run's units (the table's metric factors apply)."""
    name: str
    compute: Callable[[Any], Dict[str, Any]]


#: The prefix of an ``init_from`` override that names a table's :class:`Pretrain` by key.
PRETRAINED = "pretrained:"


@dataclass(frozen=True)
class Pretrain:
    """A model that cells start from (fine-tuning): an ordinary run of ``config`` (mapped by
    the scale like a cell's) with ``overrides``, at the first seed, for ``rounds`` (None: the
    scale's or the config's), written once under ``<out>/pretrained/<key>`` with a checkpoint
    at its last round and kept across sittings while its config is unchanged. A cell (or a
    later ``Pretrain``: a two-stage chain) names it with the override
    ``init_from=pretrained:<key>``. ``note``: what it is, for the protocol."""
    key: str
    config: str
    overrides: Tuple[str, ...] = ()
    rounds: Optional[int] = None
    note: str = ""


def pretrained_key(cfg_or_overrides: Any) -> Optional[str]:
    """The :class:`Pretrain` key a config (its ``init_from``) or an override list names, or None."""
    if isinstance(cfg_or_overrides, dict):
        value = cfg_or_overrides.get("init_from")
        return value[len(PRETRAINED):] if isinstance(value, str) and value.startswith(PRETRAINED) else None
    for o in cfg_or_overrides:
        key, _, value = str(o).partition("=")
        if key.strip() == "init_from" and value.strip().startswith(PRETRAINED):
            return value.strip()[len(PRETRAINED):]
    return None


@dataclass(frozen=True)
class PrintedRow:
    """A row of numbers as the paper prints it: the ``label`` that the line holds before its
    first number, and ``numbers`` in the printed order. The n-th printed row with a label is
    the n-th line with that label in the table's section of the paper's text."""
    label: str
    numbers: Tuple[float, ...]


@dataclass(frozen=True)
class PaperText:
    """Where a table's numbers are printed: ``paper`` (a text file name, e.g. ``omnifm`` for
    ``papers/omnifm.txt``), the section between the lines starting with ``start`` and ``end``,
    and the rows transcribed from it."""
    paper: str
    start: str
    end: str
    rows: Tuple[PrintedRow, ...]


@dataclass(frozen=True)
class Table:
    """A paper table, figure or study: cells, claims and the scales it runs at.

    ``metrics``: names in :data:`METRICS` or ``metric_defs`` (the table's own). ``task``: a
    task that must be registered for the table to run. ``plot``: ``"bars"`` (measured next
    to the paper) or ``"lines"`` (against each cell's ``x``, per ``series``). ``rule``: the
    default evaluation rule (``best`` round or ``last``). ``data_seed``: an integer (every
    run of every sitting splits the data with it, whichever seeds a sitting runs, so seeds added
    later share the split of the first ones) or ``"seed"`` (each seed draws its own split).
    ``references``: model-free rows (:class:`Reference`). ``pretrain``: the models that
    cells start from (:class:`Pretrain`, in the order they run). ``appendix``: markdown
    lines after the claims. ``source``: the file it was loaded from (set by the registry).
    """
    name: str
    title: str
    metrics: Tuple[str, ...]
    cells: Tuple[Cell, ...]
    claims: Tuple[Claim, ...] = ()
    scales: Mapping[str, Scale] = field(default_factory=dict)
    default_scale: str = "smoke"
    task: Optional[str] = None
    plot: str = "bars"
    rule: str = "best"
    data_seed: Union[int, str] = 0
    notes: Tuple[str, ...] = ()
    metric_defs: Mapping[str, Metric] = field(default_factory=dict)
    printed: Optional[PaperText] = None
    references: Tuple[Reference, ...] = ()
    pretrain: Tuple[Pretrain, ...] = ()
    appendix: Tuple[str, ...] = ()
    row_header: str = "Method"
    kind: str = "paper"
    source: str = ""

    @property
    def rows(self) -> List[Tuple[str, str]]:
        return list(dict.fromkeys((c.row_key, c.row) for c in self.cells))

    @property
    def cols(self) -> List[Tuple[str, str]]:
        return list(dict.fromkeys((c.col_key, c.col) for c in self.cells))

    def split_seed(self, seed: int) -> int:
        """The ``data_seed`` of a run at ``seed``: the table's, or ``seed`` itself for ``"seed"``."""
        return seed if self.data_seed == "seed" else self.data_seed

    def metric(self, name: str) -> Metric:
        """The table's metric ``name`` (its own definition, else :data:`METRICS`)."""
        return self.metric_defs[name] if name in self.metric_defs else METRICS[name]

    def check(self) -> None:
        """Raise ValueError when the table contradicts itself (duplicate cells, unknown
        metrics, claims on cells that do not exist, a bad default scale or rule)."""
        keys = [(c.row_key, c.col_key) for c in self.cells]
        if not self.cells or len(set(keys)) != len(keys):
            raise ValueError(f"table {self.name!r}: no cells, or two cells with the same (row_key, col_key)")
        for m in self.metrics:
            if m not in self.metric_defs and m not in METRICS:
                raise ValueError(f"table {self.name!r}: unknown metric {m!r} (define it in metric_defs)")
        for c in self.claims:
            named = [c.winner, *c.others] if c.kind == "beats" else [(r, k) for _, r, k in c.terms]
            if c.kind not in ("beats", "contrast") or c.metric not in self.metrics or not all(
                    n in set(keys) for n in named):
                raise ValueError(f"table {self.name!r}: claim {c.text!r} names a cell, metric or kind that "
                                 "does not exist")
        if self.scales and self.default_scale not in self.scales:
            raise ValueError(f"table {self.name!r}: default scale {self.default_scale!r} is not one of "
                             f"{list(self.scales)}")
        defined: List[str] = []
        for p in self.pretrain:
            wanted = pretrained_key(p.overrides)
            if p.key in defined or (wanted is not None and wanted not in defined):
                raise ValueError(f"table {self.name!r}: pretrain {p.key!r} is defined twice or starts from "
                                 f"{wanted!r}, which is not defined before it")
            defined.append(p.key)
        for c in self.cells:
            wanted = pretrained_key(c.overrides)
            if wanted is not None and wanted not in defined:
                raise ValueError(f"table {self.name!r}: cell ({c.row}, {c.col}) starts from pretrain {wanted!r}, "
                                 f"which the table does not define (pretrain: {defined})")
        fixed = isinstance(self.data_seed, int) and not isinstance(self.data_seed, bool) and self.data_seed >= 0
        if self.rule not in ("best", "last") or not (fixed or self.data_seed == "seed"):
            raise ValueError(f"table {self.name!r}: rule must be best/last and data_seed an integer >= 0 or "
                             f"'seed' (got {self.data_seed!r})")


def beats_all(cells: Sequence[Cell], metric: str, winner_row: str, col_key: str, text: str,
              rows: Optional[Sequence[str]] = None) -> Claim:
    """``winner_row`` is better on ``metric`` in column ``col_key`` than every other row of
    that column (or of ``rows``, row keys)."""
    others = tuple((c.row_key, c.col_key) for c in cells if c.col_key == col_key and c.row_key != winner_row
                   and (rows is None or c.row_key in rows))
    return Claim(text, metric, "beats", (winner_row, col_key), others)


_FLOAT = re.compile(r"\d+\.\d+")


def transcription_errors(printed: PaperText, text: str) -> List[str]:
    """Each printed row that does not match the paper's ``text`` (empty: all match). The
    section runs from the first line starting with ``printed.start`` to the next line
    starting with ``printed.end``; a row matches the n-th line of the section whose text
    before its first number holds the label (as words), with exactly the row's numbers."""
    lines = [" ".join(line.split()) for line in text.splitlines()]  # the text has non-breaking spaces
    try:
        first = next(i for i, line in enumerate(lines) if line.startswith(printed.start))
        last = next(i for i in range(first + 1, len(lines)) if lines[i].startswith(printed.end))
    except StopIteration:
        return [f"section {printed.start!r} .. {printed.end!r} not found"]
    section = [line for line in lines[first:last] if _FLOAT.search(line)]
    seen: Dict[str, int] = {}
    errors = []
    for row in printed.rows:
        pattern = re.compile(rf"(^|\s){re.escape(row.label)}(\s|$)")
        matching = [line for line in section if pattern.search(line[:_FLOAT.search(line).start()])]
        n = seen.get(row.label, 0)
        seen[row.label] = n + 1
        if n >= len(matching):
            errors.append(f"{row.label!r} (occurrence {n + 1}): no such line")
            continue
        got = tuple(float(x) for x in _FLOAT.findall(matching[n]))
        if got != tuple(row.numbers):
            errors.append(f"{row.label!r} (occurrence {n + 1}): printed {got}, transcribed {tuple(row.numbers)}")
    return errors
