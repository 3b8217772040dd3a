"""FedALA (Zhang et al., AAAI 2023, "FedALA: Adaptive Local Aggregation for Personalized
Federated Learning"), as PFLlib implements it (``clientala.py``, ``ALA.py``).

Clients train and upload as in FedAvg (n_k-weighted mean), but each keeps its own model and
does not simply overwrite it with the global one: when a round starts, the layers matched by
``layers`` (PFLlib's top ``layer_idx=2`` tensors, the classifier's weight and bias: here the
head, ``r"^params/head/"``) become ``theta = local + (global - local) * W`` with element-wise
weights ``W`` in [0, 1] (ones at first, kept across rounds), the other layers the global ones.
``W`` is learned on a contiguous random ``rand_percent`` % slice of the client's training data,
in batches of ``batch_size`` (no shuffling, the last batch partial):
``W <- clip(W - eta * dL/dtheta * (global - local), 0, 1)`` after every batch. The first time
(PFLlib's start phase) passes repeat until more than ``num_pre_loss`` passes were made and the
standard deviation of the last ``num_pre_loss`` pass losses (each pass's last batch) is below
``threshold``; later rounds make one pass. While the local and the global model are equal
(round 0) nothing happens.

Where this differs from PFLlib: PFLlib runs the adaptive aggregation for every client at every
round when the global model is sent, and evaluates right after it; here it runs when a client
participates (at the start of its local update), and a client is evaluated with the model it
trained last. The start phase is capped at ``max_start_passes`` passes (PFLlib has no cap).
The models in the weight learning run in evaluation mode. Defaults: PFLlib's ``-et 1.0``,
``-s 80``, ``threshold=0.1``, ``num_pre_loss=10``.
"""
import jax
import jax.numpy as jnp
import optax

from omnifm_jax import checks
from omnifm_jax.algorithms import labels
from omnifm_jax.algorithms.local_training import masked_mean
from omnifm_jax.algorithms.registry import register
from omnifm_jax.algorithms.sgd import personalized_sgd, trainable_mask
from omnifm_jax.models.omnifm import TokenModel

__all__ = ["validate", "adaptive_local_aggregation", "fedala"]


def validate(hp, context):
    del context
    checks.finite("eta", hp["eta"], positive=False)
    checks.interval("rand_percent", hp["rand_percent"], 0, 100, lo_open=True, hi_open=False)
    checks.require(isinstance(hp["layers"], (list, tuple)) and all(isinstance(p, str) for p in hp["layers"]),
                   f"layers must be a list of path patterns (regular expressions), got {hp['layers']!r}")
    checks.finite("threshold", hp["threshold"], positive=False)
    checks.integer("num_pre_loss", hp["num_pre_loss"], 1)
    checks.integer("max_start_passes", hp["max_start_passes"], 1)


def adaptive_local_aggregation(loss_on_batch, global_params, local_params, weights, upper, started, data, key, *,
                               batch_size, eta, rand_percent, threshold, num_pre_loss, max_start_passes):
    """One client's ALA: ``(params to start training from, new weights, started)``.

    ``loss_on_batch(params, idx int32[B], mask bool[B]) -> scalar``; ``upper``: tree of bools
    (the layers ALA learns weights for); ``weights``: tree like the params.
    """
    n = data.n.astype(jnp.int32)
    rand_num = jnp.floor(rand_percent / 100.0 * n.astype(jnp.float32)).astype(jnp.int32)
    rand_idx = jax.random.randint(key, (), 0, jnp.maximum(n - rand_num, 0) + 1)
    batches = (rand_num + batch_size - 1) // batch_size
    offsets = jnp.arange(batch_size)
    delta = jax.tree_util.tree_map(lambda g, l, u: (g - l) if u else jnp.zeros_like(g), global_params, local_params,
                                   upper)

    def mix(w):  # lower layers global, upper ones local + (global - local) * W
        return jax.tree_util.tree_map(lambda g, l, d, wi, u: l + d * wi if u else g,
                                      global_params, local_params, delta, w, upper)

    def batch_step(j, carry):
        w, _ = carry
        pos = j * batch_size + offsets
        mask = pos < rand_num
        idx = data.offset + rand_idx + jnp.minimum(pos, jnp.maximum(rand_num - 1, 0))
        loss, grads = jax.value_and_grad(loss_on_batch)(mix(w), idx, mask)
        w = jax.tree_util.tree_map(lambda wi, g, d, u: jnp.clip(wi - eta * g * d, 0.0, 1.0) if u else wi,
                                   w, grads, delta, upper)
        return w, loss

    def one_pass(w):
        return jax.lax.fori_loop(0, batches, batch_step, (w, jnp.zeros((), jnp.float32)))

    def keep_going(carry):
        _, history, count = carry
        full = count > num_pre_loss
        settled = full & (jnp.std(history) < threshold)
        more = jnp.where(started, count < 1, ~settled & (count < max_start_passes))
        return more & (batches > 0)

    def pass_body(carry):
        w, history, count = carry
        w, loss = one_pass(w)
        return w, history.at[count % num_pre_loss].set(loss), count + 1

    init = (weights, jnp.zeros((num_pre_loss,), jnp.float32), jnp.int32(0))
    new_w, _, _ = jax.lax.while_loop(keep_going, pass_body, init)
    return mix(new_w), new_w


@register("fedala", validate=validate)
def fedala(*, task, backbone, optimizer, local_epochs, batch_size,
           weight_init="flax", drop_last=True, aggregate_bn_stats=False,
           eta: float = 1.0, rand_percent: float = 80, layers=(r"^params/head/",), threshold: float = 0.1,
           num_pre_loss: int = 10, max_start_passes: int = 100):
    """FedALA; ``layers``: path patterns of the layers aggregated adaptively."""
    model = TokenModel(backbone=backbone, head=task.make_head())

    def init_client_algorithm_state(key, server_state, variables):
        del key, server_state
        params = variables["params"]
        return {"local": params, "weights": optax.tree_utils.tree_ones_like(params), "started": jnp.zeros((), bool)}

    def download(server, client, data, key):
        variables = labels.combine(server.params, client.personal)
        rest = {k: v for k, v in variables.items() if k != "params"}
        g, state = variables["params"], client.algorithm_state
        same = jnp.all(jnp.stack([jnp.array_equal(a, b) for a, b in
                                  zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(state["local"]))]))

        def loss_on_batch(params, idx, mask):
            x = task.scale_inputs(data.x[idx])
            out, _ = model.apply({"params": params, **rest}, x, None, train=False, mask=mask)
            return masked_mean(task.loss(task.predict(out, x), task.prepare_targets(data.y[idx])), mask)

        def ala(_):
            params, w = adaptive_local_aggregation(
                loss_on_batch, g, state["local"], state["weights"], trainable_mask(g, layers), state["started"],
                data, key,
                batch_size=batch_size, eta=eta, rand_percent=rand_percent, threshold=threshold,
                num_pre_loss=num_pre_loss, max_start_passes=max_start_passes)
            return params, w, jnp.ones((), bool)

        params, w, started = jax.lax.cond(same, lambda _: (g, state["weights"], state["started"]), ala, None)
        return dict(rest, params=params), dict(state, weights=w, started=started)

    def finish(inputs):  # the trained model is the client's local model
        return dict(inputs.client, local=inputs.variables["params"]), None

    base = personalized_sgd(name="fedala", model=model, task=task, optimizer=optimizer, personal_patterns=(),
                            local_epochs=local_epochs, batch_size=batch_size, weight_init=weight_init,
                            drop_last=drop_last,
                            aggregate_bn_stats=aggregate_bn_stats,
                            init_client_algorithm_state=init_client_algorithm_state,
                            download=download, finish=finish)

    def predict(server, client, x, mask=None):
        variables = labels.combine(server.params, client.personal)
        variables = dict(variables, params=client.algorithm_state["local"])
        out, _ = model.apply(variables, x, None, train=False, mask=mask)
        return task.predict(out, x)

    return base._replace(predict=predict, inspect=None)  # inspect would show the un-mixed model
