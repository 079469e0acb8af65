"""The retry policy (bench/retry.py): what `flowbench run` takes up again, and what `status` says of it."""

from __future__ import annotations

import pytest

from bench.cli import main
from bench.errors import FlowbenchError
from bench.spec import load_suite
from bench.store import RunRecord
from tiny_suites import SIX_SEEDS

TEN_STEP_RUNS = SIX_SEEDS.replace("max_steps: 60", "max_steps: 10")


def _set_status(record: RunRecord, status: str, **extra) -> None:
    record.write_result({**(record.read_result() or {}), "status": status, "steps": 7, **extra})


def test_retry_policy_leaves_diverged_alone_and_status_says_why(write_suite, results, capsys):
    from bench.retry import DEFAULT_RETRY, decide, parse_retry, pending, run_state

    path = write_suite(TEN_STEP_RUNS)
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    specs = load_suite(path).runs()
    records = [RunRecord(results, s.suite, s.run_id) for s in specs]
    # seed 0 stays completed; the others as a sweep leaves them (running without a live claim: lost)
    for record, status in zip(records[1:], ["failed", "timeout", "preempted", "diverged", "running"]):
        _set_status(record, status)
    assert [run_state(r)[0] for r in records] == ["completed", "failed", "timeout", "preempted", "diverged", "lost"]
    todo, done = pending(specs, results)
    assert [s.seed for s in todo] == [1, 2, 3, 5] and done == 1  # diverged (seed 4) left alone
    assert [s.seed for s in pending(specs, results, retry=parse_retry("diverged"))[0]] == [1, 2, 3, 4, 5]
    assert len(pending(specs, results, force=True)[0]) == 6
    assert decide("diverged", {"steps": 7}, DEFAULT_RETRY) == (False, "diverged at step 7; left alone "
                                                                      "(--retry diverged re-runs it)")
    assert decide("pending", {}, DEFAULT_RETRY, slurm={"executor": "slurm", "job_id": "9_1", "state": "FAILED"}) \
        == (True, "lost: job 9_1 ended FAILED before the run started")
    assert decide("preempted", {}, DEFAULT_RETRY, slurm={"executor": "slurm", "job_id": "9_1",
                                                         "state": "PENDING"}) == (False, "job 9_1 is PENDING")
    with pytest.raises(FlowbenchError, match='--retry divergd: unknown status "divergd" \\(did you mean "diverged"'):
        parse_retry("divergd")

    capsys.readouterr()
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "run: lost: recorded running at step 7, but its process is gone" in out
    assert "diverged at step 7; left alone (--retry diverged re-runs it)" in out
    assert "would take up 4: 1 failed, 1 lost, 1 preempted, 1 timeout" in out
    assert main(["status", str(path), "--results", str(results), "--retry", "diverged"]) == 0
    assert "would take up 5" in capsys.readouterr().out

    # run re-runs the four, leaves the diverged record as it was, and says so
    diverged_before = records[4].result_path.read_bytes()
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    out = capsys.readouterr().out
    assert "4 completed, 1 diverged left alone (--retry diverged re-runs it), 1 already completed" in out
    assert records[4].result_path.read_bytes() == diverged_before
    assert all(r.status == "completed" for i, r in enumerate(records) if i != 4)
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--retry", "diverged"]) == 0
    assert records[4].status == "completed"
