"""Executors without SLURM: submitit's local executor, one run split over two processes."""

from __future__ import annotations

import json

import pytest

from bench.cli import main
from bench.launch import parse_slurm_overrides, slurm_parameters
from bench.errors import FlowbenchError
from bench.spec import load_suite
from bench.store import RunRecord

SUITE = """
datasets:
  moons: {n_train: 1024, n_val: 256, n_test: 256}
models: {realnvp: {n_layers: 2, hidden: 16, batch_norm: false}}  # batch statistics would differ per process
seeds: [0]
train: {max_steps: 30, batch_size: 128, eval_every: 10, lr: 1e-2}
"""


def test_two_processes_train_like_one(write_suite, tmp_path):
    """torch.distributed over submitit's tasks: each process takes half of every batch and the
    gradients are averaged, so the run follows the single-process run on the same global batch."""
    path = write_suite(SUITE)
    assert main(["run", str(path), "--executor", "local", "--slurm", "tasks_per_node=2,timeout_min=10",
                 "--results", str(tmp_path / "two"), "--quiet", "--no-report"]) == 0
    assert main(["run", str(path), "--results", str(tmp_path / "one"), "--quiet", "--no-report"]) == 0
    spec = load_suite(path).runs()[0]
    two, one = RunRecord(tmp_path / "two", "t", spec.run_id), RunRecord(tmp_path / "one", "t", spec.run_id)
    assert two.read_result()["world_size"] == 2 and one.read_result()["world_size"] == 1
    for a, b in zip(two.read_metrics(), one.read_metrics()):
        assert a["step"] == b["step"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_nll"] == pytest.approx(b["val_nll"], rel=1e-4)
    assert two.read_result()["test"]["nll"] == pytest.approx(one.read_result()["test"]["nll"], rel=1e-4)


def test_slurm_options_are_checked():
    assert parse_slurm_overrides("partition=gpu,timeout_min=120") == {"partition": "gpu", "timeout_min": 120}
    params = slurm_parameters({"partition": "gpu", "setup": "module load cuda", "additional": {"requeue": True}}, "s")
    assert params["slurm_partition"] == "gpu" and params["slurm_setup"] == ["module load cuda"]
    assert params["timeout_min"] == 60 and params["slurm_additional_parameters"] == {"requeue": True}
    with pytest.raises(FlowbenchError, match='unknown SLURM option "partiton" \\(did you mean "partition"\\?\\)'):
        slurm_parameters({"partiton": "gpu"}, "suites/x.yaml: slurm")
    with pytest.raises(FlowbenchError, match="expected KEY=VALUE"):
        parse_slurm_overrides("gpu")


# -- one run, one owner ----------------------------------------------------------------------------
SIX_RUNS = """
datasets:
  moons: {n_train: 512, n_val: 128, n_test: 128}
models: {realnvp: {n_layers: 2, hidden: 8}}
seeds: [0, 1, 2, 3, 4, 5]
train: {max_steps: 60, batch_size: 64, eval_every: 10, checkpoint_every: 20}
"""


@pytest.mark.parametrize("processes", [2, 6])
def test_concurrent_runs_train_each_run_exactly_once(write_suite, tmp_path, processes):
    """Several `flowbench run`s on one suite and folder: each run is claimed by one of them, trained
    once (counted from what every process says it trained), completed, with an unbroken history."""
    import os
    import re
    import subprocess
    import sys
    from collections import Counter

    path = write_suite(SIX_RUNS)
    results = tmp_path / "results"
    env = {**os.environ, "FLOWBENCH_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--results", str(results), "--quiet",
                               "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for _ in range(processes)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    trained = Counter(m for out in outputs for m in re.findall(r"^\s+(?:ok|x) \S+ \[(\w+)\]", out, re.M))
    specs = load_suite(path).runs()
    assert trained == Counter({s.run_id: 1 for s in specs}), outputs  # every run exactly once
    for spec in specs:
        record = RunRecord(results, spec.suite, spec.run_id)
        assert record.read_result()["status"] == "completed" and record.read_result()["resumes"] == 0
        assert [h["step"] for h in record.read_metrics()] == list(range(10, 61, 10))
        assert not record.claim_path.exists() and not record.checkpoint_path.exists()


# -- threads ---------------------------------------------------------------------------------------
def test_threads_per_run_from_the_cores_it_owns(monkeypatch):
    from bench.train import owned_cores, run_threads

    for name in ("FLOWBENCH_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    assert run_threads() == owned_cores() and run_threads(concurrent=64) == 1  # the local executor's share
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "6")  # inside a SLURM job: its cpus_per_task
    assert run_threads(concurrent=4) == 6
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
    assert run_threads() == 2
    monkeypatch.setenv("FLOWBENCH_THREADS", "3")  # the override wins
    assert run_threads() == 3
    monkeypatch.setenv("FLOWBENCH_THREADS", "many")
    with pytest.raises(FlowbenchError, match=r"\$FLOWBENCH_THREADS='many': expected a whole number of threads"):
        run_threads()


def test_a_run_sets_its_threads_and_records_them(write_suite, results, monkeypatch):
    import torch

    monkeypatch.setenv("FLOWBENCH_THREADS", "3")
    before = torch.get_num_threads()
    try:
        assert main(["run", str(write_suite(SUITE)), "--results", str(results), "--quiet", "--no-report",
                     "--set", "train.max_steps=10"]) == 0
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)
    result = next((results / "t").glob("*/result.json")).read_text()
    assert "3 threads" in result


def test_runs_of_a_suite_on_one_host_share_its_cores(write_suite, results, monkeypatch):
    """Another process on this host training a run of the suite now: this run takes half the cores."""
    import torch

    from bench.train import owned_cores

    for name in ("FLOWBENCH_THREADS", "OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(name, raising=False)
    path = write_suite(SUITE.replace("seeds: [0]", "seeds: [0, 1]"))
    busy, spec = load_suite(path).runs()
    busy_record = RunRecord(results, busy.suite, busy.run_id)
    busy_record.create(busy.to_dict())
    before = torch.get_num_threads()
    try:
        with busy_record.claim():  # held by a live process of this host (this one)
            assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--only", "seed=1",
                         "--set", "train.max_steps=10"]) == 0
            assert torch.get_num_threads() == max(1, owned_cores() // 2)
    finally:
        torch.set_num_threads(before)


PLUGIN = '''
from baselines import realnvp
from baselines.registry import register


@register("tinyflow", "a two-layer RealNVP defined outside the package")
def build(data, hidden: int = 8):
    return realnvp.build(data, n_layers=2, hidden=hidden)
'''


def test_a_plugin_model_runs_in_worker_processes(write_suite, tmp_path, monkeypatch):
    """The suite's plugins travel in spec.json: a worker started by the local executor imports them
    before building the run (before, it failed with KeyError: 'tinyflow')."""
    (tmp_path / "fb_tiny_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    suite = SUITE.replace("models: {realnvp: {n_layers: 2, hidden: 16, batch_norm: false}}", "models: [tinyflow]")
    assert "tinyflow" in suite
    path = write_suite(suite + "plugins: [fb_tiny_plugin]\n", "p")
    results = tmp_path / "results"
    assert main(["run", str(path), "--executor", "local", "--results", str(results), "--quiet", "--no-report"]) == 0
    spec = load_suite(path).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    assert record.read_result()["status"] == "completed"
    assert json.loads(record.spec_path.read_text())["plugins"] == ["fb_tiny_plugin"]
