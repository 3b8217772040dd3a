"""Paper Table 1 protocol: cross-modality classification (PathMNIST + DermaMNIST +
BloodMNIST official TRAIN splits, ~109k images, 24 classes), ResNet-18, 20 clients, 100
rounds, 5 local epochs, batch 10, Dirichlet 0.1 (Scenario 1). Set participation to
0.2/0.5/1.0 and dataset_kwargs.alpha / partition for the other columns.

The paper names no ResNet-18 stem; PFLlib builds ``torchvision.models.resnet18``, whose
stem is a 7x7 stride-2 convolution and a max-pool (``stem="imagenet"``), with BatchNorm.
``backbone_kwargs.stem=cifar`` gives the 3x3 stem often used for 28x28 images instead.
Needs the MedMNIST files and a GPU."""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "classification",
        "dataset": "medmnist:pathmnist+dermamnist+bloodmnist",
        "dataset_kwargs": {"partition": "dirichlet", "alpha": 0.1, "splits": ["train"]},
        "backbone": "resnet18",
        "backbone_kwargs": {"stem": "imagenet", "norm": "batch"},
        "num_clients": 20,
        "participation": 1.0,
        "rounds": 100,
        "local_epochs": 5,
        "batch_size": 10,
        "lr": 0.01,
        "eval_every": 1,
        "eval_batch_size": 500,
        "seed": 0,
    }
