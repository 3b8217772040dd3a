"""The Flower transport (the flower extra): named arrays through Flower's records, and a local
deployment (a SuperLink and a SuperNode per client) that ends on the engine's server state."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="the Flower tests need the flower extra (pip install 'omnifm-jax[flower]')")

from omnifm_jax import flower  # noqa: E402

# One xdist worker runs these one after another: each checks the Flower processes it started,
# and a concurrent deployment's processes would look like leftovers. The same worker runs the
# other tests that start processes of their own (tests/conftest.py: PROCESS_GROUP).
pytestmark = pytest.mark.xdist_group("processes")


def test_named_arrays_cross_flowers_records_unchanged():
    rng = np.random.default_rng(0)
    named = {"a/b": rng.normal(size=(3, 2)).astype(np.float32), "scalar": np.float32(2.5),
             "flag": np.asarray(True), "ids": np.arange(4, dtype=np.int32), "empty": np.zeros((0, 3), np.float32)}
    back = flower._named(flower._record(named))
    assert back.keys() == named.keys()
    for k, v in named.items():
        assert back[k].shape == np.shape(v) and back[k].dtype == np.asarray(v).dtype, k
        np.testing.assert_array_equal(back[k], v)


def test_the_app_module_loads_without_jax():
    """Flower loads the app in a new process for every message; the partition query, each
    node's first, must not pay for importing JAX and the engine (they load with the first
    training or evaluation message)."""
    code = ("import sys\nfrom omnifm_jax import flower\n"
            "assert flower.client_app and flower.server_app\nprint(sorted(m for m in sys.modules if m == 'jax'"
            " or m.startswith(('jax.', 'flax', 'omnifm_jax.deploy', 'omnifm_jax.federated'))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr[-2000:]


def test_a_round_waits_while_replies_keep_coming_and_ends_a_timeout_after_the_last():
    """Replies 0.7 s apart with a 1 s timeout all count (a deadline from the start would lose the
    third); the silent client costs one timeout after the last reply, not more."""
    import time
    from types import SimpleNamespace

    class Grid:
        def __init__(self, delays):
            self.t0, self.delays = None, delays

        def push_messages(self, messages):
            self.t0 = time.time()
            return [f"m{i}" for i in range(len(messages))]

        def pull_messages(self, ids):
            now = time.time() - self.t0
            return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=m), has_error=lambda: False,
                                    content=m) for m in ids if self.delays.get(m, float("inf")) <= now]

    grid = Grid({"m0": 0.7, "m1": 1.4, "m2": 2.1})  # m3 never answers
    start = time.time()
    replies = flower._exchange(grid, {10: None, 11: None, 12: None, 13: None}, timeout=1.0)
    took = time.time() - start
    assert sorted(replies) == [10, 11, 12] and [replies[i].content for i in (10, 11, 12)] == ["m0", "m1", "m2"]
    assert 2.1 + 1.0 <= took < 2.1 + 1.0 + 2.0, took  # one timeout after the last reply (slack for a busy machine)


def _stop_node(partition: int, nodes: int) -> list:
    """Stop (SIGTERM) the SuperNode holding ``partition`` of a ``nodes``-node deployment."""
    import os
    import signal

    found = subprocess.run(["pgrep", "-f", f"partition-id={partition} num-partitions={nodes}"],
                           capture_output=True, text=True).stdout.split()
    pids = [int(p) for p in found]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return pids


def _fault_deployment(root):
    """One 2-round deployment of 3 nodes (one deployment for three faults: each costs ~30-60 s of
    process start-up and compilation on 2 cores, and every node a process per message): node 1
    uploads an array in the wrong dtype in round 1 and is stopped after it, node 2 built another
    model (it refuses the server state).

    The stopped SuperNode leaves the federation, so Flower answers round 2's message to it with an
    error at once and the round waits no timeout (checked). A node that dies without leaving
    (SIGKILL) is silent instead: it costs one ``round-timeout`` after the last reply, or Flower's
    heartbeat patience (2 x 30 s) if that comes first; the fake-grid test above pins that clock,
    and a real one would hold the deployment a whole timeout longer for the same branch (no reply:
    missing)."""
    import json
    import time

    from omnifm_jax import config as config_lib

    cfg = config_lib.apply_overrides(config_lib.load_config("default"),
                                     ["num_clients=3", "rounds=2", "algorithm=fedavg", "dataset_kwargs.image_size=16",
                                      "backbone_kwargs.hidden=16"])
    own = root / "site2.json"
    own.write_text(json.dumps(config_lib.apply_overrides(cfg, ["backbone_kwargs.hidden=8"])))
    logged, stopped, at = [], [], {}

    def log(line):
        logged.append(line)
        at.setdefault(line.split(":")[0], time.time())
        if line.startswith("round 1:") and not stopped:
            stopped.extend(_stop_node(1, 3))  # gone before it can answer round 2

    out = root / "faults"
    result = flower.launch(cfg, out, nodes=3, round_timeout=FAULT_TIMEOUT, log=log,
                           node_configs={1: {"fault": "malformed-upload"}, 2: {"config-path": str(own)}})
    flower.write_outputs(cfg, out, result, nodes=3)
    return {"result": result, "text": "\n".join(logged), "stopped": stopped, "at": at, "out": out}


#: The fault deployment's round timeout: generous, since no round of it waits one out (its lost
#: node left the federation) while its first replies wait for processes that start up beside
#: the other deployment's.
FAULT_TIMEOUT = 120


@pytest.fixture(scope="module")
def deployments(tmp_path_factory):
    """Both local deployments at once: each is mostly processes starting up and waiting on each
    other, and one after the other they held a worker for about two minutes. The engine check
    runs as ``omnifm flower`` (2 nodes, FedPer) beside the fault deployment (3 nodes, in this
    process); their node configs differ (``num-partitions``), so stopping a node of one cannot
    touch the other. The processes left running are looked for once both have ended."""
    root = tmp_path_factory.mktemp("flower")
    cli_out = root / "cli"
    cli = subprocess.Popen([sys.executable, "-m", "omnifm_jax.cli", "flower", "--config", "default", "--nodes", "2",
                            "--set", "num_clients=2", "--set", "rounds=1", "--set", "algorithm=fedper",
                            "--set", "dataset_kwargs.image_size=16", "--set", "backbone_kwargs.hidden=16",
                            "--out", str(cli_out), "--check",
                            "--round-timeout", "300"],  # all nodes live: no round waits it out
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        faults = _fault_deployment(root)
        stdout, stderr = cli.communicate(timeout=600)
    finally:
        if cli.poll() is None:  # the fault deployment failed: stop the CLI and the Flower processes it started
            flower._stop([cli])
    leftover = subprocess.run(["pgrep", "-f", "flower-supernode|flower-superlink"], capture_output=True, text=True)
    return {"cli": (cli.returncode, stdout, stderr, cli_out), "faults": faults, "leftover": leftover.stdout.strip()}


@pytest.mark.slow
def test_a_local_flower_deployment_ends_on_the_engines_state(deployments):
    returncode, stdout, stderr, out = deployments["cli"]
    assert returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert "engine comparison: max |difference| = 0" in stdout
    for name in ("summary.json", "metrics.jsonl", "config.json", "server_state.npz"):
        assert (out / name).is_file(), name
    assert deployments["leftover"] == "", "processes left running: " + deployments["leftover"]


@pytest.mark.slow
def test_a_stopped_node_a_malformed_upload_and_a_misconfigured_site_are_left_out_and_the_run_ends(deployments):
    """Each fault of :func:`_fault_deployment` is left out naming it, and the run ends with its
    outputs (node 0's)."""
    import json

    d = deployments["faults"]
    text, result, at = d["text"], d["result"], d["at"]
    assert d["stopped"], text
    assert "client 1: no result" in text, text
    assert at["round 2"] - at["round 1"] < FAULT_TIMEOUT / 2, (at, text)  # a node that left costs no timeout
    assert "rejected the upload of node" in text and "site 1 sent" in text and "as float64" in text, text
    assert "client 2: no result" in text and "the coordinator sent params/params/backbone/fc1" in text, text
    first, second = result["history"]
    assert first["participants"] == [0, 1, 2] and first["rejected"] == [1] and first["missing"] == [1, 2], first
    assert second["rejected"] == [] and second["missing"] == [1, 2], second
    assert "round 2: participants [0, 1, 2], no reply [1, 2]" in text, text
    assert result["evaluated_clients"] == [0]  # the stopped and the misconfigured node evaluate nothing
    summary = json.loads((d["out"] / "summary.json").read_text())
    assert summary["evaluated_clients"] == [0] and summary["rounds"] == 2
    assert deployments["leftover"] == "", "processes left running: " + deployments["leftover"]
