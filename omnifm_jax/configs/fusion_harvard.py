"""Federated multi-modal fusion on the Harvard brain atlas (paper Sec. 4.5, Table 7), sized
for a CPU.

Paper protocol: 256x256 pairs, client 1 CT-MRI, client 2 PET-MRI, client 3 SPECT-MRI,
U2Fusion as the local backbone, 600 rounds x 15 local epochs; VIF / SSIM / L1 per client.
For that, override ``dataset_kwargs.image_size=256 rounds=600 local_epochs=15`` and
``backbone_kwargs.features=44 task_kwargs.head_widths=[128,64,32]`` (U2Fusion's widths).

Here (CPU defaults): 64x64 pairs (box-filtered), a U2Fusion with 12 features per dense
layer and a (32, 16, 8) decoder, 10 rounds x 1 local epoch. Data: the Harvard pairs in
``$OMNIFM_REAL_DATA/fusion_harvard`` (184 CT-MRI, 24 PET-MRI, 24 SPECT-MRI; 25 % of each
client's pairs held out). The loss and metrics are described in omnifm_jax/tasks/fusion.py.
"""


def get_config():
    return {
        "algorithm": "omnifm",
        "task": "fusion",
        "task_kwargs": {"head_widths": [32, 16, 8]},
        "dataset": "harvard_fusion",
        "dataset_kwargs": {"image_size": 64},
        "backbone": "u2fusion",
        "backbone_kwargs": {"features": 12, "num_dense": 5},
        "num_clients": 3,
        "rounds": 10,
        "local_epochs": 1,
        "batch_size": 8,
        "eval_batch_size": 32,
        "optimizer": "adam",
        "lr": 1e-3,
        "algorithm_kwargs": {"spectral_dim": 32, "attn_dim": 16},
        "seed": 0,
    }
