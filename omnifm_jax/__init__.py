"""omnifm-jax: personalized federated learning for heterogeneous medical imaging in JAX."""

__version__ = "0.1.0"
