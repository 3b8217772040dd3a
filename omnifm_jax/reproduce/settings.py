"""Scales: what runs in place of a table cell's config, shared by the table files.

* ``paper``: the paper's protocol where this library can express it (Table 1: ResNet-18,
  MedMNIST Path+Derma+Blood, 20 clients, 100 rounds x 5 local epochs; Table 2 / 8-SR:
  BreaKHis; ...). The expected wall time is printed before any work (from the H100
  figures measured in the README's Performance section, where there are any).
* ``smoke``: minutes on a 2-core CPU. The paper's Table-1 data (MedMNIST Path/Derma/Blood)
  are not on this machine, so classification runs on the ``real4`` stand-in (its official
  *test* splits only, 2,888 real images of 4 modalities and 17 classes, 5 clients) when its
  files are present, else on the built-in synthetic federation; tiny models, a few rounds.
* ``tiny``: synthetic data, one or two rounds, the smallest models; for tests and the
  notebook's test run only (its numbers mean nothing).

:data:`PAPER`, :data:`SMOKE` and :data:`TINY` map a config name to its candidate
:class:`~omnifm_jax.reproduce.spec.Setting` s; :func:`standard_scales` makes the three
:class:`~omnifm_jax.reproduce.spec.Scale` s of a paper table from them. A table file adds
scales of its own from the same building blocks (``RUN``, ``SMOKE_SEG``, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce.spec import Pretrain, Scale, Setting

__all__ = ["DATA_FILES", "RUN", "SMOKE_OMNIFM", "SMOKE_CLS", "SMOKE_SR", "SMOKE_SEG", "SMOKE_FUSION", "TINY_CLS",
           "TINY_SR", "PAPER_SEG", "REAL4_NOTE", "SYNTHETIC_NOTE", "PAPER", "SMOKE", "TINY", "standard_scales",
           "H100_MINUTES_PER_100_ROUNDS", "CPU_CLS", "CPU_SR", "data_present", "resolve_setting", "VQA_SETTING",
           "VQA_PRETRAIN", "VQA_REGIMES", "vqa_regime"]

#: Files (relative to ``default_real_data_dir()``) that a setting needs.
DATA_FILES: Dict[str, Tuple[str, ...]] = {
    "real4": ("blood_pbc/pbc_bloodmnist_style_28.npz", "medmnist/retinamnist.npz", "medmnist/pneumoniamnist.npz",
              "medmnist/breastmnist.npz"),
    "breakhis": ("breakhis/images",),
    "lgg": ("lgg_mri_seg/lgg_flair_seg_64.npz",),
    "brats": ("brats_slices/brats_tumour_slices_96.npz",),
    "harvard": ("fusion_harvard/CT-MRI", "fusion_harvard/PET-MRI", "fusion_harvard/SPECT-MRI"),
    "vqa_rad": ("vqa_rad/trainset.json", "vqa_rad/testset.json", "vqa_rad/images"),
}

#: Every cell: no checkpoints (a table run is resumed cell by cell, see ``--resume``).
RUN = ("checkpoint_every=0",)
SMOKE_OMNIFM = ("algorithm_kwargs.spectral_dim=16", "algorithm_kwargs.attn_dim=16")
SMOKE_CLS = RUN + ("num_clients=5", "local_epochs=1", "batch_size=32", "lr=0.05", "backbone=cnn",
                   "backbone_kwargs.hidden=64", "eval_train_loss=False") + SMOKE_OMNIFM
SMOKE_SR = RUN + ("dataset_kwargs.patch=32", "dataset_kwargs.max_patches_per_image=8", "backbone_kwargs.features=16",
                  "backbone_kwargs.num_blocks=2", "local_epochs=5", "batch_size=8", "lr=0.002",
                  "eval_train_loss=False") + SMOKE_OMNIFM
SMOKE_SEG = RUN + ("backbone_kwargs.channels=(4, 8, 16, 32)", "backbone_kwargs.strides=(2, 2, 2)",
                   "backbone_kwargs.num_res_units=1", "eval_train_loss=False") + SMOKE_OMNIFM
SMOKE_FUSION = RUN + ("dataset_kwargs.image_size=48", "backbone_kwargs.features=8", "eval_train_loss=False")
TINY_CLS = RUN + ("num_clients=5", "local_epochs=1", "batch_size=8", "backbone_kwargs.hidden=16",
                  "dataset_kwargs.samples_per_class_per_modality=4", "dataset_kwargs.image_size=16",
                  "eval_train_loss=False", "eval_batch_size=64", "algorithm_kwargs.spectral_dim=8",
                  "algorithm_kwargs.attn_dim=8")
TINY_SR = RUN + ("dataset_kwargs.images_per_client=8", "backbone_kwargs.features=8", "backbone_kwargs.num_blocks=1",
                 "eval_train_loss=False", "algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8")
PAPER_SEG = ("rounds=50", "backbone_kwargs.channels=(16, 32, 64, 128, 256)")  # MONAI tutorial widths

REAL4_NOTE = ("the paper's Table-1 data (MedMNIST PathMNIST + DermaMNIST + BloodMNIST, ~110k images, 24 classes) "
              "are not on this machine; the stand-in is real4 (real blood microscopy, fundus, chest X-ray and "
              "breast ultrasound images, 17 classes), restricted to its official test splits (2,888 images) and "
              "5 clients with FedAvgCNN (hidden 64) so that a cell takes seconds on a 2-core CPU")
SYNTHETIC_NOTE = ("neither the paper's data nor the real4 stand-in are present; the built-in synthetic "
                  "cross-modality federation (3 modalities x 6 classes) stands in")

#: The paper's protocols, by config.
PAPER: Dict[str, Tuple[Setting, ...]] = {
    "table1_resnet18": (Setting("table1_resnet18", RUN, None,
                                "the paper's protocol: MedMNIST Path+Derma+Blood official train splits "
                                "(~109k images, 24 classes), ResNet-18, 20 clients, 100 rounds x 5 local "
                                "epochs, batch 10 (files read from $OMNIFM_DATA or downloaded)"),),
    "sr_breakhis": (Setting("sr_breakhis", RUN, "breakhis",
                            "BreaKHis as in Sec. 4.2 (here the 28 bundled real images; patient-level "
                            "test split), EDSR-style backbone, 50 rounds (the paper's SR rounds are not "
                            "in the text)"),),
    "seg_lgg_sites": (Setting("seg_lgg_sites", RUN + PAPER_SEG,
                              "lgg", "FeTS2022 is not available; TCGA-LGG sites as clients, MONAI UNet at the "
                              "tutorial's widths, 50 rounds x 1 local epoch (the paper's protocol)"),),
    "seg_brats_et": (Setting("seg_brats_et", RUN + PAPER_SEG,
                             "brats", "FeTS2022 is not available; the 8 bundled BraTS cases (enhancing tumour "
                             "from T1ce, the paper's target), 50 rounds x 1 local epoch"),),
    "fusion_harvard": (Setting("fusion_harvard", RUN + (
        "dataset_kwargs.image_size=256", "rounds=600", "local_epochs=15", "backbone_kwargs.features=44",
        "task_kwargs.head_widths=[128, 64, 32]"), "harvard",
        "the paper's protocol: 256x256 pairs, U2Fusion widths, 600 rounds x 15 local epochs"),),
}

#: Minutes on a 2-core CPU, by config: the first candidate whose data are present runs.
SMOKE: Dict[str, Tuple[Setting, ...]] = {
    "table1_resnet18": (Setting("real4", SMOKE_CLS + ("dataset_kwargs.splits=['test']",), "real4", REAL4_NOTE),
                        Setting("default", SMOKE_CLS + ("dataset_kwargs.samples_per_class_per_modality=20",),
                                None, SYNTHETIC_NOTE)),
    "sr_breakhis": (Setting("sr_breakhis", SMOKE_SR, "breakhis",
                            "the 28 bundled real BreaKHis images (patient-level test split), 32-px HR patches, "
                            "a small EDSR (16 features, 2 blocks), 5 local epochs at batch 8, Adam 2e-3"),
                    Setting("sr_synthetic", RUN + ("eval_train_loss=False",), None,
                            "the BreaKHis images are not present; synthetic SR images stand in")),
    "seg_lgg_sites": (Setting("seg_lgg_sites", SMOKE_SEG, "lgg",
                              "FeTS2022 is not available; TCGA-LGG FLAIR-abnormality slices, clients = sites, "
                              "a 4-level UNet at widths 4..32"),),
    "seg_brats_et": (Setting("seg_brats_et", SMOKE_SEG, "brats",
                             "FeTS2022 is not available; the 8 bundled BraTS cases, a 4-level UNet at widths "
                             "4..32"),),
    "fusion_harvard": (Setting("fusion_harvard", SMOKE_FUSION, "harvard",
                               "the real Harvard pairs at 48x48 (a 4-scale VIF needs >= 41 px), "
                               "U2Fusion with 8 features per dense layer"),
                       Setting("fusion_harvard", SMOKE_FUSION + ("dataset=synthetic_fusion",
                                                                 "dataset_kwargs.pairs_per_client=16"), None,
                               "the Harvard pairs are not present; synthetic fusion pairs stand in")),
}

#: Tests only: synthetic data, the smallest models.
TINY: Dict[str, Tuple[Setting, ...]] = {
    "table1_resnet18": (Setting("default", TINY_CLS, None, "tests only: tiny synthetic federation"),),
    "sr_breakhis": (Setting("sr_synthetic", TINY_SR, None, "tests only: tiny synthetic SR federation"),),
}


#: ``cpu`` scales (converged runs on a 2-core CPU, hours per table): classification on the real4
#: stand-in at the size of the real4 runs (omnifm_jax/configs/real4.py: all of its images, 20
#: clients, FedAvgCNN, batch 32, lr 0.05, 1 local epoch), evaluated every round so that the
#: convergence rule can see the plateau.
CPU_CLS = Setting("real4", RUN + (
    "num_clients=20", "local_epochs=1", "batch_size=32", "lr=0.05", "backbone=cnn", "eval_every=1",
    "eval_train_loss=False"), "real4",
    "the paper's Table-1 data are not on this machine; the stand-in is real4 (real blood microscopy, fundus, chest "
    "X-ray and breast ultrasound images, 17 classes, all splits) at the size of the real4 runs: 20 clients, "
    "FedAvgCNN, batch 32, lr 0.05, 1 local epoch")
#: Super-resolution on BreaKHis with the config's own protocol (3 clients by magnification,
#: patient-level split, its EDSR), evaluated every round.
CPU_SR = Setting("sr_breakhis", RUN + ("eval_every=1", "eval_train_loss=False"), "breakhis",
                 "the config's protocol: 3 clients by magnification, patient-level split, the config's EDSR")


def standard_scales(*, smoke_rows: Optional[Sequence[str]] = None, smoke_cols: Optional[Sequence[str]] = None,
                    smoke_rounds: Optional[int] = None, tiny: bool = True,
                    tiny_cols: Optional[Sequence[str]] = None) -> Dict[str, Scale]:
    """``paper``, ``smoke`` (with its default rows, columns and rounds) and, unless ``tiny``
    is False (no synthetic stand-in for the table's configs), ``tiny`` (with its default
    columns: those whose configs have a synthetic stand-in)."""
    tup = lambda s: None if s is None else tuple(s)  # noqa: E731
    scales = {"paper": Scale(PAPER), "smoke": Scale(SMOKE, tup(smoke_rows), tup(smoke_cols), smoke_rounds)}
    return {**scales, "tiny": Scale(TINY, cols=tup(tiny_cols))} if tiny else scales


#: Measured H100 figures (README, Performance): one Table-1 run (ResNet-18, 20 clients at
#: 100% participation, 100 rounds x 2,050 steps at batch 10) extrapolated at 83 minutes.
H100_MINUTES_PER_100_ROUNDS = {"table1_resnet18": 83.0}


def data_present(needs: Optional[str], root: Path) -> bool:
    """Whether the files of ``DATA_FILES[needs]`` exist under ``root`` (None: nothing needed)."""
    return needs is None or all((root / rel).exists() for rel in DATA_FILES[needs])


def resolve_setting(scales: Dict[str, Scale], scale: str, config: str, root: Optional[Path] = None) -> Setting:
    """The setting that runs ``config`` at ``scale`` (of a table's ``scales``): the first
    candidate whose data are present under ``root`` (default:
    :func:`omnifm_jax.data.paths.default_real_data_dir`)."""
    from omnifm_jax.data.paths import default_real_data_dir

    if scale not in scales:
        raise ConfigError(f"unknown scale {scale!r}; scales: {', '.join(scales)}")
    candidates = scales[scale].settings.get(config)
    if not candidates:
        raise ConfigError(f"scale {scale!r} has no setting for {config!r} (it has "
                          f"{sorted(scales[scale].settings)})")
    root = Path(root) if root is not None else default_real_data_dir()
    for setting in candidates:
        if data_present(setting.needs, root):
            return setting
    missing = sorted({str(root / rel) for s in candidates if s.needs for rel in DATA_FILES[s.needs]
                      if not (root / rel).exists()})
    raise ConfigError(f"{config} at scale {scale!r} needs data that are not here: {missing} "
                      "(set OMNIFM_REAL_DATA to the real-data folder)")


#: VQA-RAD at CPU size (Tables 3 and 4 stand-ins): the ``vqa_rad_modality`` config on the 70 %
#: of the images that no pretraining run sees (``images=federation``).
VQA_SETTING = Setting("vqa_rad_modality", RUN + ("eval_train_loss=False", "dataset_kwargs.images=federation"),
                      "vqa_rad", "VQA-RAD, the 70 % of its images held out of pretraining (fixed split), 32x32 grey, "
                                 "questions of 16 tokens; backbone 'vqa' (patch-8 vision encoder, MLP connector, "
                                 "2-block transformer, width 64), Adam 1e-3, batch 32, 1 local epoch")
#: The model the fine-tuned VQA cells start from: FedAvg with one client (central training) on
#: the other 30 % of VQA-RAD's images, every question about them.
VQA_PRETRAIN = Pretrain("vqa_pretrain", "vqa_rad_modality",
                        ("algorithm=fedavg", "num_clients=1", "dataset_kwargs.partition=iid",
                         "dataset_kwargs.images=pretrain"),
                        note="central training (FedAvg, one client) on the 30 % of VQA-RAD's images that no client "
                             "holds")
#: The paper's tuning regimes (Table 3) as settings on a run that starts from a pretrained
#: VQA model: what trains besides the head (and OmniFM's own modules, new in every regime).
VQA_REGIMES = {"fc": ("connector_",), "fl": ("lora_",), "lc": ("connector_", "lora_")}
VQA_LORA = 'lora={"targets": ["llm_block"], "rank": 8, "alpha": 32}'


def vqa_regime(regime: str, algorithm: str, source: str) -> Tuple[str, ...]:
    """The overrides of a fine-tuning regime (``fc``: connector only; ``fl``: LoRA on the
    language blocks only; ``lc``: both; ``full``: every parameter) for ``algorithm``, starting
    from the backbone of the pretrained model ``source`` (a :class:`Pretrain` key)."""
    out = (f"init_from=pretrained:{source}", 'init_params=["params/backbone/(?!.*lora_)"]')  # adapters start new
    if regime == "full":
        return out
    own = ("tokenizer", "eca", "prompt") if algorithm == "omnifm" else ()
    trainable = VQA_REGIMES[regime] + ("params/head/",) + own
    lora = (VQA_LORA,) if "lora_" in VQA_REGIMES[regime] else ()
    return out + lora + ("trainable=[" + ", ".join(f'"{t}"' for t in trainable) + "]",)
