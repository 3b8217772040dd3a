"""A run directory belongs to one run.

Rules (:func:`experiment.run` follows them; so can any code that writes a run's outputs):

* **One live run per directory.** A run holds an exclusive OS file lock (``flock``) on
  ``OUT/.omnifm.lock`` from before its first write to its end. The lock file names the
  holder (pid, host, start time) for the error message; the OS releases the lock when the
  process dies in any way, so a lock left by a killed run is never stale (the file stays, the
  lock does not). A second run on the same directory is refused before it does any work.
* **A new run never writes into an earlier run's outputs.** A directory that holds any of
  :data:`OUTPUTS` is refused unless the run resumes it (``--resume``) or replaces it
  (``--overwrite``). Replacing moves the earlier outputs, all of them, into one hidden folder
  and deletes that folder before the new run writes anything, so the directory never holds a
  mix of two runs' files. Other files in the directory are left alone.
* **Only the lock holder writes.** ``metrics.jsonl`` is written line by line (flushed) by
  that one process; a resumed run rewrites it from its checkpoint's history by writing a new
  file and renaming it over the old one, so no line another run wrote can be lost or
  interleaved.

The same rules hold for any set of outputs under its own lock: ``omnifm flower`` claims its
``--out`` as a run does (its outputs are among :data:`OUTPUTS`), and ``omnifm reproduce`` claims
one table's files in its ``--out`` (``outputs=`` the table's file names, ``lock_name=`` one lock
per table, so tables can share a folder).

Every failure a user can cause here (the directory is a file, cannot be created or written,
is held by a live run, holds an earlier run) raises :class:`RunDirError` (a
:class:`~omnifm_jax.checks.ConfigError`: the CLI prints one line and exits with 2).
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import List, Optional, Sequence

from omnifm_jax.checks import ConfigError

__all__ = ["LOCK_NAME", "OUTPUTS", "RunDirError", "existing_outputs", "check", "RunDirectory",
           "replace_lines"]

try:  # POSIX (Linux, macOS); elsewhere no lock is taken and only the outputs check applies
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None

LOCK_NAME = ".omnifm.lock"
#: What a run writes into its directory.
OUTPUTS = ("config.json", "metrics.jsonl", "timings.jsonl", "summary.json", "curves.png", "checkpoints",
           "deployment.json", "server_state.npz")  # the last two: a Flower deployment's (omnifm flower)


class RunDirError(ConfigError):
    """The output directory cannot be used by this run (the message says why and what to do)."""


def existing_outputs(out: Path, outputs: Sequence[str] = OUTPUTS) -> List[str]:
    """The names of ``outputs`` (default :data:`OUTPUTS`) present in ``out``."""
    return [name for name in outputs if (Path(out) / name).exists()]


def _earlier(out: Path, present: List[str], what: str) -> RunDirError:
    return RunDirError(f"--out {out} already holds the outputs of {what} ({', '.join(present)}); "
                       "continue it with --resume, replace it with --overwrite, or choose another directory")


def _holder(lock_path: Path) -> str:
    try:
        info = json.loads(lock_path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return "another run"
    return f"run pid {info.get('pid')} on {info.get('host')} (started {info.get('started')})"


def _try_lock(fd: int) -> bool:
    if fcntl is None:  # pragma: no cover
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _held_by_live_run(lock_path: Path) -> bool:
    """Whether a live process holds ``lock_path`` (probed with a lock taken and released)."""
    if not lock_path.is_file():
        return False
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if not _try_lock(fd):
            return True
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check(out: str | Path, *, resume: bool = False, overwrite: bool = False, outputs: Sequence[str] = OUTPUTS,
          lock_name: str = LOCK_NAME, what: str = "an earlier run") -> None:
    """Refuse ``out`` before any work if this run could not own it; writes nothing.

    ``outputs``: the names whose presence means an earlier run's results are there; ``lock_name``:
    the lock file that one live run holds; ``what``: how the message names the earlier run."""
    out = Path(out)
    if resume and overwrite:
        raise RunDirError("--resume continues the run in --out and --overwrite replaces it: choose one")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} exists and is not a directory; choose a directory")
    base = _nearest_existing(out)
    if not base.is_dir():
        raise RunDirError(f"--out {out}: {base} is not a directory, so {out} cannot be created")
    if not os.access(base, os.W_OK | os.X_OK):
        why = "is not writable" if base == out.absolute() else f"cannot be created: {base} is not writable"
        raise RunDirError(f"--out {out} {why} (read-only file system or no permission?); choose another directory")
    lock_path = out / lock_name
    if _held_by_live_run(lock_path):
        raise RunDirError(f"--out {out} is in use by {_holder(lock_path)}; wait for it to finish or choose "
                          "another output directory")
    present = existing_outputs(out, outputs) if out.is_dir() else []
    if present and not resume and not overwrite:
        raise _earlier(out, present, what)


class RunDirectory:
    """The claim of one run on its output directory (a context manager; see the module rules).

    ``RunDirectory(out, resume=..., overwrite=...).acquire()`` creates ``out``, takes the lock,
    checks again (another run may have started since :func:`check`) and, with ``overwrite``,
    removes the earlier outputs as a whole. :meth:`release` (or leaving the ``with`` block)
    lets the lock go. ``outputs``, ``lock_name``, ``what``: as in :func:`check`.
    """

    def __init__(self, out: str | Path, *, resume: bool = False, overwrite: bool = False,
                 outputs: Sequence[str] = OUTPUTS, lock_name: str = LOCK_NAME, what: str = "an earlier run"):
        self.out = Path(out)
        self.resume = resume
        self.overwrite = overwrite
        self._names = dict(outputs=tuple(outputs), lock_name=lock_name, what=what)
        self._fd: Optional[int] = None

    def check(self) -> None:
        """:func:`check` of this claim's directory, outputs and lock (writes nothing)."""
        check(self.out, resume=self.resume, overwrite=self.overwrite, **self._names)

    def acquire(self) -> "RunDirectory":
        self.check()
        lock_path = self.out / self._names["lock_name"]
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RunDirError(f"--out {self.out} cannot be created or written: {exc.strerror or exc} "
                              f"({exc.filename or self.out}); choose another directory") from None
        if not _try_lock(fd):
            os.close(fd)
            raise RunDirError(f"--out {self.out} is in use by {_holder(lock_path)}; wait for it to finish or "
                              "choose another output directory")
        self._fd = fd
        try:
            # Checked again under the lock: a run that finished between check() and now.
            present = existing_outputs(self.out, self._names["outputs"])
            if present and not self.resume and not self.overwrite:
                raise _earlier(self.out, present, self._names["what"])
            if present and self.overwrite:
                self._remove_outputs(present)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
        except OSError as exc:
            self.release()
            raise RunDirError(f"--out {self.out} cannot be written: {exc.strerror or exc} "
                              f"({exc.filename or self.out})") from None
        except BaseException:
            self.release()
            raise
        return self

    def _remove_outputs(self, present: List[str]) -> None:
        """The earlier run's outputs go as a whole: first all into one hidden folder, then that
        folder is deleted; nothing of the new run is written before."""
        trash = self.out / f".replaced-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        trash.mkdir()
        for name in present:
            os.replace(self.out / name, trash / name)
        shutil.rmtree(trash)

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
        except OSError:
            pass
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "RunDirectory":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def replace_lines(path: Path, lines: List[str]) -> None:
    """Write ``lines`` to ``path`` as a new file renamed over the old one (never a partial file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)
