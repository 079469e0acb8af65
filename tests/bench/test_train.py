"""The training loop end to end: learning, exact resume after a kill, divergence, bad checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from baselines.base import FlowModel
from baselines.registry import get_builder, register
from bench.cli import main
from bench.data import load_dataset
from bench.spec import load_suite
from bench.store import RunRecord
from bench.train import evaluate, lr_at

TINY = """
datasets:
  8gaussians: {n_train: 2000, n_val: 500, n_test: 1000}
models:
  realnvp: {n_layers: 2, hidden: 16}
seeds: [0]
train: {max_steps: 400, batch_size: 64, lr: 5e-3, eval_every: 20, checkpoint_every: 20}
"""


def test_short_run_lowers_test_nll(write_suite, results):
    path = write_suite(TINY.replace("n_layers: 2, hidden: 16", "n_layers: 6, hidden: 32").replace("400", "600"))
    spec = load_suite(path).runs()[0]
    data = load_dataset(spec.dataset, spec.data_config)
    torch.manual_seed(spec.seed)
    untrained = get_builder("realnvp")(data.info, **spec.model_config)
    start = evaluate(untrained, data, data.test, torch.device("cpu"), 1000)["nll"]
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    result = RunRecord(results, spec.suite, spec.run_id).read_result()
    assert result["status"] == "completed" and result["steps"] == 600
    assert result["test"]["nll"] < start - 1.5 and result["test"]["nll"] < 3.6, (start, result["test"])
    history = RunRecord(results, spec.suite, spec.run_id).read_metrics()
    assert [h["step"] for h in history] == list(range(20, 601, 20))
    assert result["params"] == untrained.num_params() and result["best_step"] in [h["step"] for h in history]


def _run_cli(path, results):
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--results", str(results),
                             "--quiet", "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_killed_run_resumes_and_continues_its_history(write_suite, tmp_path):
    path = write_suite(TINY.replace("max_steps: 400", "max_steps: 1500"))
    spec = load_suite(path).runs()[0]
    killed = RunRecord(tmp_path / "killed", spec.suite, spec.run_id)
    proc = _run_cli(path, tmp_path / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not (killed.checkpoint_path.exists() and len(killed.read_metrics()) >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.read_result()["status"] == "running"  # really killed mid-run
    assert _run_cli(path, tmp_path / "killed").wait() == 0
    straight = RunRecord(tmp_path / "straight", spec.suite, spec.run_id)
    assert _run_cli(path, tmp_path / "straight").wait() == 0

    resumed, reference = killed.read_metrics(), straight.read_metrics()
    assert [h["step"] for h in resumed] == list(range(20, 1501, 20))  # no gap, no duplicate
    for a, b in zip(resumed, reference):  # the same numbers as a run that was never killed
        assert (a["train_loss"], a["val_nll"]) == (b["train_loss"], b["val_nll"])
    r = killed.read_result()
    assert r["resumes"] == 1 and r["test"] == straight.read_result()["test"]


@register("always_nan", "test model whose loss turns NaN")
def _build_nan(data, explode_after: int = 3):
    class Exploding(FlowModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.calls = 0

        def log_prob(self, x, y=None):
            self.calls += 1
            scale = float("nan") if self.training and self.calls > explode_after else 1.0
            return -0.5 * (x ** 2).sum(1) * self.w * scale

    return Exploding()


def test_diverging_run_is_recorded_and_the_sweep_goes_on(write_suite, results, capsys):
    path = write_suite(TINY.replace("realnvp: {n_layers: 2, hidden: 16}", "always_nan: {}\n  realnvp: {n_layers: 2}")
                       .replace("max_steps: 400", "max_steps: 40"))
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    specs = {s.model: s for s in load_suite(path).runs()}
    bad = RunRecord(results, "t", specs["always_nan"].run_id).read_result()
    assert bad["status"] == "diverged" and "non-finite training loss (nan) at step 4" in bad["error"]
    assert RunRecord(results, "t", specs["realnvp"].run_id).read_result()["status"] == "completed"
    assert "1 completed, 1 diverged" in capsys.readouterr().out


def test_rerunning_a_finished_suite_runs_nothing(write_suite, results, capsys):
    path = write_suite(TINY.replace("max_steps: 400", "max_steps: 20"))
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    record = RunRecord(results, "t", load_suite(path).runs()[0].run_id)
    before = record.result_path.stat().st_mtime_ns
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    assert "0 to run, 1 already completed" in capsys.readouterr().out
    assert record.result_path.stat().st_mtime_ns == before
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--force"]) == 0
    assert record.result_path.stat().st_mtime_ns != before


def test_checkpoint_that_does_not_match_leaves_the_record_alone(write_suite, results, capsys):
    path = write_suite(TINY)
    spec = load_suite(path).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    other = get_builder("realnvp")(load_dataset(spec.dataset, spec.data_config).info, n_layers=2, hidden=32)
    torch.save({"run_id": spec.run_id, "model": other.state_dict(), "optimizer": {}}, record.checkpoint_path)
    record.write_result({"status": "preempted", "steps": 100})
    files = {p.name: p.read_bytes() for p in record.dir.iterdir()}
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {record.checkpoint_path} does not match the model" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in record.dir.iterdir()} == files


def test_unwritable_results_folder(write_suite, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(write_suite(TINY)), "--results", str(blocker / "results"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowbench: error: results folder") and "--results DIR" in err and "Traceback" not in err


def test_learning_rate_schedule():
    t = {"lr": 1.0, "warmup_steps": 10, "schedule": "step", "milestones": [50, 80], "gamma": 0.1}
    assert [lr_at(s, t, 100) for s in (0, 9, 10, 49)] == [0.1, 1.0, 1.0, 1.0]
    assert lr_at(50, t, 100) == pytest.approx(0.1) and lr_at(99, t, 100) == pytest.approx(0.01)
    c = {**t, "schedule": "cosine", "warmup_steps": 0}
    assert lr_at(0, c, 100) == 1.0 and lr_at(50, c, 100) == pytest.approx(0.5) and lr_at(100, c, 100) == pytest.approx(0)


class _Identity(FlowModel):
    """evaluate: the first coordinate as the per-example term (so means are easy to predict)."""

    def evaluate(self, x, y=None):
        return {"nll": x[:, 0].double()}


def test_evaluate_counts_exactly_max_examples_across_partial_batches():
    from bench.data.base import DataInfo, Dataset, Split

    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    data = Dataset(DataInfo("t", "toy", (1,)), Split(x), Split(x), Split(x))
    for batch, limit in ((4, 5), (1000, 7), (3, None)):
        out = evaluate(_Identity(), data, data.test, torch.device("cpu"), batch, limit)
        n = 10 if limit is None else limit
        assert out["nll"] == pytest.approx(sum(range(n)) / n)
