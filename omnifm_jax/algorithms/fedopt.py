"""FedAvgM, FedAdam, FedYogi: FedAvg with a server optimizer (Hsu et al., 2019, "Measuring the
Effects of Non-Identical Data Distribution"; Reddi et al., ICLR 2021, "Adaptive Federated
Optimization").

Clients train as in FedAvg; the server treats ``Delta = w_g - mean_k(w_k)`` (n_k-weighted) as
a pseudo-gradient and steps an optax optimizer on it (:func:`aggregation.server_optimizer_step`):
``optax.sgd(server_lr, momentum=server_momentum)`` (FedAvgM), ``optax.adam`` (FedAdam),
``optax.yogi`` (FedYogi), each with ``b1, b2, eps`` = ``server_b1, server_b2, server_eps``
(Reddi et al.'s tau). PFLlib has none of them; the defaults are the papers': FedAvgM
``server_lr=1, server_momentum=0.9``; FedAdam / FedYogi ``server_lr=0.01, b1=0.9, b2=0.99,
eps=1e-3``. ``fedavgm`` with ``server_momentum=0`` and ``server_lr=1`` is FedAvg.
"""
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["validate_momentum", "validate_adaptive", "fedavgm", "fedadam", "fedyogi"]


def _fedavg_with(name, server_optimizer, *, task, backbone, optimizer, local_epochs, batch_size, drop_last,
                 aggregate_bn_stats, weight_init):
    model = TokenModel(backbone=backbone, head=task.make_head())
    return personalized_sgd(name=name, model=model, task=task, optimizer=optimizer, personal_patterns=(),
                            local_epochs=local_epochs, batch_size=batch_size, drop_last=drop_last,
                            aggregate_bn_stats=aggregate_bn_stats, server_optimizer=server_optimizer,
                            weight_init=weight_init)


def validate_momentum(hp, context):
    del context
    checks.finite("server_lr", hp["server_lr"], positive=True)
    checks.interval("server_momentum", hp["server_momentum"], 0, 1, lo_open=False, hi_open=True)


def validate_adaptive(hp, context):
    del context
    checks.finite("server_lr", hp["server_lr"], positive=True)
    checks.interval("server_b1", hp["server_b1"], 0, 1, lo_open=False, hi_open=True)
    checks.interval("server_b2", hp["server_b2"], 0, 1, lo_open=False, hi_open=True)
    checks.finite("server_eps", hp["server_eps"], positive=True)


@register("fedavgm", validate=validate_momentum)
def fedavgm(*, task, backbone, optimizer, local_epochs, batch_size,
            weight_init="flax", drop_last=True, aggregate_bn_stats=False,
            server_lr: float = 1.0, server_momentum: float = 0.9):
    """FedAvg with server momentum."""
    tx = optax.sgd(server_lr, momentum=server_momentum or None)
    return _fedavg_with("fedavgm", tx, task=task, backbone=backbone, optimizer=optimizer, local_epochs=local_epochs,
                        batch_size=batch_size, drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats,
                        weight_init=weight_init)


@register("fedadam", validate=validate_adaptive)
def fedadam(*, task, backbone, optimizer, local_epochs, batch_size,
            weight_init="flax", drop_last=True, aggregate_bn_stats=False,
            server_lr: float = 0.01, server_b1: float = 0.9, server_b2: float = 0.99, server_eps: float = 1e-3):
    """FedAvg with Adam on the server."""
    tx = optax.adam(server_lr, b1=server_b1, b2=server_b2, eps=server_eps)
    return _fedavg_with("fedadam", tx, task=task, backbone=backbone, optimizer=optimizer, local_epochs=local_epochs,
                        batch_size=batch_size, drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats,
                        weight_init=weight_init)


@register("fedyogi", validate=validate_adaptive)
def fedyogi(*, task, backbone, optimizer, local_epochs, batch_size,
            weight_init="flax", drop_last=True, aggregate_bn_stats=False,
            server_lr: float = 0.01, server_b1: float = 0.9, server_b2: float = 0.99, server_eps: float = 1e-3):
    """FedAvg with Yogi on the server."""
    tx = optax.yogi(server_lr, b1=server_b1, b2=server_b2, eps=server_eps)
    return _fedavg_with("fedyogi", tx, task=task, backbone=backbone, optimizer=optimizer, local_epochs=local_epochs,
                        batch_size=batch_size, drop_last=drop_last, aggregate_bn_stats=aggregate_bn_stats,
                        weight_init=weight_init)
