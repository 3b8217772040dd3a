"""One run over two JAX processes (4 CPU devices each, localhost) against the same run in one
process; a run whose peer dies; joining settings."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from omnifm_jax import checkpoint as ckpt_lib
from omnifm_jax import config as config_lib
from omnifm_jax import distributed, experiment, federated

#: 8 clients over 2 x 4 devices; tiny shapes; the last round checkpointed (the state compared).
TINY = ["rounds=2", "num_clients=8", "shard_clients=True", "local_epochs=1", "batch_size=4",
        "dataset_kwargs.samples_per_class_per_modality=4", "dataset_kwargs.image_size=16",
        "backbone_kwargs.hidden=16", "diagnostics=0", "eval_train_loss=False", "checkpoint_every=2",
        "algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8", "algorithm_kwargs.bank_capacity=8",
        "algorithm_kwargs.num_suffix=2"]
ALGORITHMS = ("fedavg", "fedper", "omnifm")
PEER_TIMEOUT = 5  # seconds
PER_ALGORITHM = {"fedavg": TINY[:11], "fedper": TINY[:11], "omnifm": TINY}

# One process of the run: `omnifm train` for each [out, overrides, extra arguments] (the first
# call joins the run; the peer timeout is argv[5]).
WORKER = textwrap.dedent(r"""
    import json, sys
    from omnifm_jax import cli
    process, port, root, runs, timeout = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4]), sys.argv[5]
    for name, overrides, extra in runs:
        argv = ["train", "--quiet", "--out", f"{root}/{name}", "--coordinator", f"127.0.0.1:{port}",
                "--num-processes", "2", "--process-id", process, "--peer-timeout", timeout] + extra
        for o in overrides:
            argv += ["--set", o]
        rc = cli.main(argv)
        print("exit", name, rc, flush=True)
""")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(process: int, port: int, root, runs: list, peer_timeout: int) -> subprocess.Popen:
    import json

    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", PYTHONUNBUFFERED="1")
    for var in distributed.ENV:
        env.pop(var, None)
    return subprocess.Popen([sys.executable, "-c", WORKER, str(process), str(port), str(root), json.dumps(runs),
                             str(peer_timeout)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def final_state(out, cfg):
    """The state in the run's last checkpoint, restored into the structure ``cfg`` builds."""
    setup = experiment.setup(cfg)
    template = jax.eval_shape(lambda k: federated.init(setup.algorithm, k, setup.fed.train), jax.random.key(cfg["seed"]))
    with ckpt_lib.RunCheckpointer(out / ckpt_lib.CHECKPOINT_SUBDIR) as ckpt:
        state, meta = ckpt.restore_latest(template)
    return state, meta


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    """One pair of processes runs, in order: a run into a directory the primary refuses (every
    process must stop it with an error and go on); FedAvg and OmniFM for 2 rounds; FedPer
    (personal client states) for 1 round, then resumed to 2; and a long FedAvg run during which
    process 1 is killed (process 0 must stop with an error, not wait)."""
    root = tmp_path_factory.mktemp("multiprocess")
    (root / "taken").mkdir()
    (root / "taken" / "summary.json").write_text("{}")  # a finished run: refused without --overwrite
    runs = [["taken", ["rounds=1", "num_clients=8", "shard_clients=True"], []],
            ["fedavg", PER_ALGORITHM["fedavg"] + ["algorithm=fedavg"], []],
            ["fedper", PER_ALGORITHM["fedper"] + ["algorithm=fedper", "rounds=1", "checkpoint_every=1"], []],
            ["fedper", ["rounds=2"], ["--resume"]],
            ["omnifm", PER_ALGORITHM["omnifm"] + ["algorithm=omnifm"], []],
            ["long", PER_ALGORITHM["fedavg"] + ["rounds=400", "algorithm=fedavg", "checkpoint_every=0"], []]]
    port = free_port()
    procs = [start(i, port, root, runs, peer_timeout=PEER_TIMEOUT) for i in (0, 1)]
    long_metrics = root / "long" / "metrics.jsonl"
    deadline = time.time() + 240
    try:
        while not (long_metrics.is_file() and len(long_metrics.read_text().splitlines()) >= 2):
            if time.time() > deadline or any(p.poll() is not None for p in procs):
                pytest.fail("the two-process runs stopped or did not reach the long run in 240 s:\n"
                            + "\n".join(p.communicate(timeout=30)[0][-3000:] for p in procs if p.poll() is not None))
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        outputs = [p.communicate(timeout=60)[0] for p in procs]
        stopped_after = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is not None:
                continue
            p.kill()
    return root, outputs, (procs[0].returncode, stopped_after)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_two_processes_equal_one_process(two_process_runs, algorithm):
    root, outputs, _ = two_process_runs
    out = root / algorithm
    for text in outputs:
        assert f"exit {algorithm} 0" in text, text[-3000:]
    # the primary process alone wrote the outputs; the other printed no "outputs in"
    assert f"outputs in {out}" in outputs[0] and "outputs in" not in outputs[1]
    for name in ("summary.json", "metrics.jsonl", "config.json"):
        assert (out / name).is_file()
    cfg = config_lib.apply_overrides(config_lib.load_config("default"), PER_ALGORITHM[algorithm]
                                     + [f"algorithm={algorithm}"])
    multi, meta = final_state(out, cfg)
    assert int(multi.round) == 2 and [h["round"] for h in meta["history"]] == [0, 1, 2]
    if algorithm == "fedper":  # resumed: process 0 read the checkpoint of round 1 and sent it to process 1
        assert "resuming from the checkpoint of round 1" in outputs[0]
    # the same run in this process, on one device (its round is the sharded round's reference)
    single = experiment.run(config_lib.apply_overrides(cfg, ["shard_clients=False", "checkpoint_every=0"]),
                            None, progress=False, log=lambda _: None)
    a = jax.tree_util.tree_leaves_with_path((multi.server, multi.clients))
    b = jax.tree_util.tree_leaves((single["state"].server, single["state"].clients))
    assert len(a) == len(b) > 0
    for (path, x), y in zip(a, b):
        x, y = np.asarray(x), np.asarray(y)
        assert x.shape == y.shape, jax.tree_util.keystr(path)
        # sums across processes are added in another order: a few ulp (measured <= 3e-8 on fedavg)
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
    # metrics: the same predictions
    assert meta["history"][-1]["accuracy"] == pytest.approx(single["history"][-1]["accuracy"], abs=1e-9)


def test_a_dead_peer_stops_the_run_with_an_error(two_process_runs):
    _, outputs, (returncode, stopped_after) = two_process_runs
    assert returncode not in (0, None) and stopped_after < 60, (returncode, stopped_after)
    assert "exit long" not in outputs[0]  # it did not finish the run as if nothing had happened
    assert "stopped sending heartbeats" in outputs[0] or "heartbeat timeout" in outputs[0], outputs[0][-3000:]


def test_settings_from_arguments_and_environment():
    assert distributed.settings(environ={}) is None
    assert distributed.settings("h:1", 2, 1, environ={}) == ("h:1", 2, 1)
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"}
    assert distributed.settings(environ=env) == ("10.0.0.1:1234", 4, 3)
    assert distributed.settings(process_id=0, environ=env) == ("10.0.0.1:1234", 4, 0)  # arguments win
    with pytest.raises(config_lib.ConfigError, match=r"missing: num_processes \(--num-processes or \$JAX_NUM"):
        distributed.settings("h:1", None, 0, environ={})
    with pytest.raises(config_lib.ConfigError, match="HOST:PORT"):
        distributed.settings("nohost", 2, 0, environ={})
    with pytest.raises(config_lib.ConfigError, match="process_id < num_processes"):
        distributed.settings("h:1", 2, 2, environ={})
    with pytest.raises(config_lib.ConfigError, match="integers"):
        distributed.settings("h:1", "two", 0, environ={})
    with pytest.raises(config_lib.ConfigError, match="peer timeout"):
        distributed.initialize("h:1", 2, 0, heartbeat_timeout_s=0)


def test_one_process_needs_no_joining_and_keeps_its_results(monkeypatch):
    for var in distributed.ENV:
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() is False  # no settings: nothing joins
    assert distributed.is_primary() and jax.process_count() == 1
    tree = {"a": jax.numpy.arange(3.0), "k": jax.random.key(0)}
    host = distributed.to_host(tree)
    assert host["a"] is tree["a"]  # nothing to gather in one process
    assert distributed.from_primary(lambda: ("x", {"y": 1}), what="t") == ("x", {"y": 1})
    with pytest.raises(KeyError):
        distributed.from_primary(lambda: {}["missing"], what="t")


def test_a_multi_process_run_needs_sharded_clients_and_an_output_directory(monkeypatch, capsys):
    from omnifm_jax import cli

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    cfg = config_lib.apply_overrides(config_lib.load_config("default"), ["num_clients=8"])
    with pytest.raises(config_lib.ConfigError, match="set shard_clients=True"):
        experiment.check_devices(cfg)
    experiment.check_devices(config_lib.apply_overrides(cfg, ["shard_clients=True"]))  # 8 clients, 1 device
    monkeypatch.setattr(distributed, "initialize", lambda *a, **k: True)  # as if it had joined a run
    assert cli.main(["train", "--coordinator", "h:1", "--num-processes", "2", "--process-id", "1"]) == 2
    assert "a multi-process run needs --out" in capsys.readouterr().err


def test_a_step_that_fails_on_the_primary_stops_every_process(two_process_runs):
    _, outputs, _ = two_process_runs
    assert "exit taken 2" in outputs[0] and "exit taken 2" in outputs[1]  # both stopped, with status 2
    assert "already holds" in outputs[0] or "finished run" in outputs[0], outputs[0][-2000:]
    assert "checking the output directory" in outputs[1] and "failed on process 0" in outputs[1], outputs[1][-2000:]
