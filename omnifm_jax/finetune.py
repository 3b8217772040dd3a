"""Fine-tuning setups: start a federated run from a saved model, and freeze parameters.

* ``init_from`` (config key): a run directory (its newest checkpoint) or one checkpoint
  directory (``RUN/checkpoints/<round>``). The source run's state is restored into the tree
  its own saved config builds, and the parameters its server holds (the shared model) are
  copied into the new run's initial model: into the server's shared parameters and into
  every client's personal ones. ``init_params`` selects which of the new model's parameters
  are loaded, as path rules on ``params/...`` paths: ``"REGEX"`` loads the parameters whose
  path matches from the same path, ``"REGEX=TEMPLATE"`` from the path ``re.sub(REGEX,
  TEMPLATE, path)`` (a renamed module); ``None`` loads every parameter. A selected parameter
  that the source lacks (or keeps personal) or whose shape differs is a :class:`ConfigError`
  listing them all, before any training. Optimizer states and algorithm states (OmniFM's
  bank) start fresh.
* Disjointness: a fine-tuning run must not start from a model trained on its test images.
  The source's training split is rebuilt from its saved config and every image is compared
  by content (SHA-1 of its bytes) with this run's test split: any overlap is a
  :class:`ConfigError`; overlap with this run's training split is allowed (pretraining on the
  same training images leaks nothing) and reported as a warning. Where a sample carries
  more than its image (VQA's question plane, ``info["image_channels"]``), a source that saw
  a test sample (image and question) or a test image this run does not train on is refused; a
  test image this run trains on itself (VQA-RAD asks test questions about training images)
  leaks nothing more through the source.
* Vocabularies: data with text (``info["vocabulary"]``, VQA's question words and answers)
  must have the source's vocabularies entry for entry (:func:`check_vocabularies`).
* ``trainable`` (config key): regexes on ``params/...`` paths; only matching parameters
  are updated (the client optimizer is an ``optax.multi_transform`` whose other part is
  ``optax.set_to_zero``), so frozen parameters keep their (loaded) values on every client
  and on the server. Each pattern must match a parameter.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax.algorithms.labels import path_name
from omnifm_jax.checks import ConfigError

__all__ = ["SourceModel", "parse_rules", "source_of", "load_source_params", "select", "plan_init", "apply_init",
           "frozen_optimizer", "check_trainable", "check_lora", "image_digests", "check_vocabularies",
           "check_disjoint", "describe"]


def parse_rules(rules: Optional[Sequence[str]]) -> List[Tuple[re.Pattern, Optional[str]]]:
    """``["REGEX", "REGEX=TEMPLATE", ...]`` -> compiled rules (ConfigError on a bad regex)."""
    out = []
    for rule in rules or ():
        if not isinstance(rule, str) or not rule:
            raise ConfigError(f"init_params entries must be non-empty strings, got {rule!r}")
        pattern, _, template = rule.partition("=")
        try:
            out.append((re.compile(pattern), template or None))
        except re.error as exc:
            raise ConfigError(f"init_params rule {rule!r}: bad regular expression ({exc})") from None
    return out


def source_of(path: str | Path) -> Tuple[Path, Optional[int]]:
    """``(run directory, checkpoint round or None for the newest)`` of an ``init_from`` path."""
    p = Path(path).expanduser()
    if (p / "checkpoints").is_dir():
        return p, None
    if p.name.isdigit() and p.parent.name == "checkpoints" and p.is_dir():
        return p.parent.parent, int(p.name)
    raise ConfigError(f"init_from={str(path)!r} is neither a run directory (with checkpoints/) nor a "
                      "checkpoint directory (RUN/checkpoints/<round>); train the source run with "
                      "checkpoint_every > 0")


class SourceModel:
    """A source run's saved config, federation and shared parameters (``{path: array}``)."""

    def __init__(self, cfg: Dict[str, Any], fed: Any, params: Dict[str, np.ndarray], round_: int):
        self.cfg, self.fed, self.params, self.round = cfg, fed, params, round_


def load_source_params(path: str | Path) -> SourceModel:
    """Restore ``init_from``'s checkpoint into the state tree its saved config builds."""
    from omnifm_jax import checkpoint as ckpt_lib
    from omnifm_jax import config as config_lib
    from omnifm_jax import experiment, federated

    run_dir, step = source_of(path)
    ckpt = ckpt_lib.RunCheckpointer(run_dir / ckpt_lib.CHECKPOINT_SUBDIR)
    try:
        step = ckpt.latest() if step is None else step
        if step is None:
            raise ConfigError(f"init_from={str(path)!r}: no checkpoint in {run_dir / 'checkpoints'}")
        meta = ckpt.read_meta(step)
        cfg = config_lib.upgrade_spelling(dict(meta["config"]))
        cfg = {**config_lib.load_config("default"), **cfg}
        cfg.update(init_from=None, init_params=None, checkpoint_every=0)
        source = experiment.setup(cfg)
        template = jax.eval_shape(lambda k: federated.init(source.algorithm, k, source.fed.train,
                                                           shared_init=cfg["shared_init"]), jax.random.key(0))
        try:
            state, _ = ckpt.restore(step, template, meta)
        except ckpt_lib.CheckpointError as exc:
            raise ConfigError(f"init_from={str(path)!r}: {exc}") from None
    finally:
        ckpt.close()
    flat, _ = jax.tree_util.tree_flatten_with_path(state.server.params)
    params = {path_name(p): np.asarray(v) for p, v in flat if path_name(p).startswith("params/")}
    return SourceModel(cfg, source.fed, params, step)


def select(target_paths: Sequence[str], rules: Sequence[Tuple[re.Pattern, Optional[str]]]) -> Dict[str, str]:
    """``{target path: source path}`` of the parameters the rules load (all without rules)."""
    if not rules:
        return {t: t for t in target_paths}
    out = {}
    for t in target_paths:
        for pattern, template in rules:
            if pattern.search(t):
                out[t] = pattern.sub(template, t) if template is not None else t
                break
    return out


def plan_init(state: Any, source: SourceModel, rules: Sequence[Tuple[re.Pattern, Optional[str]]], *,
              where: str) -> Dict[str, str]:
    """``{target path: source path}`` of what ``init_from`` loads into ``state`` (arrays or
    the abstract state of ``jax.eval_shape``). ConfigError, listing them all, when a selected
    parameter is missing from the source (or personal there) or has another shape."""
    targets = _param_shapes(state)
    mapping = select(sorted(targets), rules)
    if rules and not mapping:
        raise ConfigError(f"init_params {[r.pattern for r, _ in rules]} select none of this model's parameters "
                          f"(e.g. {sorted(targets)[:4]})")
    problems = []
    for target, src in mapping.items():
        if src not in source.params:
            problems.append(f"{target}: the source has no shared parameter {src}")
        elif tuple(source.params[src].shape) != targets[target]:
            problems.append(f"{target}: shape {targets[target]} here, {tuple(source.params[src].shape)} in the "
                            f"source ({src})")
    if problems:
        more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
        raise ConfigError(f"init_from={where}: cannot load {len(problems)} parameter(s): "
                          + "; ".join(problems[:8]) + more
                          + ". Select what to load with init_params (path rules, e.g. 'params/backbone/')")
    return mapping


def _param_shapes(state: Any) -> Dict[str, Tuple[int, ...]]:
    """``{params/... path: per-model shape}`` of the server's shared and the clients' personal
    parameters (personal leaves are stacked over clients)."""
    out = {}
    for p, v in jax.tree_util.tree_flatten_with_path(state.server.params)[0]:
        out[path_name(p)] = tuple(v.shape)
    for p, v in jax.tree_util.tree_flatten_with_path(state.clients.personal)[0]:
        out[path_name(p)] = tuple(v.shape[1:])
    return {k: v for k, v in out.items() if k.startswith("params/")}


def apply_init(state: Any, source: SourceModel, mapping: Dict[str, str]) -> Any:
    """``state`` with ``mapping``'s parameters copied from ``source``: into the server's shared
    parameters and into every client's personal ones (:func:`plan_init` checked them)."""
    def server_leaf(p, v):
        src = mapping.get(path_name(p))
        return v if src is None else jnp.asarray(source.params[src], v.dtype)

    def client_leaf(p, v):
        src = mapping.get(path_name(p))
        return v if src is None else jnp.broadcast_to(jnp.asarray(source.params[src], v.dtype), v.shape)

    server = state.server._replace(params=jax.tree_util.tree_map_with_path(server_leaf, state.server.params))
    clients = state.clients._replace(personal=jax.tree_util.tree_map_with_path(client_leaf, state.clients.personal))
    return state._replace(server=server, clients=clients)


def _trainable_labels(patterns: Sequence[str]):
    compiled = [re.compile(p) for p in patterns]

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "train" if any(c.search("params/" + path_name(p)) for c in compiled) else "freeze", params)

    return labels


def frozen_optimizer(tx: optax.GradientTransformation, patterns: Optional[Sequence[str]]
                     ) -> optax.GradientTransformation:
    """``tx`` for the parameters whose ``params/...`` path matches ``patterns``; zero updates
    (``optax.set_to_zero``) for the others. ``None``: ``tx`` itself."""
    if patterns is None:
        return tx
    return optax.multi_transform({"train": tx, "freeze": optax.set_to_zero()}, _trainable_labels(patterns))


def check_trainable(patterns: Optional[Sequence[str]], state: Any) -> None:
    """Each ``trainable`` pattern must match a parameter of the model (ConfigError); ``state``
    may be abstract."""
    if patterns is None:
        return
    paths = sorted(_param_shapes(state))
    for pattern in patterns:
        if not any(re.search(pattern, p) for p in paths):
            raise ConfigError(f"trainable pattern {pattern!r} matches no parameter of this model "
                              f"(its parameters: {paths[:6]}{' ...' if len(paths) > 6 else ''})")


def check_lora(options: Optional[Dict[str, Any]], state: Any) -> None:
    """Each ``lora`` target must have put adapters on a dense layer (ConfigError)."""
    if options is None:
        return
    paths = _param_shapes(state)
    adapted = [p.rsplit("/", 1)[0] for p in paths if p.endswith("/lora_a")]
    dense = sorted({p.rsplit("/", 1)[0] for p in paths if p.endswith("/kernel")})
    for target in options["targets"]:
        if not any(re.search(target, p.split("/", 1)[1]) for p in adapted):
            raise ConfigError(f"lora target {target!r} matches no dense layer of the backbone (layers with a "
                              f"kernel: {dense[:8]}{' ...' if len(dense) > 8 else ''})")


def image_digests(x: np.ndarray, channels: Optional[int] = None) -> set:
    """SHA-1 digests of the images ``x[i]`` (their bytes; only the first ``channels`` channels
    where the samples carry more than the image, e.g. VQA's question plane)."""
    x = np.asarray(x)
    x = np.ascontiguousarray(x if channels is None else x[..., :channels])
    return {hashlib.sha1(x[i].tobytes()).hexdigest() for i in range(x.shape[0])}


def check_vocabularies(source_info: Dict[str, Any], info: Dict[str, Any], *, where: str) -> None:
    """A source model whose data had text vocabularies (``info["vocabulary"]``: lists of
    entries by kind, e.g. VQA's question words and answers) must read this data's: equal
    lists, else ConfigError naming the first difference. Data without vocabularies: nothing."""
    mine, theirs = info.get("vocabulary"), source_info.get("vocabulary")
    if mine is None and theirs is None:
        return
    if mine is None or theirs is None:
        side = "the source's data have" if mine is None else "this run's data have"
        raise ConfigError(f"init_from={where}: only {side} text vocabularies; the model cannot read these data")
    for kind in sorted(set(mine) | set(theirs)):
        a, b = list(theirs.get(kind, [])), list(mine.get(kind, []))
        if a == b:
            continue
        first = next((i for i, (u, v) in enumerate(zip(a, b)) if u != v), min(len(a), len(b)))
        at = lambda v: repr(v[first]) if first < len(v) else "nothing"  # noqa: E731
        raise ConfigError(f"init_from={where}: its {kind} vocabulary ({len(a)} entries) is not this run's "
                          f"({len(b)}); first difference at entry {first}: {at(a)} there, {at(b)} here "
                          "(data built from other files or with other vocabulary options)")


def check_disjoint(source_train_x: np.ndarray, train_x: np.ndarray, test_x: np.ndarray, *, where: str,
                   channels: Optional[int] = None) -> None:
    """ConfigError when the source trained on one of this run's test samples, or on a test
    image that this run does not train on itself; a warning when the training data overlap (no
    leak). ``channels``: the image part of a sample (:func:`image_digests`); then a test
    image that this run also trains on (VQA-RAD asks test questions about training images)
    leaks nothing more through the source, but a test sample (image and question) does, unless the
    data set repeats it in the training split (then this run trains on it as well)."""
    seen = image_digests(source_train_x, channels)
    own = image_digests(train_x, channels)
    leaked = len((image_digests(test_x, channels) - own) & seen)
    if channels is not None:  # a test sample the source saw, unless this run trains on it too (the
        # data set repeats it in both splits, as VQA-RAD does for a few questions: no leak through the source)
        leaked += len((image_digests(test_x) & image_digests(source_train_x)) - image_digests(train_x))
    if leaked:
        raise ConfigError(f"init_from={where} was trained on {leaked} of this run's test images: a fine-tuning "
                          "run must start from a model trained on data disjoint from its test split")
    shared = len(own & seen)
    if shared:
        warnings.warn(f"init_from={where} was trained on {shared} of this run's training images (allowed: no "
                      "test image was among them)", stacklevel=2)


def describe(loaded: Sequence[str], source: SourceModel, where: str) -> str:
    """One line for the run's log."""
    return (f"init_from {where}: {len(loaded)} parameter(s) loaded from round {source.round} of a "
            f"{source.cfg['algorithm']} run on {source.cfg['dataset']}")
