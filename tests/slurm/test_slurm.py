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
from bench.slurm import ACTIVE_STATES, SLURM_QUERIES, job_states
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
overrides:
  - {match: {dataset: rings}, slurm: {mem_gb: 2}}  # other resources: a second array, the same runs
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


def _until(predicate, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.mark.slow
def test_array_completes_and_matches_inline(slurm_cluster, write_suite, tmp_path, capsys):
    path = write_suite(SUITE)
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "slurm"),
                 "--wait", "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "submitted 4 runs as 2 arrays: 2 runs on default partition (mem_gb=1) (job" in out
    assert "2 runs on default partition (mem_gb=2) (job" in out and "4 completed" in out
    assert main(["run", str(path), "--results", str(tmp_path / "inline"), "--quiet", "--no-report"]) == 0
    for spec in load_suite(path).runs():
        a = RunRecord(tmp_path / "slurm", spec.suite, spec.run_id)
        b = RunRecord(tmp_path / "inline", spec.suite, spec.run_id)
        ra, rb = a.read_result(), b.read_result()
        assert ra["status"] == rb["status"] == "completed"
        assert ra["test"]["nll"] == pytest.approx(rb["test"]["nll"], rel=1e-6)
        assert [m["val_nll"] for m in a.read_metrics()] == pytest.approx([m["val_nll"] for m in b.read_metrics()], rel=1e-6)
        assert ra["env"]["slurm"]["slurm_array_job_id"] and json.loads((a.dir / "slurm.json").read_text())["job_id"]
        assert ra["code"]["ran"] == ra["code"]["submitted"]  # the task ran the submitted snapshot
    arrays = {json.loads((RunRecord(tmp_path / "slurm", s.suite, s.run_id).dir / "slurm.json").read_text())["job_id"]
              .split("_")[0]: s.dataset for s in load_suite(path).runs()}
    assert len(arrays) == 2 and sorted(arrays.values()) == ["moons", "rings"]  # one array per resource set
    sacct = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,ReqMem", "-j", ",".join(arrays)],
                           capture_output=True, text=True).stdout
    assert {line.split("_")[0] for line in sacct.split()} == set(arrays), sacct
    assert {line.split("|")[1] for line in sacct.split()} == {"1G", "2G"}, sacct
    before = SLURM_QUERIES["sacct"]
    assert set(job_states([f"{a}_{i}" for a in arrays for i in range(2)]).values()) == {"COMPLETED"}
    assert SLURM_QUERIES["sacct"] == before + 1  # one call for both arrays, not one per run
    # status joins SLURM's accounting; a re-run submits nothing
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(tmp_path / "slurm")]) == 0
    assert "COMPLETED" in capsys.readouterr().out
    assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "slurm")]) == 0
    assert "nothing submitted" in capsys.readouterr().out


@pytest.mark.slow
def test_signal_checkpoints_requeues_and_resumes(slurm_cluster, write_suite, tmp_path, capsys):
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
    # a requeued job waits ~2 minutes (its BeginTime) before it may start again; release it now. Released
    # at once, slurmctld sometimes kills it before it starts ("Killing non-startable batch JobId=26: Job
    # credential revoked"): the job ended and the run did not, so `status` says `run` takes it up again and
    # `run` resubmits it (it resumes from its checkpoint), as a user would.
    resubmitted: list[str] = []

    def advance() -> bool:
        nonlocal job
        if (record.read_result() or {}).get("status") == "completed":
            return True
        state = job_states([job])[job]
        if state == "PENDING":
            _release(job)
        elif state not in ACTIVE_STATES and state != "UNKNOWN":
            capsys.readouterr()
            assert main(["status", str(path), "--results", str(tmp_path / "r")]) == 0
            assert "would take up 1" in capsys.readouterr().out
            assert main(["run", str(path), "--executor", "slurm", "--results", str(tmp_path / "r"), "--quiet"]) == 0
            job = json.loads((record.dir / "slurm.json").read_text())["job_id"]
            resubmitted.append(f"{state} -> {job}")
        return False

    _until(advance, 400, "the requeued run to complete", every=1.0)
    result, history = record.read_result(), record.read_metrics()
    assert result["resumes"] >= 1 and result["steps"] == 2500
    assert [h["step"] for h in history] == list(range(100, 2501, 100))  # unbroken, nothing counted twice
    restarts = int(result["env"]["slurm"].get("slurm_restart_count", 0))
    assert restarts >= 1 or resubmitted  # requeued by SLURM, or (killed before it restarted) resubmitted
    assert len(resubmitted) <= 2, resubmitted


@pytest.mark.slow
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
    assert "run: preempted at step" in out and "would take up 1: 1 preempted" in out  # the job ended, the run did not
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


MARKER_PLUGIN = '''
from baselines import realnvp
from baselines.registry import register

HIDDEN = {hidden}  # the marker: the width the task builds tells which version of this file it ran


@register("markerflow", "a RealNVP whose width is a constant of this file")
def build(data):
    return realnvp.build(data, n_layers=2, hidden=HIDDEN)
'''
MARKED = """
datasets:
  moons: {n_train: 512, n_val: 128, n_test: 128}
models: [markerflow]
seeds: [0]
plugins: [fb_marker_plugin]
train: {max_steps: 20, batch_size: 64, eval_every: 10}
slurm: {timeout_min: 5, cpus_per_task: 1, mem_gb: 1, additional: {hold: true}}
"""


@pytest.mark.slow
def test_a_queued_task_runs_the_code_of_its_submission(slurm_cluster, write_suite, tmp_path):
    """Submitted on hold from a checkout, which is then edited (a bench module, and the plugin's width
    constant): the released task runs the snapshot taken at submission, and says so."""
    import bench
    from baselines import realnvp
    from bench.data import load_dataset
    from bench.snapshot import code_hash

    checkout = tmp_path / "checkout"
    for package in ("bench", "baselines"):
        shutil.copytree(Path(bench.__file__).parent.parent / package, checkout / package,
                        ignore=shutil.ignore_patterns("__pycache__"))
    plugin = checkout / "fb_marker_plugin.py"
    plugin.write_text(MARKER_PLUGIN.format(hidden=4))
    path, results = write_suite(MARKED, "marked"), tmp_path / "results"

    def flowbench(*args: str) -> subprocess.CompletedProcess:  # run from the checkout: its code is imported
        return subprocess.run([sys.executable, "-m", "bench", *args, "--results", str(results)], cwd=checkout,
                              capture_output=True, text=True, timeout=300, env={**os.environ, "FLOWBENCH_THREADS": "1"})

    proc = flowbench("run", str(path), "--executor", "slurm", "--quiet")
    assert proc.returncode == 0, proc.stderr
    (run_dir,) = [p.parent for p in (results / "marked").glob("*/spec.json")]
    submitted = json.loads((run_dir / "slurm.json").read_text())
    job = submitted["job_id"]
    assert _state(job).startswith("PENDING"), _state(job)
    # edits after submission, before the task starts
    plugin.write_text(MARKER_PLUGIN.format(hidden=32))
    init = checkout / "bench" / "__init__.py"
    init.write_text(init.read_text() + "\nEDITED_AFTER_SUBMISSION = True\n")
    edited = code_hash({"bench": checkout / "bench", "baselines": checkout / "baselines", plugin.name: plugin})
    subprocess.run(["scontrol", "release", job.split("_")[0]], check=True, capture_output=True)
    record = RunRecord.at(run_dir)
    _until(lambda: (record.read_result() or {}).get("status") not in (None, "running"), 240, "the released run")
    result = record.read_result()
    assert result["status"] == "completed", result.get("error")
    info = load_dataset("moons", {"n_train": 512, "n_val": 128, "n_test": 128}).info
    widths = {h: sum(p.numel() for p in realnvp.build(info, n_layers=2, hidden=h).parameters()) for h in (4, 32)}
    assert result["params"] == widths[4] != widths[32]  # the plugin as submitted, not as edited
    assert result["code"]["ran"] == result["code"]["submitted"] == submitted["code"]["sha"] != edited
    status = flowbench("status", str(path))
    assert status.returncode == 0 and "code mismatch" not in status.stdout, status.stdout + status.stderr
