"""Checkpoints of a federated run (orbax-checkpoint) and exact resume.

A checkpoint is one step directory ``OUT/checkpoints/<round>/`` written by an orbax
:class:`~orbax.checkpoint.CheckpointManager` (atomic: written to a temporary directory
and renamed when complete; the last ``keep`` are kept) with two items:

* ``state``: every leaf of the :class:`~omnifm_jax.federated.FederatedState` (round,
  shared params, stacked personal params, optimizer and algorithm states, the knowledge
  bank, the PRNG key as ``jax.random.key_data``), flattened in tree order;
* ``meta`` (JSON): the round, the leaves' paths/shapes/dtypes, an integrity record
  (``state_sha256``, :func:`omnifm_jax.federated.state_hash` of the state), the run's
  config and data fingerprint, the metric history and counters.

The tree structure is never read from disk: it is rebuilt from the config (the abstract
state of a fresh ``init``, :func:`jax.eval_shape`), and the saved leaves are restored
into it, so a restored state is exactly the tree an uninterrupted run holds. After the
restore the state's hash is checked against the integrity record; a step that cannot be
read, misses its metadata or fails the check is reported with a
:class:`CorruptCheckpointWarning`, moved aside to ``corrupt-<round>-<time>/`` and the
previous step is tried.

Checkpoints written before a rename still resume: :func:`upgrade_meta` reads their
metadata in today's spelling (the leaves' paths, :data:`RENAMED_PATHS`, e.g. the algorithm
slot ``server/extra`` that is now ``server/algorithm_state``; the config's former keys and
names, :func:`omnifm_jax.config.upgrade_spelling`). The arrays are stored by position, so
nothing else changes.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from omnifm_jax.config import ConfigError, comparable, upgrade_spelling

__all__ = ["CHECKPOINT_SUBDIR", "FORMAT_VERSION", "COMMIT_MARKER", "RESUME_FREE_KEYS", "CheckpointError",
           "CheckpointMismatchError", "CorruptCheckpointWarning", "config_fingerprint", "config_differences",
           "check_resumable", "data_fingerprint", "flatten_state", "unflatten_state", "RENAMED_PATHS", "upgrade_meta",
           "RunCheckpointer"]

CHECKPOINT_SUBDIR = "checkpoints"
FORMAT_VERSION = 1
COMMIT_MARKER = "commit_success.txt"

#: Config keys that may change between a run and its resumption: they change neither the
#: state's structure nor what a round computes.
RESUME_FREE_KEYS = ("rounds", "eval_every", "eval_batch_size", "client_chunk", "shard_clients",
                    "checkpoint_every", "checkpoint_keep", "diagnostics")


#: Leaf paths that were renamed, ``(old prefix, new prefix)``: the algorithm's own state slot
#: of ``ServerState`` / ``ClientState`` was called ``extra``.
RENAMED_PATHS = (("server/extra", "server/algorithm_state"), ("clients/extra", "clients/algorithm_state"))


class CheckpointError(ValueError):
    """No usable checkpoint, or a checkpoint that does not fit the run."""


class CheckpointMismatchError(CheckpointError):
    """A readable checkpoint whose arrays do not fit this run's state (other model or config)."""


class CorruptCheckpointWarning(UserWarning):
    """A checkpoint step was unreadable or failed its integrity check; an earlier one is used."""


# ----------------------------------------------------------------------------- fingerprints

def config_fingerprint(cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The config keys a resumed run must share with the run that wrote the checkpoint (keys
    at their inert value, :data:`omnifm_jax.config.INERT`, are left out: a checkpoint written
    before such a key existed resumes; ``weight_init`` is compared resolved,
    :func:`omnifm_jax.config.comparable`)."""
    cfg = comparable(cfg)
    return {k: cfg[k] for k in sorted(cfg) if k not in RESUME_FREE_KEYS}


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True))


def config_differences(saved: Dict[str, Any], cfg: Dict[str, Any]) -> List[str]:
    """Keys (outside :data:`RESUME_FREE_KEYS`) whose values differ between two configs."""
    a, b = _jsonable(config_fingerprint(saved)), _jsonable(config_fingerprint(cfg))
    return sorted(k for k in set(a) | set(b) if a.get(k, "<absent>") != b.get(k, "<absent>"))


def check_resumable(meta: Dict[str, Any], cfg: Dict[str, Any], *, data_sha256: Optional[str] = None,
                    where: str = "checkpoint") -> None:
    """Raise :class:`ConfigError` if ``cfg`` (or the data) cannot continue the run of ``meta``."""
    saved = meta.get("config", {})
    diff = config_differences(saved, cfg)
    if diff:
        detail = ", ".join(f"{k}: checkpoint {saved.get(k, '<absent>')!r} vs now {cfg.get(k, '<absent>')!r}"
                           for k in diff)
        raise ConfigError(f"cannot resume from {where}: the config differs in {diff} ({detail}); "
                          f"only {list(RESUME_FREE_KEYS)} may change on resume")
    if meta["round"] > cfg["rounds"]:
        raise ConfigError(f"cannot resume from {where}: it is at round {meta['round']} but rounds={cfg['rounds']}")
    if data_sha256 is not None and meta.get("data_sha256") not in (None, data_sha256):
        raise ConfigError(f"cannot resume from {where}: the training/test data differ from the data the "
                          f"checkpoint was trained on (data_sha256 {meta['data_sha256'][:12]}... vs "
                          f"{data_sha256[:12]}...)")


def data_fingerprint(*arrays_trees: Any) -> str:
    """SHA-256 over the dtype, shape and bytes of every array in ``arrays_trees``."""
    h = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(arrays_trees):
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------- state <-> leaves

def _is_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _path(path) -> str:
    from omnifm_jax.algorithms.labels import path_name
    return path_name(path) or "<root>"


def flatten_state(state: Any) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """``state -> ({"00000": array, ...}, [{"path", "shape", "dtype", "key"}, ...])``.

    PRNG keys are stored as their ``key_data`` (``"key"`` names the key's implementation,
    ``"?"`` for an abstract key); works on arrays and on ``ShapeDtypeStruct`` trees alike.
    """
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    arrays, spec = {}, []
    for i, (path, leaf) in enumerate(leaves):
        key = None
        if _is_key(leaf):
            if isinstance(leaf, jax.ShapeDtypeStruct):
                key, leaf = "?", jax.eval_shape(jax.random.key_data, leaf)
            else:
                key, leaf = str(jax.random.key_impl(leaf)), jax.random.key_data(leaf)
        arrays[f"{i:05d}"] = leaf
        spec.append({"path": _path(path), "shape": list(leaf.shape), "dtype": str(np.dtype(leaf.dtype)),
                     "key": key})
    return arrays, spec


def unflatten_state(template: Any, arrays: Dict[str, Any], spec: Sequence[Dict[str, Any]]) -> Any:
    """Inverse of :func:`flatten_state`: the leaves ``arrays`` in the structure of
    ``template``, keys rewrapped with the implementation named in the saved ``spec``."""
    leaves, treedef = jax.tree_util.tree_flatten(template)
    out = []
    for i, leaf in enumerate(leaves):
        arr = arrays[f"{i:05d}"]
        if _is_key(leaf):
            arr = jax.random.wrap_key_data(arr, impl=spec[i]["key"])
        out.append(arr)
    return jax.tree_util.tree_unflatten(treedef, out)


def _renamed_path(path: str) -> str:
    for old, new in RENAMED_PATHS:
        if path == old or path.startswith(old + "/"):
            return new + path[len(old):]
    return path


def upgrade_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``meta`` (a checkpoint's metadata) in today's spelling: the leaves' paths renamed by
    :data:`RENAMED_PATHS` and the config by :func:`omnifm_jax.config.upgrade_spelling`
    (a checkpoint written before a rename resumes; the stored arrays are unchanged)."""
    out = dict(meta)
    if isinstance(out.get("leaves"), list):
        out["leaves"] = [dict(leaf, path=_renamed_path(leaf["path"])) if isinstance(leaf, dict) and "path" in leaf
                         else leaf for leaf in out["leaves"]]
    if isinstance(out.get("config"), dict):
        out["config"] = upgrade_spelling(out["config"])
    return out


def _spec_mismatch(saved: Sequence[Dict[str, Any]], expected: Sequence[Dict[str, Any]]) -> Optional[str]:
    """A description of the first leaf where a saved state and this run's state differ."""
    fmt = lambda x: f"{x['path']} {x['dtype']}{x['shape']}"
    for s, e in zip(saved, expected):
        same = all(s[f] == e[f] for f in ("path", "shape", "dtype")) and (s["key"] is None) == (e["key"] is None)
        if not same:
            return f"checkpoint has {fmt(s)} where this run has {fmt(e)}"
    if len(saved) != len(expected):
        longer, who = (saved, "checkpoint") if len(saved) > len(expected) else (expected, "this run")
        return (f"the checkpoint holds {len(saved)} arrays, this run's state {len(expected)} "
                f"(only {who} has {fmt(longer[min(len(saved), len(expected))])})")
    return None


# ----------------------------------------------------------------------------- the manager

class RunCheckpointer:
    """Saves and restores a run's state every few rounds under ``directory``.

    Args:
      directory: e.g. ``OUT/checkpoints`` (created if needed).
      keep: how many of the latest checkpoints to keep.
    """

    def __init__(self, directory: str | Path, *, keep: int = 3):
        import orbax.checkpoint as ocp

        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self._ocp = ocp
        self.directory = Path(directory).absolute()
        self.directory.mkdir(parents=True, exist_ok=True)
        # In a run over several processes only the primary one checkpoints (host copies of the
        # state), so orbax must not wait for the others at its barriers.
        single = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                    active_processes={jax.process_index()})
        several = jax.process_count() > 1
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not several,  # made above
                                               cleanup_tmp_directories=True, enable_async_checkpointing=False,
                                               multiprocessing_options=single if several else
                                               ocp.options.MultiprocessingOptions())
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    # -- listing
    def steps(self) -> List[int]:
        """Rounds with a complete checkpoint, ascending."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def latest(self) -> Optional[int]:
        steps = self.steps()
        return steps[-1] if steps else None

    # -- saving
    def save(self, state: Any, meta: Optional[Dict[str, Any]] = None) -> int:
        """Write a checkpoint of ``state`` (step = ``state.round``); returns the step.

        ``meta`` (JSON-serialisable: config, history, counters, ...) is stored with the
        integrity record.
        """
        ocp = self._ocp
        from omnifm_jax.federated import state_hash

        step = int(state.round)
        arrays, spec = flatten_state(state)
        if jax.process_count() > 1:  # orbax writes host-local jax arrays from one process only as NumPy
            arrays = {k: np.asarray(v) for k, v in arrays.items()}
        record = dict(meta or {})
        record.update(format=FORMAT_VERSION, round=step, leaves=spec, state_sha256=state_hash(state))
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(arrays),
                                                         meta=ocp.args.JsonSave(record)), force=True)
        self.manager.wait_until_finished()
        return step

    # -- restoring
    def read_meta(self, step: int) -> Dict[str, Any]:
        ocp = self._ocp
        step_dir = self.directory / str(step)
        if not (step_dir / "meta").is_dir():
            raise CheckpointError(f"round {step}: metadata item missing ({step_dir / 'meta'})")
        # Where orbax marks committed items, the step itself must carry the marker too.
        if (step_dir / "state" / COMMIT_MARKER).exists() and not (step_dir / COMMIT_MARKER).exists():
            raise CheckpointError(f"round {step}: commit marker {COMMIT_MARKER} missing (incomplete write)")
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        if not isinstance(meta, dict) or "state_sha256" not in meta or meta.get("round") != step:
            raise CheckpointError(f"round {step}: metadata incomplete")
        return upgrade_meta(meta)

    def restore(self, step: int, template: Any, meta: Optional[Dict[str, Any]] = None) -> Tuple[Any, Dict]:
        """Restore round ``step`` into the structure of ``template`` (arrays or abstract) and
        verify it against its integrity record. Raises :class:`CheckpointError`."""
        ocp = self._ocp
        from omnifm_jax.federated import state_hash

        meta = self.read_meta(step) if meta is None else meta
        abstract = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
        target, spec = flatten_state(abstract)
        mismatch = _spec_mismatch(meta["leaves"], spec)
        if mismatch:
            raise CheckpointMismatchError(f"checkpoint of round {step} in {self.directory} does not fit "
                                          f"this run's state: {mismatch}")
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        target = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding) for k, v in target.items()}
        try:
            arrays = self.manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))).state
        except Exception as exc:  # orbax / tensorstore raise many kinds on damaged files
            first = (str(exc).splitlines() or [""])[0][:240]
            raise CheckpointError(f"round {step}: unreadable ({type(exc).__name__}: {first})") from exc
        # Uncommitted arrays on the default device, exactly like a fresh ``init``'s, so the
        # resumed run calls the very program (and compilation-cache entry) a fresh run does.
        arrays = {k: jax.device_put(np.asarray(v)) for k, v in arrays.items()}
        state = unflatten_state(abstract, arrays, meta["leaves"])
        got = state_hash(state)
        if got != meta["state_sha256"]:
            raise CheckpointError(f"round {step}: integrity check failed (state sha256 {got[:12]}... "
                                  f"!= recorded {meta['state_sha256'][:12]}...)")
        return state, meta

    def restore_latest(self, template: Any, *, check: Optional[Callable[[Dict[str, Any]], None]] = None
                       ) -> Tuple[Any, Dict[str, Any]]:
        """Restore the newest good checkpoint.

        ``check(meta)`` runs on the newest readable metadata before any array is read
        (e.g. :func:`check_resumable`); what it raises propagates. A step that is
        unreadable or fails its integrity check gives a :class:`CorruptCheckpointWarning`,
        is moved aside and the previous step is tried.

        Raises:
          CheckpointError: no checkpoint, or none that is good.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint to resume from in {self.directory}")
        checked = False
        for step in reversed(steps):
            try:
                meta = self.read_meta(step)
                if not checked and check is not None:
                    check(meta)
                    checked = True
                return self.restore(step, template, meta)
            except CheckpointMismatchError:
                raise
            except CheckpointError as exc:
                moved = self._quarantine(step)
                warnings.warn(f"checkpoint of round {step} in {self.directory} is corrupt or incomplete "
                              f"({exc}); moved to {moved.name}, falling back to an earlier checkpoint",
                              CorruptCheckpointWarning, stacklevel=2)
        raise CheckpointError(f"no good checkpoint in {self.directory} (all of rounds {steps} are corrupt)")

    def _quarantine(self, step: int) -> Path:
        src = self.directory / str(step)
        dst = self.directory / f"corrupt-{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 0
        while dst.exists():
            n += 1
            dst = dst.with_name(f"{dst.name.split('.')[0]}.{n}")
        if src.exists():
            shutil.move(str(src), str(dst))
        self.manager.reload()
        return dst

    def close(self) -> None:
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
