"""Federated medical VQA on VQA-RAD with modality-specific clients (a stand-in for the
paper's Sec. 4.3 Task 2), sized for a CPU.

Clients: the three imaging groups of VQA-RAD (head, chest, abdomen; the files label organs,
whose images are mostly MRI/CT, X-ray and CT), every question with its image, the files'
train/test split. Model: ``backbone="vqa"``, LLaVA's shape at CPU size (patch-token vision
encoder, MLP connector, a 2-block transformer over [visual ; question] tokens) and a
classifier over the 476 training answers. Metrics: closed, open and overall accuracy per
client. The paper fine-tunes LLaVA-1.5 (CLIP ViT + LLaMA-3.2-3B, LoRA r=8); nothing here can
speak for it. Fine-tuning setups: docs/finetuning.md (``init_from``, ``trainable``,
``lora``); ``dataset_kwargs.partition="iid"`` deals images to clients at random (Task 1's
IID split).
"""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "vqa",
        "dataset": "vqa_rad",
        "dataset_kwargs": {"partition": "organ", "image_size": 32, "question_length": 16},
        "backbone": "vqa",
        "backbone_kwargs": {"question_length": 16},
        "num_clients": 3,
        "rounds": 80,
        "local_epochs": 1,
        "batch_size": 32,
        "eval_batch_size": 128,
        "optimizer": "adam",
        "lr": 1e-3,
        "seed": 0,
    }
