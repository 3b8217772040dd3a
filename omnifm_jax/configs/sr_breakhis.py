"""Federated super-resolution on BreaKHis (paper Sec. 4.2): 3 clients split by
magnification, x2, EDSR-style backbone; test patients (accession numbers) are held out from
every client. Needs the BreaKHis images (see docs/data.md)."""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "super_resolution",
        "task_kwargs": {"scale": 2},    # the task's factor; dataset_kwargs.scale makes the pairs
        "dataset": "breakhis_sr",
        "dataset_kwargs": {"scale": 2, "patch": 64, "split_by": "magnification", "group_split": "patient",
                           "max_patches_per_image": 8},
        "backbone": "edsr",
        "backbone_kwargs": {"features": 32, "num_blocks": 4},
        "num_clients": 3,
        "rounds": 50,
        "local_epochs": 1,
        "batch_size": 16,
        "optimizer": "adam",
        "lr": 1e-3,
        "seed": 0,
    }
