"""omnifm-jax: personalized federated learning for heterogeneous medical imaging in JAX.

Public API (re-exports):
  spectral, bank, modules     the method's building blocks (Eq. 3-8)
  models, tasks, algorithms   backbones and heads, tasks as values, algorithms as values
  federated                   state, the jitted vmapped round, evaluation
  data                        loaders, partitions, federations, synthetic sets
  sharding, checkpoint        device meshes; orbax checkpoints and exact resume
  config, experiment          run configurations and the run loop behind ``omnifm train``
"""
from omnifm_jax import (
                        algorithms,
                        bank,
                        checkpoint,
                        config,
                        data,
                        experiment,
                        federated,
                        models,
                        modules,
                        sharding,
                        spectral,
                        tasks,
)

__version__ = "0.1.0"

__all__ = ["algorithms", "bank", "checkpoint", "config", "data", "experiment", "federated", "models", "modules",
           "sharding", "spectral", "tasks"]
