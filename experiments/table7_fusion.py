"""Table 7 (multi-modal fusion) smoke run on the real Harvard pairs, CPU-sized.

    python -m experiments.table7_fusion [--rounds 10] [--image-size 64] [--eval-every 5]
        [--algorithms omnifm,fedavg,fedper,local] [--json FILE] [--md FILE] [--set k=v ...]

Runs ``omnifm_jax/configs/fusion_harvard.py`` (3 clients: CT-MRI, PET-MRI, SPECT-MRI; the
u2fusion backbone; the fusion task of omnifm_jax/tasks/fusion.py) for each algorithm through
``omnifm_jax.experiment.run``, and reports the last round's per-client VIF / SSIM / L1 in
Table 7's layout, beside the paper's numbers (600 rounds x 15 local epochs at 256x256; here a
few rounds of one epoch at a reduced size, so the numbers are a smoke test of the pipeline,
not a reproduction). Also reports the model-free average fusion ``F = (A + B) / 2`` on the
same test pairs, as a floor.

VIF and SSIM are reported both as the CDDFuse sum over the two sources (``vif``, ``ssim``:
the task's metrics) and as the mean over the two sources (sum / 2), the scale of the paper's
values (the paper does not state its convention).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax import config as config_lib
from omnifm_jax import experiment
from omnifm_jax.data.federation import client_slice
from omnifm_jax.tasks import fusion as fusion_task

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = ("CT-MRI", "PET-MRI", "SPECT-MRI")

#: OmniFM paper, Table 7 (VIF, SSIM higher is better; L1 lower is better).
PAPER = {
    "FedAvg":  {"vif": (0.221, 0.331, 0.284, 0.279), "ssim": (0.739, 0.640, 0.749, 0.709), "l1": (0.163, 0.189, 0.088, 0.147)},
    "FedProx": {"vif": (0.185, 0.242, 0.235, 0.221), "ssim": (0.684, 0.550, 0.702, 0.645), "l1": (0.173, 0.199, 0.096, 0.156)},
    "Ditto":   {"vif": (0.196, 0.275, 0.249, 0.240), "ssim": (0.718, 0.609, 0.732, 0.686), "l1": (0.165, 0.189, 0.089, 0.148)},
    "FedDyn":  {"vif": (0.182, 0.239, 0.245, 0.222), "ssim": (0.716, 0.617, 0.733, 0.689), "l1": (0.169, 0.195, 0.092, 0.152)},
    "MOON":    {"vif": (0.195, 0.275, 0.249, 0.240), "ssim": (0.718, 0.609, 0.732, 0.686), "l1": (0.165, 0.190, 0.089, 0.148)},
    "OmniFM":  {"vif": (0.217, 0.309, 0.280, 0.269), "ssim": (0.739, 0.648, 0.749, 0.712), "l1": (0.161, 0.187, 0.086, 0.145)},
}
PAPER_SHOWN = ("FedAvg", "OmniFM")
NAMES = {"omnifm": "OmniFM", "fedavg": "FedAvg", "fedper": "FedPer", "local": "Local"}


def _row(metrics: dict) -> dict:
    """Per-client (or Avg) numbers in both conventions."""
    return {"vif_sum": metrics["vif"], "vif_mean": metrics["vif"] / 2, "vif_mri": metrics["vif_mri"],
            "vif_other": metrics["vif_other"], "ssim_sum": metrics["ssim"], "ssim_mean": metrics["ssim"] / 2,
            "ssim_mri": metrics["ssim_mri"], "ssim_other": metrics["ssim_other"], "l1": metrics["l1"],
            "l1_mri": metrics["l1_mri"], "l1_other": metrics["l1_other"]}


def average_fusion_baseline(cfg) -> dict:
    """The metrics of ``F = (A + B) / 2`` on every client's test pairs."""
    prepared = experiment.setup(cfg)
    fed, task = prepared.fed, prepared.task
    scales = task_vif_scales(cfg)
    fn = jax.jit(lambda x: fusion_task.fusion_metrics(fusion_task.average_fusion(x), x, vif_scales=scales))
    per = []
    for k in range(fed.num_clients):
        x, _, _ = client_slice(fed.test, k)
        stats = {key: np.asarray(v) for key, v in fn(jnp.asarray(x, jnp.float32) / 255.0).items()}
        per.append(task.client_metrics(stats))
    avg = {key: float(np.mean([m[key] for m in per])) for key in fusion_task.METRICS}
    return {"clients": [_row(m) for m in per], "avg": _row(avg),
            "train_n": fed.train.n.tolist(), "test_n": fed.test.n.tolist(), "data_info": {
                k: v for k, v in fed.info.items() if k not in ("train_pairs", "test_pairs")},
            "test_pairs": fed.info["test_pairs"]}


def task_vif_scales(cfg) -> int:
    return int(cfg["task_kwargs"].get("vif_scales", fusion_task.DEFAULTS["vif_scales"]))


def run_algorithm(name: str, base: list, log) -> dict:
    cfg = config_lib.apply_overrides(config_lib.load_config("fusion_harvard"), [f"algorithm={name}"] + base)
    if name != "omnifm":
        cfg["algorithm_kwargs"] = {}
    t0 = time.time()
    s = experiment.run(cfg, None, progress=False, log=log)  # validates and sets up (experiment.setup)
    return {"algorithm": name, "wall_s": round(time.time() - t0, 1), "round": s["last"]["round"],
            "clients": [_row(c) for c in s["last_clients"]], "avg": _row(s["last"]),
            "best_round_by_vif": s["best"]["round"], "test_loss": s["last"]["test_loss"],
            "local_loss": s["last"].get("local_loss"), "params_sha256": s["params_sha256"], "config": cfg}


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.3f}"


def to_markdown(res: dict) -> str:
    algs = [r["algorithm"] for r in res["runs"]]
    p = res["protocol"]
    tk = {**fusion_task.DEFAULTS, **p["task_kwargs"]}
    lines = [
        "# Table 7 (multi-modal fusion): CPU smoke run",
        "",
        f"Data: Harvard Whole Brain Atlas pairs (`fusion_harvard`, {p['root']}): client 1 CT-MRI, client 2 "
        f"PET-MRI, client 3 SPECT-MRI; train/test pairs per client {p['train_n']} / {p['test_n']} "
        f"(25 % held out, seed {p['seed']}); {p['image_size']}x{p['image_size']} (Pillow box filter from 256); "
        "PET/SPECT as the luma Y of YCbCr (BT.601). The repository's copy holds the 24 PET-MRI and 24 "
        "SPECT-MRI pairs of the source repo's test split, so those clients are small.",
        "",
        f"Run: {p['rounds']} rounds x {p['local_epochs']} local epoch(s), batch {p['batch_size']}, Adam lr "
        f"{p['lr']}, u2fusion backbone (features {p['backbone_kwargs']['features']}, "
        f"{p['backbone_kwargs']['num_dense']} "
        f"dense layers, decoder {p['head_widths']}), loss = U2Fusion-style information-weighted "
        f"{tk['ssim_weight']:g} x (1 - SSIM) + {tk['intensity_weight']:g} x MSE (temperature {tk['temperature']:g}) "
        f"+ {tk['grad_weight']:g} x max-gradient L1. Paper: 600 rounds x 15 local epochs at 256x256, U2Fusion. "
        f"Metrics of the last round, on {res['device']} ({res['machine']}); wall time "
        + ", ".join(f"{NAMES.get(r['algorithm'], r['algorithm'])} {r['wall_s']:.0f} s" for r in res["runs"]) + ".",
        "",
        "VIF = multi-scale pixel VIF (Sheikh & Bovik 2006) as in CDDFuse's `Evaluator.py` (4 scales, sigma_nsq = 2, "
        "[0, 255]); SSIM = dm-pix (11x11 Gaussian, sigma 1.5) on [0, 1]; L1 on [0, 1]. Below, VIF and SSIM are "
        "the MEAN over the two sources (the scale of the paper's values; the CDDFuse sum is twice that and is "
        "in the second table); L1 is the mean over the two sources. The fused image is quantised to 8 bits.",
        "",
    ]
    head = ["Metric", "Client"] + [f"{NAMES.get(a, a)} (ours)" for a in algs] + ["avg. fusion"] + \
           [f"{n} (paper)" for n in PAPER_SHOWN]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for metric, key, arrow in (("VIF", "vif_mean", "↑"), ("SSIM", "ssim_mean", "↑"), ("L1", "l1", "↓")):
        for i, client in enumerate(CLIENTS + ("Avg",)):
            ours = [(r["clients"][i] if i < 3 else r["avg"])[key] for r in res["runs"]]
            base = (res["average_fusion"]["clients"][i] if i < 3 else res["average_fusion"]["avg"])[key]
            paper = [PAPER[n][key.split("_")[0]][i] for n in PAPER_SHOWN]
            lines.append("| " + " | ".join([f"{metric} {arrow}" if i == 0 else "", client]
                                            + [_fmt(v) for v in ours + [base] + paper]) + " |")
    lines += ["", "Per source and the CDDFuse sums (VIF(A->F) + VIF(B->F), SSIM(F,A) + SSIM(F,B)); A = MRI, "
              "B = CT/PET/SPECT:", ""]
    head = ["Client", "Algorithm", "VIF sum", "VIF MRI", "VIF other", "SSIM sum", "SSIM MRI", "SSIM other",
            "L1 MRI", "L1 other"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    entries = [(NAMES.get(r["algorithm"], r["algorithm"]), r) for r in res["runs"]] + \
              [("avg. fusion", res["average_fusion"])]
    for i, client in enumerate(CLIENTS + ("Avg",)):
        for label, r in entries:
            row = r["clients"][i] if i < 3 else r["avg"]
            lines.append("| " + " | ".join([client, label] + [_fmt(row[k]) for k in (
                "vif_sum", "vif_mri", "vif_other", "ssim_sum", "ssim_mri", "ssim_other", "l1_mri", "l1_other")]) + " |")
    lines += ["", "Paper columns FedProx/Ditto/FedDyn/MOON are in the JSON (`paper`). FedPer and Local are not in "
              "the paper's Table 7.", ""]
    return "\n".join(lines)


def rewrite_markdown(json_path: str, md_path: str) -> None:
    """Regenerate the Markdown report from a saved JSON (no training)."""
    Path(md_path).write_text(to_markdown(json.loads(Path(json_path).read_text())))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--algorithms", default="omnifm,fedavg,fedper,local")
    ap.add_argument("--json", default=str(RESULTS / "table7_fusion_smoke.json"))
    ap.add_argument("--md", default=str(RESULTS / "table7_fusion_smoke.md"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    args = ap.parse_args(argv)
    base = [f"rounds={args.rounds}", f"dataset_kwargs.image_size={args.image_size}", f"eval_every={args.eval_every}",
            "checkpoint_every=0", "eval_train_loss=False"] + list(args.set)
    t0 = time.time()
    runs = []
    for name in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        runs.append(run_algorithm(name, base, log=print))
        print(f"{name}: {runs[-1]['wall_s']} s, avg {runs[-1]['avg']}", flush=True)
    cfg = runs[0]["config"]
    baseline = average_fusion_baseline(cfg)
    res = {
        "protocol": {"rounds": cfg["rounds"], "local_epochs": cfg["local_epochs"], "batch_size": cfg["batch_size"],
                     "lr": cfg["lr"], "optimizer": cfg["optimizer"], "image_size": args.image_size,
                     "seed": cfg["seed"], "backbone_kwargs": cfg["backbone_kwargs"],
                     "head_widths": cfg["task_kwargs"].get("head_widths"), "task_kwargs": cfg["task_kwargs"],
                     "root": baseline["data_info"]["root"], "train_n": baseline["train_n"],
                     "test_n": baseline["test_n"], "paper": "600 rounds x 15 local epochs, 256x256, U2Fusion"},
        "data": baseline["data_info"], "test_pairs": baseline["test_pairs"],
        "runs": runs, "average_fusion": {k: baseline[k] for k in ("clients", "avg")},
        "paper": PAPER, "device": str(jax.devices()[0]), "machine": f"{platform.machine()}, {jax.device_count()} "
        f"device(s), {__import__('os').cpu_count()} CPU core(s)", "total_wall_s": round(time.time() - t0, 1),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2, default=str))
    Path(args.md).write_text(to_markdown(res))
    print(to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
