"""Federated enhancing-tumour segmentation on BraTS slices, from T1ce only: the paper's
Sec. 4.4 task (FeTS2022, "GD-enhancing tumour from T1ce") on the 8 BraTS cases shipped in
the real data folder (7 patients; ``Brats18_2013_2_1`` and ``brats_2013_pat0002_1`` are one
patient and stay together).

2 clients, each a group of patients, split train/test by patient (a 7-patient set cannot
give more than 3 clients a patient to train on and one to test). 96x96 slices with any
tumour label; the target is label 4 (empty on the few slices without enhancing tumour; the
task's empty-mask convention scores those). MONAI UNet at half the tutorial's
widths; Dice + CE; Adam 1e-3.

The paper's protocol is 50 rounds x 1 local epoch with FeTS2022's institution partitions
(``nifti_seg`` with ``partition_file=`` reads FeTS data); this CPU default runs 10 rounds.
"""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "segmentation",
        "dataset": "brats_seg",
        "dataset_kwargs": {"target": "et", "channels": ("t1ce",), "test_fraction": 0.25},
        "backbone": "unet",
        "backbone_kwargs": {"channels": (8, 16, 32, 64, 128), "strides": (2, 2, 2, 2), "num_res_units": 2},
        "num_clients": 2,
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
