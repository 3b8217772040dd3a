"""FedMEPD against the baselines with missing modalities, on TCGA-LGG (``fedmepd_lgg``) and
on the BraTS slices (``fedmepd_brats``): one column per client (with its modality subset)
and their mean, the last round's per-image Dice.

FedMEPD is implemented from the abstract only (Wei et al., MedIA 2025; the full paper's
network, anchor extraction and personalisation rule are not known here); the abstract gives
no numbers, so the cells have none. The per-client numbers of a third-party summary are
shown after the table, for orientation only. FedMEPD uses its own per-modality encoders +
fusion decoder and the server's full-modal set; the baselines use the config's MONAI UNet
(channels 8..128) on the same zeroed inputs and never see the server's set.
"""
import numpy as np

from omnifm_jax import config as config_lib
from omnifm_jax.data.multimodal import SHORT_NAMES
from omnifm_jax.reproduce import Cell, Claim, Reference, Scale, Setting, Table, beats_all, method, paper_metric
from omnifm_jax.reproduce.settings import RUN

MAIN = ("FedMEPD", "FedAvg", "FedPer", "Local", "OmniFM")
#: FedMEPD without one of its parts (or with the official code's patience rule): label, row
#: key, overrides, and the claim that the default does better.
ABLATIONS = (("FedMEPD w/o calibration", "fedmepd-nocal", ("algorithm_kwargs.calibrate_missing=False",),
              "removing the calibration lowers FedMEPD's Avg. Dice"),
             ("FedMEPD w/o personalisation", "fedmepd-nopers", ("algorithm_kwargs.personalize=False",),
              "removing the decoder personalisation lowers FedMEPD's Avg. Dice"),
             ("FedMEPD w/o server training", "fedmepd-noserver", ("algorithm_kwargs.server_steps=0",),
              "removing the server's training lowers FedMEPD's Avg. Dice"),
             ("FedMEPD, patience 3 after 5", "fedmepd-patience", ("algorithm_kwargs.personalize_patience=3",
                                                                   "algorithm_kwargs.personalize_after=5"),
              "the official code's patience rule (3 rounds, after 5) scores below the default on Avg. Dice"))
CAVEAT = {
    "fedmepd_lgg": "The paper evaluates on BraTS 2018/2020 (hundreds of 3D cases, 4 sequences), not available here: "
                   "TCGA-LGG FLAIR-abnormality slices (64x64; pre-contrast T1 / FLAIR / post-contrast T1Gd) stand "
                   "in, with per-hospital modality subsets imposed by zeroing channels and one binary target "
                   "(whole abnormality).",
    "fedmepd_brats": "The paper evaluates on BraTS 2018/2020 (hundreds of 3D cases); here 8 BraTS cases (7 "
                     "patients) as 96x96 axial tumour slices: the one patient with all 4 sequences is the server's "
                     "set, and each of the 3 clients has 2 patients (one to train on, one to test), so a client's "
                     "test score is one patient's. The clients' cases have only T1ce and FLAIR; the T1 and T2 "
                     "encoders learn from the server only.",
}
#: BraTS 2018 test set, mean Dice of ET/TC/WT (%) per client modality set, 3D, 8 clients + a
#: full-modal server, then the client averages on BraTS 2018 and 2020: from a third-party
#: summary of the paper (en.papernotes.org notes on arXiv 2603.04887), NOT checked against the
#: paper itself (papers/fedmepd.txt holds the abstract only).
SUMMARY_SUBSETS = ("T1c", "T2", "FLAIR+T1c", "T1+T2", "FLAIR+T1c+T1", "FLAIR+T1+T2", "full", "full")
SUMMARY = {
    "FedMEPD": ((58.87, 59.35, 93.73, 75.83, 82.99, 74.58, 90.69, 69.62), 75.70, 75.90),
    "FedAvg": ((18.46, 42.12, 82.11, 59.59, 61.13, 61.91, 84.88, 62.09), 59.04, 61.91),
    "Local": ((42.37, 48.13, 87.74, 64.93, 71.59, 63.99, 89.15, 67.67), 66.95, 71.38),
}
CLIENTS = {"fedmepd_lgg": ("CS+EZ", "DU", "FG", "HT"), "fedmepd_brats": ("patients1", "patients2", "patients3")}
SOURCE = {"fedmepd_lgg": "lgg", "fedmepd_brats": "brats"}
REGIONS = {"fedmepd_lgg": (), "fedmepd_brats": ("et", "tc", "wt")}


def no_prediction(setup) -> dict:
    """What a model that predicts background everywhere scores, per client and on average, on
    the runs' test split: per-image Dice is the share of (slice, region) pairs where the region
    is empty (the task scores an empty prediction of an empty region 1); pooled Dice is 0."""
    fed = setup.fed
    values = list(fed.info["label_values"])
    regions = fed.info.get("regions") or {"fg": values[1:]}
    clients = []
    for k in range(fed.num_clients):
        lo, n = int(fed.test.offsets[k]), int(fed.test.n[k])
        labels = np.asarray(values)[fed.test.y[lo:lo + n, ..., 0]]
        empty = [~np.isin(labels, v).reshape(n, -1).any(axis=1) for v in regions.values()]
        clients.append({"dice": float(np.mean(empty)), "dice_pooled": 0.0,
                        **{f"dice_{g}": float(np.mean(e)) for g, e in zip(regions, empty)}})
    return {"clients": clients, "avg": {k: float(np.mean([c[k] for c in clients])) for k in clients[0]}}


def _summary_lines() -> tuple:
    lines = ["## The paper's numbers (third-party summary)", "",
             "The abstract (the text available here) reports no numbers, only that FedMEPD outperforms up-to-date "
             "multimodal and personalised FL methods on BraTS 2018 and 2020. Per client, as given by a third-party "
             "summary of the paper (not checked against the paper; BraTS 2018 test set, 3D volumes, 8 clients + a "
             "full-modal server; mean Dice of ET/TC/WT, %; FedPer and OmniFM not reported):", "",
             "| Method | " + " | ".join(SUMMARY_SUBSETS) + " | Avg. (BraTS 2018) | Avg. (BraTS 2020) |",
             "|---|" + "---:|" * (len(SUMMARY_SUBSETS) + 2)]
    for m, (cells, a18, a20) in SUMMARY.items():
        lines.append(f"| {m} | " + " | ".join(f"{v:.2f}" for v in cells) + f" | {a18:.2f} | {a20:.2f} |")
    return tuple(lines)


def _table(config: str, title: str) -> Table:
    short = SHORT_NAMES[SOURCE[config]]
    subsets = config_lib.load_config(config)["dataset_kwargs"]["modality_subsets"]
    columns = [(name, f"{name} [{'+'.join(short[m] for m in s)}]", i)
               for i, (name, s) in enumerate(zip(CLIENTS[config], subsets))] + [("avg", "Avg.", None)]
    rows = [(method(n).label, method(n).key, method(n).overrides) for n in MAIN]
    rows += [(label, key, method("FedMEPD").overrides + over) for label, key, over, _ in ABLATIONS]
    cells = tuple(Cell(label, clabel, key, ckey, config, over, client=client,
                       client_name=None if client is None else ckey)
                  for label, key, over in rows for ckey, clabel, client in columns)
    claims = (beats_all(cells, "dice", "fedmepd", "avg", "FedMEPD has the highest Avg. Dice of the compared methods "
                        "(the abstract: it outperforms multimodal and personalised FL methods)",
                        rows=[method(n).key for n in MAIN]),
              *(Claim(text, "dice", "beats", ("fedmepd", "avg"), ((key, "avg"),)) for _, key, _, text in ABLATIONS))
    metrics = ("dice", "dice_pooled") + tuple(f"dice_{r}" for r in REGIONS[config])
    own = {"dice_pooled": paper_metric("segmentation", "dice_pooled", 100.0, 1),
           **{f"dice_{r}": paper_metric("segmentation", f"dice_{r}", 100.0, 1) for r in REGIONS[config]}}
    data = "lgg" if config == "fedmepd_lgg" else "brats"
    cpu = Scale({config: (Setting(config, RUN + ("eval_train_loss=False",), data,
                                  "the config's federation, model sizes and 1 local epoch per round"),)},
                rows=tuple(method(n).key for n in MAIN), rounds=30,
                note="the protocol of experiments/results/fedmepd_*.md: 30 rounds (--rounds 100 for the longer "
                     "BraTS run), seeds 0, 1, 2, the same split in every seed")
    smoke = Scale(cpu.settings, rows=("fedmepd", "fedavg"), cols=("avg",), rounds=3)
    return Table(
        config, title, metrics, cells, claims, scales={"smoke": smoke, "cpu": cpu}, task="segmentation",
        rule="last", metric_defs=own, references=(Reference("no tumour predicted", no_prediction),),
        notes=("FedMEPD is implemented from the abstract only (Wei et al., MedIA 2025; the full paper's network, "
               "anchor extraction and personalisation rule are not known here).", CAVEAT[config],
               "Per-image Dice (an empty prediction of an empty region scores 1, so predicting nothing scores the "
               "share of such slices: see the reference row); pooled Dice sums the counts over a client's test "
               "slices first (2 sum I / (sum P + sum T)) and does not reward that. Avg. = mean over clients."
               + (" Dice is the mean of ET, TC and WT." if REGIONS[config] else ""),
               "The server's full-modal patients are held out of every client (used by FedMEPD only); data_seed "
               "is the table's (0) whichever seeds a sitting runs, so a column is the same client (and test "
               "patients) in every seed."),
        appendix=_summary_lines(), kind="study")


TABLES = (_table("fedmepd_lgg", "FedMEPD with missing modalities on TCGA-LGG"),
          _table("fedmepd_brats", "FedMEPD with missing modalities on BraTS slices"))
