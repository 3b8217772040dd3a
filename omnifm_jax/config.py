"""Run configurations: plain dicts from ``get_config()`` files (big_vision / flax examples
style), overridden with ``key=value`` strings and validated before any work starts."""
from __future__ import annotations

import ast
import copy
import importlib.util
import inspect
from pathlib import Path
from typing import Any, Dict, Sequence

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"

#: Every key a run understands, with its default. Configs may only set these.
DEFAULTS: Dict[str, Any] = {
    "algorithm": "omnifm",          # omnifm, fedavg, fedper, local, ...
    "task": "classification",       # classification or super_resolution
    "dataset": "synthetic",         # see omnifm_jax.data.registry
    "dataset_kwargs": {},           # extra options of the data set / partition
    "backbone": "cnn",              # cnn, resnet18, edsr
    "backbone_kwargs": {},
    "scale": 2,                     # super-resolution factor
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
    # Protocol (PFLlib's semantics by default; see the README's protocol table)
    "drop_last": True,              # skip each epoch's last partial batch (PFLlib's DataLoader)
    "aggregate_bn_stats": False,    # average BatchNorm running statistics too (PFLlib keeps them local)
    "shared_init": True,            # all clients start from ONE initial model (PFLlib)
    "random_join": False,           # PFLlib's random_join_ratio: participants drawn from int(ratio*K)..K
    "dropped_keep_update": True,    # a dropped-out participant keeps what it trained (PFLlib)
    "input_scaling": "auto",        # pflib: [-1, 1] (Normalize(0.5, 0.5)); unit: [0, 1]; auto: pflib, SR unit
    "eval_train_loss": True,        # report PFLlib's train loss (all clients' training samples)
    "head_pool": "mean",            # classification head: mean (segment means) or attention
    "shard_clients": False,         # split the client axis over all devices (jax.sharding.Mesh)
    "seed": 0,
    "dropout": 0.0,                 # fraction of each round's participants that fail to report
    "checkpoint_every": 10,         # rounds between checkpoints under OUT/checkpoints (0: never)
    "checkpoint_keep": 3,           # how many of the latest checkpoints to keep
    # OmniFM
    "lambda_align": 0.1,
    "top_k": 2,
    "bank_capacity": 256,
    "rho": 1.0,
    "min_hits": 1,
    "prune_warmup": 2,
    "low_pass_ratio": 0.25,
    "log_magnitude": True,
    "spectral_dim": 64,
    "attn_dim": 64,
    "num_heads": 1,
    "num_suffix": 4,
    "sharing": "fedper",
    "use_gskr": True,
    "use_eca": True,
    "use_psp": True,
    "local_spectral_in_eca": True,  # ECA also attends to the local spectral token (task loss trains s)
    "hit_decay": 0.0,               # Eq. 8 retrieval frequency: 0 = last round's count, 1 = cumulative
}

TASKS = ("classification", "super_resolution")
OPTIMIZERS = ("sgd", "adam")
BACKBONES = ("cnn", "resnet18", "edsr")
INPUT_SCALINGS = ("auto", "pflib", "unit")
HEAD_POOLS = ("mean", "attention")


class ConfigError(ValueError):
    """A configuration is invalid (unknown key, impossible value)."""


def load_config(name_or_path: str | None = None) -> Dict[str, Any]:
    """A full config: DEFAULTS updated by ``get_config()`` of a file in experiments/configs
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


def update(cfg: Dict[str, Any], values: Dict[str, Any], *, where: str = "config") -> Dict[str, Any]:
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


def apply_overrides(cfg: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``key=value`` (or ``dict_key.sub=value``) overrides."""
    cfg = copy.deepcopy(cfg)
    for item in overrides or ():
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, text = item.split("=", 1)
        key = key.strip()
        value = parse_value(text)
        top, _, sub = key.partition(".")
        if top not in DEFAULTS:
            raise ConfigError(f"unknown config key {top!r}; known keys: {sorted(DEFAULTS)}")
        if sub:
            if not isinstance(cfg[top], dict):
                raise ConfigError(f"{top!r} is not a dict; cannot set {key!r}")
            cfg[top] = dict(cfg[top], **{sub: value})
        else:
            cfg[top] = value
    return cfg


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # not NaN


def _in_range(cfg: Dict[str, Any], key: str, lo: float, hi: float, *, lo_open: bool, hi_open: bool) -> None:
    v = cfg[key]
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    ok = _is_number(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    _require(ok, f"{key} must be a number in {interval}, got {v!r}")


def validate(cfg: Dict[str, Any]) -> None:
    """Raise :class:`ConfigError` naming the first impossible value."""
    from omnifm_jax import algorithms
    from omnifm_jax.algorithms.omnifm import SHARING

    _require(isinstance(cfg, dict), f"a config is a dict, got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(DEFAULTS))
    _require(not unknown, f"unknown key(s) {unknown}; known keys: {sorted(DEFAULTS)}")
    missing = sorted(set(DEFAULTS) - set(cfg))
    _require(not missing, f"missing key(s) {missing} (start from load_config() or DEFAULTS)")
    _require(cfg["algorithm"] in algorithms.available(),
             f"algorithm {cfg['algorithm']!r} unknown; available: {algorithms.available()}")
    _require(cfg["task"] in TASKS, f"task must be one of {TASKS}, got {cfg['task']!r}")
    _require(cfg["optimizer"] in OPTIMIZERS, f"optimizer must be one of {OPTIMIZERS}, got {cfg['optimizer']!r}")
    _require(cfg["backbone"] in BACKBONES, f"backbone must be one of {BACKBONES}, got {cfg['backbone']!r}")
    _require(isinstance(cfg["dataset"], str) and cfg["dataset"] != "",
             f"dataset must be a non-empty string, got {cfg['dataset']!r}")
    _require(cfg["sharing"] in SHARING, f"sharing must be one of {sorted(SHARING)}, got {cfg['sharing']!r}")
    for key in ("num_clients", "rounds", "local_epochs", "batch_size", "eval_every", "eval_batch_size",
                "top_k", "bank_capacity", "spectral_dim", "attn_dim", "num_heads", "checkpoint_keep"):
        _require(_is_int(cfg[key]) and cfg[key] >= 1, f"{key} must be an integer >= 1, got {cfg[key]!r}")
    for key in ("num_suffix", "min_hits", "prune_warmup", "seed", "checkpoint_every"):
        _require(_is_int(cfg[key]) and cfg[key] >= 0, f"{key} must be an integer >= 0, got {cfg[key]!r}")
    for key in ("log_magnitude", "use_gskr", "use_eca", "use_psp", "shard_clients", "drop_last",
                "aggregate_bn_stats", "shared_init", "random_join", "dropped_keep_update", "eval_train_loss",
                "local_spectral_in_eca"):
        _require(isinstance(cfg[key], bool), f"{key} must be True or False, got {cfg[key]!r}")
    _in_range(cfg, "participation", 0, 1, lo_open=True, hi_open=False)
    _in_range(cfg, "dropout", 0, 1, lo_open=False, hi_open=True)
    _in_range(cfg, "momentum", 0, 1, lo_open=False, hi_open=True)
    _in_range(cfg, "low_pass_ratio", 0, 1, lo_open=True, hi_open=False)
    _in_range(cfg, "hit_decay", 0, 1, lo_open=False, hi_open=False)
    _require(cfg["input_scaling"] in INPUT_SCALINGS,
             f"input_scaling must be one of {INPUT_SCALINGS}, got {cfg['input_scaling']!r}")
    _require(cfg["head_pool"] in HEAD_POOLS, f"head_pool must be one of {HEAD_POOLS}, got {cfg['head_pool']!r}")
    _require(_is_number(cfg["lr"]) and 0 < cfg["lr"] < float("inf"), f"lr must be a finite number > 0, got {cfg['lr']!r}")
    _require(_is_number(cfg["rho"]) and 0 < cfg["rho"] < float("inf"), f"rho must be a finite number > 0, got {cfg['rho']!r}")
    _require(_is_number(cfg["lambda_align"]) and 0 <= cfg["lambda_align"] < float("inf"),
             f"lambda_align must be a finite number >= 0, got {cfg['lambda_align']!r}")
    _require(cfg["top_k"] <= cfg["bank_capacity"],
             f"top_k={cfg['top_k']} is larger than bank_capacity={cfg['bank_capacity']}")
    _require(cfg["attn_dim"] % cfg["num_heads"] == 0,
             f"attn_dim={cfg['attn_dim']} is not divisible by num_heads={cfg['num_heads']}")
    _require(cfg["scale"] in (2, 4, 8) and _is_int(cfg["scale"]), f"scale must be 2, 4 or 8, got {cfg['scale']!r}")
    _require(cfg["client_chunk"] in ("auto", None) or (_is_int(cfg["client_chunk"]) and cfg["client_chunk"] >= 1),
             f"client_chunk must be 'auto', None or an integer >= 1, got {cfg['client_chunk']!r}")
    _require(isinstance(cfg["dataset_kwargs"], dict) and isinstance(cfg["backbone_kwargs"], dict),
             "dataset_kwargs and backbone_kwargs must be dicts")
    m = int(cfg["num_clients"] * cfg["participation"])
    _require(m >= 1, f"participation={cfg['participation']} of num_clients={cfg['num_clients']} selects "
                     f"int({cfg['num_clients']} * {cfg['participation']}) = 0 clients per round (PFLlib's rule); "
                     "raise participation")
    if cfg["random_join"]:
        m = cfg["num_clients"]
    if cfg["algorithm"] == "omnifm":
        _require(m <= cfg["bank_capacity"],
                 f"{m} participants per round upload more embeddings than bank_capacity={cfg['bank_capacity']}")


def algorithm_kwargs(cfg: Dict[str, Any], factory) -> Dict[str, Any]:
    """The config values the algorithm factory accepts (its keyword-only hyper-parameters)."""
    params = inspect.signature(factory).parameters
    fixed = {"task", "backbone", "optimizer", "local_epochs", "batch_size"}
    return {k: cfg[k] for k in params if k not in fixed and k in cfg}
