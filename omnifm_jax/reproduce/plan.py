"""Plan a table: cells -> validated configs (one per seed) -> compiled programs; no data are
loaded and nothing is trained.

* Seeds. Every cell runs once per seed; the seed sets the model initialisation, the
  participant draws and the minibatch order. The data split is the same for every seed, every
  method and every sitting (``data_seed`` = the table's, 0 unless it names another, whichever
  seeds a sitting runs: seeds added in a later sitting share the split of the first ones; a
  table with ``data_seed="seed"`` draws one split per seed), as PFLlib repeats runs on one
  generated data set.
* One compiled program per group of runs that differ only in shape-free values (seed,
  ``lr``, float hyper-parameters such as ``lambda_align``): :func:`omnifm_jax.sweep.group_runs`
  forms the groups over the whole table and :func:`omnifm_jax.sweep.run_sweep` runs each.
  Identical configs (Fig. 5's default point, the per-client columns of one federation) run
  once. Without ``omnifm_jax.sweep`` every config is its own program.
* Resuming: ``done`` maps ``(row_key, col_key, seed)`` to the config hash of a finished cell;
  a config runs only when one of the cells it serves is not finished with that same config.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Set, Tuple, Union

from omnifm_jax import config as config_lib
from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce import registry
from omnifm_jax.reproduce.settings import resolve_setting
from omnifm_jax.reproduce.spec import PRETRAINED, Cell, Pretrain, Setting, Table, pretrained_key

__all__ = ["PlannedCell", "PlannedPretrain", "Program", "Plan", "cell_config", "pretrain_config", "config_sha",
           "build_plan", "canonical", "default_pretrained_dir"]


@dataclass
class PlannedCell:
    cell: Cell
    setting: Setting
    configs: List[Dict[str, Any]]   # one per seed, full and validated


@dataclass
class PlannedPretrain:
    pretrain: Pretrain
    setting: Setting
    config: Dict[str, Any]                  # full and validated; init_from resolved to a path
    path: Path                              # where its run directory is (or will be)


@dataclass
class Program:
    base: Dict[str, Any]
    runs: List[Dict[str, Any]]
    members: List[List[Tuple[int, int]]]   # per run: the (cell index, seed index) it serves
    mode: str = "sweep"                     # "sweep" or why it runs as separate programs
    wall_time_s: Optional[float] = None


@dataclass
class Plan:
    table: Table
    scale: str
    seeds: Tuple[int, ...]
    cells: List[PlannedCell]
    programs: List[Program]
    rule: str = "best"
    notes: List[str] = field(default_factory=list)
    overrides: Tuple[str, ...] = ()         # the user's extra overrides, applied to every cell
    rounds: Optional[int] = None            # the rounds override in force (None: each config's own)
    done: Set[Tuple[int, int]] = field(default_factory=set)   # (cell, seed) finished in an earlier sitting
    pretrains: List[PlannedPretrain] = field(default_factory=list)   # what the cells start from, in order
    pretrain_keys_to_run: Set[str] = field(default_factory=set)     # those an unfinished cell needs
    pretrained_dir: Optional[Path] = None   # where the pretrained models are (config_sha names them by key)

    def pretrains_to_run(self) -> List[PlannedPretrain]:
        """The pretrains that a cell still to run starts from (directly or through another),
        in order: a resumed table whose fine-tuned cells are all kept trains none again."""
        return [pp for pp in self.pretrains if pp.pretrain.key in self.pretrain_keys_to_run]


def _parse_subset(what: str, requested: Optional[Sequence[str]], known: List[Tuple[str, str]]) -> Optional[List[str]]:
    if requested is None:
        return None
    keys = []
    by_name = {k.lower(): k for k, _ in known}
    by_name.update({label.lower(): k for k, label in known})
    for item in requested:
        item = item.strip()
        if not item:
            continue
        if item.lower() not in by_name:
            raise ConfigError(f"unknown {what} {item!r}; {what}s of this table: "
                              + ", ".join(f"{k} ({label})" for k, label in known))
        keys.append(by_name[item.lower()])
    if not keys:
        raise ConfigError(f"no {what} selected")
    return keys


def canonical(cfg: Dict[str, Any]) -> str:
    """A config as a canonical string (equal configs, equal strings)."""
    return json.dumps(cfg, sort_keys=True, default=repr)


def config_sha(cfg: Dict[str, Any], pretrained_dir: Optional[Union[str, Path]] = None) -> str:
    """A short hash of a full config: a finished cell is reused by ``--resume`` only when its
    config hash is the one planned now. Keys at their inert value
    (:data:`omnifm_jax.config.INERT`) are left out, so adding such a key keeps finished cells, and
    ``weight_init`` enters resolved (:func:`omnifm_jax.config.comparable`). An ``init_from`` in
    ``pretrained_dir`` (the table's pretrained models, ``<out>/pretrained``) enters as
    ``pretrained:<key>``, not as a path: a table's records keep their hashes when its folder
    moves (e.g. the committed tables, extended with more seeds elsewhere)."""
    from omnifm_jax.config import comparable

    cfg = comparable(cfg)
    key = _pretrained_name(cfg.get("init_from"), pretrained_dir)
    if key is not None:
        cfg["init_from"] = PRETRAINED + key
    return hashlib.sha256(canonical(cfg).encode()).hexdigest()[:16]


def _pretrained_name(init_from: Any, pretrained_dir: Optional[Union[str, Path]]) -> Optional[str]:
    """The key of a table's pretrained model that ``init_from`` names (a folder directly in
    ``pretrained_dir``), else None."""
    if not init_from or pretrained_dir is None or not isinstance(init_from, (str, Path)):
        return None
    path = Path(init_from)
    return path.name if path.parent.resolve() == Path(pretrained_dir).resolve() else None


def cell_config(cell: Cell, setting: Setting, *, seed: int, data_seed: int, rounds: Optional[int] = None,
                overrides: Sequence[str] = (), pretrained_dir: Optional[Path] = None) -> Dict[str, Any]:
    """The full, validated config of one cell at one seed.

    Order: the setting's config, its size overrides, the cell's overrides (an algorithm
    switch resets the options of the previous algorithm), the user's ``overrides``, then
    ``rounds``, ``seed`` and ``data_seed`` (unless the user's overrides set it).
    ``init_from="pretrained:<key>"`` becomes ``pretrained_dir / key`` (the table's
    :class:`~omnifm_jax.reproduce.spec.Pretrain`, run before the cells).
    Hyper-parameters left at their defaults are written out, so that equal configs compare
    equal (Fig. 5's default point runs once) and configs that differ only in a float
    hyper-parameter group into one program.
    """
    from omnifm_jax import algorithms

    cfg = config_lib.load_config(setting.config)
    cfg = config_lib.apply_overrides(cfg, setting.overrides)
    cfg = config_lib.apply_overrides(cfg, cell.overrides)
    cfg = config_lib.apply_overrides(cfg, overrides)
    cfg = _resolve_pretrained(cfg, pretrained_dir)
    if rounds is not None:
        cfg["rounds"] = rounds
    cfg["seed"] = seed
    if not any(o.split("=", 1)[0].strip() == "data_seed" for o in overrides):  # --set data_seed=N wins
        cfg["data_seed"] = data_seed
    if cfg["algorithm"] in algorithms.available():
        kw = dict(cfg["algorithm_kwargs"])
        for k, v in algorithms.hyperparameters(cfg["algorithm"]).items():
            kw.setdefault(k, copy.deepcopy(v))
        cfg["algorithm_kwargs"] = kw
    config_lib.validate(cfg)
    return cfg


def default_pretrained_dir(table: str) -> Path:
    """Where a table's pretrained models go without ``--out``: ``runs/reproduce/<table>/pretrained``."""
    return Path("runs") / "reproduce" / table / "pretrained"


def _resolve_pretrained(cfg: Dict[str, Any], pretrained_dir: Optional[Path]) -> Dict[str, Any]:
    """``init_from="pretrained:<key>"`` -> the path of that pretrained run."""
    key = pretrained_key(cfg)
    if key is not None:
        if pretrained_dir is None:
            raise ConfigError(f"init_from={PRETRAINED}{key} needs the table's pretrained folder")
        cfg["init_from"] = str(Path(pretrained_dir) / key)
    return cfg


def pretrain_config(p: Pretrain, setting: Setting, *, seed: int, rounds: Optional[int] = None,
                    overrides: Sequence[str] = (), pretrained_dir: Optional[Path] = None) -> Dict[str, Any]:
    """The full, validated config of a pretraining run: the setting's config and overrides,
    ``p.overrides``, the user's ``overrides``, then its rounds (``p.rounds``, else
    ``rounds``), ``seed`` = ``data_seed`` = ``seed`` (the table's data seed), and a checkpoint
    at its last round (what ``init_from`` loads)."""
    cfg = config_lib.load_config(setting.config)
    for o in (setting.overrides, p.overrides, overrides):
        cfg = config_lib.apply_overrides(cfg, o)
    if p.rounds is not None or rounds is not None:
        cfg["rounds"] = p.rounds if p.rounds is not None else rounds
    cfg["seed"] = cfg["data_seed"] = seed
    cfg["checkpoint_every"] = cfg["rounds"]
    cfg = _resolve_pretrained(cfg, pretrained_dir)
    config_lib.validate(cfg)
    return cfg


def _import_sweep():
    try:
        from omnifm_jax import sweep
    except ImportError:
        return None
    return sweep


def build_plan(table: Union[str, Table], *, scale: Optional[str] = None, seeds: Sequence[int] = (0, 1, 2),
               rows: Optional[Sequence[str]] = None, cols: Optional[Sequence[str]] = None,
               rounds: Optional[int] = None, overrides: Sequence[str] = (), rule: Optional[str] = None,
               data_root: Optional[Path] = None, tables: Sequence[Union[str, Path]] = (),
               done: Optional[Mapping[Tuple[str, str, int], str]] = None,
               pretrained_dir: Optional[Path] = None) -> Plan:
    """Every cell's configs, validated, and the programs they run as; no data are loaded.

    ``table``: a :class:`Table` or a name (found in the default table folders and
    ``tables``, see :mod:`omnifm_jax.reproduce.registry`). ``scale``: one of the table's
    (default: its ``default_scale``). ``rows`` / ``cols``: row / column keys or labels
    (None: the scale's default subset). ``rule``: ``best`` / ``last`` (default: the
    table's). ``done``: finished cells (see the module docstring). Raises ConfigError naming
    the table, row, column or cell that is wrong.
    """
    t = table if isinstance(table, Table) else registry.get_table(table, tables)
    name = t.name
    why_not = registry.unavailable_reason(t)
    if why_not:
        raise ConfigError(f"{why_not}; {name} cannot be reproduced in this checkout")
    pretrained_dir = default_pretrained_dir(name) if pretrained_dir is None else Path(pretrained_dir)
    scale = t.default_scale if scale is None else scale
    if scale not in t.scales:
        raise ConfigError(f"unknown scale {scale!r}; scales of {name}: {', '.join(t.scales)}")
    rule = t.rule if rule is None else rule
    if rule not in ("best", "last"):
        raise ConfigError(f"evaluation rule must be 'best' or 'last', got {rule!r}")
    seeds = tuple(seeds)
    if not seeds or len(set(seeds)) != len(seeds) or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"seeds must be distinct integers >= 0, got {list(seeds)}")
    if rounds is not None and (not isinstance(rounds, int) or rounds < 1):
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    row_keys = _parse_subset("row", rows, t.rows)
    col_keys = _parse_subset("column", cols, t.cols)
    sc, notes = t.scales[scale], []
    also = set(sc.also) if row_keys is None and col_keys is None else set()
    if also:
        notes.append(f"{scale} default also runs: " + ", ".join(f"{r} / {c}" for r, c in sc.also))
    if row_keys is None and sc.rows is not None:
        row_keys = list(sc.rows)
        notes.append(f"{scale} default rows: {', '.join(row_keys)} (--only selects others)")
    if col_keys is None and sc.cols is not None:
        col_keys = list(sc.cols)
        notes.append(f"{scale} default columns: {', '.join(col_keys)} (--cols selects others)")
    if rounds is None and sc.rounds is not None:
        rounds = sc.rounds
    if sc.note:
        notes.append(sc.note)
    selected = [c for c in t.cells if (row_keys is None or c.row_key in row_keys)
                and (col_keys is None or c.col_key in col_keys) or (c.row_key, c.col_key) in also]
    if not selected:
        raise ConfigError(f"{name}: the selection (rows {row_keys}, columns {col_keys}) holds no cell")
    planned = []
    for cell in selected:
        try:
            setting = resolve_setting(dict(t.scales), scale, cell.config, data_root)
            cfgs = [cell_config(cell, setting, seed=s, data_seed=t.split_seed(s),
                                rounds=rounds, overrides=overrides, pretrained_dir=pretrained_dir) for s in seeds]
        except ConfigError as exc:
            raise ConfigError(f"{name} cell ({cell.row}, {cell.col}): {exc}") from None
        planned.append(PlannedCell(cell, setting, cfgs))
    finished = {(ci, si) for ci, pc in enumerate(planned) for si, s in enumerate(seeds)
                if done and done.get((pc.cell.row_key, pc.cell.col_key, s)) == config_sha(pc.configs[si],
                                                                                          pretrained_dir)}
    pretrains = _planned_pretrains(t, scale, data_root, [pc.cell for pc in planned], seed=t.split_seed(seeds[0]),
                                   rounds=rounds, overrides=overrides, pretrained_dir=pretrained_dir)
    to_run = [pc.cell for ci, pc in enumerate(planned) if any((ci, si) not in finished for si in range(len(seeds)))]
    return Plan(t, scale, seeds, planned, _programs(planned, finished), rule, notes, tuple(overrides), rounds,
                finished, pretrains, _pretrain_keys(t, to_run), pretrained_dir)


def _pretrain_keys(t: Table, cells: Sequence[Cell]) -> Set[str]:
    """The keys of the table's pretrains that ``cells`` start from, directly or through another."""
    by_key = {p.key: p for p in t.pretrain}
    needed, todo = set(), [k for k in (pretrained_key(c.overrides) for c in cells) if k is not None]
    while todo:
        key = todo.pop()
        if key in needed:
            continue
        if key not in by_key:
            raise ConfigError(f"{t.name}: a cell starts from pretrain {key!r}, which the table does not define")
        needed.add(key)
        parent = pretrained_key(by_key[key].overrides)
        if parent is not None:
            todo.append(parent)
    return needed


def _planned_pretrains(t: Table, scale: str, data_root: Optional[Path], cells: Sequence[Cell], *, seed: int,
                       rounds: Optional[int], overrides: Sequence[str], pretrained_dir: Path) -> List[PlannedPretrain]:
    """The table's pretrains that ``cells`` start from, directly or through another, in order."""
    needed = _pretrain_keys(t, cells)
    out = []
    for p in t.pretrain:
        if p.key not in needed:
            continue
        try:
            setting = resolve_setting(dict(t.scales), scale, p.config, data_root)
            cfg = pretrain_config(p, setting, seed=seed, rounds=rounds, overrides=overrides,
                                  pretrained_dir=pretrained_dir)
        except ConfigError as exc:
            raise ConfigError(f"{t.name} pretrain {p.key!r}: {exc}") from None
        out.append(PlannedPretrain(p, setting, cfg, pretrained_dir / p.key))
    return out


def _programs(planned: List[PlannedCell], finished: Set[Tuple[int, int]] = frozenset()) -> List[Program]:
    """Unique configs grouped into programs (:func:`omnifm_jax.sweep.group_runs`); without
    the sweep module, one program per unique config. A config whose cells are all
    ``finished`` is left out."""
    where: Dict[str, List[Tuple[int, int]]] = {}
    configs: Dict[str, Dict[str, Any]] = {}
    for ci, pc in enumerate(planned):
        for si, cfg in enumerate(pc.configs):
            key = canonical(cfg)
            configs.setdefault(key, cfg)
            where.setdefault(key, []).append((ci, si))
    unique = [cfg for key, cfg in configs.items() if not all(m in finished for m in where[key])]
    if not unique:
        return []
    sweep = _import_sweep()
    if sweep is not None:
        programs = []
        for base, runs in sweep.group_runs(unique):
            members = []
            for run in runs:
                cfg = copy.deepcopy(base)
                for k, v in run.items():
                    cfg = config_lib.set_dotted(cfg, k, v)
                members.append(where.get(canonical(cfg)))
            programs.append(Program(base, list(runs), members))
        covered = sorted(m for p in programs for ms in p.members if ms is not None for m in ms)
        if all(ms is not None for p in programs for ms in p.members) and covered == sorted(
                m for cfg in unique for m in where[canonical(cfg)]):
            return programs
        reason = "separate: sweep.group_runs gave runs that do not map back to the cells"
    else:
        reason = "separate: omnifm_jax.sweep cannot be imported"
    return [Program(cfg, [{}], [where[canonical(cfg)]], mode=reason) for cfg in unique]
