"""The command line: light start-up, listing, dry runs, status and the report table."""

from __future__ import annotations

import subprocess
import sys

from bench.cli import main
from bench.spec import load_suite
from bench.store import RunRecord

SUITE = """
datasets:
  moons: {n_train: 1000, n_val: 200, n_test: 300}
  rings: {n_train: 1000, n_val: 200, n_test: 300}
models: {realnvp: {n_layers: 2, hidden: 8}}
seeds: [0, 1]
train: {max_steps: 10, batch_size: 100, eval_every: 5}
"""


def test_help_and_list_do_not_import_torch_or_pandas():
    code = ("import sys; from bench.cli import main; main(['list']);"
            "print('HEAVY', sorted(m for m in ('torch', 'pandas', 'seaborn', 'submitit') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out and "realnvp" in out and "8gaussians" in out and "smoke" in out
    help_out = subprocess.run([sys.executable, "-m", "bench", "--help"], capture_output=True, text=True, check=True)
    assert "flowbench" in help_out.stdout and "run" in help_out.stdout


def test_dry_run_prints_the_grid_and_runs_nothing(write_suite, results, capsys):
    path = write_suite(SUITE)
    assert main(["run", str(path), "--dry-run", "--results", str(results), "--only", "dataset=moons"]) == 0
    out = capsys.readouterr().out
    assert "2 runs, 2 to run" in out and "realnvp/moons/seed1" in out and "rings" not in out
    assert not results.exists()


def test_status_and_report(write_suite, results, capsys, tmp_path):
    path = write_suite(SUITE)
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--only", "seed=0"]) == 0
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "2 completed, 2 pending" in out and "realnvp/rings/seed1" in out
    assert main(["status", "--results", str(results)]) == 0
    assert "t: 2 runs: 2 completed" in capsys.readouterr().out

    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["report", "t", "--results", str(results), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    specs = load_suite(path).runs()
    values = {(s.dataset, s.seed): RunRecord(results, "t", s.run_id).read_result()["test"]["nll"] for s in specs}
    import statistics
    mean, std = statistics.mean([values[("moons", 0)], values[("moons", 1)]]), statistics.stdev(
        [values[("moons", 0)], values[("moons", 1)]])
    assert f"{mean:.3f} ± {std:.3f}" in out  # mean ± sample std over seeds
    assert "| model | moons | rings |" in (tmp_path / "rep" / "t" / "table.md").read_text()


def test_user_errors_are_one_line_without_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: [moons]\nmodels: [realnvp]\ntrain: {lr: fast}\n")
    for args, message in ((["run", str(bad)], "train.lr: expected a number, got 'fast'"),
                          (["run", "nosuchsuite"], 'unknown suite "nosuchsuite"'),
                          (["report", "nothing-here", "--results", str(tmp_path)], 'no run records for suite "nothing-here"')):
        proc = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_grid_sweep_runs_as_rows_of_status_report_and_pin(write_suite, results, tmp_path, capsys):
    import json

    import pandas as pd

    path = write_suite("""
        datasets: {moons: {n_train: 500, n_val: 100, n_test: 100}}
        models: {realnvp: {n_layers: 2, hidden: 8}}
        seeds: [0]
        train: {max_steps: 4, batch_size: 50, eval_every: 2}
        grid: {train.lr: [1e-3, 1e-2]}
        """, "sw")
    assert main(["run", str(path), "--dry-run", "--results", str(results), "--only", "variant=lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "1 runs, 1 to run" in out and "realnvp/moons/seed0 (lr=0.01)" in out
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    specs = load_suite(path).runs()
    for spec in specs:
        record = json.loads((results / "sw" / spec.run_id / "spec.json").read_text())
        assert record["variant"] == spec.variant and record["sweep"] == {"train.lr": spec.train["lr"]}
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "realnvp/moons/seed0 (lr=0.001)" in out and "realnvp/moons/seed0 (lr=0.01)" in out and "2 completed" in out
    assert main(["report", str(path), "--results", str(results), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "| model | variant | moons |" in out and "| realnvp | lr=0.001 |" in out and "| realnvp | lr=0.01 |" in out
    assert main(["pin", str(path), "--results", str(results), "--pinned", str(tmp_path / "pinned")]) == 0
    pinned = pd.read_csv(tmp_path / "pinned" / "sw.csv", keep_default_na=False)
    assert sorted(pinned.loc[pinned["quantity"] == "nll", "variant"]) == ["lr=0.001", "lr=0.01"]
