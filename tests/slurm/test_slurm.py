"""The SLURM path against a real single-node cluster (started by tests/slurm/cluster.sh).

Marked ``slurm``; skipped with a reason where the cluster cannot be started (not root, no apt).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.launch import job_states
from bench.spec import load_suite
from bench.store import RunRecord

pytestmark = pytest.mark.slurm
CLUSTER = Path(__file__).with_name("cluster.sh")

SUITE = """
datasets:
  moons: {n_train: 1000, n_val: 200, n_test: 300}
  rings: {n_train: 1000, n_val: 200, n_test: 300}
models: {realnvp: {n_layers: 2, hidden: 8}}
seeds: [0, 1]
train: {max_steps: 60, batch_size: 100, eval_every: 20}
slurm: {timeout_min: 5, cpus_per_task: 1, mem_gb: 1}
"""
LONG = """
datasets:
  moons: {n_train: 4000, n_val: 200, n_test: 300}
models: {realnvp: {n_layers: 2, hidden: 16}}
seeds: [0]
train: {max_steps: 2500, batch_size: 128, eval_every: 100, checkpoint_every: 100}
slurm: {timeout_min: TIMEOUT, signal_delay_s: 10, cpus_per_task: 1, mem_gb: 1}
"""


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("the SLURM integration tests start a cluster as root with Debian's packages")
    proc = subprocess.run(["bash", str(CLUSTER), "start"], capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.skip(f"could not start the single-node SLURM cluster: {proc.stderr.strip()[-300:]}")
    conf = proc.stdout.strip().splitlines()[-1].partition("=")[2]
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    # stop the daemons this session started (a cluster that was already up is left running)
    subprocess.run(["bash", str(CLUSTER), "stop"], capture_output=True, text=True, timeout=120)


def _state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id.split("_")[0], "-r", "-o", "%i|%T|%r"],
                         capture_output=True, text=True).stdout
    for line in out.splitlines():
        jid, state, reason = line.split("|")
        if jid == job_id:
            return f"{state}|{reason}"
    return "GONE|"


def _release(job_id: str) -> bool:
    if _state(job_id).startswith("PENDING"):
        subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
    return False


def _until(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_array_completes_and_matches_inline(slurm_cluster, write_suite, tmp_path, capsys):
    path = write_suite(SUITE)
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "slurm"),
                 "--wait", "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "submitted 4 runs as slurm job" in out and "4 completed" in out
    assert main(["run", str(path), "--results", str(tmp_path / "inline"), "--quiet", "--no-report"]) == 0
    for spec in load_suite(path).runs():
        a = RunRecord(tmp_path / "slurm", spec.suite, spec.run_id)
        b = RunRecord(tmp_path / "inline", spec.suite, spec.run_id)
        ra, rb = a.read_result(), b.read_result()
        assert ra["status"] == rb["status"] == "completed"
        assert ra["test"]["nll"] == pytest.approx(rb["test"]["nll"], rel=1e-6)
        assert [m["val_nll"] for m in a.read_metrics()] == pytest.approx([m["val_nll"] for m in b.read_metrics()], rel=1e-6)
        assert ra["env"]["slurm"]["slurm_array_job_id"] and json.loads((a.dir / "slurm.json").read_text())["job_id"]
    # status joins SLURM's accounting; a re-run submits nothing
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(tmp_path / "slurm")]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "slurm")]) == 0
    assert "nothing submitted" in capsys.readouterr().out


def test_signal_checkpoints_requeues_and_resumes(slurm_cluster, write_suite, tmp_path):
    # SLURM's own --signal fires with up to 60 s of slack (measured here: ~7 s into a 1-minute job),
    # so the test sends the end-of-allocation signal itself, early, exactly as slurmctld would.
    path = write_suite(LONG.replace("TIMEOUT", "3"))
    spec = load_suite(path).runs()[0]
    record = RunRecord(tmp_path / "r", spec.suite, spec.run_id)
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "r"), "--quiet"]) == 0
    job = json.loads((record.dir / "slurm.json").read_text())["job_id"]
    _until(lambda: len(record.read_metrics()) >= 3 and record.checkpoint_path.exists(), 240, "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR2", job.split("_")[0]], check=True)
    _until(lambda: _state(job).startswith("PENDING") or (record.read_result() or {}).get("resumes"), 60,
           "the job to requeue itself")
    # a requeued job waits ~2 minutes (its BeginTime) before it may start again; release it now
    _until(lambda: _release(job) or (record.read_result() or {}).get("status") == "completed", 400,
           "the requeued run to complete")
    result, history = record.read_result(), record.read_metrics()
    assert result["resumes"] >= 1 and result["steps"] == 2500
    assert [h["step"] for h in history] == list(range(100, 2501, 100))  # unbroken, nothing counted twice
    restarts = int(result["env"]["slurm"].get("slurm_restart_count", 0))
    assert restarts >= 1


def test_scancel_is_reported_and_rerun_resubmits(slurm_cluster, write_suite, tmp_path, capsys):
    path = write_suite(LONG.replace("TIMEOUT", "10"))
    spec = load_suite(path).runs()[0]
    record = RunRecord(tmp_path / "r", spec.suite, spec.run_id)
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "r"), "--quiet"]) == 0
    _until(lambda: len(record.read_metrics()) >= 2, 240, "the run to start")
    capsys.readouterr()
    assert main(["cancel", str(path), "--results", str(tmp_path / "r")]) == 0
    assert "cancelled 1 job(s)" in capsys.readouterr().out
    _until(lambda: (record.read_result() or {}).get("status") not in (None, "running"), 60, "the record after scancel")
    job = json.loads((record.dir / "slurm.json").read_text())["job_id"]
    _until(lambda: job_states([job]).get(job) == "CANCELLED", 60, "SLURM to account the job as cancelled")
    assert main(["status", str(path), "--results", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "CANCELLED" in out and "preempted" in out
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "r"), "--wait", "--quiet",
                 "--no-report"]) == 0
    assert "submitted 1 runs" in capsys.readouterr().out
    assert record.read_result()["status"] == "completed" and record.read_result()["resumes"] >= 1


def test_unreachable_controller_submits_nothing(write_suite, tmp_path, monkeypatch):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=none\nSlurmctldHost=localhost(127.0.0.1)\nSlurmctldPort=6999\n"
                    "AuthType=auth/munge\nNodeName=x CPUs=1\nPartitionName=p Nodes=x\n")
    monkeypatch.setenv("SLURM_CONF", str(conf))
    path = write_suite(SUITE)
    if shutil.which("sbatch"):
        proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--executor", "slurm",
                               "--results", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and "the SLURM controller is not reachable" in proc.stderr
        assert "nothing was submitted" in proc.stderr and "Traceback" not in proc.stderr
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch at all
    proc = subprocess.run([sys.executable, "-m", "bench", "run", str(path), "--executor", "slurm",
                           "--results", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "sbatch not found" in proc.stderr
    assert not list((tmp_path / "r").rglob("slurm.json"))
