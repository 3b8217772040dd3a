"""Build a run from a config and execute it: data, task, backbone, algorithm, rounds,
evaluation, and the output directory (metrics.jsonl, summary.json, config.json, curves.png).

Kept apart from ``cli.py`` so notebooks call :func:`run` directly.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np
import optax

from omnifm_jax import algorithms, config as config_lib, federated
from omnifm_jax.data.registry import load_federation
from omnifm_jax.models import FedAvgCNN, ResNet18
from omnifm_jax.models.sr import EDSRBackbone
from omnifm_jax.tasks import classification, super_resolution


def build_backbone(cfg: Dict[str, Any]):
    kw = dict(cfg["backbone_kwargs"])
    builders = {"cnn": FedAvgCNN, "resnet18": ResNet18, "edsr": EDSRBackbone}
    try:
        return builders[cfg["backbone"]](**kw)
    except TypeError as e:
        raise config_lib.ConfigError(f"backbone_kwargs {kw} do not fit backbone {cfg['backbone']!r}: {e}") from None


def build_task(cfg: Dict[str, Any], fed):
    if cfg["task"] == "classification":
        if fed.num_classes < 2:
            raise config_lib.ConfigError(f"dataset {cfg['dataset']!r} has no class labels; "
                                         "use task=super_resolution")
        return classification(fed.num_classes)
    if fed.num_classes != 0:
        raise config_lib.ConfigError(f"dataset {cfg['dataset']!r} is a classification set; "
                                     "use task=classification")
    hr, lr = fed.train.y.shape[2], fed.train.x.shape[2]
    if hr != lr * cfg["scale"]:
        raise config_lib.ConfigError(f"scale={cfg['scale']} but the data's HR/LR ratio is {hr}/{lr}")
    return super_resolution(cfg["scale"], channels=fed.train.y.shape[-1])


def build_algorithm(cfg: Dict[str, Any], task):
    factory = algorithms.get(cfg["algorithm"])
    if cfg["optimizer"] == "adam":
        tx = optax.adam(cfg["lr"])
    else:
        tx = optax.sgd(cfg["lr"], momentum=cfg["momentum"] or None)
    return factory(task=task, backbone=build_backbone(cfg), optimizer=tx, local_epochs=cfg["local_epochs"],
                   batch_size=cfg["batch_size"], **config_lib.algorithm_kwargs(cfg, factory))


def load_data(cfg: Dict[str, Any]):
    return load_federation(cfg["dataset"], num_clients=cfg["num_clients"], seed=cfg["seed"],
                           **dict(cfg["dataset_kwargs"]))


def _fmt(metrics: Dict[str, Any]) -> Dict[str, str]:
    return {k: f"{v:.4f}" for k, v in metrics.items() if isinstance(v, float)}


def run(cfg: Dict[str, Any], out_dir: Optional[str | Path] = None, *, progress: bool = True,
        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train and evaluate one configuration; returns the summary dict.

    With ``out_dir``, writes ``config.json``, ``metrics.jsonl`` (one line per eval round),
    ``summary.json`` and ``curves.png`` there.
    """
    from tqdm.auto import tqdm

    config_lib.validate(cfg)
    fed = load_data(cfg)
    if fed.num_clients != cfg["num_clients"]:
        raise config_lib.ConfigError(f"dataset built {fed.num_clients} clients, config asks {cfg['num_clients']}")
    task = build_task(cfg, fed)
    algorithm = build_algorithm(cfg, task)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        metrics_file = (out / "metrics.jsonl").open("w")
    start = time.time()
    train = jax.device_put(fed.train)
    test = jax.device_put(fed.test)
    state = federated.init(algorithm, jax.random.key(cfg["seed"]), train)
    round_fn = federated.make_round(algorithm, num_clients=cfg["num_clients"],
                                    participation=cfg["participation"], client_chunk=cfg["client_chunk"])
    evaluate = federated.make_evaluate(algorithm, task, batch_size=cfg["eval_batch_size"],
                                       client_chunk=cfg["client_chunk"])
    baseline = None
    if task.baseline is not None:
        baseline_eval = federated.make_evaluate(algorithm, task, batch_size=cfg["eval_batch_size"],
                                                client_chunk=cfg["client_chunk"],
                                                predict=lambda server, client, x: task.baseline(x))
        baseline = federated.summarize(task, baseline_eval(state, test))
    history = []
    faulty_total = 0
    bar = tqdm(range(cfg["rounds"]), desc=f"{cfg['algorithm']}/{cfg['task']}", disable=not progress)
    for r in bar:
        state, rm = round_fn(state, train)
        faulty_total += int(rm.faulty)
        if (r + 1) % cfg["eval_every"] == 0 or r + 1 == cfg["rounds"]:
            summary = federated.summarize(task, evaluate(state, test))
            line = {"round": r + 1, **{k: v for k, v in summary.items() if k != "clients"},
                    "train_loss": float(np.mean(np.asarray(rm.client_metrics["train_loss"]))),
                    "faulty_clients": int(rm.faulty), "clients": summary["clients"],
                    "elapsed_s": round(time.time() - start, 3)}
            history.append(line)
            if out is not None:
                metrics_file.write(json.dumps(line) + "\n")
                metrics_file.flush()
            bar.set_postfix(_fmt({k: v for k, v in line.items() if k != "clients"}))
    jax.block_until_ready(state)
    wall = time.time() - start
    key = task.primary_metric
    best = max(history, key=lambda h: h[key])
    strip = lambda h: {k: v for k, v in h.items() if k not in ("clients",)}
    summary = {
        "algorithm": cfg["algorithm"], "task": cfg["task"], "dataset": cfg["dataset"],
        "primary_metric": key, "best": strip(best), "last": strip(history[-1]),
        "last_clients": history[-1]["clients"], "faulty_clients_total": faulty_total,
        "wall_time_s": round(wall, 3), "rounds": cfg["rounds"],
        "params_sha256": federated.state_hash(state), "device": str(jax.devices()[0]),
        "config": cfg,
    }
    if baseline is not None:
        summary["baseline"] = {k: v for k, v in baseline.items() if k != "clients"}
        summary["baseline_clients"] = baseline["clients"]
    if out is not None:
        metrics_file.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        plot_curves(history, out / "curves.png", title=f"{cfg['algorithm']} / {cfg['dataset']}")
    log(result_table(summary))
    summary["state"] = state
    return summary


def result_table(summary: Dict[str, Any]) -> str:
    """A short text table of best and last metrics."""
    names = [k for k, v in summary["last"].items() if isinstance(v, float) and k != "elapsed_s"]
    rows = [f"{summary['algorithm']} on {summary['dataset']} ({summary['task']}), "
            f"{summary['rounds']} rounds in {summary['wall_time_s']:.1f} s"]
    rows.append(f"{'':10s}" + "".join(f"{n:>14s}" for n in names))
    for label in ("best", "last"):
        rows.append(f"{label + ' (r' + str(summary[label]['round']) + ')':10s}"
                    + "".join(f"{summary[label][n]:14.4f}" for n in names))
    if "baseline" in summary:
        rows.append(f"{'bicubic':10s}" + "".join(
            f"{summary['baseline'].get(n, float('nan')):14.4f}" for n in names))
    rows.append(f"params_sha256 {summary['params_sha256'][:16]}...")
    return "\n".join(rows)


def plot_curves(history, path: Path, *, title: str = "") -> None:
    """PNG of every float metric against the round."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [k for k, v in history[0].items() if isinstance(v, float) and k not in ("elapsed_s",)]
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    rounds = [h["round"] for h in history]
    for ax, name in zip(axes[0], names):
        ax.plot(rounds, [h[name] for h in history], marker="o", ms=3)
        ax.set_xlabel("round")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
