"""Build a run from a config and execute it: data, task, backbone, algorithm, rounds,
evaluation, checkpoints, and the output directory (config.json, metrics.jsonl,
timings.jsonl, summary.json, curves.png, checkpoints/).

ONE run path: :func:`setup` turns a config into a :class:`Setup` (validated config,
federation, task, backbone, algorithm), checking everything before any work: the config
(:func:`omnifm_jax.config.validate`), the backbone, the data (:func:`validate_data`, which
asks the task whether it takes them) and, on resume, the checkpoint against the config and
the data (:func:`omnifm_jax.checkpoint.check_resumable`). :func:`run` (the CLI's ``train``),
:func:`omnifm_jax.sweep.run_sweep`, :func:`omnifm_jax.reproduce.check_data` and the
scripts under ``experiments/`` all start from it; :func:`run_summary` is the one summary of
a run.

``metrics.jsonl`` holds only what the run computes (no wall time), so a resumed run
writes the same lines as an uninterrupted one; wall times go to ``timings.jsonl``.

Kept apart from ``cli.py`` so notebooks call :func:`setup` and :func:`run` directly.
"""
from __future__ import annotations

import inspect
import json
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import jax
import numpy as np
import optax

from omnifm_jax import algorithms, distributed, federated, finetune, rundir, tasks
from omnifm_jax import checkpoint as ckpt_lib
from omnifm_jax import config as config_lib
from omnifm_jax.data.federation import Federation, ServerData, validate_federation
from omnifm_jax.data.registry import load_federation
from omnifm_jax.models import lora
from omnifm_jax.registry import BACKBONES

__all__ = ["NO_LEARNING", "Setup", "setup", "run", "run_summary", "best_line", "new_totals", "count_round",
           "build_backbone", "build_task", "build_algorithm", "load_data", "validate_data", "check_devices",
           "make_evaluation", "result_table", "plot_curves"]


NO_LEARNING = ("the run learned nothing: no client update was accepted in any round (every participant was "
               "excluded as faulty, e.g. a diverging lr, or ran no local step); its model is the untrained one")


class Setup(NamedTuple):
    """Everything a run needs before its first round, checked (:func:`setup`).

    Attributes:
      cfg: the validated config.
      fed: the federation (``fed.server``: the server's split, if the data set has one).
      task: the task, built for the federation.
      backbone: the backbone module.
      algorithm: the federated algorithm (given ``fed.server`` if its factory takes ``server``).
      init: with ``init_from``: ``(source model, {target path: source path})`` that the first
        round starts from (:mod:`omnifm_jax.finetune`), checked against this model; else None.
    """
    cfg: Dict[str, Any]
    fed: Federation
    task: tasks.Task
    backbone: Any
    algorithm: algorithms.FederatedAlgorithm
    init: Optional[Tuple[Any, Dict[str, str]]] = None


def setup(cfg: Dict[str, Any], *, fed: Optional[Federation] = None, resume: bool = False) -> Setup:
    """The one run path from a config to what the rounds need: validate the config, build
    the backbone, load the data (or take ``fed``), validate it (the task must accept it,
    :func:`validate_data`), build the task and the algorithm.

    Args:
      cfg: a full config (``config.load_config`` + overrides).
      fed: a federation to use instead of loading the config's (validated all the same).
      resume: the setup of a run that continues from its own checkpoint: ``init_from`` is not
        read (nothing is loaded from it; the source may be gone).

    Raises:
      ConfigError: invalid config, or data that do not fit it or its task.
      ValueError: invalid data.
    """
    config_lib.validate(cfg)
    check_devices(cfg)
    backbone = build_backbone(cfg)
    fed = load_data(cfg) if fed is None else fed
    validate_data(cfg, fed)
    task = build_task(cfg, fed)
    algorithm = build_algorithm(cfg, task, backbone=backbone, server=fed.server)
    return Setup(cfg, fed, task, backbone, algorithm, check_finetuning(cfg, fed, algorithm, load_source=not resume))


def check_finetuning(cfg: Dict[str, Any], fed: Federation, algorithm, *,
                     load_source: bool = True) -> Optional[Tuple[Any, Dict[str, str]]]:
    """``init_from`` / ``trainable`` / ``lora`` checked before any training
    (:mod:`omnifm_jax.finetune`): the source model loads, was not trained on this run's test
    images, and has every selected parameter in this model's shape; every ``trainable``
    pattern names a parameter; every ``lora`` target adapts a dense layer.
    ``load_source=False`` (a resumed run) checks ``trainable`` and ``lora`` only.
    Returns :attr:`Setup.init`."""
    if cfg["init_from"] is None and cfg["trainable"] is None and cfg["lora"] is None:
        return None
    abstract = jax.eval_shape(lambda k: federated.init(algorithm, k, fed.train, shared_init=cfg["shared_init"]),
                              jax.random.key(0))
    finetune.check_trainable(cfg["trainable"], abstract)
    finetune.check_lora(cfg["lora"], abstract)
    if cfg["init_from"] is None or not load_source:
        return None
    source = finetune.load_source_params(cfg["init_from"])
    finetune.check_vocabularies(source.fed.info, fed.info, where=cfg["init_from"])
    finetune.check_disjoint(source.fed.train.x, fed.train.x, fed.test.x, where=cfg["init_from"],
                            channels=fed.info.get("image_channels"))
    rules = finetune.parse_rules(cfg["init_params"])
    return source, finetune.plan_init(abstract, source, rules, where=cfg["init_from"])


def check_devices(cfg: Dict[str, Any]) -> None:
    """``shard_clients`` needs ``num_clients`` divisible by the devices, and a run over several
    processes needs ``shard_clients`` (ConfigError)."""
    if jax.process_count() > 1 and not cfg["shard_clients"]:
        raise config_lib.ConfigError(f"this process is one of {jax.process_count()} (a multi-process run): "
                                     "the clients must be split over their devices, set shard_clients=True")
    if cfg["shard_clients"] and cfg["num_clients"] % jax.device_count():
        raise config_lib.ConfigError(f"shard_clients needs num_clients divisible by the {jax.device_count()} "
                                     f"devices, got num_clients={cfg['num_clients']}")


def build_backbone(cfg: Dict[str, Any]):
    """The config's backbone module (ConfigError when ``backbone_kwargs`` do not fit it), with
    the ``lora`` adapters when the config asks for them."""
    kw = dict(cfg["backbone_kwargs"])
    try:
        backbone = BACKBONES.get(cfg["backbone"])(**kw)
    except TypeError as e:
        raise config_lib.ConfigError(f"backbone_kwargs {kw} do not fit backbone {cfg['backbone']!r}: {e}") from None
    return lora.wrap(backbone, cfg.get("lora"))  # LoRA adapters (omnifm_jax/models/lora.py), if asked


def build_task(cfg: Dict[str, Any], fed):
    """The registered task's ``from_config(cfg, fed)``, which first checks that the task
    takes the federation (:func:`omnifm_jax.tasks.check_data`)."""
    return tasks.build(cfg, fed)


def _takes_server(name: str) -> bool:
    return "server" in inspect.signature(algorithms.unchecked(name)).parameters


def build_algorithm(cfg: Dict[str, Any], task, *, checked: bool = True, server: Optional[ServerData] = None,
                    backbone=None):
    """The config's algorithm. Its factory gets the engine's arguments, the run values it
    takes (``config.algorithm_kwargs``), ``algorithm_kwargs`` and, if its signature has
    ``server``, the federation's server split ``server``. ``checked=False`` skips the
    hyper-parameter check, for values checked before and now traced (see omnifm_jax.sweep);
    ``backbone``: a module built before (default: :func:`build_backbone`)."""
    name = cfg["algorithm"]
    kw = config_lib.algorithm_kwargs(cfg)
    if checked:  # as the registered factory checks itself (the factory below is the raw one)
        algorithms.check(name, cfg["algorithm_kwargs"], {"num_clients": kw.get("num_clients")})
    if _takes_server(name):
        kw["server"] = server
    if cfg["optimizer"] == "adam":
        tx = optax.adam(cfg["lr"])
    else:
        tx = optax.sgd(cfg["lr"], momentum=cfg["momentum"] or None)
    tx = finetune.frozen_optimizer(tx, cfg["trainable"])
    return algorithms.unchecked(name)(task=task, backbone=build_backbone(cfg) if backbone is None else backbone,
                                      optimizer=tx, local_epochs=cfg["local_epochs"], batch_size=cfg["batch_size"],
                                      **kw)


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
    """Check a federation before any work; raises ``ValueError`` (or ``ConfigError``) naming
    the problem.

    Images must be ``uint8`` (float images, with or without NaN, are refused: the engine
    normalises ``uint8`` itself), labels in range, no client without training samples or
    without a test sample,
    train/test consistent (:func:`~omnifm_jax.data.federation.validate_federation`),
    the number of clients the config asks for, data the task takes (its kind of targets
    and its own checks, :func:`omnifm_jax.tasks.check_data`), and images the backbone can
    take.
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
    tasks.check_data(cfg, fed)
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


def run(cfg: Union[Dict[str, Any], Setup], out_dir: Optional[str | Path] = None, *, progress: bool = True,
        log: Callable[[str], None] = print, resume: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Train and evaluate one configuration; returns the summary dict (:func:`run_summary`,
    plus ``state``, the final :class:`~omnifm_jax.federated.FederatedState`, and
    ``history``, the metrics lines).

    ``cfg``: a config, or the :class:`Setup` of one (from :func:`setup`, e.g. to look at
    the federation first; it is not built again).

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
    prepared = cfg if isinstance(cfg, Setup) else None
    cfg = prepared.cfg if prepared is not None else cfg
    config_lib.validate(cfg)
    out = Path(out_dir) if out_dir is not None else None
    if resume and out is None:
        raise config_lib.ConfigError("resume needs the output directory of the run to continue")
    if out is not None:  # in a multi-process run, the primary process owns the directory
        distributed.from_primary(lambda: (rundir.check(out, resume=resume, overwrite=overwrite), None),
                                 what=f"checking the output directory {out}")
    if prepared is None:
        prepared = setup(cfg, resume=resume)
    if out is None or not distributed.is_primary():
        return _run(prepared, out, progress=progress, log=log, resume=resume)
    with rundir.RunDirectory(out, resume=resume, overwrite=overwrite):
        return _run(prepared, out, progress=progress, log=log, resume=resume)


def count_round(totals: Dict[str, Any], rm) -> None:
    """Add a round's :class:`~omnifm_jax.federated.RoundMetrics` to a run's ``totals``."""
    totals["faulty"] += int(rm.faulty)
    totals["dropped"] += int(rm.dropped)
    if totals["accepted_updates"] is not None and rm.useful_steps is not None:
        totals["accepted_updates"] += int(np.count_nonzero(np.asarray(rm.weights) > 0))
        totals["useful_steps"] += int(rm.useful_steps)
    else:  # a round function that does not count steps: whether the run learned is unknown
        totals["accepted_updates"] = totals["useful_steps"] = None


def new_totals() -> Dict[str, Any]:
    """A run's round totals before its first round (:func:`count_round` adds to them)."""
    return {"faulty": 0, "dropped": 0, "accepted_updates": 0, "useful_steps": 0}


def _run(prepared: Setup, out: Optional[Path], *, progress, log, resume) -> Dict[str, Any]:
    """:func:`run` after every check, with ``out`` (if any) owned by this run.

    In a run over several processes every process calls this; only the primary one
    (:func:`omnifm_jax.distributed.is_primary`) writes ``out`` and its checkpoints, and on
    resume it reads the checkpoint and sends the state to the others."""
    from tqdm.auto import tqdm

    cfg, fed, task, algorithm = prepared.cfg, prepared.fed, prepared.task, prepared.algorithm
    write = out is not None and distributed.is_primary()
    if not distributed.is_primary():
        progress, log = False, lambda _: None

    ckpt = None
    ckpt_dir = out / ckpt_lib.CHECKPOINT_SUBDIR if out is not None else None
    checkpointing = out is not None and (cfg["checkpoint_every"] > 0 or resume)

    def open_checkpoints():
        nonlocal ckpt
        ckpt = ckpt_lib.RunCheckpointer(ckpt_dir, keep=cfg["checkpoint_keep"])
        existing = ckpt.steps()
        if not resume and existing:
            ckpt.close()
            raise config_lib.ConfigError(
                f"{ckpt_dir} already holds checkpoints (rounds {existing}); resume that run "
                "(--resume) or choose another output directory")
        return None, None

    if checkpointing:
        distributed.from_primary(open_checkpoints, what=f"opening the checkpoints in {ckpt_dir}")
    data_sha = ckpt_lib.data_fingerprint(fed.train, fed.test) if checkpointing else None
    train = jax.device_put(fed.train)
    test = jax.device_put(fed.test)
    history, resumed_from = [], None
    totals = new_totals()
    # federated.init compiles itself, without backend optimisation on CPU (it runs once);
    # an outer jit would trace through it and compile it fully optimised, which takes longer.
    init_fn = lambda key: federated.init(algorithm, key, train, shared_init=cfg["shared_init"])  # noqa: E731
    init_key = jax.random.key(cfg["seed"])
    if resume:
        template = jax.eval_shape(init_fn, init_key)

        def restore():
            try:
                restored, meta = ckpt.restore_latest(template, check=lambda m: ckpt_lib.check_resumable(
                    m, cfg, data_sha256=data_sha, where=str(ckpt_dir)))
            except BaseException:
                ckpt.close()
                raise
            return ckpt_lib.flatten_state(restored)[0], meta

        arrays, meta = distributed.from_primary(restore, what=f"resuming from {ckpt_dir}",
                                                template=ckpt_lib.flatten_state(template)[0])
        state = ckpt_lib.unflatten_state(template, arrays, meta["leaves"])
        history = meta["history"]
        totals = {"accepted_updates": None, "useful_steps": None, **meta["totals"]}  # None: older checkpoint
        resumed_from = int(meta["round"])
        log(f"resuming from the checkpoint of round {resumed_from} in {ckpt_dir}")
    else:
        state = init_fn(init_key)
        if prepared.init is not None:
            source, mapping = prepared.init
            state = finetune.apply_init(state, source, mapping)
            log(finetune.describe(sorted(mapping), source, cfg["init_from"]))
    if cfg["shard_clients"]:
        from omnifm_jax import sharding

        mesh = sharding.client_mesh()
        # Client states are split over the devices; the ragged data is replicated.
        train, test = sharding.replicate(train, mesh), sharding.replicate(test, mesh)
        state = sharding.shard_state(state, mesh)
    start_round = int(state.round)
    if write:
        (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        # The lines up to the checkpoint (later ones of a killed run are redone), as a new file
        # renamed over the old one; then this run, the directory's only writer, appends.
        rundir.replace_lines(out / "metrics.jsonl", [json.dumps(line) for line in history])
        metrics_file = (out / "metrics.jsonl").open("a")
        timings_file = (out / "timings.jsonl").open("a" if resume else "w")
    start = time.time()
    round_fn = federated.make_round(algorithm, fed.train, participation=cfg["participation"],
                                    client_chunk=cfg["client_chunk"], client_dropout=cfg["client_dropout"],
                                    random_join=cfg["random_join"],
                                    dropped_keep_update=cfg["dropped_keep_update"])
    evaluation_line, baseline_of = make_evaluation(cfg, algorithm, task, fed, train, test)
    baseline = baseline_of(state)

    def record(line):
        history.append(line)
        if write:
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
        faulty = int(rm.faulty)
        count_round(totals, rm)
        if faulty:
            log(f"round {r + 1}: {faulty} client(s) sent a non-finite update and were left out")
        last = r + 1 == cfg["rounds"]
        if (r + 1) % cfg["eval_every"] == 0 or last:
            record(evaluation_line(state, r + 1, rm))
        if checkpointing and every > 0 and ((r + 1) % every == 0 or last):
            host_state = distributed.to_host(state)  # every process takes part; the primary writes
            if ckpt is not None:
                ckpt.save(host_state, {"config": cfg, "data_sha256": data_sha, "history": history,
                                       "totals": totals})
        if write:
            timings_file.write(json.dumps({"round": r + 1, "elapsed_s": round(time.time() - start, 3),
                                           "resumed_from": resumed_from}) + "\n")
            timings_file.flush()
    jax.block_until_ready(state)
    wall = time.time() - start
    if not history:
        raise ckpt_lib.CheckpointError(f"nothing to do: the checkpoint is at round {start_round} = rounds "
                                       "and holds no metric history")
    summary = run_summary(cfg, task, history, state, totals, wall_time_s=wall, baseline=baseline,
                          resumed_from=resumed_from)
    if summary["learned"] is False:
        warnings.warn(NO_LEARNING, stacklevel=2)
    if ckpt is not None:
        ckpt.close()
    if write:
        metrics_file.close()
        timings_file.close()
        (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
        plot_curves(history, out / "curves.png", title=f"{cfg['algorithm']} / {cfg['dataset']}")
    log(result_table(summary))
    summary["state"] = state
    summary["history"] = history  # every metrics line (as in metrics.jsonl); not in summary.json
    return summary


def best_line(history: List[Dict[str, Any]], task) -> Dict[str, Any]:
    """PFLlib's best round: the metrics line with the best headline metric
    (``task.primary_metric``; the highest, or the lowest where the task declares lower is
    better)."""
    key = task.primary_metric
    sign = 1.0 if tasks.higher_is_better(task, key) else -1.0
    return max(history, key=lambda h: sign * h[key])


def run_summary(cfg: Dict[str, Any], task, history: List[Dict[str, Any]], state, totals: Dict[str, Any], /, *,
                wall_time_s: float, baseline: Optional[Dict[str, Any]] = None,
                resumed_from: Optional[int] = None, **extra: Any) -> Dict[str, Any]:
    """The summary of a run (what ``summary.json`` holds), from its metrics lines, final
    state and round totals (:func:`new_totals`, :func:`count_round`); ``extra`` keys are
    added as they are (e.g. a sweep's ``runs_in_program``). The one place a summary is built (:func:`run`,
    :func:`omnifm_jax.sweep.run_sweep`).

    ``learned``: whether any client update was accepted (None when the totals cannot tell,
    e.g. a checkpoint that did not count them)."""
    strip = lambda h: {k: v for k, v in h.items() if k != "clients"}  # noqa: E731
    learned = None if totals.get("accepted_updates") is None else bool(
        totals["accepted_updates"] > 0 and totals["useful_steps"] > 0)
    summary = {
        "algorithm": cfg["algorithm"], "task": cfg["task"], "dataset": cfg["dataset"],
        "primary_metric": task.primary_metric, "best": strip(best_line(history, task)), "last": strip(history[-1]),
        "last_clients": history[-1]["clients"], "faulty_clients_total": totals["faulty"],
        "dropped_clients_total": totals["dropped"], "resumed_from_round": resumed_from,
        "wall_time_s": round(wall_time_s, 3), "rounds": cfg["rounds"],
        "accepted_updates_total": totals.get("accepted_updates"),
        "useful_client_steps_total": totals.get("useful_steps"), "learned": learned,
        "params_sha256": federated.state_hash(state), "device": str(jax.devices()[0]),
        # the initialisation the run drew (the config may say "auto": config.resolved_weight_init)
        "weight_init": config_lib.resolved_weight_init(cfg),
        "config": cfg,
    }
    if baseline is not None:
        summary["baseline"] = strip(baseline)
        summary["baseline_clients"] = baseline["clients"]
        summary["baseline_name"] = task.baseline_name
    summary.update(extra)
    return summary


def _num(v) -> float:
    return v if isinstance(v, float) else float("nan")


def result_table(summary: Dict[str, Any]) -> str:
    """A short text table of best and last metrics."""
    names = [k for k, v in summary["last"].items() if isinstance(v, float) and not k.startswith("diag/")]
    rows = [f"{summary['algorithm']} on {summary['dataset']} ({summary['task']}), "
            f"{summary['rounds']} rounds in {summary['wall_time_s']:.1f} s"]
    widths = [max(14, len(n) + 2) for n in names]  # a long metric name keeps a gap before it
    rows.append(f"{'':10s}" + "".join(f"{n:>{w}s}" for n, w in zip(names, widths)))
    for label in ("best", "last"):
        rows.append(f"{label + ' (r' + str(summary[label]['round']) + ')':10s}"
                    + "".join(f"{_num(summary[label].get(n)):{w}.4f}" for n, w in zip(names, widths)))
    if "baseline" in summary:
        rows.append(f"{summary.get('baseline_name', 'baseline')[:10]:10s}" + "".join(
            f"{summary['baseline'].get(n, float('nan')):{w}.4f}" for n, w in zip(names, widths)))
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
    # fixed margins in inches (tick labels, axis titles, the suptitle): tight_layout measured every
    # text first and took as long as saving the PNG (~0.4 s), once per run
    width = 4 * len(names)
    fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width, bottom=0.5 / 3, top=1 - 0.6 / 3, wspace=0.35)
    fig.savefig(path, dpi=100)
