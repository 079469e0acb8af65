"""The command line: light start-up, listing, dry runs, status and the report table."""

from __future__ import annotations

import re
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
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("datasets: [moons]\nmodels: [realnvp]\ndescription: caf\xe9\n".encode("latin-1"))
    for args, message in ((["run", str(bad)], "train.lr: expected a number >= 0, got 'fast'"),
                          (["run", str(latin1)], "not UTF-8 text (byte 0xe9 at offset 52, line 3)"),
                          (["run", "smoke", "--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
                          (["run", "smoke", "--seeds", ""], "--seeds '': expected integers separated by commas"),
                          (["run", "smoke", "--no-such-option"], "unrecognized arguments: --no-such-option"),
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


def test_hostile_records_are_one_line_each_and_the_rest_is_still_reported(results, tmp_path, planted_pickle):
    """A spec.json with a non-integer seed, a result.json that is a folder, a string test metric and a
    model.pt of random bytes or a planted pickle: status, report and audit name each in one line
    (never a traceback, never running the pickle) and report every other record."""
    import json
    import os

    sys.path.insert(0, os.path.dirname(__file__))
    from report_records import write_run

    for seed in (0, 1):
        write_run(results, "h", "realnvp", "moons", seed, 1.0 + seed)
    seedless = write_run(results, "h", "realnvp", "moons", 2, 1.5)
    seedless.spec_path.write_text(json.dumps({**json.loads(seedless.spec_path.read_text()), "seed": "two"}))
    folder = write_run(results, "h", "realnvp", "moons", 3, 1.5)
    folder.result_path.unlink()
    folder.result_path.mkdir()
    text = write_run(results, "h", "realnvp", "rings", 0, 1.5)
    text.write_result({**text.read_result(), "test": {"nll": "low"}})
    noise = write_run(results, "h", "ffjord", "moons", 0, 1.2)
    noise.model_path.write_bytes(os.urandom(2048))
    planted = write_run(results, "h", "ffjord", "moons", 1, 1.3)
    marker = planted_pickle(planted.model_path)

    def flowbench(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "bench", *args, "--results", str(results)],
                              capture_output=True, text=True)

    status = flowbench("status")
    report = flowbench("report", "h", "--no-figures", "--out", str(tmp_path / "rep"))
    audit = flowbench("audit", "h", "--out", str(tmp_path / "rep"), "--quiet")
    for proc in (status, report, audit):
        assert "Traceback" not in proc.stderr, proc.stderr
    assert status.returncode == 0 and "h: 5 runs: 5 completed" in status.stdout
    for proc in (status, report):
        warned = [line for line in proc.stderr.splitlines() if "skipped unreadable record" in line]
        assert len(warned) == 2, proc.stderr
        assert any(f"{seedless.dir}: ValueError: spec.json: seed 'two' is not an integer" in w for w in warned)
        assert any(f"{folder.dir}: IsADirectoryError" in w for w in warned)
    assert report.returncode == 0 and "| realnvp |" in report.stdout and "| ffjord |" in report.stdout
    assert audit.returncode == 2 and len(audit.stderr.strip().splitlines()) == 3, audit.stderr  # 2 warnings, 1 error
    error = audit.stderr.strip().splitlines()[-1]
    assert error.startswith('flowbench: error: suite "h": no completed CNF run with model.pt to audit')
    for run in ("ffjord/moons/seed0", "ffjord/moons/seed1"):
        assert f"{run} (run " in error and "cannot load model.pt (not a plain weights file" in error
    assert not marker.exists()


def test_status_names_each_metric_with_its_unit_and_run_writes_a_report_only_when_asked(write_suite, results,
                                                                                        tmp_path, capsys):
    """Spirals show their MSE under "test mse", never under "test nll"; `run --report DIR` writes the
    whole report (figures too) to DIR/SUITE, and says where."""
    path = write_suite("""
        datasets:
          moons: {n_train: 300, n_val: 100, n_test: 100}
          spirals: {n_spirals: 40, n_val: 10, n_test: 10, length: 60, window: 20, horizon: 10}
        models: {realnvp: {n_layers: 2, hidden: 8}, latent_ode: {}}
        overrides:
          - {match: {model: latent_ode, dataset: moons}, skip: true}
          - {match: {model: realnvp, dataset: spirals}, skip: true}
        train: {max_steps: 2, batch_size: 20, eval_every: 2}
        """)
    out_dir = tmp_path / "rep"
    assert main(["run", str(path), "--results", str(results), "--quiet", "--report", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert f"(report: {out_dir / 't' / 'report.md'}" in out and "no figures" not in out
    assert (out_dir / "t" / "index.html").exists() and list((out_dir / "t" / "figures").glob("*.png"))
    assert not (results / "reports").exists()
    assert main(["status", str(path), "--results", str(results)]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if "run_id" in line)
    assert "test nll (nats)" in header and "test mse" in header and "test mse (" not in header
    spirals = next(line for line in lines if "latent_ode/spirals" in line)
    assert spirals.index(re.search(r"\d+\.\d{4}", spirals).group()) >= header.index("test mse")


def test_slurm_state_never_hides_a_failed_run():
    from bench.cli import slurm_text

    assert slurm_text("COMPLETED", "failed") == "COMPLETED (run: failed)"
    assert slurm_text("COMPLETED", "diverged") == "COMPLETED (run: diverged)"
    assert slurm_text("COMPLETED", "completed") == "COMPLETED"
    assert slurm_text("FAILED", "failed") == "FAILED" and slurm_text("RUNNING", "running") == "RUNNING"
    assert slurm_text("", "pending") == ""
