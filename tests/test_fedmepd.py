"""FedMEPD: per-modality encoder upload weights, the discrepancy rule of the decoder's
partial personalisation, exact identity of the calibration without missing modalities,
FedAvg equivalence of the degenerate configuration, bad input, one end-to-end run, and its
server set: the federation's server split, as the loader produced it."""
from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import algorithms, experiment, federated
from omnifm_jax import config as config_lib
from omnifm_jax.algorithms import fedmepd as fm
from omnifm_jax.algorithms.sgd import Upload, personalized_sgd
from omnifm_jax.checks import ConfigError
from omnifm_jax.data import multimodal
from omnifm_jax.data.federation import ClientArrays, ServerData
from omnifm_jax.data.registry import load_federation
from omnifm_jax.tasks.segmentation import segmentation

SIZE, M = 8, 3
CH = (4, 6)


def _images(n, seed, absent=()):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 200, (n, SIZE, SIZE, M), dtype=np.uint8)
    y = np.zeros((n, SIZE, SIZE, 1), np.uint8)
    y[:, 2:5, 3:6] = 1
    x[..., 0][y[..., 0] == 1] = 255
    for m in absent:
        x[..., m] = 0
    return x, y


def _clients(subsets, n=4, seed=0):
    xs, ys = zip(*[_images(n, seed + k, [m for m in range(M) if m not in s]) for k, s in enumerate(subsets)])
    k = len(subsets)
    return ClientArrays(x=np.concatenate(xs), y=np.concatenate(ys), n=np.full(k, n, np.int32),
                        offsets=(np.arange(k) * n).astype(np.int32), modality=np.zeros(k * n, np.int32))


_DEFAULT_SERVER = object()


def _algo(server=_DEFAULT_SERVER, **kw):
    """FedMEPD as a run builds it: hyper-parameters checked, ``server`` (the federation's
    server split, a run argument) passed to the factory; default: 4 random full-modal images."""
    if server is _DEFAULT_SERVER:
        server = ServerData(*_images(4, 99))
    kw = {"channels": CH, "attn_dim": 4, "num_anchors": 2, "server_steps": 1, "server_batch_size": 2, **kw}
    algorithms.check("fedmepd", kw)
    return algorithms.unchecked("fedmepd")(task=segmentation(2), backbone=None, optimizer=optax.sgd(0.1),
                                           local_epochs=1, batch_size=4, server=server, **kw)


@pytest.fixture(scope="module")
def shared_run():
    """One compiled FedMEPD (no server steps) and its initial state on two clients, the
    second without modality 1 (tests (a) and (b) share it: compiling costs seconds)."""
    algo = _algo(server_steps=0)
    train = _clients([[0, 1, 2], [0, 2]])
    state = federated.init(algo, jax.random.key(0), train)
    return algo, train, state, jax.jit(algo.client_update), jax.jit(algo.server_update)


def test_missing_modality_encoder_is_neither_trained_nor_counted(shared_run):
    algo, train, state, client_update, server_update = shared_run
    enc1 = state.server.params["params"]["enc1"]
    # (1) a client without modality 1 trains and uploads its encoder unchanged (zero gradient)
    c1 = jax.tree_util.tree_map(lambda a: a[1], state.clients)
    data = algorithms.ClientData(x=jnp.asarray(train.x), y=jnp.asarray(train.y), offset=jnp.int32(4),
                                 n=jnp.int32(4), capacity=4)
    res = client_update(state.server, c1, data, jax.random.key(1))
    np.testing.assert_array_equal(np.asarray(res.upload.algorithm_upload), [1.0, 0.0, 1.0])
    for a, b in zip(jax.tree_util.tree_leaves(res.upload.shared["params"]["enc1"]), jax.tree_util.tree_leaves(enc1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(
        jax.tree_util.tree_leaves(res.upload.shared["params"]["enc0"]),
        jax.tree_util.tree_leaves(state.server.params["params"]["enc0"])))
    # (2) its upload of encoder 1 has weight 0 in the server's mean, even when it is garbage
    shared = jax.tree_util.tree_map(lambda a: jnp.stack([a + 1.0, a + 1e6]), state.server.params)
    uploads = Upload(shared=shared, algorithm_upload=jnp.array([[1.0, 1.0, 1.0], [1.0, 0.0, 1.0]]))
    new = server_update(state.server, uploads, jnp.array([3.0, 5.0]))
    for a, b in zip(jax.tree_util.tree_leaves(new.params["params"]["enc1"]), jax.tree_util.tree_leaves(enc1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) + 1.0, rtol=1e-6)
    # encoder 0 is the n_k-weighted mean of both: (3 * 1 + 5 * 1e6) / 8
    for a, b in zip(jax.tree_util.tree_leaves(new.params["params"]["enc0"]),
                    jax.tree_util.tree_leaves(state.server.params["params"]["enc0"])):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b) + (3 + 5e6) / 8, rtol=1e-5)
    # nobody has modality 1: encoder 1 keeps its old value
    uploads2 = Upload(shared=shared, algorithm_upload=jnp.array([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]]))
    new2 = server_update(state.server, uploads2, jnp.array([3.0, 5.0]))
    for a, b in zip(jax.tree_util.tree_leaves(new2.params["params"]["enc1"]), jax.tree_util.tree_leaves(enc1)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_personal_filters_follow_the_discrepancy_rule(shared_run):
    # conv "dec0": kernel (1, 1, 2, 4), bias (4,): four filters with known cosines
    g = np.array([[1.0, 0.0, 1.0, 2.0], [0.0, 1.0, 1.0, 0.0]])       # global update, rows = inputs
    l = np.array([[1.0, 0.0, -1.0, 0.0], [0.0, -1.0, -1.0, 0.0]])    # cos: 1, -1, -1, 0 (l=0 -> disc 0)
    l[0, 3] = 0.0
    gb, lb = np.array([0.0, 0.0, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 0.0])
    dl = {"dec0": {"kernel": jnp.asarray(l.reshape(1, 1, 2, 4)), "bias": jnp.asarray(lb)}}
    dg = {"dec0": {"kernel": jnp.asarray(g.reshape(1, 1, 2, 4)), "bias": jnp.asarray(gb)}}
    disc = fm.filter_discrepancy(dl, dg)["dec0"]
    np.testing.assert_allclose(np.asarray(disc), [0.0, 2.0, 2.0, 0.0], atol=1e-6)
    # a filter at 90 degrees: discrepancy 1 -> personal only below threshold 1
    dl2 = {"dec0": {"kernel": jnp.asarray(np.array([[0.0, 1.0, 1.0, 1.0], [1.0, 0.0, 1.0, 0.0]]).reshape(1, 1, 2, 4)),
                    "bias": jnp.asarray(lb)}}
    np.testing.assert_allclose(np.asarray(fm.filter_discrepancy(dl2, dg)["dec0"]), [1.0, 1.0, 0.0, 0.0], atol=1e-6)
    np.testing.assert_array_equal(np.asarray(fm.personal_filters(dl, dg, 1.0)["dec0"]), [False, True, True, False])
    np.testing.assert_array_equal(np.asarray(fm.personal_filters(dl2, dg, 0.5)["dec0"]), [True, True, False, False])
    own = {"dec0": {"kernel": jnp.full((1, 1, 2, 4), 7.0), "bias": jnp.full((4,), 7.0)}}
    glob = {"dec0": {"kernel": jnp.zeros((1, 1, 2, 4)), "bias": jnp.zeros((4,))}}
    mixed = fm.mix_filters(fm.personal_filters(dl, dg, 1.0), own, glob)["dec0"]
    np.testing.assert_array_equal(np.asarray(mixed["bias"]), [0.0, 7.0, 7.0, 0.0])
    np.testing.assert_array_equal(np.asarray(mixed["kernel"][0, 0]), [[0.0, 7.0, 7.0, 0.0]] * 2)
    # ... and the client's download applies it (checked through the compiled client update);
    # personalize=False takes every filter from the server
    algo, train, state, client_update, _ = shared_run
    server, client = state.server, jax.tree_util.tree_map(lambda a: a[0], state.clients)
    p = server.params["params"]
    d = {k: jax.tree_util.tree_map(jnp.ones_like, p[k]) for k in fm.decoder_keys(p)}
    dl_c = jax.tree_util.tree_map(jnp.ones_like, d)
    dl_c["out"]["kernel"] = dl_c["out"]["kernel"].at[..., 1].set(-1.0)   # filters against the global update
    dl_c["out"]["bias"] = dl_c["out"]["bias"].at[1].set(-1.0)
    dl_c["dec0"]["kernel"] = dl_c["dec0"]["kernel"].at[..., 0].set(-1.0)
    dl_c["dec0"]["bias"] = dl_c["dec0"]["bias"].at[0].set(-1.0)
    server = server._replace(algorithm_state=dict(server.algorithm_state, delta_global=d))
    client = client._replace(algorithm_state=dict(client.algorithm_state, delta_local=dl_c,
                                        decoder=jax.tree_util.tree_map(lambda a: a + 5.0, client.algorithm_state["decoder"])))
    data = algorithms.ClientData(x=jnp.asarray(train.x), y=jnp.asarray(train.y), offset=jnp.int32(0),
                                 n=jnp.int32(4), capacity=4)
    variables, client_state = fm_download(client_update, server, client, data)
    assert int(client_state["personal_filters"]) == 2
    for name, f in (("out", 1), ("dec0", 0)):
        got, glob = np.asarray(variables["params"][name]["bias"]), np.asarray(p[name]["bias"])
        np.testing.assert_array_equal(got[f], glob[f] + 5.0)                       # personal: own value
        np.testing.assert_array_equal(np.delete(got, f), np.delete(glob, f))       # the rest: global
    # evaluation uses the personalised decoder: with no personal filter the prediction changes
    pred = jax.jit(algo.predict)
    x = jnp.asarray(train.x[:2], jnp.float32) / 255.0
    no_personal = client._replace(algorithm_state=dict(client.algorithm_state, delta_local=jax.tree_util.tree_map(jnp.zeros_like, dl_c)))
    assert not np.allclose(np.asarray(pred(server, client, x)), np.asarray(pred(server, no_personal, x)))
    dec, count, _ = fm.personalized_decoder(p, client.algorithm_state, server.algorithm_state, personalize=False, threshold=1.0)
    assert int(count) == 0
    for a, b in zip(jax.tree_util.tree_leaves(dec), jax.tree_util.tree_leaves({k: p[k] for k in fm.decoder_keys(p)})):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_patience_makes_filters_personal_after_consecutive_rounds_for_good():
    """personalize_patience=2: a filter turns personal after 2 consecutive rounds over the
    threshold and stays personal; rounds before personalize_after change nothing."""
    g = np.ones((1, 1, 1, 3))
    dg = {"dec0": {"kernel": jnp.asarray(g), "bias": jnp.zeros((3,))}}
    params = {"dec0": {"kernel": jnp.zeros((1, 1, 1, 3)), "bias": jnp.zeros((3,))}}
    own = {"dec0": {"kernel": jnp.full((1, 1, 1, 3), 9.0), "bias": jnp.full((3,), 9.0)}}
    # per round, which filters' local updates point against the global one (cos = -1):
    # filter 0 always, filter 1 never, filter 2 in rounds 0, 2, 3 (the miss in round 1 resets it)
    against = [[1, 0, 1], [1, 0, 0], [1, 0, 1], [1, 0, 1], [1, 0, 0], [1, 0, 0]]
    expected = [[0, 0, 0], [1, 0, 0], [1, 0, 0], [1, 0, 1], [1, 0, 1], [1, 0, 1]]
    left = {"dec0": jnp.full((3,), 2, jnp.int32)}
    for t, (a, want) in enumerate(zip(against, expected)):
        d = np.where(np.array(a) == 1, -1.0, 1.0)
        dl = {"dec0": {"kernel": jnp.asarray(d.reshape(1, 1, 1, 3)), "bias": jnp.zeros((3,))}}
        client = {"delta_local": dl, "decoder": own, "patience_left": left}
        server = {"delta_global": dg, "round": jnp.int32(t + 1)}
        dec, count, left = fm.personalized_decoder(params, client, server, personalize=True, threshold=1.0,
                                                   patience=2, after=1)
        np.testing.assert_array_equal(np.asarray(dec["dec0"]["bias"]) == 9.0, np.array(want) == 1,
                                      err_msg=f"round {t + 1}")
        assert int(count) == sum(want)
    np.testing.assert_array_equal(np.asarray(left["dec0"]), [0, 2, 0])   # personal for good; reset
    # before round `after`: nothing personal and the counters untouched
    client = {"delta_local": dl, "decoder": own, "patience_left": {"dec0": jnp.array([1, 1, 1], jnp.int32)}}
    dec, count, left0 = fm.personalized_decoder(params, client, {"delta_global": dg, "round": jnp.int32(0)},
                                                personalize=True, threshold=1.0, patience=2, after=1)
    assert int(count) == 0 and np.asarray(left0["dec0"]).tolist() == [1, 1, 1]
    # patience 0: the per-round rule, gated by `after` too
    _, count, _ = fm.personalized_decoder(params, client, {"delta_global": dg, "round": jnp.int32(0)},
                                          personalize=True, threshold=1.0, after=1)
    assert int(count) == 0
    _, count, _ = fm.personalized_decoder(params, client, {"delta_global": dg, "round": jnp.int32(1)},
                                          personalize=True, threshold=1.0, after=1)
    assert int(count) == 1
    with pytest.raises(ConfigError, match="personalize_patience"):
        algorithms.check("fedmepd", {"personalize_patience": -1})


def fm_download(client_update, server, client, data):
    """The variables FedMEPD's download gives a client: a client update with zero local
    steps stores the downloaded decoder unchanged as its trained one."""
    res = client_update(server, client, dataclasses.replace(data, n=jnp.int32(0)), jax.random.key(0))
    params = server.params["params"]
    return {"params": {**params, **res.state.algorithm_state["decoder"]}}, res.state.algorithm_state


def test_calibration_is_exact_identity_without_missing_modalities():
    model = fm.FedMEPDModel(num_modalities=M, num_classes=2, channels=CH, attn_dim=4, use_calibration=True)
    plain = model.clone(use_calibration=False)
    x_full = jnp.asarray(_images(3, 1)[0], jnp.float32) / 255.0
    x_miss = x_full.at[..., 2].set(0.0)
    anchors = jax.random.normal(jax.random.key(3), (2, CH[-1]))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x_full, anchors)["params"]
    rng = np.random.default_rng(0)   # NumPy-drawn parameters: no compiled init (it costs seconds)
    params = jax.tree_util.tree_map(lambda t: jnp.asarray(rng.normal(0.0, 0.3, t.shape), t.dtype), shapes)

    @jax.jit
    def both(x_full, x_miss):
        run = lambda mdl, x: mdl.apply({"params": params}, x, anchors)
        return run(model, x_full), run(plain, x_full)[0], run(model, x_miss)[0], run(plain, x_miss)[0]

    (out_cal, aux), out_plain, a, b = both(x_full, x_miss)
    assert bool(jnp.all(aux["present"]))
    np.testing.assert_array_equal(np.asarray(out_cal), np.asarray(out_plain))
    # ... and NOT identity when a modality is missing
    assert not np.allclose(np.asarray(a), np.asarray(b))
    # the functional form: r = 0 gives fused bit for bit, r = 1 the anchors' estimate
    fused = jax.random.normal(jax.random.key(4), (2, 2, 2, CH[-1]))
    qk, kk = jnp.eye(CH[-1])[:, :4], jnp.eye(CH[-1])[:, :4]
    same = fm.calibrate(fused, anchors, qk, kk, jnp.zeros((2,)))
    np.testing.assert_array_equal(np.asarray(same), np.asarray(fused))
    full = fm.calibrate(fused, anchors, qk, kk, jnp.ones((2,)))
    assert np.all(np.asarray(full) <= np.asarray(anchors).max(0) + 1e-6)   # a convex mix of the anchors


def test_degenerate_fedmepd_is_fedavg():
    """Every client full-modal, personalization off, server_steps=0, no calibration: three
    engine rounds (the jitted, vmapped ``federated.make_round``) of FedMEPD and of FedAvg over
    the same encoders + decoder give the same server parameters and the same client losses
    BIT FOR BIT, on unequal clients (4, 2, 4 samples). FedAvg here is exactly the registered
    ``fedavg``'s definition (``personalized_sgd`` with nothing personal), given FedMEPD's model
    instead of a backbone + head. The server step is also checked against a float64 NumPy
    n_k-weighted mean of the uploads."""
    algo = _algo(personalize=False, server_steps=0, calibrate_missing=False)
    model = fm.FedMEPDModel(num_modalities=M, num_classes=2, channels=CH, attn_dim=4, use_calibration=False)
    ref = personalized_sgd(name="fedavg_ref", model=model, task=segmentation(2), optimizer=optax.sgd(0.1),
                           personal_patterns=(), local_epochs=1, batch_size=4)
    train = _clients([[0, 1, 2]] * 3)._replace(n=np.array([4, 2, 4], np.int32))
    s_a = federated.init(algo, jax.random.key(5), train)
    # FedAvg from the same initial parameters (the two init programs may round the random
    # init differently), without FedMEPD's algorithm slots
    s_b = s_a._replace(server=s_a.server._replace(algorithm_state=None), clients=s_a.clients._replace(algorithm_state=None))
    leaves = jax.tree_util.tree_leaves
    start = leaves(s_a.server.params)
    data = jax.tree_util.tree_map(jnp.asarray, train)
    round_a = federated.make_round(algo, train, donate=False, client_chunk=None)
    round_b = federated.make_round(ref, train, donate=False, client_chunk=None)
    for _ in range(3):
        s_a, m_a = round_a(s_a, data)
        s_b, m_b = round_b(s_b, data)
        for a, b in zip(leaves(s_a.server.params), leaves(s_b.server.params)):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(m_a.client_metrics["train_loss"]),
                                      np.asarray(m_b.client_metrics["train_loss"]))
        np.testing.assert_array_equal(np.asarray(m_a.weights), [4.0, 2.0, 4.0])
    assert all(not np.array_equal(np.asarray(a), np.asarray(c)) for a, c in zip(leaves(s_a.server.params), start))
    # the server step alone, on one set of uploads: the n_k-weighted mean (float64 reference)
    x, y = jnp.asarray(train.x), jnp.asarray(train.y)
    up = jax.jit(algo.client_update)
    res = []
    for k in range(3):
        d = algorithms.ClientData(x=x, y=y, offset=jnp.int32(train.offsets[k]), n=jnp.int32(train.n[k]), capacity=4)
        res.append(up(s_a.server, jax.tree_util.tree_map(lambda t: t[k], s_a.clients), d, jax.random.key(k)))
    uploads = jax.tree_util.tree_map(lambda *t: jnp.stack(t), *[r.upload for r in res])
    w = jnp.asarray(train.n, jnp.float32)
    new_a = jax.jit(algo.server_update)(s_a.server, uploads, w)
    new_b = jax.jit(ref.server_update)(s_b.server, uploads._replace(algorithm_upload=None), w)
    for a, b, u in zip(leaves(new_a.params), leaves(new_b.params), leaves(uploads.shared)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        ref64 = np.tensordot(np.asarray(w, np.float64), np.asarray(u, np.float64), axes=1) / float(np.sum(w))
        np.testing.assert_allclose(np.asarray(a), ref64, rtol=1e-6, atol=1e-7)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="full-modal data: its federation carries no server split"):
        _algo(server=None)
    x, y = _images(2, 0, absent=(2,))
    with pytest.raises(ConfigError, match="not full-modal"):
        _algo(server=(x, y))
    # the server set is a run argument, not a hyper-parameter: no config can name data
    hp = algorithms.hyperparameters("fedmepd")
    assert "server" not in hp and "server_data" not in hp
    algorithms.check("fedmepd", {})
    # loader: a client declaring a modality its data lacks; no full-modal patient for the server
    _write_lgg(tmp_path / "a", absent_site="BB", absent_channel=2)
    with pytest.raises(ValueError, match=r"client 1 \(BB\) declares modality 2"):
        load_federation("lgg_multimodal_seg", num_clients=2, root=str(tmp_path / "a"),
                        modality_subsets=[[0, 1, 2], [1, 2]], server_fraction=0.2)
    fed = load_federation("lgg_multimodal_seg", num_clients=2, root=str(tmp_path / "a"),
                          modality_subsets=[[0, 1, 2], [1]], server_fraction=0.2)
    lo, n = fed.train.offsets[1], fed.train.n[1]
    assert not fed.train.x[lo:lo + n, ..., 0].any() and fed.train.x[lo:lo + n, ..., 1].all()
    assert set(fed.info["server_patients"]).isdisjoint(sum(fed.info["train_patients"] + fed.info["test_patients"], []))
    _write_lgg(tmp_path / "b", absent_site="AA", absent_channel=0, also="BB")
    with pytest.raises(ValueError, match="server has no full-modal data"):
        load_federation("lgg_multimodal_seg", num_clients=2, root=str(tmp_path / "b"), modality_subsets=[[1], [1]])
    with pytest.raises(ValueError, match="2 clients"):
        load_federation("lgg_multimodal_seg", num_clients=2, root=str(tmp_path / "a"), modality_subsets=[[1]])


def _write_lgg(root, *, sites=("AA", "BB"), patients=5, slices=2, size=SIZE, absent_site=None, absent_channel=None,
               also=None, seed=0):
    rng = np.random.default_rng(seed)
    case, site, imgs, masks, present = [], [], [], [], []
    for s in sites:
        for p in range(patients):
            for _ in range(slices):
                case.append(f"TCGA_{s}_{p:04d}_20000101")
                site.append(s)
                im = rng.integers(1, 80, (size, size, 3), dtype=np.uint8)
                mk = np.zeros((size, size), np.uint8)
                r, c = rng.integers(1, size - 4, 2)
                mk[r:r + 3, c:c + 3] = 1
                im[mk == 1] += 120
                pr = np.ones(3, np.uint8)
                if s in (absent_site, also):
                    im[..., absent_channel] = 0
                    pr[absent_channel] = 0
                imgs.append(im)
                masks.append(mk)
                present.append(pr)
    path = root / "lgg_mri_seg" / "lgg_flair_seg_64.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.stack(imgs), masks=np.stack(masks), case=np.array(case), site=np.array(site),
             modality_present=np.stack(present))
    return path


@pytest.mark.optimized  # trains many steps: tests/conftest.py
def test_end_to_end_run(tmp_path):
    _write_lgg(tmp_path / "data", patients=5, slices=2)
    root = str(tmp_path / "data")
    cfg = config_lib.apply_overrides(config_lib.load_config("fedmepd_lgg"), [
        "num_clients=2", "rounds=1", "batch_size=2", "eval_batch_size=8", "eval_train_loss=False",
        f"dataset_kwargs.root={root}", "dataset_kwargs.modality_subsets=[[0, 1, 2], [1]]",
        "dataset_kwargs.server_fraction=0.2",
        "algorithm_kwargs.channels=(4, 6)", "algorithm_kwargs.attn_dim=4", "algorithm_kwargs.num_anchors=2",
        "algorithm_kwargs.server_steps=2", "algorithm_kwargs.server_batch_size=2",
        "algorithm_kwargs.personalize_patience=1", "backbone_kwargs.channels=(4, 8)", "backbone_kwargs.strides=(2,)", "backbone_kwargs.num_res_units=0"])
    prepared = experiment.setup(cfg)
    # the server set: what the loader held out of every client, handed to FedMEPD by the run
    x, y = multimodal.server_set(dataset="lgg", root=root, server_fraction=0.2)
    np.testing.assert_array_equal(prepared.fed.server.x, x)
    np.testing.assert_array_equal(prepared.fed.server.y, y)
    summary = experiment.run(prepared, tmp_path / "out", progress=False, log=lambda s: None)
    _assert_server_data_is_the_loaders(summary["state"], prepared.fed)
    lines = [json.loads(l) for l in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [l["round"] for l in lines] == [0, 1] and summary["primary_metric"] == "dice"
    for l in lines:
        assert all(math.isfinite(l[k]) for k in ("dice", "test_loss")) and len(l["clients"]) == 2
    assert lines[1]["test_loss"] != lines[0]["test_loss"]


# ----------------------------------------------------------------------------- BraTS (4 sequences, ET/TC/WT)

BRATS_CASES = {  # case -> sequences present (T1, T1ce, T2, FLAIR)
    "Brats18_TCIA05_396_1": (1, 1, 1, 1), "Brats18_2013_2_1": (1, 1, 1, 1),
    "brats_2013_pat0002_1": (0, 1, 0, 1), "brats_2013_pat0001_1": (0, 1, 0, 1), "brats_2013_pat0003_1": (0, 1, 0, 1),
    "brats_2013_pat0004_1": (0, 1, 0, 1), "brats_2013_pat0005_1": (0, 1, 0, 1), "brats_2013_pat0006_1": (0, 1, 0, 1)}


def _write_brats(root, *, slices=3, size=SIZE, seed=0):
    rng = np.random.default_rng(seed)
    imgs, labels, case, present = [], [], [], []
    for c, pr in BRATS_CASES.items():
        for _ in range(slices):
            lab = np.zeros((size, size), np.uint8)
            r, q = rng.integers(1, size - 5, 2)
            lab[r:r + 4, q:q + 4] = 2
            lab[r + 1:r + 3, q + 1:q + 3] = rng.choice([1, 4])
            im = rng.integers(1, 80, (size, size, 4), dtype=np.uint8)
            im[lab > 0] += 120
            im[..., np.array(pr) == 0] = 0
            imgs.append(im)
            labels.append(lab)
            case.append(c)
            present.append(pr)
    path = root / "brats_slices" / "brats_tumour_slices_96.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, images=np.stack(imgs), labels=np.stack(labels), case=np.array(case),
             modality_present=np.array(present, np.uint8))
    return path


def _check_missing_modality_federation(fed, server_cases):
    """Server patients on no client; each client's absent channels zero, its declared ones not."""
    from omnifm_jax.data.brats import brats_patient

    server_p = fed.info["server_patients"]
    assert server_p == sorted({brats_patient(c) for c in server_cases})
    clients = fed.info["train_patients"], fed.info["test_patients"]
    for split, arr, pats in (("train", fed.train, clients[0]), ("test", fed.test, clients[1])):
        for k, subset in enumerate(fed.info["modality_subsets"]):
            assert not set(pats[k]) & set(server_p)
            lo, n = arr.offsets[k], arr.n[k]
            x = arr.x[lo:lo + n]
            for m in range(x.shape[-1]):
                flat = x[..., m].reshape(n, -1)
                if m in subset:
                    assert (flat.max(axis=1) > 0).all(), (split, k, m)
                else:
                    assert not flat.any(), (split, k, m)


def test_brats_loader_server_patient_subsets_and_regions(tmp_path):
    root = tmp_path / "data"
    _write_brats(root)
    fed = load_federation("brats_multimodal_seg", num_clients=3, root=str(root))
    # the only patient whose every case is full-modal is the server's (Brats18_2013_2_1 is
    # full-modal but the same patient as brats_2013_pat0002_1, which has T1ce + FLAIR only)
    _check_missing_modality_federation(fed, ["Brats18_TCIA05_396_1"])
    assert fed.info["modality_subsets"] == [[1, 3], [3], [1]] and fed.info["label_values"] == [0, 1, 2, 4]
    assert fed.info["regions"] == {"et": [4], "tc": [1, 4], "wt": [1, 2, 4]}
    where = {}
    for split in ("train_patients", "test_patients"):
        for k, pats in enumerate(fed.info[split]):
            for p in pats:
                where.setdefault(p, set()).add(k)
    assert len(where) == 6 and all(len(v) == 1 for v in where.values())
    assert "brats_2013_pat0002" in where          # the two cases of HG0002 as one patient
    x, y = multimodal.server_set(dataset="brats", root=str(root))
    assert x.shape == (3, SIZE, SIZE, 4) and set(np.unique(y).tolist()) <= {0, 1, 2, 3}
    # subsets by name; a declared sequence the clients' cases lack is refused
    by_name = load_federation("brats_multimodal_seg", num_clients=3, root=str(root),
                              modality_subsets=[["t1ce", "flair"], ["flair"], ["t1ce"]])
    np.testing.assert_array_equal(by_name.train.x, fed.train.x)
    with pytest.raises(ValueError, match=r"declares modality 0 \(t1\)"):
        load_federation("brats_multimodal_seg", num_clients=3, root=str(root), modality_subsets=[[0, 1], [3], [1]])
    with pytest.raises(ValueError, match="unknown channel 'pd'"):
        load_federation("brats_multimodal_seg", num_clients=3, root=str(root), modality_subsets=[["pd"], [3], [1]])
    from omnifm_jax.data.describe import describe_masks

    text = describe_masks(fed)
    assert "server: 1 full-modal patient(s) held out of every client: Brats18_TCIA05_396_1" in text
    assert "regions (reported Dice): et=[4]  tc=[1, 4]  wt=[1, 2, 4]" in text
    assert [line.split()[-1] for line in text.splitlines() if line.strip()[:1].isdigit()] == ["t1ce+flair", "flair",
                                                                                            "t1ce"]
    # a binary target: ET only, no regions
    et = load_federation("brats_multimodal_seg", num_clients=3, root=str(root), target="et")
    assert et.info["label_values"] == [0, 1] and "regions" not in et.info


def _assert_server_data_is_the_loaders(state, fed):
    """FedMEPD's server-side set (its server state's algorithm slot) is the federation's
    server split, which no client holds."""
    np.testing.assert_array_equal(np.asarray(state.server.algorithm_state["data_x"]), fed.server.x)
    np.testing.assert_array_equal(np.asarray(state.server.algorithm_state["data_y"]), fed.server.y)
    assert set(fed.info["server_patients"]).isdisjoint(sum(fed.info["train_patients"] + fed.info["test_patients"],
                                                           []))


def test_brats_end_to_end_reports_regions_with_the_loaders_server_set(tmp_path):
    root = str(tmp_path / "data")
    _write_brats(tmp_path / "data")
    sets = ["rounds=1", "batch_size=2", "eval_batch_size=8", "eval_train_loss=False", f"dataset_kwargs.root={root}",
            "algorithm_kwargs.channels=(4, 6)", "algorithm_kwargs.attn_dim=4", "algorithm_kwargs.num_anchors=2",
            "algorithm_kwargs.server_steps=1", "algorithm_kwargs.server_batch_size=2",
            "backbone_kwargs.channels=(4, 8)", "backbone_kwargs.strides=(2,)", "backbone_kwargs.num_res_units=0"]
    cfg = config_lib.apply_overrides(config_lib.load_config("fedmepd_brats"), sets)
    config_lib.validate(cfg)
    summary = experiment.run(cfg, tmp_path / "out", progress=False, log=lambda s: None)
    last = summary["last"]
    assert all(math.isfinite(last[k]) for k in ("dice", "dice_et", "dice_tc", "dice_wt"))
    np.testing.assert_allclose(last["dice"], np.mean([np.mean([c[f"dice_{g}"] for g in ("et", "tc", "wt")])
                                                      for c in summary["last_clients"]]), rtol=1e-12)
    fed = experiment.load_data(cfg)
    x, y = multimodal.server_set(dataset="brats", root=root, target="multiclass")
    np.testing.assert_array_equal(fed.server.x, x)
    np.testing.assert_array_equal(fed.server.y, y)
    _assert_server_data_is_the_loaders(summary["state"], fed)
    # the server set follows the data set's target (one place says it): ET gives binary server masks,
    # where the algorithm once loaded a 4-class set of its own
    et = experiment.setup(config_lib.apply_overrides(cfg, ["dataset_kwargs.target=et"]))
    assert et.fed.server.x.shape == x.shape and int(et.fed.server.y.max()) == 1 and et.algorithm.name == "fedmepd"


@pytest.mark.real_data
def test_real_brats_missing_modality_federation():
    from omnifm_jax.data.paths import default_real_data_dir

    if not (default_real_data_dir() / "brats_slices" / "brats_tumour_slices_96.npz").is_file():
        pytest.skip("real BraTS slices not found")
    fed = load_federation("brats_multimodal_seg", num_clients=3)
    _check_missing_modality_federation(fed, ["Brats18_TCIA05_396_1"])
    x, _ = multimodal.server_set(dataset="brats")
    assert x.shape == (76, 96, 96, 4)
    assert fed.train.n.sum() + fed.test.n.sum() + len(x) == 584


def test_resumes_exactly_from_a_checkpoint(tmp_path):
    """Round 1 saved and restored (orbax, into a fresh init's structure), then round 2: the
    same state bit for bit as two rounds straight; FedMEPD's slots (anchors, last global
    update, server set, round; each client's decoder, local update, patience counters)
    included."""
    from omnifm_jax import checkpoint as ck

    algo = _algo(personalize_patience=1)
    train = _clients([[0, 1, 2], [0, 2], [1]])._replace(n=np.array([4, 3, 4], np.int32))
    dev = jax.device_put(jax.tree_util.tree_map(jnp.asarray, train))
    round_fn = federated.make_round(algo, train, participation=0.67, donate=False)
    s1, _ = round_fn(federated.init(algo, jax.random.key(4), dev), dev)
    straight, _ = round_fn(s1, dev)
    c = ck.RunCheckpointer(tmp_path / "ck", keep=2)
    try:
        c.save(s1, {"algorithm": "fedmepd"})
        restored, _ = c.restore(1, federated.init(algo, jax.random.key(99), dev))
    finally:
        c.close()
    assert federated.state_hash(restored) == federated.state_hash(s1)
    resumed, _ = round_fn(restored, dev)
    assert federated.state_hash(resumed) == federated.state_hash(straight)
    assert federated.state_hash(straight) != federated.state_hash(s1)
