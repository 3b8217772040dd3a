"""Sites and a coordinator exchanging flat messages (omnifm_jax.deploy) end on the engine's
state; a dead site and a malformed upload."""
from __future__ import annotations

import jax
import numpy as np
import pytest

from omnifm_jax import config as config_lib
from omnifm_jax import deploy, experiment, federated

TINY = ["rounds=2", "num_clients=3", "participation=0.67", "local_epochs=1", "batch_size=4",
        "dataset_kwargs.samples_per_class_per_modality=4", "dataset_kwargs.image_size=16",
        "backbone_kwargs.hidden=16", "diagnostics=0", "eval_train_loss=False"]
TINY_OMNIFM = ["algorithm_kwargs.spectral_dim=8", "algorithm_kwargs.attn_dim=8", "algorithm_kwargs.bank_capacity=8",
               "algorithm_kwargs.num_suffix=2"]


def prepared(algorithm: str) -> experiment.Setup:
    extra = TINY_OMNIFM if algorithm == "omnifm" else []
    return experiment.setup(config_lib.apply_overrides(config_lib.load_config("default"),
                                                       TINY + extra + [f"algorithm={algorithm}"]))


def deployed(setup, rounds):
    """``rounds`` rounds carried by hand between a coordinator and one site per client."""
    coord = deploy.Coordinator(setup)
    sites = [deploy.Site(setup, i) for i in range(coord.num_clients)]
    states = {i: s.initial_state() for i, s in enumerate(sites)}
    log = []
    for _ in range(rounds):
        plan, server, replies = coord.plan(), coord.server(), {}
        for i, key in plan:
            replies[i], states[i] = sites[i].train(server, key, states[i])
        log.append(coord.finish(plan, replies))
    return coord, sites, states, log


def engine(setup, rounds):
    cfg, fed = setup.cfg, setup.fed
    state = federated.init(setup.algorithm, jax.random.key(cfg["seed"]), fed.train, shared_init=cfg["shared_init"])
    round_fn = federated.make_round(setup.algorithm, fed.train, participation=cfg["participation"], donate=False)
    train = jax.device_put(fed.train)
    metrics = []
    for _ in range(rounds):
        state, rm = round_fn(state, train)
        metrics.append(rm)
    return state, metrics


@pytest.mark.parametrize("algorithm", ["fedavg", "fedper", "omnifm"])
def test_a_deployment_ends_on_the_engines_state_bit_for_bit(algorithm):
    setup = prepared(algorithm)
    coord, sites, states, log = deployed(setup, 2)
    state, metrics = engine(setup, 2)
    assert [entry["participants"] for entry in log] == [np.asarray(m.participants).tolist() for m in metrics]
    a, b = deploy.to_named(coord.state.server), deploy.to_named(state.server)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for i, site_state in states.items():  # the personal states stayed with the sites
        own = deploy.to_named(jax.tree_util.tree_map(lambda x: x[i], state.clients))
        for name in own:
            np.testing.assert_array_equal(site_state[name], own[name], err_msg=f"client {i}: {name}")
    if algorithm == "omnifm":  # the bank travelled inside the server state
        assert int(np.sum(a["algorithm_state/valid"])) > 0
    # evaluation at the sites, summarised by the coordinator = the engine's evaluation
    ours = coord.summarize({i: s.evaluate(coord.server(), states[i]) for i, s in enumerate(sites)})
    evaluate = federated.make_evaluate(setup.algorithm, setup.task, setup.fed.test,
                                       batch_size=setup.cfg["eval_batch_size"])
    theirs = federated.summarize(setup.task, evaluate(state, setup.fed.test), setup.fed.test.n)
    assert ours["accuracy"] == theirs["accuracy"] and ours["clients"] == theirs["clients"]


@pytest.fixture(scope="module")
def first_round():
    """FedAvg's first round up to the aggregation: the coordinator's plan and every reply."""
    setup = prepared("fedavg")
    coord = deploy.Coordinator(setup)
    plan, server = coord.plan(), coord.server()
    replies = {}
    for i, key in plan:
        site = deploy.Site(setup, i)
        replies[i] = site.train(server, key, site.initial_state())[0]
    return setup, plan, replies


def fresh_coordinator(setup):
    return deploy.Coordinator(setup)


def test_a_dead_site_gets_weight_zero_and_the_round_completes(first_round):
    setup, plan, replies = first_round
    dead = plan[0][0]
    coord = fresh_coordinator(setup)
    entry = coord.finish(plan, {i: r for i, r in replies.items() if i != dead})
    assert entry["missing"] == [dead] and entry["faulty"] == [] and int(coord.state.round) == 1
    # = the algorithm's server update with the dead site's weight 0 (its upload ignored)
    uploads = [deploy.from_named(replies[i].upload, coord.upload_template, who="test") for i, _ in plan]
    weights = np.asarray([0.0 if i == dead else float(replies[i].n) for i, _ in plan], np.float32)
    expected = setup.algorithm.server_update(fresh_coordinator(setup).state.server,
                                             jax.tree_util.tree_map(lambda *xs: np.stack(xs), *uploads), weights)
    got, want = deploy.to_named(coord.state.server), deploy.to_named(expected)
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7, err_msg=name)
    # and it differs from the round with every reply
    full = fresh_coordinator(setup)
    full.finish(plan, replies)
    assert any(not np.array_equal(v, deploy.to_named(full.state.server)[k]) for k, v in got.items())


@pytest.mark.parametrize("how, message", [
    ("shape", r"site \d sent shared/params/head/fc/kernel as float32\[17, 6\], expected float32\[16, 6\]"),
    ("dtype", r"site \d sent shared/params/head/fc/kernel as float64"),
    ("missing", r"site \d sent arrays that do not fit the model: missing \['shared/params/head/fc/kernel'\]"),
])
def test_a_malformed_upload_is_refused_naming_the_site(first_round, how, message):
    setup, plan, replies = first_round
    name = "shared/params/head/fc/kernel"
    bad_site = plan[-1][0]
    upload = dict(replies[bad_site].upload)
    if how == "shape":
        upload[name] = np.zeros((17, 6), np.float32)
    elif how == "dtype":
        upload[name] = upload[name].astype(np.float64)
    else:
        del upload[name]
    coord = fresh_coordinator(setup)
    with pytest.raises(deploy.UploadError, match=message.replace(r"\d", str(bad_site))):
        coord.finish(plan, {**replies, bad_site: replies[bad_site]._replace(upload=upload)})
    assert int(coord.state.round) == 0  # nothing was aggregated


def test_what_a_deployment_does_not_support_is_refused():
    cfg = config_lib.apply_overrides(config_lib.load_config("default"), TINY + ["client_dropout=0.5"])
    with pytest.raises(config_lib.ConfigError, match="does not support client_dropout=0.5"):
        deploy.Coordinator(cfg)
    with pytest.raises(TypeError, match="PRNG keys do not cross"):
        deploy.to_named({"k": jax.random.key(0)})
