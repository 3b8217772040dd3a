"""Shared pytest fixtures and the suite's JAX settings."""
from __future__ import annotations

import contextlib
import getpass
import os
import tempfile
from pathlib import Path

import pytest

# The suite's programs are tiny and run a few steps, so XLA's compile time is most of its wall
# time. These settings are exported (so the CLI and notebook subprocesses get them too) before
# any test imports JAX; a variable already set in the environment wins.
#  * XLA's optimisation passes off: 1.1-1.8x less compile time per round program (measured on
#    fedavg, moon and omnifm rounds, 2-core CPU). Every
#    numerical check still holds (they compare against NumPy references with tolerances, and
#    bit-exact checks compare two programs compiled the same way). Library users get the default.
#  * One persistent compilation cache for the whole session (both xdist workers and every
#    subprocess): a program compiled by one test (the CLI run of a config, a conformance round)
#    is loaded, not recompiled, by the next test that builds the same program. Every program
#    is kept, however fast it compiled: most of the suite's thousands of compilations are small
#    helpers (initialisers, metrics, reshapes) that take ~16 ms each to compile and ~1 ms to load
#    (with JAX's default of caching only programs over 1 s, or 0.2 s, compiling them was a
#    sixth of the suite's warm time).
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
#  * Tests marked ``optimized`` run many compiled steps (training to a quality bar, end-to-end
#    runs, deployments): for them the unoptimised code costs more than compiling it well (FedAvg's
#    8-round quality run on 2 cores: 18 s of execution unoptimised, 1.6 s at XLA backend level 1,
#    for 1.3 s more compile time). They switch the optimisations back on (the ``optimized``
#    fixture below, which their subprocesses inherit), at backend level 1 without LLVM's expensive
#    passes: level 2's extra compile time (0.6 s on that run) buys them nothing measurable.
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=1 --xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      str(Path(tempfile.gettempdir()) / f"omnifm-jax-test-xla-cache-{getpass.getuser()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """Directory of the real data sets (``$OMNIFM_REAL_DATA`` or ``../shared/data/real``).

    Tests that use it are skipped when the directory is absent.
    """
    env = os.environ.get("OMNIFM_REAL_DATA")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "real"
    if not path.is_dir():
        pytest.skip(f"real data directory {path} not found (set OMNIFM_REAL_DATA)")
    return path


@contextlib.contextmanager
def _optimizations_on():
    import jax

    env, before = os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS"), jax.config.read("jax_disable_most_optimizations")
    os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "false"  # for the subprocesses started meanwhile
    jax.config.update("jax_disable_most_optimizations", False)
    try:
        yield
    finally:
        jax.config.update("jax_disable_most_optimizations", before)
        if env is None:
            os.environ.pop("JAX_DISABLE_MOST_OPTIMIZATIONS", None)
        else:
            os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = env


@pytest.fixture(autouse=True)
def _optimized_when_marked(request):
    """Tests marked ``optimized`` compile with XLA's optimisations on (see the top of this file),
    in this process and in the subprocesses they start; the others compile with them off."""
    if request.node.get_closest_marker("optimized") is None:
        yield
        return
    with _optimizations_on():
        yield


#: Modules whose shared fixture runs processes of its own (two JAX processes joined in one run,
#: a run killed and resumed beside an uninterrupted one) and Flower's deployments (xdist group
#: "processes", tests/test_flower.py): one worker runs them one after another. Side by side
#: they put 4-8 busy processes on the 2 cores, and the two-process run, whose processes wait on
#: each other at every collective, then took twice as long.
PROCESS_GROUP = "processes"
PROCESS_FIXTURE_MODULES = {"tests/test_checkpoint.py", "tests/test_distributed.py"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Keep each expensive shared setup on ONE xdist worker.

    The suite runs with ``-n 2 --dist loadgroup`` (pyproject's addopts): tests marked
    ``xdist_group(name)`` run on one worker, the others are spread one by one. A module- or
    session-scoped fixture of a test module (a trained run, a traced round) is built once per
    worker that needs it, so every test of a module that uses such a fixture is put in that
    module's group (a test already in a group keeps it; tests/test_conformance.py groups its
    checks by algorithm; :data:`PROCESS_FIXTURE_MODULES` share one group). Without xdist the
    marks do nothing.
    """
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        info = getattr(item, "_fixtureinfo", None)
        if info is None:
            continue
        for defs in info.name2fixturedefs.values():
            fixture = defs[-1]
            if fixture.scope != "function" and fixture.baseid.endswith(".py"):
                group = PROCESS_GROUP if fixture.baseid in PROCESS_FIXTURE_MODULES else fixture.baseid
                item.add_marker(pytest.mark.xdist_group(group))
                break
