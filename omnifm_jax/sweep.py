"""Several runs of one configuration as ONE compiled program: a leading run axis.

Runs that differ only in values that do not change any array shape (the training seed,
the learning rate, an algorithm's float hyper-parameters such as ``lambda_align`` or
``mu``) share one program: the whole federated state gets a leading run axis and the round
goes over it (below), with each run's values as traced scalars. One compile serves all
runs, and on an accelerator the batched runs fill the device together.

How the program goes over the run axis (``run_axis``, :data:`RUN_AXES`): ``"vmap"`` batches
the runs (every operation once for all of them: what fills an accelerator); ``"map"`` steps
through them one after another inside the same program (``jax.lax.map``: still one compile,
each run's operations as in a single run). ``"auto"`` takes ``"map"`` on CPU, ``"vmap"``
elsewhere: on XLA:CPU a batched run axis turns every convolution into a grouped one, which
it runs slower than the runs one by one (EDSR on BreaKHis, 2 seeds x 3 rounds: the vmapped
round loop at 0.77x the speed of two separate runs, the mapped one at 1.53x;
``experiments/benchmarks/results/sweep_speed_sr_breakhis_cpu.md``).

What varies with the run axis, and what does not:

* Each run equals ``experiment.run`` of its config up to float rounding: the one
  program may fuse and order operations differently, so parameters agree to ~1e-6 after a
  few rounds (tested), and training can amplify such differences over many rounds. A run's
  result is reproducible bit for bit for the same program (the same set of runs).
* ``seed`` seeds the model initialisation, the participant draws and the minibatch order
  of its run. The data split is shared by all runs of a program (it fixes the shapes):
  it comes from ``data_seed`` (``None``: the first run's ``seed``), as PFLlib repeats a run
  (``-t``) on one generated data set. :func:`run_sweep`'s run ``i`` is
  ``experiment.run`` of its config with that ``data_seed``.
* ``lr`` and float-valued ``algorithm_kwargs`` (those whose default is a float) may vary.
  Integers and booleans (``top_k``, ``use_eca``, ...), the algorithm, the data, the number
  of clients, ``participation`` and ``rounds`` change shapes or the program's structure:
  such configs are separate programs (:func:`group_runs` splits them).

Evaluation runs per run on the host-side path of :func:`omnifm_jax.experiment.run` (each
run's state sliced off the run axis), every ``eval_every`` rounds, so the metric lines are
the ones a single run writes.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp

from omnifm_jax import algorithms, experiment, federated, finetune
from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError

__all__ = ["SWEEPABLE_TOP_LEVEL", "RUN_AXES", "sweepable_keys", "group_runs", "resolve_run_axis", "over_runs",
           "run_sweep"]

#: Top-level keys that may differ between the runs of one program.
SWEEPABLE_TOP_LEVEL = ("seed", "lr")


def sweepable_keys(algorithm: str) -> Tuple[str, ...]:
    """The dotted keys that may vary inside one program for ``algorithm``: ``seed``, ``lr``
    and its float hyper-parameters."""
    floats = tuple(f"algorithm_kwargs.{k}" for k, v in algorithms.hyperparameters(algorithm).items()
                   if isinstance(v, float))
    return SWEEPABLE_TOP_LEVEL + floats


def _flatten(cfg: Dict[str, Any]) -> Dict[str, Any]:
    flat = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            for sk, sv in v.items():
                flat[f"{k}.{sk}"] = sv
        else:
            flat[k] = v
    return flat


def _with_data_seed(cfg: Dict[str, Any]) -> Dict[str, Any]:
    cfg = copy.deepcopy(cfg)
    if cfg.get("data_seed") is None:
        cfg["data_seed"] = cfg["seed"]
    return cfg


def group_runs(cfgs: Sequence[Dict[str, Any]]) -> List[Tuple[Dict[str, Any], List[Dict[str, Any]]]]:
    """Group full configs into programs: ``[(base config, runs)]`` where ``runs`` are the
    dotted overrides (sweepable keys only) that turn the base into each config. Configs keep
    their order inside a group; groups come in the order of their first config. A config
    whose ``data_seed`` is None gets its own ``seed`` as ``data_seed`` first, so configs that
    differ in ``seed`` alone land in separate programs unless they name one ``data_seed``."""
    groups: List[Tuple[Dict[str, Any], List[Dict[str, Any]]]] = []
    for cfg in cfgs:
        cfg = _with_data_seed(cfg)
        keys = sweepable_keys(cfg["algorithm"])
        # An unset float hyper-parameter is its default, stated explicitly: otherwise a run
        # would inherit the value another config of its group sets.
        defaults = {f"algorithm_kwargs.{k}": v for k, v in algorithms.hyperparameters(cfg["algorithm"]).items()}
        flat = {**{k: defaults[k] for k in keys if k in defaults}, **_flatten(cfg)}
        run = {k: flat[k] for k in keys if k in flat}
        for base, runs in groups:
            bflat = _flatten(base)
            bflat = {**{k: run[k] for k in keys if k not in bflat and k in run}, **bflat}
            differ = {k for k in set(flat) | set(bflat) if flat.get(k) != bflat.get(k)}
            if base["algorithm"] == cfg["algorithm"] and differ <= set(keys):
                runs.append(run)
                break
        else:
            groups.append((cfg, [run]))
    return groups


def _run_configs(cfg: Dict[str, Any], runs: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], List[str]]:
    """Each run's full config, and the keys that vary; ConfigError for a key that may not."""
    if not runs:
        raise ConfigError("run_sweep needs at least one run")
    allowed = sweepable_keys(cfg["algorithm"])
    cfgs = []
    for i, run in enumerate(runs):
        bad = sorted(set(run) - set(allowed))
        if bad:
            raise ConfigError(f"run {i}: {bad} cannot vary inside one program (they change shapes or the "
                              f"program); sweepable for {cfg['algorithm']!r}: {list(allowed)}. Run such "
                              "configs as separate programs (sweep.group_runs splits them)")
        c = copy.deepcopy(cfg)
        for k, v in run.items():
            c = config_lib.set_dotted(c, k, v)
        config_lib.validate(c)
        cfgs.append(c)
    varying = [k for k in allowed if len({repr(config_lib.get_dotted(c, k)) for c in cfgs}) > 1]
    return cfgs, varying


#: How :func:`run_sweep`'s program goes over its runs (module docstring).
RUN_AXES = ("auto", "vmap", "map")


def resolve_run_axis(run_axis: str) -> str:
    """``"auto"`` -> ``"map"`` on CPU, ``"vmap"`` on accelerators; the others unchanged."""
    if run_axis not in RUN_AXES:
        raise ConfigError(f"run_axis={run_axis!r}; choose from {RUN_AXES}")
    if run_axis == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return run_axis


def over_runs(fn: Callable, run_axis: str, shared: int = 0) -> Callable:
    """``fn`` over a leading run axis of all but its last ``shared`` arguments (those are
    passed whole to every run): ``jax.vmap`` or ``jax.lax.map`` (:func:`resolve_run_axis`)."""
    vmapped = resolve_run_axis(run_axis) == "vmap"

    def over(*args):
        per_run, whole = args[:len(args) - shared], args[len(args) - shared:]
        if vmapped:
            return jax.vmap(lambda *a: fn(*a, *whole))(*per_run)
        return jax.lax.map(lambda a: fn(*a, *whole), per_run)
    return over


def run_sweep(cfg: Dict[str, Any], runs: Sequence[Dict[str, Any]], *, progress: bool = False,
              log: Callable[[str], None] = print, run_axis: str = "auto") -> List[Dict[str, Any]]:
    """Train ``len(runs)`` variants of ``cfg`` as ONE compiled program.

    Args:
      cfg: a full config (``config.load_config`` + overrides).
      runs: one dict of dotted overrides per run, e.g. ``[{"seed": 0}, {"seed": 1}]`` or
        ``[{"algorithm_kwargs.lambda_align": 0.0}, {"algorithm_kwargs.lambda_align": 0.1}]``;
        only :func:`sweepable_keys` may appear.
      progress: a tqdm bar over rounds.
      log: where the result table of each run goes.
      run_axis: ``"vmap"``, ``"map"`` or ``"auto"`` (:func:`resolve_run_axis`): how the one
        program goes over the runs; every choice gives each run's result up to float rounding.

    Returns:
      One summary per run, in order, with the keys of ``experiment.run``'s summary
      (``best``, ``last``, ``baseline`` where the task has one, ``config``, ...) plus
      ``history`` (every metric line) and ``runs_in_program``; ``wall_time_s`` is the whole
      program's (shared by its runs); ``state`` is the run's final state.

    Raises:
      ConfigError: a key that may not vary, or an invalid config (before any work).
    """
    from tqdm.auto import tqdm

    cfg = _with_data_seed(cfg)
    config_lib.validate(cfg)
    run_axis = resolve_run_axis(run_axis)  # a bad choice fails before any work
    cfgs, varying = _run_configs(cfg, runs)
    if cfg["shard_clients"]:
        raise ConfigError("shard_clients splits the client axis over devices; a sweep's run axis is not sharded")
    prepared = experiment.setup(cfg)
    fed, task, template = prepared.fed, prepared.task, prepared.algorithm
    floats = [k for k in varying if k != "seed"]
    hp = {k: jnp.asarray([float(config_lib.get_dotted(c, k)) for c in cfgs], jnp.float32) for k in floats}
    keys = jax.vmap(jax.random.key)(jnp.asarray([c["seed"] for c in cfgs], jnp.uint32))

    def build(values: Dict[str, jax.Array]):
        c = cfg
        for k, v in values.items():  # traced scalars: one program for every value
            c = config_lib.set_dotted(c, k, v)
        # Every run's values were checked concretely in _run_configs; a check cannot decide on tracers.
        return (experiment.build_algorithm(c, task, checked=False, server=fed.server, backbone=prepared.backbone)
                if values else template)

    train = jax.device_put(fed.train)
    test = jax.device_put(fed.test)
    round_kw = dict(participation=cfg["participation"], client_chunk=cfg["client_chunk"],
                    client_dropout=cfg["client_dropout"], random_join=cfg["random_join"],
                    dropped_keep_update=cfg["dropped_keep_update"])

    def init_one(values, key):
        return federated.init(build(values), key, train, shared_init=cfg["shared_init"])

    def round_one(values, state, data):
        return federated.round_body(build(values), fed.train, **round_kw)(state, data)

    # Compiled like a single run's init (federated.init_compiler_options), once for all runs.
    states = jax.jit(over_runs(init_one, run_axis)).lower(hp, keys).compile(
        compiler_options=federated.init_compiler_options())(hp, keys)
    if prepared.init is not None:  # fine-tuning: every run's fresh state gets the loaded parameters
        source, mapping = prepared.init
        states = jax.vmap(lambda s: finetune.apply_init(s, source, mapping))(states)
        log(finetune.describe(sorted(mapping), source, cfg["init_from"]))
    round_fn = jax.jit(over_runs(round_one, run_axis, shared=1), donate_argnums=(1,))
    evaluation_line, baseline_of = experiment.make_evaluation(cfg, template, task, fed, train, test)
    num = len(cfgs)
    run_state = lambda i: jax.tree_util.tree_map(lambda a: a[i], states)  # noqa: E731
    # The baseline is model-free, so one evaluation serves every run.
    baselines = [baseline_of(run_state(0))] * num
    histories: List[List[Dict[str, Any]]] = [[evaluation_line(run_state(i), 0, None)] for i in range(num)]
    totals = [experiment.new_totals() for _ in range(num)]
    start = time.time()
    for r in tqdm(range(cfg["rounds"]), desc=f"{cfg['algorithm']} x{num} runs", disable=not progress):
        states, rms = round_fn(hp, states, train)
        last = r + 1 == cfg["rounds"]
        for i in range(num):
            rm = jax.tree_util.tree_map(lambda a: a[i], rms)
            experiment.count_round(totals[i], rm)
            if (r + 1) % cfg["eval_every"] == 0 or last:
                histories[i].append(evaluation_line(run_state(i), r + 1, rm))
    jax.block_until_ready(states)
    wall = time.time() - start
    out = []
    for i, c in enumerate(cfgs):
        summary = experiment.run_summary(c, task, histories[i], run_state(i), totals[i], wall_time_s=wall,
                                         baseline=baselines[i], history=histories[i], runs_in_program=num,
                                         state=run_state(i))
        values = ", ".join(f"{k}={config_lib.get_dotted(c, k)}" for k in varying) or "as configured"
        log(f"run {i + 1}/{num} ({values}):\n"
            + experiment.result_table(summary))
        out.append(summary)
    return out
