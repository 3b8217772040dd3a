"""Round speed: the engine's vmapped round vs its sequential per-client path vs one shared
model doing the same local work on the concatenated batch.

    python -m experiments.benchmarks.round_speed [--smoke] [--json FILE] [--md FILE]
                                                [--workloads cnn,resnet18,omnifm] [--repeats 3]

For every workload it writes a record with:
  workload, algorithm, clients, local_steps, batch_size, engine_s (median round time,
  compile excluded), sequential_s (a Python loop over the jitted single-client update,
  measured on ``min(clients, --seq-clients)`` clients and scaled linearly; the record says
  how many were timed), speedup (sequential_s / engine_s), shared_s (the same number of
  SGD steps by ONE model on the K*B batch: the floor a vmapped round can approach),
  engine_over_shared, flops (XLA cost analysis of one shared-model step x local steps),
  tflops (flops / engine_s), peak_bytes (device peak where the backend reports it, else
  XLA's memory analysis of the compiled round), device, date.

``--smoke`` runs tiny sizes that finish on a 2-core CPU in about a minute; absolute CPU
times say nothing about a GPU, only the ratios measured in one run are meaningful there.
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import jax
import jax.numpy as jnp
import numpy as np
import optax

from omnifm_jax import algorithms, federated
from omnifm_jax.algorithms.base import ClientData, default_unroll, normalize_images
from omnifm_jax.data.federation import ClientArrays
from omnifm_jax.models import FedAvgCNN, ResNet18, TokenModel
from omnifm_jax.tasks import classification

NUM_CLASSES = 10


def random_federation(clients: int, samples: int, image: int, seed: int = 0) -> ClientArrays:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (clients, samples, image, image, 3), dtype=np.uint8)
    y = rng.integers(0, NUM_CLASSES, (clients, samples), dtype=np.int32)
    n = np.full((clients,), samples, np.int32)
    return ClientArrays(x=x, y=y, n=n, modality=np.zeros((clients, samples), np.int32))


def make_backbone(workload: str, smoke: bool):
    if workload == "resnet18":
        return ResNet18(stem="cifar", norm="group", width=8 if smoke else 64)
    return FedAvgCNN()


def _time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def shared_model_round(backbone, task, tx, train: ClientArrays, steps: int, batch: int):
    """ONE shared model runs ``steps`` SGD steps on batches of ``K * batch`` samples."""
    model = TokenModel(backbone=backbone, head=task.make_head())
    k = train.x.shape[0]
    x_all = jnp.asarray(train.x).reshape((-1,) + train.x.shape[2:])
    y_all = jnp.asarray(train.y).reshape(-1)
    variables = model.init(jax.random.key(0), jnp.zeros((1,) + train.x.shape[2:]), train=False)
    params = variables["params"]
    opt = tx.init(params)

    def loss_fn(p, xb, yb):
        out, _ = model.apply({"params": p}, normalize_images(xb), None, train=True)
        return task.loss(out, yb).mean()

    def step(carry, t):
        p, o = carry
        start = (t * k * batch) % max(1, x_all.shape[0] - k * batch + 1)
        xb = jax.lax.dynamic_slice_in_dim(x_all, start, k * batch)
        yb = jax.lax.dynamic_slice_in_dim(y_all, start, k * batch)
        g = jax.lax.optimization_barrier(jax.grad(loss_fn)(p, xb, yb))
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o), None

    def run(p, o):
        # Same unroll policy as the engine's local loop, so both pay the same loop overhead.
        return jax.lax.scan(step, (p, o), jnp.arange(steps), unroll=default_unroll(steps))[0]

    compiled = jax.jit(run).lower(params, opt).compile()
    one_step = jax.jit(lambda p, o: step((p, o), 0)[0]).lower(params, opt).compile()
    flops = _flops(one_step) * steps
    return (lambda: compiled(params, opt)), flops


def _flops(compiled) -> float:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        return float(cost.get("flops", float("nan")))
    except Exception:  # backends without cost analysis
        return float("nan")


def _peak_bytes(compiled) -> int:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return int(stats["peak_bytes_in_use"])
    try:
        m = compiled.memory_analysis()
        return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)
    except Exception:
        return -1


def bench_one(workload: str, algorithm: str, clients: int, samples: int, batch: int, epochs: int,
              *, smoke: bool, repeats: int, seq_clients: int, chunk: int | None) -> Dict[str, Any]:
    task = classification(NUM_CLASSES)
    tx = optax.sgd(0.01)
    backbone = make_backbone(workload, smoke)
    hp = dict(spectral_dim=32, attn_dim=32, bank_capacity=max(64, clients)) if algorithm == "omnifm" else {}
    alg = algorithms.build(algorithm, task=task, backbone=backbone, optimizer=tx, local_epochs=epochs,
                           batch_size=batch, **hp)
    fed = random_federation(clients, samples, 28)
    train = jax.device_put(fed)
    state = federated.init(alg, jax.random.key(0), train)
    round_fn = federated.make_round(alg, num_clients=clients, participation=1.0, client_chunk=chunk,
                                    donate=False)
    compiled = round_fn.lower(state, train).compile()
    steps = epochs * -(-samples // batch)
    engine_s = _time(lambda: compiled(state, train), repeats)
    peak = _peak_bytes(compiled)

    # Sequential reference: the same single-client update, one client after another.
    update = jax.jit(alg.client_update)
    timed = min(clients, seq_clients)
    keys = jax.random.split(jax.random.key(1), timed)
    one = lambda i: update(state.server, jax.tree_util.tree_map(lambda a: a[i], state.clients),
                           ClientData(train.x[i], train.y[i], train.n[i]), keys[i])
    jax.block_until_ready(one(0))  # compile
    t = time.perf_counter()
    for i in range(timed):
        out = one(i)
    jax.block_until_ready(out)
    sequential_s = (time.perf_counter() - t) * clients / timed

    shared_run, flops = shared_model_round(make_backbone(workload, smoke), task, tx, fed, steps, batch)
    jax.block_until_ready(shared_run())
    shared_s = _time(shared_run, repeats)
    return {
        "workload": workload, "algorithm": algorithm, "clients": clients, "samples_per_client": samples,
        "batch_size": batch, "local_steps": steps, "client_chunk": chunk,
        "engine_s": engine_s, "sequential_s": sequential_s, "sequential_timed_clients": timed,
        "speedup": sequential_s / engine_s, "shared_s": shared_s, "engine_over_shared": engine_s / shared_s,
        "flops": flops, "tflops": flops / engine_s / 1e12, "peak_bytes": peak,
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "date": datetime.date.today().isoformat(),
    }


def plan(smoke: bool, workloads: List[str]):
    """(workload, algorithm, clients, samples, batch, epochs, chunk) tuples."""
    rows = []
    if smoke:
        if "cnn" in workloads:
            rows += [("cnn", "fedavg", 4, 32, 8, 1, None), ("cnn", "fedavg", 4, 16, 8, 1, 2)]
        if "omnifm" in workloads:
            rows += [("cnn", "omnifm", 4, 32, 8, 1, None)]
        if "resnet18" in workloads:
            rows += [("resnet18", "fedavg", 2, 8, 8, 1, None)]
        return rows
    if "cnn" in workloads:
        rows += [("cnn", "fedavg", k, 128, 32, 1, c) for k, c in
                 ((20, None), (100, None), (1000, None), (10000, 2000))]
    if "omnifm" in workloads:
        rows += [("cnn", "omnifm", k, 128, 32, 1, None) for k in (20, 1000)]
    if "resnet18" in workloads:
        # Table 1's local work is 5 epochs of ~4.1k images at batch 10 (~2,050 steps); we time
        # 100 steps (1,000 samples, 1 epoch) and report per-step figures to extrapolate.
        rows += [("resnet18", "fedavg", k, 1000, 10, 1, None) for k in (20, 100)]
        rows += [("resnet18", "omnifm", 20, 1000, 10, 1, None)]
    return rows


def to_markdown(records: List[Dict[str, Any]]) -> str:
    head = ("| workload | algorithm | clients | local steps | engine (s) | sequential (s) | speedup | "
            "shared model (s) | engine/shared | TFLOP/s | peak MiB |\n|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in records:
        lines.append(f"| {r['workload']} | {r['algorithm']} | {r['clients']} | {r['local_steps']} | "
                     f"{r['engine_s']:.4f} | {r['sequential_s']:.3f} | {r['speedup']:.1f}x | {r['shared_s']:.4f} | "
                     f"{r['engine_over_shared']:.2f} | {r['tflops']:.3f} | {r['peak_bytes'] / 2**20:.0f} |")
    if records:
        lines.append(f"\nDevice: {records[0]['device']} ({records[0]['backend']}), {records[0]['date']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a 2-core CPU")
    p.add_argument("--json", default=None, help="write records to this JSON file")
    p.add_argument("--md", default=None, help="write a markdown table to this file")
    p.add_argument("--workloads", default="cnn,resnet18,omnifm")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seq-clients", type=int, default=20, help="clients timed on the sequential path")
    args = p.parse_args(argv)
    records = []
    for row in plan(args.smoke, args.workloads.split(",")):
        workload, algorithm, clients, samples, batch, epochs, chunk = row
        print(f"running {workload}/{algorithm} clients={clients} chunk={chunk} ...", file=sys.stderr, flush=True)
        try:
            rec = bench_one(workload, algorithm, clients, samples, batch, epochs, smoke=args.smoke,
                            repeats=args.repeats, seq_clients=args.seq_clients, chunk=chunk)
        except Exception as e:  # report (e.g. out of memory) and go on with the next workload
            rec = {"workload": workload, "algorithm": algorithm, "clients": clients, "error": repr(e)[:500]}
            print(f"  failed: {rec['error']}", file=sys.stderr)
        else:
            print(f"  engine {rec['engine_s']:.4f}s  sequential {rec['sequential_s']:.3f}s  "
                  f"shared {rec['shared_s']:.4f}s", file=sys.stderr)
        records.append(rec)
    ok = [r for r in records if "error" not in r]
    table = to_markdown(ok)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=2))
    if args.md:
        Path(args.md).write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
