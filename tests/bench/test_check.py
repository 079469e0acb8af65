"""The regression gate: pin, then check passes on identical records, fails on a worse NLL or more NFE
beyond tolerance, reports missing runs (exit 2); tolerances from defaults, the suite and the CLI."""

from __future__ import annotations

import shutil
import textwrap

import pandas as pd
import pytest
from report_records import write_run

from bench import check
from bench.cli import main
from bench.errors import FlowbenchError


def _sweep(results, nll_shift=0.0, nfe_factor=1.0, skip=(), suite="c"):
    for model, nfe in (("realnvp", 0.0), ("ffjord", 100.0)):
        for dataset in ("moons", "rings"):
            if (model, dataset) in skip:
                continue
            for seed in range(3):
                value = {"moons": 1.0, "rings": 2.0}[dataset] + 0.01 * seed + nll_shift
                write_run(results, suite, model, dataset, seed, value, nfe=(nfe * nfe_factor + seed) if nfe else 0.0,
                          seconds=60.0)


@pytest.fixture
def pinned(results, tmp_path):
    _sweep(results)
    folder = tmp_path / "pinned"
    assert main(["pin", "c", "--results", str(results), "--pinned", str(folder)]) == 0
    return folder


def test_pin_writes_headline_and_nfe_with_seed_spread(pinned):
    table = pd.read_csv(pinned / "c.csv")
    assert list(table.columns) == check.PIN_COLUMNS
    row = table[(table.model == "realnvp") & (table.dataset == "rings") & (table.quantity == "nll")].iloc[0]
    assert row["mean"] == pytest.approx(2.01) and row["std"] == pytest.approx(0.01) and row["n"] == 3
    assert row["min"] == pytest.approx(2.0) and row["max"] == pytest.approx(2.02) and row["seeds"] == "0 1 2"
    ffjord = set(table[table.model == "ffjord"]["quantity"])
    assert {"nll", "nfe_forward", "nfe_backward", "nfe_test", "train_seconds"} <= ffjord
    assert not any(table[table.model == "realnvp"]["quantity"].str.startswith("nfe"))  # no NFE: not pinned


def test_identical_records_pass(pinned, results, capsys):
    assert main(["check", "c", "--results", str(results), "--pinned", str(pinned)]) == 0
    assert "check: OK" in capsys.readouterr().out


def test_worse_nll_beyond_tolerance_fails(pinned, tmp_path, capsys):
    worse = tmp_path / "worse"
    _sweep(worse, nll_shift=0.08)  # default tolerance 0.05 nats
    assert main(["check", "c", "--results", str(worse), "--pinned", str(pinned)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED" in out and "check: REGRESSION" in out and "+0.08" in out
    assert main(["check", "c", "--results", str(worse), "--pinned", str(pinned), "--tolerance", "nll=0.1"]) == 0
    within = tmp_path / "within"
    _sweep(within, nll_shift=0.03)
    assert main(["check", "c", "--results", str(within), "--pinned", str(pinned)]) == 0
    better = tmp_path / "better"
    _sweep(better, nll_shift=-0.2)
    assert main(["check", "c", "--results", str(better), "--pinned", str(pinned)]) == 0
    assert "improved" in capsys.readouterr().out


def test_raised_nfe_beyond_relative_tolerance_fails(pinned, tmp_path, capsys):
    more = tmp_path / "more"
    _sweep(more, nfe_factor=1.2)  # +20% > the default 10%
    assert main(["check", "c", "--results", str(more), "--pinned", str(pinned)]) == 1
    out = capsys.readouterr().out
    assert "nfe_forward" in out and "+19.8%" in out and "±10%" in out
    assert main(["check", "c", "--results", str(more), "--pinned", str(pinned), "--tolerance", "nfe=25%"]) == 0
    little = tmp_path / "little"
    _sweep(little, nfe_factor=1.05)
    assert main(["check", "c", "--results", str(little), "--pinned", str(pinned)]) == 0


def test_missing_records_exit_2(pinned, tmp_path, capsys):
    partial = tmp_path / "partial"
    _sweep(partial, skip={("ffjord", "rings")})
    assert main(["check", "c", "--results", str(partial), "--pinned", str(pinned)]) == 2
    out = capsys.readouterr().out
    assert "missing records for 1 pinned (model, dataset): ffjord/rings" in out and "MISSING RECORDS" in out
    assert main(["check", "nothing", "--results", str(partial), "--pinned", str(pinned)]) == 2
    assert "no pinned numbers" in capsys.readouterr().err


def test_suite_check_mapping_sets_tolerances(write_suite, results, tmp_path):
    path = write_suite(textwrap.dedent("""
        datasets: [moons, rings]
        models: [realnvp]
        seeds: [0, 1, 2]
        train: {max_steps: 10}
        check: {tolerances: {nll: 0.5}, nfe: 0.3}
    """), name="c")
    _sweep(results, skip={("ffjord", "moons"), ("ffjord", "rings")})
    folder = tmp_path / "pinned"
    assert main(["pin", str(path), "--results", str(results), "--pinned", str(folder)]) == 0
    worse = tmp_path / "worse"
    _sweep(worse, nll_shift=0.3, skip={("ffjord", "moons"), ("ffjord", "rings")})
    shutil.rmtree(results)
    assert main(["check", str(path), "--results", str(worse), "--pinned", str(folder)]) == 0  # 0.3 < 0.5
    assert main(["check", str(path), "--results", str(worse), "--pinned", str(folder), "--tolerance", "nll=0.2"]) == 1


def test_tolerance_rules():
    assert check.tolerance_for("nll", {}) == ("abs", 0.05)
    assert check.tolerance_for("bpd", {}) == ("abs", 0.01)
    assert check.tolerance_for("nfe_backward", {"nfe": 0.2}) == ("rel", 0.2)
    assert check.tolerance_for("nfe_backward", {"nfe": 0.2, "nfe_backward": 0.5}) == ("rel", 0.5)
    assert check.tolerance_for("train_seconds", {"time": 0.3}) == ("rel", 0.3)
    assert check.parse_tolerances(["nfe=15%", "nll=0.1"]) == {"nfe": 0.15, "nll": 0.1}
    assert check.suite_tolerances({"tolerances": {"bpd": 0.02}, "nll": 0.1}) == {"bpd": 0.02, "nll": 0.1}
    with pytest.raises(FlowbenchError, match="METRIC=NUMBER"):
        check.parse_tolerances(["nll"])


def test_smoke_suite_reproduces_its_pinned_numbers(tmp_path, capsys):
    """The project's CI gate: `flowbench run smoke` then `flowbench check smoke` against the committed
    baselines/pinned/smoke.csv (NLL within 0.05 nats, NFE within 20%, time within 4x)."""
    from bench.check import PINNED_DIR

    assert (PINNED_DIR / "smoke.csv").exists(), "baselines/pinned/smoke.csv is committed"
    results = str(tmp_path / "results")
    assert main(["run", "smoke", "--results", results, "--quiet", "--no-report"]) == 0
    code = main(["check", "smoke", "--results", results])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "check: OK" in out
