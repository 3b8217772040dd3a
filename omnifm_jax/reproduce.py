"""Reproduce the paper's tables: ``omnifm reproduce TABLE [--scale smoke|paper] [--out DIR]``.

Each table is a declarative list of :class:`Cell` s: a row label, a column label, the
config of the paper's protocol for that cell (a name in ``omnifm_jax/configs``), the
overrides that make the cell (algorithm, scenario, participation, ablation switch), and
the paper's number(s) for it, transcribed from the paper's text (:data:`PAPER`).

A *scale* says which data and sizes the cells run at (:data:`SETTINGS`):

* ``paper``: the paper's protocol where this library can express it (Table 1: ResNet-18,
  MedMNIST Path+Derma+Blood, 20 clients, 100 rounds x 5 local epochs; Table 2 / 8-SR:
  BreaKHis; ...). The expected wall time is printed before any work (from the H100
  figures measured in the README's Performance section, where there are any).
* ``smoke``: minutes on a 2-core CPU. The paper's Table-1 data (MedMNIST
  Path/Derma/Blood) are not on this machine, so classification runs on the ``real4``
  stand-in (its official *test* splits only, 2,888 real images of 4 modalities and 17
  classes, 5 clients) when its files are present, else on the built-in synthetic
  federation; tiny models, a few rounds. ``protocol.md`` says what was used and why.
* ``tiny``: synthetic data, one or two rounds, the smallest models; for tests and the
  notebook's test run only (its numbers mean nothing).

Choices made here (all visible in ``protocol.md``):

* Seeds. Every cell runs once per seed (``--seeds 0,1,2``); the seed sets the model
  initialisation, the participant draws and the minibatch order. The data split is the
  same for every seed and every method (``data_seed`` = the first seed), as PFLlib repeats
  runs on one generated data set, so methods are compared on one federation and the
  seed-to-seed spread is the training's, not the split's. Cells report mean ± sample std
  (ddof=1) over the seeds.
* One compiled program per group of runs that differ only in shape-free values (seed,
  ``lr``, float hyper-parameters such as ``lambda_align``): :func:`omnifm_jax.sweep.group_runs`
  forms the groups over the whole table (so Table 8's OmniFM and w/o-SPAlign rows,
  ``lambda_align`` 0.1 and 0, share one program) and :func:`omnifm_jax.sweep.run_sweep`
  runs each. A group that ``run_sweep`` refuses (ConfigError), or every group when
  ``omnifm_jax.sweep`` cannot be imported, runs as separate ``experiment.run`` programs,
  and the log and ``protocol.md`` say so. Identical configs (Fig. 5's defaults) run once.
* Evaluation rule. PFLlib's (which the paper follows) "best round": the evaluation round,
  round 0 included, with the best primary metric (accuracy, PSNR, Dice, VIF), and every
  metric of a cell taken from that round. ``--eval last`` uses the last round instead;
  the CSV holds both.
* Hyper-parameters the paper does not give. PFLlib's defaults switch FedProx, Ditto and
  MOON off (``mu=0``); here FedProx ``mu=0.01``, Ditto ``mu=0.1``, MOON ``mu=1.0`` (MOON's
  value for CIFAR-100), GPFL ``lamda=0.01, mu=0.1`` (GPFL's scripts). See :data:`METHODS`.
* Verdicts (:func:`verdict`): per seed, the margin of the claim (e.g. OmniFM's accuracy
  minus the best other method's, paired by seed); "holds" when the mean margin is
  positive and at least 2 sample std of the per-seed margins; "holds weakly" when it is
  positive but smaller than 2 std (or only one seed ran); "does not hold here" when it is
  zero or negative. Each claim is also checked on the paper's own numbers.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError

__all__ = ["PAPER", "METRICS", "Metric", "paper_metric", "TABLES", "SETTINGS", "Cell", "Table", "Claim", "Setting",
           "build_plan", "check_data", "execute", "records_from", "aggregate", "evaluate_claims", "verdict",
           "write_csv", "write_markdown", "write_plot", "protocol_text", "render", "reproduce", "available_tables",
           "table_listing"]

# --------------------------------------------------------------------------------------
# The paper's numbers, as printed in /work/shared/papers/omnifm.txt (arXiv:2603.21660v1).
# --------------------------------------------------------------------------------------

#: Paper numbers, transcribed from the paper's text. Units as printed (accuracy, Dice and
#: IoU in %, F1 / SSIM / VIF in [0, 1], PSNR in dB).
PAPER: Dict[str, Any] = {
    # Table 1: cross-modality classification (MedMNIST Path+Derma+Blood, ResNet-18, 100
    # rounds x 5 local epochs). Per method, in the paper's column order: Scenario 1 (Hard)
    # Acc (%) at 20/50/100% participation, Scenario 1 F1; Scenario 2 (Medium) Acc, F1;
    # Scenario 3 (Extra) Acc, F1.
    "table1": {
        "FedAvg": ((56.31, 67.31, 84.21), (0.234, 0.380, 0.474), (56.44, 67.11, 84.49), (0.229, 0.334, 0.460),
                   (24.24, 56.84, 99.49), (0.165, 0.522, 0.977)),
        "FedProx": ((27.04, 58.79, 93.92), (0.060, 0.293, 0.491), (30.17, 38.33, 30.14), (0.119, 0.124, 0.131),
                    (24.07, 55.79, 97.53), (0.130, 0.369, 0.587)),
        "Ditto": ((28.67, 65.31, 97.56), (0.096, 0.385, 0.649), (30.23, 69.23, 96.11), (0.123, 0.486, 0.820),
                  (25.09, 58.66, 99.24), (0.170, 0.447, 0.931)),
        "SCAFFOLD": ((24.09, 16.56, 19.85), (0.046, 0.063, 0.082), (24.04, 18.01, 20.59), (0.053, 0.067, 0.078),
                     (52.31, 49.99, 99.41), (0.241, 0.180, 0.846)),
        "MOON": ((28.46, 50.99, 97.52), (0.085, 0.289, 0.644), (29.65, 23.37, 22.90), (0.136, 0.085, 0.063),
                 (19.07, 56.81, 98.99), (0.154, 0.528, 0.881)),
        "GPFL": ((57.78, 62.20, 52.88), (0.303, 0.319, 0.208), (68.04, 56.47, 54.98), (0.284, 0.313, 0.254),
                 (68.09, 54.52, 54.72), (0.338, 0.436, 0.505)),
        "FedDyn": ((64.37, 87.85, 94.99), (0.315, 0.460, 0.554), (74.92, 88.94, 94.99), (0.283, 0.508, 0.554),
                   (73.29, 86.12, 90.46), (0.387, 0.512, 0.550)),
        "FedRep": ((83.52, 89.01, 93.46), (0.395, 0.432, 0.487), (82.43, 88.09, 92.54), (0.365, 0.444, 0.525),
                   (85.10, 96.02, 98.06), (0.624, 0.836, 0.908)),
        "FedPer": ((84.47, 91.02, 92.57), (0.461, 0.621, 0.665), (83.51, 91.02, 92.80), (0.409, 0.621, 0.654),
                   (91.81, 98.76, 99.41), (0.848, 0.911, 0.980)),
        "OmniFM": ((96.85, 97.71, 97.82), (0.589, 0.663, 0.668), (96.27, 96.88, 97.01), (0.576, 0.657, 0.666),
                   (98.85, 99.30, 99.77), (0.959, 0.971, 0.978)),
    },
    # Table 2: super-resolution on BreaKHis, three clients. The "Avg." row of each scale and
    # the "Average" row, in the paper's column order: Scenario 1 PSNR (OmniFM, FedAvg,
    # FedProx, FedPer, Local), Scenario 1 SSIM (same order), Scenario 2 PSNR, Scenario 2 SSIM.
    # (The per-client rows are not reproduced here.)
    "table2": {
        "x2": (42.21, 35.95, 21.84, 39.52, 35.63, 0.9693, 0.9505, 0.5467, 0.9527, 0.9293,
               42.30, 41.50, 24.37, 40.87, 39.17, 0.9711, 0.9548, 0.8152, 0.9590, 0.9569),
        "x4": (35.15, 30.38, 9.25, 30.29, 30.08, 0.8681, 0.8592, 0.1101, 0.8607, 0.8679,
               36.79, 34.14, 9.82, 33.25, 32.54, 0.9139, 0.9125, 0.1115, 0.8786, 0.8927),
        "x8": (30.02, 29.36, 11.88, 29.15, 29.14, 0.7636, 0.7557, 0.1531, 0.7551, 0.7500,
               30.64, 30.17, 11.95, 29.86, 29.76, 0.7850, 0.7766, 0.1507, 0.7691, 0.7666),
        "Average": (35.79, 31.90, 14.32, 32.99, 31.62, 0.8670, 0.8551, 0.2700, 0.8562, 0.8490,
                    36.58, 35.27, 15.38, 34.66, 33.82, 0.8900, 0.8813, 0.3591, 0.8689, 0.8720),
    },
    # Table 6: segmentation (FeTS2022, GD-enhancing tumour from T1ce, UNet, 50 rounds x 1
    # epoch). Per method: Dice, IoU (%) of Group 1 (9 clients), Group 2 (6), Group 3 (5),
    # Group 4 (3), Avg.
    "table6": {
        "Local": (45.24, 29.33, 44.21, 25.00, 41.25, 27.22, 46.23, 30.00, 44.23, 27.89),
        "FedAvg": (44.02, 28.56, 44.91, 25.32, 40.93, 26.10, 46.78, 30.95, 44.16, 27.73),
        "FedProx": (42.32, 25.23, 44.00, 24.43, 38.99, 25.32, 45.35, 29.76, 42.66, 26.19),
        "FedPer": (71.23, 66.99, 75.24, 62.12, 72.43, 57.34, 76.54, 62.99, 73.86, 62.36),
        "OmniFM": (79.84, 74.93, 80.82, 68.74, 78.62, 66.01, 78.03, 65.31, 77.41, 68.75),
    },
    # Table 7: multi-modal fusion (Harvard atlas, U2Fusion, 600 rounds x 15 local epochs).
    # Per metric and client: FedAvg, FedProx, Ditto, FedDyn, MOON, OmniFM.
    "table7": {
        "VIF": {"CT-MRI": (0.221, 0.185, 0.196, 0.182, 0.195, 0.217),
                "PET-MRI": (0.331, 0.242, 0.275, 0.239, 0.275, 0.309),
                "SPECT-MRI": (0.284, 0.235, 0.249, 0.245, 0.249, 0.280),
                "Avg": (0.279, 0.221, 0.240, 0.222, 0.240, 0.269)},
        "SSIM": {"CT-MRI": (0.739, 0.684, 0.718, 0.716, 0.718, 0.739),
                 "PET-MRI": (0.640, 0.550, 0.609, 0.617, 0.609, 0.648),
                 "SPECT-MRI": (0.749, 0.702, 0.732, 0.733, 0.732, 0.749),
                 "Avg": (0.709, 0.645, 0.686, 0.689, 0.686, 0.712)},
        "L1": {"CT-MRI": (0.163, 0.173, 0.165, 0.169, 0.165, 0.161),
               "PET-MRI": (0.189, 0.199, 0.189, 0.195, 0.190, 0.187),
               "SPECT-MRI": (0.088, 0.096, 0.089, 0.092, 0.089, 0.086),
               "Avg": (0.147, 0.156, 0.148, 0.152, 0.148, 0.145)},
    },
    # Table 8: ablations. Per variant: CLS (accuracy %, = Table 1 Scenario 1 at 100%), SR
    # (PSNR dB, = Table 2 Scenario 1 "Average" over x2/x4/x8), SEG (Dice %), VQA-T1, VQA-T2,
    # VQA-T3 (the VQA columns are not reproduced: this library has no VQA task).
    "table8": {
        "OmniFM": (97.82, 35.79, 75.04, 0.800, 79.27, 44.21),
        "w/o GSKR": (95.82, 34.88, 73.42, 0.775, 78.91, 42.62),
        "w/o ECA": (96.51, 35.04, 74.03, 0.783, 79.15, 43.01),
        "w/o PSP": (96.92, 35.12, 74.51, 0.787, 79.42, 43.19),
        "w/o SPAlign": (97.14, 35.21, 74.09, 0.781, 77.64, 42.37),
    },
    # Fig. 5 (sensitivity to lambda and top-k) is a figure: the text gives no numbers, only
    # "performance peaks near the default alignment coefficient" and "k = 2 yields the most
    # effective global spectral retrieval".
    "fig5": None,
}


# --------------------------------------------------------------------------------------
# Metrics, cells, tables
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """A reported metric: ``key`` in a run's metric line; ``factor`` turns it into the
    paper's units (accuracy 0.97 -> 97 %); ``decimals`` as printed in the paper. The label
    and the direction (``higher_is_better``) are the task's (:func:`paper_metric`)."""
    key: str
    label: str
    factor: float = 1.0
    decimals: int = 2
    higher_is_better: bool = True


def paper_metric(task: str, key: str, factor: float = 1.0, decimals: int = 2, note: str = "") -> Metric:
    """The task's metric ``key`` (its :class:`~omnifm_jax.tasks.MetricSpec`: label, higher
    or lower is better) in the paper's units: times ``factor`` (100: "%" in the label), shown
    with ``decimals``; ``note`` is appended to the label. A task that is not registered here
    (see :func:`available_tables`) gives the bare key as label, higher is better."""
    from omnifm_jax import tasks

    try:
        spec = tasks.metric_spec(task, key)
    except ValueError:
        spec = tasks.MetricSpec(key, key)
    unit = " (%)" if factor == 100.0 else ""
    return Metric(key, spec.label + unit + note, factor, decimals, spec.higher_is_better)


#: The tables' metrics, by the names the tables use: the task's metric in the paper's units.
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
    """One cell of a paper table.

    ``config`` is the config of the paper's protocol (``omnifm_jax/configs/<config>.py``);
    the scale maps it to what actually runs (:data:`SETTINGS`). ``overrides`` make the cell
    (``key=value`` strings, applied after the scale's size overrides). ``paper`` maps each
    of the table's metric names (:data:`METRICS`) to the paper's number in the paper's
    units, or None where the paper gives no number (Fig. 5). ``x`` / ``series`` place the
    cell on a line plot (Fig. 5).
    """
    row: str
    col: str
    row_key: str
    col_key: str
    config: str
    overrides: Tuple[str, ...]
    paper: Mapping[str, Optional[float]]
    series: str = ""
    x: Optional[float] = None


@dataclass(frozen=True)
class Claim:
    """A claim of the paper about a table, tested on the measured cells.

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
class Table:
    name: str
    title: str
    metrics: Tuple[str, ...]
    cells: Tuple[Cell, ...]
    claims: Tuple[Claim, ...]
    smoke_rows: Optional[Tuple[str, ...]] = None   # default subsets at --scale smoke (None: all)
    smoke_cols: Optional[Tuple[str, ...]] = None
    smoke_rounds: Optional[int] = None
    task: Optional[str] = None                     # a task that must be registered
    plot: str = "bars"                             # "bars" or "lines"
    paper_has_numbers: bool = True
    notes: Tuple[str, ...] = ()

    @property
    def rows(self) -> List[Tuple[str, str]]:
        return list(dict.fromkeys((c.row_key, c.row) for c in self.cells))

    @property
    def cols(self) -> List[Tuple[str, str]]:
        return list(dict.fromkeys((c.col_key, c.col) for c in self.cells))


#: Table 1's methods: (label, algorithm, algorithm_kwargs overrides). The paper gives no
#: hyper-parameters; where PFLlib's default switches a method off (mu=0) a usual value is set.
METHODS: Tuple[Tuple[str, str, Tuple[str, ...]], ...] = (
    ("FedAvg", "fedavg", ()),
    ("FedProx", "fedprox", ("algorithm_kwargs.mu=0.01",)),
    ("Ditto", "ditto", ("algorithm_kwargs.mu=0.1",)),
    ("SCAFFOLD", "scaffold", ()),
    ("MOON", "moon", ("algorithm_kwargs.mu=1.0",)),
    ("GPFL", "gpfl", ("algorithm_kwargs.lamda=0.01", "algorithm_kwargs.mu=0.1")),
    ("FedDyn", "feddyn", ()),
    ("FedRep", "fedrep", ()),
    ("FedPer", "fedper", ()),
    ("OmniFM", "omnifm", ()),
)
_METHOD = {label: (alg, kw) for label, alg, kw in METHODS}
_METHOD.update({"Local": ("local", ())})


def _method_overrides(label: str) -> Tuple[str, ...]:
    alg, kw = _METHOD[label]
    return (f"algorithm={alg}",) + kw


def _beats_all(table_cells: Sequence[Cell], metric: str, winner_row: str, col_key: str, text: str) -> Claim:
    others = tuple((c.row_key, c.col_key) for c in table_cells if c.col_key == col_key and c.row_key != winner_row)
    return Claim(text, metric, "beats", (winner_row, col_key), others)


def _table1() -> Table:
    scenarios = (("s1", "Scenario 1 (Hard)", ("dataset_kwargs.partition=dirichlet", "dataset_kwargs.alpha=0.1")),
                 ("s2", "Scenario 2 (Medium)", ("dataset_kwargs.partition=dirichlet", "dataset_kwargs.alpha=0.5")),
                 ("s3", "Scenario 3 (Extra)", ("dataset_kwargs.partition=modality",)))
    cells = []
    for label, _, _ in METHODS:
        numbers = PAPER["table1"][label]
        for si, (skey, slabel, sover) in enumerate(scenarios):
            for pi, p in enumerate((20, 50, 100)):
                cells.append(Cell(label, f"{slabel}, {p}%", _METHOD[label][0], f"{skey}-{p}", "table1_resnet18",
                                  _method_overrides(label) + sover + (f"participation={p / 100}",),
                                  {"acc": numbers[2 * si][pi], "f1": numbers[2 * si + 1][pi]}))
    claims = []
    for skey, slabel, _ in scenarios:
        for p in (20, 50, 100):
            for m in ("acc", "f1"):
                claims.append(_beats_all(cells, m, "omnifm", f"{skey}-{p}",
                                         f"OmniFM has the highest {METRICS[m].label} in {slabel}, {p}% participation"))
            claims.append(Claim(f"OmniFM beats FedAvg on accuracy in {slabel}, {p}% participation", "acc", "beats",
                                ("omnifm", f"{skey}-{p}"), (("fedavg", f"{skey}-{p}"),)))
        claims.append(Claim(f"OmniFM loses less accuracy than FedPer from 100% to 20% participation in {slabel} "
                            "('stable under partial participation')", "acc", "contrast",
                            terms=((1.0, "omnifm", f"{skey}-20"), (-1.0, "omnifm", f"{skey}-100"),
                                   (-1.0, "fedper", f"{skey}-20"), (1.0, "fedper", f"{skey}-100"))))
    return Table(
        "table1", "Table 1: federated cross-modality classification", ("acc", "f1"), tuple(cells), tuple(claims),
        smoke_rows=("fedavg", "fedper", "omnifm"), smoke_cols=("s1-20", "s1-100", "s2-20", "s3-20"),
        smoke_rounds=4,
        notes=("Scenario 1 = Dirichlet 0.1, Scenario 2 = Dirichlet 0.5 (the paper: gamma in {0.1, 0.5}, "
               "'medium and hard'), Scenario 3 = one modality per client (the 'extra-hard' split).",))


_SR_METHODS = ("OmniFM", "FedAvg", "FedProx", "FedPer", "Local")


def _table2() -> Table:
    scenarios = (("s1", "Scenario 1", ()),
                 ("s2", "Scenario 2", ("dataset_kwargs.split_by=subtype",)))
    cells = []
    for scale in (2, 4, 8):
        numbers = PAPER["table2"][f"x{scale}"]
        for si, (skey, slabel, sover) in enumerate(scenarios):
            for mi, label in enumerate(_SR_METHODS):
                cells.append(Cell(f"×{scale}", f"{slabel}: {label}", f"x{scale}", f"{skey}-{_METHOD[label][0]}",
                                  "sr_breakhis",
                                  _method_overrides(label) + sover
                                  + (f"task_kwargs.scale={scale}", f"dataset_kwargs.scale={scale}"),
                                  {"psnr": numbers[10 * si + mi], "ssim": numbers[10 * si + 5 + mi]}))
    claims = []
    for skey, slabel, _ in scenarios:
        for scale in (2, 4, 8):
            for m in ("psnr", "ssim"):
                others = tuple((f"x{scale}", f"{skey}-{_METHOD[l][0]}") for l in _SR_METHODS if l != "OmniFM")
                claims.append(Claim(f"OmniFM has the highest {METRICS[m].label} at ×{scale}, {slabel}", m, "beats",
                                    (f"x{scale}", f"{skey}-omnifm"), others))
        claims.append(Claim(f"OmniFM's PSNR advantage over FedPer widens from ×2 to ×8 ({slabel})", "psnr",
                            "contrast", terms=((1.0, "x8", f"{skey}-omnifm"), (-1.0, "x8", f"{skey}-fedper"),
                                               (-1.0, "x2", f"{skey}-omnifm"), (1.0, "x2", f"{skey}-fedper"))))
    return Table(
        "table2", "Table 2: federated super-resolution (BreaKHis, three clients)", ("psnr", "ssim"), tuple(cells),
        tuple(claims), smoke_cols=tuple(f"s1-{_METHOD[l][0]}" for l in _SR_METHODS), smoke_rounds=8,
        notes=("Only the 'Avg.' rows of the paper (mean over the three clients) are compared.",
               "Scenario 1 = clients by magnification (sr_breakhis's split); Scenario 2 = clients by tumour subtype: "
               "an assumption, the paper's appendix that defines its two scenarios is not in the text.",
               "Test patients are held out from every client (split by patient); 'bicubic' in the CSV is the "
               "model-free bicubic upsampling of the same test patches."))


_ABLATIONS = (("OmniFM", "omnifm", ()),
              ("w/o GSKR", "no_gskr", ("algorithm_kwargs.use_gskr=False",)),
              ("w/o ECA", "no_eca", ("algorithm_kwargs.use_eca=False",)),
              ("w/o PSP", "no_psp", ("algorithm_kwargs.use_psp=False",)),
              ("w/o SPAlign", "no_spalign", ("algorithm_kwargs.lambda_align=0.0",)))
#: Table 8's / Fig. 5's task columns: (col_key, label, paper config, overrides, metric, Table-8 column index).
_TASK_COLS = (("CLS", "CLS (Acc %)", "table1_resnet18",
               ("dataset_kwargs.partition=dirichlet", "dataset_kwargs.alpha=0.1", "participation=1.0"), "acc", 0),
              ("SR", "SR (PSNR dB, ×4)", "sr_breakhis", ("task_kwargs.scale=4", "dataset_kwargs.scale=4"), "psnr", 1),
              ("SEG", "SEG (Dice %)", "seg_lgg_sites", (), "dice", 2))


def _table8() -> Table:
    cells = []
    for label, key, over in _ABLATIONS:
        for ckey, clabel, cfg, cover, metric, idx in _TASK_COLS:
            paper = {m: None for m in ("acc", "psnr", "dice")}
            paper[metric] = PAPER["table8"][label][idx]
            cells.append(Cell(label, clabel, key, ckey, cfg, ("algorithm=omnifm",) + cover + over, paper))
    claims = []
    for label, key, _ in _ABLATIONS[1:]:
        for ckey, clabel, _, _, metric, _ in _TASK_COLS:
            claims.append(Claim(f"removing {label[4:]} lowers {clabel}", metric, "beats", ("omnifm", ckey),
                                ((key, ckey),)))
    return Table(
        "table8", "Table 8: ablations of OmniFM", ("acc", "psnr", "dice"), tuple(cells), tuple(claims),
        smoke_cols=("CLS", "SR"), smoke_rounds=6,
        notes=("Each column reports one metric (CLS: accuracy, SR: PSNR, SEG: Dice); the other metrics of a "
               "column are not compared.",
               "CLS = Table 1's Scenario 1 at 100% participation (the paper's 97.82 is that cell). SR: the paper's "
               "35.79 is Table 2's Scenario-1 'Average' over x2/x4/x8; here one scale, x4, runs. SEG: the paper's "
               "FeTS2022 task; here the TCGA-LGG site federation (seg_lgg_sites).",
               "The VQA columns (VQA-T1..T3) are not reproduced: this library has no VQA task.",
               "w/o GSKR: the bank is replaced by the mean spectral embedding; w/o ECA: a FiLM layer; w/o PSP: a "
               "projection layer (the paper's replacements); w/o SPAlign: lambda_align = 0."))


_LAMBDAS = (0.001, 0.01, 0.1, 1.0, 10.0)
_TOPKS = (1, 2, 3, 4)


def _fig5() -> Table:
    cells = []
    for ckey, clabel, cfg, cover, _metric, _ in _TASK_COLS[:2]:
        paper = {m: None for m in ("acc", "psnr")}
        for lam in _LAMBDAS:
            cells.append(Cell(f"λ = {lam:g}", clabel, f"lambda={lam:g}", ckey, cfg,
                              ("algorithm=omnifm",) + cover + (f"algorithm_kwargs.lambda_align={lam}",), paper,
                              series="λ (lambda_align)", x=lam))
        for k in _TOPKS:
            cells.append(Cell(f"top-k = {k}", clabel, f"k={k}", ckey, cfg,
                              ("algorithm=omnifm",) + cover + (f"algorithm_kwargs.top_k={k}",), paper,
                              series="top-k", x=float(k)))
    claims = []
    for ckey, clabel, _, _, metric, _ in _TASK_COLS[:2]:
        claims.append(Claim(f"performance peaks at the default λ = 0.1 on {clabel} (vs λ in "
                            f"{{{', '.join(f'{l:g}' for l in _LAMBDAS if l != 0.1)}}})", metric, "beats",
                            ("lambda=0.1", ckey), tuple((f"lambda={l:g}", ckey) for l in _LAMBDAS if l != 0.1)))
        claims.append(Claim(f"top-k = 2 is the best retrieval size on {clabel} (vs k in {{1, 3, 4}})", metric,
                            "beats", ("k=2", ckey), tuple((f"k={k}", ckey) for k in _TOPKS if k != 2)))
    return Table(
        "fig5", "Fig. 5: sensitivity to the alignment coefficient λ and top-k", ("acc", "psnr"), tuple(cells),
        tuple(claims), smoke_cols=("CLS",), smoke_rounds=6, plot="lines", paper_has_numbers=False,
        notes=("Fig. 5 is a figure: the paper's text gives no numbers, so there is no 'paper' or 'difference' "
               "column; the claims are the text's ('performance peaks near the default alignment coefficient', "
               "'k = 2 yields the most effective global spectral retrieval'). The paper's default λ is not stated; "
               "this library's default is 0.1 (and top_k = 2).",
               "λ = 0.1 with top-k = 2 is one configuration: it runs once and fills both series."))


_SEG_COLS = (("lgg", "TCGA-LGG sites (4 clients) vs paper Avg.", "seg_lgg_sites"),
             ("brats", "BraTS ET from T1ce (2 clients) vs paper Avg.", "seg_brats_et"))


def _table6() -> Table:
    cells = []
    for label in PAPER["table6"]:
        numbers = PAPER["table6"][label]
        for ckey, clabel, cfg in _SEG_COLS:
            cells.append(Cell(label, clabel, _METHOD[label][0], ckey, cfg, _method_overrides(label),
                              {"dice": numbers[8], "iou": numbers[9]}))
    claims = [_beats_all(cells, m, "omnifm", ckey, f"OmniFM has the highest {METRICS[m].label} on {clabel}")
              for ckey, clabel, _ in _SEG_COLS for m in ("dice", "iou")]
    return Table(
        "table6", "Table 6: federated segmentation", ("dice", "iou"), tuple(cells), tuple(claims),
        smoke_cols=("lgg",), smoke_rounds=3, task="segmentation",
        notes=("The paper's FeTS2022 institution groups are not available here; each column is a local "
               "federation compared with the paper's 'Avg.' column (mean over its four groups).",
               "Dice and IoU are the means over clients of the per-image foreground scores (see "
               "omnifm_jax/tasks/segmentation.py)."))


_FUSION_METHODS = ("FedAvg", "FedProx", "Ditto", "FedDyn", "MOON", "OmniFM")


def _table7() -> Table:
    cells = []
    for mi, label in enumerate(_FUSION_METHODS):
        paper = {"vif": PAPER["table7"]["VIF"]["Avg"][mi], "fssim": PAPER["table7"]["SSIM"]["Avg"][mi],
                 "l1": PAPER["table7"]["L1"]["Avg"][mi]}
        cells.append(Cell(label, "Avg. over the 3 clients", _METHOD[label][0], "avg", "fusion_harvard",
                          _method_overrides(label), paper))
    claims = [_beats_all(cells, m, "omnifm", "avg", f"OmniFM has the best {METRICS[m].label} (Avg.)")
              for m in ("vif", "fssim", "l1")]
    return Table(
        "table7", "Table 7: federated multi-modal fusion (Harvard atlas)", ("vif", "fssim", "l1"), tuple(cells),
        tuple(claims), smoke_rounds=3, task="fusion",
        notes=("Only the 'Avg' rows (unweighted mean over CT-MRI, PET-MRI, SPECT-MRI) are compared.",
               "VIF and SSIM: the fusion task sums them over the two source images; they are halved here to the "
               "scale of one source (the paper does not state its convention)."))


TABLES: Dict[str, Table] = {t.name: t for t in (_table1(), _table2(), _table8(), _fig5(), _table6(), _table7())}


def available_tables() -> Dict[str, Optional[str]]:
    """``{table: None}`` if it can run here, else ``{table: why not}`` (its task is not
    registered in :data:`omnifm_jax.registry.TASKS`)."""
    from omnifm_jax.registry import TASKS

    tasks = TASKS.available()
    return {name: (None if t.task is None or t.task in tasks else
                   f"{name} needs the task {t.task!r}, which is not registered here (tasks: {list(tasks)})")
            for name, t in TABLES.items()}


# --------------------------------------------------------------------------------------
# Scales: what runs for a paper config
# --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    """What runs in place of a paper config at a scale: ``config`` + ``overrides`` (applied
    before the cell's overrides), used when the files named by ``needs`` (a key of
    :data:`DATA_FILES`) exist under the real-data folder."""
    config: str
    overrides: Tuple[str, ...] = ()
    needs: Optional[str] = None
    note: str = ""


#: Files (relative to ``default_real_data_dir()``) that a setting needs.
DATA_FILES: Dict[str, Tuple[str, ...]] = {
    "real4": ("blood_pbc/pbc_bloodmnist_style_28.npz", "medmnist/retinamnist.npz", "medmnist/pneumoniamnist.npz",
              "medmnist/breastmnist.npz"),
    "breakhis": ("breakhis/images",),
    "lgg": ("lgg_mri_seg/lgg_flair_seg_64.npz",),
    "brats": ("brats_slices/brats_tumour_slices_96.npz",),
    "harvard": ("fusion_harvard/CT-MRI", "fusion_harvard/PET-MRI", "fusion_harvard/SPECT-MRI"),
}

_RUN = ("checkpoint_every=0",)
_SMOKE_OMNIFM = ("algorithm_kwargs.spectral_dim=16", "algorithm_kwargs.attn_dim=16")
_SMOKE_CLS = _RUN + ("num_clients=5", "local_epochs=1", "batch_size=32", "lr=0.05", "backbone=cnn",
                     "backbone_kwargs.hidden=64", "eval_train_loss=False") + _SMOKE_OMNIFM
_SMOKE_SR = _RUN + ("dataset_kwargs.patch=32", "dataset_kwargs.max_patches_per_image=8", "backbone_kwargs.features=16",
                    "backbone_kwargs.num_blocks=2", "local_epochs=5", "batch_size=8", "lr=0.002",
                    "eval_train_loss=False") + _SMOKE_OMNIFM
_SMOKE_SEG = _RUN + ("backbone_kwargs.channels=(4, 8, 16, 32)", "backbone_kwargs.strides=(2, 2, 2)",
                     "backbone_kwargs.num_res_units=1", "eval_train_loss=False") + _SMOKE_OMNIFM
_SMOKE_FUSION = _RUN + ("dataset_kwargs.image_size=48", "backbone_kwargs.features=8", "eval_train_loss=False")
_TINY_CLS = _RUN + ("num_clients=5", "local_epochs=1", "batch_size=8", "backbone_kwargs.hidden=16",
                    "dataset_kwargs.samples_per_class_per_modality=4", "dataset_kwargs.image_size=16",
                    "eval_train_loss=False", "eval_batch_size=64", "algorithm_kwargs.spectral_dim=8",
                    "algorithm_kwargs.attn_dim=8")
_TINY_SR = _RUN + ("dataset_kwargs.images_per_client=8", "backbone_kwargs.features=8", "backbone_kwargs.num_blocks=1",
                   "eval_train_loss=False", "algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8")

_PAPER_SEG = ("rounds=50", "backbone_kwargs.channels=(16, 32, 64, 128, 256)")  # MONAI tutorial widths
_REAL4_NOTE = ("the paper's Table-1 data (MedMNIST PathMNIST + DermaMNIST + BloodMNIST, ~110k images, 24 classes) "
               "are not on this machine; the stand-in is real4 (real blood microscopy, fundus, chest X-ray and "
               "breast ultrasound images, 17 classes), restricted to its official test splits (2,888 images) and "
               "5 clients with FedAvgCNN (hidden 64) so that a cell takes seconds on a 2-core CPU")
_SYN_NOTE = ("neither the paper's data nor the real4 stand-in are present; the built-in synthetic cross-modality "
             "federation (3 modalities x 6 classes) stands in")

#: ``SETTINGS[scale][paper config]``: candidates, the first whose data exist is used.
SETTINGS: Dict[str, Dict[str, Tuple[Setting, ...]]] = {
    "paper": {
        "table1_resnet18": (Setting("table1_resnet18", _RUN, None,
                                    "the paper's protocol: MedMNIST Path+Derma+Blood official train splits "
                                    "(~109k images, 24 classes), ResNet-18, 20 clients, 100 rounds x 5 local "
                                    "epochs, batch 10 (files read from $OMNIFM_DATA or downloaded)"),),
        "sr_breakhis": (Setting("sr_breakhis", _RUN, "breakhis",
                                "BreaKHis as in Sec. 4.2 (here the 28 bundled real images; patient-level "
                                "test split), EDSR-style backbone, 50 rounds (the paper's SR rounds are not "
                                "in the text)"),),
        "seg_lgg_sites": (Setting("seg_lgg_sites", _RUN + _PAPER_SEG,
                                  "lgg", "FeTS2022 is not available; TCGA-LGG sites as clients, MONAI UNet at the "
                                  "tutorial's widths, 50 rounds x 1 local epoch (the paper's protocol)"),),
        "seg_brats_et": (Setting("seg_brats_et", _RUN + _PAPER_SEG,
                                 "brats", "FeTS2022 is not available; the 8 bundled BraTS cases (enhancing tumour "
                                 "from T1ce, the paper's target), 50 rounds x 1 local epoch"),),
        "fusion_harvard": (Setting("fusion_harvard", _RUN + (
            "dataset_kwargs.image_size=256", "rounds=600", "local_epochs=15", "backbone_kwargs.features=44",
            "task_kwargs.head_widths=[128, 64, 32]"), "harvard",
            "the paper's protocol: 256x256 pairs, U2Fusion widths, 600 rounds x 15 local epochs"),),
    },
    "smoke": {
        "table1_resnet18": (Setting("real4", _SMOKE_CLS + ("dataset_kwargs.splits=['test']",), "real4", _REAL4_NOTE),
                            Setting("default", _SMOKE_CLS + ("dataset_kwargs.samples_per_class_per_modality=20",),
                                    None, _SYN_NOTE)),
        "sr_breakhis": (Setting("sr_breakhis", _SMOKE_SR, "breakhis",
                                "the 28 bundled real BreaKHis images (patient-level test split), 32-px HR patches, "
                                "a small EDSR (16 features, 2 blocks), 5 local epochs at batch 8, Adam 2e-3"),
                        Setting("sr_synthetic", _RUN + ("eval_train_loss=False",), None,
                                "the BreaKHis images are not present; synthetic SR images stand in")),
        "seg_lgg_sites": (Setting("seg_lgg_sites", _SMOKE_SEG, "lgg",
                                  "FeTS2022 is not available; TCGA-LGG FLAIR-abnormality slices, clients = sites, "
                                  "a 4-level UNet at widths 4..32"),),
        "seg_brats_et": (Setting("seg_brats_et", _SMOKE_SEG, "brats",
                                 "FeTS2022 is not available; the 8 bundled BraTS cases, a 4-level UNet at widths "
                                 "4..32"),),
        "fusion_harvard": (Setting("fusion_harvard", _SMOKE_FUSION, "harvard",
                                   "the real Harvard pairs at 48x48 (a 4-scale VIF needs >= 41 px), "
                                   "U2Fusion with 8 features per dense layer"),
                           Setting("fusion_harvard", _SMOKE_FUSION + ("dataset=synthetic_fusion",), None,
                                   "the Harvard pairs are not present; synthetic fusion pairs stand in")),
    },
    "tiny": {
        "table1_resnet18": (Setting("default", _TINY_CLS, None, "tests only: tiny synthetic federation"),),
        "sr_breakhis": (Setting("sr_synthetic", _TINY_SR, None, "tests only: tiny synthetic SR federation"),),
    },
}
SCALES = tuple(SETTINGS)

#: Measured H100 figures (README, Performance): one Table-1 run (ResNet-18, 20 clients at
#: 100% participation, 100 rounds x 2,050 steps at batch 10) extrapolated at 83 minutes.
H100_MINUTES_PER_100_ROUNDS = {"table1_resnet18": 83.0}


def _data_present(needs: Optional[str], root: Path) -> bool:
    return needs is None or all((root / rel).exists() for rel in DATA_FILES[needs])


def resolve_setting(scale: str, paper_config: str, root: Optional[Path] = None) -> Setting:
    """The setting that runs ``paper_config`` at ``scale``: the first candidate whose data are
    present under ``root`` (default: :func:`omnifm_jax.data.registry.default_real_data_dir`)."""
    from omnifm_jax.data.paths import default_real_data_dir

    if scale not in SETTINGS:
        raise ConfigError(f"unknown scale {scale!r}; scales: {list(SETTINGS)}")
    candidates = SETTINGS[scale].get(paper_config)
    if not candidates:
        raise ConfigError(f"scale {scale!r} has no setting for {paper_config!r} (it has {sorted(SETTINGS[scale])})")
    root = Path(root) if root is not None else default_real_data_dir()
    for setting in candidates:
        if _data_present(setting.needs, root):
            return setting
    missing = sorted({str(root / rel) for s in candidates if s.needs for rel in DATA_FILES[s.needs]
                      if not (root / rel).exists()})
    raise ConfigError(f"{paper_config} at scale {scale!r} needs data that are not here: {missing} "
                      "(set OMNIFM_REAL_DATA to the real-data folder)")


# --------------------------------------------------------------------------------------
# Plan: cells -> validated configs -> programs
# --------------------------------------------------------------------------------------

@dataclass
class PlannedCell:
    cell: Cell
    setting: Setting
    configs: List[Dict[str, Any]]   # one per seed, full and validated


@dataclass
class Program:
    base: Dict[str, Any]
    runs: List[Dict[str, Any]]
    members: List[List[Tuple[int, int]]]   # per run: the (cell index, seed index) it serves
    mode: str = "sweep"                     # "sweep" or why it runs as separate programs
    wall_time_s: Optional[float] = None


@dataclass
class Plan:
    table: Table
    scale: str
    seeds: Tuple[int, ...]
    cells: List[PlannedCell]
    programs: List[Program]
    rule: str = "best"
    notes: List[str] = field(default_factory=list)
    overrides: Tuple[str, ...] = ()         # the user's extra overrides, applied to every cell
    rounds: Optional[int] = None            # the rounds override in force (None: each config's own)


def _parse_subset(what: str, requested: Optional[Sequence[str]], known: List[Tuple[str, str]]) -> Optional[List[str]]:
    if requested is None:
        return None
    keys = []
    by_name = {k.lower(): k for k, _ in known}
    by_name.update({label.lower(): k for k, label in known})
    for item in requested:
        item = item.strip()
        if not item:
            continue
        if item.lower() not in by_name:
            raise ConfigError(f"unknown {what} {item!r}; {what}s of this table: "
                              + ", ".join(f"{k} ({label})" for k, label in known))
        keys.append(by_name[item.lower()])
    if not keys:
        raise ConfigError(f"no {what} selected")
    return keys


def _canonical(cfg: Dict[str, Any]) -> str:
    return json.dumps(cfg, sort_keys=True, default=repr)


def cell_config(cell: Cell, setting: Setting, *, seed: int, data_seed: int, rounds: Optional[int] = None,
                overrides: Sequence[str] = ()) -> Dict[str, Any]:
    """The full, validated config of one cell at one seed.

    Order: the setting's config, its size overrides, the cell's overrides (an algorithm
    switch resets the options of the previous algorithm), the user's ``overrides``, then
    ``rounds``, ``seed`` and ``data_seed`` (unless the user's overrides set it).
    Hyper-parameters left at their defaults are written out, so that equal configs compare
    equal (Fig. 5's default point runs once) and configs that differ only in a float
    hyper-parameter group into one program.
    """
    from omnifm_jax import algorithms

    cfg = config_lib.load_config(setting.config)
    cfg = config_lib.apply_overrides(cfg, setting.overrides)
    cfg = config_lib.apply_overrides(cfg, cell.overrides)
    cfg = config_lib.apply_overrides(cfg, overrides)
    if rounds is not None:
        cfg["rounds"] = rounds
    cfg["seed"] = seed
    if not any(o.split("=", 1)[0].strip() == "data_seed" for o in overrides):  # --set data_seed=N wins
        cfg["data_seed"] = data_seed
    if cfg["algorithm"] in algorithms.available():
        kw = dict(cfg["algorithm_kwargs"])
        for k, v in algorithms.hyperparameters(cfg["algorithm"]).items():
            kw.setdefault(k, copy.deepcopy(v))
        cfg["algorithm_kwargs"] = kw
    config_lib.validate(cfg)
    return cfg


def _import_sweep():
    try:
        from omnifm_jax import sweep
    except ImportError:
        return None
    return sweep


def build_plan(table: str, *, scale: str = "smoke", seeds: Sequence[int] = (0, 1, 2),
               rows: Optional[Sequence[str]] = None, cols: Optional[Sequence[str]] = None,
               rounds: Optional[int] = None, overrides: Sequence[str] = (), rule: str = "best",
               data_root: Optional[Path] = None) -> Plan:
    """Every cell's configs, validated, and the programs they run as; no data are loaded.

    ``rows`` / ``cols``: row / column keys or labels (None: the scale's default subset,
    which at ``smoke`` is smaller than the table). Raises ConfigError naming the table,
    row, column or cell that is wrong.
    """
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    why_not = available_tables()[table]
    if why_not:
        raise ConfigError(f"{why_not}; {table} cannot be reproduced in this checkout")
    if scale not in SETTINGS:
        raise ConfigError(f"unknown scale {scale!r}; scales: {', '.join(SETTINGS)}")
    if rule not in ("best", "last"):
        raise ConfigError(f"evaluation rule must be 'best' or 'last', got {rule!r}")
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
    if rounds is not None and (not isinstance(rounds, int) or rounds < 1):
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    t = TABLES[table]
    row_keys = _parse_subset("row", rows, t.rows)
    col_keys = _parse_subset("column", cols, t.cols)
    notes = []
    if scale == "smoke":
        if row_keys is None and t.smoke_rows is not None:
            row_keys = list(t.smoke_rows)
            notes.append(f"smoke default rows: {', '.join(row_keys)} (--only selects others)")
        if col_keys is None and t.smoke_cols is not None:
            col_keys = list(t.smoke_cols)
            notes.append(f"smoke default columns: {', '.join(col_keys)} (--cols selects others)")
        if rounds is None and t.smoke_rounds is not None:
            rounds = t.smoke_rounds
    selected = [c for c in t.cells if (row_keys is None or c.row_key in row_keys)
                and (col_keys is None or c.col_key in col_keys)]
    if not selected:
        raise ConfigError(f"{table}: the selection (rows {row_keys}, columns {col_keys}) holds no cell")
    planned = []
    for cell in selected:
        try:
            setting = resolve_setting(scale, cell.config, data_root)
            cfgs = [cell_config(cell, setting, seed=s, data_seed=seeds[0], rounds=rounds, overrides=overrides)
                    for s in seeds]
        except ConfigError as exc:
            raise ConfigError(f"{table} cell ({cell.row}, {cell.col}): {exc}") from None
        planned.append(PlannedCell(cell, setting, cfgs))
    return Plan(t, scale, seeds, planned, _programs(planned), rule, notes, tuple(overrides), rounds)


def _programs(planned: List[PlannedCell]) -> List[Program]:
    """Unique configs grouped into programs (:func:`omnifm_jax.sweep.group_runs`); without
    the sweep module, one program per unique config."""
    where: Dict[str, List[Tuple[int, int]]] = {}
    unique = []
    for ci, pc in enumerate(planned):
        for si, cfg in enumerate(pc.configs):
            key = _canonical(cfg)
            if key not in where:
                where[key] = []
                unique.append(cfg)
            where[key].append((ci, si))
    sweep = _import_sweep()
    if sweep is not None:
        programs = []
        for base, runs in sweep.group_runs(unique):
            members = []
            for run in runs:
                cfg = copy.deepcopy(base)
                for k, v in run.items():
                    cfg = config_lib.set_dotted(cfg, k, v)
                members.append(where.get(_canonical(cfg)))
            programs.append(Program(base, list(runs), members))
        covered = sorted(m for p in programs for ms in p.members if ms is not None for m in ms)
        if all(ms is not None for p in programs for ms in p.members) and covered == sorted(
                m for ms in where.values() for m in ms):
            return programs
        reason = "separate: sweep.group_runs gave runs that do not map back to the cells"
    else:
        reason = "separate: omnifm_jax.sweep cannot be imported"
    return [Program(cfg, [{}], [where[_canonical(cfg)]], mode=reason) for cfg in unique]


# --------------------------------------------------------------------------------------
# Data pre-flight, execution
# --------------------------------------------------------------------------------------

def check_data(plan: Plan) -> List[Dict[str, Any]]:
    """Set up every distinct federation of the plan through the one run path
    (:func:`omnifm_jax.experiment.setup`: data, task, model) before any training (a missing
    file, a bad data option, a client without a test sample or a task that does not fit the
    images stops here). Returns one description per federation for ``protocol.md``."""
    from omnifm_jax import experiment
    from omnifm_jax.data.describe import describe

    seen: Dict[str, Dict[str, Any]] = {}
    for pc in plan.cells:
        cfg = pc.configs[0]
        key = _canonical({k: cfg[k] for k in ("dataset", "dataset_kwargs", "num_clients", "data_seed", "task",
                                              "backbone", "backbone_kwargs", "batch_size", "drop_last")})
        if key in seen:
            seen[key]["cells"].append(f"{pc.cell.row} / {pc.cell.col}")
            continue
        try:
            fed = experiment.setup(cfg).fed
        except (ValueError, FileNotFoundError, ConfigError) as exc:
            raise ConfigError(f"{plan.table.name} cell ({pc.cell.row}, {pc.cell.col}): data: {exc}") from None
        try:
            text = describe(fed)
        except Exception as exc:  # a description is a nicety; never block the run on it
            text = f"(no description: {type(exc).__name__}: {exc})"
        seen[key] = {"dataset": cfg["dataset"], "dataset_kwargs": cfg["dataset_kwargs"],
                     "num_clients": cfg["num_clients"], "data_seed": cfg["data_seed"],
                     "train": int(sum(int(n) for n in fed.train.n)), "test": int(sum(int(n) for n in fed.test.n)),
                     "describe": text, "cells": [f"{pc.cell.row} / {pc.cell.col}"]}
    return list(seen.values())


def _quiet(_: str) -> None:
    pass


def execute(plan: Plan, *, progress: bool = False, log: Callable[[str], None] = print,
            run_log: Callable[[str], None] = _quiet) -> Dict[Tuple[int, int], Dict[str, Any]]:
    """Run every program; returns ``{(cell index, seed index): summary}``.

    A program runs through :func:`omnifm_jax.sweep.run_sweep`; if that refuses it
    (ConfigError), its runs run one by one through :func:`omnifm_jax.experiment.run`, and
    ``program.mode`` records why.
    """
    from omnifm_jax import experiment

    sweep = _import_sweep()
    out: Dict[Tuple[int, int], Dict[str, Any]] = {}
    total = len(plan.programs)
    for pi, prog in enumerate(plan.programs):
        names = sorted({f"{plan.cells[ci].cell.row} / {plan.cells[ci].cell.col}"
                        for ms in prog.members for ci, _ in ms})
        log(f"[{pi + 1}/{total}] {len(prog.runs)} run(s): {'; '.join(names)}")
        start = time.time()
        summaries = None
        if prog.mode == "sweep" and sweep is not None:
            try:
                summaries = sweep.run_sweep(prog.base, prog.runs, progress=progress, log=run_log)
            except ConfigError as exc:
                prog.mode = f"separate: run_sweep refused it ({exc})"
                log(f"    run_sweep refused this program ({exc}); its {len(prog.runs)} runs run as separate programs")
        if summaries is None:
            summaries = []
            for run in prog.runs:
                cfg = copy.deepcopy(prog.base)
                for k, v in run.items():
                    cfg = config_lib.set_dotted(cfg, k, v)
                s = experiment.run(cfg, None, progress=progress, log=run_log)
                s.pop("state", None)
                s["runs_in_program"] = 1
                summaries.append(s)
        prog.wall_time_s = round(time.time() - start, 2)
        for members, summary in zip(prog.members, summaries):
            summary = dict(summary, program=pi, program_mode=prog.mode)
            summary.pop("state", None)
            for m in members:
                out[m] = summary
        log(f"    done in {prog.wall_time_s:.1f} s")
    return out


# --------------------------------------------------------------------------------------
# Records, aggregation, claims (pure)
# --------------------------------------------------------------------------------------

def records_from(plan: Plan, results: Mapping[Tuple[int, int], Mapping[str, Any]]) -> List[Dict[str, Any]]:
    """One CSV record per cell and seed, metrics in the paper's units (best and last round)."""
    recs = []
    for ci, pc in enumerate(plan.cells):
        for si, seed in enumerate(plan.seeds):
            s = results.get((ci, si))
            if s is None:
                continue
            cfg = pc.configs[si]
            rec = {"table": plan.table.name, "scale": plan.scale, "row": pc.cell.row, "col": pc.cell.col,
                   "row_key": pc.cell.row_key, "col_key": pc.cell.col_key, "seed": seed,
                   "config": pc.setting.config, "dataset": cfg["dataset"], "algorithm": cfg["algorithm"],
                   "rounds": cfg["rounds"], "best_round": s["best"].get("round"), "last_round": s["last"].get("round")}
            for m in plan.table.metrics:
                metric = METRICS[m]
                if pc.cell.paper.get(m, "absent") == "absent":
                    continue
                for which in ("best", "last"):
                    v = s[which].get(metric.key)
                    rec[f"{m}_{which}"] = None if v is None else float(v) * metric.factor
                rec[f"{m}_paper"] = pc.cell.paper.get(m)
                if "baseline" in s and s["baseline"] and metric.key in s["baseline"]:
                    rec[f"{m}_baseline"] = float(s["baseline"][metric.key]) * metric.factor
            rec.update(program=s.get("program"), runs_in_program=s.get("runs_in_program", 1),
                       program_mode=s.get("program_mode", ""), program_wall_time_s=s.get("wall_time_s"),
                       overrides=";".join(pc.setting.overrides + pc.cell.overrides + plan.overrides
                                          + ((f"rounds={plan.rounds}",) if plan.rounds is not None else ())))
            recs.append(rec)
    return recs


def _mean_std(values: Sequence[float]) -> Tuple[float, float, int]:
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
    return {cell: {m: _mean_std([v[s] for s in sorted(v)]) for m, v in metrics.items()}
            for cell, metrics in per_seed(records, rule).items()}


def verdict(margins: Sequence[float]) -> Tuple[str, float, float, int]:
    """``(label, mean, std, n)`` of per-seed margins (positive = the claim's direction).

    "holds": mean > 0 and mean >= 2 * sample std (n >= 2); "holds weakly": mean > 0 but
    below 2 std, or a single seed; "does not hold here": mean <= 0; "not measured": no seed.
    """
    mean, std, n = _mean_std(list(margins))
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
    the same compared cells (vs the paper's best of them)."""
    values = per_seed(records, rule)
    paper = {(c.row_key, c.col_key): c.paper for c in table.cells}
    labels = {(c.row_key, c.col_key): (c.row, c.col) for c in table.cells}
    out = []
    for claim in table.claims:
        metric = METRICS[claim.metric]
        sign = 1.0 if metric.higher_is_better else -1.0
        get = lambda cell: values.get(cell, {}).get(claim.metric)  # noqa: E731
        if claim.kind == "beats":
            win = get(claim.winner)
            others = [(o, get(o)) for o in claim.others if get(o)]
            if not win or not others:
                continue
            best_other, ov = max(others, key=lambda t: sign * _mean_std(list(t[1].values()))[0])
            seeds = sorted(set(win) & set(ov))
            margins = [sign * (win[s] - ov[s]) for s in seeds]
            # On the paper's numbers: the winner vs the paper's best of the same compared cells.
            pw = paper[claim.winner].get(claim.metric)
            po = [paper[o].get(claim.metric) for o, _ in others]
            pm = None if pw is None or any(v is None for v in po) else min(sign * (pw - v) for v in po)
            (wr, wc), (orow, ocol) = labels[claim.winner], labels[best_other]
            vs = ocol if orow == wr else orow if ocol == wc else f"{orow} / {ocol}"
        else:
            series = [(c, get((r, k))) for c, r, k in claim.terms]
            if not all(v for _, v in series):
                continue
            seeds = sorted(set.intersection(*(set(v) for _, v in series)))
            margins = [sign * sum(c * v[s] for c, v in series) for s in seeds]
            pv = [paper[(r, k)].get(claim.metric) for _, r, k in claim.terms]
            pm = None if any(v is None for v in pv) else sign * sum(c * v for (c, _, _), v in zip(claim.terms, pv))
            vs = ""
        label, mean, std, n = verdict(margins)
        out.append({"claim": claim.text, "metric": claim.metric, "verdict": label, "margin": mean, "std": std,
                    "n": n, "vs": vs, "paper_margin": pm,
                    "paper_verdict": None if pm is None else ("holds" if pm > 0 else "does not hold")})
    return out


# --------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------

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


CSV_FIXED = ("table", "scale", "row", "col", "row_key", "col_key", "seed", "config", "dataset", "algorithm",
             "rounds", "best_round", "last_round")


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


def markdown(table: Table, records: Sequence[Mapping[str, Any]], *, rule: str = "best", seeds: Sequence[int] = (),
             scale: str = "", claims: Optional[List[Dict[str, Any]]] = None, header: Sequence[str] = ()) -> str:
    """The table in the paper's layout (rows x columns, one block per metric), each
    measured cell as ``measured mean ± std (n seeds) | paper | difference``, then the claims."""
    agg = aggregate(records, rule)
    measured_rows = [(k, l) for k, l in table.rows if any((k, c) in agg for c, _ in table.cols)]
    measured_cols = [(k, l) for k, l in table.cols if any((r, k) in agg for r, _ in table.rows)]
    paper = {(c.row_key, c.col_key): c.paper for c in table.cells}
    n_seeds = sorted({v[2] for cell in agg.values() for v in cell.values()})
    lines = [f"# {table.title}", ""]
    lines += list(header)
    how = ("best round (PFLlib: round 0 included, the round with the best primary metric; every metric from "
           "that round)" if rule == "best" else "last round")
    lines += [f"Scale: `{scale}`. Evaluation: {how}. "
              f"Each measured cell: mean ± sample std over seeds (n in brackets; seeds {list(seeds)}), the paper's "
              "number, and measured − paper, in the paper's units.", ""]
    for note in table.notes:
        lines.append(f"- {note}")
    lines.append("")
    for m in table.metrics:
        metric = METRICS[m]
        cols = [(k, l) for k, l in measured_cols
                if any(m in agg.get((r, k), {}) for r, _ in measured_rows)]
        if not cols:
            continue
        lines += [f"## {metric.label}" + ("" if metric.higher_is_better else " (lower is better)"), ""]
        head = ["Method"] if table.name != "table2" else ["Scale"]
        sep = ["---"]
        for _, label in cols:
            if table.paper_has_numbers:
                head += [f"{label}: measured", "paper", "diff"]
                sep += ["---:", "---:", "---:"]
            else:
                head += [f"{label}: measured"]
                sep += ["---:"]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join(sep) + "|"]
        for rk, rl in measured_rows:
            row = [rl]
            for ck, _ in cols:
                stat = agg.get((rk, ck), {}).get(m)
                pv = paper.get((rk, ck), {}).get(m)
                meas = format_measured(*stat, metric.decimals) if stat else "—"
                if table.paper_has_numbers:
                    diff = _fmt(stat[0] - pv, metric.decimals, sign=True) if stat and pv is not None else "—"
                    row += [meas, _fmt(pv, metric.decimals), diff]
                else:
                    row += [meas]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        if any(f"{m}_baseline" in r for r in records):
            base = {}
            for r in records:
                if r.get(f"{m}_baseline") not in (None, ""):
                    base.setdefault(r["row"], []).append(float(r[f"{m}_baseline"]))
            shown = {row: _fmt(_mean_std(v)[0], metric.decimals) for row, v in base.items()}
            lines.append("Model-free bicubic upsampling on the same test patches: "
                         + (f"{next(iter(shown.values()))} (every row)" if len(set(shown.values())) == 1
                            else ", ".join(f"{row} {v}" for row, v in shown.items())))
            lines.append("")
    stuck = sorted({f"{r['row']} / {r['col']}" for r in records if str(r.get("best_round")) == "0"})
    if rule == "best" and stuck:
        lines += [f"Best round = 0 (no training round beat the untrained model; for SR, the bicubic skip) in some "
                  f"seed of: {'; '.join(stuck)}. Such cells measure the initial model, not training.", ""]
    skipped = [f"{c.row} / {c.col}" for c in table.cells if (c.row_key, c.col_key) not in agg]
    if skipped:
        lines += [f"Not run here ({len(skipped)} of {len(table.cells)} cells; `--only` / `--cols` select them).", ""]
    lines += ["## Claims", "",
              "Verdict rule: per seed, the claim's margin (paired by seed); **holds** if the mean margin is > 0 and "
              ">= 2 sample std of the margins, **holds weakly** if > 0 but smaller (or one seed), **does not hold "
              "here** if <= 0. 'Paper' applies the same comparison to the paper's own numbers.", ""]
    claims = evaluate_claims(table, records, rule) if claims is None else claims
    if not claims:
        lines.append("No claim of this table can be tested with the cells that ran.")
    for c in claims:
        metric = METRICS[c["metric"]]
        d = _margin_digits([c["margin"], c["std"]], metric.decimals)
        margin = _fmt(c["margin"], d, sign=True) + ("" if math.isnan(c["std"]) else f" ± {_fmt(c['std'], d)}")
        vs = f" vs {c['vs']}" if c["vs"] else ""
        paper_part = ("" if c["paper_margin"] is None else
                      f"; paper: {c['paper_verdict']} ({_fmt(c['paper_margin'], metric.decimals, sign=True)})")
        lines.append(f"- {c['claim']}: **{c['verdict']}** ({margin}{vs}, {c['n']} seed{'s' if c['n'] != 1 else ''}"
                     f"{paper_part})")
    lines.append("")
    if n_seeds:
        lines.append(f"Seeds per cell: {', '.join(map(str, n_seeds))}.")
    return "\n".join(lines) + "\n"


def write_markdown(table: Table, records, path: Path, **kw) -> str:
    text = markdown(table, records, **kw)
    Path(path).write_text(text)
    return text


def write_plot(table: Table, records: Sequence[Mapping[str, Any]], path: Path, *, rule: str = "best") -> None:
    """Bars of measured (mean ± std) next to the paper's number per cell and metric, or for
    Fig. 5 lines of the metric against λ and top-k. A standalone matplotlib Figure."""
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
                if ser.startswith("λ"):
                    ax.set_xscale("log")
                ax.set_xlabel(ser)
                ax.set_ylabel(METRICS[metric].label)
                ax.set_title(next(c.col for c in cells if c.col_key == ck))
                ax.grid(alpha=0.3)
    else:
        metrics = [m for m in table.metrics if any(m in agg[(c.row_key, c.col_key)] for c in cells)]
        fig = Figure(figsize=(max(6.0, 0.45 * len(cells) + 2), 3.4 * len(metrics)))
        axes = fig.subplots(len(metrics), 1, squeeze=False)
        for ax, m in zip(axes[:, 0], metrics):
            mc = [c for c in cells if m in agg[(c.row_key, c.col_key)]]
            xs = list(range(len(mc)))
            means = [agg[(c.row_key, c.col_key)][m][0] for c in mc]
            stds = [0.0 if math.isnan(agg[(c.row_key, c.col_key)][m][1]) else agg[(c.row_key, c.col_key)][m][1]
                    for c in mc]
            paper = [c.paper.get(m) for c in mc]
            ax.bar([x - 0.2 for x in xs], means, 0.4, yerr=stds, capsize=2, label="measured (mean ± std)")
            ax.bar([x + 0.2 for x in xs], [p if p is not None else 0.0 for p in paper], 0.4, label="paper",
                   alpha=0.6)
            ax.set_xticks(xs)
            ax.set_xticklabels([f"{c.row}\n{c.col}" for c in mc], rotation=60, ha="right", fontsize=7)
            ax.set_ylabel(METRICS[m].label)
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3, axis="y")
    fig.suptitle(table.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _config_summary(cfg: Dict[str, Any]) -> str:
    keys = ("dataset", "dataset_kwargs", "num_clients", "participation", "rounds", "local_epochs", "batch_size",
            "optimizer", "lr", "backbone", "backbone_kwargs", "eval_every")
    return ", ".join(f"{k}={cfg[k]!r}" for k in keys)


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
    for note in plan.notes:
        lines.append(f"- {note}")
    if plan.overrides:
        lines.append(f"- extra overrides for every cell: `{' '.join(plan.overrides)}`")
    if plan.rounds is not None:
        lines.append(f"- rounds: {plan.rounds} for every cell")
    lines += ["", "## Data actually used, and why", ""]
    for paper_cfg, s in settings:
        lines.append(f"- paper protocol `{paper_cfg}` -> config `{s.config}` with `{' '.join(s.overrides)}`: {s.note}.")
    lines += ["", "Per-cell overrides (algorithm, scenario, participation, ablation switch) follow in the table "
              "below; `<table>.csv` lists every run's full override string.", ""]
    lines += ["## Splits and seeds", "",
              f"- The data split is the same for every seed and every method: `data_seed = {plan.seeds[0]}` (the "
              "first seed). The seed sets the model initialisation, the participant draws and the batch order.",
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
    if plan.scale != "paper":
        return (f"expected wall time: ~{len(plan.programs)} min on a 2-core CPU ({len(plan.programs)} program(s), "
                f"{sum(len(p.runs) for p in plan.programs)} run(s); the smoke defaults measured 0.5-2 min per "
                "program of 3-6 runs, compilation included)")
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
            "scaled by participation and rounds)") if minutes else "expected wall time: not estimated"
    if unknown:
        text += (f"; no measured H100 figure for {sorted(set(unknown))} (not included; the README's Performance "
                 "section has none)")
    return text


# --------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------

def output_files(table: str, out: Path) -> List[Path]:
    """What a table writes under ``out``: ``<table>.md``, ``.csv``, ``.png``, ``.json`` and
    ``<table>_protocol.md``. Every name starts with the table's, so tables can share an ``out``."""
    return [out / f"{table}.md", out / f"{table}.csv", out / f"{table}.png", out / f"{table}.json",
            out / f"{table}_protocol.md"]


def reproduce(table: str, *, scale: str = "smoke", out: Optional[str | Path] = None, seeds: Sequence[int] = (0, 1, 2),
              rounds: Optional[int] = None, rows: Optional[Sequence[str]] = None, cols: Optional[Sequence[str]] = None,
              overrides: Sequence[str] = (), rule: str = "best", progress: bool = False,
              log: Callable[[str], None] = print, command: Optional[str] = None, dry_run: bool = False,
              data_root: Optional[Path] = None) -> Dict[str, Any]:
    """Run a table and write ``<table>.md``, ``<table>.csv``, ``<table>.png``,
    ``<table>.json`` and ``<table>_protocol.md`` under ``out`` (default ``runs/reproduce/<table>``).

    Everything (table, rows, columns, every cell's config, and every federation's data) is
    checked before any training. ``dry_run`` stops after the checks and the plan.
    Returns ``{"out", "files", "records", "claims", "plan", "markdown"}``.
    """
    plan = build_plan(table, scale=scale, seeds=seeds, rows=rows, cols=cols, rounds=rounds, overrides=overrides,
                      rule=rule, data_root=data_root)
    out = Path(out) if out is not None else Path("runs") / "reproduce" / table
    command = command or (f"omnifm_jax.reproduce.reproduce({table!r}, scale={scale!r}, seeds={list(seeds)}, "
                          f"rounds={rounds!r}, rows={rows!r}, cols={cols!r}, overrides={list(overrides)!r}, "
                          f"rule={rule!r})")
    estimate = estimate_text(plan)
    log(f"{plan.table.title}: {len(plan.cells)} cells x {len(plan.seeds)} seeds at scale {scale!r}, "
        f"{len(plan.programs)} compiled program(s)")
    for note in plan.notes:
        log(f"  {note}")
    for paper_cfg, s in dict.fromkeys((pc.cell.config, pc.setting) for pc in plan.cells):
        log(f"  {paper_cfg} -> {s.config}: {s.note}")
    log(f"  {estimate}")
    data = check_data(plan)
    if dry_run:
        return {"out": out, "files": [], "records": [], "claims": [], "plan": plan, "markdown": ""}
    start = time.time()
    results = execute(plan, progress=progress, log=log)
    wall = time.time() - start
    records = records_from(plan, results)
    claims = evaluate_claims(plan.table, records, rule)
    out.mkdir(parents=True, exist_ok=True)
    name = plan.table.name
    files = output_files(name, out)
    write_csv(records, files[1])
    md = write_markdown(plan.table, records, files[0], rule=rule, seeds=plan.seeds, scale=scale, claims=claims,
                        header=[f"Measured with `{command}`; protocol: `{name}_protocol.md`.", ""])
    write_plot(plan.table, records, files[2], rule=rule)
    files[3].write_text(json.dumps({"table": name, "scale": scale, "seeds": list(plan.seeds), "rule": rule,
                                    "command": command, "wall_time_s": round(wall, 2), "records": records,
                                    "claims": claims}, indent=1, default=repr))
    files[4].write_text(protocol_text(plan, data=data, command=command, wall_time_s=wall, estimate=estimate))
    log(f"outputs in {out}")
    return {"out": out, "files": files, "records": records, "claims": claims, "plan": plan, "markdown": md}


def render(table: str, out: str | Path, *, rule: str = "best") -> str:
    """Rewrite ``<table>.md``, ``<table>.png`` and the claims in ``<table>.json`` in ``out``
    from its ``<table>.csv`` (e.g. with the other evaluation rule) without running anything;
    returns the markdown."""
    if table not in TABLES:
        raise ConfigError(f"unknown table {table!r}; tables: {', '.join(TABLES)}")
    out = Path(out)
    path = out / f"{table}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `omnifm reproduce {table} --out {out}` first")
    records = read_csv(path)
    seeds = sorted({int(r["seed"]) for r in records})
    scale = records[0].get("scale") if records else ""
    meta = out / f"{table}.json"
    command = json.loads(meta.read_text()).get("command", "") if meta.is_file() else ""
    md = write_markdown(TABLES[table], records, out / f"{table}.md", rule=rule, seeds=seeds, scale=scale,
                        header=[f"Measured with `{command}`; protocol: `{table}_protocol.md`."
                                + ("" if rule == "best" else " Rendered with the last-round rule."), ""])
    write_plot(TABLES[table], records, out / f"{table}.png", rule=rule)
    if meta.is_file():
        data = json.loads(meta.read_text())
        data.update(rule=rule, claims=evaluate_claims(TABLES[table], records, rule))
        meta.write_text(json.dumps(data, indent=1, default=repr))
    return md


def table_listing(tables: Optional[Sequence[str]] = None) -> str:
    """Every table (or those named), whether it can run here, its rows and columns (keys
    for --only/--cols)."""
    lines = []
    for name, t in TABLES.items():
        if tables is not None and name not in tables:
            continue
        why = available_tables()[name]
        lines.append(f"{name}: {t.title}" + (f"  [unavailable: {why}]" if why else ""))
        lines.append("    rows: " + ", ".join(f"{k} ({l})" for k, l in t.rows))
        lines.append("    cols: " + ", ".join(f"{k} ({l})" for k, l in t.cols))
        if t.smoke_rows or t.smoke_cols:
            lines.append(f"    smoke default: rows {list(t.smoke_rows or ['all'])}, "
                         f"cols {list(t.smoke_cols or ['all'])}"
                         f", {t.smoke_rounds} rounds")
    return "\n".join(lines)


def parse_seeds(text: str) -> Tuple[int, ...]:
    try:
        seeds = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise ConfigError(f"--seeds must be comma-separated integers, got {text!r}") from None
    return seeds


def _main_args(args) -> int:
    """``omnifm reproduce`` (see :mod:`omnifm_jax.cli`)."""
    if args.table == "list":
        print(table_listing())
        return 0
    if args.render_only:
        render(args.table, args.out or Path("runs") / "reproduce" / args.table, rule=args.eval)
        print(f"rewrote {args.table}.md and {args.table}.png from {args.table}.csv")
        return 0
    split = lambda s: None if s is None else [x for x in s.split(",")]  # noqa: E731
    reproduce(args.table, scale=args.scale, out=args.out, seeds=parse_seeds(args.seeds), rounds=args.rounds,
              rows=split(args.only), cols=split(args.cols), overrides=args.set, rule=args.eval,
              progress=not args.quiet, log=lambda s: print(s, flush=True),
              command="omnifm " + shlex.join(getattr(args, "argv", None) or sys.argv[1:]),
              dry_run=args.dry_run)
    return 0


def add_parser(sub) -> None:
    """Add ``reproduce`` to the ``omnifm`` subcommands."""
    p = sub.add_parser("reproduce", help="reproduce a table of the paper (mean ± std over seeds vs the paper)",
                       description="Reproduce a table or figure of the OmniFM paper: tables table1, table2, "
                                   "table6, table7, table8, fig5 ('list' shows rows and columns).")
    p.add_argument("table", help="table1, table2, table6, table7, table8, fig5, or 'list'")
    p.add_argument("--scale", default="smoke", choices=SCALES,
                   help="smoke: minutes on a CPU with stand-in data (default); paper: the paper's protocol (GPU, "
                        "hours; the expected time is printed first); tiny: tests only")
    p.add_argument("--out", default=None, help="output directory (default runs/reproduce/<table>)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    p.add_argument("--rounds", type=int, default=None, help="override the number of rounds of every cell")
    p.add_argument("--only", default=None, metavar="ROWS", help="comma-separated row keys or labels to run")
    p.add_argument("--cols", default=None, metavar="COLS", help="comma-separated column keys or labels to run")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override for every cell (repeatable)")
    p.add_argument("--eval", default="best", choices=("best", "last"),
                   help="evaluation rule of the tables: PFLlib's best round (default) or the last round")
    p.add_argument("--dry-run", action="store_true", help="check everything and print the plan; train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--render-only", action="store_true",
                   help="rewrite <table>.md and .png in --out from its <table>.csv (e.g. with --eval last); "
                        "run nothing")
    p.set_defaults(func=_main_args)
