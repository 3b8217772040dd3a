"""Round speed: the engine's vmapped round vs its sequential per-client path vs one shared
model doing the same local work on the concatenated batch.

    python -m experiments.benchmarks.round_speed [--smoke] [--json FILE] [--md FILE]
        [--workloads cnn,cnn10k,omnifm,resnet18,variants] [--repeats 3]

Workload groups (``--workloads``; on a GPU each group finishes in a few minutes):
  cnn       FedAvgCNN, 28x28x3, 128 samples per client, batch 32 (4 local steps):
            20, 100 and 1,000 clients;
  cnn10k    the same at 10,000 clients, in chunks of 2,000;
  omnifm    the OmniFM algorithm on the CNN work at 20 and 1,000 clients (its overhead over
            FedAvg: FFT, retrieval, ECA, PSP, alignment);
  resnet18  ResNet-18 (cifar stem, GroupNorm), 1,000 samples per client at batch 10
            (100 local steps, the per-step work of the paper's Table 1): 20 and 100 clients
            in float32, 20 clients in bfloat16, and OmniFM at 20 clients;
  variants  the 1,000-client CNN round with client chunks of 250 and 500, bfloat16
            compute, and 4 rounds fused in one scan (time per round);
  heterogeneous  clients of unequal size, FedAvg, FedAvgCNN, batch 32, drop_last: the real
            4-modality federation (``real4``: 20 clients, Dirichlet 0.1) when its files are
            there, else a synthetic federation with a Dirichlet 0.1 size profile of the same
            pool size; and 10,000 clients with power-law sizes. Its own record fields:
            ``engine_s`` (median round, the backend's default ``client_chunk="auto"``),
            ``plain_loop_s`` (the same participants' real batches through one jitted SGD step
            each, in a Python loop), ``engine_over_plain``, ``useful_client_steps /
            executed_client_steps`` for every mapping strategy, ``eval_s`` vs
            ``plain_eval_s`` (every client's test images through its model), and the data
            memory against the real samples' bytes.

Every record has:
  workload, algorithm, variant, clients, samples_per_client, batch_size, local_steps,
  client_chunk, dtype, fused_rounds;
  engine_s        median round time, compile excluded (fused: time of the scan / rounds);
  compile_s       wall time of the round's compile (it runs alongside the compiles of the
                  two reference paths);
  client_steps_per_s  clients * local_steps / engine_s;
  sequential_s    a Python loop over the jitted single-client update (the same math),
                  timed on ``min(clients, --seq-clients)`` clients and scaled linearly
                  (``sequential_timed_clients`` says how many ran);
  speedup         sequential_s / engine_s;
  shared_s        the same number of SGD steps by ONE model on the K*B batch: the floor a
                  vmapped round can approach; engine_over_shared = engine_s / shared_s;
  flops, tflops   the convolution and matrix-product FLOPs of one shared-model step
                  (``matmul_flops``, counted on the jaxpr) x local steps, over engine_s;
  peak_fraction   tflops / the device's dense bf16 peak (vendor figure; null if unknown);
  peak_bytes      XLA's memory analysis of the compiled round (arguments + outputs + temps:
                  what the round needs on the device);
  table1_run_min  ResNet-18 rows at 20 clients only: minutes for one Table-1 run (100 rounds
                  of 5 epochs over ~4.1k images at batch 10 = 2,050 steps) extrapolated from
                  the measured per-step round time (training only, evaluation excluded);
  device, backend, date.
Records are written to ``--json`` after each workload, so an interrupted run keeps what it
measured; a workload that fails (e.g. out of memory) is recorded with its error.

``--smoke`` runs tiny sizes of every group on a 2-core CPU in under a minute; absolute CPU
times say nothing about a GPU, only ratios measured in one run mean something there.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms.base import ClientData
from omnifm_jax.data.federation import ClientArrays, stack_clients
from omnifm_jax.models import FedAvgCNN, ResNet18, TokenModel
from omnifm_jax.tasks import classification

NUM_CLASSES = 10
IMAGE = 28
GROUPS = ("cnn", "cnn10k", "omnifm", "resnet18", "variants", "heterogeneous")
# Table 1 (paper, Sec. 4.1): 20 clients, ~4.1k training images each, batch 10, 5 local
# epochs, 100 rounds.
TABLE1_STEPS_PER_ROUND = 5 * -(-4100 // 10)
TABLE1_ROUNDS = 100
# Dense bf16 peak in TFLOP/s (vendor data sheets), matched against jax's device_kind.
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0),
                    ("L4", 121.0), ("TPU v4", 275.0), ("TPU v5p", 459.0), ("TPU v5 lite", 197.0))


class Row(NamedTuple):
    """One benchmark workload."""
    workload: str              # "cnn" | "resnet18"
    algorithm: str             # a registered algorithm
    clients: int
    samples: int               # per client
    batch: int
    epochs: int = 1
    chunk: Optional[int] = None
    dtype: str = "float32"     # computation dtype (parameters stay float32)
    fused_rounds: int = 1      # rounds per jitted call (make_rounds)

    @property
    def local_steps(self) -> int:
        return self.epochs * (self.samples // self.batch)  # drop_last

    @property
    def variant(self) -> str:
        parts = [self.dtype] + ([f"chunk={self.chunk}"] if self.chunk else [])
        parts += [f"fused x{self.fused_rounds}"] if self.fused_rounds > 1 else []
        return ", ".join(parts)


def plan(smoke: bool, groups: List[str]) -> List[Row]:
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise SystemExit(f"unknown workload group(s) {unknown}; choose from {list(GROUPS)}")
    if smoke:  # every code path, tiny: (clients, samples, batch) chosen for compile time
        table = {
            "cnn": [Row("cnn", "fedavg", 4, 8, 8)],
            "cnn10k": [Row("cnn", "fedavg", 4, 8, 8, chunk=3)],
            "omnifm": [Row("cnn", "omnifm", 4, 8, 8)],
            "resnet18": [Row("resnet18", "fedavg", 2, 8, 8)],
            "variants": [Row("cnn", "fedavg", 4, 8, 8, dtype="bfloat16", fused_rounds=2)],
        }
    else:
        cnn = dict(samples=128, batch=32)
        table = {
            "cnn": [Row("cnn", "fedavg", k, **cnn) for k in (20, 100, 1000)],
            "cnn10k": [Row("cnn", "fedavg", 10000, chunk=2000, **cnn)],
            "omnifm": [Row("cnn", "omnifm", k, **cnn) for k in (20, 1000)],
            # 100 steps of Table 1's local work; table1_run_min extrapolates to 2,050 steps.
            "resnet18": [Row("resnet18", "fedavg", 20, 1000, 10), Row("resnet18", "fedavg", 100, 1000, 10),
                         Row("resnet18", "fedavg", 20, 1000, 10, dtype="bfloat16"),
                         Row("resnet18", "omnifm", 20, 1000, 10)],
            "variants": [Row("cnn", "fedavg", 1000, chunk=250, **cnn), Row("cnn", "fedavg", 1000, chunk=500, **cnn),
                         Row("cnn", "fedavg", 1000, dtype="bfloat16", **cnn),
                         Row("cnn", "fedavg", 1000, fused_rounds=4, **cnn)],
        }
    return [row for g in groups for row in table[g]]


def random_federation(clients: int, samples, image: int = IMAGE, seed: int = 0) -> ClientArrays:
    """Random images and labels; ``samples`` per client (an int, or one count per client)."""
    rng = np.random.default_rng(seed)
    counts = np.broadcast_to(np.asarray(samples, np.int64), (clients,))
    total = int(counts.sum())
    x = rng.integers(0, 256, (total, image, image, 3), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, total, dtype=np.int32)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    return stack_clients(x, y, np.zeros(total, np.int32),
                         [np.arange(bounds[k], bounds[k + 1]) for k in range(clients)])


def make_backbone(row: Row, smoke: bool, formulation: Optional[Dict[str, str]] = None):
    """The row's backbone; ``formulation`` (:func:`formulation_for`) overrides the library's
    defaults for the gradient formulation (``conv``, and for ResNet-18 ``norm_dtype`` and
    ``downsample``)."""
    f = formulation or {}
    conv = {"conv": f["conv"]} if "conv" in f else {}
    if row.workload == "resnet18":
        extra = {k: f[k] for k in ("norm_dtype", "downsample") if k in f}
        return ResNet18(stem="cifar", norm="group", width=8 if smoke else 64, dtype=row.dtype, **conv, **extra)
    return FedAvgCNN(dtype=row.dtype, **conv)


# The backbone's choices. The barrier is the local step's (``local_training``'s ``grad_barrier``),
# which registered algorithms do not take as a hyper-parameter: its pick becomes a library
# default, not a benchmark option.
FORMULATION_RULES = ("conv", "norm_dtype", "downsample")


def formulation_for(decisions: Dict[str, Any], workload: str) -> Dict[str, str]:
    """The picks of ``formulations.py``'s decisions that apply to one workload: the workload's
    own pick of each rule where it measured one, else the overall pick; rules without a single
    pick ("n/a", "mixed") keep the library's default. ``cmdbuf`` is process-wide (XLA_FLAGS):
    see :func:`apply_cmdbuf`."""
    own = decisions.get("per_workload", {}).get(workload, {})
    out: Dict[str, str] = {}
    for rule in FORMULATION_RULES if workload == "resnet18" else ("conv",):
        pick = own.get(rule, {}).get("pick", "n/a")
        if pick == "n/a":  # not measured on this workload
            pick = decisions.get("overall", {}).get(rule, "n/a")
        if pick != "n/a" and not pick.startswith("mixed"):
            out[rule] = pick
    return out


def apply_cmdbuf(decisions: Dict[str, Any]) -> bool:
    """Adds the command-buffer flag to ``XLA_FLAGS`` when the overall ``cmdbuf`` pick is "on"
    (read when the backend starts, so call before any computation). Returns whether it did."""
    from experiments.benchmarks.formulations import CMDBUF_FLAG
    if decisions.get("overall", {}).get("cmdbuf") != "on":
        return False
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + CMDBUF_FLAG).strip()
    return True


def bf16_peak_tflops(device_kind: str) -> Optional[float]:
    for name, peak in BF16_PEAK_TFLOPS:
        if name.lower() in device_kind.lower():
            return peak
    return None


def table1_minutes(engine_s: float, local_steps: int) -> float:
    """Training minutes of one Table-1 run from a measured round of ``local_steps`` steps."""
    return engine_s / local_steps * TABLE1_STEPS_PER_ROUND * TABLE1_ROUNDS / 60.0


def compiler_options(smoke: bool) -> Dict[str, Any]:
    """XLA options for the timed programs: on CPU, ``--smoke`` compiles them at LLVM level 1,
    which keeps the smoke run under a minute on 2 cores (smoke times are a check that every
    path runs, not benchmark figures). Otherwise XLA's defaults."""
    return {"xla_backend_optimization_level": 1} if smoke and jax.default_backend() == "cpu" else {}


def build_algorithm(row: Row, smoke: bool, formulation: Optional[Dict[str, str]] = None):
    """The row's algorithm on its backbone: classification, SGD, one local epoch setting."""
    hp = dict(spectral_dim=32, attn_dim=32, bank_capacity=max(64, row.clients)) if row.algorithm == "omnifm" else {}
    return algorithms.build(row.algorithm, task=classification(NUM_CLASSES),
                            backbone=make_backbone(row, smoke, formulation), optimizer=optax.sgd(0.01),
                            local_epochs=row.epochs, batch_size=row.batch, **hp)


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_flops(fn, *args) -> float:
    """FLOPs of the convolutions and matrix products ``fn(*args)`` runs, counted on its jaxpr
    (2 per multiply-add; ``scan`` bodies times their length, ``cond`` by its costliest branch).

    Why not XLA's cost analysis: XLA:GPU runs convolutions as cuDNN custom calls, which its
    cost analysis counts as zero FLOPs (an H200 run reported ResNet-18 at 0.1 TFLOP/s), and
    the lowered, backend-neutral analysis is not offered there. The jaxpr is the same on every
    backend; elementwise work (a few percent for these models) and padding are left out, as in
    XLA's count on CPU (the test checks FedAvgCNN's against a hand count)."""
    from jax.extend import core as jcore

    def taps(size_in: int, size_out: int, k: int, stride: int, pad_lo: int, ld: int, rd: int) -> int:
        """(output, kernel) position pairs of one spatial dimension that read a real input
        element (not padding, not a hole of the input's dilation), as XLA counts them."""
        p = np.arange(size_out)[:, None] * stride + np.arange(k)[None, :] * rd - pad_lo
        return int(((p >= 0) & (p <= (size_in - 1) * ld) & (p % ld == 0)).sum())

    def conv(e) -> float:
        lhs, rhs = (v.aval for v in e.invars[:2])
        out = e.outvars[0].aval
        dn, prm = e.params["dimension_numbers"], e.params
        n = len(dn.lhs_spec) - 2
        ld, rd = prm["lhs_dilation"] or (1,) * n, prm["rhs_dilation"] or (1,) * n
        valid = np.prod([taps(lhs.shape[dn.lhs_spec[2 + i]], out.shape[dn.out_spec[2 + i]],
                               rhs.shape[dn.rhs_spec[2 + i]], prm["window_strides"][i], prm["padding"][i][0],
                               ld[i], rd[i]) for i in range(n)])
        # per output batch element and feature: valid taps x the kernel's input features
        per_position = out.shape[dn.out_spec[0]] * out.shape[dn.out_spec[1]]
        return 2.0 * per_position * valid * rhs.shape[dn.rhs_spec[1]]

    def dot(e) -> float:
        (lc, _), _ = e.params["dimension_numbers"]
        lhs = e.invars[0].aval
        return 2.0 * np.prod(e.outvars[0].aval.shape) * np.prod([lhs.shape[d] for d in lc])

    def subjaxprs(value):
        if isinstance(value, jcore.ClosedJaxpr):
            yield value.jaxpr
        elif isinstance(value, jcore.Jaxpr):
            yield value
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from subjaxprs(v)

    def walk(jaxpr) -> float:
        total = 0.0
        for e in jaxpr.eqns:
            name = e.primitive.name
            if name == "conv_general_dilated":
                total += conv(e)
            elif name == "dot_general":
                total += dot(e)
            elif name == "cond":
                total += max(walk(b.jaxpr) for b in e.params["branches"])
            else:
                inner = sum(walk(j) for v in e.params.values() for j in subjaxprs(v))
                total += inner * (e.params["length"] if name == "scan" else 1)
        return total

    jaxpr = jax.make_jaxpr(fn)(*args).jaxpr
    try:  # drop what no output needs (e.g. the first layer's input gradient), as XLA does
        from jax._src.interpreters import partial_eval as pe
        jaxpr = pe.dce_jaxpr(jaxpr, [True] * len(jaxpr.outvars))[0]
    except (ImportError, AttributeError, TypeError):  # private API moved: count without DCE
        pass
    return float(walk(jaxpr))


def _round_bytes(compiled) -> int:
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:  # backends without memory analysis
        return -1


def _shared_loss(model, task):
    def loss_fn(p, xb, yb):
        out, _ = model.apply({"params": p}, task.scale_inputs(xb), None, train=True)
        return task.loss(out, yb).mean()
    return loss_fn


def shared_step_flops(backbone, task, tx, image_shape, batch_total: int) -> float:
    """Convolution and matrix-product FLOPs of one SGD step of ONE model on ``batch_total``
    images (:func:`matmul_flops`; shapes only: nothing is compiled or run)."""
    model = TokenModel(backbone=backbone, head=task.make_head())
    x = jax.ShapeDtypeStruct((batch_total,) + tuple(image_shape), jnp.uint8)
    y = jax.ShapeDtypeStruct((batch_total,), jnp.int32)
    params = jax.eval_shape(lambda key: model.init(key, jnp.zeros((1,) + tuple(image_shape)), train=False),
                            jax.random.key(0))["params"]
    opt = jax.eval_shape(tx.init, params)
    loss_fn = _shared_loss(model, task)

    def step(p, o, xb, yb):
        u, o = tx.update(jax.grad(loss_fn)(p, xb, yb), o, p)
        return optax.apply_updates(p, u), o
    return matmul_flops(step, params, opt, x, y)


def shared_model_round(backbone, task, tx, train: ClientArrays, steps: int, batch: int, *, smoke: bool = False):
    """ONE shared model runs ``steps`` SGD steps on batches of ``K * batch`` samples.

    Returns ``(run, flops)``: a no-argument callable and the FLOPs of all its steps. The
    images are the compiled program's arguments (closed over, 10,000 clients' images were
    embedded in it as a 3 GB constant).
    """
    model = TokenModel(backbone=backbone, head=task.make_head())
    k = train.n.shape[0]
    x_all = jnp.asarray(train.x)
    y_all = jnp.asarray(train.y)
    x_example = jnp.zeros((1,) + train.x.shape[1:])
    variables = jax.jit(lambda key: model.init(key, x_example, train=False),
                        compiler_options=federated.init_compiler_options())(jax.random.key(0))
    params = variables["params"]
    opt = tx.init(params)
    loss_fn = _shared_loss(model, task)

    def run(p, o, xs, ys):
        def step(carry, t):
            p, o = carry
            start = (t * k * batch) % max(1, xs.shape[0] - k * batch + 1)
            xb = jax.lax.dynamic_slice_in_dim(xs, start, k * batch)
            yb = jax.lax.dynamic_slice_in_dim(ys, start, k * batch)
            g = jax.lax.optimization_barrier(jax.grad(loss_fn)(p, xb, yb))
            u, o = tx.update(g, o, p)
            return (optax.apply_updates(p, u), o), None
        return jax.lax.scan(step, (p, o), jnp.arange(steps))[0]

    compiled = jax.jit(run).lower(params, opt, x_all, y_all).compile(compiler_options=compiler_options(smoke))
    flops = shared_step_flops(backbone, task, tx, train.x.shape[1:], k * batch) * steps
    return (lambda: compiled(params, opt, x_all, y_all)), flops


class _Cache:
    """Measurements shared by rows that do the same work (so each is compiled once)."""

    def __init__(self):
        self.shared: Dict[tuple, tuple] = {}
        self.per_client_seq: Dict[tuple, tuple] = {}


def compile_client_update(alg, state, train, smoke: bool = False):
    """The jitted single-client update, compiled for client 0's shapes."""
    return jax.jit(alg.client_update).lower(state.server, *_client(state, train, 0), jax.random.key(1)).compile(
        compiler_options=compiler_options(smoke))


def _client(state, train, i: int):
    return (jax.tree_util.tree_map(lambda a: a[i], state.clients),
            ClientData(train.x, train.y, train.offsets[i], train.n[i], capacity=int(np.max(np.asarray(train.n)))))


def sequential_per_client(update, state, train, timed: int) -> float:
    """Seconds per client of a Python loop over the compiled single-client ``update``."""
    keys = jax.random.split(jax.random.key(1), timed)
    one = lambda i: update(state.server, *_client(state, train, i), keys[i])
    jax.block_until_ready(one(0))  # warm-up
    t = time.perf_counter()
    for i in range(timed):
        out = one(i)
    jax.block_until_ready(out)
    return (time.perf_counter() - t) / timed


def bench_one(row: Row, *, smoke: bool, repeats: int, seq_clients: int,
              cache: Optional[_Cache] = None, decisions: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    cache = cache or _Cache()
    formulation = formulation_for(decisions, row.workload) if decisions else None
    alg = build_algorithm(row, smoke, formulation)
    fed = random_federation(row.clients, row.samples)
    train = jax.device_put(fed)
    if row.fused_rounds > 1:
        round_fn = federated.make_rounds(alg, fed, num_rounds=row.fused_rounds, client_chunk=row.chunk,
                                         donate=False)
    else:
        round_fn = federated.make_round(alg, fed, client_chunk=row.chunk, donate=False)
    seq_key = (row.workload, row.algorithm, row.dtype, row.samples, row.batch, row.epochs)
    shared_key = (row.workload, row.dtype, row.clients, row.samples, row.batch, row.epochs)
    timed = min(row.clients, seq_clients)
    need_seq = seq_key not in cache.per_client_seq or cache.per_client_seq[seq_key][1] < timed

    def compile_round(state):
        t = time.perf_counter()
        compiled = round_fn.lower(state, train).compile(compiler_options=compiler_options(smoke))
        return compiled, time.perf_counter() - t

    # Compile the three programs concurrently (XLA compiles without the GIL); time them
    # one after another below, never overlapping.
    with concurrent.futures.ThreadPoolExecutor(min(3, os.cpu_count() or 1)) as pool:
        shared_job = None
        if shared_key not in cache.shared:
            shared_job = pool.submit(shared_model_round, make_backbone(row, smoke, formulation),
                                     classification(NUM_CLASSES),
                                     optax.sgd(0.01), fed, row.local_steps, row.batch, smoke=smoke)
        state = federated.init(alg, jax.random.key(0), train)
        round_job = pool.submit(compile_round, state)
        seq_job = pool.submit(compile_client_update, alg, state, train, smoke) if need_seq else None
        compiled, compile_s = round_job.result()
        update = seq_job.result() if seq_job else None
        shared = shared_job.result() if shared_job else None

    jax.block_until_ready(compiled(state, train))  # warm-up (allocations, autotuning)
    engine_s = median_time(lambda: compiled(state, train), repeats) / row.fused_rounds
    peak = _round_bytes(compiled)
    if need_seq:
        cache.per_client_seq[seq_key] = (sequential_per_client(update, state, train, timed), timed)
    per_client, timed = cache.per_client_seq[seq_key]
    sequential_s = per_client * row.clients
    if shared is not None:
        run, flops = shared
        jax.block_until_ready(run())
        cache.shared[shared_key] = (median_time(run, repeats), flops)
    shared_s, flops = cache.shared[shared_key]

    kind = str(jax.devices()[0].device_kind)
    peak_tflops = bf16_peak_tflops(kind)
    tflops = flops / engine_s / 1e12
    rec = {
        "workload": row.workload, "algorithm": row.algorithm, "variant": row.variant, "clients": row.clients,
        "samples_per_client": row.samples, "batch_size": row.batch, "local_steps": row.local_steps,
        "client_chunk": row.chunk, "dtype": row.dtype, "fused_rounds": row.fused_rounds,
        "engine_s": engine_s, "compile_s": compile_s,
        "client_steps_per_s": row.clients * row.local_steps / engine_s,
        "sequential_s": sequential_s, "sequential_timed_clients": timed, "speedup": sequential_s / engine_s,
        "shared_s": shared_s, "engine_over_shared": engine_s / shared_s,
        "flops": flops, "tflops": tflops,
        "peak_fraction": tflops / peak_tflops if peak_tflops else None,
        "peak_bytes": peak, "device": kind, "backend": jax.default_backend(),
        "date": datetime.date.today().isoformat(),
        "formulation": formulation or "library defaults",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
    if row.workload == "resnet18" and row.clients == 20:
        rec["table1_run_min"] = table1_minutes(engine_s, row.local_steps)
    return rec


def _fmt(v, spec: str) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def to_markdown(records: List[Dict[str, Any]]) -> str:
    hetero = [r for r in records if r.get("workload") == "heterogeneous"]
    records = [r for r in records if r.get("workload") != "heterogeneous"]
    parts = ([_uniform_markdown(records)] if records else []) + ([hetero_markdown(hetero)] if hetero else [])
    return "\n\n".join(parts)


def _uniform_markdown(records: List[Dict[str, Any]]) -> str:
    head = ("| workload | algorithm | variant | clients | local steps | engine (s) | client-steps/s | "
            "sequential (s) | speedup | shared model (s) | engine/shared | TFLOP/s | of bf16 peak | "
            "round MiB | Table-1 run (min) |\n" + "|---" * 15 + "|")
    lines = [head]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['algorithm']} | {r.get('variant', '')} | {r['clients']} | "
                         f"failed: {r['error'][:80]} |" + " |" * 10)
            continue
        frac = r.get("peak_fraction")
        lines.append(
            f"| {r['workload']} | {r['algorithm']} | {_variant_cell(r)} | {r['clients']} | {r['local_steps']} | "
            f"{r['engine_s']:.4f} | {r['client_steps_per_s']:.0f} | {r['sequential_s']:.3f} | "
            f"{r['speedup']:.1f}x | {r['shared_s']:.4f} | {r['engine_over_shared']:.2f} | "
            f"{_fmt(r['tflops'], '.3f')} | {_fmt(None if frac is None else 100 * frac, '.1f')}"
            f"{'%' if frac is not None else ''} | {r['peak_bytes'] / 2**20:.0f} | "
            f"{_fmt(r.get('table1_run_min'), '.1f')} |")
    return "\n".join(lines + _footer(records, "Sequential times: the first clients timed, scaled to all."))


def _variant_cell(r: Dict[str, Any]) -> str:
    """The variant, plus the formulation when one was set (``--formulation``) and command buffers."""
    f = r.get("formulation")
    extra = [f"{k}={v}" for k, v in f.items()] if isinstance(f, dict) else []
    extra += ["cmdbuf"] if "command_buffer" in r.get("xla_flags", "") else []
    return r["variant"] + (f" ({', '.join(extra)})" if extra else "")


def _footer(records: List[Dict[str, Any]], note: str) -> List[str]:
    """The device and date line under a table (none if every record failed)."""
    ok = [r for r in records if "error" not in r]
    return [f"\nDevice: {ok[0]['device']} ({ok[0]['backend']}), {ok[0]['date']}. {note}"] if ok else []


# ----------------------------------------------------------------------------- heterogeneous

class HeteroRow(NamedTuple):
    federation: str        # "real4" | "dirichlet0.1" | "powerlaw10k"
    participation: float
    batch: int = 32


def hetero_plan(smoke: bool) -> List[HeteroRow]:
    from omnifm_jax.data.paths import default_real_data_dir

    base = "real4" if (default_real_data_dir() / "blood_pbc").is_dir() else "dirichlet0.1"
    if smoke:
        return [HeteroRow(base, 0.2), HeteroRow("powerlaw10k", 0.02, 8)]
    # every participant's upload is held until the server's weighted mean: at 10,000 FedAvgCNN
    # clients that is ~23 GB, more than a 24 GB CPU machine has next to the data; full
    # participation is therefore measured on accelerators only
    powerlaw = (0.02, 0.1) if jax.default_backend() == "cpu" else (0.1, 1.0)
    return [HeteroRow(base, 0.2), HeteroRow(base, 0.5), HeteroRow(base, 1.0)] + \
        [HeteroRow("powerlaw10k", p, 8) for p in powerlaw]


def powerlaw_sizes(clients: int, seed: int = 0) -> np.ndarray:
    """Client sizes with a power-law tail: ``4 * Pareto(1.2)``, at least 4, at most 2,000."""
    rng = np.random.default_rng(seed)
    return np.clip((4 * (1 + rng.pareto(1.2, clients))).astype(np.int64), 4, 2000)


def hetero_federation(name: str, smoke: bool):
    """``(train, test)`` ragged splits of the named heterogeneous federation."""
    from omnifm_jax.data import load_federation
    from omnifm_jax.data.partition import dirichlet_partition, split_train_test

    if name == "real4":
        fed = load_federation("real4", num_clients=20, seed=0, alpha=0.1)
        return fed.train, fed.test
    if name == "dirichlet0.1":  # real4's pool size and label count, random images
        labels = np.random.default_rng(0).integers(0, 17, 16782)
        parts = dirichlet_partition(labels, num_clients=20, alpha=0.1, rng=np.random.default_rng(0))
        tr, te = split_train_test(parts, seed=1)
        return (random_federation(20, [len(i) for i in tr], seed=1),
                random_federation(20, [len(i) for i in te], seed=2))
    sizes = powerlaw_sizes(10000)
    train = np.maximum(1, (sizes * 3) // 4)
    return random_federation(10000, train, seed=1), random_federation(10000, sizes - train, seed=2)


def plain_loop(params, train: ClientArrays, participants, batch: int, step) -> float:
    """Seconds for the participants' real batches (drop_last, one epoch, a fresh shuffle)
    through ONE jitted SGD step each, in a Python loop over host (numpy) batches: what a
    user writes by hand."""
    rng = np.random.default_rng(0)
    n_all, off_all = np.asarray(train.n), np.asarray(train.offsets)
    t = time.perf_counter()
    p = params
    for k in participants:
        order = off_all[k] + rng.permutation(n_all[k])
        p = params
        for j in range(n_all[k] // batch):
            idx = order[j * batch:(j + 1) * batch]
            p = step(p, train.x[idx], train.y[idx])
    jax.block_until_ready(p)
    return time.perf_counter() - t


def plain_eval(state, test: ClientArrays, batch: int, forward) -> float:
    """Seconds for every client's test images through a jitted forward pass, one host
    (numpy) batch of at most ``batch`` images of one client at a time, in a Python loop."""
    n_all, off_all = np.asarray(test.n), np.asarray(test.offsets)
    t = time.perf_counter()
    out = None
    for k in range(n_all.size):
        client = jax.tree_util.tree_map(lambda a: a[k], state.clients)
        for j in range(0, int(n_all[k]), batch):
            lo = int(off_all[k]) + j
            out = forward(state.server, client, test.x[lo:lo + min(batch, int(n_all[k]) - j)])
    jax.block_until_ready(out)
    return time.perf_counter() - t


def bench_heterogeneous(row: HeteroRow, *, smoke: bool, repeats: int) -> Dict[str, Any]:
    train_h, test_h = hetero_federation(row.federation, smoke)
    task = classification(17 if row.federation != "powerlaw10k" else NUM_CLASSES)
    alg = algorithms.build("fedavg", task=task, backbone=FedAvgCNN(), optimizer=optax.sgd(0.05),
                           local_epochs=1, batch_size=row.batch)
    train, test = jax.device_put(train_h), jax.device_put(test_h)
    state = federated.init(alg, jax.random.key(0), train)
    k = train_h.num_clients
    m = federated.num_participants(k, row.participation)
    t = time.perf_counter()
    round_fn = federated.make_round(alg, train_h, participation=row.participation, donate=False)
    compiled = round_fn.lower(state, train).compile()
    compile_s = time.perf_counter() - t
    chunk = round_fn.client_chunk
    # what "auto" picks on an accelerator for this federation and participant count
    accel_chunk = federated.choose_client_chunk(np.asarray(alg.local_steps(jnp.asarray(train_h.n))), m, m)

    model = TokenModel(backbone=FedAvgCNN(), head=task.make_head())

    @jax.jit
    def step(p, xb, yb):
        def loss(p):
            out, _ = model.apply({"params": p}, task.scale_inputs(xb), None, train=True)
            return task.loss(out, yb).mean()
        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - 0.05 * b, p, g)

    jax.block_until_ready(compiled(state, train))  # warm-up
    params0 = combine_params(state)
    step(params0, train_h.x[:row.batch], train_h.y[:row.batch])
    engine, plain, useful, executed = [], [], 0, {1: 0, accel_chunk: 0, None: 0}
    s = state
    for _ in range(repeats):
        t = time.perf_counter()
        new, rm = compiled(s, train)
        jax.block_until_ready(new)
        engine.append(time.perf_counter() - t)
        part, act = np.asarray(rm.participants), np.asarray(rm.active)
        steps = np.asarray(rm.client_metrics["local_steps"])
        useful += int(steps.sum())
        for c in executed:
            executed[c] += int(federated.executed_client_steps(jnp.asarray(steps), c))
        plain.append(plain_loop(combine_params(s), train_h, part[:act], row.batch, step))
        s = new
    evaluate = federated.make_evaluate(alg, task, test_h, batch_size=128)
    evaluate(state, test)
    eval_s = median_time(lambda: evaluate(state, test), repeats)
    forward = jax.jit(lambda server, client, x: alg.predict(server, client, task.scale_inputs(x)))
    plain_eval(state, test_h, 128, forward)  # compile every batch shape once
    plain_eval_s = statistics.median(plain_eval(state, test_h, 128, forward) for _ in range(repeats))

    sample_bytes = int(np.prod(train_h.x.shape[1:])) + int(np.dtype(train_h.y.dtype).itemsize)
    real = sample_bytes * int(train_h.n.sum() + test_h.n.sum())
    stored = sum(np.asarray(a).nbytes for split in (train_h, test_h) for a in split)
    padded = sample_bytes * k * (int(train_h.n.max()) + int(test_h.n.max()))
    engine_s, plain_s = statistics.median(engine), statistics.median(plain)
    kind = str(jax.devices()[0].device_kind)
    return {
        "workload": "heterogeneous", "algorithm": "fedavg", "federation": row.federation, "clients": k,
        "participation": row.participation, "participants": m, "batch_size": row.batch,
        "client_sizes": {"min": int(train_h.n.min()), "median": float(np.median(train_h.n)),
                         "max": int(train_h.n.max())},
        "client_chunk": chunk, "compile_s": compile_s, "rounds_timed": repeats,
        "engine_s": engine_s, "plain_loop_s": plain_s, "engine_over_plain": engine_s / plain_s,
        "useful_client_steps": useful, "executed_client_steps": executed[chunk if chunk in executed else 1],
        "useful_fraction": {("one by one" if c == 1 else "all at once" if c is None else f"sorted chunks of {c}"):
                            (useful / v if v else 1.0) for c, v in executed.items()},
        "accelerator_chunk": accel_chunk,
        "eval_s": eval_s, "plain_eval_s": plain_eval_s, "eval_over_plain": eval_s / plain_eval_s,
        "data_bytes": stored, "real_sample_bytes": real, "data_over_real": stored / real,
        "padded_layout_bytes": padded, "device": kind, "backend": jax.default_backend(),
        "date": datetime.date.today().isoformat(),
    }


def combine_params(state):
    from omnifm_jax.algorithms.labels import combine
    return combine(state.server.params, jax.tree_util.tree_map(lambda a: a[0], state.clients.personal))["params"]


def hetero_markdown(records: List[Dict[str, Any]]) -> str:
    lines = ["| federation | clients | participation | sizes (min/median/max) | chunk | engine (s) | "
             "plain loop (s) | engine/plain | useful/executed (engine; one by one; sorted chunks; all at once) | "
             "eval (s) | plain eval (s) | eval/plain | data / real bytes | padded layout / real |",
             "|---" * 14 + "|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r.get('federation', '?')} | failed: {r['error'][:80]} |" + " |" * 12)
            continue
        uf = r["useful_fraction"]
        chunked = next((v for key, v in uf.items() if key.startswith("sorted")), None)
        sz = r["client_sizes"]
        lines.append(
            f"| {r['federation']} | {r['clients']} | {r['participation']} | "
            f"{sz['min']}/{sz['median']:.0f}/{sz['max']} | "
            f"{r['client_chunk']} | {r['engine_s']:.3f} | {r['plain_loop_s']:.3f} | {r['engine_over_plain']:.2f} | "
            f"{r['useful_client_steps'] / max(r['executed_client_steps'], 1):.2f}; {uf['one by one']:.2f}; "
            f"{_fmt(chunked, '.2f')} (chunk {r['accelerator_chunk']}); {uf['all at once']:.2f} | "
            f"{r['eval_s']:.3f} | {r['plain_eval_s']:.3f} | {r['eval_over_plain']:.2f} | "
            f"{r['data_over_real']:.3f} | {r['padded_layout_bytes'] / r['real_sample_bytes']:.1f} |")
    timed = next((r["rounds_timed"] for r in records if "error" not in r), 0)
    return "\n".join(lines + _footer(records, f"Medians over {timed} rounds (different participants each round)."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a 2-core CPU")
    p.add_argument("--json", default=None, help="write records to this JSON file")
    p.add_argument("--md", default=None, help="write a markdown table to this file")
    p.add_argument("--workloads", default=",".join(GROUPS), help=f"comma-separated groups from {GROUPS}")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 with --smoke)")
    p.add_argument("--seq-clients", type=int, default=20, help="clients timed on the sequential path")
    p.add_argument("--only", default=None,
                   help="comma-separated substrings: run only the jobs whose label holds one, in the "
                        "order given; one ending in '$' must end the label "
                        "(e.g. 'powerlaw10k participation=0.1,resnet18/fedavg clients=20 float32$')")
    p.add_argument("--formulation", default=None, metavar="JSON",
                   help="measure in the formulation formulations.py picked: its JSON's decisions (conv, "
                        "norm_dtype, downsample per workload; cmdbuf via XLA_FLAGS when 'on' overall)")
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    decisions = json.loads(Path(args.formulation).read_text())["decisions"] if args.formulation else None
    if decisions:
        apply_cmdbuf(decisions)
    groups = [g for g in args.workloads.split(",") if g]
    rows = plan(args.smoke, [g for g in groups if g != "heterogeneous"])
    cache = _Cache()
    jobs = [(f"{row.workload}/{row.algorithm} clients={row.clients} {row.variant}",
             {"workload": row.workload, "algorithm": row.algorithm, "variant": row.variant, "clients": row.clients},
             functools.partial(bench_one, row, smoke=args.smoke, repeats=args.repeats, seq_clients=args.seq_clients,
                               cache=cache, decisions=decisions),
             lambda r: (f"engine {r['engine_s']:.4f}s  sequential {r['sequential_s']:.3f}s  "
                        f"shared {r['shared_s']:.4f}s  (compile {r['compile_s']:.1f}s)"))
            for row in rows]
    if "heterogeneous" in groups:
        jobs += [(f"heterogeneous/{h.federation} participation={h.participation}",
                  {"workload": "heterogeneous", "algorithm": "fedavg", "federation": h.federation,
                   "participation": h.participation},
                  functools.partial(bench_heterogeneous, h, smoke=args.smoke, repeats=max(args.repeats, 3)),
                  lambda r: (f"engine {r['engine_s']:.3f}s  plain loop {r['plain_loop_s']:.3f}s  "
                             f"eval {r['eval_s']:.3f}s vs {r['plain_eval_s']:.3f}s"))
                 for h in hetero_plan(args.smoke)]
    if args.only:
        jobs = select_jobs(jobs, args.only)
        if not jobs:
            p.error(f"--only {args.only!r} matches no job")
    return run_jobs(jobs, to_markdown, json_path=args.json, md_path=args.md)


def select_jobs(jobs, only: str):
    """The jobs whose label holds one of ``only``'s comma-separated substrings (one ending in
    ``$`` must end the label), in the order of the substrings: the first one's jobs run first."""
    picked = []
    for w in (w.strip() for w in only.split(",")):
        if w:
            hit = (lambda label: label.endswith(w[:-1])) if w.endswith("$") else (lambda label: w in label)
            picked += [j for j in jobs if hit(j[0]) and j not in picked]
    return picked


def run_jobs(jobs, to_md: Callable[[List[Dict[str, Any]]], str], *, json_path: Optional[str],
             md_path: Optional[str]) -> int:
    """Runs ``(label, ident, measure, summary)`` jobs in order: a job that raises (e.g. out of
    memory) is recorded as ``ident`` + its error and the next one runs. Writes the records to
    ``json_path`` after every job, prints and writes the markdown table; exit status 1 if any
    job failed."""
    records: List[Dict[str, Any]] = []
    for i, (label, ident, measure, summary) in enumerate(jobs):
        print(f"[{i + 1}/{len(jobs)}] {label} ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            rec = measure()
        except Exception as e:  # record it and go on with the next job
            rec = dict(ident, error=repr(e)[:500])
            print(f"  failed: {rec['error']}", file=sys.stderr)
        else:
            print(f"  {summary(rec)} [{time.perf_counter() - t:.0f}s]", file=sys.stderr)
        records.append(rec)
        if json_path:
            Path(json_path).write_text(json.dumps(records, indent=2))
    table = to_md(records)
    print(table)
    if md_path:
        Path(md_path).write_text(table + "\n")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
