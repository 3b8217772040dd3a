"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization").

Each client keeps ``h_i`` (PFLlib's ``old_grad``, zeros at the start) and minimises
``L_i(w) - <w, h_i> + (alpha / 2) ||w - w_g||^2`` locally, then sets
``h_i <- h_i - alpha (w_i - w_g)``. The server keeps ``h`` (zeros):
``h <- h - (alpha / N) sum_i (w_i - w_g)`` and ``w_g <- mean_i(w_i) - h / alpha`` over the
accepted uploads (uniform, as PFLlib; ``N``: all clients). Default ``alpha=1.0`` (PFLlib's
``-al``).

PFLlib's client adds ``(alpha / 2) * ||w - w_g||_2`` -- the norm, not its square as in the
paper. ``squared_norm=True`` (default) is the paper's term, whose fixed point is the global
optimum; ``squared_norm=False`` is PFLlib's (with a zero gradient at ``w = w_g``, as
PyTorch's norm has).
"""
import jax.numpy as jnp
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms import aggregation
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import ServerState, personalized_sgd, with_zero_server_slot, zeros_like_params
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["safe_norm", "validate", "feddyn"]

tu = optax.tree_utils


def safe_norm(tree):
    """``||tree||_2`` with gradient 0 (not NaN) at 0, as ``torch.norm``'s backward."""
    sq = tu.tree_norm(tree, squared=True)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def validate(hp, context):
    del context
    checks.finite("alpha", hp["alpha"], positive=True)
    checks.boolean("squared_norm", hp["squared_norm"])


@register("feddyn", validate=validate)
def feddyn(*, task, backbone, optimizer, local_epochs, batch_size,
           weight_init="flax", drop_last=True, aggregate_bn_stats=False,
           num_clients=None, alpha: float = 1.0, squared_norm: bool = True):
    """FedDyn; ``num_clients`` (the federation's size) is filled from the run config."""
    if num_clients is None:
        raise checks.ConfigError("feddyn needs num_clients")
    model = TokenModel(backbone=backbone, head=task.make_head())

    def loss_terms(inputs):
        diff = tu.tree_sub(inputs.params, inputs.global_params)
        dist = tu.tree_norm(diff, squared=True) if squared_norm else safe_norm(diff)
        return 0.5 * alpha * dist - tu.tree_vdot(inputs.params, inputs.client), {}

    def finish(inputs):
        drift = tu.tree_sub(inputs.variables["params"], inputs.global_variables["params"])
        return tu.tree_add_scale(inputs.client, -alpha, drift), None

    def aggregate(server, uploads, weights):
        uniform = aggregation.uniform_weights(weights)
        mean_w = aggregation.weighted_mean(uploads.shared, uniform, server.params)
        # sum_i (w_i - w_g) = count * (mean_i w_i - w_g)
        total_drift = tu.tree_scale(jnp.sum(uniform), tu.tree_sub(mean_w["params"], server.params["params"]))
        h = tu.tree_add_scale(server.algorithm_state, -alpha / num_clients, total_drift)
        params = dict(mean_w)
        params["params"] = tu.tree_add_scale(mean_w["params"], -1.0 / alpha, h)
        accepted = aggregation.any_accepted(weights)
        return ServerState(params=aggregation.where_accepted(accepted, params, server.params),
                           algorithm_state=aggregation.where_accepted(accepted, h, server.algorithm_state),
                           opt_state=server.opt_state)

    algorithm = personalized_sgd(name="feddyn", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                                 local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                                 drop_last=drop_last,
                                 aggregate_bn_stats=aggregate_bn_stats, init_client_algorithm_state=zeros_like_params,
                                 loss_terms=loss_terms, finish=finish, aggregate=aggregate)
    return with_zero_server_slot(algorithm)
