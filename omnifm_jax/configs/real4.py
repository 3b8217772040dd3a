"""Real 4-modality federation (blood microscopy, fundus, chest X-ray, breast ultrasound),
20 clients, Dirichlet 0.1 (client sizes 165..1,192 training images), FedAvgCNN, 20% of the
clients per round. Needs the real images (OMNIFM_REAL_DATA)."""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "classification",
        "dataset": "real4",
        "dataset_kwargs": {"partition": "dirichlet", "alpha": 0.1},
        "backbone": "cnn",
        "num_clients": 20,
        "participation": 0.2,
        "rounds": 50,
        "local_epochs": 1,
        "batch_size": 32,
        "lr": 0.05,
        "seed": 0,
    }
