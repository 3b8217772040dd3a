"""Table 7 of the OmniFM paper: federated multi-modal fusion (Harvard atlas, U2Fusion, 600
rounds x 15 local epochs), per client (CT-MRI, PET-MRI, SPECT-MRI) and their mean, with the
model-free average fusion ``F = (A + B) / 2`` on the same test pairs as a floor."""
from omnifm_jax.reproduce import (
    METRICS,
    Cell,
    PaperText,
    PrintedRow,
    Reference,
    Scale,
    Setting,
    Table,
    beats_all,
    method,
    standard_scales,
)
from omnifm_jax.reproduce.settings import RUN

METHODS = ("FedAvg", "FedProx", "Ditto", "FedDyn", "MOON", "OmniFM")
CLIENTS = ("CT-MRI", "PET-MRI", "SPECT-MRI")
#: The paper's Table 7 as printed: per metric and client (and their "Avg"), the values of
#: FedAvg, FedProx, Ditto, FedDyn, MOON, OmniFM.
PRINTED = {
    "vif": {"CT-MRI": (0.221, 0.185, 0.196, 0.182, 0.195, 0.217),
            "PET-MRI": (0.331, 0.242, 0.275, 0.239, 0.275, 0.309),
            "SPECT-MRI": (0.284, 0.235, 0.249, 0.245, 0.249, 0.280),
            "Avg": (0.279, 0.221, 0.240, 0.222, 0.240, 0.269)},
    "fssim": {"CT-MRI": (0.739, 0.684, 0.718, 0.716, 0.718, 0.739),
              "PET-MRI": (0.640, 0.550, 0.609, 0.617, 0.609, 0.648),
              "SPECT-MRI": (0.749, 0.702, 0.732, 0.733, 0.732, 0.749),
              "Avg": (0.709, 0.645, 0.686, 0.689, 0.686, 0.712)},
    "l1": {"CT-MRI": (0.163, 0.173, 0.165, 0.169, 0.165, 0.161),
           "PET-MRI": (0.189, 0.199, 0.189, 0.195, 0.190, 0.187),
           "SPECT-MRI": (0.088, 0.096, 0.089, 0.092, 0.089, 0.086),
           "Avg": (0.147, 0.156, 0.148, 0.152, 0.148, 0.145)},
}
COLUMNS = tuple((c, c, i) for i, c in enumerate(CLIENTS)) + (("avg", "Avg. over the 3 clients", None),)


def _cells():
    for name in METHODS + ("FedPer", "Local"):   # FedPer and Local are not in the paper's table
        m = method(name)
        for key, label, client in COLUMNS:
            row = "Avg" if client is None else CLIENTS[client]
            paper = ({metric: PRINTED[metric][row][METHODS.index(name)] for metric in PRINTED}
                     if name in METHODS else None)
            yield Cell(m.label, label, m.key, key, "fusion_harvard", m.overrides, paper, client=client,
                       client_name=None if client is None else CLIENTS[client])


def average_fusion(setup) -> dict:
    """The metrics of ``F = (A + B) / 2`` on every client's test pairs, and their unweighted mean."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from omnifm_jax.data.federation import client_slice
    from omnifm_jax.tasks import fusion

    scales = int(setup.cfg["task_kwargs"].get("vif_scales", fusion.DEFAULTS["vif_scales"]))
    fn = jax.jit(lambda x: fusion.fusion_metrics(fusion.average_fusion(x), x, vif_scales=scales))
    clients = []
    for k in range(setup.fed.num_clients):
        x, _, _ = client_slice(setup.fed.test, k)
        stats = {key: np.asarray(v) for key, v in fn(jnp.asarray(x, jnp.float32) / 255.0).items()}
        clients.append(setup.task.client_metrics(stats))
    return {"clients": clients, "avg": {k: float(np.mean([c[k] for c in clients])) for k in fusion.METRICS}}


CELLS = tuple(_cells())
PAPER_ROWS = tuple(method(n).key for n in METHODS)
#: The CPU scale: 64x64 pairs, the config's small U2Fusion, 60 rounds x 1 local epoch at batch 4,
#: evaluated every 2 rounds (the convergence rule reads the last 10 evaluated rounds: rounds
#: 40-60). ~7 s per round of one run on 2 cores, measured on the first four rows (3 seeds as one
#: mapped program per method: 1.7 h on 2 cores; experiments/results/reproduce/table7/); the
#: paper's other four rows (FedProx, Ditto, FedDyn, MOON) were added afterwards.
CPU = Scale({"fusion_harvard": (Setting("fusion_harvard", RUN + (
    "dataset_kwargs.image_size=64", "local_epochs=1", "batch_size=4", "eval_every=2", "eval_train_loss=False"),
    "harvard", "the real Harvard pairs at 64x64, U2Fusion at the config's widths, 1 local epoch at batch 4"),)},
            rows=("omnifm", "fedavg", "fedprox", "ditto", "feddyn", "moon", "fedper", "local"), rounds=60,
            cpu_s_per_round=7.0,
            note="cpu: ~7 s per round of one run, measured (3 clients, 64x64 pairs, 1 local epoch)")
TABLE = Table(
    "table7", "Table 7: federated multi-modal fusion (Harvard atlas)", ("vif", "fssim", "l1"), CELLS,
    tuple(beats_all(CELLS, m, "omnifm", key, f"OmniFM has the best {METRICS[m].label} ({label})", rows=PAPER_ROWS)
          for key, label, _ in COLUMNS for m in ("vif", "fssim", "l1")),
    scales={**standard_scales(smoke_rounds=3, tiny=False), "cpu": CPU}, task="fusion",
    references=(Reference("average fusion (A + B) / 2", average_fusion),),
    printed=PaperText("omnifm", "Table 7:", "4.6 Framework", tuple(
        PrintedRow(client, numbers) for metric in PRINTED.values() for client, numbers in metric.items())),
    notes=("'Avg.' is the unweighted mean over CT-MRI, PET-MRI and SPECT-MRI (the paper's 'Avg' rows).",
           "VIF and SSIM: the fusion task sums them over the two source images (CDDFuse's convention); they are "
           "halved here to the scale of one source (the paper does not state its convention). L1 is the mean "
           "over the two sources. The fused image is quantised to 8 bits.",
           "FedPer and Local are not in the paper's Table 7 (no paper number; not in the claims)."))
