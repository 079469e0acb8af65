"""Executors without SLURM: submitit's local executor, one run split over two processes."""

from __future__ import annotations

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
