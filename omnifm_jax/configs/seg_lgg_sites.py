"""Federated segmentation on TCGA-LGG FLAIR-abnormality slices (stands in for the paper's
Sec. 4.4 / Table 6 FeTS2022 enhancing-tumour task; see omnifm_jax/data/segmentation.py).

Clients are the hospitals (TCGA site codes DU, HT, FG, CS, EZ). EZ holds one patient (7
slices), too few for a train/test split by patient, so it is merged into the smallest other
site: 4 clients = ``CS+EZ``, ``DU``, ``FG``, ``HT``; every client has >= 3 test patients.
Inputs: the three channels (pre-contrast T1, FLAIR, post-contrast T1Gd), 64x64, in [0, 1].

Model: MONAI's UNet (``backbone="unet"``: PReLU, instance norm, 2 residual units, 3x3
kernels, 4 stride-2 levels), at half the tutorial's widths (8..128 instead of
16..256) so that a run takes minutes on 2 CPU cores. Loss: Dice + CE (MONAI's DiceCELoss
weights 1, 1). Adam at 1e-3, batch 8 (with 16, the CS+EZ client makes 6 steps a round).

The paper's protocol is 50 communication rounds x 1 local epoch; this CPU default runs 10
(``rounds=50`` restores it).
"""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "segmentation",
        "task_kwargs": {"dice_weight": 1.0, "ce_weight": 1.0},
        "dataset": "lgg_seg",
        "dataset_kwargs": {"test_fraction": 0.25},
        "backbone": "unet",
        "backbone_kwargs": {"channels": (8, 16, 32, 64, 128), "strides": (2, 2, 2, 2), "num_res_units": 2},
        "num_clients": 4,
        "rounds": 10,
        "local_epochs": 1,
        "batch_size": 8,
        "eval_batch_size": 64,
        "optimizer": "adam",
        "lr": 1e-3,
        "input_scaling": "unit",
        "checkpoint_every": 0,
        "seed": 0,
    }
