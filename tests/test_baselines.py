"""Each baseline does what its paper says, checked where it differs from FedAvg.

Most checks run the real engine on a quadratic problem whose answers are known in closed
form: client k holds samples of one class y, its loss is ``0.5 * a_y * ||w - t_y||^2`` with
one parameter vector ``w`` (the model's only parameter), and a batch of all its samples makes
every local step the exact gradient step ``w <- w - lr * a_y * (w - t_y)``.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from _helpers import NUM_CLASSES, FlatBackbone, TinyBackbone, make_clients  # noqa: E402

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms import labels
from omnifm_jax.algorithms import local_training as lt
from omnifm_jax.algorithms.moon import contrastive_loss
from omnifm_jax.algorithms.sgd import Upload
from omnifm_jax.data.federation import ClientArrays
from omnifm_jax.tasks import classification
from omnifm_jax.tasks.base import Task

DIM, N_PER_CLIENT = 3, 4
RNG = np.random.default_rng(7)
TARGETS = RNG.normal(size=(4, DIM))          # t_y
CURVATURES = np.array([1.0, 4.0, 0.5, 2.0])  # a_y


class ParamHead(nn.Module):
    """The model's only parameter ``w`` (zeros at init), the same prediction for every input."""

    @nn.compact
    def __call__(self, tokens, *, layout, train=False):
        del layout, train
        w = self.param("w", nn.initializers.zeros, (DIM,))
        return jnp.broadcast_to(w, (tokens.shape[0], DIM))


def quadratic_task() -> Task:
    t, a = jnp.asarray(TARGETS, jnp.float32), jnp.asarray(CURVATURES, jnp.float32)
    zero = lambda *args: {}
    return Task(name="quadratic", make_head=ParamHead, prepare_targets=lambda y: y, predict=lambda out, x: out,
                loss=lambda pred, y: 0.5 * a[y] * jnp.sum((pred - t[y]) ** 2, axis=-1),
                eval_stats=lambda pred, y: {"loss": jnp.zeros(y.shape)}, client_metrics=zero, summarize=zero,
                primary_metric="loss")


def quadratic_clients(classes) -> ClientArrays:
    """One client per entry of ``classes``, ``N_PER_CLIENT`` samples of that class each."""
    k = len(classes)
    y = np.repeat(np.asarray(classes, np.int32), N_PER_CLIENT)
    n = np.full(k, N_PER_CLIENT, np.int32)
    return ClientArrays(x=np.zeros((k * N_PER_CLIENT, 2, 2, 1), np.uint8), y=y, n=n,
                        offsets=(np.arange(k) * N_PER_CLIENT).astype(np.int32), modality=np.zeros(k * N_PER_CLIENT, np.int32))


def run_quadratic(name, classes, *, rounds, epochs, lr, **kw):
    """Server ``w`` after ``rounds`` full-participation rounds, and the final state."""
    data = quadratic_clients(classes)
    extra = {"lr": lr, "num_clients": len(classes)} if name == "scaffold" else (
        {"num_clients": len(classes)} if name == "feddyn" else {})
    alg = algorithms.build(name, task=quadratic_task(), backbone=FlatBackbone(), optimizer=optax.sgd(lr),
                           local_epochs=epochs, batch_size=N_PER_CLIENT, **extra, **kw)
    state = federated.init(alg, jax.random.key(0), data)
    round_fn = federated.make_round(alg, data, donate=False)
    dev = jax.device_put(data)
    for _ in range(rounds):
        state, _ = round_fn(state, dev)
    return np.asarray(state.server.params["params"]["head"]["w"], np.float64), state


def global_optimum(classes):
    """``argmin_w sum_k 0.5 a_k ||w - t_k||^2``."""
    a, t = CURVATURES[classes], TARGETS[classes]
    return (a[:, None] * t).sum(0) / a.sum()


def fedavg_fixed_point(classes, epochs, lr):
    """FedAvg's limit with E exact local steps: client k maps w to t_k + r_k (w - t_k) with
    r_k = (1 - lr a_k)^E, so the mean map's fixed point is sum (1 - r_k) t_k / sum (1 - r_k)."""
    r = (1 - lr * CURVATURES[classes]) ** epochs
    return ((1 - r)[:, None] * TARGETS[classes]).sum(0) / (1 - r).sum()


HETERO = [0, 1, 2, 3]


# ----------------------------------------------------------------------------- FedProx

def build_cls(name, **kw):
    return algorithms.build(name, task=classification(NUM_CLASSES), backbone=TinyBackbone(), optimizer=optax.sgd(0.1),
                            local_epochs=2, batch_size=4, **kw)


def rounds_of(alg, data, rounds=2, participation=0.5):
    state = federated.init(alg, jax.random.key(3), data)
    fn = federated.make_round(alg, data, participation=participation, donate=False)
    dev = jax.device_put(data)
    for _ in range(rounds):
        state, metrics = fn(state, dev)
    return state, metrics


def test_fedprox_with_mu_zero_is_fedavg_bit_for_bit():
    data = make_clients([9, 6, 12, 7], seed=2)
    a, _ = rounds_of(build_cls("fedavg"), data)
    b, _ = rounds_of(build_cls("fedprox", mu=0.0), data)
    assert federated.state_hash(a.server) == federated.state_hash(b.server)
    c, _ = rounds_of(build_cls("fedprox", mu=0.5), data)
    assert federated.state_hash(c.server) != federated.state_hash(a.server)


@pytest.mark.parametrize("mu", [0.3, 2.0])
def test_fedprox_local_solution_matches_the_closed_form(mu):
    """One client, one round of E full-batch steps from w_g = 0 on 0.5 a ||w - t||^2 + mu/2 ||w||^2:
    w_E = w* + (1 - lr (a + mu))^E (0 - w*), w* = a t / (a + mu)."""
    lr, epochs, cls = 0.1, 7, 1
    a, t = CURVATURES[cls], TARGETS[cls]
    w_star = a * t / (a + mu)
    want = w_star + (1 - lr * (a + mu)) ** epochs * (0 - w_star)
    got, _ = run_quadratic("fedprox", [cls], rounds=1, epochs=epochs, lr=lr, mu=mu)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain, _ = run_quadratic("fedavg", [cls], rounds=1, epochs=epochs, lr=lr)
    assert np.linalg.norm(plain - want) > 1e-2  # the term made a difference


# ----------------------------------------------------------------------------- SCAFFOLD, FedDyn

def test_fedavg_drifts_on_heterogeneous_quadratics():
    """The reference the next two tests beat: FedAvg with several local steps settles at its
    biased fixed point (closed form), away from the global optimum."""
    epochs, lr = 5, 0.1
    got, _ = run_quadratic("fedavg", HETERO, rounds=150, epochs=epochs, lr=lr)
    np.testing.assert_allclose(got, fedavg_fixed_point(HETERO, epochs, lr), atol=1e-4)
    assert np.linalg.norm(got - global_optimum(HETERO)) > 0.05


def test_scaffold_removes_client_drift():
    got, state = run_quadratic("scaffold", HETERO, rounds=150, epochs=5, lr=0.1)
    np.testing.assert_allclose(got, global_optimum(HETERO), atol=1e-4)
    # the control variates are the clients' gradients at the optimum, and c their mean
    c = np.asarray(state.server.algorithm_state["head"]["w"])
    ci = np.asarray(state.clients.algorithm_state["head"]["w"])
    w = global_optimum(HETERO)
    np.testing.assert_allclose(ci, CURVATURES[HETERO][:, None] * (w - TARGETS[HETERO]), atol=1e-3)
    np.testing.assert_allclose(c, ci.mean(0), atol=1e-4)


def test_feddyn_fixed_point_is_the_global_optimum():
    """At FedDyn's fixed point every h_k is client k's gradient there and the server's h is 0,
    so sum_k grad F_k(w) = 0: the global optimum (with the paper's squared term)."""
    got, state = run_quadratic("feddyn", HETERO, rounds=200, epochs=5, lr=0.05, alpha=0.5)
    w = global_optimum(HETERO)
    np.testing.assert_allclose(got, w, atol=1e-4)
    h_k = np.asarray(state.clients.algorithm_state["head"]["w"])
    np.testing.assert_allclose(h_k, CURVATURES[HETERO][:, None] * (w - TARGETS[HETERO]), atol=1e-3)
    np.testing.assert_allclose(np.asarray(state.server.algorithm_state["head"]["w"]), 0.0, atol=1e-4)


def test_feddyn_pflib_norm_has_zero_gradient_at_the_start():
    """PFLlib's unsquared norm: its gradient at w = w_g is 0 (torch.norm's), not NaN."""
    got, _ = run_quadratic("feddyn", HETERO, rounds=3, epochs=2, lr=0.05, squared_norm=False)
    assert np.all(np.isfinite(got))


# ----------------------------------------------------------------------------- Ditto

def test_ditto_with_mu_zero_personal_models_are_local_models():
    data = make_clients([9, 6, 12, 7], seed=5)
    local, _ = rounds_of(build_cls("local"), data, rounds=3, participation=1.0)
    ditto, _ = rounds_of(build_cls("ditto", mu=0.0, plocal_epochs=2), data, rounds=3, participation=1.0)
    for a, b in zip(jax.tree_util.tree_leaves(local.clients.personal), jax.tree_util.tree_leaves(ditto.clients.algorithm_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_ditto_personal_model_moves_toward_the_global_as_mu_grows():
    distances = []
    for mu in (0.0, 1.0, 10.0):
        _, state = run_quadratic("ditto", HETERO, rounds=20, epochs=2, lr=0.05, mu=mu)
        w = np.asarray(state.server.params["params"]["head"]["w"])
        v = np.asarray(state.clients.algorithm_state["params"]["head"]["w"])
        distances.append(float(np.linalg.norm(v - w, axis=1).mean()))
    assert distances[0] > distances[1] > distances[2], distances
    # mu = 0: each personal model runs plain gradient descent on its own loss from 0 (Local):
    # after R rounds of P personal steps, v = t + (1 - lr a)^(R P) (0 - t)
    rounds, epochs, lr = 30, 2, 0.05
    _, state = run_quadratic("ditto", HETERO, rounds=rounds, epochs=1, lr=lr, mu=0.0, plocal_epochs=epochs)
    a, t = CURVATURES[HETERO][:, None], TARGETS[HETERO]
    np.testing.assert_allclose(np.asarray(state.clients.algorithm_state["params"]["head"]["w"]),
                               t - (1 - lr * a) ** (rounds * epochs) * t, rtol=1e-4, atol=1e-5)


def test_ditto_evaluates_the_personal_model():
    data = make_clients([9, 6, 12, 7], seed=5)
    alg = build_cls("ditto", mu=0.1)
    state, _ = rounds_of(alg, data, rounds=2, participation=1.0)
    x = jnp.asarray(data.x[:5], jnp.float32) / 255.0
    client = jax.tree_util.tree_map(lambda a: a[0], state.clients)
    want, _ = alg_model_apply(client.algorithm_state, x)
    np.testing.assert_allclose(np.asarray(alg.predict(state.server, client, x)), np.asarray(want), rtol=1e-6)


def alg_model_apply(variables, x):
    from omnifm_jax.models.omnifm import TokenModel
    model = TokenModel(backbone=TinyBackbone(), head=classification(NUM_CLASSES).make_head())
    return model.apply(variables, x, None, train=False)


# ----------------------------------------------------------------------------- MOON

def numpy_moon(z, zg, zp, tau):
    def cos(a, b):
        return (a * b).sum(-1) / (np.maximum(np.linalg.norm(a, axis=-1), 1e-8) * np.maximum(np.linalg.norm(b, axis=-1), 1e-8))
    sg, sp = np.exp(cos(z, zg) / tau), np.exp(cos(z, zp) / tau)
    return -np.log(sg / (sg + sp))


@pytest.mark.parametrize("seed, tau", [(0, 1.0), (1, 0.5), (2, 0.1)])
def test_moon_contrastive_term_matches_numpy(seed, tau):
    rng = np.random.default_rng(seed)
    z, zg, zp = (rng.normal(size=(6, 16)) for _ in range(3))
    got = contrastive_loss(jnp.asarray(z, jnp.float32), jnp.asarray(zg, jnp.float32), jnp.asarray(zp, jnp.float32), tau)
    np.testing.assert_allclose(np.asarray(got, np.float64), numpy_moon(z, zg, zp, tau), rtol=1e-5, atol=1e-6)


def test_moon_local_loss_is_ce_plus_weighted_contrastive_against_numpy():
    """The local loss MOON trains on, for one batch, against NumPy: CE of the model +
    contrastive_weight * mean l_con with z_g from the round's global model and z_prev from the client's previous model."""
    from omnifm_jax.algorithms.sgd import make_task_loss
    from omnifm_jax.models.omnifm import TokenModel

    contrastive_weight, tau = 0.7, 0.5
    task = classification(NUM_CLASSES)
    model = TokenModel(backbone=TinyBackbone(), head=task.make_head(), features=True)
    x = jnp.asarray(np.random.default_rng(3).uniform(size=(5, 8, 8, 3)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 1, 0])
    params, glob, prev = (model.init(jax.random.key(i), x, None)["params"] for i in range(3))
    from omnifm_jax.algorithms.moon import moon_loss_terms

    loss_fn = make_task_loss(model, task, None, moon_loss_terms(contrastive_weight, tau), global_params=glob, client=prev)
    got, _ = loss_fn(params, {}, x, y, jnp.ones(5, bool), None)
    logits, z = (np.asarray(a, np.float64) for a in model.apply({"params": params}, x, None))
    zg = np.asarray(model.apply({"params": glob}, x, None)[1], np.float64)
    zp = np.asarray(model.apply({"params": prev}, x, None)[1], np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want = -logp[np.arange(5), np.asarray(y)].mean() + contrastive_weight * numpy_moon(z, zg, zp, tau).mean()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_moon_keeps_the_trained_model_as_the_previous_one():
    data = make_clients([9, 6, 12, 7], seed=2)
    state, metrics = rounds_of(build_cls("moon", contrastive_weight=1.0), data, rounds=1, participation=0.5)
    init = federated.init(build_cls("moon", contrastive_weight=1.0), jax.random.key(3), data)
    part = set(np.asarray(metrics.participants).tolist())
    prev = np.asarray(state.clients.algorithm_state["head"]["fc"]["kernel"])
    first = np.asarray(init.clients.algorithm_state["head"]["fc"]["kernel"])
    for k in range(4):
        assert (np.max(np.abs(prev[k] - first[k])) > 1e-6) == (k in part)


# ----------------------------------------------------------------------------- FedRep

def test_fedrep_trains_head_then_body_for_the_configured_epochs():
    """Against a plain-JAX loop written here: plocal_epochs of SGD on the head alone, then
    local_epochs on the body alone, on the same shuffles; the head stays personal."""
    data = make_clients([10], seed=4)
    task = classification(NUM_CLASSES)
    plocal, body_epochs, b, lr = 2, 1, 4, 0.1
    alg = algorithms.build("fedrep", task=task, backbone=TinyBackbone(), optimizer=optax.sgd(lr),
                           local_epochs=body_epochs, batch_size=b, plocal_epochs=plocal)
    state = federated.init(alg, jax.random.key(0), data)
    dev = jax.device_put(data)
    new, m = federated.make_round(alg, data, donate=False)(state, dev)
    assert int(m.client_metrics["local_steps"][0]) == (plocal + body_epochs) * (10 // b)
    assert int(alg.local_steps(jnp.int32(10))) == (plocal + body_epochs) * (10 // b)

    from omnifm_jax.models.omnifm import TokenModel
    model = TokenModel(backbone=TinyBackbone(), head=task.make_head())
    params = labels.combine(state.server.params, jax.tree_util.tree_map(lambda a: a[0], state.clients.personal))["params"]
    _, client_key = jax.random.split(jax.random.fold_in(state.key, state.round))
    key = jax.random.fold_in(client_key, 0)

    def sgd_phase(params, epochs, phase_key, part):
        perm_key, _ = jax.random.split(phase_key)
        perms = np.asarray(lt.epoch_permutations(perm_key, jnp.int32(10), 10, epochs))
        for e in range(epochs):
            for s in range(10 // b):
                idx = perms[e, s * b:(s + 1) * b]
                x = task.scale_inputs(jnp.asarray(data.x[idx]))
                y = jnp.asarray(data.y[idx])
                g = jax.grad(lambda p: task.loss(model.apply({"params": p}, x, None)[0], y).mean())(params)
                params = {k: (jax.tree_util.tree_map(lambda w, d: w - lr * d, v, g[k]) if (k == "head") == (part == "head")
                              else v) for k, v in params.items()}
        return params

    params = sgd_phase(params, plocal, jax.random.fold_in(key, 0), "head")
    params = sgd_phase(params, body_epochs, jax.random.fold_in(key, 1), "body")
    got = labels.combine(new.server.params, jax.tree_util.tree_map(lambda a: a[0], new.clients.personal))["params"]
    for a, c in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), rtol=1e-5, atol=1e-6)
    assert jax.tree_util.tree_leaves(new.server.params["params"]["head"]) == []  # the head never reaches the server


# ----------------------------------------------------------------------------- server optimizers

@pytest.mark.parametrize("name, tx", [
    ("fedavgm", optax.sgd(1.0, momentum=0.9)),
    ("fedadam", optax.adam(0.01, b1=0.9, b2=0.99, eps=1e-3)),
    ("fedyogi", optax.yogi(0.01, b1=0.9, b2=0.99, eps=1e-3)),
])
def test_server_optimizers_equal_optax_applied_by_hand(name, tx):
    """Three server steps on random uploads: the n_k-weighted mean (NumPy), the pseudo-gradient
    w - mean through the optax transformation by hand, applied to w."""
    alg = build_cls(name)
    data = make_clients([9, 6, 12, 7], seed=2)
    server = federated.init(alg, jax.random.key(1), data).server
    rng = np.random.default_rng(11)
    w = jax.tree_util.tree_map(np.asarray, server.params)
    opt_state = tx.init(w)
    for _ in range(3):
        uploads = jax.tree_util.tree_map(lambda a: jnp.asarray(a + rng.normal(size=(3,) + a.shape), jnp.float32), w)
        weights = rng.uniform(1, 10, size=3)
        server = alg.server_update(server, Upload(shared=uploads, algorithm_upload=None), jnp.asarray(weights, jnp.float32))
        mean = jax.tree_util.tree_map(lambda u: np.tensordot(weights, np.asarray(u, np.float64), 1) / weights.sum(), uploads)
        updates, opt_state = tx.update(jax.tree_util.tree_map(lambda a, m: jnp.asarray(a - m, jnp.float32), w, mean),
                                       opt_state, w)
        w = jax.tree_util.tree_map(np.asarray, optax.apply_updates(w, updates))
        for a, c in zip(jax.tree_util.tree_leaves(server.params), jax.tree_util.tree_leaves(w)):
            np.testing.assert_allclose(np.asarray(a), c, rtol=1e-5, atol=1e-6)


def test_server_optimizer_keeps_still_when_no_upload_counts():
    alg = build_cls("fedadam")
    data = make_clients([9, 6], seed=2)
    server = federated.init(alg, jax.random.key(1), data).server
    uploads = jax.tree_util.tree_map(lambda a: jnp.stack([a + 1, a - 1]), server.params)
    new = alg.server_update(server, Upload(shared=uploads, algorithm_upload=None), jnp.zeros(2))
    assert federated.state_hash(new) == federated.state_hash(server)


def test_fedavgm_without_momentum_is_fedavg():
    data = make_clients([9, 6, 12, 7], seed=2)
    a, _ = rounds_of(build_cls("fedavg"), data)
    b, _ = rounds_of(build_cls("fedavgm", server_momentum=0.0), data)
    for x, y in zip(jax.tree_util.tree_leaves(a.server.params), jax.tree_util.tree_leaves(b.server.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- FedALA

def test_fedala_with_eta_zero_is_fedavg():
    """eta = 0: the weights stay 1, so every client starts from the global model: FedAvg."""
    data = make_clients([9, 6, 12, 7], seed=2)
    a, _ = rounds_of(build_cls("fedavg"), data, rounds=3, participation=1.0)
    b, _ = rounds_of(build_cls("fedala", eta=0.0), data, rounds=3, participation=1.0)
    for x, y in zip(jax.tree_util.tree_leaves(a.server.params), jax.tree_util.tree_leaves(b.server.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(b.clients.algorithm_state["weights"]["head"]["fc"]["kernel"]) == 1.0)


def numpy_ala(g, l, w, a, t, *, eta, started, threshold=0.1, num_pre_loss=10, max_passes=100):
    """PFLlib's ALA loop for a client whose every sample has loss 0.5 a ||theta - t||^2 and whose
    slice fits one batch: theta = l + (g - l) W; per batch W <- clip(W - eta a (theta - t) (g - l), 0, 1)."""
    losses = []
    while True:
        theta = l + (g - l) * w
        losses.append(0.5 * a * np.sum((theta - t) ** 2))
        w = np.clip(w - eta * a * (theta - t) * (g - l), 0.0, 1.0)
        if started or len(losses) >= max_passes:
            break
        if len(losses) > num_pre_loss and np.std(losses[-num_pre_loss:]) < threshold:
            break
    return w, len(losses)


def test_fedala_learns_its_weights_like_pfllibs_loop():
    """Two quadratic clients: round 1 trains (no ALA: local == global), round 2 starts with
    ALA's start phase on the head, round 3 makes one pass; the weights equal a float64 NumPy
    run of PFLlib's loop from the engine's own local and global models."""
    classes, eta, lr = [1, 3], 2.0, 0.1
    data = quadratic_clients(classes)
    alg = algorithms.build("fedala", task=quadratic_task(), backbone=FlatBackbone(), optimizer=optax.sgd(lr),
                           local_epochs=2, batch_size=N_PER_CLIENT, eta=eta)
    dev = jax.device_put(data)
    round_fn = federated.make_round(alg, data, donate=False)
    state = federated.init(alg, jax.random.key(0), dev)
    state, _ = round_fn(state, dev)
    assert not bool(np.any(np.asarray(state.clients.algorithm_state["started"])))
    passes = []
    for started in (False, True):
        g = np.asarray(state.server.params["params"]["head"]["w"], np.float64)
        local = np.asarray(state.clients.algorithm_state["local"]["head"]["w"], np.float64)
        w0 = np.asarray(state.clients.algorithm_state["weights"]["head"]["w"], np.float64)
        state, _ = round_fn(state, dev)
        got = np.asarray(state.clients.algorithm_state["weights"]["head"]["w"], np.float64)
        for k, c in enumerate(classes):
            want, n_passes = numpy_ala(g, local[k], w0[k], CURVATURES[c], TARGETS[c], eta=eta, started=started)
            np.testing.assert_allclose(got[k], want, rtol=1e-5, atol=1e-6)
            passes.append(n_passes)
        assert bool(np.all(np.asarray(state.clients.algorithm_state["started"])))
    assert min(passes[:2]) >= 11 and passes[2:] == [1, 1]
    assert np.any(got < 1.0) and np.all((got >= 0) & (got <= 1))


# ----------------------------------------------------------------------------- GPFL

def test_gpfl_gce_loss_matches_numpy():
    from omnifm_jax.algorithms.gpfl import gce_loss

    rng = np.random.default_rng(5)
    feat, emb, y = rng.normal(size=(6, 8)), rng.normal(size=(4, 8)), rng.integers(0, 4, 6)
    cos = (feat / np.linalg.norm(feat, axis=1, keepdims=True)) @ (emb / np.linalg.norm(emb, axis=1, keepdims=True)).T
    want = np.log(np.exp(cos).sum(1)) - cos[np.arange(6), y]
    got = gce_loss(jnp.asarray(feat, jnp.float32), jnp.asarray(emb, jnp.float32), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-5, atol=1e-6)


def test_gpfl_conditional_valve_matches_numpy():
    from omnifm_jax.algorithms.gpfl import ConditionalValve

    rng = np.random.default_rng(6)
    x, ctx = rng.normal(size=(5, 8)), rng.normal(size=(8,))
    cov = ConditionalValve()
    variables = cov.init(jax.random.key(0), jnp.asarray(x, jnp.float32), jnp.asarray(ctx, jnp.float32))
    p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables["params"])

    def branch(name):
        h = np.maximum(ctx @ p[name]["kernel"] + p[name]["bias"], 0.0)
        h = (h - h.mean()) / np.sqrt(h.var() + 1e-5)
        return h * p[f"{name}_norm"]["scale"] + p[f"{name}_norm"]["bias"]

    want = np.maximum(x * (branch("gamma") + 1.0) + branch("beta"), 0.0)
    got = cov.apply(variables, jnp.asarray(x, jnp.float32), jnp.asarray(ctx, jnp.float32))
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-4, atol=1e-5)


def test_gpfl_shares_base_cov_gce_and_rebuilds_its_conditional_inputs():
    """One client: after a round the server holds exactly its trained base, CoV and GCE (not
    its head), and its conditional inputs are (mean_l E_l, sum_l E_l p_l) of that GCE with its
    class proportions p counted here."""
    data = make_clients([11], seed=9)
    alg = build_cls("gpfl", lambda_reg=0.01, weight_decay=0.1)
    state, _ = rounds_of(alg, data, rounds=1, participation=1.0)
    shared = state.server.params["params"]
    assert {"backbone", "gce", "cov"} <= set(shared) and jax.tree_util.tree_leaves(shared["head"]) == []
    emb = np.asarray(shared["gce"], np.float64)
    p = np.bincount(data.y, minlength=NUM_CLASSES) / data.y.size
    np.testing.assert_allclose(np.asarray(state.clients.algorithm_state["generic"][0]), emb.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.clients.algorithm_state["personal"][0]), p @ emb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(state.clients.algorithm_state["proportions"][0]), p, rtol=1e-6)


def test_gpfl_needs_classification():
    from omnifm_jax.checks import ConfigError
    from omnifm_jax.tasks import super_resolution

    with pytest.raises(ConfigError, match="gpfl needs the classification task"):
        algorithms.build("gpfl", task=super_resolution(2), backbone=TinyBackbone(), optimizer=optax.sgd(0.1),
                         local_epochs=1, batch_size=4)
