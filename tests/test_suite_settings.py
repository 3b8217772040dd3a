"""The suite's own JAX settings (tests/conftest.py): optimisations off, except in tests marked
``optimized``."""
from __future__ import annotations

import os

import jax
import pytest

pytestmark = pytest.mark.skipif(os.environ.get("JAX_DISABLE_MOST_OPTIMIZATIONS") != "true",
                                reason="JAX_DISABLE_MOST_OPTIMIZATIONS was set to something else by the caller")


def test_unmarked_tests_compile_without_optimisations():
    assert jax.config.read("jax_disable_most_optimizations") is True


@pytest.mark.optimized
def test_marked_tests_and_their_subprocesses_compile_with_optimisations():
    assert jax.config.read("jax_disable_most_optimizations") is False
    assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "false"


def test_the_setting_is_restored_after_a_marked_test():
    from conftest import _optimizations_on  # what the fixture of a marked test runs

    with _optimizations_on():
        assert jax.config.read("jax_disable_most_optimizations") is False
    assert jax.config.read("jax_disable_most_optimizations") is True
    assert os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] == "true"
