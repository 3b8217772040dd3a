"""An algorithm run by separate parties: each site (hospital) trains its own client on its own
data and keeps its personal state; a coordinator samples the participants, sends them the
server state and aggregates what they upload. Nothing here knows a transport:
:mod:`omnifm_jax.flower` carries these messages over Flower, and the tests carry them by hand.

The rules are the engine's (:func:`omnifm_jax.federated.sequential_round`): the same
participants, the same per-client keys, the same ``client_update`` and ``server_update``, so a
deployment ends on the engine's server state. What crosses between parties is flat: named
arrays (``{"params/backbone/conv1/kernel": array, ...}``) and plain numbers; a tree's structure
never crosses, each side rebuilds it from the config, and a malformed upload (a missing or extra
name, a wrong shape or dtype) is refused with a message that names the site.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from omnifm_jax import config as config_lib
from omnifm_jax import experiment, federated
from omnifm_jax.algorithms.base import ClientData
from omnifm_jax.algorithms.labels import path_name
from omnifm_jax.data.federation import ClientArrays, client_slice

__all__ = ["UploadError", "to_named", "from_named", "Site", "Coordinator", "check_supported"]

Named = Dict[str, np.ndarray]


class UploadError(ValueError):
    """What a party sent does not fit what the config builds."""


def _leaves(tree: Any) -> List[Tuple[str, Any]]:
    out = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key):
            raise TypeError(f"{path_name(path)}: PRNG keys do not cross between parties")
        out.append((path_name(path) or "<root>", leaf))
    return out


def to_named(tree: Any) -> Named:
    """``tree`` as ``{path: numpy array}`` (what crosses the wire)."""
    return {name: np.asarray(leaf) for name, leaf in _leaves(tree)}


def from_named(arrays: Mapping[str, Any], template: Any, *, who: str) -> Any:
    """The arrays ``arrays`` in the structure of ``template`` (arrays or ``ShapeDtypeStruct``).

    Raises:
      UploadError: a name missing or unexpected, or a shape or dtype that differs; the
        message names ``who`` (e.g. "site 2").
    """
    expected = _leaves(template)
    names = [n for n, _ in expected]
    missing = sorted(set(names) - set(arrays))
    extra = sorted(set(arrays) - set(names))
    if missing or extra:
        raise UploadError(f"{who} sent arrays that do not fit the model: missing {missing[:5]}, "
                          f"unexpected {extra[:5]}")
    out = []
    for name, leaf in expected:
        a = np.asarray(arrays[name])
        if a.shape != tuple(leaf.shape) or a.dtype != np.dtype(leaf.dtype):
            raise UploadError(f"{who} sent {name} as {a.dtype}{list(a.shape)}, expected "
                              f"{np.dtype(leaf.dtype)}{list(leaf.shape)}")
        out.append(a)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template), out)


def check_supported(cfg: Dict[str, Any]) -> None:
    """The config options a deployment does not reproduce (ConfigError)."""
    unsupported = {"client_dropout": 0.0, "random_join": False, "shard_clients": False, "init_from": None}
    bad = [f"{k}={cfg[k]!r}" for k, v in unsupported.items() if cfg[k] != v]
    if bad:
        raise config_lib.ConfigError(f"a deployment does not support {', '.join(bad)} (the sites decide who "
                                     "reports; each site holds one client)")


def _prepared(cfg: Union[Dict[str, Any], experiment.Setup]) -> experiment.Setup:
    """The :class:`~omnifm_jax.experiment.Setup` of ``cfg`` (built unless given), checked for a
    deployment."""
    prepared = cfg if isinstance(cfg, experiment.Setup) else experiment.setup(cfg)
    check_supported(prepared.cfg)
    return prepared


def _one_client(arrays: ClientArrays, k: int) -> ClientArrays:
    x, y, modality = client_slice(arrays, k)
    return ClientArrays(x=x, y=y, n=np.asarray([x.shape[0]], np.int32), offsets=np.zeros(1, np.int32),
                        modality=modality)


class TrainReply(NamedTuple):
    upload: Named            # what the coordinator aggregates
    n: int                   # the site's training samples (its aggregation weight)
    metrics: Dict[str, float]


class Site:
    """One site: client ``client_id`` of the config's federation, its data and its state.

    Every site builds the same federation from the config and keeps only its own client's
    data (a real site would load its own files instead). ``state`` (the personal client
    state) lives with the site between rounds: :meth:`train` returns the next one.
    """

    def __init__(self, cfg: Union[Dict[str, Any], experiment.Setup], client_id: int):
        self.setup = _prepared(cfg)
        cfg = self.setup.cfg
        fed = self.setup.fed
        k = fed.train.num_clients
        if not 0 <= client_id < k:
            raise config_lib.ConfigError(f"client_id must be in 0..{k - 1} for this config, got {client_id}")
        self.client_id = client_id
        self.train_data = jax.device_put(_one_client(fed.train, client_id))
        self.test_data = _one_client(fed.test, client_id)
        algorithm = self.setup.algorithm
        init = jax.eval_shape(lambda key: federated.init(algorithm, key, fed.train), jax.random.key(cfg["seed"]))
        self.server_template = init.server
        self.state_template = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype),
                                                     init.clients)
        self._update = jax.jit(algorithm.client_update)
        self._evaluate = federated.make_evaluate(algorithm, self.setup.task, self.test_data,
                                                 batch_size=cfg["eval_batch_size"])

    def initial_state(self) -> Named:
        """This client's state at round 0 (the engine's :func:`~omnifm_jax.federated.init`)."""
        cfg = self.setup.cfg
        state = federated.init(self.setup.algorithm, jax.random.key(cfg["seed"]), self.setup.fed.train,
                               shared_init=cfg["shared_init"])
        return to_named(jax.tree_util.tree_map(lambda a: a[self.client_id], state.clients))

    def train(self, server: Named, key_data: np.ndarray, state: Named) -> Tuple[TrainReply, Named]:
        """One round of local training: ``(reply, next state)``. A non-finite upload keeps the
        old state (the engine's rule) and is sent as it is (the coordinator leaves it out)."""
        srv = from_named(server, self.server_template, who="the coordinator")
        old = from_named(state, self.state_template, who=f"site {self.client_id}'s own state")
        n = int(self.train_data.n[0])
        data = ClientData(x=self.train_data.x, y=self.train_data.y, offset=jnp.int32(0), n=jnp.int32(n),
                          capacity=max(1, n))
        key = jax.random.wrap_key_data(jnp.asarray(key_data), impl=jax.random.key_impl(jax.random.key(0)))
        result = self._update(srv, old, data, key)
        finite = bool(federated.participants_finite(jax.tree_util.tree_map(lambda a: a[None], result.upload), 1)[0])
        new = result.state if finite else old
        metrics = {k: float(np.asarray(v)) for k, v in (result.metrics or {}).items() if np.ndim(v) == 0}
        return TrainReply(to_named(result.upload), n, metrics), to_named(new)

    def evaluate(self, server: Named, state: Named) -> Named:
        """Per-sample evaluation stats of this client's personalised model on its test samples."""
        srv = from_named(server, self.server_template, who="the coordinator")
        client = from_named(state, self.state_template, who=f"site {self.client_id}'s own state")
        one = federated.FederatedState(jnp.int32(0), srv, jax.tree_util.tree_map(lambda a: a[None], client),
                                       jax.random.key(0))
        stats = self._evaluate(one, self.test_data)
        return {} if stats is None else to_named(stats)


class Coordinator:
    """The server's side: the engine's participant sampling and keys, and ``server_update``."""

    def __init__(self, cfg: Union[Dict[str, Any], experiment.Setup]):
        self.setup = _prepared(cfg)
        cfg = self.setup.cfg
        fed, algorithm = self.setup.fed, self.setup.algorithm
        state = federated.init(algorithm, jax.random.key(cfg["seed"]), fed.train, shared_init=cfg["shared_init"])
        self.num_clients = fed.train.num_clients
        self.m = federated.num_participants(self.num_clients, cfg["participation"])
        # the coordinator holds no client state: the sites do
        self.state = federated.FederatedState(state.round, state.server, None, state.key)
        self.upload_template = jax.eval_shape(
            lambda s, x, y: algorithm.client_update(s.server, jax.tree_util.tree_map(lambda a: a[0], s.clients),
                                                    ClientData(x=x, y=y, offset=jnp.int32(0), n=jnp.int32(1),
                                                               capacity=1),
                                                    jax.random.key(0)).upload, state, fed.train.x, fed.train.y)
        self._slots = jax.jit(lambda s: federated._round_slots(s, self.num_clients, self.m, False, 0.0))
        self._update = jax.jit(algorithm.server_update)

    def server(self) -> Named:
        return to_named(self.state.server)

    def plan(self) -> List[Tuple[int, np.ndarray]]:
        """This round's participants in slot order, each with its key data."""
        idx, _, _, client_key = self._slots(self.state)
        ids = [int(i) for i in np.asarray(idx)]
        return [(i, np.asarray(jax.random.key_data(federated._client_key(client_key, jnp.int32(i)))))
                for i in ids]

    def check(self, client_id: int, reply: TrainReply) -> None:
        """Raise :class:`UploadError` (naming the site) unless ``reply`` fits the model."""
        from_named(reply.upload, self.upload_template, who=f"site {client_id}")

    def finish(self, plan: Sequence[Tuple[int, np.ndarray]], replies: Mapping[int, Optional[TrainReply]]
               ) -> Dict[str, Any]:
        """Aggregate the round: a participant without a reply (a dead site) or with a
        non-finite upload gets weight 0, like the engine's faulty clients.

        Raises:
          UploadError: a reply that does not fit the model (names the site).
        """
        uploads, weights, missing = [], [], []
        for i, _ in plan:
            reply = replies.get(i)
            if reply is None:
                missing.append(i)
                uploads.append(jax.tree_util.tree_map(lambda t: np.zeros(t.shape, t.dtype), self.upload_template))
                weights.append(0.0)
                continue
            upload = from_named(reply.upload, self.upload_template, who=f"site {i}")
            uploads.append(upload)
            weights.append(float(reply.n))
        stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *uploads)
        finite = np.asarray(federated.participants_finite(stacked, len(plan)))
        w = jnp.asarray(np.where(finite, weights, 0.0), jnp.float32)
        server = self._update(self.state.server, stacked, w)
        self.state = self.state._replace(round=self.state.round + 1, server=server)
        return {"participants": [i for i, _ in plan], "missing": missing,
                "faulty": [i for (i, _), ok in zip(plan, finite) if not ok and i not in missing]}

    def summarize(self, stats: Mapping[int, Named]) -> Dict[str, Any]:
        """The task's metrics from every site's evaluation stats (clients in id order)."""
        fed, task = self.setup.fed, self.setup.task
        ids = sorted(stats)
        joined = {k: np.concatenate([np.asarray(stats[i][k]) for i in ids]) for k in stats[ids[0]]}
        nested: Dict[str, Any] = {}
        for name, a in joined.items():  # "a/b" -> {"a": {"b": ...}}: the stats' own structure
            *parents, leaf = name.split("/")
            d = nested
            for p in parents:
                d = d.setdefault(p, {})
            d[leaf] = a
        return federated.summarize(task, nested, np.asarray(fed.test.n)[ids])
