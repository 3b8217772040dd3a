"""Cross-modality federated segmentation: PH2 dermoscopy lesions (client 0) and DSB2018
nuclei microscopy (client 1), 64x64 RGB, binary foreground masks -- the segmentation
counterpart of the cross-modality classification setting (one imaging modality per
client). Train/test split by image.

MONAI UNet at half the tutorial's widths; Dice + CE; Adam 1e-3. The paper's
segmentation protocol is 50 rounds x 1 local epoch; this CPU default runs 10.
"""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "segmentation",
        "dataset": "ph2_dsb_seg",
        "dataset_kwargs": {"size": 64, "test_fraction": 0.25},
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
