"""One run over several JAX processes (hosts): joining the run, and the few places where the
processes must agree.

Every process builds the same federation and initial state from the config (both are
deterministic in the seeds), the client axis is split over the global mesh of all processes'
devices (``shard_clients``), and each process trains the clients on its own devices; XLA's
collectives do the participant gather and the aggregation. Process 0 (the primary) alone checks
and writes the output directory (metrics, summary, checkpoints); on resume it reads the
checkpoint and sends the state to the others, so no shared file system is needed.

A process joins with :func:`initialize` (``omnifm train --coordinator HOST:PORT
--num-processes N --process-id I``, or the environment variables ``JAX_COORDINATOR_ADDRESS``,
``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``; a job scheduler's launcher sets them per process).
A process that dies is noticed by the others within ``heartbeat_timeout_s``: they stop with
an error instead of waiting for it.

Results equal the single-process run up to the order of the floating-point sums across
processes (an all-reduce adds each process's partial sum): differences of a few ulp.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Optional, Tuple, TypeVar

import jax
import numpy as np

from omnifm_jax.config import ConfigError

__all__ = ["ENV", "settings", "initialize", "is_primary", "process_count", "to_host", "from_primary",
           "PeerFailure"]

#: The environment variables :func:`settings` reads (the first is JAX's own).
ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")

T = TypeVar("T")


class PeerFailure(RuntimeError):
    """A step that had to succeed on the primary process failed there."""


def settings(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
             process_id: Optional[int] = None, environ: Mapping[str, str] = os.environ
             ) -> Optional[Tuple[str, int, int]]:
    """``(coordinator, num_processes, process_id)`` from the arguments, else the environment
    (:data:`ENV`); None when none of the three is given anywhere (a single-process run).

    Raises:
      ConfigError: some but not all are given, or a value is malformed.
    """
    names = ("coordinator", "num_processes", "process_id")
    values = dict(zip(names, (coordinator, num_processes, process_id)))
    for name, var in zip(names, ENV):
        if values[name] is None and environ.get(var, "") != "":
            values[name] = environ[var]
    given = [n for n in names if values[n] is not None]
    if not given:
        return None
    missing = [f"{n} (--{n.replace('_', '-')} or ${var})" for n, var in zip(names, ENV) if values[n] is None]
    if missing:
        raise ConfigError(f"a multi-process run needs the coordinator address, the number of processes and "
                          f"this process's id; missing: {', '.join(missing)}")
    address = str(values["coordinator"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator must be HOST:PORT, got {address!r}")
    try:
        n, i = int(values["num_processes"]), int(values["process_id"])
    except (TypeError, ValueError):
        raise ConfigError(f"num_processes and process_id must be integers, got {values['num_processes']!r} "
                          f"and {values['process_id']!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"need num_processes >= 1 and 0 <= process_id < num_processes, got {n} and {i}")
    return address, n, i


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, heartbeat_timeout_s: int = 20,
               initialization_timeout_s: int = 120) -> bool:
    """Join a multi-process run (:func:`jax.distributed.initialize`); call it before anything
    touches a JAX device. Returns False (and does nothing) when no setting is given.

    ``heartbeat_timeout_s``: how long the others wait for a silent process before they stop
    with an error; ``initialization_timeout_s``: how long to wait for every process to join.
    """
    found = settings(coordinator, num_processes, process_id)
    if found is None:
        return False
    if not (isinstance(heartbeat_timeout_s, int) and heartbeat_timeout_s >= 1):
        raise ConfigError(f"the peer timeout must be a whole number of seconds >= 1, got {heartbeat_timeout_s!r}")
    address, n, i = found
    if jax.distributed.is_initialized():
        if (jax.process_count(), jax.process_index()) != (n, i):
            raise ConfigError(f"this process already joined a run as process {jax.process_index()} of "
                              f"{jax.process_count()}, not {i} of {n}")
        return True
    jax.distributed.initialize(coordinator_address=address, num_processes=n, process_id=i,
                               initialization_timeout=initialization_timeout_s,
                               heartbeat_timeout_seconds=heartbeat_timeout_s)
    return True


def process_count() -> int:
    return jax.process_count()


def is_primary() -> bool:
    """Whether this process writes the run's outputs (process 0; always True in one process)."""
    return jax.process_index() == 0


def _host_leaf(x: Any) -> Any:
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(np.asarray(_host_leaf(jax.random.key_data(x))),
                                        impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return x


def to_host(tree: T) -> T:
    """``tree`` with every array that spans other processes' devices gathered into a NumPy copy
    on every process (a collective: every process must call it with the same tree); other
    leaves are returned as they are. ``np.asarray`` then works on every leaf."""
    return jax.tree_util.tree_map(_host_leaf, tree)


def _broadcast(tree: Any) -> Any:
    """Process 0's ``tree`` (arrays) on every process, bit for bit: each array crosses as its
    bytes (the broadcast is a sum with zeros, which would turn -0.0 into +0.0 and, without
    64-bit mode, narrow 64-bit integers)."""
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree_util.tree_flatten(tree)
    leaves = [np.asarray(x) for x in leaves]
    out = multihost_utils.broadcast_one_to_all([np.ascontiguousarray(x.reshape(-1)).view(np.uint8) for x in leaves])
    return jax.tree_util.tree_unflatten(treedef, [np.asarray(o, np.uint8).view(x.dtype).reshape(x.shape)
                                                  for o, x in zip(out, leaves)])


def from_primary(fn: Callable[[], T], *, what: str, template: Any = None) -> T:
    """Run ``fn`` on the primary process only and give every process its result.

    The result is ``(arrays, info)``: ``arrays`` a pytree of arrays shaped like ``template``
    (sent to the others; None when ``template`` is None), ``info`` JSON-serialisable. What
    ``fn`` raises is re-raised on the primary, and the others raise :class:`PeerFailure`
    naming ``what`` (so no process waits for a step that failed). In one process this is
    ``fn()``.
    """
    if jax.process_count() == 1:
        return fn()
    result, failure = None, ""
    if is_primary():
        try:
            result = fn()
        except BaseException as exc:  # re-raised below, after the others have been told
            failure, error = f"{type(exc).__name__}: {exc}", exc
    payload = np.frombuffer(json.dumps({"failure": failure} if failure or not is_primary()
                                       else {"failure": "", "info": result[1]}).encode(), np.uint8)
    size = int(_broadcast(np.int64(payload.size)))
    buffer = np.zeros(size, np.uint8)
    if is_primary():
        buffer[:] = payload
    message = json.loads(bytes(np.asarray(_broadcast(buffer))).decode())
    if message["failure"]:
        if is_primary():
            raise error
        raise PeerFailure(f"{what} failed on process 0: {message['failure']}")
    if template is None:
        return (None, message["info"])
    if is_primary():
        arrays = result[0]
    else:
        arrays = jax.tree_util.tree_map(lambda t: np.zeros(t.shape, t.dtype), template)
    return (_broadcast(arrays), message["info"])
