"""SCAFFOLD (Karimireddy et al., ICML 2020, "Stochastic Controlled Averaging for Federated
Learning"), option II, as PFLlib implements it.

State: a server control variate ``c`` and one ``c_i`` per client (zeros at the start), both
shaped like the parameters. Every local SGD step corrects the gradient to ``g + c - c_i``.
After ``K`` local steps from the global ``x`` to ``y_i``:
``c_i+ = c_i - c + (x - y_i) / (K * lr)`` (``lr``: the client learning rate; a client that ran
no step keeps its ``c_i``). A participant uploads ``y_i`` and ``dc_i = c_i+ - c_i``. Server:
``x <- x + server_lr * mean_i(y_i - x)`` and ``c <- c + sum_i(dc_i) / N`` over the accepted
uploads (uniform, not n_k-weighted, as PFLlib; ``N``: all clients). PFLlib divides the model
sum by the planned participant count even when some dropped out; here by the uploads that
arrived (the same when none drop). The correction assumes plain SGD as the client optimizer
(PFLlib's). Defaults: PFLlib's ``-slr 1.0``.
"""
import jax
import jax.numpy as jnp
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms import aggregation
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import ServerState, personalized_sgd, with_zero_server_slot, zeros_like_params
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["validate", "scaffold"]

tu = optax.tree_utils


def validate(hp, context):
    del context
    checks.finite("server_lr", hp["server_lr"], positive=True)


@register("scaffold", validate=validate)
def scaffold(*, task, backbone, optimizer, local_epochs, batch_size,
             weight_init="flax", drop_last=True, aggregate_bn_stats=False,
             lr=None, num_clients=None, server_lr: float = 1.0):
    """SCAFFOLD; ``lr`` is the client learning rate and ``num_clients`` the federation's size
    (both filled from the run config)."""
    if lr is None or num_clients is None:
        raise checks.ConfigError("scaffold needs lr (the client learning rate) and num_clients")
    model = TokenModel(backbone=backbone, head=task.make_head())

    def grad_transform(grads, params, server_c, client_c):
        del params
        return jax.tree_util.tree_map(lambda g, c, ci: g + c - ci, grads, server_c, client_c)

    def finish(inputs):
        x, y = inputs.global_variables["params"], inputs.variables["params"]
        k = inputs.steps.astype(jnp.float32)
        drift = tu.tree_scale(1.0 / (jnp.maximum(k, 1.0) * lr), tu.tree_sub(x, y))
        new_c = tu.tree_add(tu.tree_sub(inputs.client, inputs.server), drift)
        new_c = jax.tree_util.tree_map(lambda n, o: jnp.where(k > 0, n, o), new_c, inputs.client)
        return new_c, tu.tree_sub(new_c, inputs.client)

    def aggregate(server, uploads, weights):
        uniform = aggregation.uniform_weights(weights)
        mean_y = aggregation.weighted_mean(uploads.shared, uniform, server.params)
        params = tu.tree_add_scale(server.params, server_lr, tu.tree_sub(mean_y, server.params))
        zeros = tu.tree_zeros_like(server.algorithm_state)
        mean_dc = aggregation.weighted_mean(uploads.algorithm_upload, uniform, zeros)
        c = tu.tree_add_scale(server.algorithm_state, jnp.sum(uniform) / num_clients, mean_dc)
        return ServerState(params=params, algorithm_state=c, opt_state=server.opt_state)

    algorithm = personalized_sgd(name="scaffold", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                                 local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                                 drop_last=drop_last,
                                 aggregate_bn_stats=aggregate_bn_stats, init_client_algorithm_state=zeros_like_params,
                                 grad_transform=grad_transform, finish=finish, aggregate=aggregate)
    return with_zero_server_slot(algorithm)
