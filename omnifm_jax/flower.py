"""Flower transport for :mod:`omnifm_jax.deploy` (the ``flower`` extra, Python >= 3.11).

``client_app`` and ``server_app`` carry a :class:`~omnifm_jax.deploy.Site` and a
:class:`~omnifm_jax.deploy.Coordinator` over Flower's message API: the server state and the
uploads cross as ``ArrayRecord``s of named arrays, the personal client state stays in the
node's ``context.state``, and the server follows the engine's participants and keys, so a
deployment ends on the engine's server state. The run config (``[tool.flwr.app.config]`` or
``flwr run --run-config``) names the omnifm config file (``config-path``), the output
directory (``out``) and the seconds a round waits with no new reply before the clients still
silent count as missing (``round-timeout``); each node's
``node_config`` names its client (``partition-id``). ``omnifm flower`` (:mod:`omnifm_jax.flower_launch`)
starts a local SuperLink and one SuperNode per client and runs this app.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

if TYPE_CHECKING:
    from omnifm_jax import deploy

# ``omnifm_jax.deploy`` (JAX, the engine) is imported where it is used, not here: Flower starts
# a process per message and loads this module in it, and the partition query each node answers
# first needs neither (about 2 s less per node on a 2-core CPU).

__all__ = ["client_app", "server_app", "launch", "write_outputs", "engine_difference", "STATE_KEY", "RESULT_FILE"]

STATE_KEY = "omnifm-client-state"
RESULT_FILE = "deployment.json"
_POLL_S = 0.2


_SCALAR = "#scalar"  # Flower's Array holds at least one dimension: a 0-d array crosses as [1] under this mark


def _record(named: Dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({(k + _SCALAR if np.ndim(v) == 0 else k): Array(np.ascontiguousarray(np.atleast_1d(v)))
                        for k, v in named.items()})


def _named(record: ArrayRecord) -> Dict[str, np.ndarray]:
    out = {}
    for k in record.keys():
        a = record[k].numpy()
        if k.endswith(_SCALAR):
            k, a = k[:-len(_SCALAR)], a.reshape(())
        out[k] = a
    return out


def _config(context: Context, *, node: bool = False) -> dict:
    """The omnifm config: the node's own (``config-path`` in its node config) or the run's."""
    path = context.node_config.get("config-path") if node else None
    return json.loads(Path(str(path or context.run_config["config-path"])).read_text())


# ----------------------------------------------------------------------------- client

client_app = ClientApp()


def _site(context: Context) -> deploy.Site:
    from omnifm_jax import deploy

    return deploy.Site(_config(context, node=True), int(context.node_config["partition-id"]))


@client_app.query()
def _query(msg: Message, context: Context) -> Message:
    info = ConfigRecord({"partition-id": int(context.node_config["partition-id"])})
    return Message(content=RecordDict({"info": info}), reply_to=msg)


def _state(site: deploy.Site, context: Context) -> Dict[str, np.ndarray]:
    if STATE_KEY in context.state:
        return _named(context.state[STATE_KEY])
    return site.initial_state()


@client_app.train()
def _train(msg: Message, context: Context) -> Message:
    site = _site(context)
    reply, new = site.train(_named(msg.content["server"]), msg.content["key"]["data"].numpy(),
                            _state(site, context))
    context.state[STATE_KEY] = _record(new)  # the personal state stays on this node
    upload = reply.upload
    if context.node_config.get("fault") == "malformed-upload":  # fault injection: a wrong dtype
        name = sorted(upload)[0]
        upload = {**upload, name: upload[name].astype(np.float64)}
    content = RecordDict({"upload": _record(upload), "info": ConfigRecord({"n": reply.n}),
                          "metrics": MetricRecord({k: float(v) for k, v in reply.metrics.items()})})
    return Message(content=content, reply_to=msg)


@client_app.evaluate()
def _evaluate(msg: Message, context: Context) -> Message:
    site = _site(context)
    stats = site.evaluate(_named(msg.content["server"]), _state(site, context))
    return Message(content=RecordDict({"stats": _record(stats)}), reply_to=msg)


# ----------------------------------------------------------------------------- server

server_app = ServerApp()


def _exchange(grid: Grid, messages: Dict[int, Message], timeout: float) -> Dict[int, Message]:
    """Send one message per client; its reply by client (errors and silence: absent).

    Waits until every reply is in or ``timeout`` seconds have passed with no new reply: each
    reply restarts the clock, so sites that start up and compile one after another on a busy
    machine are not cut off as long as they keep answering, and a dead node costs one
    ``timeout`` after the last reply."""
    ids = list(grid.push_messages(list(messages.values())))
    client_of = dict(zip(ids, messages))
    replies: Dict[int, Message] = {}
    deadline = time.time() + timeout
    pending = set(ids)
    while pending and time.time() < deadline:
        for rep in grid.pull_messages(list(pending)):
            mid = rep.metadata.reply_to_message_id
            pending.discard(mid)
            deadline = time.time() + timeout
            if not rep.has_error():
                replies[client_of[mid]] = rep
            else:
                print(f"[omnifm] client {client_of[mid]}: no result ({rep.error.code}: {rep.error.reason})",
                      flush=True)
        if pending:
            time.sleep(_POLL_S)
    return replies


def _nodes(grid: Grid, num_clients: int, timeout: float) -> Dict[int, int]:
    """``{client id: node id}``, asking every node which partition it holds."""
    deadline = time.time() + timeout
    while len(list(grid.get_node_ids())) < num_clients and time.time() < deadline:
        time.sleep(_POLL_S)
    node_ids = sorted(grid.get_node_ids())
    query = {nid: Message(content=RecordDict({"q": ConfigRecord({"x": 1})}), message_type=MessageType.QUERY,
                          dst_node_id=nid, group_id="partitions") for nid in node_ids}
    replies = _exchange(grid, query, timeout)
    return {int(rep.content["info"]["partition-id"]): nid for nid, rep in replies.items()}


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    from omnifm_jax import deploy

    cfg = _config(context)
    out = Path(str(context.run_config["out"]))
    timeout = float(context.run_config["round-timeout"])
    coord = deploy.Coordinator(cfg)
    node_of = _nodes(grid, coord.num_clients, timeout)
    missing_nodes = sorted(set(range(coord.num_clients)) - set(node_of))
    history = []
    for r in range(cfg["rounds"]):
        plan, server = coord.plan(), _record(coord.server())
        messages = {i: Message(content=RecordDict({"server": server, "key": ArrayRecord({"data": Array(key)})}),
                               message_type=MessageType.TRAIN, dst_node_id=node_of[i], group_id=f"round-{r + 1}")
                    for i, key in plan if i in node_of}
        replies = _exchange(grid, messages, timeout)
        results, rejected = {}, []
        for i, rep in replies.items():
            reply = deploy.TrainReply(_named(rep.content["upload"]), int(rep.content["info"]["n"]),
                                      dict(rep.content["metrics"]))
            try:
                coord.check(i, reply)
            except deploy.UploadError as exc:  # left out of the round like a faulty client
                rejected.append(i)
                print(f"[omnifm] round {r + 1}: rejected the upload of node {node_of[i]}: {exc}", flush=True)
                continue
            results[i] = reply
        entry = coord.finish(plan, results)
        history.append({"round": r + 1, **entry, "rejected": rejected})
        print(f"[omnifm] round {r + 1}: participants {entry['participants']}, no reply {entry['missing']}",
              flush=True)
    server = _record(coord.server())
    evaluations = _exchange(grid, {i: Message(content=RecordDict({"server": server}),
                                              message_type=MessageType.EVALUATE, dst_node_id=nid,
                                              group_id="evaluate") for i, nid in node_of.items()}, timeout)
    stats = {i: _named(rep.content["stats"]) for i, rep in evaluations.items()}
    metrics = coord.summarize(stats) if stats else {}
    np.savez(out / "server_state.npz", **coord.server())
    result = {"history": history, "evaluated_clients": sorted(stats), "nodes": {str(k): v for k, v in node_of.items()},
              "clients_without_node": missing_nodes,
              "metrics": {k: v for k, v in metrics.items() if k != "clients"},
              "clients": metrics.get("clients")}
    (out / RESULT_FILE).write_text(json.dumps(result, indent=2, default=float))


# ----------------------------------------------------------------------------- local deployment

_APP_PYPROJECT = """[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "omnifm-flower-app"
version = "1.0.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "omnifm"

[tool.flwr.app.components]
serverapp = "omnifm_flower_app:server_app"
clientapp = "omnifm_flower_app:client_app"

[tool.flwr.app.config]
config-path = ""
out = ""
round-timeout = 120.0
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc, timeout: float) -> None:
    import socket

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"a Flower process exited with status {proc.returncode} before it listened on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")


def _descendants(pid: int) -> list:
    """Live descendants of ``pid`` (Flower's helpers run in their own sessions), deepest first."""
    import os

    children: Dict[int, list] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        for c in children.get(stack.pop(), []):
            out.append(c)
            stack.append(c)
    return out[::-1]


def _stop(procs) -> None:
    """Stop every process started (and their descendants), by their own process ids."""
    import os
    import signal

    pids = []
    for p in reversed(procs):
        pids += _descendants(p.pid) + [p.pid]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        while time.time() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.1)
    for p in procs:
        try:
            p.wait(timeout=5)
        except Exception:  # noqa: BLE001 - already killed; nothing more to do
            pass


def launch(cfg: dict, out: Path, *, nodes: int, round_timeout: float = 120.0, log=print,
           node_configs: Optional[Dict[int, Dict[str, str]]] = None) -> dict:
    """Run ``cfg`` as a Flower deployment on this machine: a SuperLink and ``nodes`` SuperNodes
    (one per client) on free loopback ports, ``flwr run`` of this module's apps; every
    process started is stopped at the end. Returns the server's result
    (:data:`RESULT_FILE` in ``out``, with ``server_state.npz`` beside it).

    ``node_configs``: extra node-config entries of a node: ``config-path`` (the node's own
    omnifm config file, e.g. a site configured differently) or ``fault="malformed-upload"``
    (fault injection: the node sends one upload array in the wrong dtype)."""
    import os
    import subprocess
    import sys
    import tempfile

    from omnifm_jax import deploy

    deploy.check_supported(cfg)
    if nodes != cfg["num_clients"]:
        raise deploy.config_lib.ConfigError(f"--nodes {nodes}: one node per client is needed, and the config has "
                                            f"num_clients={cfg['num_clients']}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
    bin_dir = Path(sys.executable).parent
    tool = lambda name: str(bin_dir / name) if (bin_dir / name).exists() else name  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="omnifm-flower-") as tmp:
        tmp = Path(tmp)
        port = _free_port()
        home = tmp / "flwr_home"
        home.mkdir()
        (home / "config.toml").write_text(f'[superlink]\ndefault = "omnifm"\n\n[superlink.omnifm]\n'
                                          f'address = "127.0.0.1:{port}"\ninsecure = true\n')
        app = tmp / "app"
        app.mkdir()
        (app / "pyproject.toml").write_text(_APP_PYPROJECT)
        (app / "omnifm_flower_app").mkdir()  # Flower loads the components from the app's own package
        (app / "omnifm_flower_app" / "__init__.py").write_text(
            "from omnifm_jax import flower\n\nclient_app = flower.client_app\nserver_app = flower.server_app\n")
        env = dict(os.environ, FLWR_HOME=str(home), FLWR_DISABLE_UPDATE_CHECK="1", FLWR_TELEMETRY_ENABLED="0",
                   PYTHONUNBUFFERED="1")
        procs = []

        def start(name, cmd):
            f = open(tmp / f"{name}.log", "w")
            procs.append(subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=tmp))
            return procs[-1]

        def start_piped(cmd):
            procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp,
                                          text=True))
            return procs[-1]

        try:
            link = start("superlink", [tool("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                                       str(port), "--disable-runtime-dependency-installation"])
            _wait_port(port, link, 60)
            started, taken = [], {port}  # all nodes start together, then each is waited for: start-ups overlap
            for i in range(nodes):
                node_port = _free_port()
                while node_port in taken:  # no node listens yet, so the OS may hand out a port twice
                    node_port = _free_port()
                taken.add(node_port)
                node_config = f"partition-id={i} num-partitions={nodes}"
                for key, value in ((node_configs or {}).get(i) or {}).items():
                    node_config += f' {key}="{value}"'
                started.append((node_port, start(f"supernode-{i}", [
                    tool("flower-supernode"), "--insecure", "--superlink", f"127.0.0.1:{port}", "--host", "127.0.0.1",
                    "--port", str(node_port), "--node-config", node_config])))
            for node_port, node in started:
                _wait_port(node_port, node, 60)
            log(f"SuperLink on 127.0.0.1:{port}, {nodes} SuperNodes; running the app")
            (out / RESULT_FILE).unlink(missing_ok=True)
            run_config = (f'config-path="{out.resolve() / "config.json"}" out="{out.resolve()}" '
                          f"round-timeout={float(round_timeout)}")
            run = start_piped([tool("flwr"), "run", str(app), "omnifm", "--stream", "--run-config", run_config])
            lines = []
            for line in run.stdout:  # the server's progress, as it happens
                lines.append(line)
                if "[omnifm]" in line:
                    log(line[line.index("[omnifm]") + 9:].rstrip())
            run.wait()
            if not (out / RESULT_FILE).is_file():  # `flwr run` exits 0 even when the app failed
                raise RuntimeError("the deployment wrote no result; its output:\n" + "".join(lines)[-4000:])
        finally:
            _stop(procs)
    return json.loads((out / RESULT_FILE).read_text())


def write_outputs(cfg: dict, out: Path, result: dict, *, nodes: int) -> None:
    """``metrics.jsonl`` (one line per round; the evaluation on the last) and ``summary.json``
    of a deployment, from :func:`launch`'s result."""
    lines = [{"round": h["round"], "participants": h["participants"], "no_reply": h["missing"],
              "faulty": h["faulty"]} for h in result["history"]]
    lines[-1].update(result["metrics"], clients=result["clients"])
    (out / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = {"algorithm": cfg["algorithm"], "dataset": cfg["dataset"], "rounds": cfg["rounds"], "nodes": nodes,
               "last": {k: v for k, v in lines[-1].items() if k != "clients"}, "last_clients": result["clients"],
               "evaluated_clients": result["evaluated_clients"], "config": cfg}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=float))


def engine_difference(cfg: dict, out: Path) -> float:
    """Largest absolute difference between the deployment's final server state
    (``out/server_state.npz``) and the in-process engine's run of ``cfg``."""
    from omnifm_jax import deploy, experiment

    engine = experiment.run(cfg, None, progress=False, log=lambda _: None)
    ours = dict(np.load(out / "server_state.npz"))
    theirs = deploy.to_named(engine["state"].server)
    if ours.keys() != theirs.keys():
        raise deploy.config_lib.ConfigError("the deployment's server state has other arrays than the engine's")
    return max((float(np.max(np.abs(ours[k].astype(np.float64) - theirs[k].astype(np.float64))))
                for k in ours if ours[k].size), default=0.0)
