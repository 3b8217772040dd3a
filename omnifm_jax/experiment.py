"""Build a run from a config and execute it: data, task, backbone, algorithm, rounds,
evaluation, checkpoints, and the output directory (config.json, metrics.jsonl,
timings.jsonl, summary.json, curves.png, checkpoints/).

Everything is validated before any work: the config (:func:`omnifm_jax.config.validate`),
the backbone, the data (:func:`validate_data`) and, on resume, the checkpoint against
the config and the data (:func:`omnifm_jax.checkpoint.check_resumable`).

``metrics.jsonl`` holds only what the run computes (no wall time), so a resumed run
writes the same lines as an uninterrupted one; wall times go to ``timings.jsonl``.

Kept apart from ``cli.py`` so notebooks call :func:`run` directly.
"""
from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import jax
import numpy as np
import optax

from omnifm_jax import algorithms, checkpoint as ckpt_lib, config as config_lib, federated, rundir
from omnifm_jax.data.federation import Federation, validate_federation
from omnifm_jax.data.registry import load_federation
from omnifm_jax.registry import BACKBONES, TASKS


NO_LEARNING = ("the run learned nothing: no client update was accepted in any round (every participant was "
               "excluded as faulty, e.g. a diverging lr, or ran no local step); its model is the untrained one")


def build_backbone(cfg: Dict[str, Any]):
    kw = dict(cfg["backbone_kwargs"])
    try:
        return BACKBONES.get(cfg["backbone"])(**kw)
    except TypeError as e:
        raise config_lib.ConfigError(f"backbone_kwargs {kw} do not fit backbone {cfg['backbone']!r}: {e}") from None


def build_task(cfg: Dict[str, Any], fed):
    """The registered task's ``from_config(cfg, fed)``."""
    return TASKS.get(cfg["task"])(cfg, fed)


def build_algorithm(cfg: Dict[str, Any], task, *, checked: bool = True):
    """The config's algorithm. ``checked=False`` skips the hyper-parameter check, for values
    checked before and now traced (see omnifm_jax.sweep)."""
    factory = algorithms.get(cfg["algorithm"]) if checked else algorithms.unchecked(cfg["algorithm"])
    if cfg["optimizer"] == "adam":
        tx = optax.adam(cfg["lr"])
    else:
        tx = optax.sgd(cfg["lr"], momentum=cfg["momentum"] or None)
    return factory(task=task, backbone=build_backbone(cfg), optimizer=tx, local_epochs=cfg["local_epochs"],
                   batch_size=cfg["batch_size"], **config_lib.algorithm_kwargs(cfg))


def load_data(cfg: Dict[str, Any]):
    """The config's federation; with ``validation_fraction`` its test split is replaced by that
    fraction of each client's training samples (and they leave the training split), so that
    settings can be chosen without looking at the test split."""
    data_seed = cfg["seed"] if cfg.get("data_seed") is None else cfg["data_seed"]
    fed = load_federation(cfg["dataset"], num_clients=cfg["num_clients"], seed=data_seed,
                          **dict(cfg["dataset_kwargs"]))
    if cfg.get("validation_fraction") is not None:
        from omnifm_jax.data.federation import validation_split

        fed = validation_split(fed, cfg["validation_fraction"], seed=data_seed)
    return fed


def validate_data(cfg: Dict[str, Any], fed: Federation) -> None:
    """Check a federation before any work; raises ``ValueError`` naming the problem.

    Images must be ``uint8`` (float images, with or without NaN, are refused: the engine
    normalises ``uint8`` itself), labels in range, no client without training samples or
    without a test sample,
    train/test consistent (:func:`~omnifm_jax.data.federation.validate_federation`),
    the number of clients the config asks for, and images the backbone can take.
    """
    if not isinstance(fed, Federation):
        raise ValueError(f"data: expected a Federation, got {type(fed).__name__}")
    for split in ("train", "test"):
        arrays = getattr(fed, split)
        for name in ("x", "y"):
            a = np.asarray(getattr(arrays, name))
            if np.issubdtype(a.dtype, np.floating):
                bad = int(np.count_nonzero(~np.isfinite(a)))
                what = "images" if name == "x" or a.ndim == 5 else "labels"
                need = "uint8" if what == "images" else "int32"
                hint = ("the engine normalises uint8 images itself" if what == "images"
                        else "labels are class ids, padding -1")
                raise ValueError(f"data: {split}.{name} {what} must be {need}, got {a.dtype}"
                                 + (f" with {bad} NaN/Inf values" if bad else "") + f" (convert them first; {hint})")
    validate_federation(fed)
    if fed.num_clients != cfg["num_clients"]:
        raise config_lib.ConfigError(f"dataset built {fed.num_clients} clients, config asks {cfg['num_clients']}")
    no_test = np.flatnonzero(np.asarray(fed.test.n) == 0)
    if no_test.size:
        # Every client is evaluated on its own held-out samples; one with none would drop out
        # of the per-client means silently.
        raise ValueError(f"data: client(s) {no_test.tolist()} have no test sample; every evaluated client needs "
                         "one (use fewer clients, a larger min_size, or test_fraction > 0)")
    if cfg["task"] == "classification" and fed.num_classes >= 2:
        present = np.unique(np.asarray(fed.train.y)[np.asarray(fed.train.y) >= 0])
        if present.size < 2:
            raise ValueError(f"data: the training labels hold only class(es) {present.tolist()}; "
                             "classification needs at least two")
    _check_backbone_input(cfg, tuple(fed.train.x.shape[1:]))
    _check_local_work(cfg, np.asarray(fed.train.n))


def _check_local_work(cfg: Dict[str, Any], n: np.ndarray) -> None:
    """drop_last with clients smaller than a batch: such clients never train.

    All of them: nothing would ever train, so stop. Some of them: say which (PFLlib does
    the same silently: their loader yields no batch, they upload the model they got).
    """
    b = cfg["batch_size"]
    if n.size == 0:
        return
    if not cfg["drop_last"]:
        # Each step is padded to batch_size: a batch far beyond every client only costs memory
        # (batch_size=100000 asks XLA for tens of GB) and trains exactly as batch_size=max n_k.
        if b > int(n.max()):
            raise config_lib.ConfigError(
                f"batch_size={b} is larger than every client's training set (largest: {int(n.max())} samples); "
                f"with drop_last=False each client would run one step on all its samples, which "
                f"batch_size={int(n.max())} does exactly: set batch_size <= {int(n.max())}")
        return
    small = np.flatnonzero(n < b)
    if small.size == n.size:
        raise config_lib.ConfigError(
            f"drop_last=True and batch_size={b}, but every client has fewer than {b} training samples "
            f"(largest: {int(n.max())}): no client would ever train; lower batch_size or set drop_last=False")
    if small.size:
        warnings.warn(f"drop_last=True, batch_size={b}: client(s) {small.tolist()} have fewer than {b} training "
                      f"samples and run no local step (they still upload the model they received, weighted "
                      f"by n_k, as in PFLlib)", stacklevel=3)


def _check_backbone_input(cfg: Dict[str, Any], image_shape) -> None:
    backbone = build_backbone(cfg)
    x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), np.float32)
    try:
        tokens = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.key(0), x)[0], x)
    except Exception as exc:  # flax raises many kinds for an input that does not fit
        raise config_lib.ConfigError(f"backbone {cfg['backbone']!r} cannot take images of shape "
                                     f"{tuple(image_shape)} (too small for its convolutions and pooling?): "
                                     f"{type(exc).__name__}: {exc}") from None
    if any(d == 0 for d in jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda t: t.size, tokens))):
        raise config_lib.ConfigError(f"images of shape {tuple(image_shape)} are too small for backbone "
                                     f"{cfg['backbone']!r} (it produces no features)")


def _fmt(metrics: Dict[str, Any]) -> Dict[str, str]:
    return {k: f"{v:.4f}" for k, v in metrics.items() if isinstance(v, float)}


def _reporting_mean(values, weights) -> Optional[float]:
    """Mean of a per-participant metric over the participants that reported (weight > 0)."""
    values, ok = np.asarray(values, np.float64), np.asarray(weights) > 0
    return float(np.mean(values[ok])) if ok.any() else None


def make_evaluation(cfg: Dict[str, Any], algorithm, task, fed: Federation, train, test):
    """``(evaluation_line, baseline)`` of a run.

    ``evaluation_line(state, r, rm)`` is the metrics line of round ``r`` (``rm``: that
    round's :class:`~omnifm_jax.federated.RoundMetrics`, or None for round 0): the task's
    metrics over every client's test samples with its personalised model, PFLlib's train
    loss, and the round's participation counts. ``baseline(state)`` is the task's model-free
    reference on the test samples (None without one).
    """
    evaluate = federated.make_evaluate(algorithm, task, fed.test, batch_size=cfg["eval_batch_size"])
    train_loss_of = None
    if cfg["eval_train_loss"]:
        train_loss_of = federated.make_evaluate(algorithm, task, fed.train, batch_size=cfg["eval_batch_size"],
                                                stats=lambda pred, t: {"loss": task.loss(pred, t)})

    def baseline(state):
        if task.baseline is None:
            return None
        baseline_eval = federated.make_evaluate(algorithm, task, fed.test, batch_size=cfg["eval_batch_size"],
                                                predict=lambda server, client, x, mask: task.baseline(x))
        return federated.summarize(task, baseline_eval(state, test), fed.test.n)

    diagnose = None
    if getattr(algorithm, "inspect", None) is not None and cfg.get("diagnostics", 0) != 0:
        from omnifm_jax import diagnostics

        diagnose = diagnostics.make_diagnostics(algorithm, task, fed.test, seed=cfg["seed"])

    def evaluation_line(state, r, rm):
        summary = federated.summarize(task, evaluate(state, test), fed.test.n)
        line = {"round": r, **{k: v for k, v in summary.items() if k != "clients"}}
        if diagnose is not None:
            from omnifm_jax import diagnostics

            if diagnostics.diagnostics_due(cfg["diagnostics"], cfg["algorithm"], r, r == cfg["rounds"]):
                line.update(diagnose(state))
        if train_loss_of is not None:
            # PFLlib's "Averaged Train Loss": the current models' loss over every client's
            # training samples (eval mode), sample-weighted.
            line["train_loss"] = federated.mean_loss(train_loss_of(state, train))
        if rm is not None:
            # The participants' mean loss over their local steps of this round.
            line["local_loss"] = _reporting_mean(rm.client_metrics["train_loss"], rm.weights)
            line.update(faulty_clients=int(rm.faulty), dropped_clients=int(rm.dropped),
                        participants=int(rm.active), useful_client_steps=int(rm.useful_steps),
                        executed_client_steps=int(rm.executed_steps))
        line["clients"] = summary["clients"]
        return line

    return evaluation_line, baseline


def run(cfg: Dict[str, Any], out_dir: Optional[str | Path] = None, *, progress: bool = True,
        log: Callable[[str], None] = print, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Train and evaluate one configuration; returns the summary dict (plus ``state``, the
    final :class:`~omnifm_jax.federated.FederatedState`, and ``history``, the metrics lines).

    With ``out_dir``, writes ``config.json``, ``metrics.jsonl`` (one line per eval round),
    ``timings.jsonl``, ``summary.json`` and ``curves.png`` there, and (``checkpoint_every
    > 0``) a checkpoint every ``checkpoint_every`` rounds and after the last round under
    ``out_dir/checkpoints``. With ``resume=True`` the run continues from the newest good
    checkpoint there (``rounds`` may be raised to train further); the result is
    bit-identical to an uninterrupted run.

    The run owns ``out_dir`` (:mod:`omnifm_jax.rundir`): a directory another live run holds,
    or one that holds an earlier run's outputs, is refused before any work, unless
    ``resume`` continues that run or ``overwrite`` replaces its outputs (as a whole).

    ``summary["learned"]`` is False when no client update was accepted in any round (every
    participant faulty, or none ran a step): the model is the untrained one, and a warning
    says so (the CLI exits with 1).

    Raises:
      ConfigError: invalid config, or a checkpoint that does not fit it.
      ValueError: invalid data.
      CheckpointError: ``resume`` without a usable checkpoint.
      RunDirError: ``out_dir`` cannot be this run's (see :mod:`omnifm_jax.rundir`).
    """
    config_lib.validate(cfg)
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise config_lib.ConfigError("resume needs the output directory of the run to continue")
    if out is not None:
        rundir.check(out, resume=resume, overwrite=overwrite)
    if cfg["shard_clients"] and cfg["num_clients"] % jax.device_count():
        raise config_lib.ConfigError(f"shard_clients needs num_clients divisible by the {jax.device_count()} "
                                     f"devices, got num_clients={cfg['num_clients']}")
    build_backbone(cfg)
    fed = load_data(cfg)
    validate_data(cfg, fed)
    task = build_task(cfg, fed)
    algorithm = build_algorithm(cfg, task)
    if out is None:
        return _run(cfg, None, fed, task, algorithm, progress=progress, log=log, resume=resume)
    with rundir.RunDirectory(out, resume=resume, overwrite=overwrite):
        return _run(cfg, out, fed, task, algorithm, progress=progress, log=log, resume=resume)


def _run(cfg, out: Optional[Path], fed, task, algorithm, *, progress, log, resume) -> Dict[str, Any]:
    """:func:`run` after every check, with ``out`` (if any) owned by this run."""
    from tqdm.auto import tqdm

    ckpt = None
    ckpt_dir = out / ckpt_lib.CHECKPOINT_SUBDIR if out is not None else None
    if out is not None and (cfg["checkpoint_every"] > 0 or resume):
        ckpt = ckpt_lib.RunCheckpointer(ckpt_dir, keep=cfg["checkpoint_keep"])
        existing = ckpt.steps()
        if not resume and existing:
            ckpt.close()
            raise config_lib.ConfigError(
                f"{ckpt_dir} already holds checkpoints (rounds {existing}); resume that run "
                "(--resume) or choose another output directory")
    data_sha = ckpt_lib.data_fingerprint(fed.train, fed.test) if ckpt is not None else None
    train = jax.device_put(fed.train)
    test = jax.device_put(fed.test)
    history, resumed_from = [], None
    totals = {"faulty": 0, "dropped": 0, "accepted_updates": 0, "useful_steps": 0}
    # federated.init compiles itself, without backend optimisation on CPU (it runs once);
    # an outer jit would trace through it and compile it fully optimised, which takes longer.
    init_fn = lambda key: federated.init(algorithm, key, train, shared_init=cfg["shared_init"])  # noqa: E731
    init_key = jax.random.key(cfg["seed"])
    if resume:
        template = jax.eval_shape(init_fn, init_key)
        try:
            state, meta = ckpt.restore_latest(template, check=lambda m: ckpt_lib.check_resumable(
                m, cfg, data_sha256=data_sha, where=str(ckpt_dir)))
        except BaseException:
            ckpt.close()
            raise
        history = meta["history"]
        totals = {"accepted_updates": None, "useful_steps": None, **meta["totals"]}  # None: older checkpoint
        resumed_from = int(meta["round"])
        log(f"resuming from the checkpoint of round {resumed_from} in {ckpt_dir}")
    else:
        state = init_fn(init_key)
    if cfg["shard_clients"]:
        from omnifm_jax import sharding

        mesh = sharding.client_mesh()
        # Client states are split over the devices; the ragged data is replicated.
        train, test = sharding.replicate(train, mesh), sharding.replicate(test, mesh)
        state = sharding.shard_state(state, mesh)
    start_round = int(state.round)
    if out is not None:
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        # The lines up to the checkpoint (later ones of a killed run are redone), as a new file
        # renamed over the old one; then this run, the directory's only writer, appends.
        rundir.replace_lines(out / "metrics.jsonl", [json.dumps(line) for line in history])
        metrics_file = (out / "metrics.jsonl").open("a")
        timings_file = (out / "timings.jsonl").open("a" if resume else "w")
    start = time.time()
    round_fn = federated.make_round(algorithm, fed.train, participation=cfg["participation"],
                                    client_chunk=cfg["client_chunk"], dropout=cfg["dropout"],
                                    random_join=cfg["random_join"],
                                    dropped_keep_update=cfg["dropped_keep_update"])
    evaluation_line, baseline_of = make_evaluation(cfg, algorithm, task, fed, train, test)
    baseline = baseline_of(state)

    def record(line):
        history.append(line)
        if out is not None:
            metrics_file.write(json.dumps(line) + "\n")
            metrics_file.flush()
        bar.set_postfix(_fmt({k: v for k, v in line.items() if k != "clients" and not k.startswith("diag/")}))

    every = cfg["checkpoint_every"]
    bar = tqdm(range(start_round, cfg["rounds"]), initial=start_round, total=cfg["rounds"],
               desc=f"{cfg['algorithm']}/{cfg['task']}", disable=not progress)
    if start_round == 0:
        record(evaluation_line(state, 0, None))  # round 0: before any training, as PFLlib
    for r in bar:
        state, rm = round_fn(state, train)
        faulty, dropped = int(rm.faulty), int(rm.dropped)
        totals["faulty"] += faulty
        totals["dropped"] += dropped
        if totals["accepted_updates"] is not None and rm.useful_steps is not None:
            totals["accepted_updates"] += int(np.count_nonzero(np.asarray(rm.weights) > 0))
            totals["useful_steps"] += int(rm.useful_steps)
        else:  # a round function that does not count steps: whether the run learned is unknown
            totals["accepted_updates"] = totals["useful_steps"] = None
        if faulty:
            log(f"round {r + 1}: {faulty} client(s) sent a non-finite update and were left out")
        last = r + 1 == cfg["rounds"]
        if (r + 1) % cfg["eval_every"] == 0 or last:
            record(evaluation_line(state, r + 1, rm))
        if ckpt is not None and every > 0 and ((r + 1) % every == 0 or last):
            ckpt.save(state, {"config": cfg, "data_sha256": data_sha, "history": history, "totals": totals})
        if out is not None:
            timings_file.write(json.dumps({"round": r + 1, "elapsed_s": round(time.time() - start, 3),
                                           "resumed_from": resumed_from}) + "\n")
            timings_file.flush()
    jax.block_until_ready(state)
    wall = time.time() - start
    if not history:
        raise ckpt_lib.CheckpointError(f"nothing to do: the checkpoint is at round {start_round} = rounds "
                                       "and holds no metric history")
    key = task.primary_metric
    best = max(history, key=lambda h: h[key])
    # None when a pre-existing checkpoint did not count accepted updates (cannot tell).
    learned = None if totals["accepted_updates"] is None else bool(
        totals["accepted_updates"] > 0 and totals["useful_steps"] > 0)
    if learned is False:
        warnings.warn(NO_LEARNING, stacklevel=2)
    strip = lambda h: {k: v for k, v in h.items() if k not in ("clients",)}
    summary = {
        "algorithm": cfg["algorithm"], "task": cfg["task"], "dataset": cfg["dataset"],
        "primary_metric": key, "best": strip(best), "last": strip(history[-1]),
        "last_clients": history[-1]["clients"], "faulty_clients_total": totals["faulty"],
        "dropped_clients_total": totals["dropped"], "resumed_from_round": resumed_from,
        "wall_time_s": round(wall, 3), "rounds": cfg["rounds"],
        "accepted_updates_total": totals["accepted_updates"], "useful_client_steps_total": totals["useful_steps"],
        "learned": learned,
        "params_sha256": federated.state_hash(state), "device": str(jax.devices()[0]),
        "config": cfg,
    }
    if baseline is not None:
        summary["baseline"] = {k: v for k, v in baseline.items() if k != "clients"}
        summary["baseline_clients"] = baseline["clients"]
    if ckpt is not None:
        ckpt.close()
    if out is not None:
        metrics_file.close()
        timings_file.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        plot_curves(history, out / "curves.png", title=f"{cfg['algorithm']} / {cfg['dataset']}")
    log(result_table(summary))
    summary["state"] = state
    summary["history"] = history  # every metrics line (as in metrics.jsonl); not in summary.json
    return summary


def _num(v) -> float:
    return v if isinstance(v, float) else float("nan")


def result_table(summary: Dict[str, Any]) -> str:
    """A short text table of best and last metrics."""
    names = [k for k, v in summary["last"].items() if isinstance(v, float) and not k.startswith("diag/")]
    rows = [f"{summary['algorithm']} on {summary['dataset']} ({summary['task']}), "
            f"{summary['rounds']} rounds in {summary['wall_time_s']:.1f} s"]
    rows.append(f"{'':10s}" + "".join(f"{n:>14s}" for n in names))
    for label in ("best", "last"):
        rows.append(f"{label + ' (r' + str(summary[label]['round']) + ')':10s}"
                    + "".join(f"{_num(summary[label].get(n)):14.4f}" for n in names))
    if "baseline" in summary:
        rows.append(f"{'bicubic':10s}" + "".join(
            f"{summary['baseline'].get(n, float('nan')):14.4f}" for n in names))
    rows.append(f"params_sha256 {summary['params_sha256'][:16]}...")
    return "\n".join(rows)


def plot_curves(history, path: Path, *, title: str = "") -> None:
    """PNG of every float metric against the round.

    Uses a standalone ``Figure`` (no pyplot), so the caller's matplotlib backend and open
    figures are left alone (notebooks keep showing their own plots).
    """
    from matplotlib.figure import Figure

    names = [k for k in dict.fromkeys(k for h in history for k in h)  # diag/* curves: omnifm_mechanism study
             if k != "round" and not k.startswith("diag/") and any(isinstance(h.get(k), float) for h in history)]
    fig = Figure(figsize=(4 * len(names), 3))
    axes = fig.subplots(1, len(names), squeeze=False)
    rounds = [h["round"] for h in history]
    for ax, name in zip(axes[0], names):
        ax.plot(rounds, [h[name] if isinstance(h.get(name), float) else float("nan") for h in history],
                marker="o", ms=3)
        ax.set_xlabel("round")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
