"""Formulations of the per-client training step: which one should the engine use on an accelerator?

    python -m experiments.benchmarks.formulations [--smoke] [--json FILE] [--md FILE]
        [--workloads resnet18,cnn] [--repeats 5] [--rows NAME,...] [--no-child]

Under the client ``vmap`` every client has its own weights, so the weight gradient of a
convolution is a convolution grouped over clients. Taken as JAX derives it (``conv="xla"``,
the accelerator path before per_client) it is FEATURE-grouped, which XLA:GPU runs as slow cuDNN forward
convolutions; ``conv="per_client"`` gives the backward pass a vmap rule that makes it a
BATCH-grouped convolution (cuDNN backward-filter on GPU). This script measures that and the
other candidate changes of the step, one FedAvg round each, on one device:

  resnet18  ResNet-18 (cifar stem, GroupNorm, width 64), 20 clients, batch 10, 20 local steps
            (200 random 28x28x3 images per client);
  cnn       FedAvgCNN, 1,000 clients, batch 32, 4 local steps (128 images per client).

Rows of each workload (``ROWS``; ``name``: what differs from the plain-XLA engine):
  floor_f32, floor_bf16     ONE shared model doing the same SGD steps on the K*B batch
                            (``round_speed.shared_model_round``): what a vmapped round can approach;
  xla                       the plain-XLA engine: conv="xla", optimization barrier, float32;
  per_client                conv="per_client" (barrier, float32);
  per_client_nobarrier      per_client without the optimization barrier (grad_barrier=False);
  xla_nobarrier             the plain-XLA engine without the barrier;
  bf16_xla                  the plain-XLA engine in bfloat16 (norm output back in float32): the
                            reference of the bf16 rows' parameter difference;
  bf16_per_client_norm32    per_client, bfloat16, norm_dtype="float32" (before the norm fix;
                            ResNet-18 only: FedAvgCNN has no norm);
  bf16_per_client           per_client, bfloat16, norm_dtype="compute" (the norm fix);
  slice                     ResNet-18 only: per_client with downsample="slice" (the 1x1 stride-2
                            shortcut as x[:, ::2, ::2] then a 1x1 stride-1 conv);
  no_norm                   ResNet-18 only: per_client with norm="none" (an upper bound: another
                            model, so no parameter difference);
  patches, bf16_patches     conv="patches" (every convolution as patches times a matrix: batched
                            matrix products under the client vmap, no grouped convolution), f32
                            and bfloat16;
  per_client_cmdbuf         per_client (f32) rerun in a CHILD process whose XLA_FLAGS add
                            ``CMDBUF_FLAG`` (command buffers / CUDA graphs for fusions, library
                            calls, WHILE and CONDITIONAL; ignored on CPU).

Every round row is built as ``personalized_sgd(name="fedavg", model=TokenModel(backbone, head),
task=classification(10), optimizer=optax.sgd(0.01), personal_patterns=(), local_epochs=1,
batch_size=B, grad_barrier=...)`` and compiled as ``federated.make_round(alg, fed,
client_chunk=None, donate=False)``. The rows of a workload are compiled concurrently in a
thread pool (XLA compiles without the GIL), then timed one after another (round-robin over the
rows, ``--repeats`` times; the median counts), never overlapping; the child compiles while the
parent does and is timed after the parent's rows.

Each record:
  ms_per_step      median round time / local steps;
  over_floor       ms_per_step / the floor of the same dtype;
  tflops           FLOPs of the shared-model step's convolutions and matrix products
                   (``round_speed.matmul_flops``, counted on the jaxpr) x steps,
                   over the row's round time;
  convs            convolutions of the COMPILED round's HLO (``hlo_counts``): by role
                   (forward / input_grad / weight_grad: cuDNN backward-input and
                   backward-filter custom calls by their target, ``__cudnn$convBackwardInput`` /
                   ``__cudnn$convBackwardFilter``; anything run as a forward convolution, a plain
                   ``convolution`` (CPU) or ``__cudnn$convForward`` (GPU), by its geometry: a
                   weight gradient's output (the kernel) is spatially smaller than its window
                   (the activation gradient); so on CPU an input gradient counts as forward),
                   by grouping (feature_grouped: feature_group_count > 1, batch_grouped:
                   batch_group_count > 1, ungrouped), the per-client weight gradients as
                   ``weight_grad_feature_grouped`` (a feature-grouped FORWARD convolution: the
                   slow form) and ``weight_grad_batch_grouped`` (batch_group_count, or a cuDNN
                   backward-filter with groups: XLA:GPU's form of a batch-grouped one), and the
                   cuDNN targets (``cudnn_forward`` / ``cudnn_backward_input`` /
                   ``cudnn_backward_filter``; GPU only); ``emitted_convs``: the same counts of
                   the program JAX emitted (before XLA's passes). XLA:CPU rewrites every
                   batch-grouped convolution into an ungrouped one (an extra spatial dimension
                   with lhs dilation), so on CPU the batch groups show in ``emitted_convs`` only;
  transpose, copy  counts of those instructions in the compiled HLO (fused ones included);
  peak_bytes       XLA's memory analysis of the compiled round (arguments + outputs + temps);
  max_param_diff   max |difference| of the server parameters after one round against the plain-XLA
                   engine of the same dtype (``ref``: xla or bf16_xla; same initial state,
                   same keys); null for no_norm and the floors;
  table1_run_min   ResNet-18 rows: minutes of one Table-1 run (100 rounds x 2,050 steps)
                   extrapolated from ms_per_step (``round_speed.table1_minutes``).
The JSON holds ``meta`` (device kind, backend, jax version, date, sizes), ``records``,
``rules`` and ``decisions``; it is rewritten after each workload.

Decision rules (``decide``; each per workload, "overall" when every workload that measured
it agrees, else "mixed"; "faster by >5%" means t_old / t_new > 1.05):
  agree        parameters after one round within max(1e-4, 2 x the difference between xla
               and xla_nobarrier) of the reference's (f32). Those two rows are the same math
               compiled with other fusions, so their difference is the device's own rounding;
               on the H200 it was 3.9e-4 for ResNet-18 (20 SGD steps), so a fixed 1e-4 (the
               first version of this rule) rejected every reformulation there;
  conv         the fastest of "per_client" and "patches" among those faster than xla by >5%
               whose parameters agree with xla's; else "xla";
  barrier      for the picked conv path (per_client's pair when patches is picked): drop the
               barrier ("off") if the row without it is not slower by >5% (t_without <=
               1.05 t_with) and its parameters agree; else "on";
  norm_dtype   (ResNet-18) "compute" (the norm fix) if bf16_per_client is faster than or equal
               to bf16_per_client_norm32 (equal: within 2% timing noise); else "float32";
  downsample   (ResNet-18) "slice" if the slice row is faster than per_client and its
               parameters agree with xla's; else "conv";
  cmdbuf       "on" (add CMDBUF_FLAG to XLA_FLAGS) if the child's per_client round is faster
               than the in-process one by >5%; else "off".
A rule whose rows are missing or failed picks "n/a".

``--smoke`` runs every row at tiny size on a CPU (ResNet width 4, only the stem and one
stride-2 block with its downsample shortcut, 2 clients, batch 4, 2 steps; CNN 4 clients, batch
8, 2 steps; see ``compiler_options``) and prints the full table: a check that every path runs.
CPU times say nothing about a GPU, and neither do the CPU picks. Default outputs:
``experiments/benchmarks/results/formulations_<backend>[_smoke].{json,md}``. The parent and the
child share the device, so both run with ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` (unless set).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import jax
import numpy as np
import optax

from experiments.benchmarks import round_speed as rs
from experiments.benchmarks.profile_round import _INSTR, _OPCODE  # parse_hlo's instruction syntax
from omnifm_jax import federated
from omnifm_jax.algorithms.sgd import personalized_sgd
from omnifm_jax.models import FedAvgCNN, ResNet18, TokenModel
from omnifm_jax.tasks import classification

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "experiments" / "benchmarks" / "results"
WORKLOADS = ("resnet18", "cnn")
# Command buffers (CUDA graphs) for XLA:GPU's default set (FUSION ... DYNAMIC_SLICE_FUSION) plus
# the loops' WHILE and CONDITIONAL, so a whole local-step loop can be one graph. Names as in
# XLA's debug_options_flags.cc (CommandBufferCmdType); XLA:CPU parses and ignores it.
CMDBUF_FLAG = ("--xla_gpu_enable_command_buffer="
               "FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,DYNAMIC_SLICE_FUSION,WHILE,CONDITIONAL")
CONV_CANDIDATES = ("per_client", "patches")  # the conv rule's candidates against xla
SPEEDUP = 0.05      # "faster by >5%"
NOISE = 0.02        # "equal" for the norm rule: within 2%
AGREE_F32 = 1e-4    # parameters agree after one round (float32), unless the device's rounding is larger:
NOISE_FACTOR = 2.0  # ... then within twice the difference the SAME math shows under another fusion
RULES = [
    "agree: parameters within max(1e-4, 2 x the difference between xla and xla_nobarrier) after one round "
    "(f32); xla_nobarrier is the same math under another fusion, so its difference is the device's rounding",
    "conv: the fastest of per_client and patches among those faster than xla by >5% whose parameters agree "
    "with xla's; else xla",
    "barrier: for the picked conv path (per_client's pair when patches is picked), off if the row without the "
    "barrier is not slower by >5% and its parameters agree; else on",
    "norm_dtype (ResNet-18): compute (the norm fix) if bf16 with it is faster or equal (within 2%) to "
    "bf16 with norm_dtype=float32; else float32",
    "downsample (ResNet-18): slice if the slice row is faster than per_client and its parameters agree "
    "with xla's; else conv",
    "cmdbuf: on if per_client in a child with command buffers is faster than per_client by >5%; else off",
    "overall: a workload's pick where every workload that measured the rule agrees; else mixed",
]


class Workload(NamedTuple):
    name: str
    clients: int
    samples: int     # per client
    batch: int
    width: int = 64                       # ResNet-18 only
    stages: tuple = (2, 2, 2, 2)          # ResNet-18 only: blocks per stage

    @property
    def local_steps(self) -> int:
        return self.samples // self.batch


def workload(name: str, smoke: bool) -> Workload:
    if name == "resnet18":
        # smoke: the stem and ONE stride-2 block with the downsample shortcut (stages (0, 1)):
        # every formulation's code path at a fraction of the compile time
        return (Workload("resnet18", 2, 8, 4, width=4, stages=(0, 1)) if smoke
                else Workload("resnet18", 20, 200, 10))
    if name == "cnn":
        return Workload("cnn", 4, 16, 8) if smoke else Workload("cnn", 1000, 128, 32)
    raise SystemExit(f"unknown workload {name!r}; choose from {list(WORKLOADS)}")


class Variant(NamedTuple):
    """One row: a floor, or a round of the engine in one formulation."""
    name: str
    label: str
    kind: str = "round"            # "floor" | "round"
    dtype: str = "float32"
    conv: str = "per_client"
    barrier: bool = True
    norm_dtype: str = "compute"    # ResNet-18 only
    downsample: str = "conv"       # ResNet-18 only
    norm: str = "group"            # ResNet-18 only
    child: bool = False            # run in a child process with CMDBUF_FLAG
    ref: Optional[str] = "xla"     # the row its parameters are compared with
    resnet_only: bool = False


ROWS = (
    Variant("floor_f32", "floor: one shared model, f32", kind="floor", ref=None),
    Variant("floor_bf16", "floor: one shared model, bf16", kind="floor", dtype="bfloat16", ref=None),
    Variant("xla", "the plain-XLA engine (xla conv, barrier, f32)", conv="xla", norm_dtype="float32"),
    Variant("per_client", "per-client conv (barrier, f32)"),
    Variant("per_client_nobarrier", "per-client conv, no barrier", barrier=False),
    Variant("xla_nobarrier", "the plain-XLA engine, no barrier", conv="xla", barrier=False, norm_dtype="float32"),
    Variant("bf16_xla", "the plain-XLA engine, bf16 (norm in f32)", conv="xla", dtype="bfloat16", norm_dtype="float32",
            ref="bf16_xla"),
    Variant("bf16_per_client_norm32", "per-client conv, bf16, norm in f32 (before the fix)", dtype="bfloat16",
            norm_dtype="float32", ref="bf16_xla", resnet_only=True),
    Variant("bf16_per_client", "per-client conv, bf16, norm in bf16 (the fix)", dtype="bfloat16", ref="bf16_xla"),
    Variant("slice", "per-client conv, slice downsample", downsample="slice", resnet_only=True),
    Variant("no_norm", "per-client conv, no norm (upper bound)", norm="none", ref=None, resnet_only=True),
    Variant("per_client_cmdbuf", "per-client conv + command buffers (child)", child=True),
    Variant("patches", "convolutions as patches x matrix (barrier, f32)", conv="patches"),
    Variant("bf16_patches", "convolutions as patches x matrix, bf16", conv="patches", dtype="bfloat16",
            ref="bf16_xla"),
)
ROW_BY_NAME = {v.name: v for v in ROWS}


def plan(name: str) -> List[Variant]:
    return [v for v in ROWS if name == "resnet18" or not v.resnet_only]


# ----------------------------------------------------------------------------- models

def make_backbone(w: Workload, v: Variant, *, floor: bool = False):
    if w.name == "resnet18":
        if floor:  # the library's defaults: conv="auto", norm_dtype="compute"
            return ResNet18(stem="cifar", norm="group", width=w.width, stage_sizes=w.stages, dtype=v.dtype)
        return ResNet18(stem="cifar", norm=v.norm, width=w.width, stage_sizes=w.stages, dtype=v.dtype, conv=v.conv,
                        downsample=v.downsample, norm_dtype=v.norm_dtype)
    return FedAvgCNN(dtype=v.dtype) if floor else FedAvgCNN(conv=v.conv, dtype=v.dtype)


def make_algorithm(w: Workload, v: Variant):
    task = classification(rs.NUM_CLASSES)
    model = TokenModel(backbone=make_backbone(w, v), head=task.make_head())
    return personalized_sgd(name="fedavg", model=model, task=task, optimizer=optax.sgd(0.01), personal_patterns=(),
                            local_epochs=1, batch_size=w.batch, grad_barrier=v.barrier)


# ----------------------------------------------------------------------------- HLO counts

_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")
CONV_KEYS = ("total", "forward", "input_grad", "weight_grad", "feature_grouped", "batch_grouped", "ungrouped",
             "weight_grad_feature_grouped", "weight_grad_batch_grouped", "cudnn_forward", "cudnn_backward_input",
             "cudnn_backward_filter")


def _geometry_role(rest: str) -> str:
    """A convolution run as a forward one (plain ``convolution``, cuDNN forward): a weight
    gradient's output (the kernel) is spatially smaller than its window (the activation
    gradient); a forward or input-gradient convolution's output is not."""
    shape = _SHAPE.search(rest)
    labels = re.search(r"dim_labels=\w+_\w+->(\w+)", rest)
    window = re.search(r"window=\{[^}]*size=([0-9x]+)", rest)
    if not (shape and labels and window):
        return "forward"
    dims = [int(d) for d in shape.group(1).split(",") if d]
    out = labels.group(1)
    if len(dims) != len(out):
        return "forward"
    spatial = [dims[i] for i, ch in enumerate(out) if ch.isdigit()]
    win = [int(s) for s in window.group(1).split("x")]
    return "weight_grad" if math.prod(spatial) < math.prod(win) else "forward"


def hlo_counts(text: str) -> Dict[str, Any]:
    """Convolutions and transpose / copy instructions of an HLO module's text (every
    computation, fused ones included).

    ``convs``: ``total``; by role ``forward`` / ``input_grad`` / ``weight_grad`` (cuDNN
    backward-input / backward-filter custom calls by their target; anything run as a forward
    convolution by its geometry, :func:`_geometry_role`, so on CPU an input gradient counts as
    forward); by the instruction's grouping ``feature_grouped`` / ``batch_grouped`` /
    ``ungrouped``; the per-client weight gradients ``weight_grad_feature_grouped`` (run as a
    feature-grouped FORWARD convolution: the slow form) and ``weight_grad_batch_grouped`` (a
    ``batch_group_count`` convolution, or a cuDNN backward-filter with feature groups, which is
    how XLA:GPU runs a batch-grouped one); ``cudnn_forward`` / ``cudnn_backward_input`` /
    ``cudnn_backward_filter``: custom-call targets ``__cudnn$conv...`` (GPU only).
    """
    convs = dict.fromkeys(CONV_KEYS, 0)
    ops = {"transpose": 0, "copy": 0}
    for line in text.splitlines():
        m = _INSTR.match(line)
        if m is None:
            continue
        rest = m.group(2)
        op = _OPCODE.search(rest)
        if op is None:
            continue
        opcode = op.group(1)
        if opcode in ops:
            ops[opcode] += 1
            continue
        target = re.search(r'custom_call_target="([^"]+)"', rest)
        target = target.group(1).lower() if target else ""
        if not (opcode == "convolution" or (opcode == "custom-call" and "conv" in target)):
            continue
        fg = re.search(r"feature_group_count=(\d+)", rest)
        bg = re.search(r"batch_group_count=(\d+)", rest)
        grouping = ("feature_grouped" if fg and int(fg.group(1)) > 1 else
                    "batch_grouped" if bg and int(bg.group(1)) > 1 else "ungrouped")
        if "backwardfilter" in target:
            role, convs["cudnn_backward_filter"] = "weight_grad", convs["cudnn_backward_filter"] + 1
            if grouping != "ungrouped":
                convs["weight_grad_batch_grouped"] += 1
        elif "backwardinput" in target:
            role, convs["cudnn_backward_input"] = "input_grad", convs["cudnn_backward_input"] + 1
        else:
            role = _geometry_role(rest)
            if "forward" in target:
                convs["cudnn_forward"] += 1
            if role == "weight_grad" and grouping != "ungrouped":
                convs[f"weight_grad_{grouping}"] += 1
        convs["total"] += 1
        convs[role] += 1
        convs[grouping] += 1
    return {"convs": convs, **ops}


# ----------------------------------------------------------------------------- one row

def _host_params(state) -> List[np.ndarray]:
    return [np.asarray(a, np.float32) for a in jax.tree_util.tree_leaves(state.server.params)]


def max_abs_diff(a: List[np.ndarray], b: List[np.ndarray]) -> float:
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("nan")
    return float(max((np.max(np.abs(x - y)) if x.size else 0.0) for x, y in zip(a, b)))


class Compiled(NamedTuple):
    run: Any             # () -> output
    compile_s: float
    hlo: Optional[Dict[str, Any]]
    emitted: Optional[Dict[str, Any]]
    peak_bytes: Optional[int]
    flops: float = float("nan")


def compiler_options(w: Workload, smoke: bool) -> Dict[str, Any]:
    """XLA options of the round rows: XLA's defaults, except for ``--smoke`` on CPU
    (``round_speed.compiler_options``: LLVM level 1), where the small ResNet is compiled at
    level 0 (half the compile time; it then runs a few times slower, still well under a
    second). FedAvgCNN stays at level 1: its 32/64-channel convolutions on 28x28 images take
    seconds per round at level 0 through XLA:CPU's generic (grouped) convolution loops."""
    opts = rs.compiler_options(smoke)
    if opts and w.name == "resnet18":
        opts = dict(opts, xla_backend_optimization_level=0)
    return opts


def compile_row(w: Workload, v: Variant, fed, train, state, smoke: bool) -> Compiled:
    t = time.perf_counter()
    if v.kind == "floor":
        task = classification(rs.NUM_CLASSES)
        run, flops = rs.shared_model_round(make_backbone(w, v, floor=True), task, optax.sgd(0.01), fed,
                                           w.local_steps, w.batch, smoke=smoke)
        return Compiled(run, time.perf_counter() - t, None, None, None, flops)
    alg = make_algorithm(w, v)
    lowered = federated.make_round(alg, fed, client_chunk=None, donate=False).lower(state, train)
    try:
        emitted = hlo_counts(lowered.as_text(dialect="hlo"))
    except Exception:  # an older/newer jax without the HLO dialect
        emitted = None
    compiled = lowered.compile(compiler_options=compiler_options(w, smoke))
    compile_s = time.perf_counter() - t
    return Compiled(lambda: compiled(state, train), compile_s, hlo_counts(compiled.as_text()), emitted,
                    rs._round_bytes(compiled))


def initial_states(w: Workload, variants: List[Variant], train) -> Dict[str, Any]:
    """One initial state per parameter structure: every round row but no_norm has the same
    parameters (conv path, barrier, compute dtype, norm dtype and downsample change no
    parameter), so they all start from ONE state (same values, same keys)."""
    states: Dict[str, Any] = {}
    for v in variants:
        if v.kind == "round" and v.norm not in states:
            states[v.norm] = federated.init(make_algorithm(w, v), jax.random.key(0), train)
    return states


# ----------------------------------------------------------------------------- child (command buffers)

def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + CMDBUF_FLAG).strip()
    env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # it shares the device with the parent
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


class Child:
    """A child process measuring one row: it compiles, says so (``ready``), waits for ``go``,
    then warms up, times the row and writes its record and server parameters."""

    def __init__(self, w: Workload, v: Variant, *, smoke: bool, repeats: int):
        self.dir = Path(tempfile.mkdtemp(prefix="formulations_child_"))
        self.ready, self.go = self.dir / "ready", self.dir / "go"
        self.out, self.params = self.dir / "record.json", self.dir / "params.npz"
        cmd = [sys.executable, "-m", "experiments.benchmarks.formulations", "--row", v.name, "--workloads", w.name,
               "--json-out", str(self.out), "--params-out", str(self.params), "--ready-file", str(self.ready),
               "--go-file", str(self.go), "--repeats", str(repeats)] + (["--smoke"] if smoke else [])
        self.log = open(self.dir / "log.txt", "w")
        self.proc = subprocess.Popen(cmd, cwd=str(REPO), env=child_env(), stdout=self.log, stderr=subprocess.STDOUT)

    def _tail(self) -> str:
        self.log.flush()
        return (self.dir / "log.txt").read_text()[-400:]

    def wait_ready(self, timeout: float = 900.0) -> Optional[str]:
        """None when the child has compiled; else why not."""
        end = time.time() + timeout
        while time.time() < end:
            if self.ready.exists():
                return None
            if self.proc.poll() is not None:
                return f"child exited ({self.proc.returncode}) before compiling: {self._tail()}"
            time.sleep(0.05)
        return "child did not compile in time"

    def finish(self, timeout: float = 900.0):
        """``(record or None, params or None, error or None)``."""
        self.go.touch()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None, None, "child timed out"
        finally:
            self.log.close()
        try:
            if self.proc.returncode != 0 or not self.out.exists():
                return None, None, f"child failed ({self.proc.returncode}): {self._tail()}"
            rec = json.loads(self.out.read_text())
            with np.load(self.params) as z:
                params = [z[f"arr_{i}"] for i in range(len(z.files))]
            return rec, params, None
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)  # what it says is returned; nothing left in /tmp

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if not self.log.closed:
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def run_child_row(args) -> int:
    """The hidden ``--row`` mode: measure one round row in this process (see :class:`Child`)."""
    w = workload(args.workloads, args.smoke)
    v = ROW_BY_NAME[args.row]
    fed = rs.random_federation(w.clients, w.samples)
    train = jax.device_put(fed)
    state = initial_states(w, [v], train)[v.norm]
    c = compile_row(w, v, fed, train, state, args.smoke)
    if args.ready_file:
        Path(args.ready_file).touch()
    if args.go_file:
        end = time.time() + 1800
        while not Path(args.go_file).exists():
            if time.time() > end:
                raise SystemExit("no go signal from the parent")
            time.sleep(0.05)
    out = jax.block_until_ready(c.run())
    round_s = rs.median_time(c.run, args.repeats)
    rec = {"round_s": round_s, "compile_s": c.compile_s, "peak_bytes": c.peak_bytes, "hlo": c.hlo,
           "emitted": c.emitted, "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if args.params_out:
        np.savez(args.params_out, *_host_params(out[0]))
    Path(args.json_out).write_text(json.dumps(rec))
    return 0


# ----------------------------------------------------------------------------- a workload

def _meta() -> Dict[str, Any]:
    return {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
            "jax": jax.__version__, "date": datetime.date.today().isoformat()}


def record(w: Workload, v: Variant, round_s: float, *, c: Optional[Compiled], floor: Dict[str, tuple],
           diff: Optional[float], meta: Dict[str, Any]) -> Dict[str, Any]:
    ms = 1e3 * round_s / w.local_steps
    floor_s, flops = floor.get(v.dtype, (float("nan"), float("nan")))
    rec = {
        "workload": w.name, "row": v.name, "label": v.label, "kind": v.kind, "dtype": v.dtype,
        "conv": None if v.kind == "floor" else v.conv, "barrier": None if v.kind == "floor" else v.barrier,
        "norm_dtype": v.norm_dtype if w.name == "resnet18" else None,
        "downsample": v.downsample if w.name == "resnet18" else None,
        "norm": v.norm if w.name == "resnet18" else None, "child": v.child,
        "clients": w.clients, "batch_size": w.batch, "samples_per_client": w.samples, "local_steps": w.local_steps,
        "round_s": round_s, "ms_per_step": ms, "over_floor": round_s / floor_s, "flops": flops,
        "tflops": flops / round_s / 1e12, "compile_s": c.compile_s if c else None,
        "convs": c.hlo["convs"] if c and c.hlo else None,
        "transpose": c.hlo["transpose"] if c and c.hlo else None, "copy": c.hlo["copy"] if c and c.hlo else None,
        "emitted_convs": c.emitted["convs"] if c and c.emitted else None,
        "peak_bytes": c.peak_bytes if c else None,
        "ref": v.ref if diff is not None else None, "max_param_diff": diff, **meta,
    }
    if w.name == "resnet18":
        rec["table1_run_min"] = rs.table1_minutes(round_s, w.local_steps)
    return rec


def bench_workload(name: str, *, smoke: bool, repeats: int, child: bool,
                   only: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    """Every row of one workload: compile concurrently, time one after another."""
    w = workload(name, smoke)
    variants = [v for v in plan(name) if (child or not v.child) and (only is None or v.name in only)]
    meta = _meta()
    fed = rs.random_federation(w.clients, w.samples)
    train = jax.device_put(fed)
    children = {v.name: Child(w, v, smoke=smoke, repeats=repeats) for v in variants if v.child}
    errors: Dict[str, str] = {}
    compiled: Dict[str, Compiled] = {}
    try:
        states = initial_states(w, variants, train)
        local = [v for v in variants if not v.child]
        with concurrent.futures.ThreadPoolExecutor(max(1, min(len(local), os.cpu_count() or 1))) as pool:
            jobs = {v.name: pool.submit(compile_row, w, v, fed, train, states.get(v.norm), smoke) for v in local}
            for n, job in jobs.items():
                try:
                    compiled[n] = job.result()
                except Exception as e:  # record it, measure the others
                    errors[n] = repr(e)[:500]
                    print(f"  {name}/{n} failed to compile: {errors[n]}", file=sys.stderr)
                    traceback.print_exc()
        for n, ch in children.items():  # no child compiles (autotunes) while the parent times
            why = ch.wait_ready()
            if why:
                errors[n] = why
        outputs: Dict[str, List[np.ndarray]] = {}
        times: Dict[str, List[float]] = {n: [] for n in compiled}
        for n, c in list(compiled.items()):  # warm-up (allocation, autotuning) and the parameters
            try:
                out = jax.block_until_ready(c.run())
                if ROW_BY_NAME[n].kind == "round":
                    outputs[n] = _host_params(out[0])
            except Exception as e:
                errors[n] = repr(e)[:500]
                del compiled[n], times[n]
        for _ in range(repeats):  # round-robin: drift hits every row alike
            for n, c in compiled.items():
                t = time.perf_counter()
                jax.block_until_ready(c.run())
                times[n].append(time.perf_counter() - t)
        child_results = {}
        for n, ch in children.items():
            if n in errors:
                ch.kill()
                continue
            rec, params, err = ch.finish()
            if err:
                errors[n] = err
            else:
                child_results[n] = rec
                outputs[n] = params
    finally:
        for ch in children.values():
            ch.kill()

    floor = {}
    for v in variants:
        if v.kind == "floor" and v.name in times:
            floor[v.dtype] = (statistics.median(times[v.name]), compiled[v.name].flops)
    if "float32" in floor and "bfloat16" in floor and math.isnan(floor["bfloat16"][1]):
        floor["bfloat16"] = (floor["bfloat16"][0], floor["float32"][1])
    records = []
    for v in variants:
        if v.name in errors:
            records.append({"workload": name, "row": v.name, "label": v.label, "error": errors[v.name], **meta})
            continue
        ref = outputs.get(v.ref) if v.ref else None
        diff = max_abs_diff(outputs[v.name], ref) if ref is not None and v.name in outputs else None
        if v.child:
            r = child_results[v.name]
            c = Compiled(None, r["compile_s"], r["hlo"], r["emitted"], r["peak_bytes"])
            records.append(dict(record(w, v, r["round_s"], c=c, floor=floor, diff=diff, meta=meta),
                                xla_flags=r["xla_flags"]))
        else:
            records.append(record(w, v, statistics.median(times[v.name]), c=compiled[v.name], floor=floor,
                                  diff=diff, meta=meta))
    return records


# ----------------------------------------------------------------------------- decisions

def _faster(t_old: float, t_new: float, by: float = SPEEDUP) -> bool:
    return t_old / t_new > 1.0 + by


def agreement_tolerance(rows: Dict[str, Dict[str, Any]]) -> float:
    """How close a row's parameters must be to its reference's after one round to count as the
    same function: ``AGREE_F32``, or ``NOISE_FACTOR`` times the difference between ``xla`` and
    ``xla_nobarrier`` where both ran. Those two are the same math compiled with other fusions,
    so their difference is the device's own rounding (on a GPU, float32 convolutions run in
    other cuDNN algorithms and may use TF32): measured 3.9e-4 for ResNet-18 on an H200 after 20
    SGD steps, where 1e-4 would call every reformulation wrong."""
    noise = rows.get("xla_nobarrier", {}).get("max_param_diff")
    return max(AGREE_F32, NOISE_FACTOR * noise) if noise is not None and math.isfinite(noise) else AGREE_F32


def _tolerance_why(rows, tol: float) -> str:
    noise = rows.get("xla_nobarrier", {}).get("max_param_diff")
    return f"xla vs xla_nobarrier {noise:.2e}" if noise is not None else "xla_nobarrier not measured"


def decide(records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The decision rules (module docstring, ``RULES``) applied to measured records: per workload
    ``{rule: {"pick", "why"}}``, ``overall`` ``{rule: pick}`` and ``tolerance`` (per workload:
    the agreement tolerance used and why)."""
    by_w: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for r in records:
        if "error" not in r and r.get("ms_per_step") is not None and math.isfinite(r["ms_per_step"]):
            by_w.setdefault(r["workload"], {})[r["row"]] = r
    per: Dict[str, Dict[str, Dict[str, str]]] = {}
    tolerance: Dict[str, Dict[str, Any]] = {}
    for wname, rows in by_w.items():
        t = lambda n: rows[n]["ms_per_step"]
        tol = agreement_tolerance(rows)
        agree = lambda n: rows[n].get("max_param_diff") is not None and rows[n]["max_param_diff"] < tol
        tolerance[wname] = {"value": tol, "why": _tolerance_why(rows, tol)}
        d: Dict[str, Dict[str, str]] = {}
        candidates = [n for n in CONV_CANDIDATES if n in rows]
        if "xla" in rows and candidates:
            ok = [n for n in candidates if _faster(t("xla"), t(n)) and agree(n)]
            d["conv"] = {"pick": min(ok, key=t) if ok else "xla",
                         "why": ", ".join(f"{n} {100 * (t('xla') / t(n) - 1):+.1f}% vs xla, max |diff| "
                                          f"{rows[n].get('max_param_diff')}" for n in candidates)}
        else:
            d["conv"] = {"pick": "n/a", "why": "xla or every candidate not measured"}
        base = d["conv"]["pick"] if d["conv"]["pick"] != "n/a" else "per_client"
        if f"{base}_nobarrier" not in rows and base != "xla":
            base = "per_client"  # no patches row without the barrier: judged on per_client's pair
        nb = f"{base}_nobarrier"
        if {base, nb} <= rows.keys():
            ok = t(nb) <= (1 + SPEEDUP) * t(base) and agree(nb)
            d["barrier"] = {"pick": "off" if ok else "on",
                            "why": f"{base} without barrier {100 * (t(base) / t(nb) - 1):+.1f}% vs with"}
        else:
            d["barrier"] = {"pick": "n/a", "why": f"{base} or {nb} not measured"}
        if wname == "resnet18":
            if {"bf16_per_client", "bf16_per_client_norm32"} <= rows.keys():
                gain = t("bf16_per_client_norm32") / t("bf16_per_client") - 1
                ok = t("bf16_per_client") <= (1 + NOISE) * t("bf16_per_client_norm32")
                d["norm_dtype"] = {"pick": "compute" if ok else "float32",
                                   "why": f"bf16 norm fix {100 * gain:+.1f}% vs norm in f32"}
            else:
                d["norm_dtype"] = {"pick": "n/a", "why": "bf16 rows not measured"}
            if {"slice", "per_client"} <= rows.keys():
                ok = t("slice") < t("per_client") and agree("slice")
                d["downsample"] = {"pick": "slice" if ok else "conv",
                                   "why": f"slice {100 * (t('per_client') / t('slice') - 1):+.1f}% vs conv, "
                                          f"max |diff| {rows['slice'].get('max_param_diff')}"}
            else:
                d["downsample"] = {"pick": "n/a", "why": "slice or per_client not measured"}
        if {"per_client_cmdbuf", "per_client"} <= rows.keys():
            gain = t("per_client") / t("per_client_cmdbuf") - 1
            d["cmdbuf"] = {"pick": "on" if _faster(t("per_client"), t("per_client_cmdbuf")) else "off",
                           "why": f"command buffers {100 * gain:+.1f}% vs without"}
        else:
            d["cmdbuf"] = {"pick": "n/a", "why": "child row not measured"}
        per[wname] = d
    overall: Dict[str, str] = {}
    for rule in ("conv", "barrier", "norm_dtype", "downsample", "cmdbuf"):
        picks = {w: d[rule]["pick"] for w, d in per.items() if rule in d and d[rule]["pick"] != "n/a"}
        if not picks:
            overall[rule] = "n/a"
        elif len(set(picks.values())) == 1:
            overall[rule] = next(iter(picks.values()))
        else:
            overall[rule] = "mixed (" + ", ".join(f"{w}: {p}" for w, p in picks.items()) + ")"
    return {"per_workload": per, "overall": overall, "tolerance": tolerance}


# ----------------------------------------------------------------------------- output

def to_markdown(records: List[Dict[str, Any]], decisions: Dict[str, Any], meta: Dict[str, Any]) -> str:
    lines = ["| workload | row | ms/step | / floor | TFLOP/s | convs fwd/in/wgt | grouped feature/batch/none | "
             "wgt grads feature/batch-grouped (emitted) | cuDNN fwd/in/filter | transpose | copy | peak MiB | "
             "max abs diff (vs) | Table-1 min |",
             "|---" * 14 + "|"]
    for r in records:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['row']} | failed: {r['error'][:100]} |" + " |" * 11)
            continue
        c, e = r.get("convs"), r.get("emitted_convs")
        emitted = f" ({e['weight_grad_feature_grouped']}/{e['weight_grad_batch_grouped']})" if e else ""
        cells = ([f"{c['forward']}/{c['input_grad']}/{c['weight_grad']}",
                  f"{c['feature_grouped']}/{c['batch_grouped']}/{c['ungrouped']}",
                  f"{c['weight_grad_feature_grouped']}/{c['weight_grad_batch_grouped']}{emitted}",
                  f"{c['cudnn_forward']}/{c['cudnn_backward_input']}/{c['cudnn_backward_filter']}"]
                 if c else [""] * 4)
        diff = "" if r.get("max_param_diff") is None else f"{r['max_param_diff']:.2e} ({r['ref']})"
        peak = None if r.get("peak_bytes") in (None, -1) else r["peak_bytes"] / 2**20
        lines.append(
            f"| {r['workload']} | {r['row']} | {r['ms_per_step']:.3f} | {r['over_floor']:.2f} | "
            f"{rs._fmt(r['tflops'], '.3f')} | " + " | ".join(cells) + f" | {rs._fmt(r.get('transpose'), 'd')} | "
            f"{rs._fmt(r.get('copy'), 'd')} | {rs._fmt(peak, '.0f')} | {diff} | "
            f"{rs._fmt(r.get('table1_run_min'), '.1f')} |")
    lines.append("\nDecision rules:\n")
    lines += [f"- {rule}" for rule in RULES]
    lines.append("\nPicks:\n")
    for wname, d in decisions["per_workload"].items():
        lines.append(f"- {wname}: " + "; ".join(f"{k} = **{v['pick']}** ({v['why']})" for k, v in d.items()))
    lines.append("- overall: " + "; ".join(f"{k} = **{v}**" for k, v in decisions["overall"].items()))
    for wname, tol in decisions.get("tolerance", {}).items():
        lines.append(f"- {wname}: parameters agree below {tol['value']:.2e} ({tol['why']})")
    if meta.get("note"):
        lines.append(f"\n{meta['note']}")
    lines.append(f"\nDevice: {meta['device']} ({meta['backend']}), jax {meta['jax']}, {meta['date']}. "
                 "Rows: ms per local step (median round / steps); / floor: over the shared-model floor of the "
                 "same dtype; convs from the compiled round's HLO (on CPU input gradients count as forward, and "
                 "XLA:CPU rewrites batch-grouped convolutions into ungrouped ones: see the emitted counts).")
    if meta["backend"] == "cpu":
        lines.append("CPU: times and picks say nothing about a GPU; this run checks that every row runs.")
    return "\n".join(lines)


def _write(path: Optional[str], meta, records, decisions):
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"meta": meta, "records": records, "rules": RULES,
                                          "decisions": decisions}, indent=2, default=float))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="every row at tiny size on a CPU")
    p.add_argument("--json", default=None, help="records, rules and picks (default: results/formulations_<backend>)")
    p.add_argument("--md", default=None, help="the markdown table")
    p.add_argument("--workloads", default=",".join(WORKLOADS), help=f"comma-separated from {WORKLOADS}")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per row (default 5; 1 with --smoke)")
    p.add_argument("--rows", default=None, help="comma-separated row names to run (default: all)")
    p.add_argument("--no-child", action="store_true", help="skip the command-buffer row (child process)")
    # hidden: the child process's mode
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--params-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ready-file", default=None, help=argparse.SUPPRESS)
    p.add_argument("--go-file", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 5
    if args.row:
        return run_child_row(args)
    # the child shares the device: neither process may grab most of its memory up front
    # (no effect once a backend is up, e.g. in a test process)
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    names = [n for n in args.workloads.split(",") if n]
    for n in names:
        workload(n, args.smoke)  # validates
    only = [r for r in args.rows.split(",") if r] if args.rows else None
    if only and (bad := sorted(set(only) - set(ROW_BY_NAME))):
        p.error(f"unknown rows {bad}; choose from {list(ROW_BY_NAME)}")
    meta = _meta()
    suffix = f"{meta['backend']}{'_smoke' if args.smoke else ''}"
    json_path = args.json or str(RESULTS / f"formulations_{suffix}.json")
    md_path = args.md or str(RESULTS / f"formulations_{suffix}.md")
    meta.update({"smoke": args.smoke, "repeats": args.repeats, "cmdbuf_flag": CMDBUF_FLAG,
                 "workloads": {n: workload(n, args.smoke)._asdict() for n in names}})
    records: List[Dict[str, Any]] = []
    t0 = time.perf_counter()
    for n in names:
        print(f"[{n}] compiling and timing ...", file=sys.stderr, flush=True)
        t = time.perf_counter()
        try:
            recs = bench_workload(n, smoke=args.smoke, repeats=args.repeats, child=not args.no_child, only=only)
        except Exception as e:  # e.g. out of memory while setting up
            traceback.print_exc()
            recs = [{"workload": n, "row": "(workload)", "label": "", "error": repr(e)[:500]}]
        records += recs
        print(f"[{n}] done in {time.perf_counter() - t:.0f}s", file=sys.stderr, flush=True)
        _write(json_path, meta, records, decide(records))
    meta["total_s"] = time.perf_counter() - t0
    decisions = decide(records)
    _write(json_path, meta, records, decisions)
    table = to_markdown(records, decisions, meta)
    print(table)
    Path(md_path).parent.mkdir(parents=True, exist_ok=True)
    Path(md_path).write_text(table + "\n")
    return 0 if all("error" not in r for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
