"""Which variables are shared and which stay personal: a labelling of the variable tree by
path rules (regular expressions on ``"collection/module/.../leaf"``, like
``optax.multi_transform`` labels), not code.

:func:`partition` splits a tree into ``(shared, personal)`` trees with ``None`` in place of the
other part's leaves, and :func:`combine` puts them back together. Only the ``params``
collection is shared by default: BatchNorm running statistics (``batch_stats``) never leave a
client, as in PFLlib, which sends and averages ``model.parameters()`` only.
"""
from __future__ import annotations

import re
from typing import Any, Sequence, Tuple

import jax

__all__ = ["path_name", "personal_mask", "partition", "combine"]

def path_name(path) -> str:
    """``(DictKey('params'), DictKey('head'), ...) -> "params/head/..."``."""
    parts = []
    for p in path:
        for attr in ("key", "name", "idx"):
            if hasattr(p, attr):
                parts.append(str(getattr(p, attr)))
                break
        else:
            parts.append(str(p))
    return "/".join(parts)


def personal_mask(tree: Any, personal_patterns: Sequence[str],
                  shared_collections: Sequence[str] = ("params",)) -> Any:
    """Tree of bools: True where a leaf stays personal.

    A leaf is personal when its path matches any of ``personal_patterns`` or its
    collection (the first path element) is not in ``shared_collections``.
    """
    compiled = [re.compile(p) for p in personal_patterns]

    def one(path, _):
        name = path_name(path)
        collection = name.split("/", 1)[0]
        return collection not in shared_collections or any(c.search(name) for c in compiled)

    return jax.tree_util.tree_map_with_path(one, tree)


def partition(tree: Any, mask: Any) -> Tuple[Any, Any]:
    """Split ``tree`` into ``(shared, personal)``; each has ``None`` where the other has leaves."""
    shared = jax.tree_util.tree_map(lambda x, m: None if m else x, tree, mask)
    personal = jax.tree_util.tree_map(lambda x, m: x if m else None, tree, mask)
    return shared, personal


def combine(shared: Any, personal: Any) -> Any:
    """Inverse of :func:`partition`."""
    return jax.tree_util.tree_map(lambda a, b: b if a is None else a, shared, personal,
                                  is_leaf=lambda x: x is None)
