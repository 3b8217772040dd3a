"""Table 6 of the OmniFM paper: federated segmentation (FeTS2022 enhancing tumour from T1ce,
UNet, 50 rounds x 1 local epoch). FeTS2022 is not available here: each column is a local
federation compared with the paper's "Avg." column; the TCGA-LGG federation also shows its
hospitals (clients) one by one."""
from omnifm_jax.reproduce import (
    METRICS,
    Cell,
    PaperText,
    PrintedRow,
    Scale,
    Setting,
    Table,
    beats_all,
    method,
    paper_metric,
    standard_scales,
)
from omnifm_jax.reproduce.settings import RUN

#: The paper's Table 6 as printed, per method: Dice, IoU (%) of Group 1 (9 clients), Group 2
#: (6), Group 3 (5), Group 4 (3), Avg.
PRINTED = {
    "Local": (45.24, 29.33, 44.21, 25.00, 41.25, 27.22, 46.23, 30.00, 44.23, 27.89),
    "FedAvg": (44.02, 28.56, 44.91, 25.32, 40.93, 26.10, 46.78, 30.95, 44.16, 27.73),
    "FedProx": (42.32, 25.23, 44.00, 24.43, 38.99, 25.32, 45.35, 29.76, 42.66, 26.19),
    "FedPer": (71.23, 66.99, 75.24, 62.12, 72.43, 57.34, 76.54, 62.99, 73.86, 62.36),
    "OmniFM": (79.84, 74.93, 80.82, 68.74, 78.62, 66.01, 78.03, 65.31, 77.41, 68.75),
}
#: Federations compared with the paper's Avg. column: key, label, config.
FEDERATIONS = (("lgg", "TCGA-LGG sites (4 clients) vs paper Avg.", "seg_lgg_sites"),
               ("brats", "BraTS ET from T1ce (2 clients) vs paper Avg.", "seg_brats_et"))
#: The TCGA-LGG federation's clients (hospitals; EZ's single patient is merged into CS).
LGG_CLIENTS = ("CS+EZ", "DU", "FG", "HT")
MEASURED = ("dice", "iou", "dice_pooled")


def _cells():
    for name, numbers in PRINTED.items():
        m = method(name)
        for key, label, config in FEDERATIONS:
            yield Cell(m.label, label, m.key, key, config, m.overrides,
                       {"dice": numbers[8], "iou": numbers[9], "dice_pooled": None})
        for i, client in enumerate(LGG_CLIENTS):
            yield Cell(m.label, f"TCGA-LGG client {client}", m.key, f"lgg-{client}", "seg_lgg_sites", m.overrides,
                       client=i, client_name=client)


CELLS = tuple(_cells())
#: The CPU scale: the config's own UNet (half the tutorial widths) for the paper's 50 rounds x 1
#: local epoch, every client of the TCGA-LGG federation, evaluated every round (the convergence
#: rule reads the last 10 evaluated rounds). ~10 s per round of one run on 2 cores (measured:
#: FedAvg, 4 rounds, evaluation included), ~45 min per seed for the five rows (the paper's four
#: methods that run here and Local). Measured: experiments/results/reproduce/table6/ (3 seeds of the
#: first four rows: 29 min for seed 0, 36 min for seeds 1-2, 2 cores; FedProx added afterwards).
CPU = Scale({"seg_lgg_sites": (Setting("seg_lgg_sites", RUN + ("eval_train_loss=False",), "lgg",
                                       "FeTS2022 is not available; TCGA-LGG FLAIR-abnormality slices (64x64), clients "
                                       "= hospitals, MONAI UNet at half the tutorial widths"),)},
            rows=("omnifm", "fedavg", "fedprox", "fedper", "local"),
            cols=("lgg",) + tuple(f"lgg-{c}" for c in LGG_CLIENTS),
            rounds=50, cpu_s_per_round=10.0,
            note="cpu: ~10 s per round of one run (4 hospital clients, 64x64 slices, evaluation every round)")
TABLE = Table(
    "table6", "Table 6: federated segmentation", MEASURED, CELLS,
    tuple(beats_all(CELLS, m, "omnifm", key, f"OmniFM has the highest {METRICS[m].label} on {col}")
          for key, col, _ in FEDERATIONS for m in ("dice", "iou")),
    scales={**standard_scales(smoke_cols=("lgg",), smoke_rounds=3, tiny=False), "cpu": CPU}, task="segmentation",
    metric_defs={"dice_pooled": paper_metric("segmentation", "dice_pooled", 100.0, 2)},
    printed=PaperText("omnifm", "Table 6:", "4.5 Multi-modal", tuple(PrintedRow(m, v) for m, v in PRINTED.items())),
    notes=("The paper's FeTS2022 institution groups are not available here; each column is a local "
           "federation compared with the paper's 'Avg.' column (mean over its four groups).",
           "Dice and IoU are the means over clients of the per-image foreground scores (an empty truth and an empty "
           "prediction score 1; see omnifm_jax/tasks/segmentation.py); pooled Dice sums the counts over a "
           "client's test slices first (2 sum I / (sum P + sum T)), then takes the mean over clients."))
