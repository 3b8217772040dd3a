"""Nothing lost, nothing unclear: a run directory belongs to one run, and every failure a user
can cause gets the tool's own one-line message and exit code 2 before any output is written.
Each case is a row of docs/robustness.md's "Bad input and the error it gives" table (listed in
tests/bad_inputs.py)."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from omnifm_jax import cli, rundir
from omnifm_jax.data.breakhis import load_breakhis_image
from omnifm_jax.data.io import DataFileError
from omnifm_jax.data.medmnist import load_npz_images

# A tiny run: 3 clients, 36 images, one round, no checkpoints unless asked; FedAvg, the
# cheapest algorithm to compile (what a run directory does is the same for every algorithm).
TINY = ["--quiet", "--set", "num_clients=3", "--set", "dataset_kwargs.samples_per_class_per_modality=4",
        "--set", "dataset_kwargs.image_size=16", "--set", "backbone_kwargs.hidden=8", "--set", "batch_size=4",
        "--set", "rounds=1", "--set", "checkpoint_every=0", "--set", "eval_train_loss=False",
        "--set", "algorithm=fedavg"]


def train(capsys, out, *extra):
    code = cli.main(["train", *TINY, *extra, "--out", str(out)])
    return code, capsys.readouterr().err


def digest(directory: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


def assert_one_line_error(code, err, pattern):
    import re

    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("omnifm: error: "), err
    assert re.search(pattern, lines[0]), lines[0]


# ----------------------------------------------------------------------- one run per directory

def test_a_finished_run_is_never_overwritten_silently_and_overwrite_replaces_it_whole(tmp_path, capsys):
    out = tmp_path / "y"
    code, err = train(capsys, out)
    assert code == 0, err
    before = digest(out)
    assert {"config.json", "metrics.jsonl", "summary.json"} <= set(before)
    code, err = train(capsys, out, "--set", "seed=1")
    assert_one_line_error(code, err, r"--out .*y already holds the outputs of an earlier run \(config\.json, "
                                     r"metrics\.jsonl.*--resume.*--overwrite")
    assert digest(out) == before  # byte-identical: nothing of the refused run was written
    (out / "notes.txt").write_text("mine")  # a file that is not a run output survives an overwrite
    code, err = train(capsys, out, "--set", "seed=1", "--overwrite")
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2  # rounds 0 and 1 of the new run only
    assert (out / "notes.txt").read_text() == "mine"
    assert not [p for p in out.iterdir() if p.name.startswith(".replaced")]


def test_a_flower_deployment_is_refused_an_earlier_runs_directory_before_it_starts_anything(tmp_path, capsys,
                                                                                           monkeypatch):
    pytest.importorskip("flwr", reason="omnifm flower needs the flower extra")
    from omnifm_jax import flower

    out = tmp_path / "f"
    code, err = train(capsys, out)
    assert code == 0, err
    before = digest(out)
    started = []
    monkeypatch.setattr(flower, "launch", lambda *a, **k: started.append(a) or {})
    args = ["flower", "--nodes", "2", "--set", "dataset_kwargs.image_size=16", "--out", str(out)]
    code, err = cli.main(args), capsys.readouterr().err
    assert_one_line_error(code, err, r"--out .*f already holds the outputs of an earlier run \(config\.json, "
                                     r"metrics\.jsonl.*--overwrite")
    assert started == [] and digest(out) == before
    with rundir.RunDirectory(tmp_path / "held"):  # a directory a live run holds
        code, err = cli.main(args[:-1] + [str(tmp_path / "held")]), capsys.readouterr().err
    assert_one_line_error(code, err, r"is in use by run pid")
    assert started == []


HOLD = textwrap.dedent("""
    import sys, time
    from omnifm_jax import rundir
    claim = rundir.RunDirectory(sys.argv[1]).acquire()
    print("HELD", flush=True)
    time.sleep(120)
""")


def test_a_directory_held_by_a_live_run_is_refused_and_a_killed_runs_lock_is_not_stale(tmp_path, capsys):
    out = tmp_path / "x"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "HELD"
        code, err = train(capsys, out)
        assert_one_line_error(code, err, rf"--out .*x is in use by run pid {holder.pid} on .*; wait for it")
        assert not (out / "metrics.jsonl").exists() and not (out / "config.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The killed holder's lock file is still there, its lock is not: the directory is free.
    assert (out / rundir.LOCK_NAME).exists()
    code, err = train(capsys, out)
    assert code == 0, err


def test_the_lock_is_exclusive_between_two_claims_and_released_after(tmp_path):
    out = tmp_path / "z"
    with rundir.RunDirectory(out):
        with pytest.raises(rundir.RunDirError, match="is in use by run pid"):
            rundir.RunDirectory(out).acquire()
    with rundir.RunDirectory(out):  # released: claimable again
        pass
    with pytest.raises(rundir.RunDirError, match="choose one"):
        rundir.check(out, resume=True, overwrite=True)


# --------------------------------------------------------------------- the output directory

def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert_one_line_error(*train(capsys, f), r"--out .*file exists and is not a directory")
    assert_one_line_error(*train(capsys, f / "sub"), r"file is not a directory, so .*sub cannot be created")
    assert f.read_text() == "x"


def test_out_on_a_read_only_file_system(tmp_path, capsys, monkeypatch):
    # Simulated: the process may run as root, which a chmod does not stop.
    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    code, err = train(capsys, tmp_path / "ro" / "run")
    assert_one_line_error(code, err, r"--out .*run cannot be created or written: Read-only file system")
    monkeypatch.undo()
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    code, err = train(capsys, tmp_path / "ro2")
    assert_one_line_error(code, err, r"--out .*ro2 cannot be created: .* is not writable \(read-only file system")
    assert not (tmp_path / "ro2").exists() and not (tmp_path / "ro").exists()


# ----------------------------------------------------------------------------- bad input

def test_batch_larger_than_every_client_without_drop_last(tmp_path, capsys):
    code, err = train(capsys, tmp_path / "b", "--set", "batch_size=100000", "--set", "drop_last=False")
    assert_one_line_error(code, err, r"batch_size=100000 is larger than every client's training set \(largest: "
                                     r"\d+ samples\).*set batch_size <= \d+")
    assert not (tmp_path / "b").exists()


def test_a_list_where_a_number_is_expected(tmp_path, capsys):
    code, err = train(capsys, tmp_path / "l", "--set", "dataset_kwargs.alpha=[1,2]")
    assert_one_line_error(code, err, r"dataset 'synthetic': dataset_kwargs\.alpha must be a number \(default 0\.5\), "
                                     r"got \[1, 2\] \(list\)")
    code, err = train(capsys, tmp_path / "l", "--set", "dataset_kwargs.balance=3")
    assert_one_line_error(code, err, r"dataset_kwargs\.balance must be True or False \(default False\), got 3")
    assert not (tmp_path / "l").exists()


def test_a_truncated_npz_is_named(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, train_images=np.zeros((4, 8, 8), np.uint8), train_labels=np.zeros(4, np.int64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataFileError, match=r"data set 'cut': cannot read .*cut\.npz: BadZipFile.*truncated or corrupt"):
        load_npz_images(path)


@pytest.mark.real_data
def test_a_truncated_npz_in_the_real_data_folder(tmp_path, capsys, real_data_dir):
    from omnifm_jax.data.real4 import REAL4_MODALITIES

    root = tmp_path / "real"
    for _, rel in REAL4_MODALITIES:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(real_data_dir / rel, root / rel)
    victim = root / "blood_pbc" / "pbc_bloodmnist_style_28.npz"
    data = victim.read_bytes()
    victim.unlink()
    victim.write_bytes(data[: len(data) // 3])
    code = cli.main(["train", "--quiet", "--config", "real4", "--set", f"dataset_kwargs.root={root}",
                     "--out", str(tmp_path / "r")])
    assert_one_line_error(code, capsys.readouterr().err,
                          r"cannot read .*pbc_bloodmnist_style_28\.npz: BadZipFile.*truncated or corrupt")
    assert not (tmp_path / "r").exists()


def test_the_real4_files_missing_says_where_it_looked_and_how_to_point_elsewhere(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("OMNIFM_REAL_DATA", raising=False)
    (tmp_path / "medmnist").mkdir()
    code, err = cli.main(["train", "--config", "real4", "--set", f"dataset_kwargs.root={tmp_path}", "--quiet"]), \
        capsys.readouterr().err
    assert_one_line_error(code, err, rf"real 4-modality set incomplete in {tmp_path}; missing: "
                                     rf"{tmp_path}/blood_pbc/pbc_bloodmnist_style_28\.npz, .*breastmnist\.npz\. "
                                     r"Put the files there, set OMNIFM_REAL_DATA .*dataset_kwargs\.root=FOLDER")


def test_a_non_image_in_an_image_folder(tmp_path, capsys):
    bogus = tmp_path / "SOB_B_A-14-22549AB-40-001.png"
    bogus.write_text("this is not a PNG")
    with pytest.raises(DataFileError, match=r"data set 'BreaKHis': .*SOB_B_A-14-22549AB-40-001\.png is not a "
                                            r"readable image: UnidentifiedImageError"):
        load_breakhis_image(bogus)
    from PIL import Image

    rng = np.random.default_rng(0)
    for i, patient in enumerate(("22549AB", "22549CD", "29960AB", "29960CD")):
        for mag in (40, 100, 200):
            Image.fromarray(rng.integers(0, 256, (160, 160, 3), dtype=np.uint8)).save(
                tmp_path / f"SOB_B_TA-14-{patient}-{mag}-{i + 2:03d}.png")
    code = cli.main(["train", "--quiet", "--config", "sr_breakhis", "--set", f"dataset_kwargs.root={tmp_path}",
                     "--set", "dataset_kwargs.patch=32", "--out", str(tmp_path / "r")])
    assert_one_line_error(code, capsys.readouterr().err, r"SOB_B_A-14-22549AB-40-001\.png is not a readable image")


def test_reproduce_dry_run_builds_every_federation(capsys):
    code = cli.main(["reproduce", "table2", "--scale", "tiny", "--only", "x2", "--seeds", "0", "--rounds", "1",
                     "--dry-run", "--quiet"])
    err = capsys.readouterr().err
    assert_one_line_error(code, err, r"table2 cell \(×2, Scenario 2: .*\): data: dataset 'synthetic_sr': unknown "
                                     r"option\(s\) \['split_by'\]")


def test_tables_never_share_an_output_file_name():
    from omnifm_jax import reproduce as R

    names = {t: {p.name for p in R.output_files(t, Path("out"))} for t in R.TABLES}
    tables = sorted(names)
    for i, a in enumerate(tables):
        for b in tables[i + 1:]:
            assert not names[a] & names[b], (a, b, names[a] & names[b])
    assert "table8_protocol.md" in names["table8"]


# ------------------------------------------------------------------------ a run that learned nothing

def test_a_run_that_learned_nothing_fails_and_says_so(tmp_path, capsys):
    out = tmp_path / "nan"
    code = cli.main(["train", *TINY, "--set", "lr=1e30", "--set", "rounds=2", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1, captured.err
    assert "the run learned nothing: no client update was accepted in any round" in captured.err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["learned"] is False and summary["accepted_updates_total"] == 0
    assert summary["faulty_clients_total"] == 2 * 3
