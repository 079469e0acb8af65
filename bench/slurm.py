"""SLURM: the suite's resources as submitit parameters, and what SLURM says of the jobs.

``slurm_parameters`` checks a suite's (or override's, variant's, ``--slurm``'s) resource keys;
``job_states`` asks sacct and squeue about many array jobs in a few calls (one per QUERY_CHUNK
arrays, never one per run), so ``status`` stays quick at thousands of runs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from bench.errors import FlowbenchError, did_you_mean
from bench.fields import parse_value
from bench.store import RunRecord

__all__ = ["SLURM_OPTIONS", "SLURM_DEFAULTS", "ACTIVE_STATES", "parse_slurm_overrides", "slurm_parameters", "check_slurm_reachable", "SLURM_QUERIES", "QUERY_CHUNK", "job_states", "read_slurm_info", "UNKNOWN_GRACE_S", "still_queued"]

# suite `slurm:` key -> submitit AutoExecutor parameter
SLURM_OPTIONS = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos",
    "constraint": "slurm_constraint", "timeout_min": "timeout_min", "gpus_per_node": "gpus_per_node",
    "cpus_per_task": "cpus_per_task", "mem_gb": "mem_gb", "nodes": "nodes", "tasks_per_node": "tasks_per_node",
    "array_parallelism": "slurm_array_parallelism", "signal_delay_s": "slurm_signal_delay_s",
    "max_num_timeout": "slurm_max_num_timeout", "additional": "slurm_additional_parameters",
    "setup": "slurm_setup", "job_name": "name", "exclude": "slurm_exclude",
}
SLURM_DEFAULTS = {"timeout_min": 60, "cpus_per_task": 2, "array_parallelism": 64, "signal_delay_s": 90}
ACTIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "SUSPENDED", "RESIZING",
                 "REQUEUE_HOLD", "REQUEUE_FED", "STAGE_OUT", "SIGNALING"}

def parse_slurm_overrides(text: str | None) -> dict[str, Any]:
    """``"partition=gpu,timeout_min=120"`` -> {"partition": "gpu", "timeout_min": 120}."""
    out: dict[str, Any] = {}
    for piece in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, value = piece.partition("=")
        if not eq:
            raise FlowbenchError(f'--slurm {text}: expected KEY=VALUE pairs, e.g. "partition=gpu,timeout_min=120"')
        out[key.strip()] = parse_value(value.strip())
    return out


def slurm_parameters(options: Mapping[str, Any], where: str, defaults: bool = True) -> dict[str, Any]:
    """Suite/CLI SLURM options -> submitit parameters, each key checked (``defaults``: SLURM_DEFAULTS
    filled in for what is not given)."""
    merged = {**SLURM_DEFAULTS, **options} if defaults else dict(options)
    params: dict[str, Any] = {}
    for key, value in merged.items():
        if key not in SLURM_OPTIONS:
            raise FlowbenchError(f'{where}: unknown SLURM option "{key}"{did_you_mean(key, SLURM_OPTIONS)}')
        if key == "setup" and isinstance(value, str):
            value = [value]
        if key == "additional" and not isinstance(value, Mapping):
            raise FlowbenchError(f"{where}.additional: expected a mapping of extra sbatch options, got {value!r}")
        params[SLURM_OPTIONS[key]] = value
    return params


def check_slurm_reachable() -> None:
    """One clear message, and nothing submitted, when SLURM's tools or controller are missing."""
    if shutil.which("sbatch") is None:
        raise FlowbenchError("sbatch not found: SLURM's client tools are not installed or not on PATH; "
                             "nothing was submitted (use --executor local or inline on this machine)")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FlowbenchError(f"the SLURM controller did not answer ({err}); nothing was submitted") from None
    if ping.returncode != 0 or "UP" not in ping.stdout:
        detail = (ping.stdout + ping.stderr).strip().splitlines()
        raise FlowbenchError(f"the SLURM controller is not reachable ({detail[-1] if detail else 'scontrol ping failed'});"
                             " check SLURM_CONF and that slurmctld runs; nothing was submitted")


SLURM_QUERIES: Counter = Counter()  # sacct / squeue calls made by this process (benchmarks/bench_slurm.py counts them)
QUERY_CHUNK = 200  # array job ids per sacct / squeue call


def _expand_task_ids(job: str) -> list[str]:
    """sacct's and squeue's compressed array tasks, ``123_[0-3,7]`` -> 123_0 ... 123_3, 123_7."""
    base, _, rest = job.partition("_[")
    if not rest:
        return [job]
    out = []
    for piece in rest.rstrip("]").split("%")[0].split(","):
        lo, dash, hi = piece.partition("-")
        try:
            out += [f"{base}_{i}" for i in range(int(lo), int(hi if dash else lo) + 1)]
        except ValueError:
            continue
    return out


def _query(cmd: list[str]) -> str:
    SLURM_QUERIES[cmd[0]] += 1
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM's state of each job id (array tasks as ``123_4``): one sacct call (accounting, final
    states) and one squeue call (live states, fresher) per QUERY_CHUNK arrays, never one per run;
    "UNKNOWN" for a job neither knows."""
    states: dict[str, str] = {}
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return states
    arrays = sorted({i.split("_")[0] for i in ids})
    try:
        for k in range(0, len(arrays), QUERY_CHUNK):
            chunk = ",".join(arrays[k:k + QUERY_CHUNK])
            for command in (["sacct", "-n", "-P", "-X", "--format=JobID,State", "-j", chunk],
                            ["squeue", "-h", "-r", "-j", chunk, "-o", "%i|%T"]):
                for line in _query(command).splitlines():
                    job, _, state = line.partition("|")
                    for task in _expand_task_ids(job.strip()):
                        states[task] = state.split()[0] if state.strip() else "UNKNOWN"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {j: states.get(j, "UNKNOWN") for j in ids}


def read_slurm_info(record: RunRecord) -> dict[str, Any]:
    """The run's slurm.json (its job, executor, logs, submitted code), {} when absent or unreadable."""
    try:
        info = json.loads((record.dir / "slurm.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


UNKNOWN_GRACE_S = 600  # a job SLURM does not know yet (accounting lags) counts as queued this long after submission


def still_queued(info: Mapping[str, Any]) -> bool:
    """Whether the job of a slurm.json joined with its state (``slurm_view``) may still run the run."""
    state = info.get("state", "")
    if state in ACTIVE_STATES:
        return True
    submitted = info.get("submitted")
    return state == "UNKNOWN" and isinstance(submitted, (int, float)) and time.time() - submitted < UNKNOWN_GRACE_S
