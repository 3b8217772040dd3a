"""omnifm_jax.reproduce: table definitions, paper numbers, verdicts, writers, one tiny run."""
from __future__ import annotations

import math
import re
import types
from pathlib import Path

import pytest

from omnifm_jax import cli
from omnifm_jax import reproduce as R
from omnifm_jax.checks import ConfigError

PAPER_TEXT = Path(__file__).resolve().parents[2] / "shared" / "papers" / "omnifm.txt"
FLOAT = re.compile(r"\d+\.\d+")


# ----------------------------------------------------------------------------- definitions

def test_every_cell_has_a_paper_number_and_every_claim_names_cells():
    for name, table in R.TABLES.items():
        keys = {(c.row_key, c.col_key) for c in table.cells}
        assert len(keys) == len(table.cells), f"{name}: duplicate (row, col) keys"
        for cell in table.cells:
            assert set(cell.paper) <= set(table.metrics), (name, cell)
            numbers = [v for v in cell.paper.values() if v is not None]
            if table.paper_has_numbers:
                assert numbers and all(math.isfinite(v) for v in numbers), f"{name} {cell.row}/{cell.col}: no number"
            else:
                assert not numbers and R.PAPER[name] is None   # a figure: the text gives none
        for claim in table.claims:
            named = ([claim.winner] + list(claim.others) if claim.kind == "beats"
                     else [(r, k) for _, r, k in claim.terms])
            assert named and all(n in keys for n in named), (name, claim.text)
            assert claim.metric in table.metrics


def test_table_shapes_match_the_paper():
    t = R.TABLES
    assert len(t["table1"].cells) == 10 * 9 and {c.row for c in t["table1"].cells} == set(R.PAPER["table1"])
    assert len(t["table2"].cells) == 3 * 2 * 5
    assert [r for r, _ in t["table8"].rows] == ["omnifm", "no_gskr", "no_eca", "no_psp", "no_spalign"]
    cell = next(c for c in t["table1"].cells if c.row == "OmniFM" and c.col_key == "s1-20")
    assert cell.paper == {"acc": 96.85, "f1": 0.589} and "participation=0.2" in cell.overrides
    assert next(c for c in t["table8"].cells if c.row_key == "no_gskr" and c.col_key == "CLS").paper["acc"] == 95.82


def _section(text: str, start: str, end: str) -> list[str]:
    lines = text[text.index(start):text.index(end, text.index(start))].splitlines()
    return [" ".join(l.split()) for l in lines]   # the text has non-breaking spaces


@pytest.mark.skipif(not PAPER_TEXT.is_file(), reason=f"{PAPER_TEXT} not found")
def test_paper_numbers_are_transcribed_from_the_text():
    text = PAPER_TEXT.read_text()
    lines = _section(text, "Table 1:", "Table 2:")
    for method, groups in R.PAPER["table1"].items():
        line = next(l for l in lines if l.startswith(method + " "))
        assert [float(x) for x in FLOAT.findall(line)] == [v for g in groups for v in g], method
    lines = _section(text, "Table 2:", "3.3 Global")
    avg = [l for l in lines if l.startswith("Avg.")] + [l for l in lines if l.startswith("Average")]
    for line, key in zip(avg, ("x2", "x4", "x8", "Average")):
        assert tuple(float(x) for x in FLOAT.findall(line)) == R.PAPER["table2"][key], key
    lines = _section(text, "Table 6:", "4.5 Multi-modal")
    for method, numbers in R.PAPER["table6"].items():
        line = next(l for l in lines if l.startswith(method + " "))
        assert tuple(float(x) for x in FLOAT.findall(line)) == numbers, method
    lines = [l for l in _section(text, "Table 7:", "4.6 Framework") if len(FLOAT.findall(l)) == 6]
    expected = [v for metric in ("VIF", "SSIM", "L1") for client in ("CT-MRI", "PET-MRI", "SPECT-MRI", "Avg")
                for v in R.PAPER["table7"][metric][client]]
    assert [float(x) for l in lines for x in FLOAT.findall(l)] == expected
    lines = [l.strip() for l in _section(text, "Table 8:", "5 Conclusion")]
    for variant, numbers in R.PAPER["table8"].items():
        line = next(l for l in lines if l.startswith(variant + " "))
        assert tuple(float(x) for x in FLOAT.findall(line)) == numbers, variant


def test_every_cell_config_loads_and_validates():
    """Every cell of every table at the smoke and paper scales: a config that loads and validates
    (or, where its data are not on this machine, an error naming the missing files)."""
    for scale in ("smoke", "paper"):
        for name, table in R.TABLES.items():
            try:
                plan = R.build_plan(name, scale=scale, seeds=(0,), rows=[k for k, _ in table.rows],
                                    cols=[k for k, _ in table.cols])
            except ConfigError as exc:
                assert "needs data that are not here" in str(exc), (scale, name, str(exc))
                continue
            assert len(plan.cells) == len(table.cells)
            for pc in plan.cells:
                assert pc.configs[0]["checkpoint_every"] == 0 and pc.configs[0]["data_seed"] == 0


def test_smoke_defaults_are_a_subset_and_shrink_the_rounds():
    plan = R.build_plan("table1", scale="smoke", seeds=(0, 1, 2))
    assert {pc.cell.row_key for pc in plan.cells} == set(R.TABLES["table1"].smoke_rows)
    assert all(cfg["rounds"] == R.TABLES["table1"].smoke_rounds and cfg["num_clients"] == 5
               for pc in plan.cells for cfg in pc.configs)
    assert R.build_plan("table1", scale="paper", seeds=(0,), rows=["omnifm"], cols=["s1-20"]).cells[0].configs[0][
        "rounds"] == 100


def test_seeds_and_shape_free_values_share_one_program():
    plan = R.build_plan("table8", scale="tiny", seeds=(0, 1, 2), rows=["omnifm", "no_spalign", "no_eca"], cols=["CLS"])
    sizes = sorted(len(p.runs) for p in plan.programs)
    assert sizes == [3, 6]                       # OmniFM + w/o SPAlign (lambda 0.1 / 0) x 3 seeds; w/o ECA x 3
    assert all(p.mode == "sweep" for p in plan.programs)
    fig5 = R.build_plan("fig5", scale="tiny", seeds=(0, 1), cols=["CLS"])
    runs = sum(len(p.runs) for p in fig5.programs)
    assert runs == (5 + 4 - 1) * 2                # lambda=0.1 and k=2 are one config: run once
    assert len(fig5.programs) == 4                # all lambdas in one program; k = 1, 3, 4 apart


def test_without_sweep_module_every_config_is_its_own_program(monkeypatch):
    monkeypatch.setattr(R, "_import_sweep", lambda: None)
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

    monkeypatch.setattr(R, "_import_sweep", lambda: types.SimpleNamespace(run_sweep=refuse))
    monkeypatch.setattr(experiment, "run", fake_run)
    logs = []
    results = R.execute(plan, log=logs.append)
    assert len(fake_runs) == 4 and "separate programs" in " ".join(logs)
    assert plan.programs[0].mode.startswith("separate: run_sweep refused")
    recs = R.records_from(plan, results)
    assert {(r["row_key"], r["seed"]): round(r["acc_best"], 6) for r in recs} == {
        ("omnifm", 0): 40.0, ("omnifm", 1): 50.0, ("no_spalign", 0): 50.0, ("no_spalign", 1): 60.0}
    assert all(r["runs_in_program"] == 1 and "state" not in results[k] for k in results for r in recs)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, message", [
    (dict(table="table9"), "unknown table 'table9'"),
    (dict(table="table8", rows=["w/o nothing"]), "unknown row 'w/o nothing'"),
    (dict(table="table8", cols=["VQA-T1"]), "unknown column 'VQA-T1'"),
    (dict(table="table8", scale="huge"), "unknown scale 'huge'"),
    (dict(table="table8", seeds=(0, 0)), "seeds must be distinct"),
    (dict(table="table8", rule="median"), "evaluation rule"),
    (dict(table="table8", cols=["CLS"], overrides=["lr=0"]), "table8 cell (OmniFM, CLS (Acc %)): lr must be"),
    (dict(table="table1", cols=["s1-20"], overrides=["algorithm_kwargs.top_k=99"]), "table1 cell (FedAvg"),
])
def test_bad_input_is_refused_before_any_work(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        R.build_plan(**{"scale": "tiny", **kwargs})


def test_cli_reports_errors_and_unavailable_tasks(capsys, monkeypatch):
    assert cli.main(["reproduce", "table9"]) == 2
    assert "unknown table 'table9'; tables: table1, table2, table8, fig5, table6, table7" in capsys.readouterr().err
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


# ----------------------------------------------------------------------------- verdicts

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
                rec[f"{m}_paper"] = c.paper.get(m)
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
                                 ("moon", "avg"): {"l1": [0.15, 0.16]}})
    l1 = next(c for c in R.evaluate_claims(R.TABLES["table7"], fusion) if c["metric"] == "l1")
    assert l1["vs"] == "MOON" and l1["margin"] == pytest.approx(0.05) and l1["verdict"] == "holds"
    assert l1["paper_margin"] == pytest.approx(0.147 - 0.145)   # the paper's best of FedAvg / MOON is FedAvg


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
    assert "Not run here (12 of 15 cells" in md and "## Dice" not in md
    R.write_plot(R.TABLES["table8"], back, tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 1000
    single = R.markdown(R.TABLES["table8"], _records("table8", {("omnifm", "CLS"): {"acc": [61.0]}}))
    assert "| OmniFM | 61.00 (1) |" in single


# ----------------------------------------------------------------------------- end to end

def test_tiny_table8_end_to_end(tmp_path, capsys):
    out = tmp_path / "t8"
    rc = cli.main(["reproduce", "table8", "--scale", "tiny", "--only", "omnifm,w/o SPAlign", "--cols", "CLS",
                   "--seeds", "0,1", "--rounds", "1", "--set", "num_clients=2", "--out", str(out), "--quiet"])
    assert rc == 0
    log = capsys.readouterr().out
    assert "1 compiled program(s)" in log and "[1/1] 4 run(s)" in log
    for name in ("table8.md", "table8.csv", "table8.png", "table8.json", "table8_protocol.md"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    recs = R.read_csv(out / "table8.csv")
    assert len(recs) == 4 and {r["seed"] for r in recs} == {"0", "1"}
    assert all(r["dataset"] == "synthetic" and r["program_mode"] == "sweep" and r["runs_in_program"] == "4"
               for r in recs)
    md = (out / "table8.md").read_text()
    for row, key in (("OmniFM", "omnifm"), ("w/o SPAlign", "no_spalign")):
        vals = [float(r["acc_best"]) for r in recs if r["row_key"] == key]
        mean, std, n = R._mean_std(vals)
        line = next(l for l in md.splitlines() if l.startswith(f"| {row} |"))
        assert line.split(" | ")[1] == R.format_measured(mean, std, n, 2)
        assert re.search(rf"\| {re.escape(f'{mean:.2f}')} ± [0-9.]+ \(2\) \|", line)
    protocol = (out / "table8_protocol.md").read_text()
    assert "omnifm reproduce table8 --scale tiny" in protocol and "CpuDevice" in protocol
    assert "data_seed = 0" in protocol and "best round" in protocol
    assert "extra overrides for every cell: `num_clients=2`" in protocol
    assert cli.main(["reproduce", "table8", "--render-only", "--eval", "last", "--out", str(out)]) == 0
    assert "Evaluation: last round." in (out / "table8.md").read_text()


def test_small_margins_keep_two_significant_digits():
    recs = _records("table8", {("omnifm", "SR"): {"psnr": [26.650, 26.652, 26.655]},
                               ("no_psp", "SR"): {"psnr": [26.648, 26.651, 26.650]}})
    md = R.markdown(R.TABLES["table8"], recs)
    assert "removing PSP lowers SR (PSNR dB, ×4): **holds weakly** (+0.0027 ± 0.0021 vs w/o PSP" in md
    assert R._fmt(-0.0001, 2, sign=True) == "+0.00"    # no "-0.00"
