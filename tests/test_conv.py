"""The convolution formulations (``models.common.CONV_PATHS``): values against a NumPy float64
reference under ``vmap`` with per-client kernels and ``jit``, the shape of the lowered round
(per-client weight gradients batch-grouped, never feature-grouped), bf16 end to end, and the
ResNet shortcut as a slice."""
from __future__ import annotations

import re

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from omnifm_jax import federated
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.data.federation import stack_clients
from omnifm_jax.models.cnn import FedAvgCNN
from omnifm_jax.models.common import CONV_PATHS, conv_general_dilated, make_conv, resolve_conv_path
from omnifm_jax.models.omnifm import TokenModel
from omnifm_jax.models.resnet import ResNet18
from omnifm_jax.tasks import classification

DN = ("NHWC", "HWIO", "NHWC")


def np_conv_and_grads(x, w, g, strides, pads):
    """float64 NumPy: ``y = conv(x, w)`` (NHWC x HWIO, explicit padding) and the VJP of ``g``."""
    x, w, g = (np.asarray(a, np.float64) for a in (x, w, g))
    (plo_h, phi_h), (plo_w, phi_w) = pads
    xp = np.pad(x, ((0, 0), (plo_h, phi_h), (plo_w, phi_w), (0, 0)))
    kh, kw = w.shape[:2]
    sh, sw = strides
    oh = (xp.shape[1] - kh) // sh + 1
    ow = (xp.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, w.shape[3]))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]  # (B, oh, ow, C)
            y += patch @ w[i, j]
            dw[i, j] = np.einsum("bhwc,bhwo->co", patch, g)
            dxp[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :] += g @ w[i, j].T
    dx = dxp[:, plo_h:xp.shape[1] - phi_h, plo_w:xp.shape[2] - phi_w, :]
    return y, dx, dw


# (x shape per client, kernel, strides, padding): the strides and paddings the backbones use
# (FedAvgCNN 5x5 VALID; ResNet 3x3 pad 1 at strides 1 and 2, 7x7/2 pad 3, 1x1/2 shortcut) and
# an asymmetric one.
CASES = [((3, 12, 12, 3), (5, 5, 3, 4), (1, 1), "VALID"),
         ((2, 9, 9, 2), (3, 3, 2, 5), (2, 2), ((1, 1), (1, 1))),
         ((2, 8, 8, 3), (3, 3, 3, 3), (1, 1), ((1, 1), (1, 1))),
         ((2, 8, 8, 4), (1, 1, 4, 3), (2, 2), "SAME"),
         ((1, 15, 15, 3), (7, 7, 3, 4), (2, 2), ((3, 3), (3, 3))),
         ((2, 10, 9, 2), (4, 4, 2, 3), (3, 3), ((2, 1), (0, 2)))]
K = 3  # clients


def _explicit(xs, ws, strides, padding):
    if isinstance(padding, str):
        return tuple(jax.lax.padtype_to_pads(xs[1:3], ws[:2], strides, padding))
    return padding


@pytest.mark.parametrize("path", ["canonical", "per_client", "patches"])
@pytest.mark.parametrize("xs,ws,strides,padding", CASES)
def test_conv_paths_equal_numpy_under_vmap(path, xs, ws, strides, padding):
    """Forward and both gradients of every client's convolution, with per-client kernels
    under ``jit(vmap(...))``, equal a float64 NumPy convolution on fresh random inputs."""
    rng = np.random.default_rng(abs(hash((path, xs, ws, strides))) % 2**32)
    x = rng.normal(size=(K,) + xs).astype(np.float32)
    w = rng.normal(size=(K,) + ws).astype(np.float32)

    def one(xk, wk):
        return conv_general_dilated(xk, wk, strides, padding, dimension_numbers=DN, path=path)

    y = jax.jit(jax.vmap(one))(x, w)
    g = rng.normal(size=y.shape).astype(np.float32)
    grads = jax.jit(jax.vmap(lambda xk, wk, gk: jax.vjp(one, xk, wk)[1](gk)))(x, w, g)
    pads = _explicit(xs, ws, strides, padding)
    for k in range(K):
        y_ref, dx_ref, dw_ref = np_conv_and_grads(x[k], w[k], g[k], strides, pads)
        np.testing.assert_allclose(np.asarray(y[k]), y_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(grads[0][k]), dx_ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(grads[1][k]), dw_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("path", ["canonical", "per_client", "patches"])
def test_dilated_and_grouped_convolutions_keep_xlas_formulation(path):
    """Dilations and feature groups (none of the backbones uses them) go to XLA's own
    convolution unchanged: values and gradients under vmap equal lax's."""
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(K, 2, 9, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(K, 3, 3, 2, 6)), jnp.float32)
    kw = dict(rhs_dilation=(2, 2), dimension_numbers=DN, feature_group_count=2)
    ref = lambda a, b: jnp.sum(jnp.sin(jax.lax.conv_general_dilated(a, b, (1, 1), "SAME", **kw)))
    new = lambda a, b: jnp.sum(jnp.sin(conv_general_dilated(a, b, (1, 1), "SAME", path=path, **kw)))
    for u, v in zip(jax.jit(jax.vmap(jax.grad(new, (0, 1))))(x, w), jax.jit(jax.vmap(jax.grad(ref, (0, 1))))(x, w)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batched", [(True, False), (False, True), (True, True)])
def test_per_client_grads_with_shared_operands_and_nested_maps(batched):
    """The backward pass's batching rule: a kernel or an input shared by the mapped axis, and
    a second ``vmap`` outside (a sweep over runs of clients), give the NumPy gradients."""
    rng = np.random.default_rng(7)
    xs, ws, strides, padding = CASES[1]
    x = rng.normal(size=(2, K) + xs).astype(np.float32)
    w = rng.normal(size=(2, K) + ws).astype(np.float32)
    x_in = x if batched[0] else x[:, 0]
    w_in = w if batched[1] else w[:, 0]
    axes = (0 if batched[0] else None, 0 if batched[1] else None)

    def loss(xk, wk):
        return jnp.sum(jnp.sin(conv_general_dilated(xk, wk, strides, padding, dimension_numbers=DN,
                                                    path="per_client")))

    grads = jax.jit(jax.vmap(jax.vmap(jax.grad(loss, argnums=(0, 1)), in_axes=axes)))(x_in, w_in)
    pads = _explicit(xs, ws, strides, padding)
    for r in range(2):
        for k in range(K):
            xk = x[r, k] if batched[0] else x[r, 0]
            wk = w[r, k] if batched[1] else w[r, 0]
            y, _, _ = np_conv_and_grads(xk, wk, np.zeros((xs[0], 5, 5, ws[3])), strides, pads)
            _, dx_ref, dw_ref = np_conv_and_grads(xk, wk, np.cos(y), strides, pads)
            np.testing.assert_allclose(np.asarray(grads[0][r, k]), dx_ref, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(np.asarray(grads[1][r, k]), dw_ref, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("path", ["canonical", "per_client", "patches"])
def test_conv_paths_in_bfloat16(path):
    """bf16 operands: forward and gradients stay bf16 and agree with the float64 reference to
    bf16's precision."""
    rng = np.random.default_rng(11)
    xs, ws, strides, padding = CASES[2]
    x = jnp.asarray(rng.normal(size=(K,) + xs), jnp.bfloat16)
    w = jnp.asarray(rng.normal(size=(K,) + ws), jnp.bfloat16)
    one = lambda xk, wk: conv_general_dilated(xk, wk, strides, padding, dimension_numbers=DN, path=path)
    y = jax.jit(jax.vmap(one))(x, w)
    g = jnp.asarray(rng.normal(size=y.shape), jnp.bfloat16)
    dx, dw = jax.jit(jax.vmap(lambda a, b, c: jax.vjp(one, a, b)[1](c)))(x, w, g)
    assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
    pads = _explicit(xs, ws, strides, padding)
    for k in range(K):
        ref = np_conv_and_grads(np.asarray(x[k], np.float32), np.asarray(w[k], np.float32),
                                np.asarray(g[k], np.float32), strides, pads)
        for got, want in zip((y[k], dx[k], dw[k]), ref):
            scale = np.max(np.abs(want))
            assert np.max(np.abs(np.asarray(got, np.float64) - want)) <= 0.02 * scale


def test_forward_mode_and_bad_paths_are_refused_clearly():
    x = jnp.ones((1, 6, 6, 2))
    w = jnp.ones((3, 3, 2, 2))
    f = lambda a: conv_general_dilated(a, w, (1, 1), "SAME", dimension_numbers=DN, path="per_client")
    with pytest.raises(TypeError, match="forward-mode"):
        jax.jvp(f, (x,), (x,))
    # the plain path takes forward mode
    jax.jvp(lambda a: conv_general_dilated(a, w, (1, 1), "SAME", dimension_numbers=DN, path="xla"), (x,), (x,))
    with pytest.raises(ValueError, match="unknown conv path 'cudnn'"):
        make_conv("cudnn")
    assert resolve_conv_path("auto") in CONV_PATHS and resolve_conv_path("auto") != "auto"
    with pytest.raises(ValueError, match="unknown downsample"):
        ResNet18(width=4, downsample="pool").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


# ----------------------------------------------------------------------------- the lowered round

def _tiny_round(backbone, clients: int = 3, samples: int = 4, batch: int = 2, image: int = 8):
    rng = np.random.default_rng(0)
    total = clients * samples
    fed = stack_clients(rng.integers(0, 256, (total, image, image, 3), dtype=np.uint8),
                        rng.integers(0, 3, total, dtype=np.int32), np.zeros(total, np.int32),
                        [np.arange(k * samples, (k + 1) * samples) for k in range(clients)])
    task = classification(3)
    alg = personalized_sgd(name="fedavg", model=TokenModel(backbone=backbone, head=task.make_head()), task=task,
                           optimizer=optax.sgd(0.1), personal_patterns=(), local_epochs=1, batch_size=batch)
    train = jax.device_put(fed)
    state = federated.init(alg, jax.random.key(0), train)
    round_fn = federated.make_round(alg, fed, client_chunk=None, donate=False)
    return round_fn, state, train


def _convolutions(text: str):
    """``(feature_group_count, batch_group_count, output shape)`` of every convolution of a
    lowered program."""
    out = []
    for line in text.splitlines():
        if "stablehlo.convolution" in line:
            shape = re.search(r"->\s*tensor<([\dx]+)x[a-z]+\d*>", line).group(1)
            out.append((int(re.search(r"feature_group_count = (\d+)", line).group(1)),
                        int(re.search(r"batch_group_count = (\d+)", line).group(1)),
                        tuple(int(d) for d in shape.split("x"))))
    return out


def test_round_weight_gradients_are_batch_grouped_with_the_per_client_conv():
    """Lower the vmapped round of a ResNet over 3 clients (the accelerator path forced on the
    CPU) and count its convolutions. With ``per_client`` every conv layer's weight gradient is
    ONE batch-grouped convolution over the clients (cuDNN's backward-filter form) whose output
    is that layer's kernel for all clients; with ``xla`` (the formulation before it) every
    weight gradient is feature-grouped (the form XLA:GPU runs as a forward convolution)."""
    convs, kernels = {}, None
    for path in ("xla", "per_client"):
        backbone = ResNet18(width=4, norm="group", stage_sizes=(1, 1), conv=path)
        round_fn, state, train = _tiny_round(backbone, clients=3)
        convs[path] = _convolutions(round_fn.lower(state, train).as_text())
        kernels = [v.shape for p, v in flax.traverse_util.flatten_dict(state.server.params["params"]).items()
                   if p[-1] == "kernel" and "backbone" in p]
    assert len(kernels) == 6  # stem, 2 x (conv1, conv2), one shortcut
    # A weight gradient is the convolution whose output is a layer's kernel for the 3 clients.
    stacked = sorted((h, w, i, 3 * o) for h, w, i, o in kernels)
    weight_grads = {p: [(fg, bg) for fg, bg, shape in c if shape in stacked] for p, c in convs.items()}
    assert sorted(shape for _, _, shape in convs["per_client"] if shape in stacked) == stacked
    assert weight_grads["per_client"] == [(1, 3)] * len(kernels)  # batch-grouped, none feature-grouped
    assert weight_grads["xla"] == [(3, 1)] * len(kernels)  # before: every one feature-grouped
    assert all(bg == 1 for _, bg, shape in convs["per_client"] if shape not in stacked)


def test_patches_round_has_no_convolution_left():
    """``conv="patches"``: the vmapped ResNet round (3 clients) lowers to matrix products only:
    no convolution, grouped or not, in the forward pass or either gradient."""
    backbone = ResNet18(width=4, norm="group", stage_sizes=(1, 1), conv="patches")
    round_fn, state, train = _tiny_round(backbone, clients=3)
    text = round_fn.lower(state, train).as_text()
    assert "stablehlo.convolution" not in text and "stablehlo.dot_general" in text


def test_per_client_round_equals_the_plain_round():
    """One FedAvg round of a FedAvgCNN with each formulation: the same server parameters."""
    outs = {}
    for path in CONV_PATHS[1:]:
        round_fn, state, train = _tiny_round(FedAvgCNN(hidden=16, conv=path), image=16)
        outs[path] = round_fn(state, train)[0].server.params
    for path in ("canonical", "per_client", "patches"):
        diff = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b))), outs[path], outs["xla"])
        assert max(jax.tree_util.tree_leaves(diff)) < 1e-5, (path, diff)


# ----------------------------------------------------------------------------- bf16 and the shortcut

def _norm_outputs(model, variables, x):
    _, inter = model.apply(variables, x, train=True, mutable=["intermediates"], capture_intermediates=True)
    flat = flax.traverse_util.flatten_dict(inter["intermediates"])
    return {"/".join(k[:-1]): v[0] for k, v in flat.items()
            if len(k) >= 2 and re.fullmatch(r"stem_norm|norm\d|down_norm", k[-2])}


def test_bf16_resnet_computes_norms_in_bf16_with_f32_parameters():
    """``dtype=bfloat16``: parameters stay float32, every GroupNorm returns bf16 (with
    ``norm_dtype=float32``, flax's promotion, they return float32), and every convolution of
    the lowered training step takes bf16 operands."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 3)), jnp.float32)
    model = ResNet18(width=8, norm="group", stage_sizes=(1, 1), dtype="bfloat16")
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert {a.dtype for a in jax.tree_util.tree_leaves(variables)} == {jnp.dtype(jnp.float32)}
    outs = _norm_outputs(model, variables, x)
    assert len(outs) == 6 and {v.dtype for v in outs.values()} == {jnp.dtype(jnp.bfloat16)}  # 6 norms
    old = _norm_outputs(model.clone(norm_dtype="float32"), variables, x)
    assert {v.dtype for v in old.values()} == {jnp.dtype(jnp.float32)}

    def loss(params):
        return jnp.sum(model.apply({"params": params}, x, train=True).astype(jnp.float32))

    text = jax.jit(jax.grad(loss)).lower(variables["params"]).as_text()
    convs = [line for line in text.splitlines() if "stablehlo.convolution" in line]
    assert len(convs) >= 10
    for line in convs:
        operands = re.search(r"\(tensor<[^)]*\)\s*->", line).group(0)
        assert "bf16" in operands and "f32" not in operands, line


@pytest.mark.parametrize("size", [28, 7])
def test_slice_shortcut_equals_the_strided_one(size):
    """``downsample=slice`` has the same parameters as the strided 1x1 shortcut and gives the
    same tokens and gradients (shortcut inputs of 28 and 14, or of the odd 7 and 4)."""
    rng = np.random.default_rng(size)
    x = jnp.asarray(rng.normal(size=(2, size, size, 3)), jnp.float32)
    a = ResNet18(width=4, norm="group", stage_sizes=(1, 1, 1))
    b = a.clone(downsample="slice")
    variables = jax.jit(a.init)(jax.random.key(size), x)
    assert jax.tree_util.tree_map(jnp.shape, jax.eval_shape(b.init, jax.random.key(size), x)) == \
        jax.tree_util.tree_map(jnp.shape, variables)

    def value_and_grad(m):
        return jax.jit(jax.value_and_grad(lambda p: jnp.sum(jnp.sin(m.apply({"params": p}, x)))))(variables["params"])

    (va, ga), (vb, gb) = value_and_grad(a), value_and_grad(b)
    np.testing.assert_allclose(float(vb), float(va), rtol=1e-5)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
        np.testing.assert_allclose(np.asarray(v), np.asarray(u), rtol=1e-4, atol=1e-5)


def test_downsample_auto_follows_the_backend(monkeypatch):
    """``downsample="auto"``: the strided convolution on CPU, the slice on accelerators (the
    H200 measurement); explicit values pass through, unknown ones are refused."""
    from omnifm_jax.models import resnet
    assert resnet.resolve_downsample("auto") == "conv"  # this suite runs on CPU
    monkeypatch.setattr(resnet.jax, "default_backend", lambda: "gpu")
    assert resnet.resolve_downsample("auto") == "slice"
    assert resnet.resolve_downsample("conv") == "conv" and resnet.resolve_downsample("slice") == "slice"
    with pytest.raises(ValueError, match="unknown downsample 'pool'"):
        resnet.resolve_downsample("pool")
