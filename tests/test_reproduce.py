"""omnifm_jax.reproduce and the table files: definitions, the paper's numbers against its text,
discovery of table files, plans, verdicts, writers, resume, one tiny run."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from omnifm_jax import cli, sweep
from omnifm_jax import config as config_lib
from omnifm_jax import reproduce as R
from omnifm_jax.checks import ConfigError
from omnifm_jax.reproduce import plan as plan_lib
from omnifm_jax.reproduce import registry, writers

ROOT = Path(__file__).resolve().parents[1]
PAPERS = ROOT.parent / "shared" / "papers"


# ----------------------------------------------------------------------------- definitions

def test_every_table_is_consistent_and_its_numbers_come_from_its_printed_rows():
    assert {"table1", "table2", "table6", "table7", "table8", "fig5"} <= set(R.TABLES)
    for name, table in R.TABLES.items():
        table.check()   # unique cells, known metrics, claims on existing cells, a known default scale
        assert Path(table.source).is_file() and table.source.startswith(str(ROOT / "experiments")), name
        numbers = [v for c in table.cells if c.paper for v in c.paper.values() if v is not None]
        assert all(math.isfinite(v) for v in numbers), name
        if table.printed is None:
            assert not numbers, f"{name}: paper numbers without the printed rows they come from"
            continue
        printed = {v for row in table.printed.rows for v in row.numbers}
        assert numbers and set(numbers) <= printed, f"{name}: a cell's number is not in the printed rows"
        for cell in table.cells:
            assert set(cell.paper or {}) <= set(table.metrics), (name, cell)


def test_table_shapes_match_the_paper():
    t = R.TABLES
    assert len(t["table1"].cells) == 11 * 9 + 3 * 3 and [r for _, r in t["table1"].rows] == [
        "FedAvg", "FedProx", "Ditto", "SCAFFOLD", "MOON", "GPFL", "FedDyn", "FedRep", "FedPer", "OmniFM",
        "OmniFM (activated)"]  # the last is ours: no paper number
    activated = next(c for c in t["table1"].cells if c.row_key == "omnifm_activated" and c.col_key == "s1-20")
    assert activated.paper == {"acc": None, "f1": None} and "algorithm=omnifm" in activated.overrides
    assert "algorithm_kwargs.spectrum_norm=batch" in activated.overrides
    assert len(t["table2"].cells) == 3 * 2 * 5
    assert [r for r, _ in t["table8"].rows] == ["omnifm", "no_gskr", "no_eca", "no_psp", "no_spalign",
                                                "omnifm_activated", "activated_no_gskr", "activated_no_eca",
                                                "activated_no_psp", "activated_no_spalign"]
    t8 = {(c.row_key, c.col_key): c for c in t["table8"].cells}
    assert t8[("activated_no_eca", "SR")].paper == {"acc": None, "psnr": None, "dice": None}
    assert {"algorithm_kwargs.use_eca=False", "algorithm_kwargs.eca_keys=centered"} <= set(
        t8[("activated_no_eca", "SR")].overrides)
    cell = next(c for c in t["table1"].cells if c.row == "OmniFM" and c.col_key == "s1-20")
    assert cell.paper == {"acc": 96.85, "f1": 0.589} and "participation=0.2" in cell.overrides
    assert next(c for c in t["table8"].cells if c.row_key == "no_gskr" and c.col_key == "CLS").paper["acc"] == 95.82
    t6 = {(c.row_key, c.col_key): c for c in t["table6"].cells}
    assert t6[("omnifm", "lgg")].paper == {"dice": 77.41, "iou": 68.75, "dice_pooled": None}
    assert t6[("omnifm", "lgg-DU")].client == 1 and t6[("omnifm", "lgg-DU")].paper is None
    t7 = {(c.row_key, c.col_key): c for c in t["table7"].cells}
    assert t7[("omnifm", "CT-MRI")].paper == {"vif": 0.217, "fssim": 0.739, "l1": 0.161}
    assert t7[("omnifm", "avg")].paper["l1"] == 0.145 and t7[("omnifm", "avg")].client is None
    assert t7[("fedper", "avg")].paper is None   # not in the paper's table
    t4 = {(c.row_key, c.col_key): c for c in t["table4"].cells}
    assert len(t4) == 5 * 2 * 4
    assert t4[("omnifm", "ft-avg")].paper == {"vqa_acc": 79.27, "vqa_closed": None, "vqa_open": None}
    assert t4[("omnifm", "scratch-avg")].paper["vqa_acc"] is None and t4[("ditto", "ft-avg")].paper["vqa_acc"] is None
    assert t4[("fedper", "ft-chest")].client == 1 and "init_from=pretrained:vqa_pretrain" in t4[("fedper", "ft-chest")].overrides
    assert 'trainable=["connector_", "lora_", "params/head/", "tokenizer", "eca", "prompt"]' in t4[("omnifm", "ft-avg")].overrides
    t3 = {(c.row_key, c.col_key): c for c in t["table3"].cells}
    assert len(t3) == 2 * 8 and t3[("omnifm", "lc-noniid")].paper == {"vqa_acc": 0.831}
    assert "init_from=pretrained:fc-fedavg-iid" in t3[("fedavg", "2stage-iid")].overrides
    assert [p.key for p in t["table3"].pretrain][:2] == ["vqa_pretrain", "fc-fedavg-iid"]


@pytest.mark.skipif(not (PAPERS / "omnifm.txt").is_file(), reason=f"{PAPERS / 'omnifm.txt'} not found")
def test_paper_numbers_are_transcribed_from_the_text():
    """Every table file's printed rows against the paper's text (../shared/papers/<paper>.txt)."""
    rows = {}
    for name, table in R.TABLES.items():
        if table.printed is None:
            continue
        text = (PAPERS / f"{table.printed.paper}.txt").read_text()
        assert R.transcription_errors(table.printed, text) == [], name
        rows[name] = len(table.printed.rows)
    assert rows == {"table1": 10, "table2": 4, "table3": 8, "table4": 6, "table6": 5, "table7": 12, "table8": 5}
    # The check sees a wrong number, a missing row and a missing section.
    t1 = R.TABLES["table1"].printed
    text = (PAPERS / "omnifm.txt").read_text()
    wrong = R.PaperText(t1.paper, t1.start, t1.end, (R.PrintedRow("FedAvg", (56.31,) + t1.rows[0].numbers[1:-1]
                                                                    + (0.978,)),))
    assert "printed (56.31" in R.transcription_errors(wrong, text)[0]
    assert "no such line" in R.transcription_errors(
        R.PaperText("omnifm", "Table 1:", "Table 2:", (R.PrintedRow("FedNone", (1.0,)),)), text)[0]
    assert "not found" in R.transcription_errors(R.PaperText("omnifm", "Table 99:", "x", ()), text)[0]


def test_the_paper_numbers_are_written_once():
    """Each table's numbers live in its table file only (not in the package, not in a script)."""
    sources = [p for p in list((ROOT / "omnifm_jax").rglob("*.py")) + list((ROOT / "experiments").rglob("*.py"))]
    for needle in ("96.85, 97.71, 97.82", "79.84, 74.93", "0.221, 0.185, 0.196", "95.82, 34.88", "42.21, 35.95",
                   "88.67, 72.59", "0.783, 0.775, 0.806"):
        holders = [p.relative_to(ROOT) for p in sources if needle in p.read_text()]
        assert len(holders) == 1, (needle, holders)


def test_every_method_names_a_registered_algorithm():
    from omnifm_jax.algorithms import registry as algorithms
    from omnifm_jax.reproduce.methods import METHODS

    for m in METHODS:
        assert m.overrides[0] == f"algorithm={m.algorithm}" and m.algorithm in algorithms.available(), m
    assert R.Method("X", "x", ("lr=0.1", "algorithm=fedper")).algorithm == "fedper"


def test_every_cell_config_loads_and_validates():
    """Every table at every scale: its default selection plans (or names the missing data
    files); at smoke and paper every cell does."""
    for name, table in R.TABLES.items():
        for scale in table.scales:
            try:
                plan = R.build_plan(name, scale=scale, seeds=(0,))
            except ConfigError as exc:
                assert "needs data that are not here" in str(exc), (scale, name, str(exc))
                continue
            assert all(pc.configs[0]["checkpoint_every"] == 0 and pc.configs[0]["data_seed"] == 0
                       for pc in plan.cells), (name, scale)
            assert "expected wall time" in writers.estimate_text(plan)   # the scale's figures know every run
            if scale not in ("smoke", "paper"):
                continue
            try:
                plan = R.build_plan(name, scale=scale, seeds=(0,), rows=[k for k, _ in table.rows],
                                    cols=[k for k, _ in table.cols])
            except ConfigError as exc:
                assert "needs data that are not here" in str(exc), (scale, name, str(exc))
                continue
            assert len(plan.cells) == len(table.cells)
    # Table 1 at `cpu`: the real4 runs' size, 60 rounds evaluated every round; all methods at 20%,
    # FedAvg / FedPer / both OmniFM variants also at 100%.
    try:
        plan = R.build_plan("table1", scale="cpu", seeds=(0,))
    except ConfigError as exc:
        assert "needs data that are not here" in str(exc)
    else:
        assert len(plan.cells) == 11 * 3 + 4 * 3 + 3 * 3   # + FedAvg, FedPer, OmniFM fine-tuned at 20%
        assert {pc.cell.row_key for pc in plan.cells if pc.cell.col_key.endswith("-100")} == {
            "fedavg", "fedper", "omnifm", "omnifm_activated"}
        cfg = plan.cells[0].configs[0]
        assert (cfg["dataset"], cfg["num_clients"], cfg["rounds"], cfg["eval_every"], cfg["batch_size"],
                cfg["lr"], cfg["local_epochs"], cfg["backbone"]) == ("real4", 20, 60, 1, 32, 0.05, 1, "cnn")
        estimate = writers.estimate_text(plan)
        assert "54 run(s), 3240 run-rounds, plus 1 pretraining run(s)" in estimate   # one seed
        per_round = R.TABLES["table1"].scales["cpu"].cpu_s_per_round   # the measured figures, by participation
        assert per_round({"participation": 0.2}) == pytest.approx(5.0)
        assert per_round({"participation": 1.0}) == pytest.approx(8.7)
        assert 5.0 < per_round({"participation": 0.5}) < 8.7
        seconds = 60 * (42 * 5.0 + 12 * 8.7) + 60 * per_round(plan.pretrains[0].config)   # 42 cells at 20%, 12 at 100%
        assert f"~{seconds / 3600:.1f} h on a 2-core CPU" in estimate, estimate
        assert [pp.pretrain.key for pp in plan.pretrains] == ["cls_pretrain"]
        assert plan.pretrains[0].config["dataset"] == "histo_derm_mri" and plan.pretrains[0].config["num_clients"] == 1


def test_cpu_estimates_of_table8_and_fig5_price_each_column_at_its_own_pace():
    for name in ("table8", "fig5"):
        try:
            cls, sr = (R.build_plan(name, scale="cpu", seeds=(0, 1), cols=[c]) for c in ("CLS", "SR"))
        except ConfigError as exc:
            assert "needs data that are not here" in str(exc)
            continue
        for plan, pace in ((cls, 14.5), (sr, 2.4)):
            run_rounds = sum(int(r.get("rounds", p.base["rounds"])) for p in plan.programs for r in p.runs)
            assert f"~{run_rounds * pace / 3600:.1f} h on a 2-core CPU" in writers.estimate_text(plan), name


def test_smoke_defaults_are_a_subset_and_shrink_the_rounds():
    plan = R.build_plan("table1", scale="smoke", seeds=(0, 1, 2))
    smoke = R.TABLES["table1"].scales["smoke"]
    assert {pc.cell.row_key for pc in plan.cells} == set(smoke.rows)
    assert all(cfg["rounds"] == smoke.rounds and cfg["num_clients"] == 5 for pc in plan.cells for cfg in pc.configs)
    assert "smoke default rows: fedavg, fedper, omnifm (--only selects others)" in plan.notes
    assert R.build_plan("table1", scale="paper", seeds=(0,), rows=["omnifm"], cols=["s1-20"]).cells[0].configs[0][
        "rounds"] == 100
    assert R.build_plan("table8", seeds=(0,)).scale == "smoke"   # the table's default scale


def test_seeds_and_shape_free_values_share_one_program():
    plan = R.build_plan("table8", scale="tiny", seeds=(0, 1, 2), rows=["omnifm", "no_spalign", "no_eca"], cols=["CLS"])
    sizes = sorted(len(p.runs) for p in plan.programs)
    assert sizes == [3, 6]                       # OmniFM + w/o SPAlign (lambda 0.1 / 0) x 3 seeds; w/o ECA x 3
    assert all(p.mode == "sweep" for p in plan.programs)
    paper_rows = [k for k, _ in R.TABLES["fig5"].rows if not k.startswith("activated_")]
    fig5 = R.build_plan("fig5", scale="tiny", seeds=(0, 1), cols=["CLS"], rows=paper_rows)
    runs = sum(len(p.runs) for p in fig5.programs)
    assert runs == (5 + 4 - 1) * 2                # lambda=0.1 and k=2 are one config: run once
    assert len(fig5.programs) == 4                # all lambdas in one program; k = 1, 3, 4 apart
    both = R.build_plan("fig5", scale="tiny", seeds=(0, 1), cols=["CLS"])  # and the activated series
    assert sum(len(p.runs) for p in both.programs) == 2 * runs and len(both.programs) == 8


def test_without_sweep_module_every_config_is_its_own_program(monkeypatch):
    monkeypatch.setattr(plan_lib, "_import_sweep", lambda: None)
    plan = R.build_plan("table8", scale="tiny", seeds=(0, 1), rows=["omnifm", "no_spalign"], cols=["CLS"])
    assert len(plan.programs) == 4 and all("cannot be imported" in p.mode for p in plan.programs)


def test_a_program_that_run_sweep_refuses_runs_as_separate_programs(monkeypatch):
    from omnifm_jax import experiment

    plan = R.build_plan("table8", scale="tiny", seeds=(0, 1), rows=["omnifm", "no_spalign"], cols=["CLS"])

    def refuse(cfg, runs, **kw):
        raise ConfigError("not today")

    fake_runs = []

    def fake_run(cfg, out, **kw):
        fake_runs.append(cfg)
        acc = 0.5 + 0.1 * cfg["seed"] - cfg["algorithm_kwargs"]["lambda_align"]
        return {"best": {"round": 1, "accuracy": acc}, "last": {"round": 1, "accuracy": acc}, "state": object()}

    monkeypatch.setattr(plan_lib, "_import_sweep", lambda: types.SimpleNamespace(run_sweep=refuse))
    monkeypatch.setattr(experiment, "run", fake_run)
    logs = []
    results = R.execute(plan, log=logs.append)
    assert len(fake_runs) == 4 and "separate programs" in " ".join(logs)
    assert plan.programs[0].mode.startswith("separate: run_sweep refused")
    recs = R.records_from(plan, results)
    assert {(r["row_key"], r["seed"]): round(r["acc_best"], 6) for r in recs} == {
        ("omnifm", 0): 40.0, ("omnifm", 1): 50.0, ("no_spalign", 0): 50.0, ("no_spalign", 1): 60.0}
    assert all(r["runs_in_program"] == 1 and "state" not in results[k] for k in results for r in recs)


def test_cells_read_a_client_or_a_round_of_the_run():
    """Per-client columns read the client's line at the rule's round; round columns read that
    evaluation round; ``minus_baseline`` metrics subtract the task's baseline."""
    table = R.Table("t", "T", ("acc", "gain"), (
        R.Cell("A", "all", "a", "all", "default", ()), R.Cell("A", "client 1", "a", "c1", "default", (), client=1),
        R.Cell("A", "round 1", "a", "r1", "default", (), at_round=1),
        R.Cell("A", "client 0, round 1", "a", "c0r1", "default", (), at_round=1, client=0)),
        metric_defs={"gain": R.Metric("accuracy", "gain", 100.0, minus_baseline=True)})
    history = [{"round": 0, "accuracy": 0.1, "clients": [{"accuracy": 0.1}, {"accuracy": 0.1}]},
               {"round": 1, "accuracy": 0.6, "clients": [{"accuracy": 0.5}, {"accuracy": 0.7}]},
               {"round": 2, "accuracy": 0.4, "clients": [{"accuracy": 0.2}, {"accuracy": 0.6}]}]
    summary = {"best": {"round": 1, "accuracy": 0.6}, "last": {"round": 2, "accuracy": 0.4},
               "last_clients": history[2]["clients"], "history": history,
               "baseline": {"accuracy": 0.25}, "baseline_clients": [{"accuracy": 0.2}, {"accuracy": 0.3}]}
    planned = [R.PlannedCell(c, R.Setting("default"), [{"dataset": "d", "algorithm": "a", "rounds": 2, "seed": 0}])
               for c in table.cells]
    plan = R.Plan(table, "tiny", (0,), planned, [])
    recs = {r["col_key"]: r for r in R.records_from(plan, {(i, 0): summary for i in range(4)})}
    got = {k: (round(r["acc_best"], 6), round(r["acc_last"], 6), round(r["gain_last"], 6)) for k, r in recs.items()}
    assert got == {"all": (60.0, 40.0, 15.0), "c1": (70.0, 60.0, 30.0), "r1": (60.0, 60.0, 35.0),
                   "c0r1": (50.0, 50.0, 30.0)}
    assert recs["c1"]["acc_baseline"] == pytest.approx(30.0) and "gain_baseline" not in recs["c1"]


@pytest.mark.parametrize("data_seed, overrides, expected", [
    (0, (), {1: 0, 2: 0}),                          # the table's split, whichever seeds a sitting runs
    (3, (), {1: 3, 2: 3}),
    ("seed", (), {1: 1, 2: 2}),                     # one split per seed
    (0, ("data_seed=5",), {1: 5, 2: 5}),            # --set data_seed=N wins
])
def test_the_data_split_does_not_depend_on_the_seeds_a_sitting_runs(data_seed, overrides, expected):
    t = dataclasses.replace(R.get_table("table8"), data_seed=data_seed)
    plan = R.build_plan(t, scale="tiny", seeds=(1, 2), rows=["omnifm"], cols=["CLS"], overrides=list(overrides))
    assert {c["seed"]: c["data_seed"] for c in plan.cells[0].configs} == expected


@pytest.mark.parametrize("bad", ["first", -1, 1.0, True])
def test_a_table_with_a_bad_data_seed_is_refused(bad):
    with pytest.raises(ValueError, match="data_seed an integer >= 0 or 'seed'"):
        dataclasses.replace(R.get_table("table8"), data_seed=bad).check()


def test_the_table_says_which_split_each_seed_ran_on():
    table = R.Table("t", "T", ("acc",), (R.Cell("A", "all", "a", "all", "default", ()),
                                         R.Cell("B", "all", "b", "all", "default", ())))

    def rec(row, seed, data_seed):
        return {"row_key": row, "col_key": "all", "row": row, "col": "all", "seed": seed, "data_seed": data_seed,
                "acc_best": 50.0 + seed, "acc_last": 50.0, "best_round": 1}

    one = R.markdown(table, [rec(r, s, 0) for r in "ab" for s in (0, 1, 2)])
    assert "Data split: `data_seed = 0` for every seed and method." in one
    two = R.markdown(table, [rec(r, s, 0 if s == 0 else 1) for r in "ab" for s in (0, 1, 2)])
    assert ("Data splits: seed 0 on `data_seed = 0`; seeds 1, 2 on `data_seed = 1`." in two
            and "every method ran on the same split" in two)
    mixed = R.markdown(table, [rec("a", 0, 0), rec("b", 0, 1), rec("a", 1, 1), rec("b", 1, 1)])
    assert "seed 0 on `data_seed = 0 and 1`" in mixed and "seed(s) 0 ran cells on different splits" in mixed
    assert "Data split" not in R.markdown(table, [dict(rec("a", 0, 0), data_seed=None)])   # older records


def test_convergence_is_judged_on_the_first_metric_the_run_logs():
    """A table reporting accuracy and PSNR judges its SR cells (no accuracy in their history)
    on PSNR and its classification cells on accuracy, per client too; a run logging neither
    gets no mark."""
    table = R.Table("t", "T", ("acc", "psnr"), (
        R.Cell("A", "CLS", "a", "cls", "default", ()), R.Cell("A", "SR", "a", "sr", "default", ()),
        R.Cell("A", "SR client 0", "a", "sr0", "default", (), client=0)))
    rng = np.random.default_rng()
    flat_db = list(20.0 + rng.uniform(0.0, 0.05, 12))          # within 0.1 dB: plateaued
    rising_acc = [0.1 + 0.02 * i for i in range(12)]          # +20 points over the last 10: not
    sr = [{"round": i, "psnr": v, "clients": [{"psnr": v}]} for i, v in enumerate(flat_db)]
    cls = [{"round": i, "accuracy": v, "clients": [{"accuracy": v}]} for i, v in enumerate(rising_acc)]
    summaries = [{"best": cls[-1], "last": cls[-1], "history": cls}] + [
        {"best": sr[-1], "last": sr[-1], "history": sr, "last_clients": sr[-1]["clients"]}] * 2
    planned = [R.PlannedCell(c, R.Setting("default"), [{"dataset": "d", "algorithm": "a", "rounds": 11, "seed": 0}])
               for c in table.cells]
    plan = R.Plan(table, "tiny", (0,), planned, [])
    recs = {r["col_key"]: r for r in R.records_from(plan, {(i, 0): s for i, s in enumerate(summaries)})}
    assert {k: r["converged"] for k, r in recs.items()} == {"cls": False, "sr": True, "sr0": True}
    assert recs["sr"]["acc_best"] is None and recs["sr"]["psnr_best"] == pytest.approx(flat_db[-1])
    # the same SR history rising by 0.2 dB over the last 10 rounds has not converged
    rising_db = [{"round": i, "psnr": 20.0 + 0.02 * i} for i in range(12)]
    recs = R.records_from(plan, {(1, 0): {"best": rising_db[-1], "last": rising_db[-1], "history": rising_db}})
    assert recs[0]["converged"] is False
    recs = R.records_from(plan, {(1, 0): {"best": {}, "last": {}, "history": [{"round": 0, "loss": 1.0}]}})
    assert recs[0]["converged"] is None


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(table="table9"), "unknown table 'table9'"),
    (dict(table="table8", rows=["w/o nothing"]), "unknown row 'w/o nothing'"),
    (dict(table="table8", cols=["VQA-T1"]), "unknown column 'VQA-T1'"),
    (dict(table="table8", scale="huge"), "unknown scale 'huge'; scales of table8: paper, smoke, tiny"),
    (dict(table="table8", seeds=(0, 0)), "seeds must be distinct"),
    (dict(table="table8", rule="median"), "evaluation rule"),
    (dict(table="table8", cols=["CLS"], overrides=["lr=0"]), "table8 cell (OmniFM, CLS (Acc %)): lr must be"),
    (dict(table="table1", cols=["s1-20"], overrides=["algorithm_kwargs.top_k=99"]), "table1 cell (FedAvg"),
    (dict(table="table8", cols=["SEG"]), "scale 'tiny' has no setting for 'seg_lgg_sites'"),
    (dict(table="table6"), "unknown scale 'tiny'; scales of table6: paper, smoke, cpu"),
])
def test_bad_input_is_refused_before_any_work(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        R.build_plan(**{"scale": "tiny", **kwargs})


def test_cli_reports_errors_and_unavailable_tasks(capsys, monkeypatch):
    assert cli.main(["reproduce", "table9"]) == 2
    assert "unknown table 'table9'; tables: fig5, table1, table2, table3, table4, table6, table7, table8, " in capsys.readouterr().err
    assert cli.main(["reproduce", "table8", "--only", "nope", "--scale", "tiny"]) == 2
    assert "unknown row 'nope'; rows of this table: omnifm (OmniFM)" in capsys.readouterr().err
    from omnifm_jax.registry import TASKS

    monkeypatch.setattr(TASKS, "available", lambda: ["classification", "super_resolution"])
    assert cli.main(["reproduce", "table6", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "table6 needs the task 'segmentation', which is not registered here" in err
    assert cli.main(["reproduce", "list"]) == 0
    listing = capsys.readouterr().out
    assert "table6: Table 6: federated segmentation  [unavailable: table6 needs the task 'segmentation'" in listing
    assert "table8: Table 8: ablations of OmniFM\n" in listing
    assert ("    scales: paper, smoke (default), tiny, cpu\n    smoke default: rows ['omnifm', 'no_gskr', 'no_eca', "
            "'no_psp', 'no_spalign'], cols ['CLS', 'SR'], 6 rounds") in listing


def test_without_a_checkout_list_says_where_it_looked(monkeypatch, tmp_path, capsys):
    """An installed package without its checkout: no default folder; list and run say where they
    looked and how to pass --tables."""
    monkeypatch.setattr(registry, "default_dirs", lambda: [tmp_path / "site-packages" / "experiments" / "paper"])
    assert cli.main(["reproduce", "list"]) == 0
    out = capsys.readouterr().out
    assert "no table files found; looked in " + str(tmp_path / "site-packages") in out and "--tables DIR" in out
    assert cli.main(["reproduce", "table1", "--dry-run"]) == 2
    assert "--tables DIR" in capsys.readouterr().err
    assert cli.main(["reproduce", "list", "--tables", str(tmp_path / "nowhere")]) == 2
    assert "table folder" in capsys.readouterr().err


def test_a_broken_or_duplicate_table_file_is_named(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "bad.py").write_text("TABLE = 1 / 0\n")
    with pytest.raises(ConfigError, match=r"table file .*bad\.py cannot be loaded: ZeroDivisionError"):
        R.find_tables([tmp_path / "a"])
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "copy.py").write_text((ROOT / "experiments" / "paper" / "table8.py").read_text())
    with pytest.raises(ConfigError, match=r"table 'table8' is defined twice: .*table8\.py and .*copy\.py"):
        R.find_tables([tmp_path / "b"])


# ----------------------------------------------------------------------------- verdicts

def _history(values, key="accuracy"):
    return [{"round": i, key: v, "clients": [{key: v}]} for i, v in enumerate(values)]


@pytest.mark.parametrize("values, metric, expected", [
    ([0.1, 0.5] + [0.80] * 5 + [0.805] * 6, "acc", True),                  # plateaued: +0.5 point in the last 10
    ([0.1] + [0.5 + 0.0009 * i for i in range(11)], "acc", True),           # rising 0.9 point in the last 10
    ([0.1] + [0.5 + 0.0011 * i for i in range(11)], "acc", False),          # rising 1.1 points in the last 10
    ([0.1, 0.9] + [0.5] * 10, "acc", True),                                  # best-so-far: worse rounds don't count
    ([0.1] + [0.8] * 9, "acc", False),                                       # 10 evaluated rounds: too short
    ([20.0] + [30.0] * 6 + [30.099] * 5, "psnr", True),                     # PSNR: +0.099 dB < 0.1 dB
    ([20.0] + [30.0] * 6 + [30.1001] * 5, "psnr", False),                   # +0.1001 dB: still rising
])
def test_convergence_rule(values, metric, expected):
    key = R.METRICS[metric].key
    assert R.converged(_history(values, key), R.METRICS[metric]) is expected
    assert R.converged(_history(values, key), R.METRICS[metric], client=0) is expected


def test_convergence_tolerances_live_in_one_place():
    from omnifm_jax.reproduce import spec

    assert spec.PLATEAU == {"*": 0.01, "psnr": 0.1} and R.PLATEAU_ROUNDS == 10
    assert R.METRICS["acc"].tolerance == 0.01 and R.METRICS["psnr"].tolerance == 0.1
    assert R.get_table("sr_splits").metric("psnr_gain").tolerance == 0.1      # a table's own PSNR metric
    lower = R.Metric("l1", "L1", higher_is_better=False)
    assert R.converged(_history([0.5, 0.2] + [0.2] * 10, "l1"), lower)
    assert not R.converged(_history([0.5] + [0.2 - 0.0011 * i for i in range(11)], "l1"), lower)


@pytest.mark.parametrize("margins, label", [
    ([], "not measured"),
    ([0.0, 0.0, 0.0], "does not hold here"),           # zero margin: no advantage
    ([-0.1, -0.2, 0.05], "does not hold here"),
    ([1.0, 2.0, 3.0], "holds"),                         # mean 2 = 2 x std 1: on the boundary
    ([2.0, 2.0, 2.0001], "holds"),
    ([0.999, 2.0, 3.0], "holds weakly"),                # mean just under 2 std
    ([0.5, 0.5], "holds"),                              # std 0
    ([0.3], "holds weakly"),                            # one seed: no spread to judge
    ([-1.0, 3.0, 0.1], "holds weakly"),
])
def test_verdict_boundaries(margins, label):
    got, mean, std, n = R.verdict(margins)
    assert got == label and n == len(margins)


def _records(table, values):
    """Hand-made CSV-like records: values {(row_key, col_key): {metric: [per-seed values]}}."""
    cells = {(c.row_key, c.col_key): c for c in R.TABLES[table].cells}
    recs = []
    for (rk, ck), metrics in values.items():
        c = cells[(rk, ck)]
        n = len(next(iter(metrics.values())))
        for seed in range(n):
            rec = {"table": table, "row": c.row, "col": c.col, "row_key": rk, "col_key": ck, "seed": seed}
            for m, vs in metrics.items():
                rec[f"{m}_best"] = vs[seed]
                rec[f"{m}_last"] = vs[seed] - 1.0
                rec[f"{m}_paper"] = c.paper_value(m)
            recs.append(rec)
    return recs


def test_claims_pair_seeds_pick_the_best_other_and_respect_lower_is_better():
    recs = _records("table1", {
        ("omnifm", "s1-20"): {"acc": [90.0, 91.0, 92.0], "f1": [0.5, 0.5, 0.5]},
        ("fedper", "s1-20"): {"acc": [89.0, 90.9, 90.2], "f1": [0.6, 0.6, 0.6]},
        ("fedavg", "s1-20"): {"acc": [50.0, 50.0, 50.0], "f1": [0.2, 0.2, 0.2]},
    })
    claims = {c["claim"]: c for c in R.evaluate_claims(R.TABLES["table1"], recs)}
    acc = claims["OmniFM has the highest Acc (%) in Scenario 1 (Hard), 20% participation"]
    assert acc["vs"] == "FedPer" and acc["margin"] == pytest.approx(2.9 / 3) and acc["n"] == 3
    assert acc["verdict"] == "holds weakly"            # margins 1, 0.1, 1.8: mean 0.97 < 2 x 0.85
    assert acc["paper_margin"] == pytest.approx(96.85 - 84.47) and acc["paper_verdict"] == "holds"
    f1 = claims["OmniFM has the highest F1-Score in Scenario 1 (Hard), 20% participation"]
    assert f1["verdict"] == "does not hold here" and f1["margin"] == pytest.approx(-0.1)
    assert not any("50%" in c for c in claims)         # cells not measured: claim not tested
    fusion = _records("table7", {("omnifm", "avg"): {"l1": [0.10, 0.11]}, ("fedavg", "avg"): {"l1": [0.20, 0.21]},
                                 ("moon", "avg"): {"l1": [0.15, 0.16]}, ("local", "avg"): {"l1": [0.01, 0.01]}})
    l1 = next(c for c in R.evaluate_claims(R.TABLES["table7"], fusion) if c["metric"] == "l1")
    assert l1["vs"] == "MOON" and l1["margin"] == pytest.approx(0.05) and l1["verdict"] == "holds"  # Local: no claim
    assert l1["paper_margin"] == pytest.approx(0.147 - 0.145)   # the paper's best of FedAvg / MOON is FedAvg


def test_a_best_claim_judged_on_some_of_its_compared_cells_says_how_many():
    """A "highest" verdict read off a column where few of the compared methods ran says so in
    the table; with every compared cell measured nothing is added."""
    table = R.TABLES["table1"]
    claim = next(c for c in table.claims if c.text.startswith("OmniFM has the highest Acc (%) in Scenario 1 (Hard), 20%"))
    few = _records("table1", {("omnifm", "s1-20"): {"acc": [90.0]}, ("fedavg", "s1-20"): {"acc": [80.0]},
                              ("fedper", "s1-20"): {"acc": [85.0]}})
    every = _records("table1", {(rk, "s1-20"): {"acc": [90.0 if rk == "omnifm" else 80.0]}
                                for rk in ["omnifm"] + [o[0] for o in claim.others]})
    for recs, compared in ((few, (2, len(claim.others))), (every, (len(claim.others),) * 2)):
        c = next(c for c in R.evaluate_claims(table, recs) if c["claim"] == claim.text)
        assert c["compared"] == compared
        line = next(l for l in R.markdown(table, recs).splitlines() if l.startswith(f"- {claim.text}:"))
        if compared[0] < compared[1]:
            assert f"vs FedPer, against the 2 of its {len(claim.others)} compared cells that ran, 1 seed" in line
        else:
            assert "compared cells" not in line and "vs " in line


def test_a_best_claim_over_cells_with_other_seeds_is_judged_against_the_hardest_paired_opponent():
    """Table 1 at 100% with OmniFM and FedPer at seeds 0-2 and the activated variant at seed 0
    only: FedPer leads OmniFM in every seed, so the claim does not hold, although the activated
    cell's one seed has the higher mean and OmniFM's seed 0 beats it by 0.02."""
    table = R.TABLES["table1"]
    claim = next(c for c in table.claims if c.text.startswith("OmniFM has the highest Acc (%) in Scenario 1 (Hard), 100%"))
    recs = _records("table1", {("omnifm", "s1-100"): {"acc": [93.37, 93.11, 93.02]},
                               ("fedper", "s1-100"): {"acc": [93.49, 93.21, 93.16]},
                               ("omnifm_activated", "s1-100"): {"acc": [93.35]}})
    c = next(c for c in R.evaluate_claims(table, recs) if c["claim"] == claim.text)
    assert c["vs"] == "FedPer" and c["verdict"] == "does not hold here" and c["n"] == 3
    assert c["margin"] == pytest.approx(np.mean([-0.12, -0.10, -0.14]))


def test_contrast_claim_and_last_round_rule():
    recs = _records("table1", {("omnifm", "s1-20"): {"acc": [95.0, 95.0]}, ("omnifm", "s1-100"): {"acc": [96.0, 96.0]},
                               ("fedper", "s1-20"): {"acc": [80.0, 81.0]}, ("fedper", "s1-100"): {"acc": [90.0, 90.0]}})
    c = next(c for c in R.evaluate_claims(R.TABLES["table1"], recs) if "loses less" in c["claim"])
    assert c["margin"] == pytest.approx(8.5) and c["verdict"] == "holds"
    assert c["paper_margin"] == pytest.approx((96.85 - 97.82) - (84.47 - 92.57))
    agg = R.aggregate(recs, "last")
    assert agg[("omnifm", "s1-20")]["acc"] == (94.0, 0.0, 2)


def test_markdown_and_csv_from_hand_made_results(tmp_path):
    recs = _records("table8", {("omnifm", "CLS"): {"acc": [60.0, 62.0, 64.0]},
                               ("no_gskr", "CLS"): {"acc": [50.0, 50.0, 53.0]},
                               ("omnifm", "SR"): {"psnr": [30.0, 30.5, 31.0]}})
    R.write_csv(recs, tmp_path / "t.csv")
    back = R.read_csv(tmp_path / "t.csv")
    assert len(back) == 9 and back[0]["acc_best"] == "60.0" and back[0]["psnr_best"] is None
    md = R.markdown(R.TABLES["table8"], back, seeds=(0, 1, 2), scale="smoke")
    acc, psnr = md.split("## Acc (%)")[1].split("## PSNR (dB)")
    assert "| OmniFM | 62.00 ± 2.00 (3) | 97.82 | -35.82 |" in acc
    assert "| w/o GSKR | 51.00 ± 1.73 (3) | 95.82 | -44.82 |" in acc
    assert "| OmniFM | 30.50 ± 0.50 (3) | 35.79 | -5.29 |" in psnr and "| w/o GSKR | — | 34.88 | — |" in psnr
    assert ("- removing GSKR lowers CLS (Acc %): **holds** (+11.00 ± 1.00 vs w/o GSKR, 3 seeds; "
            "paper: holds (+2.00))") in md
    assert "Not run here (27 of 30 cells" in md and "## Dice" not in md
    R.write_plot(R.TABLES["table8"], back, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    single = R.markdown(R.TABLES["table8"], _records("table8", {("omnifm", "CLS"): {"acc": [61.0]}}))
    assert "| OmniFM | 61.00 (1) |" in single


def test_columns_without_paper_numbers_and_reference_rows():
    recs = _records("table7", {("omnifm", "avg"): {"vif": [0.2, 0.3]}, ("fedper", "avg"): {"vif": [0.1, 0.1]},
                               ("omnifm", "CT-MRI"): {"vif": [0.4, 0.4]}})
    refs = {"average fusion (A + B) / 2": {"avg": {"vif": 0.25}, "CT-MRI": {"vif": 0.3}}}
    md = R.markdown(R.TABLES["table7"], recs, references=refs)
    assert ("| Method | CT-MRI: measured | paper | diff | Avg. over the 3 clients: measured | paper | diff |"
            in md)
    assert "| OmniFM | 0.400 ± 0.000 (2) | 0.217 | +0.183 | 0.250 ± 0.071 (2) | 0.269 | -0.019 |" in md
    assert "| FedPer | — | — | — | 0.100 ± 0.000 (2) | — | — |" in md
    assert "| *average fusion (A + B) / 2 (reference)* | 0.300 |  |  | 0.250 |  |  |" in md
    t = R.get_table("sr_splits")
    labels = dict(t.cols)
    recs = [{"row_key": row, "col_key": split, "row": row, "col": labels[split], "seed": seed,
             "psnr_last": base + 1.0, "psnr_baseline": base + seed, "psnr_gain_last": 1.0}
            for row in ("omnifm", "fedavg") for split, base in (("patient", 30.0), ("image", 33.0)) for seed in (0, 1)]
    sr = R.markdown(t, recs, rule="last")
    assert f"| Method | {labels['patient']}: measured | {labels['image']}: measured |\n|---|---:|---:|" in sr
    # each split has its own bicubic (the same for both methods at a seed): shown per column
    assert f"test patches: {labels['patient']} 30.50, {labels['image']} 33.50\n" in sr


def test_every_cell_builds_its_algorithm_on_its_task_before_any_work():
    """Cells on one federation load it once, and each still builds its own task and algorithm:
    an algorithm setting the task refuses is named with its cell before anything trains. The
    activated OmniFM of Table 8 / Fig. 5 uploads per class on CLS and per client on SR."""
    plan = R.build_plan("table8", scale="tiny", seeds=(0,), rows=["omnifm", "omnifm_activated"], cols=["CLS", "SR"])
    uploads = {(pc.cell.row_key, pc.cell.col_key): pc.configs[0]["algorithm_kwargs"].get("upload")
               for pc in plan.cells}
    assert uploads == {("omnifm", "CLS"): "mean", ("omnifm", "SR"): "mean",
                       ("omnifm_activated", "CLS"): "class_means", ("omnifm_activated", "SR"): "mean"}
    R.check_data(plan)
    fig5 = R.build_plan("fig5", scale="tiny", seeds=(0,), rows=["activated_k=3"], cols=["CLS", "SR"])
    assert [pc.configs[0]["algorithm_kwargs"]["upload"] for pc in fig5.cells] == ["class_means", "mean"]
    sr = [pc for pc in plan.cells if pc.cell.col_key == "SR"]
    sr[1].configs[0]["algorithm_kwargs"]["upload"] = "class_means"   # the second cell on the SR federation
    with pytest.raises(ConfigError, match=re.escape("table8 cell (OmniFM (activated), SR (PSNR dB, ×4)): "
                                                    "upload='class_means' needs a classification task")):
        R.check_data(plan)


def test_references_are_computed_on_each_columns_federation(tmp_path):
    """Table 7's average fusion on the smoke stand-in (the synthetic pairs where the Harvard
    files are absent): one value per client column and their mean, in the table's units."""
    plan = R.build_plan("table7", scale="smoke", seeds=(0,), rows=["fedavg"], data_root=tmp_path)
    data = R.check_data(plan)
    assert data[0]["dataset"] == "synthetic_fusion" and len(data[0]["cell_indices"]) == 4
    refs = R.references_from(plan, data)["average fusion (A + B) / 2"]
    raw = data[0]["references"]["average fusion (A + B) / 2"]
    assert refs["CT-MRI"]["vif"] == pytest.approx(raw["clients"][0]["vif"] / 2)   # the table's VIF is halved
    assert refs["avg"]["l1"] == pytest.approx(sum(c["l1"] for c in raw["clients"]) / 3)


@pytest.mark.real_data
def test_fedmepd_reference_predicts_no_tumour(real_data_dir):
    plan = R.build_plan("fedmepd_lgg", scale="smoke", seeds=(0,), rows=["fedavg"], cols=["DU", "avg"],
                        data_root=real_data_dir)
    refs = R.references_from(plan, R.check_data(plan))["no tumour predicted"]
    assert 0.0 < refs["DU"]["dice"] < 100.0 and refs["avg"]["dice_pooled"] == 0.0


def test_small_margins_keep_two_significant_digits():
    recs = _records("table8", {("omnifm", "SR"): {"psnr": [26.650, 26.652, 26.655]},
                               ("no_psp", "SR"): {"psnr": [26.648, 26.651, 26.650]}})
    md = R.markdown(R.TABLES["table8"], recs)
    assert "removing PSP lowers SR (PSNR dB, ×4): **holds weakly** (+0.0027 ± 0.0021 vs w/o PSP" in md
    assert writers._fmt(-0.0001, 2, sign=True) == "+0.00"    # no "-0.00"



def test_a_sweep_flat_within_the_tolerance_is_drawn_flat():
    """Fig. 5's lines: a y range at least twice the convergence tolerance wide, centred on the
    points, so 0.003 dB of spread is not drawn as a peak; a wide spread keeps its own range."""
    rng = np.random.default_rng()
    ys = list(26.6 + 0.003 * rng.random(5))
    lo, hi = writers.line_ylim(ys, [0.0] * 5, 0.2)
    assert hi - lo == pytest.approx(0.22) and (lo + hi) / 2 == pytest.approx((min(ys) + max(ys)) / 2)
    ys, es = [90.0, 95.0, 92.0], [0.5, 1.0, 0.0]
    lo, hi = writers.line_ylim(ys, es, 2.0)
    assert lo < 89.5 and hi > 96.0 and hi - lo == pytest.approx(1.1 * 6.5)

# ----------------------------------------------------------------------------- a table file of one's own

TOY = '''
"""A toy table: FedAvg and Local on the tiny synthetic federation, all clients and client 0."""
from omnifm_jax.reproduce import Cell, Claim, Reference, Scale, Setting, Table, method
from omnifm_jax.reproduce.settings import TINY_CLS

from ._toy_common import CHANCE

COLUMNS = (("all", "all clients", None), ("c0", "client 0", 0))
CELLS = tuple(Cell(method(n).label, label, method(n).key, key, "default", method(n).overrides, client=client)
              for n in ("FedAvg", "Local") for key, label, client in COLUMNS)
TABLE = Table(
    "toy", "A toy table", ("acc",), CELLS, (Claim("FedAvg beats Local", "acc", "beats", ("fedavg", "all"),
                                                  (("local", "all"),)),),
    scales={"tiny": Scale({"default": (Setting("default", TINY_CLS + ("num_clients=2",), None, "tiny"),)},
                          rounds=1)},
    default_scale="tiny", kind="study",
    references=(Reference("chance", lambda s: {"avg": {"accuracy": CHANCE},
                                               "clients": [{"accuracy": CHANCE}] * s.fed.num_clients}),))
'''


@pytest.fixture
def toy_dir(tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "toy.py").write_text(textwrap.dedent(TOY))
    (folder / "_toy_common.py").write_text("CHANCE = 1 / 6\n")   # a helper file: imported, not a table
    return folder


def test_a_new_table_is_one_file_listed_planned_and_run(toy_dir, tmp_path, capsys):
    assert cli.main(["reproduce", "list", "--tables", str(toy_dir)]) == 0
    listing = capsys.readouterr().out
    assert f"toy: A toy table\n    file: {toy_dir / 'toy.py'}\n" in listing and "table1: " in listing
    assert "_toy_common" not in listing
    out = tmp_path / "toy-out"
    assert cli.main(["reproduce", "toy", "--tables", str(toy_dir), "--only", "fedavg", "--seeds", "0",
                     "--out", str(out), "--quiet"]) == 0
    log = capsys.readouterr().out
    assert "2 cells x 1 seeds at scale 'tiny', 1 compiled program(s)" in log and "[1/1] 1 run(s)" in log
    recs = R.read_csv(out / "toy.csv")
    assert [(r["col_key"], r["rounds"]) for r in recs] == [("all", "1"), ("c0", "1")]   # one run, two columns
    md = (out / "toy.md").read_text()
    assert "| FedAvg | " in md and "| *chance (reference)* | 16.67 | 16.67 |" in md   # no paper columns


def _fake_sweep(calls, fail_on=None):
    """run_sweep without training: accuracy from the seed and the algorithm; counts its calls."""
    def run(cfg, runs, **kw):
        calls.append((cfg["algorithm"], cfg["rounds"], len(runs)))
        if fail_on is not None and len(calls) == fail_on:
            raise KeyboardInterrupt
        out = []
        for run in runs:
            acc = 0.5 + 0.1 * run.get("seed", cfg["seed"]) + (0.2 if cfg["algorithm"] == "fedavg" else 0.0)
            line = {"round": cfg["rounds"], "accuracy": acc, "clients": [{"accuracy": acc + 0.05},
                                                                         {"accuracy": acc - 0.05}]}
            out.append({"best": dict(line), "last": dict(line), "last_clients": line["clients"], "history": [line],
                        "runs_in_program": len(runs)})
        return out
    return run


def test_resume_runs_only_the_cells_that_did_not_finish(toy_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "toy-resume"
    base = ["reproduce", "toy", "--tables", str(toy_dir), "--seeds", "0,1", "--out", str(out), "--quiet"]
    calls = []
    monkeypatch.setattr(sweep, "run_sweep", _fake_sweep(calls, fail_on=2))
    with pytest.raises(KeyboardInterrupt):   # interrupted during the second program (Local)
        cli.main(base)
    cells = out / "toy_cells.jsonl"
    assert [(r["row_key"], r["col_key"], r["seed"]) for r in R.read_jsonl(cells)] == [
        ("fedavg", "all", 0), ("fedavg", "all", 1), ("fedavg", "c0", 0), ("fedavg", "c0", 1)]
    assert not (out / "toy.csv").exists()
    assert cli.main(base[:2] + ["--render-only", "--tables", str(toy_dir), "--out", str(out)]) == 0  # the partial table
    assert "| FedAvg | 75.00 ± 7.07 (2) † |" in (out / "toy.md").read_text()   # one round: not converged
    calls.clear()
    monkeypatch.setattr(sweep, "run_sweep", _fake_sweep(calls))
    assert cli.main(base + ["--resume"]) == 0
    assert calls == [("local", 1, 2)]                                   # only Local ran
    assert "resuming: 4 of 8 (cell, seed) pair(s) finished" in capsys.readouterr().out
    recs = R.read_csv(out / "toy.csv")
    assert len(recs) == 8 and [r["row_key"] for r in recs] == ["fedavg"] * 4 + ["local"] * 4
    assert "FedAvg beats Local: **holds** (+20.00 ± 0.00" in (out / "toy.md").read_text()
    assert "resumed: 4 (cell, seed) pair(s)" in (out / "toy_protocol.md").read_text()
    first_protocol = (out / "toy_protocol.md").read_text()
    calls.clear()
    assert cli.main(base + ["--resume"]) == 0 and calls == []            # nothing left to run
    assert len(R.read_csv(out / "toy.csv")) == 8
    protocol = (out / "toy_protocol.md").read_text()                    # the earlier sitting is kept, below
    earlier = protocol.split("## Earlier sittings\n", 1)[1]
    assert earlier.startswith("\n### Sitting: `") and "#### Data actually used, and why" in earlier
    assert "resumed: 4 (cell, seed)" in first_protocol and "resumed: 4 (cell, seed)" in earlier
    assert "resumed: 8 (cell, seed)" in protocol.split("## Earlier sittings", 1)[0]
    meta = json.loads((out / "toy.json").read_text())
    assert len(meta["commands"]) == 2 and meta["commands"][1] == meta["command"] and "--resume" in meta["command"]
    assert f"Measured with `{meta['commands'][0]}`, then `{meta['command']}`;" in (out / "toy.md").read_text()
    assert cli.main(base[:2] + ["--render-only", "--tables", str(toy_dir), "--out", str(out)]) == 0
    assert f"`, then `{meta['command']}`;" in (out / "toy.md").read_text()   # render keeps the sittings
    assert cli.main(base + ["--resume", "--rounds", "2"]) == 0           # another config: every cell again
    assert "Earlier sittings" not in (out / "toy_protocol.md").read_text()  # no cell of them is left
    assert len(json.loads((out / "toy.json").read_text())["commands"]) == 1
    assert calls == [("fedavg", 2, 2), ("local", 2, 2)] and {r["rounds"] for r in R.read_csv(out / "toy.csv")} == {"2"}
    calls.clear()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert cli.main(base + ["--only", "local"]) == 2                      # neither --resume nor --overwrite
    err = capsys.readouterr().err
    assert "already holds the outputs of an earlier sitting of toy (toy.md, toy.csv" in err and "--overwrite" in err
    assert calls == [] and {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    assert cli.main(base + ["--only", "local", "--overwrite"]) == 0       # a fresh table in place of the old one
    assert calls == [("local", 1, 2)] and len(R.read_csv(out / "toy.csv")) == 4
    assert len(R.read_jsonl(out / "toy_cells.jsonl")) == 4 and "Earlier sittings" not in (out / "toy_protocol.md").read_text()
    capsys.readouterr()
    calls.clear()
    assert cli.main(base + ["--only", "fedavg", "--resume"]) == 0         # another row beside the kept ones
    assert calls == [("fedavg", 1, 2)] and len(R.read_csv(out / "toy.csv")) == 8
    assert ("resuming: 0 of 4 (cell, seed) pair(s) finished in " in (log := capsys.readouterr().out)
            and "are kept; 4 finished pair(s) of other rows, columns or seeds stay in the table" in log)
    assert cli.main(base[:4] + ["--seeds", "2"] + base[6:] + ["--only", "fedavg", "--resume"]) == 0  # a later seed
    md = (out / "toy.md").read_text()
    assert "seeds [0, 1, 2])" in md and json.loads((out / "toy.json").read_text())["seeds"] == [0, 1, 2]
    # the seed added later ran on the split of the first ones, not on a split of its own
    assert {(r["seed"], r["data_seed"]) for r in R.read_csv(out / "toy.csv")} == {("0", "0"), ("1", "0"), ("2", "0")}
    assert "Data split: `data_seed = 0` for every seed and method." in md
    cells = [dict(r, data_seed=1) if r["seed"] == 2 else r for r in R.read_jsonl(out / "toy_cells.jsonl")]
    (out / "toy_cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in cells))   # as if split 1
    capsys.readouterr()
    assert cli.main(base[:4] + ["--seeds", "2"] + base[6:] + ["--only", "fedavg", "--resume", "--dry-run"]) == 0
    assert ("2 finished (cell, seed) pair(s) ran on another data split (data_seed 1) and run again, on data_seed 0"
            in capsys.readouterr().out)
    assert R.render("toy", out, tables=[toy_dir]) == md                  # the re-render is the same table


def test_each_program_says_how_long_the_rest_will_take_at_the_pace_so_far(toy_dir, tmp_path, monkeypatch, capsys):
    from omnifm_jax.reproduce.execution import time_left

    assert time_left(20.0, 10, 30, 3) == "; ~60 s left for 3 program(s) at this sitting's pace"
    assert time_left(600.0, 10, 100, 1) == "; ~1.7 h left for 1 program(s) at this sitting's pace"   # 6,000 s
    assert time_left(120.0, 4, 10, 2) == "; ~5 min left for 2 program(s) at this sitting's pace"     # 300 s
    assert time_left(50.0, 10, 0, 0) == ""
    calls = []
    monkeypatch.setattr(sweep, "run_sweep", _fake_sweep(calls))
    assert cli.main(["reproduce", "toy", "--tables", str(toy_dir), "--seeds", "0", "--out", str(tmp_path / "p"),
                     "--quiet"]) == 0
    done = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("done in")]
    assert len(done) == len(calls) == 2
    assert "left for 1 program(s) at this sitting's pace" in done[0] and "left" not in done[1]


def test_a_second_sitting_of_a_table_on_one_folder_is_refused_while_the_first_runs(toy_dir, tmp_path, monkeypatch,
                                                                                   capsys):
    """Another table may share the folder; the same table may not, even with --resume, until the
    first sitting ends (its lock goes with it, however it ends)."""
    out = tmp_path / "shared"
    base = ["reproduce", "toy", "--tables", str(toy_dir), "--seeds", "0", "--out", str(out), "--quiet"]
    calls = []
    monkeypatch.setattr(sweep, "run_sweep", _fake_sweep(calls))
    with R.table_claim("toy", out) as first:
        assert cli.main(base + ["--resume"]) == 2
        assert f"--out {out} is in use by run pid {os.getpid()}" in capsys.readouterr().err
        assert calls == [] and not (out / "toy_cells.jsonl").exists()
        with R.table_claim("other", out):                                 # another table's claim: no conflict
            pass
    assert first._fd is None                                              # released on leaving the block
    assert cli.main(base) == 0 and len(R.read_csv(out / "toy.csv")) == 4


# ----------------------------------------------------------------------------- end to end

def test_tiny_table8_end_to_end(tmp_path, capsys):
    out = tmp_path / "t8"
    rc = cli.main(["reproduce", "table8", "--scale", "tiny", "--only", "omnifm,w/o SPAlign", "--cols", "CLS",
                   "--seeds", "0,1", "--rounds", "1", "--set", "num_clients=2", "--out", str(out), "--quiet"])
    assert rc == 0
    log = capsys.readouterr().out
    assert "1 compiled program(s)" in log and "[1/1] 4 run(s)" in log
    for name in ("table8.md", "table8.csv", "table8.png", "table8.json", "table8_protocol.md", "table8_cells.jsonl"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    recs = R.read_csv(out / "table8.csv")
    assert len(recs) == 4 and {r["seed"] for r in recs} == {"0", "1"} and len(R.read_jsonl(out / "table8_cells.jsonl")) == 4
    assert all(r["dataset"] == "synthetic" and r["program_mode"] == "sweep" and r["runs_in_program"] == "4"
               for r in recs)
    md = (out / "table8.md").read_text()
    for row, key in (("OmniFM", "omnifm"), ("w/o SPAlign", "no_spalign")):
        vals = [float(r["acc_best"]) for r in recs if r["row_key"] == key]
        mean, std, n = R.mean_std(vals)
        line = next(l for l in md.splitlines() if l.startswith(f"| {row} |"))
        assert line.split(" | ")[1] == R.format_measured(mean, std, n, 2) + " †"   # 1 round: not converged
        assert re.search(rf"\| {re.escape(f'{mean:.2f}')} ± [0-9.]+ \(2\) † \|", line)
    assert {r["converged"] for r in recs} == {"False"} and all(
        r["converged"] is False for r in R.read_jsonl(out / "table8_cells.jsonl"))
    assert ("† Not converged (the run had not plateaued; a longer run may change the value): OmniFM / CLS (Acc %): "
            "2 of 2 seeds; w/o SPAlign / CLS (Acc %): 2 of 2 seeds. Rule: converged = the best-so-far Acc (%) changed "
            "by less than 1 point over the last 10 evaluated rounds (at least 11 evaluated rounds).") in md
    protocol = (out / "table8_protocol.md").read_text()
    assert "omnifm reproduce table8 --scale tiny" in protocol and "CpuDevice" in protocol
    assert "data_seed = 0" in protocol and "best round" in protocol
    assert "extra overrides for every cell: `num_clients=2`" in protocol
    assert "backbone='cnn'" in protocol and "weight_init='pytorch'" in protocol  # auto, resolved per run
    assert cli.main(["reproduce", "table8", "--render-only", "--eval", "last", "--out", str(out)]) == 0
    assert "Evaluation: last round." in (out / "table8.md").read_text()


def test_committed_results_render_as_they_were_written(tmp_path):
    """The results under experiments/results/reproduce/ re-render to the same markdown."""
    import shutil

    for folder in sorted((ROOT / "experiments" / "results" / "reproduce").iterdir()):
        copy = tmp_path / folder.name
        shutil.copytree(folder, copy)
        R.render(folder.name, copy)
        assert (copy / f"{folder.name}.md").read_text() == (folder / f"{folder.name}.md").read_text(), folder.name


TOY_FT = '''
"""A toy fine-tuning table: FedPer from scratch and from a two-stage chain of pretrained models."""
from omnifm_jax.reproduce import Cell, Pretrain, Scale, Setting, Table
from omnifm_jax.reproduce.settings import TINY_CLS

BASE = Pretrain("base", "default", ("algorithm=fedavg",), rounds=1, note="a tiny pretraining")
STAGE = Pretrain("stage", "default", ("algorithm=fedavg", "init_from=pretrained:base"), rounds=1, note="stage 2")
CELLS = (Cell("FedPer", "fine-tuned", "fedper", "ft", "default",
              ("algorithm=fedper", "init_from=pretrained:stage", 'init_params=["params/backbone/"]')),
         Cell("FedPer", "scratch", "fedper", "scratch", "default", ("algorithm=fedper",)))
TABLE = Table("toyft", "A toy fine-tuning table", ("acc",), CELLS,
              scales={"tiny": Scale({"default": (Setting("default", TINY_CLS + ("num_clients=2",), None, "tiny"),)},
                                    rounds=1)},
              default_scale="tiny", kind="study", pretrain=(BASE, STAGE))
'''


def test_pretrained_models_run_first_in_order_and_are_kept_across_sittings(tmp_path, capsys):
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / "toyft.py").write_text(textwrap.dedent(TOY_FT))
    out = tmp_path / "out"
    base = ["reproduce", "toyft", "--tables", str(folder), "--seeds", "0", "--out", str(out), "--quiet"]
    assert cli.main(base + ["--dry-run"]) == 0
    log = capsys.readouterr().out
    assert f"pretrain base (1 rounds, seed 0) -> {out / 'pretrained' / 'base'}: a tiny pretraining [absent]" in log
    assert "plus 2 pretraining run(s)" in log and not (out / "pretrained").exists()   # a dry run trains nothing
    with pytest.warns(UserWarning, match="training images"):   # the toy pretrains on the cells' own training split
        assert cli.main(base) == 0
    log = capsys.readouterr().out
    assert log.index("pretrain base: fedavg") < log.index("pretrain stage: fedavg") < log.index("[1/")
    stage_cfg = json.loads((out / "pretrained" / "stage" / "config.json").read_text())
    assert stage_cfg["init_from"] == str(out / "pretrained" / "base") and stage_cfg["checkpoint_every"] == 1
    ft = next(r for r in R.read_jsonl(out / "toyft_cells.jsonl") if r["col_key"] == "ft")
    assert "init_from=pretrained:stage" in ft["overrides"] and ft["acc_best"] is not None
    assert cli.main(base + ["--resume"]) == 0   # every cell kept: no pretrained model is needed or checked
    log = capsys.readouterr().out
    assert "pretrain base" not in log and "pretrain stage" not in log
    assert "pretrained model `stage` (stage 2)" in (out / "toyft_protocol.md").read_text()   # still described

    def forget_ft():   # as if the fine-tuned cell had not finished: it runs again on --resume
        cells = out / "toyft_cells.jsonl"
        cells.write_text("".join(json.dumps(r) + "\n" for r in R.read_jsonl(cells) if r["col_key"] != "ft"))

    forget_ft()
    with pytest.warns(UserWarning, match="training images"):
        assert cli.main(base + ["--resume"]) == 0
    log = capsys.readouterr().out
    assert "pretrain base: kept" in log and "pretrain stage: kept" in log
    other = tmp_path / "other"
    (other / "pretrained" / "base").mkdir(parents=True)
    (other / "pretrained" / "base" / "notes.txt").write_text("someone else's")
    assert cli.main(base[:-3] + ["--out", str(other), "--quiet"]) == 2
    assert "holds another run (or files that are not a run)" in capsys.readouterr().err
    (out / "pretrained" / "stage" / "summary.json").unlink()   # as if interrupted: it runs again
    forget_ft()
    with pytest.warns(UserWarning, match="training images"):
        assert cli.main(base + ["--resume"]) == 0
    log = capsys.readouterr().out
    assert "pretrain base: kept" in log and "pretrain stage: fedavg on synthetic, 1 rounds" in log
    assert "(again: interrupted before)" in log and (out / "pretrained" / "stage" / "summary.json").is_file()
    # The table's files without _cells.jsonl or pretrained/ (as committed), in another folder:
    # --resume keeps every cell from <table>.json (the fine-tuned cell's hash names its
    # pretrained model by key, not by path) and writes the records into a new _cells.jsonl.
    moved = tmp_path / "committed"
    moved.mkdir()
    for f in R.output_files("toyft", out)[:5]:
        (moved / f.name).write_bytes(f.read_bytes())
    assert cli.main(base[:-3] + ["--out", str(moved), "--resume", "--quiet"]) == 0
    log = capsys.readouterr().out
    assert "resuming: 2 of 2 (cell, seed) pair(s)" in log and "pretrain base" not in log and "pretrain stage" not in log
    assert not (moved / "pretrained").exists() and len(R.read_jsonl(moved / "toyft_cells.jsonl")) == 2
    (moved / "toyft_cells.jsonl").unlink()
    (moved / "toyft.json").write_text("{not json")
    assert cli.main(base[:-3] + ["--out", str(moved), "--resume", "--quiet"]) == 2
    assert f"cannot resume from {moved / 'toyft.json'}" in capsys.readouterr().err
    broken = R.Table("t", "t", ("acc",), (R.Cell("A", "B", "a", "b", "default", ("init_from=pretrained:nope",)),))
    with pytest.raises(ValueError, match="starts from pretrain 'nope', which the table does not define"):
        broken.check()


def test_a_config_hash_names_the_tables_pretrained_models_by_key_and_other_paths_by_path(tmp_path):
    from omnifm_jax.reproduce.plan import config_sha

    cfg = config_lib.load_config()
    here, there = tmp_path / "a" / "pretrained", tmp_path / "b" / "pretrained"
    assert config_sha(dict(cfg, init_from=str(here / "base")), here) == \
        config_sha(dict(cfg, init_from=str(there / "base")), there)          # the same pretrained model
    assert config_sha(dict(cfg, init_from=str(here / "base")), here) != \
        config_sha(dict(cfg, init_from=str(here / "stage")), here)           # another one
    assert config_sha(dict(cfg, init_from=str(tmp_path / "mine")), here) != \
        config_sha(dict(cfg, init_from=str(tmp_path / "yours")), here)       # a user's own source: its path
    assert config_sha(dict(cfg, init_from=str(here / "base"))) != \
        config_sha(dict(cfg, init_from=str(there / "base")))                 # no table folder given: paths


@pytest.mark.real_data
@pytest.mark.optimized  # a real4 round of 20 clients: tests/conftest.py
def test_a_cpu_scale_cell_stopped_early_is_marked_not_converged(real_data_dir, tmp_path):
    """One Table-1 cell at the cpu scale (real4, 20 clients), stopped after 1 of its 60 rounds:
    the table marks it, and says by which rule."""
    out = tmp_path / "t1"
    assert cli.main(["reproduce", "table1", "--scale", "cpu", "--only", "fedavg", "--cols", "s1-20", "--seeds", "0",
                     "--rounds", "1", "--out", str(out), "--quiet"]) == 0
    (rec,) = R.read_csv(out / "table1.csv")
    assert rec["converged"] == "False" and rec["rounds"] == "1" and rec["dataset"] == "real4"
    md = (out / "table1.md").read_text()
    line = next(l for l in md.splitlines() if l.startswith("| FedAvg |"))
    assert line.split(" | ")[1].endswith("(1) †")
    assert "† Not converged" in md and "FedAvg / Scenario 1 (Hard), 20%: 1 of 1 seed" in md
    assert "over the last 10 evaluated rounds" in md


def test_the_readme_counts_the_marked_cells_of_the_committed_tables():
    """The front page's count of cells still rising (any seed marked not converged: the cells
    each table's footnote marks, :func:`R.unconverged`) is what the committed records hold, for
    every committed table and no other."""
    readme = (ROOT / "README.md").read_text()
    line = re.search(r"still rising in some seed:.*?Fig\.\s+5\s+\d+\s+of\s+\d+", readme, re.S)
    assert line, "the README's claims section lost its count of marked cells"
    said = {f"{'fig' if kind == 'Fig.' else 'table'}{num}": (int(a), int(b))
            for kind, num, a, b in re.findall(r"(Table|Fig\.)\s+(\d+)\s+(\d+)\s+of\s+(\d+)", line.group(0))}
    counted = {}
    for folder in sorted((ROOT / "experiments" / "results" / "reproduce").iterdir()):
        records = json.loads((folder / f"{folder.name}.json").read_text())["records"]
        counted[folder.name] = (len(R.unconverged(records)), len({(r["row_key"], r["col_key"]) for r in records}))
    assert said == counted
