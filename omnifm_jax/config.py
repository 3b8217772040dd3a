"""Run configurations: plain dicts from ``get_config()`` files (big_vision / flax examples
style), overridden with ``key=value`` strings and validated before any work starts.

A key is set by its dotted name (``lr``, ``algorithm_kwargs.mu``, ``task_kwargs.scale``)
with :func:`set_dotted`, the one setter that overrides, sweeps and tables use. Options
that belong to one component live in that component's ``*_kwargs`` (a task's in
``task_kwargs``, checked by the task); keys that moved there (:data:`MOVED_KEYS`) and
keys that were renamed (:data:`RENAMED_KEYS`) are refused with the new name.
"""
from __future__ import annotations

import ast
import copy
import importlib.util
import re
from pathlib import Path
from typing import Any, Dict, Iterable, Sequence

from omnifm_jax import checks
from omnifm_jax.checks import ConfigError
from omnifm_jax.registry import BACKBONES, TASKS, ComponentImportError, import_components

__all__ = ["ConfigError", "CONFIG_DIR", "DEFAULTS", "MOVED_KEYS", "RENAMED_KEYS", "OPTIMIZERS", "INPUT_SCALINGS",
           "WEIGHT_INITS", "COMPONENT_KWARGS", "load_config", "update", "parse_value", "set_dotted", "get_dotted",
           "apply_overrides", "validate", "algorithm_kwargs", "upgrade_spelling", "INERT", "without_inert",
           "CONFIG_WEIGHT_INITS", "PFLLIB_BACKBONES", "resolved_weight_init", "comparable"]

CONFIG_DIR = Path(__file__).resolve().parent / "configs"  # shipped inside the package

#: Every key a run understands, with its default. Configs may only set these.
DEFAULTS: Dict[str, Any] = {
    "imports": [],                  # your own component modules (names or .py paths), imported first
    "algorithm": "omnifm",          # omnifm, fedavg, fedprox, ... (`omnifm algorithms` lists them)
    "algorithm_kwargs": {},         # the algorithm's own hyper-parameters (defaults in its file)
    "task": "classification",       # a registered task: classification, super_resolution, ... (docs/tasks.md)
    "task_kwargs": {},              # the task's own options (SR scale, head_pool, loss weights; see its file)
    "dataset": "synthetic",         # a registered data set (docs/data.md)
    "dataset_kwargs": {},           # extra options of the data set / partition
    "backbone": "cnn",              # a registered backbone (omnifm_jax/models/): cnn, resnet18, edsr, ...
    "backbone_kwargs": {},
    "num_clients": 8,
    "participation": 1.0,           # fraction of clients per round
    "rounds": 10,
    "local_epochs": 1,
    "batch_size": 16,
    "optimizer": "sgd",             # sgd (PFLlib's client optimizer) or adam
    "lr": 0.05,
    "momentum": 0.0,
    "eval_every": 1,
    "eval_batch_size": 128,
    "client_chunk": "auto",         # clients per vmapped chunk: "auto" (1 on CPU), None (all at once), int
    # Protocol (PFLlib's semantics by default; see docs/protocol.md's table)
    "drop_last": True,              # skip each epoch's last partial batch (PFLlib's DataLoader)
    "aggregate_bn_stats": False,    # average BatchNorm running statistics too (PFLlib keeps them local)
    "weight_init": "auto",          # auto: pytorch for PFLlib's FedAvgCNN classifier, else flax (docs/protocol.md)
    "shared_init": True,            # all clients start from ONE initial model (PFLlib)
    "random_join": False,           # PFLlib's random_join_ratio: participants drawn from int(ratio*K)..K
    "dropped_keep_update": True,    # a dropped-out participant keeps what it trained (PFLlib)
    "input_scaling": "auto",        # pflib: [-1, 1] (Normalize(0.5, 0.5)); unit: [0, 1]; auto: pflib, SR unit
    "eval_train_loss": True,        # report PFLlib's train loss (all clients' training samples)
    "shard_clients": False,         # split the client axis over all devices (jax.sharding.Mesh)
    "seed": 0,
    "data_seed": None,              # seed of the data split (None: seed); a seed sweep keeps it fixed
    "client_dropout": 0.0,          # fraction of each round's participants that fail to report
    "checkpoint_every": 10,         # rounds between checkpoints under OUT/checkpoints (0: never)
    "checkpoint_keep": 3,           # how many of the latest checkpoints to keep
    "diagnostics": "auto",          # OmniFM's diag/* metrics: auto = every eval round, 0 off, N
    "validation_fraction": None,    # f: evaluate on f of each client's TRAINING samples (never the test split)
    # Fine-tuning (omnifm_jax/finetune.py, docs/protocol.md)
    "init_from": None,              # start from a run directory's (or checkpoint's) shared parameters
    "init_params": None,            # which to load: path rules "REGEX" or "REGEX=TEMPLATE"; None: all
    "trainable": None,              # regexes on params/... paths: only these train (None: all)
    "lora": None,                   # LoRA adapters on the backbone's dense layers: {"targets": [...], "rank", "alpha"}
}

#: Keys whose value here means "the feature is off", which runs written before the key
#: existed also meant: left out of config fingerprints (resume, reproduction hashes), so that
#: adding such a key keeps old checkpoints and finished cells valid.
INERT = {"init_from": None, "init_params": None, "trainable": None, "lora": None}


def without_inert(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` without the :data:`INERT` keys that hold their inert value."""
    return {k: v for k, v in cfg.items() if not (k in INERT and v == INERT[k])}


OPTIMIZERS = ("sgd", "adam")
INPUT_SCALINGS = ("auto", "pflib", "unit")
WEIGHT_INITS = ("flax", "pytorch")  # see omnifm_jax.models.init
CONFIG_WEIGHT_INITS = ("auto",) + WEIGHT_INITS  # the config's values (auto: resolved_weight_init)

#: Backbones that stand for a model of PFLlib's own, initialised there by PyTorch's defaults:
#: FedAvgCNN. PFLlib's ResNet-18 is torchvision's, whose convolutions start kaiming_normal
#: (fan_out), not PyTorch's default, so ``resnet18`` keeps flax's initialisers under ``auto``.
PFLLIB_BACKBONES = ("cnn",)


def resolved_weight_init(cfg: Dict[str, Any]) -> str:
    """The initialisation a run uses: ``weight_init`` itself unless it is ``"auto"``, which means
    ``"pytorch"`` where the run stands for one of PFLlib's (a :data:`PFLLIB_BACKBONES` backbone,
    the classification task, an algorithm that builds backbone and head) and ``"flax"`` elsewhere."""
    value = cfg.get("weight_init", "flax")
    if value != "auto":
        return value
    from omnifm_jax import algorithms

    takes = cfg.get("algorithm") in algorithms.available() and "weight_init" in algorithms.run_args(cfg["algorithm"])
    pfllib = cfg.get("backbone") in PFLLIB_BACKBONES and cfg.get("task") == "classification"
    return "pytorch" if takes and pfllib else "flax"


def comparable(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` as run fingerprints compare it: without its inert keys (:func:`without_inert`)
    and with ``weight_init`` resolved (:func:`resolved_weight_init`), so that ``auto`` and the
    value it stands for are one run, and runs written when ``flax`` was the default still match."""
    out = without_inert(cfg)
    if "weight_init" in out:
        out["weight_init"] = resolved_weight_init(out)
    return out


#: Former top-level keys and where they live now (a task's own options): refused, naming the new key.
MOVED_KEYS = {"scale": "task_kwargs.scale", "head_pool": "task_kwargs.head_pool"}

#: Former top-level keys and their new spelling (one name per concept): refused, naming the new key.
#: ``dropout`` was the fraction of participants that fail to report, not a network's dropout.
RENAMED_KEYS = {"dropout": "client_dropout"}


#: A component key and the dict of its own options: switching the component (an override
#: that changes it) resets the options to the new component's defaults.
COMPONENT_KWARGS = {"algorithm": "algorithm_kwargs", "dataset": "dataset_kwargs", "backbone": "backbone_kwargs",
                    "task": "task_kwargs"}


def load_config(name_or_path: str | None = None) -> Dict[str, Any]:
    """A full config: DEFAULTS updated by ``get_config()`` of a file in omnifm_jax/configs
    (by name, e.g. ``"default"``) or at a path."""
    cfg = copy.deepcopy(DEFAULTS)
    if name_or_path is None:
        name_or_path = "default"
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.py"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
        raise ConfigError(f"config {name_or_path!r} not found (looked for {path}); known configs: {known}")
    spec = importlib.util.spec_from_file_location(f"omnifm_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} has no get_config()")
    update(cfg, module.get_config(), where=str(path))
    return cfg


def _refuse_moved(keys: Iterable[str], where: str = "") -> None:
    for key in keys:
        if key in MOVED_KEYS:
            raise ConfigError(f"{where + ': ' if where else ''}{key} moved to {MOVED_KEYS[key]}")
        if key in RENAMED_KEYS:
            raise ConfigError(f"{where + ': ' if where else ''}{key} was renamed to {RENAMED_KEYS[key]}")


def update(cfg: Dict[str, Any], values: Dict[str, Any], *, where: str = "config") -> Dict[str, Any]:
    """``cfg`` updated in place with ``values`` (a config file's, a saved config.json's);
    refuses keys that moved (:data:`MOVED_KEYS`) or were renamed (:data:`RENAMED_KEYS`) and
    unknown keys, naming ``where``."""
    _refuse_moved(values, where)
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    cfg.update(copy.deepcopy(values))
    return cfg


def parse_value(text: str) -> Any:
    """``"3" -> 3``, ``"0.1" -> 0.1``, ``"True" -> True``, ``"None" -> None``, else the string."""
    lowered = text.strip()
    if lowered.lower() in ("true", "false"):
        return lowered.lower() == "true"
    if lowered.lower() in ("none", "null"):
        return None
    try:
        return ast.literal_eval(lowered)
    except (ValueError, SyntaxError):
        return text


def _check_top_key(top: str) -> None:
    _refuse_moved([top])
    if top not in DEFAULTS:
        raise ConfigError(f"unknown config key {top!r}; known keys: {sorted(DEFAULTS)}")


def set_dotted(cfg: Dict[str, Any], key: str, value: Any) -> Dict[str, Any]:
    """A copy of ``cfg`` with the dotted ``key`` set to ``value``: ``"lr"``,
    ``"algorithm_kwargs.mu"``, ``"task_kwargs.regions.et"`` (nested dicts; a missing
    intermediate dict is created). ``cfg`` and the dicts it shares are not modified (each
    dict on the path is copied).

    Raises:
      ConfigError: an unknown top-level key (known: :data:`DEFAULTS`), a key that moved
        (:data:`MOVED_KEYS`) or was renamed (:data:`RENAMED_KEYS`), or a path through a
        value that is not a dict.
    """
    parts = key.split(".")
    _check_top_key(parts[0])
    out = dict(cfg)
    node = out
    for i, part in enumerate(parts[:-1]):
        child = node.get(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{'.'.join(parts[:i + 1])!r} is not a dict; cannot set {key!r}")
        node[part] = dict(child)
        node = node[part]
    node[parts[-1]] = value
    return out


def get_dotted(cfg: Dict[str, Any], key: str, default: Any = None) -> Any:
    """The value at the dotted ``key`` of ``cfg`` (``default`` where the path is absent)."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def apply_overrides(cfg: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key=value`` (or ``dict_key.sub=value``) overrides with :func:`set_dotted`.

    An override that switches a component (``algorithm``, ``dataset``, ``backbone``,
    ``task``) to another one also resets that component's options (``algorithm_kwargs``,
    ...) to the new component's defaults, unless the same overrides set them: the options a
    config gives one data set rarely fit another.
    """
    cfg = copy.deepcopy(cfg)
    parsed = []
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        top = key.partition(".")[0]
        _check_top_key(top)
        parsed.append((key, top, parse_value(text)))
    for component, options in COMPONENT_KWARGS.items():
        switched = any(top == component and value != cfg[component] for _, top, value in parsed)
        if switched and not any(key == options for key, _, _ in parsed):
            cfg[options] = {}
    for key, _, value in parsed:
        cfg = set_dotted(cfg, key, value)
    return cfg


def validate(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first impossible value."""
    from omnifm_jax import algorithms

    require = checks.require
    require(isinstance(cfg, dict), f"a config is a dict, got {type(cfg).__name__}")
    _refuse_moved(cfg)
    unknown = sorted(set(cfg) - set(DEFAULTS))
    require(not unknown, f"unknown key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    missing = sorted(set(DEFAULTS) - set(cfg))
    require(not missing, f"missing key(s) {missing} (start from load_config() or DEFAULTS)")
    try:  # the run's own components register themselves before any name is looked up
        import_components(cfg["imports"])
    except ComponentImportError as exc:
        raise ConfigError(str(exc)) from exc
    require(cfg["algorithm"] in algorithms.available(),
            f"algorithm {cfg['algorithm']!r} unknown; available: {algorithms.available()}")
    checks.choice("task", cfg["task"], tuple(TASKS.available()))
    require(algorithms.supports(cfg["algorithm"], cfg["task"]),
            f"algorithm {cfg['algorithm']!r} does not run task {cfg['task']!r}; algorithms that do: "
            f"{algorithms.available(task=cfg['task'])}")
    checks.choice("optimizer", cfg["optimizer"], OPTIMIZERS)
    checks.choice("backbone", cfg["backbone"], tuple(BACKBONES.available()))
    require(isinstance(cfg["dataset"], str) and cfg["dataset"] != "",
            f"dataset must be a non-empty string, got {cfg['dataset']!r}")
    from omnifm_jax.data.registry import renamed_dataset

    why = renamed_dataset(cfg["dataset"])
    require(why is None, why)
    for key in ("num_clients", "rounds", "local_epochs", "batch_size", "eval_every", "eval_batch_size",
                "checkpoint_keep"):
        checks.integer(key, cfg[key], 1)
    for key in ("seed", "checkpoint_every"):
        checks.integer(key, cfg[key], 0)
    if cfg["data_seed"] is not None:
        checks.integer("data_seed", cfg["data_seed"], 0)
    for key in ("shard_clients", "drop_last", "aggregate_bn_stats", "shared_init", "random_join",
                "dropped_keep_update", "eval_train_loss"):
        checks.boolean(key, cfg[key])
    checks.interval("participation", cfg["participation"], 0, 1, lo_open=True, hi_open=False)
    checks.interval("client_dropout", cfg["client_dropout"], 0, 1, lo_open=False, hi_open=True)
    checks.interval("momentum", cfg["momentum"], 0, 1, lo_open=False, hi_open=True)
    checks.choice("input_scaling", cfg["input_scaling"], INPUT_SCALINGS)
    checks.choice("weight_init", cfg["weight_init"], CONFIG_WEIGHT_INITS)
    require(cfg["weight_init"] in ("flax", "auto") or "weight_init" in algorithms.run_args(cfg["algorithm"]),
            f"weight_init={cfg['weight_init']!r}: algorithm {cfg['algorithm']!r} builds its own model and "
            f"takes only weight_init='flax'")
    require(cfg["diagnostics"] == "auto" or checks.is_int(cfg["diagnostics"]) and cfg["diagnostics"] >= 0,
            f"diagnostics must be 'auto' or an integer >= 0 (0: off; N: round 1, every N-th and the last), "
            f"got {cfg['diagnostics']!r}")
    if cfg["validation_fraction"] is not None:
        checks.interval("validation_fraction", cfg["validation_fraction"], 0, 1, lo_open=True, hi_open=True)
    require(cfg["init_from"] is None or isinstance(cfg["init_from"], str) and cfg["init_from"],
            f"init_from must be a path (a run directory or RUN/checkpoints/<round>), got {cfg['init_from']!r}")
    require(cfg["init_params"] is None or cfg["init_from"] is not None,
            "init_params selects what init_from loads: set init_from too")
    for key in ("init_params", "trainable"):
        value = cfg[key]
        require(value is None or isinstance(value, (list, tuple)) and value
                and all(isinstance(v, str) and v for v in value),
                f"{key} must be None or a non-empty list of path patterns, got {value!r}")
    if cfg["trainable"] is not None:
        for pattern in cfg["trainable"]:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"trainable pattern {pattern!r}: bad regular expression ({exc})") from None
    if cfg["lora"] is not None:
        from omnifm_jax.models.lora import check_options

        check_options(cfg["lora"])
    if cfg["init_params"] is not None:
        from omnifm_jax.finetune import parse_rules

        parse_rules(cfg["init_params"])
    require(checks.is_number(cfg["lr"]) and 0 < cfg["lr"] < float("inf"),
            f"lr must be a finite number > 0, got {cfg['lr']!r}")
    require(cfg["client_chunk"] in ("auto", None) or (checks.is_int(cfg["client_chunk"]) and cfg["client_chunk"] >= 1),
            f"client_chunk must be 'auto', None or an integer >= 1, got {cfg['client_chunk']!r}")
    require(all(isinstance(cfg[k], dict) for k in COMPONENT_KWARGS.values()),
            "dataset_kwargs, backbone_kwargs, algorithm_kwargs and task_kwargs must be dicts")
    from omnifm_jax import tasks

    tasks.check_options(tasks.declaration(cfg["task"]), cfg["task_kwargs"])  # the task's own options
    m = int(cfg["num_clients"] * cfg["participation"])
    require(m >= 1, f"participation={cfg['participation']} of num_clients={cfg['num_clients']} selects "
                    f"int({cfg['num_clients']} * {cfg['participation']}) = 0 clients per round (PFLlib's rule); "
                    "raise participation")
    if cfg["random_join"]:
        m = cfg["num_clients"]
    algorithms.check(cfg["algorithm"], cfg["algorithm_kwargs"],
                     {"num_clients": cfg["num_clients"], "participants": m})


def algorithm_kwargs(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The keyword arguments of the config's algorithm factory besides the engine's: the run
    values it takes (``drop_last``, ``aggregate_bn_stats``, ``weight_init``, ``lr``, ``num_clients``) and
    its ``algorithm_kwargs``."""
    from omnifm_jax import algorithms

    kw = {k: cfg[k] for k in algorithms.run_args(cfg["algorithm"])}
    if "weight_init" in kw:
        kw["weight_init"] = resolved_weight_init(cfg)
    kw.update(cfg["algorithm_kwargs"])
    return kw


def upgrade_spelling(values: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of a config RECORD written before the renames (a checkpoint's metadata, a run
    directory's ``config.json``) in today's spelling: former top-level keys
    (:data:`RENAMED_KEYS`), former data set names
    (:data:`omnifm_jax.data.registry.RENAMED_DATASETS`) and an algorithm's former
    hyper-parameter names (``register(..., renamed=...)``). Used only to resume runs started
    before a rename; a config, file or override that uses an old spelling is refused."""
    from omnifm_jax import algorithms
    from omnifm_jax.data.registry import RENAMED_DATASETS

    if not isinstance(values, dict):
        return values
    out = copy.deepcopy(values)
    for old, new in RENAMED_KEYS.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    dataset = out.get("dataset")
    if isinstance(dataset, str):
        key, colon, spec = dataset.strip().partition(":")
        if key.lower() in RENAMED_DATASETS:
            out["dataset"] = RENAMED_DATASETS[key.lower()] + colon + spec
    kwargs = out.get("algorithm_kwargs")
    if isinstance(kwargs, dict) and out.get("algorithm") in algorithms.available():
        for old, new in algorithms.renamed(out["algorithm"]).items():
            if old in kwargs and new not in kwargs:
                kwargs[new] = kwargs.pop(old)
    return out
