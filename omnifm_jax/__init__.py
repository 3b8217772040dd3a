"""omnifm-jax: personalized federated learning for heterogeneous medical imaging in JAX.

Public API (re-exports):
  spectral, bank, modules     the method's building blocks (Eq. 3-8)
  models, tasks, algorithms   backbones and heads, tasks as values, algorithms as values
  federated                   state, the jitted vmapped round, evaluation
  data                        loaders, partitions, federations, synthetic sets
  sharding, checkpoint        device meshes; orbax checkpoints and exact resume
  config, experiment          run configurations and the run loop behind ``omnifm train``
"""
import importlib

__version__ = "0.1.0"

__all__ = ["algorithms", "bank", "checkpoint", "config", "data", "experiment", "federated", "models", "modules",
           "sharding", "spectral", "tasks"]


def __getattr__(name: str):
    """The re-exported modules load on first use (``omnifm_jax.federated``; ``from omnifm_jax
    import federated`` loads it at once): importing one module of the package, such as the
    Flower app a deployment node starts for every message, does not load JAX and every other
    module with it."""
    if name in __all__:
        return importlib.import_module(f"omnifm_jax.{name}")
    raise AttributeError(f"module 'omnifm_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
