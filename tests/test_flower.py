"""The Flower transport (the flower extra): named arrays through Flower's records, and a local
deployment (SuperLink + 3 SuperNodes) that ends on the engine's server state."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="the Flower tests need the flower extra (pip install 'omnifm-jax[flower]')")

from omnifm_jax import flower  # noqa: E402


def test_named_arrays_cross_flowers_records_unchanged():
    rng = np.random.default_rng(0)
    named = {"a/b": rng.normal(size=(3, 2)).astype(np.float32), "scalar": np.float32(2.5),
             "flag": np.asarray(True), "ids": np.arange(4, dtype=np.int32), "empty": np.zeros((0, 3), np.float32)}
    back = flower._named(flower._record(named))
    assert back.keys() == named.keys()
    for k, v in named.items():
        assert back[k].shape == np.shape(v) and back[k].dtype == np.asarray(v).dtype, k
        np.testing.assert_array_equal(back[k], v)


@pytest.mark.slow
def test_a_local_flower_deployment_ends_on_the_engines_state(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "omnifm_jax.cli", "flower", "--config", "default", "--nodes", "3",
                           "--set", "rounds=1", "--set", "algorithm=fedper", "--set", "dataset_kwargs.image_size=16",
                           "--set", "backbone_kwargs.hidden=16", "--out", str(out), "--check"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "engine comparison: max |difference| = 0" in proc.stdout
    for name in ("summary.json", "metrics.jsonl", "config.json", "server_state.npz"):
        assert (out / name).is_file(), name
    leftover = subprocess.run(["pgrep", "-f", "flower-supernode|flower-superlink"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "processes left running: " + leftover.stdout
