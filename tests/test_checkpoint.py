"""Checkpoints: exact round trip of a run state (typed PRNG key, NamedTuples, None leaves,
the knowledge bank, optimizer states), the last few kept, corrupt or incomplete steps
detected with a warning and skipped, config checks on resume, and the kill test: a
training process killed with SIGKILL after round r and resumed ends with the same
``params_sha256`` and the same ``metrics.jsonl`` as an uninterrupted run. That every
algorithm's state resumes bit for bit is checked in tests/test_conformance.py.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import bank as bank_lib
from omnifm_jax import checkpoint as ck
from omnifm_jax import config as config_lib
from omnifm_jax import federated
from omnifm_jax.algorithms.sgd import ClientState, ServerState

REPO = Path(__file__).resolve().parents[1]

# A read that fails on a damaged file can leave an orbax/tensorstore callback that fires
# after its event loop is closed; harmless, and not what these tests are about.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


# ----------------------------------------------------------------------------- a toy state

def toy_state(r: int, v: float = 0.0, *, key_seed: int = 0) -> federated.FederatedState:
    """A FederatedState with the shapes of nothing in particular but every kind of node a
    real one has: NamedTuples, dicts with None leaves, an optax state, a bank, a typed key."""
    v = float(v)
    shared = {"params": {"body": {"kernel": jnp.full((3, 2), v, jnp.float32)}, "head": None}}
    personal = {"params": {"body": None, "head": {"kernel": jnp.full((4, 2, 5), v + 1.0, jnp.float32)}}}
    bank = bank_lib.init(4, 3)
    bank = bank._replace(embeddings=bank.embeddings + v, hits=bank.hits + int(v), valid=bank.valid.at[1].set(True))
    opt = optax.adam(0.1).init(personal)
    return federated.FederatedState(jnp.int32(r), ServerState(shared, bank), ClientState(personal, opt),
                                    jax.random.fold_in(jax.random.key(key_seed), r))


def abstract(state):
    return jax.eval_shape(lambda: state)


_OPEN = []


@pytest.fixture(autouse=True)
def _close_checkpointers():
    yield
    while _OPEN:
        _OPEN.pop().close()


def checkpointer(directory, **kw):
    c = ck.RunCheckpointer(directory, **kw)
    _OPEN.append(c)
    return c


def save_rounds(directory, rounds, *, keep=3, meta=None):
    c = checkpointer(directory, keep=keep)
    for r in rounds:
        c.save(toy_state(r, r), dict(meta or {}, history=[{"round": r}]))
    return c


def assert_same_state(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    assert federated.state_hash(a) == federated.state_hash(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert x.dtype == y.dtype and x.shape == y.shape


# ----------------------------------------------------------------------------- round trip

def test_round_trip_is_exact_and_keeps_the_last_few(tmp_path):
    c = save_rounds(tmp_path / "ck", [1, 2, 3, 4, 5], keep=3, meta={"totals": {"faulty": 2}})
    assert c.steps() == [3, 4, 5]
    state, meta = c.restore_latest(abstract(toy_state(0)))
    assert_same_state(state, toy_state(5, 5))
    assert jax.dtypes.issubdtype(state.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(state.key), jax.random.key_data(toy_state(5).key))
    assert isinstance(state.server, ServerState) and isinstance(state.server.algorithm_state, bank_lib.Bank)
    assert state.server.params["params"]["head"] is None
    assert meta["round"] == 5 and meta["history"] == [{"round": 5}] and meta["totals"] == {"faulty": 2}
    # a concrete template works as well as an abstract one, and any kept step can be read
    state3, _ = c.restore(3, toy_state(0))
    assert_same_state(state3, toy_state(3, 3))


def test_saved_leaves_name_their_paths(tmp_path):
    c = save_rounds(tmp_path / "ck", [1])
    leaves = c.read_meta(1)["leaves"]
    paths = [x["path"] for x in leaves]
    assert "server/params/params/body/kernel" in paths and "clients/personal/params/head/kernel" in paths
    assert [x for x in leaves if x["key"]] == [{"path": "key", "shape": [2], "dtype": "uint32",
                                                "key": "threefry2x32"}]


def test_state_of_another_structure_is_refused(tmp_path):
    c = save_rounds(tmp_path / "ck", [1])
    other = toy_state(0)._replace(server=ServerState({"params": {"body": {"kernel": jnp.zeros((3, 3))}}}, None))
    with pytest.raises(ck.CheckpointMismatchError, match=r"does not fit this run's state: .*server/params"):
        c.restore_latest(abstract(other))


class OldServerState(NamedTuple):
    """``ServerState`` as it was before the rename: the algorithm's slot was called ``extra``."""
    params: Any
    extra: Any
    opt_state: Any = None


class OldClientState(NamedTuple):
    personal: Any
    opt_state: Any
    extra: Any = None


def test_checkpoint_written_before_the_renames_resumes(tmp_path):
    """A checkpoint whose tree names the algorithm slot ``extra`` and whose config uses the
    old spellings (``dropout``, a former data set name, MOON's ``mu``), written with the same
    orbax API, restores into today's state (``algorithm_state``) and passes the resume check
    of today's config."""
    new = toy_state(2, 2)
    old = new._replace(server=OldServerState(new.server.params, new.server.algorithm_state),
                       clients=OldClientState(new.clients.personal, new.clients.opt_state))
    old_cfg = dict(config_lib.load_config(), algorithm="moon", algorithm_kwargs={"mu": 1.0},
                   dataset="fusion_harvard")
    old_cfg["dropout"] = old_cfg.pop("client_dropout")
    c = checkpointer(tmp_path / "ck")
    c.save(old, {"config": old_cfg, "history": []})
    saved = json.loads((tmp_path / "ck" / "2" / "meta" / "metadata").read_text())
    assert "server/extra/embeddings" in [x["path"] for x in saved["leaves"]]  # really the old tree
    state, meta = c.restore_latest(abstract(toy_state(0)))
    assert_same_state(state, new)
    assert isinstance(state.server.algorithm_state, bank_lib.Bank)
    assert "server/algorithm_state/embeddings" in [x["path"] for x in meta["leaves"]]
    cfg = dict(config_lib.load_config(), algorithm="moon", algorithm_kwargs={"contrastive_weight": 1.0},
               dataset="harvard_fusion")
    ck.check_resumable(meta, cfg)
    with pytest.raises(config_lib.ConfigError, match=r"differs in \['client_dropout'\]"):
        ck.check_resumable(meta, dict(cfg, client_dropout=0.5))


# ----------------------------------------------------------------------------- corruption

def _data_files(step_dir: Path):
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no data files under {step_dir}"
    return files


def _restore_with_warning(c, match):
    with pytest.warns(ck.CorruptCheckpointWarning, match=match):
        return c.restore_latest(abstract(toy_state(0)))


def test_truncated_file_falls_back_to_previous_checkpoint(tmp_path):
    c = save_rounds(tmp_path / "ck", [1, 2, 3])
    for f in _data_files(tmp_path / "ck" / "3"):
        with open(f, "r+b") as fh:
            fh.truncate(max(1, f.stat().st_size // 2))
    state, meta = _restore_with_warning(c, r"round 3 .*corrupt or incomplete")
    assert meta["round"] == 2
    assert_same_state(state, toy_state(2, 2))
    # the bad step is moved aside (kept for inspection), no longer a checkpoint
    assert c.steps() == [1, 2]
    assert any(p.name.startswith("corrupt-3-") for p in (tmp_path / "ck").iterdir())
    c.save(toy_state(3, 30))  # and the round can be checkpointed again
    assert c.steps() == [1, 2, 3]


def test_overwritten_bytes_fail_the_integrity_check(tmp_path):
    c = save_rounds(tmp_path / "ck", [1, 2])
    rng = np.random.default_rng(0)
    for f in _data_files(tmp_path / "ck" / "2"):
        f.write_bytes(rng.integers(0, 256, f.stat().st_size, dtype=np.uint8).tobytes())
    _, meta = _restore_with_warning(c, r"round 2")
    assert meta["round"] == 1


def test_changed_values_with_a_valid_encoding_fail_the_integrity_check(tmp_path):
    """A step whose arrays are readable but are not the ones recorded (e.g. a file copied from
    another step) is caught by the sha256 integrity record."""
    c = save_rounds(tmp_path / "ck", [1, 2])
    meta1 = c.read_meta(1)
    meta_file = tmp_path / "ck" / "2" / "meta" / "metadata"
    meta2 = json.loads(meta_file.read_text())
    meta2["state_sha256"] = meta1["state_sha256"]
    meta_file.write_text(json.dumps(meta2))
    _, meta = _restore_with_warning(c, r"round 2: integrity check failed")
    assert meta["round"] == 1


def test_missing_commit_marker_or_metadata_falls_back(tmp_path):
    c = save_rounds(tmp_path / "ck", [1, 2, 3])
    marker = tmp_path / "ck" / "3" / ck.COMMIT_MARKER
    if not marker.exists():
        pytest.skip("this orbax version writes no commit marker on a local file system")
    marker.unlink()
    import shutil
    shutil.rmtree(tmp_path / "ck" / "2" / "meta")
    with pytest.warns(ck.CorruptCheckpointWarning) as record:
        _, meta = c.restore_latest(abstract(toy_state(0)))
    assert meta["round"] == 1
    text = " ".join(str(w.message) for w in record)
    assert "commit marker" in text and "metadata item missing" in text


def test_partially_written_tmp_directory_is_ignored(tmp_path):
    save_rounds(tmp_path / "ck", [1, 2]).close()
    tmp = tmp_path / "ck" / "3.orbax-checkpoint-tmp-1700000000000000"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "half_written").write_bytes(b"\0" * 10)
    c = checkpointer(tmp_path / "ck")
    assert c.steps() == [1, 2]
    _, meta = c.restore_latest(abstract(toy_state(0)))
    assert meta["round"] == 2
    assert not tmp.exists()  # cleaned up when the manager starts


def test_no_good_checkpoint_is_an_error(tmp_path):
    c = checkpointer(tmp_path / "ck")
    with pytest.raises(ck.CheckpointError, match="no checkpoint to resume from"):
        c.restore_latest(abstract(toy_state(0)))
    c.save(toy_state(1, 1))
    for f in _data_files(tmp_path / "ck" / "1"):
        f.write_bytes(b"")
    with pytest.warns(ck.CorruptCheckpointWarning):
        with pytest.raises(ck.CheckpointError, match=r"no good checkpoint .*rounds \[1\]"):
            c.restore_latest(abstract(toy_state(0)))


# ----------------------------------------------------------------------------- config checks

def test_resume_config_check():
    cfg = config_lib.load_config()
    meta = {"round": 4, "config": cfg, "data_sha256": "a" * 64}
    ck.check_resumable(meta, cfg, data_sha256="a" * 64)
    more = dict(cfg, rounds=20, eval_every=5, checkpoint_every=2, checkpoint_keep=1)
    ck.check_resumable(meta, more)  # training further, other bookkeeping: fine
    with pytest.raises(config_lib.ConfigError,
                       match=r"differs in \['algorithm_kwargs', 'lr'\].*lr: checkpoint 0.1 vs now 0.5"):
        ck.check_resumable(meta, dict(cfg, lr=0.5, algorithm_kwargs={"top_k": 3}))
    with pytest.raises(config_lib.ConfigError, match="it is at round 4 but rounds=3"):
        ck.check_resumable(meta, dict(cfg, rounds=3))
    with pytest.raises(config_lib.ConfigError, match="data differ"):
        ck.check_resumable(meta, cfg, data_sha256="b" * 64)


# ----------------------------------------------------------------------------- kill and resume

TINY_CONFIG = """
def get_config():
    return {
        "algorithm": "omnifm", "dataset": "synthetic",
        "dataset_kwargs": {"image_size": 16, "samples_per_class_per_modality": 4, "num_classes": 3,
                           "num_modalities": 2, "channels": 1, "min_size": 4},
        "backbone": "cnn", "backbone_kwargs": {"hidden": 16},
        "num_clients": 3, "rounds": 6, "local_epochs": 1, "batch_size": 8, "client_dropout": 0.3,
        "algorithm_kwargs": {"bank_capacity": 8, "spectral_dim": 8, "attn_dim": 8, "num_suffix": 2},
        "eval_every": 1, "checkpoint_every": 1, "checkpoint_keep": 3,
    }
"""


def _env(cache: Path):
    env = dict(os.environ)
    # Share compiled programs between the processes of this test (compilation dominates): the
    # suite's persistent cache (tests/conftest.py), or ``cache`` where none is set.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    env.update(JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1", PYTHONWARNINGS="default")
    return env


def _train_cmd(config: Path, out: Path, *extra):
    return [sys.executable, "-m", "omnifm_jax.cli", "train", "--config", str(config), "--out", str(out),
            "--quiet", *extra]


def _train(config, out, env, *extra):
    proc = subprocess.run(_train_cmd(config, out, *extra), env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _result(out: Path):
    summary = json.loads((out / "summary.json").read_text())
    return summary["params_sha256"], (out / "metrics.jsonl").read_text().splitlines()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An uninterrupted run, and a run killed (SIGKILL) after round 2 and resumed."""
    root = tmp_path_factory.mktemp("kill")
    config = root / "tiny.py"
    config.write_text(TINY_CONFIG)
    env = _env(root / "jax_cache")
    timings = {}

    # the uninterrupted run goes on beside the one that is killed (each is mostly a process
    # starting up and loading its programs; one after the other they idled a core)
    t = time.time()
    full_log = root / "full.stderr"
    with open(full_log, "w") as f:  # a file, not a pipe: nobody reads it until the run ends
        full = subprocess.Popen(_train_cmd(config, root / "full"), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=f)
    killed = root / "killed"
    proc = subprocess.Popen(_train_cmd(config, killed), env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        r = 2
        while not (killed / "checkpoints" / str(r)).is_dir():
            assert proc.poll() is None, "the run ended before round %d was checkpointed" % r
            assert time.time() - t < 300
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        timings["until_killed"] = time.time() - t
        assert proc.returncode == -signal.SIGKILL
        assert not (killed / "summary.json").exists()  # it really did not finish
        full.wait(timeout=600)
    finally:  # neither run outlives the fixture, also when a check above fails
        for p in (proc, full):
            if p.poll() is None:
                p.kill()
                p.wait()
        proc.stderr.close()
    assert full.returncode == 0, full_log.read_text()[-3000:]
    timings["uninterrupted"] = time.time() - t
    steps_at_kill = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())

    t = time.time()
    resumed = _train(config, killed, env, "--resume")
    timings["resume"] = time.time() - t
    print("kill/resume timings (s):", {k: round(v, 1) for k, v in timings.items()}, "steps at kill:", steps_at_kill)
    return {"root": root, "config": config, "env": env, "full": root / "full", "killed": killed,
            "resumed_stdout": resumed.stdout, "steps_at_kill": steps_at_kill}


def test_killed_and_resumed_run_is_bit_identical(runs):
    full_hash, full_lines = _result(runs["full"])
    hash_, lines = _result(runs["killed"])
    assert runs["steps_at_kill"] and runs["steps_at_kill"][-1] < 6
    assert "resuming from the checkpoint of round" in runs["resumed_stdout"]
    assert hash_ == full_hash
    assert lines == full_lines and len(lines) == 7  # round 0 and six rounds
    assert sum(json.loads(x).get("dropped_clients", 0) for x in lines) == 6  # one of three per round
    summary = json.loads((runs["killed"] / "summary.json").read_text())
    assert summary["resumed_from_round"] in runs["steps_at_kill"]
    assert summary["dropped_clients_total"] == 6


def test_resume_from_a_corrupt_latest_checkpoint_falls_back_and_matches(runs):
    out = runs["killed"]
    steps = sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [4, 5, 6]
    for f in _data_files(out / "checkpoints" / "6"):
        with open(f, "r+b") as fh:
            fh.truncate(1)
    proc = _train(runs["config"], out, runs["env"], "--resume")
    assert "CorruptCheckpointWarning" in proc.stderr and "round 6" in proc.stderr
    assert "resuming from the checkpoint of round 5" in proc.stdout
    assert _result(out) == _result(runs["full"])


def test_resume_with_another_config_is_refused_before_any_work(runs, capsys):
    from omnifm_jax import cli

    code = cli.main(["train", "--out", str(runs["killed"]), "--resume", "--set", "lr=0.5", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "['lr']" in err and "lr: checkpoint 0.05 vs now 0.5" in err
