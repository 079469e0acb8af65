"""The retry policy: which runs ``flowbench run`` takes up again, and why (``status`` shows it).

Failed, timed-out, preempted and lost runs are re-run (the last three resume from their
checkpoint); a diverged run with the same seed diverges again, and a run out of memory (``oom``)
runs out again on the same device, so they are left alone unless ``--retry diverged`` / ``--retry
oom`` or ``--force``. A job SLURM still holds is never submitted twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError, did_you_mean
from bench.slurm import still_queued
from bench.spec import RunSpec
from bench.store import RunRecord

__all__ = ["RETRYABLE", "DEFAULT_RETRY", "parse_retry", "run_state", "decide", "pending"]

RETRYABLE = ("failed", "timeout", "preempted", "lost", "diverged", "oom")
DEFAULT_RETRY = frozenset({"failed", "timeout", "preempted", "lost"})  # diverged and oom re-runs fail again


def parse_retry(text: str | None) -> frozenset[str]:
    """``--retry diverged,oom`` (a comma list, or ``all``): statuses re-run on top of DEFAULT_RETRY."""
    wanted = {p.strip() for p in (text or "").split(",") if p.strip()}
    if "all" in wanted:
        return frozenset(RETRYABLE)
    for status in wanted:
        if status not in RETRYABLE:
            raise FlowbenchError(f'--retry {text}: unknown status "{status}"{did_you_mean(status, RETRYABLE)}; '
                                 f"choose from {', '.join(RETRYABLE)} or all")
    return DEFAULT_RETRY | wanted


def run_state(record: RunRecord) -> tuple[str, dict[str, Any]]:
    """(state, result) of a record as the retry policy sees it: "pending" (no result), "running" (a
    live process holds it), "lost" (a running record whose process is gone: no live claim),
    "unreadable", or the recorded status."""
    result, problem = record.load_result()
    if problem:
        return "unreadable", {}
    if result is None:
        return "pending", {}
    status = result.get("status", "failed")
    if status == "running":
        return ("running" if record.claim_state() == "live" else "lost"), result
    return status, result


def decide(state: str, result: Mapping[str, Any] | None = None, retry: frozenset[str] = DEFAULT_RETRY,
           force: bool = False, slurm: Mapping[str, Any] | None = None) -> tuple[bool, str]:
    """Whether ``flowbench run`` takes a run up again, and why (shown by ``status``).

    ``state`` comes from ``run_state``; ``slurm`` is the run's slurm.json joined with SLURM's state
    of its job (``slurm_view``): a job still queued or running is never submitted twice, and a job
    that ended while the record says nothing happened (or that the run still runs) lost the run.
    """
    result, slurm = result or {}, slurm or {}
    job, job_state = slurm.get("job_id"), slurm.get("state", "")
    if slurm.get("executor") == "slurm" and still_queued(slurm):
        return False, f"job {job} is {job_state if job_state != 'UNKNOWN' else 'just submitted'}"
    if force:
        return True, "--force"
    steps = result.get("steps")
    at = f" at step {steps}" if steps else ""
    if state == "completed":
        return False, "completed"
    if state == "running":
        return False, "running now (claimed by a live process)"
    if state == "unreadable":
        return True, "result.json unreadable: the run says how to fix it"
    if state == "pending":
        if job and job_state and slurm.get("executor") == "slurm":
            return "lost" in retry, f"lost: job {job} ended {job_state} before the run started"
        return True, "not run yet"
    if state == "lost":
        ended = f"job {job} ended {job_state}" if job and job_state else "its process is gone"
        return "lost" in retry, f"lost: recorded running{at}, but {ended}; resumes from its checkpoint"
    if state == "oom" and "oom" not in retry:
        return False, (f"out of memory{at}; left alone: lower train.batch_size or raise train.accumulate (a new "
                       "run), or re-run it with --retry oom on a larger device")
    if state in RETRYABLE:
        if state not in retry:
            return False, f"{state}{at}; left alone (--retry {state} re-runs it)"
        resumes = "resumes from its checkpoint" if state in ("preempted", "timeout") else "re-runs"
        return True, f"{state}{at}: {resumes}"
    return True, f"status {state!r} unknown: re-runs"


def pending(specs: Sequence[RunSpec], results_dir: str | Path, force: bool = False,
            retry: frozenset[str] = DEFAULT_RETRY, left: Counter | None = None) -> tuple[list[RunSpec], int]:
    """The specs ``run`` takes up (``decide``; all of them with ``force``), and how many are complete.
    Runs held by a live process stay in (they are reported as claimed); runs the policy leaves alone
    are counted by status in ``left``."""
    todo, done = [], 0
    for spec in specs:
        state, result = run_state(RunRecord(results_dir, spec.suite, spec.run_id))
        go, _ = decide(state, result, retry, force)
        if go or state == "running":
            todo.append(spec)
        elif state == "completed":
            done += 1
        elif left is not None:
            left[state] += 1
    return todo, done
