"""Executors without SLURM: submitit's local executor, one run split over two processes."""

from __future__ import annotations

import json
import os

import pytest

from bench.cli import main
from bench.errors import FlowbenchError
from bench.spec import load_suite
from bench.store import RunRecord
from tiny_suites import REALNVP_MOONS as SUITE
from tiny_suites import SIX_SEEDS as SIX_RUNS


@pytest.mark.slow
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


# -- one run, one owner ----------------------------------------------------------------------------


@pytest.mark.parametrize("processes", [2, 6])
@pytest.mark.slow
def test_concurrent_runs_train_each_run_exactly_once(write_suite, tmp_path, processes):
    """Several `flowbench run`s on one suite and folder: each run is claimed by one of them, trained
    once (counted from what every process says it trained), completed, with an unbroken history."""
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


# -- the retry policy --------------------------------------------------------------------------------
# -- resources per model and variant -------------------------------------------------------------------
RESOURCES = """
datasets:
  moons: {n_train: 512, n_val: 128, n_test: 128}
  rings: {n_train: 512, n_val: 128, n_test: 128}
models: {realnvp: {n_layers: 2, hidden: 8}}
seeds: [0]
train: {max_steps: 10}
slurm: {timeout_min: 5, mem_gb: 1}
"""


def test_slurm_resources_per_override_and_variant_stay_out_of_the_run_id(write_suite):
    from bench.launch import describe_resources, resource_groups

    plain = load_suite(write_suite(RESOURCES, "plain")).runs()
    path = write_suite(RESOURCES + """
overrides:
  - {match: {dataset: rings}, slurm: {mem_gb: 2, partition: big}}
variants:
  wide: {model.hidden: 16, slurm: {gpus_per_node: 4}}
  narrow: {model.hidden: 4}
""", "res")
    specs = load_suite(path).runs()
    by = {(s.dataset, s.variant): s.slurm for s in specs}
    assert by[("moons", "narrow")] == {"timeout_min": 5, "mem_gb": 1}
    assert by[("rings", "narrow")] == {"timeout_min": 5, "mem_gb": 2, "partition": "big"}
    assert by[("rings", "wide")] == {"timeout_min": 5, "mem_gb": 2, "partition": "big", "gpus_per_node": 4}
    # the same computation with other resources is the same run
    same = [s for s in specs if s.variant == "narrow"]
    other = load_suite(write_suite(RESOURCES.replace("hidden: 8", "hidden: 4"), "other")).runs()
    assert sorted(s.run_id for s in same) == sorted(s.run_id for s in other)
    assert {s.run_id for s in plain}.isdisjoint({s.run_id for s in specs})  # hidden 8 is another computation
    groups = resource_groups(specs, {"timeout_min": 9})  # the command line's --slurm wins over every run's
    assert [len(g) for _, g in groups] == [1, 1, 1, 1] and all(o["timeout_min"] == 9 for o, _ in groups)
    assert len(resource_groups([s for s in specs if s.variant == "narrow" or s.dataset == "moons"], {})) == 3
    assert describe_resources({"partition": "gpu", "gpus_per_node": 4, "mem_gb": 2}) == "gpu x4 (mem_gb=2)"
    # a bad key is one line naming where it is
    bad = write_suite(RESOURCES + "overrides:\n  - {match: {dataset: rings}, slurm: {gpus: 2}}\n", "bad")
    with pytest.raises(FlowbenchError, match=r'overrides\[0\]\.slurm: unknown SLURM option "gpus"'):
        load_suite(bad)
    bad = write_suite(RESOURCES + "variants:\n  big: {model.hidden: 16, slurm: [gpu]}\n", "bad2")
    with pytest.raises(FlowbenchError, match=r"variants\.big\.slurm: expected a mapping of SLURM resources"):
        load_suite(bad)


# -- the local executor: bounded, each run its GPUs ----------------------------------------------------
def test_local_runs_take_the_gpus_their_resources_ask_for(write_suite, tmp_path):
    """A variant's ``slurm: {gpus_per_node: 4}`` takes four GPUs on the local executor too (capped at
    what the machine has), the command line's options win as they do for SLURM arrays, a task each
    needs a GPU; runs alive at once share none unless --jobs asks for more runs than the GPUs hold."""
    from bench.launch import gpus_per_run, pick_gpus, run_local

    specs = load_suite(write_suite(RESOURCES + """
variants:
  wide: {model.hidden: 16, slurm: {gpus_per_node: 4}}
  two_tasks: {model.hidden: 12, slurm: {tasks_per_node: 2}}
  narrow: {model.hidden: 4}
""", "res")).runs()
    need = {s.variant: gpus_per_run(s, {}, 8) for s in specs}
    assert need == {"wide": 4, "two_tasks": 2, "narrow": 1}
    wide = next(s for s in specs if s.variant == "wide")
    assert gpus_per_run(wide, {}, 2) == 2 and gpus_per_run(wide, {"gpus_per_node": 1}, 8) == 1
    assert gpus_per_run(wide, {}, 0) == 0  # no GPUs: nothing to hand out
    assert pick_gpus([0, 0, 0, 0], 4, share=False) == [0, 1, 2, 3]
    assert pick_gpus([1, 0, 1, 0], 2, share=False) == [1, 3]
    assert pick_gpus([1, 0, 1, 0], 3, share=False) is None  # waits for a run to end
    assert pick_gpus([1, 1], 1, share=True) == [0] and pick_gpus([2, 1], 1, share=True) == [1]
    with pytest.raises(FlowbenchError, match="--jobs 0: expected a positive number of runs at once"):
        run_local(specs, tmp_path / "results", {}, jobs=0, gpus=["0"], progress=False)
    assert not (tmp_path / "results").exists()  # refused before anything was written


TRACE_PLUGIN = '''
import atexit, os, time
from baselines import realnvp
from baselines.registry import register

_trace = os.environ.get("FB_TRACE")


def _log(what):
    if _trace:
        with open(_trace, "a") as f:
            f.write(f"{what} {os.getpid()} {time.time():.3f} {os.environ.get('CUDA_VISIBLE_DEVICES', '-')}\\n")


_log("start")
atexit.register(_log, "end")


@register("traceflow", "a two-layer RealNVP that logs when its process starts and ends")
def build(data, hidden: int = 8):
    return realnvp.build(data, n_layers=2, hidden=hidden)
'''


@pytest.mark.slow
def test_local_jobs_bound_the_runs_alive_at_once(write_suite, tmp_path, monkeypatch):
    """--jobs 2 over three runs: never more than two run processes alive, two at some point, and
    the two alive at once hold different GPUs (CUDA_VISIBLE_DEVICES round-robin over the slots)."""

    from bench.launch import run_local

    (tmp_path / "fb_trace_plugin.py").write_text(TRACE_PLUGIN)
    trace = tmp_path / "trace.txt"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("FB_TRACE", str(trace))
    monkeypatch.setenv("FLOWBENCH_THREADS", "1")
    path = write_suite(SIX_RUNS.replace("models: {realnvp: {n_layers: 2, hidden: 8}}", "models: [traceflow]")
                       .replace("seeds: [0, 1, 2, 3, 4, 5]", "seeds: [0, 1, 2]").replace("max_steps: 60", "max_steps: 5")
                       + "plugins: [fb_trace_plugin]\n", "jobs")
    specs = load_suite(path).runs()
    summary = run_local(specs, tmp_path / "results", {"timeout_min": 10}, jobs=2, gpus=["0", "1"], progress=False)
    assert summary.statuses["completed"] == 3, summary
    events: dict[int, dict] = {}
    for line in trace.read_text().splitlines():
        what, pid, t, gpu = line.split()
        if int(pid) != os.getpid():
            events.setdefault(int(pid), {})[what] = (float(t), gpu)
    assert len(events) == 3 and all(set(e) == {"start", "end"} for e in events.values()), events
    spans = sorted((e["start"][0], e["end"][0], e["start"][1]) for e in events.values())
    alive = [[s for s in spans if s[0] <= t < s[1]] for t, _, _ in spans]  # who is alive as each one starts
    assert max(len(a) for a in alive) == 2
    assert all(len({s[2] for s in a}) == len(a) for a in alive)  # the processes alive at once: distinct GPUs
    assert {s[2] for s in spans} == {"0", "1"}
    # a variant asking for two GPUs gets two; the other run starts beside it on the third
    trace.unlink()
    path = write_suite(SIX_RUNS.replace("models: {realnvp: {n_layers: 2, hidden: 8}}", "models: [traceflow]")
                       .replace("seeds: [0, 1, 2, 3, 4, 5]", "seeds: [0]").replace("max_steps: 60", "max_steps: 5")
                       + "plugins: [fb_trace_plugin]\nvariants:\n  wide: {model.hidden: 16, slurm: {gpus_per_node: 2}}\n"
                       + "  narrow: {model.hidden: 4}\n", "gpus")
    summary = run_local(load_suite(path).runs(), tmp_path / "results", {"timeout_min": 10}, gpus=["0", "1", "2"],
                        progress=False)
    assert summary.statuses["completed"] == 2 and summary.arrays[0][2] == "2 at once, 3 GPUs (1-2 a run)", summary
    held = sorted(line.split()[3] for line in trace.read_text().splitlines()
                  if line.startswith("start") and int(line.split()[1]) != os.getpid())
    assert held == ["0,1", "2"]


def test_local_executor_rejects_jobs_elsewhere(write_suite, results, capsys):
    path = write_suite(SUITE)
    assert main(["run", str(path), "--results", str(results), "--jobs", "2"]) == 2
    assert "--jobs 2: only the local executor" in capsys.readouterr().err


# -- the code a job runs -----------------------------------------------------------------------------------




def test_a_job_writes_its_final_record_once_with_the_code_and_why_it_stopped(write_suite, tmp_path, monkeypatch,
                                                                           stop_at_step):
    """RunJob (what SLURM and local workers call): a run stopped by TERM mid-way writes one final
    result.json that already holds the submitted code and the reason, not a record patched after."""
    import signal

    from bench.launch import RunJob
    from bench.store import RunRecord

    spec = load_suite(write_suite(SIX_RUNS.replace("seeds: [0, 1, 2, 3, 4, 5]", "seeds: [0]"), "job")).runs()[0]
    stop_at_step(5, lambda: os.kill(os.getpid(), signal.SIGTERM))  # as scancel does; RunJob's handler stops the loop
    writes = []
    original_write = RunRecord.write_result
    monkeypatch.setattr(RunRecord, "write_result", lambda self, r: (writes.append(dict(r)), original_write(self, r)))
    monkeypatch.setattr("bench.env.git_sha", lambda: None)  # a code snapshot holds no .git
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR2)}
    try:
        out = RunJob(str(tmp_path / "results"), None, "cpu", 1, {"sha": "abc123", "git": "0123+dirty"})(spec.to_dict())
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
    final = [w for w in writes if w.get("status") != "running"]
    assert len(final) == 1 and final[0]["status"] == "preempted", writes
    assert final[0]["code"]["submitted"] == "abc123" and final[0]["code"]["git"] == "0123+dirty"
    assert final[0]["env"]["git_sha"] == "0123+dirty"  # the submission's commit, for check's history and the report
    assert final[0]["error"].startswith("stopped by SIGTERM (scancel or shutdown) at step 5; checkpointed")
    assert out == {"run_id": spec.run_id, "status": "preempted", "error": final[0]["error"]}
    assert RunRecord(tmp_path / "results", spec.suite, spec.run_id).read_result() == final[0]
