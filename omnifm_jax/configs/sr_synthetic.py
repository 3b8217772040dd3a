"""Tiny super-resolution federation (x2) on synthetic images: 3 clients, one modality
each, EDSR-style backbone; for tests and a quick look."""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "super_resolution",
        "task_kwargs": {"scale": 2},    # the task's factor; dataset_kwargs.scale makes the pairs
        "dataset": "synthetic_sr",
        "dataset_kwargs": {"scale": 2, "patch": 16, "images_per_client": 24},
        "backbone": "edsr",
        "backbone_kwargs": {"features": 16, "num_blocks": 2},
        "num_clients": 3,
        "rounds": 10,
        "local_epochs": 1,
        "batch_size": 16,
        "optimizer": "adam",
        "lr": 1e-3,
        "algorithm_kwargs": {"spectral_dim": 32, "attn_dim": 16},
        "seed": 0,
    }
