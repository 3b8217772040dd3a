"""The round-speed benchmark: its plan, its derived figures and one tiny measured record."""
from __future__ import annotations

import json
import math

import pytest

from experiments.benchmarks import round_speed as rs


def test_plan_covers_the_issue_workloads():
    rows = rs.plan(False, list(rs.GROUPS))
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
    assert row.local_steps == 2 * 5  # ceil(130 / 32) = 5 per epoch
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
