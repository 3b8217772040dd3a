"""Default run: a small cross-modality classification federation on the built-in
synthetic data (3 modalities x 6 classes, 8 clients, Dirichlet 0.5), OmniFM with the
FedAvgCNN backbone. About a minute on a laptop CPU."""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "classification",
        "dataset": "synthetic",
        "dataset_kwargs": {"partition": "dirichlet", "alpha": 0.5, "samples_per_class_per_modality": 40},
        "backbone": "cnn",
        "num_clients": 8,
        "participation": 1.0,
        "rounds": 10,
        "local_epochs": 2,
        "batch_size": 16,
        "lr": 0.1,
        "eval_every": 1,
        "seed": 0,
    }
