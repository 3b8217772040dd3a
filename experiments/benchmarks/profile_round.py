"""Profile the compiled round: where its time goes, by kind of XLA op, as the client count grows.

    python -m experiments.benchmarks.profile_round [--smoke] [--workload cnn|resnet18]
        [--algorithm fedavg] [--clients 20,100,1000] [--dtype float32] [--json FILE] [--md FILE]
        [--trace-dir DIR]

For every client count it compiles the engine's round (the same work as
``round_speed``), runs it under ``jax.profiler.trace`` and attributes each profiled op
event to an instruction of the optimised HLO module. Instructions are put into kinds:
convolution forward / input-gradient / weight-gradient (cuDNN custom calls on GPU, plain
``convolution`` on CPU), matmul, convolution or matmul fusions, reductions,
gather/scatter/dynamic-slice, copy/transpose, elementwise fusions, other. For each kind
it reports milliseconds per round and the share of the profiled time; ``coverage`` is the
profiled op time over the measured round time (near 1 on GPU, where ops run one after
another on a stream; on CPU ops overlap on several threads and some run untraced, so
coverage there can be above or below 1). Comparing the kinds across
client counts shows which part grows faster than the work.

``--trace-dir`` keeps the raw traces (open them with TensorBoard's profile plugin or
Perfetto). ``--smoke`` runs tiny sizes on a CPU.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import functools
import re
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

import jax

from experiments.benchmarks import round_speed as rs
from omnifm_jax import federated

KINDS = ("conv forward", "conv input-gradient", "conv weight-gradient", "conv (other)", "matmul",
         "conv/matmul fusion", "reduction", "gather/scatter", "copy/transpose", "elementwise fusion", "other")
_CONTROL = {"while", "conditional", "call", "tuple", "get-tuple-element", "parameter", "constant", "bitcast"}
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_OPCODE = re.compile(r"(?:^|\s)([a-z][a-z0-9\-_]*)\(")
_COMPUTATION = re.compile(r"^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?\s*(?:->\s*.*)?\{\s*$")




def parse_hlo(text: str) -> Tuple[Dict[str, Dict[str, Any]], Dict[str, set]]:
    """``(instructions, computations)`` of an HLO module's text.

    ``instructions[name] = {"opcode", "target" (custom-call target or ""), "calls"
    (called computation or ""), "computation"}``; ``computations[name]`` = the set of
    opcodes inside it.
    """
    instructions: Dict[str, Dict[str, Any]] = {}
    computations: Dict[str, set] = collections.defaultdict(set)
    current = ""
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m is None:
            c = _COMPUTATION.match(line)
            if c is not None:
                current = c.group(1)
            continue
        name, rest = m.groups()
        op = _OPCODE.search(rest)
        if op is None:
            continue
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        calls = re.search(r"calls=%?([\w.\-]+)", rest)
        dims = re.search(r"dim_labels=([\w>\-]+)", rest)
        instructions[name] = {"opcode": op.group(1), "target": target.group(1) if target else "",
                              "calls": calls.group(1) if calls else "", "computation": current,
                              "dim_labels": dims.group(1) if dims else ""}
        computations[current].add(op.group(1))
    return instructions, dict(computations)


def kind_of(name: str, instructions: Dict[str, Dict[str, Any]], computations: Dict[str, set]) -> Optional[str]:
    """The kind (one of :data:`KINDS`) of HLO instruction ``name``; None for control flow
    (a ``while`` encloses the ops it runs, which are profiled themselves)."""
    ins = instructions.get(name)
    if ins is None:
        return "other"
    op, target = ins["opcode"], ins["target"].lower()
    inner = computations.get(ins["calls"], set())
    if op in _CONTROL:
        return None
    if op == "convolution" or "conv" in target or "convolution" in inner:
        if "backwardfilter" in target:
            return "conv weight-gradient"
        if "backwardinput" in target:
            return "conv input-gradient"
        if "forward" in target:
            return "conv forward"
        return "conv (other)" if op in ("convolution", "custom-call") else "conv/matmul fusion"
    if op == "dot" or "gemm" in target or "matmul" in target:
        return "matmul"
    if op == "fusion" and ("dot" in inner or "gemm" in ins["calls"] or "triton" in target):
        return "conv/matmul fusion"
    reductions = {"reduce", "reduce-window", "select-and-scatter"}
    if op in reductions or (op == "fusion" and inner & reductions):
        return "reduction"
    gathers = {"gather", "scatter", "dynamic-slice", "dynamic-update-slice"}
    if op in gathers or (op == "fusion" and inner & gathers):
        return "gather/scatter"
    if op in ("copy", "transpose") or "copy" in name or "transpose" in name:
        return "copy/transpose"
    if op == "fusion":
        return "elementwise fusion"
    return "other"


def op_events(profile, instructions: Dict[str, Any]) -> Iterable[Tuple[str, float]]:
    """``(hlo instruction name, seconds)`` of the op events in a profile.

    GPU: the device planes' "XLA Ops" line (else kernel events with an ``hlo_op`` stat).
    CPU: host events whose name is an instruction of the module.
    """
    device_planes = [p for p in profile.planes if p.name.startswith("/device:")]
    if device_planes:
        for plane in device_planes:
            lines = list(plane.lines)
            ops = [ln for ln in lines if ln.name == "XLA Ops"]
            for line in ops or lines:
                for ev in line.events:
                    name = ev.name
                    if not ops:
                        stats = dict(ev.stats)
                        if "hlo_op" not in stats:
                            continue
                        name = str(stats["hlo_op"])
                    yield name.lstrip("%").split(" ")[0], ev.duration_ns * 1e-9
        return
    for plane in profile.planes:
        for line in plane.lines:
            for ev in line.events:
                if ev.name in instructions:
                    yield ev.name, ev.duration_ns * 1e-9


def breakdown(events: Iterable[Tuple[str, float]], instructions, computations, rounds: int
              ) -> Tuple[Dict[str, float], List[Tuple[str, str, float]]]:
    """Seconds per round by kind, and the ten most expensive instructions."""
    per_kind: Dict[str, float] = collections.defaultdict(float)
    per_op: Dict[str, float] = collections.defaultdict(float)
    for name, sec in events:
        kind = kind_of(name, instructions, computations)
        if kind is None:
            continue
        per_kind[kind] += sec / rounds
        per_op[name] += sec / rounds
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    return dict(per_kind), [(n, kind_of(n, instructions, computations) or "", s) for n, s in top]


def profile_one(workload: str, algorithm: str, clients: int, *, smoke: bool, dtype: str, rounds: int,
                trace_dir: Optional[str]) -> Dict[str, Any]:
    samples, batch = (8, 4) if smoke else ((1000, 10) if workload == "resnet18" else (128, 32))
    row = rs.Row(workload, algorithm, clients, samples, batch, dtype=dtype)
    alg = rs.build_algorithm(row, smoke)
    fed = rs.random_federation(clients, samples)
    train = jax.device_put(fed)
    state = federated.init(alg, jax.random.key(0), train)
    compiled = federated.make_round(alg, fed, client_chunk=None, donate=False).lower(state, train).compile()
    jax.block_until_ready(compiled(state, train))
    round_s = rs.median_time(lambda: compiled(state, train), 3)
    instructions, computations = parse_hlo(compiled.as_text())
    out_dir = Path(trace_dir or tempfile.mkdtemp(prefix="omnifm_trace_")) / f"{workload}_{algorithm}_{clients}"
    with jax.profiler.trace(str(out_dir)):
        for _ in range(rounds):
            jax.block_until_ready(compiled(state, train))
    files = sorted(out_dir.glob("**/*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError(f"the profiler wrote no trace under {out_dir}")
    profile = jax.profiler.ProfileData.from_file(str(files[-1]))
    per_kind, top = breakdown(op_events(profile, instructions), instructions, computations, rounds)
    profiled = sum(per_kind.values())
    return {
        "workload": workload, "algorithm": algorithm, "clients": clients, "dtype": dtype,
        "local_steps": row.local_steps, "round_s": round_s, "profiled_s": profiled,
        "coverage": profiled / round_s,
        "kinds_ms": {k: 1e3 * per_kind.get(k, 0.0) for k in KINDS},
        "top_ops": [{"name": n, "kind": k, "ms": 1e3 * s} for n, k, s in top],
        "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
        "date": datetime.date.today().isoformat(), "trace": str(files[-1]) if trace_dir else None,
    }


def to_markdown(records: List[Dict[str, Any]]) -> str:
    ok = [r for r in records if "error" not in r]
    if not ok:
        return "no profile succeeded"
    kinds = [k for k in KINDS if any(r["kinds_ms"][k] > 0 for r in ok)]
    head = ("| clients | round (ms) | coverage | " + " | ".join(kinds) + " |\n"
            + "|---" * (3 + len(kinds)) + "|")
    lines = [f"{ok[0]['workload']} / {ok[0]['algorithm']} ({ok[0]['dtype']}), "
             f"{ok[0]['local_steps']} local steps: ms per round by kind of op (share of profiled time)\n", head]
    for r in ok:
        total = max(r["profiled_s"] * 1e3, 1e-12)
        cells = [f"{r['kinds_ms'][k]:.2f} ({100 * r['kinds_ms'][k] / total:.0f}%)" for k in kinds]
        lines.append(f"| {r['clients']} | {1e3 * r['round_s']:.2f} | {r['coverage']:.2f} | " + " | ".join(cells) + " |")
    last = ok[-1]
    lines.append(f"\nMost expensive ops at {last['clients']} clients:\n\n| op | kind | ms |\n|---|---|---|")
    lines += [f"| {o['name']} | {o['kind']} | {o['ms']:.3f} |" for o in last["top_ops"]]
    lines.append(f"\nDevice: {last['device']} ({last['backend']}), {last['date']}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes for a CPU")
    p.add_argument("--workload", default="cnn", choices=("cnn", "resnet18"))
    p.add_argument("--algorithm", default="fedavg")
    p.add_argument("--clients", default=None, help="comma-separated client counts")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=3, help="rounds profiled per client count")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None)
    p.add_argument("--trace-dir", default=None, help="keep the raw traces here")
    args = p.parse_args(argv)
    default = "2,4" if args.smoke else ("20,100" if args.workload == "resnet18" else "20,100,1000")
    counts = [int(c) for c in (args.clients or default).split(",")]
    jobs = [(f"profile {args.workload}/{args.algorithm} clients={k}",
             {"workload": args.workload, "algorithm": args.algorithm, "clients": k},
             functools.partial(profile_one, args.workload, args.algorithm, k, smoke=args.smoke, dtype=args.dtype,
                               rounds=args.rounds, trace_dir=args.trace_dir),
             lambda r: f"round {1e3 * r['round_s']:.1f} ms, coverage {r['coverage']:.2f}")
            for k in counts]
    return rs.run_jobs(jobs, to_markdown, json_path=args.json, md_path=args.md)


if __name__ == "__main__":
    sys.exit(main())
