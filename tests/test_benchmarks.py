"""The round-speed benchmark: its plan, its derived figures and one tiny measured record."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmarks import profile_round as pr
from experiments.benchmarks import round_speed as rs


def test_plan_covers_the_issue_workloads():
    rows = rs.plan(False, [g for g in rs.GROUPS if g != "heterogeneous"])
    cnn = {(r.algorithm, r.clients, r.variant) for r in rows if r.workload == "cnn"}
    for k in (20, 100, 1000):
        assert ("fedavg", k, "float32") in cnn
    assert ("fedavg", 10000, "float32, chunk=2000") in cnn
    assert {("omnifm", 20, "float32"), ("omnifm", 1000, "float32")} <= cnn
    # the 1,000-client CNN round: 128 samples, batch 32 -> 4 local steps
    assert all(r.local_steps == 4 for r in rows if r.workload == "cnn")
    res = [r for r in rows if r.workload == "resnet18"]
    assert {r.clients for r in res} == {20, 100}
    assert any(r.dtype == "bfloat16" for r in res) and any(r.algorithm == "omnifm" for r in res)
    assert all(r.batch == 10 for r in res)
    variants = {r.variant for r in rs.plan(False, ["variants"])}
    assert variants == {"float32, chunk=250", "float32, chunk=500", "bfloat16", "float32, fused x4"}


def test_plan_rejects_unknown_groups():
    with pytest.raises(SystemExit, match="unknown workload group"):
        rs.plan(True, ["cnn", "gpt"])


def test_row_steps_and_variant():
    row = rs.Row("cnn", "fedavg", 3, samples=130, batch=32, epochs=2, chunk=2, dtype="bfloat16", fused_rounds=3)
    assert row.local_steps == 2 * 4  # drop_last: floor(130 / 32) = 4 per epoch
    assert row.variant == "bfloat16, chunk=2, fused x3"


def test_table1_extrapolation_by_hand():
    # Table 1: 5 epochs x ceil(4100 / 10) batches = 2,050 steps per round, 100 rounds.
    assert rs.TABLE1_STEPS_PER_ROUND == 2050
    # 2.37 s for 100 steps -> 0.0237 s/step x 205,000 steps = 4858.5 s = 80.975 min
    assert rs.table1_minutes(2.37, 100) == pytest.approx(80.975)


def test_bf16_peak_lookup():
    assert rs.bf16_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert rs.bf16_peak_tflops("NVIDIA H100 PCIe") == pytest.approx(756.0)
    assert rs.bf16_peak_tflops("NVIDIA H200") == pytest.approx(989.4)
    assert rs.bf16_peak_tflops("cpu") is None


def test_heterogeneous_plan_and_sizes():
    """The heterogeneous group: a Dirichlet-0.1 federation (real4 when present) at several
    participations and 10,000 power-law clients; the power-law sizes have a heavy tail."""
    full = rs.hetero_plan(False)
    assert {h.participation for h in full if h.federation != "powerlaw10k"} == {0.2, 0.5, 1.0}
    assert any(h.federation == "powerlaw10k" for h in rs.hetero_plan(True))
    sizes = rs.powerlaw_sizes(10000)
    assert sizes.min() >= 4 and sizes.max() <= 2000
    assert np.median(sizes) < 10 and sizes.max() > 100 * np.median(sizes)


def test_markdown_lists_failures():
    table = rs.to_markdown([{"workload": "cnn", "algorithm": "fedavg", "variant": "float32", "clients": 10000,
                             "error": "RESOURCE_EXHAUSTED: out of memory"}])
    assert "failed: RESOURCE_EXHAUSTED" in table and "10000" in table


def fedavg_cnn_train_flops_per_image() -> float:
    """Hand count for PFLlib's FedAvgCNN on 28x28x3 (10 classes): forward MACs, x2 for
    FLOPs, x3 for forward + backward (the first layer's input gradient is not needed)."""
    conv1 = 24 * 24 * 32 * (5 * 5 * 3)
    conv2 = 8 * 8 * 64 * (5 * 5 * 32)
    fc = 1024 * 512 + 512 * 10
    forward = 2 * (conv1 + conv2 + fc)
    return 3 * forward - 2 * conv1


@pytest.mark.slow
def test_tiny_record_is_consistent(tmp_path):
    row = rs.Row("cnn", "fedavg", 2, samples=8, batch=4)  # 2 local steps
    rec = rs.bench_one(row, smoke=True, repeats=1, seq_clients=2)
    assert rec["local_steps"] == 2 and rec["clients"] == 2
    for key in ("engine_s", "sequential_s", "shared_s"):
        assert rec[key] > 0
    assert rec["speedup"] == pytest.approx(rec["sequential_s"] / rec["engine_s"])
    assert rec["engine_over_shared"] == pytest.approx(rec["engine_s"] / rec["shared_s"])
    assert rec["client_steps_per_s"] == pytest.approx(4 / rec["engine_s"])
    # XLA's count for the shared model's 2 steps on 2 x 4 images vs the hand count
    hand = fedavg_cnn_train_flops_per_image() * 8 * 2
    assert rec["flops"] == pytest.approx(hand, rel=0.05)
    assert rec["tflops"] == pytest.approx(rec["flops"] / rec["engine_s"] / 1e12)
    assert rec["peak_bytes"] > 2 * 8 * 28 * 28 * 3  # at least the data it trains on
    assert rec["peak_fraction"] is None and "table1_run_min" not in rec
    json.dumps(rec)  # serialisable
    assert math.isfinite(rec["tflops"])


# ----------------------------------------------------------------------------- profile_round

HLO = """HloModule jit_f

%fused_computation.1 (p0: f32[4,8], p1: f32[8,2]) -> f32[4,2] {
  %p0 = f32[4,8]{1,0} parameter(0)
  %p1 = f32[8,2]{1,0} parameter(1)
  ROOT %dot.1 = f32[4,2]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_reduce (p0.1: f32[4,2]) -> f32[2] {
  %p0.1 = f32[4,2]{1,0} parameter(0)
  %c = f32[] constant(0)
  ROOT %reduce.2 = f32[2]{0} reduce(%p0.1, %c), dimensions={0}, to_apply=%add
}

ENTRY %main.9 (a: f32[4,8], b: f32[8,2]) -> (f32[2], f32[4,2]) {
  %a = f32[4,8]{1,0} parameter(0)
  %b = f32[8,2]{1,0} parameter(1)
  %custom-call.3 = (f32[4,2]{1,0}, u8[0]{0}) custom-call(%a, %b), custom_call_target="__cudnn$convBackwardFilter"
  %fusion.1 = f32[4,2]{1,0} fusion(%a, %b), kind=kOutput, calls=%fused_computation.1
  %fusion.2 = f32[2]{0} fusion(%fusion.1), kind=kInput, calls=%fused_reduce
  %copy.4 = f32[4,2]{0,1} copy(%fusion.1)
  %while.5 = (s32[], f32[2]) while(%t), condition=%cond, body=%body
  ROOT %tuple.6 = (f32[2]{0}, f32[4,2]{1,0}) tuple(%fusion.2, %copy.4)
}
"""


def test_parse_hlo_and_kinds_by_hand():
    ins, comps = pr.parse_hlo(HLO)
    assert ins["fusion.1"]["calls"] == "fused_computation.1" and "dot" in comps["fused_computation.1"]
    assert ins["custom-call.3"]["target"] == "__cudnn$convBackwardFilter"
    kinds = {n: pr.kind_of(n, ins, comps) for n in ("custom-call.3", "fusion.1", "fusion.2", "copy.4", "while.5",
                                                     "tuple.6", "not-in-module")}
    assert kinds == {"custom-call.3": "conv weight-gradient", "fusion.1": "conv/matmul fusion",
                     "fusion.2": "reduction", "copy.4": "copy/transpose", "while.5": None, "tuple.6": None,
                     "not-in-module": "other"}
    per_kind, top = pr.breakdown([("fusion.1", 0.004), ("copy.4", 0.002), ("fusion.1", 0.002), ("while.5", 1.0)],
                                 ins, comps, rounds=2)
    assert per_kind == pytest.approx({"conv/matmul fusion": 0.003, "copy/transpose": 0.001})  # while skipped
    assert top[0] == ("fusion.1", "conv/matmul fusion", pytest.approx(0.003))


@pytest.mark.slow
def test_profile_of_a_tiny_round(tmp_path):
    rec = pr.profile_one("cnn", "fedavg", 2, smoke=True, dtype="float32", rounds=1, trace_dir=str(tmp_path))
    assert rec["round_s"] > 0 and rec["profiled_s"] > 0
    assert sum(rec["kinds_ms"].values()) == pytest.approx(1e3 * rec["profiled_s"])
    assert rec["coverage"] > 0.2  # the trace saw a good part of the round
    # the CNN's convolutions (plain or fused on CPU) are found in the trace; their share of the
    # time is a measurement (18-30 % on 2 loaded cores), not something to assert
    conv = sum(v for k, v in rec["kinds_ms"].items() if k.startswith("conv"))
    assert conv > 0
    assert Path(rec["trace"]).is_file()
    assert "| 2 |" in pr.to_markdown([rec])


def test_benchmarks_import_without_dm_pix():
    """The speed scripts (and classification) need JAX only: dm-pix is imported by SR metrics."""
    code = ("import sys; sys.modules['dm_pix'] = None\n"
            "import experiments.benchmarks.round_speed, experiments.benchmarks.profile_round\n"
            "import omnifm_jax.experiment\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("seed", range(4))
def test_matmul_flops_counts_real_taps(seed):
    """A convolution of ones by ones sums, at each output, one per multiply-add that reads a real
    input element (padding and the holes of lhs dilation read zeros): its sum is the MAC count,
    an independent reference for ``matmul_flops`` on random strides, paddings, dilations and
    groups; plus a matrix product's 2 M N K."""
    rng = np.random.default_rng(seed)
    groups = int(rng.choice([1, 2]))
    fg, bg = (groups, 1) if rng.random() < 0.5 else (1, groups)
    cin, cout, n = 2 * groups, 3 * groups, 2 * groups
    size, k = int(rng.integers(5, 12)), int(rng.integers(1, 4))
    kw = dict(window_strides=tuple(int(s) for s in rng.integers(1, 3, 2)),
              padding=[tuple(int(p) for p in rng.integers(0, 3, 2)) for _ in range(2)],
              lhs_dilation=tuple(int(d) for d in rng.integers(1, 3, 2)),
              rhs_dilation=tuple(int(d) for d in rng.integers(1, 3, 2)),
              dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=fg, batch_group_count=bg)
    x = jnp.ones((n, size, size, cin))
    w = jnp.ones((k, k, cin // fg, cout))
    conv = lambda a, b: jax.lax.conv_general_dilated(a, b, **kw)
    macs = float(conv(x, w).sum())
    assert macs > 0
    assert rs.matmul_flops(conv, x, w) == pytest.approx(2 * macs)
    a, b = jnp.ones((3, 5, 7)), jnp.ones((7, 4))
    assert rs.matmul_flops(lambda a, b: jax.lax.scan(lambda c, _: (c, a @ b), 0, None, length=3)[1], a, b) == \
        pytest.approx(3 * 2 * 3 * 5 * 7 * 4)


def test_only_runs_the_named_jobs_in_the_order_given():
    jobs = [(label, None, None, None) for label in
            ("cnn/fedavg clients=1000 float32", "cnn/fedavg clients=1000 float32, chunk=250",
             "cnn/fedavg clients=1000 bfloat16", "resnet18/fedavg clients=20 float32")]
    picked = [j[0] for j in rs.select_jobs(jobs, "resnet18, clients=1000 float32$,bfloat16,resnet18")]
    assert picked == ["resnet18/fedavg clients=20 float32", "cnn/fedavg clients=1000 float32",
                      "cnn/fedavg clients=1000 bfloat16"]
    assert [j[0] for j in rs.select_jobs(jobs, "chunk")] == ["cnn/fedavg clients=1000 float32, chunk=250"]
    assert rs.select_jobs(jobs, "nothing") == []


def test_formulation_picks_reach_the_backbone():
    """``--formulation``: a workload's own pick wins over the overall one, "mixed" and "n/a" keep
    the library default, ResNet-only switches never reach the CNN, and the backbone gets them."""
    decisions = {"per_workload": {"resnet18": {"conv": {"pick": "per_client"}, "downsample": {"pick": "slice"},
                                               "norm_dtype": {"pick": "n/a"}}},
                 "overall": {"conv": "xla", "norm_dtype": "float32", "downsample": "mixed (a: b)", "cmdbuf": "off"}}
    assert rs.formulation_for(decisions, "resnet18") == {"conv": "per_client", "downsample": "slice",
                                                          "norm_dtype": "float32"}
    assert rs.formulation_for(decisions, "cnn") == {"conv": "xla"}
    backbone = rs.make_backbone(rs.Row("resnet18", "fedavg", 2, 8, 4), True, rs.formulation_for(decisions, "resnet18"))
    assert (backbone.conv, backbone.downsample, backbone.norm_dtype) == ("per_client", "slice", "float32")
    assert rs.make_backbone(rs.Row("cnn", "fedavg", 2, 8, 4), True, {"conv": "xla"}).conv == "xla"
    assert rs.apply_cmdbuf(decisions) is False


def test_gpu_session_orchestrates_both_steps(tmp_path):
    """gpu_session.sh with a stand-in python: step 1 runs once and its JSON reaches step 2 as
    --formulation (with FORMULATIONS_ROWS as its --rows); a second call reuses it and merges the
    new rows with the first call's."""
    log = tmp_path / "calls.log"
    stub = tmp_path / "py"
    stub.write_text(f"""#!/bin/bash
if [ "$1" = "-c" ]; then case "$2" in *device_kind*) echo cpu_smoke ;; *) echo stub env ;; esac; exit 0; fi
if [ "$1" != "-m" ]; then exec {sys.executable} "$@"; fi
echo "$@" >> {log}
out=""; prev=""
for a in "$@"; do [ "$prev" = "--json" ] && out="$a"; prev="$a"; done
case "$2" in
  *formulations) echo '{{"decisions": {{"overall": {{"conv": "xla"}}}}}}' > "$out" ;;
  *round_speed) n=$(wc -l < {log}); echo "[{{\\"workload\\": \\"cnn\\", \\"algorithm\\": \\"fedavg\\", \\"variant\\": \\"v$n\\", \\"clients\\": 4, \\"error\\": \\"stub\\"}}]" > "$out" ;;
esac
""")
    stub.chmod(0o755)
    out = tmp_path / "out"
    script = Path(__file__).resolve().parents[1] / "experiments" / "benchmarks" / "gpu_session.sh"
    env = dict(os.environ, PYTHON=str(stub), JAX_PLATFORMS="cpu", FORMULATIONS_ROWS="xla,patches")
    for _ in range(2):
        run = subprocess.run(["bash", str(script), str(out), "5", "5", "", "--smoke"], cwd=script.parents[2],
                             env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr
    calls = log.read_text().splitlines()
    formulations = [c for c in calls if "experiments.benchmarks.formulations" in c]
    assert len(formulations) == 1 and "--rows xla,patches" in formulations[0]
    speed = [c for c in calls if "experiments.benchmarks.round_speed" in c]
    assert len(speed) == 2 and all(f"--formulation {out}/formulations_cpu_smoke.json" in c for c in speed)
    merged = json.loads((out / "round_speed_cpu_smoke.json").read_text())
    assert sorted(r["variant"] for r in merged) == ["v2", "v3"]
    assert "failed: stub" in (out / "round_speed_cpu_smoke.md").read_text()
