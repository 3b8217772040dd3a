"""FedMEPD on the BraTS slices with missing modalities: the paper's setting (BraTS, 4 MR
sequences, ET/TC/WT) on the 8 BraTS cases shipped in the real data folder (see
omnifm_jax/algorithms/fedmepd.py and omnifm_jax/data/multimodal.py).

The one patient with all four sequences in every slice (``Brats18_TCIA05_396_1``, 76
slices) is the server's full-modal set (the loader's server split, ``Federation.server``,
which the run hands to FedMEPD); the other 6 patients (``Brats18_2013_2_1`` and
``brats_2013_pat0002_1`` are one patient) are dealt to 3 clients of 2 patients, split
train/test by patient (one each). Client subsets of (T1, T1ce, T2, FLAIR): ``[[1, 3], [3], [1]]``
(T1ce + FLAIR, FLAIR only, T1ce only; the clients' cases have no T1/T2, so those encoders
learn from the server only); absent channels are zeroed. Target: the BraTS label map
{0, 1, 2, 4} as 4 classes (Dice + CE over classes); reported per region: ET (4), TC (1, 4),
WT (1, 2, 4) and their mean (``dice``). 96x96 inputs in [0, 1]; Adam 1e-3, batch 8.
"""

DATA = {"target": "multiclass", "test_fraction": 0.25, "modality_subsets": [[1, 3], [3], [1]],
        "server_fraction": 0.2, "server_seed": 0, "incomplete": "error"}


def get_config():
    return {
        "algorithm": "fedmepd",
        "task": "segmentation",
        "task_kwargs": {"dice_weight": 1.0, "ce_weight": 1.0},
        "dataset": "brats_multimodal_seg",
        "dataset_kwargs": dict(DATA),
        "algorithm_kwargs": {"channels": (8, 16, 32, 64), "attn_dim": 16, "num_anchors": 4,
                             "personalize_threshold": 1.0, "server_steps": 5, "server_lr": 0.01,
                             "server_batch_size": 8},
        "backbone": "unet",
        "backbone_kwargs": {"channels": (8, 16, 32, 64, 128), "strides": (2, 2, 2, 2), "num_res_units": 2},
        "num_clients": 3,
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
