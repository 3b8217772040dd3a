"""FedMEPD on TCGA-LGG with missing modalities (stands in for the paper's BraTS 2018/2020;
see omnifm_jax/algorithms/fedmepd.py and omnifm_jax/data/multimodal.py).

Clients are the hospitals (as ``seg_lgg_sites``: ``CS+EZ``, ``DU``, ``FG``, ``HT``), each
given a modality subset of (pre-contrast T1, FLAIR, post-contrast T1Gd): ``[[0, 1, 2], [1],
[0, 1], [1, 2]]`` (FLAIR always present: the masks are FLAIR abnormality); absent channels
are zeroed. The file's missing sequences (10 of 110 cases lack T1Gd, 6 lack pre-contrast
T1; stored as FLAIR copies, zeroed by the loader) make a client that declares a sequence
leave out its patients without it (``incomplete="drop"``; ``"error"`` refuses instead). 20 %
of the patients with all three sequences (seeded by ``server_seed``, not ``seed``) are held
out of every client as the server's full-modal set, which the loader returns as the federation's
server split (``Federation.server``) and the run hands to
FedMEPD. 64x64 inputs in [0, 1]; Dice + CE; Adam 1e-3, batch 8; 10 rounds on CPU.
"""

DATA = {"test_fraction": 0.25, "modality_subsets": [[0, 1, 2], [1], [0, 1], [1, 2]], "server_fraction": 0.2,
        "server_seed": 0, "incomplete": "drop"}


def get_config():
    return {
        "algorithm": "fedmepd",
        "task": "segmentation",
        "task_kwargs": {"dice_weight": 1.0, "ce_weight": 1.0},
        "dataset": "lgg_multimodal_seg",
        "dataset_kwargs": dict(DATA),
        "algorithm_kwargs": {"channels": (8, 16, 32, 64), "attn_dim": 16, "num_anchors": 4,
                             "personalize_threshold": 1.0, "server_steps": 5, "server_lr": 0.01,
                             "server_batch_size": 8},
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
