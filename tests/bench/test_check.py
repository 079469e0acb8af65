"""The regression gate: pin, then check passes on identical records, fails on a worse NLL or more NFE
beyond tolerance, reports missing runs (exit 2); tolerances from defaults, the suite and the CLI."""

from __future__ import annotations

import json
import re
import shutil
import statistics
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


@pytest.mark.slow
def test_smoke_suite_reproduces_its_pinned_numbers(tmp_path, capsys):
    """The project's CI gate: `flowbench run smoke` then `flowbench check smoke` against the committed
    baselines/pinned/smoke.csv, paired by seed: the same code gives the same numbers (`=`) on every
    metric and NFE; time is within its tolerance where the pins' host class is this one."""
    from bench.check import PINNED_DIR

    assert (PINNED_DIR / "smoke.csv").exists(), "baselines/pinned/smoke.csv is committed"
    results = str(tmp_path / "results")
    assert main(["run", "smoke", "--results", results, "--quiet", "--no-report"]) == 0
    code = main(["check", "smoke", "--results", results, "--history", str(tmp_path / "history.jsonl"), "-v"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "check: OK" in out
    rows = [line for line in out.splitlines() if line.startswith("  ") and "paired on 1 seed(s)" in line]
    assert len(rows) >= 48 and all("train_seconds" in line or line.rstrip().endswith(" =") for line in rows), out


def _spread(results, shift=0.0, spread=0.1, seeds=3, suite="n", first_seed=0):
    """realnvp on moons: seeds at 1 + shift + spread x (-1, 0, 1, ...): sample std = spread."""
    offsets = [-1.0, 0.0, 1.0, 0.0, -1.0, 1.0][:seeds] if seeds > 1 else [0.0]
    for seed, off in enumerate(offsets, start=first_seed):
        write_run(results, suite, "realnvp", "moons", seed, 1.0 + shift + spread * off, seconds=60.0)


def test_the_same_seeds_are_paired_and_any_shift_beyond_tolerance_regresses(tmp_path, capsys):
    _spread(tmp_path / "base")
    pinned = tmp_path / "pinned"
    assert main(["pin", "n", "--results", str(tmp_path / "base"), "--pinned", str(pinned)]) == 0
    _spread(tmp_path / "shifted", shift=0.08)  # within the seeds' spread, but the same seeds: paired
    capsys.readouterr()
    assert main(["check", "n", "--results", str(tmp_path / "shifted"), "--pinned", str(pinned)]) == 1
    out = capsys.readouterr().out
    assert "paired on 3 seed(s): mean shift +0.080 vs ±0.05" in out and "REGRESSED" in out
    _spread(tmp_path / "same")
    assert main(["check", "n", "--results", str(tmp_path / "same"), "--pinned", str(pinned), "-v"]) == 0
    out = capsys.readouterr().out
    assert "paired on 3 seed(s): identical" in out and "check: OK" in out and "2 equal" in out


def test_other_seeds_are_judged_by_bounds_and_say_what_would_settle_them(tmp_path, capsys):
    _spread(tmp_path / "base", spread=0.01)
    pinned = tmp_path / "pinned"
    assert main(["pin", "n", "--results", str(tmp_path / "base"), "--pinned", str(pinned)]) == 0
    capsys.readouterr()
    for shift, code, said in ((0.04, 3, r"95% bounds \[\+0\.023, \+0\.057\] straddle \+0\.05: \d+ seeds a side would settle"),
                              (0.1, 1, r"95% bounds \[\+0\.083, \+0\.117\]: lower bound above \+0\.05 +REGRESSED"),
                              (0.0, 0, r"95% bounds \[-0\.017, \+0\.017\]: upper bound at or below \+0\.05 +ok")):
        current = tmp_path / f"shift{shift}"
        _spread(current, shift=shift, spread=0.01, first_seed=10)  # other seeds than the pinned ones
        assert main(["check", "n", "--results", str(current), "--pinned", str(pinned), "-v"]) == code
        out = capsys.readouterr().out
        assert re.search(said, out), out
    assert "check: OK" in out and "decided by: 0 paired by seed, 1 by 95% one-sided bounds" in out
    _spread(tmp_path / "wide", shift=0.0, spread=0.1, first_seed=10)  # a wide spread cannot show an all-clear
    assert main(["check", "n", "--results", str(tmp_path / "wide"), "--pinned", str(pinned)]) == 3
    assert "check: INCONCLUSIVE" in capsys.readouterr().out


def test_one_seed_a_side_is_the_tolerance_alone_and_never_a_regression(tmp_path, capsys):
    _spread(tmp_path / "base", seeds=1)
    pinned = tmp_path / "pinned"
    main(["pin", "n", "--results", str(tmp_path / "base"), "--pinned", str(pinned)])
    _spread(tmp_path / "cur", shift=0.08, seeds=1, first_seed=5)  # another seed: no spread to judge it by
    capsys.readouterr()
    assert main(["check", "n", "--results", str(tmp_path / "cur"), "--pinned", str(pinned)]) == 3
    out = capsys.readouterr().out
    assert "tolerance alone (one seed a side): beyond ±0.05, no bound to decide" in out
    _spread(tmp_path / "near", shift=0.02, seeds=1, first_seed=5)
    assert main(["check", "n", "--results", str(tmp_path / "near"), "--pinned", str(pinned), "-v"]) == 0
    assert "tolerance alone (one seed a side): within ±0.05" in capsys.readouterr().out


def test_welch_p_values_against_scipy():
    from bench.stats import standard_error, t_sf, welch

    stats = pytest.importorskip("scipy.stats")
    for t, df in ((0.5, 3.0), (2.1, 4.4), (-1.3, 10.0), (5.0, 2.2), (0.0, 7.0)):
        assert t_sf(t, df) == pytest.approx(stats.t.sf(t, df), rel=1e-9)
    a, b = [1.0, 1.1, 1.2], [1.3, 1.2, 1.5, 1.4]
    ref = stats.ttest_ind(b, a, equal_var=False, alternative="greater")
    w = welch(1.1, 0.1, 3, statistics.mean(b), statistics.stdev(b), 4)
    assert w.t == pytest.approx(ref.statistic) and w.p_greater == pytest.approx(ref.pvalue)
    assert w.p_less == pytest.approx(1 - ref.pvalue)
    assert welch(16.0, 0.0, 3, 17.0, 0.0, 3).p_greater == 0.0  # no spread: any difference is certain
    assert welch(16.0, 0.0, 3, 16.0, 0.0, 3).p_greater == 1.0
    assert standard_error(0.3, 9) == pytest.approx(0.1) and standard_error(0.3, 1) != standard_error(0.3, 1)


def test_every_check_appends_to_the_history_and_history_shows_it(pinned, results, tmp_path, capsys):
    from bench.history import history_path

    path = history_path(pinned, "c")  # beside the pinned file: it outlives the results folder
    for k in range(3):
        assert main(["check", "c", "--results", str(results), "--pinned", str(pinned)]) == 0
        assert len(path.read_text().splitlines()) == k + 1  # one entry per check
    entry = json.loads(path.read_text().splitlines()[-1])
    assert entry["git_sha"] == "abc123" and entry["exit_code"] == 0 and entry["date"][:2] == "20"
    assert entry["seeds"] == [0, 1, 2] and entry["device"].startswith("cpu") and entry["suite_sha"] is None  # records only
    row = next(r for r in entry["rows"] if (r["model"], r["dataset"], r["quantity"]) == ("realnvp", "rings", "nll"))
    assert row["current"] == pytest.approx(2.01) and row["pinned"] == pytest.approx(2.01)
    assert (row["verdict"], row["test"]) == ("equal", "paired")
    shutil.rmtree(results)  # a CI job's results folder is thrown away; the history stays with the pins
    _sweep(results)
    capsys.readouterr()
    assert main(["history", "c", "--results", str(results), "--pinned", str(pinned), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "3 checks recorded" in out and "#0 abc123 20" in out and "#2 abc123" in out
    # three checks, then the pinned mean and its band (± 0.05 nats)
    assert "| realnvp | rings | nll | 2.01 | 2.01 | 2.01 | 2.01 | 1.96 | 2.06 |" in out
    for name in ("history.md", "history.csv", "history.png", "history.pdf"):
        assert (tmp_path / "rep" / "c" / name).exists(), name
    assert main(["history", "c", "--results", str(results), "--pinned", str(pinned), "--quantity", "nfe_forward",
                 "--no-figures", "--out", str(tmp_path / "rep")]) == 0
    assert "| ffjord | moons | nfe_forward |" in capsys.readouterr().out
    assert main(["history", "c", "--results", str(results), "--pinned", str(tmp_path / "none")]) == 2
    assert 'no check history for suite "c"' in capsys.readouterr().err


def test_a_file_pinned_before_variants_still_checks(results, tmp_path, capsys):
    """The old format (no variant column) reads; its `nll` of a conditional model is the record column
    it names (test.nll, the conditional NLL), never the new marginal headline."""
    write_run(results, "o", "ccnf", "moons", 0, 2.634, nfe=21.0, extra_test={"nll_marginal": 2.93})
    folder = tmp_path / "pinned"
    folder.mkdir()
    (folder / "o.csv").write_text("model,dataset,quantity,column,mean,std,min,max,n,seeds\n"
                                  "ccnf,moons,nll,test.nll,2.634,,2.634,2.634,1,0\n"
                                  "ccnf,moons,nfe_forward,nfe.train_forward,21,,21,21,1,0\n")
    assert main(["check", "o", "--results", str(results), "--pinned", str(folder), "-v"]) == 0
    out = capsys.readouterr().out
    assert "2 ok" in out and "2.634" in out
    (folder / "o.csv").write_text("model,dataset,quantity,mean\nccnf,moons,nfe_forward,21\n")  # no column: its source
    assert main(["check", "o", "--results", str(results), "--pinned", str(folder)]) == 0


def test_unknown_names_are_errors_not_nll(results, tmp_path, capsys):
    write_run(results, "u", "realnvp", "moons", 0, 1.0)
    folder = tmp_path / "pinned"
    folder.mkdir()
    (folder / "u.csv").write_text("model,dataset,quantity,column,mean\nrealnvp,moons,likelihood,test.x,1.0\n")
    assert main(["check", "u", "--results", str(results), "--pinned", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'u.csv'}: quantity: \"likelihood\" is not a quantity check compares" in err
    with pytest.raises(FlowbenchError, match='--tolerance nlll=0.1: "nlll" is not a quantity check compares '
                                             r'\(did you mean "nll"\?\)'):
        check.parse_tolerances(["nlll=0.1"])
    with pytest.raises(FlowbenchError, match="--alpha: expected a significance level between 0 and 1"):
        check.parse_alpha("2")
    assert check.suite_alpha({"alpha": 0.01, "nll": 0.1}) == 0.01 and check.suite_tolerances({"alpha": 0.01}) == {}
    with pytest.raises(FlowbenchError, match="s.yaml: check alpha: expected a significance level"):
        check.suite_alpha({"alpha": "often"}, "s.yaml: check")


def _spoil(results, case: str) -> str:
    """Make one pinned seed of the `_sweep` records unusable; returns what check must name."""
    rec = write_run(results, "c", "realnvp", "moons", 1, 1.01, seconds=60.0)
    if case == "diverged":
        write_run(results, "c", "realnvp", "moons", 1, status="diverged", error="non-finite training loss")
        return "realnvp/moons/seed1: diverged: non-finite training loss"
    if case == "missing":
        shutil.rmtree(rec.dir)
        return "realnvp/moons/seed1: no record (pinned)"
    if case == "string metric":
        result = rec.read_result()
        rec.write_result({**result, "test": {"nll": "1.01"}})
        return "realnvp/moons/seed1: completed, but its test.nll is '1.01', not a number"
    if case == "no metric":
        write_run(results, "c", "realnvp", "moons", 1, seconds=60.0, metric="bpd")
        return "realnvp/moons/seed1: completed, but its test.nll is absent"
    if case == "result is a folder":
        rec.result_path.unlink()
        rec.result_path.mkdir()
        return f"{rec.dir}: unreadable record (IsADirectoryError"
    spec = json.loads(rec.spec_path.read_text())  # "non-integer seed"
    rec.spec_path.write_text(json.dumps({**spec, "seed": "one"}))
    return f"{rec.dir}: unreadable record (ValueError: spec.json: seed 'one' is not an integer)"


@pytest.mark.parametrize("case", ["diverged", "missing", "string metric", "no metric", "result is a folder",
                                  "non-integer seed"])
def test_a_pinned_seed_that_does_not_count_fails_the_check_by_name(pinned, tmp_path, capsys, case):
    """The other two seeds alone would pass (their mean is within tolerance): the gate must see every
    pinned seed, and name the one that failed, is missing, unreadable or without its test metric."""
    current = tmp_path / "current"
    _sweep(current)
    named = _spoil(current, case)
    assert main(["check", "c", "--results", str(current), "--pinned", str(pinned)]) == 1
    out = capsys.readouterr().out
    assert f"  {named}" in out and "check: FAILED RUNS" in out, out


def test_identical_records_show_no_change_and_every_row_its_unit(pinned, results, capsys):
    """The pinned file rounds to 6 significant digits: a difference below what the table shows is "=",
    never "+9.444e-08"; each quantity names its unit, and spreads their seed count."""
    assert main(["check", "c", "--results", str(results), "--pinned", str(pinned), "-v"]) == 0
    out = capsys.readouterr().out
    body = [line for line in out.splitlines() if line.startswith(("  realnvp", "  ffjord"))]
    assert len(body) == 2 * 2 + 2 * 5  # realnvp: nll, train_seconds; ffjord: and nfe forward/backward/test
    assert all(re.search(r"\) {2,}= {2,}±", line) for line in body), out
    assert not re.search(r"e[-+]0", out), out
    for quantity in ("nll (nats)", "nfe_forward (evaluations)", "train_seconds (s)"):
        assert quantity in out
    assert "2.010 ± 0.010 (n=3)" in out and "±0.05 nats" in out


H100 = {"git_sha": "abc123", "device": "cuda:0", "device_kind": "cuda", "device_name": "NVIDIA H100 80GB HBM3",
        "host": "gpu01"}
LAPTOP = {"git_sha": "abc123", "device": "cpu", "device_kind": "cpu", "device_name": "cpu (x86_64, 2 threads)",
          "host": "laptop"}


def _timed(results, env, seconds: float, shift: float = 0.0, suite: str = "d"):
    for seed in range(2):
        write_run(results, suite, "realnvp", "moons", seed, 1.0 + 0.01 * seed + shift, seconds=seconds, env=env)


def test_time_is_gated_only_against_numbers_pinned_on_the_same_device_kind(tmp_path, capsys):
    _timed(tmp_path / "gpu", H100, seconds=10.0)
    pinned = tmp_path / "pinned"
    assert main(["pin", "d", "--results", str(tmp_path / "gpu"), "--pinned", str(pinned)]) == 0
    table = pd.read_csv(pinned / "d.csv", keep_default_na=False)
    assert set(table["device_kind"]) == {"cuda"} and set(table["device_name"]) == {"NVIDIA H100 80GB HBM3"}

    _timed(tmp_path / "cpu", LAPTOP, seconds=300.0)  # 30x slower on a laptop: not a regression
    capsys.readouterr()
    assert main(["check", "d", "--results", str(tmp_path / "cpu"), "--pinned", str(pinned)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train_seconds \(s\) .*\+2900\.0%.* pinned on cuda, now cpu: not gated +info", out), out
    assert "time shown for information, not gated (1 of 2 quantities): pinned on cuda, now cpu\n" in out
    assert "check: OK: 2 pinned quantities: 1 info, 1 equal" in out

    _timed(tmp_path / "slow-gpu", H100, seconds=300.0)  # the same kind: gated as ever
    assert main(["check", "d", "--results", str(tmp_path / "slow-gpu"), "--pinned", str(pinned)]) == 1
    assert re.search(r"train_seconds \(s\) .*REGRESSED", capsys.readouterr().out)
    _timed(tmp_path / "worse-cpu", LAPTOP, seconds=10.0, shift=0.5)  # the metric is gated whatever the device
    assert main(["check", "d", "--results", str(tmp_path / "worse-cpu"), "--pinned", str(pinned)]) == 1


def test_a_file_pinned_before_device_kind_does_not_gate_time_and_says_so(tmp_path, capsys):
    _timed(tmp_path / "base", LAPTOP, seconds=10.0)
    pinned = tmp_path / "pinned"
    assert main(["pin", "d", "--results", str(tmp_path / "base"), "--pinned", str(pinned)]) == 0
    table = pd.read_csv(pinned / "d.csv")
    table.drop(columns=["device_kind", "device_name"]).to_csv(pinned / "d.csv", index=False)  # the older format
    _timed(tmp_path / "slow", LAPTOP, seconds=300.0)
    capsys.readouterr()
    assert main(["check", "d", "--results", str(tmp_path / "slow"), "--pinned", str(pinned)]) == 0
    out = capsys.readouterr().out
    assert "pinned device unknown: not gated" in out and "`flowbench pin` again on this device to gate time" in out
    assert check.read_pinned("d", pinned)["device_kind"].tolist() == ["", ""]


def test_history_reads_from_its_first_check_with_the_band_and_the_commit(pinned, results, tmp_path, capsys):
    log = tmp_path / "elsewhere" / "c.jsonl"
    assert main(["check", "c", "--results", str(results), "--pinned", str(pinned), "--history", str(log)]) == 0
    shutil.rmtree(results)  # the results folder goes; the history does not
    capsys.readouterr()
    assert main(["history", "c", "--results", str(results), "--pinned", str(pinned), "--history", str(log),
                 "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "1 checks recorded" in out and "#0 abc123 20" in out
    assert "| realnvp | moons | nll | 1.01 | 1.01 | 0.96 | 1.06 |" in out
    assert (tmp_path / "rep" / "c" / "history.png").stat().st_size > 1000
