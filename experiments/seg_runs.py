"""Shared runner of the segmentation experiment scripts (``table6_seg``, ``fedmepd_table``):
one config + algorithm through :func:`omnifm_jax.experiment.setup` and
:func:`omnifm_jax.experiment.run`, with its metrics history and the federation it ran on."""
from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Sequence

from omnifm_jax import config as config_lib
from omnifm_jax import experiment


def run(config_name: str, algorithm: str, rounds: int, overrides: Sequence[str] = (),
        algorithm_sets: Sequence[str] = ()) -> dict:
    """Run ``config_name`` with ``algorithm`` for ``rounds`` rounds (no checkpoints, no
    train-loss evaluation). Switching to another algorithm than the config's resets
    ``algorithm_kwargs`` (the config's are that algorithm's), then ``algorithm_sets`` apply.

    Returns ``config``, ``wall_s``, ``summary`` (as ``experiment.run`` returns it),
    ``history`` (one dict per evaluated round) and ``fed`` (the federation)."""
    base = config_lib.load_config(config_name)
    sets = [f"rounds={rounds}", "eval_train_loss=False", "checkpoint_every=0", *overrides]
    if algorithm != base["algorithm"]:
        sets = [f"algorithm={algorithm}", *algorithm_sets, *sets]
    cfg = config_lib.apply_overrides(base, sets)
    t0 = time.time()
    prepared = experiment.setup(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        summary = experiment.run(prepared, tmp, progress=False, log=lambda s: None)
        wall = time.time() - t0
        history = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    return {"config": cfg, "wall_s": round(wall, 1), "summary": summary, "history": history, "fed": prepared.fed}


def per_client(summary: dict, names: Sequence[str], keys: Sequence[str]) -> dict:
    """The last round's ``keys`` of each client, by client name."""
    return {n: {k: c[k] for k in keys if k in c} for n, c in zip(names, summary["last_clients"])}


def write(json_path, md_path, payload: dict, markdown: str) -> None:
    Path(json_path).parent.mkdir(parents=True, exist_ok=True)
    Path(json_path).write_text(json.dumps(payload, indent=2, default=list))
    Path(md_path).write_text(markdown)
