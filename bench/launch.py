"""Executors: ``inline`` (this process), ``local`` (submitit's LocalExecutor, parallel processes)
and ``slurm`` (one submitit job array on a SLURM cluster).

Every executor runs the same ``bench.train.run_one`` into the same records. On SLURM, a run
checkpoints and requeues itself when SLURM signals the end of its allocation (USR2, sent
``signal_delay_s`` before the time limit, or a preemption), and a ``scancel`` (TERM) leaves a
checkpoint and a ``preempted`` record, so the next ``flowbench run`` resumes it. ``slurm.json``
in a run's folder remembers its job, so a run that is still queued is never submitted twice.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError, did_you_mean
from bench.metrics import headline_of
from bench.spec import RunSpec, parse_value
from bench.store import RunRecord, atomic_write_json

EXECUTORS = ("inline", "local", "slurm")

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
FINAL_STATUSES = {"completed", "failed", "timeout", "preempted", "diverged"}
NOT_FAILED = ("completed", "submitted", "queued", "claimed")  # claimed: another live process trains the run


@dataclass
class SweepSummary:
    """What a sweep did: counts by final status, skipped (already completed) runs, problems."""

    statuses: Counter = field(default_factory=Counter)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (run label, message)
    job_ids: list[str] = field(default_factory=list)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in NOT_FAILED)

    def line(self) -> str:
        parts = [f"{n} {s}" for s, n in sorted(self.statuses.items())]
        return ", ".join(parts + [f"{self.skipped} already completed"]) if parts or self.skipped else "nothing to run"


def pending(specs: Sequence[RunSpec], results_dir: str | Path, force: bool = False) -> tuple[list[RunSpec], int]:
    """The specs that still need running (all of them with ``force``), and how many are complete."""
    todo, done = [], 0
    for spec in specs:
        record = RunRecord(results_dir, spec.suite, spec.run_id)
        if not force and record.status == "completed":
            done += 1
        else:
            todo.append(spec)
    return todo, done


def describe_result(spec: RunSpec, result: dict[str, Any]) -> str:
    """One line per finished run: status, headline test metric, time."""
    status = result["status"]
    if status == "claimed":
        return f"- {spec.label} [{spec.run_id}] {result.get('error')}"
    if status != "completed":
        return f"x {spec.label} [{spec.run_id}] {status}: {result.get('error')}"
    name, value = headline_of(spec.metric, result.get("test", {}))
    shown = f"test {name} {value:.4f}" if isinstance(value, float) else ""
    return f"ok {spec.label} [{spec.run_id}] {shown} ({result['steps']} steps, {result['train_seconds']:.1f} s)"


# -- inline -------------------------------------------------------------------------------------
def run_inline(specs: Sequence[RunSpec], results_dir: str | Path, data_root: str | None = None,
               device: str | None = None, force: bool = False, progress: bool = True) -> SweepSummary:
    """Run the pending specs one after another in this process, with a bar of done/failed runs."""
    from tqdm.auto import tqdm

    from bench.train import run_one

    todo, done = pending(specs, results_dir, force)
    summary = SweepSummary(skipped=done)
    with tqdm(total=len(todo), desc="runs", unit="run", disable=not progress or not todo, dynamic_ncols=True) as bar:
        for spec in todo:
            record = RunRecord(results_dir, spec.suite, spec.run_id)
            try:
                result = run_one(spec, record, data_root=data_root, device=device, progress=progress, force=force)
            except FlowbenchError as err:  # e.g. a checkpoint that does not fit: the record stays as it was
                summary.statuses["failed"] += 1
                summary.errors.append((spec.label, str(err)))
                bar.write(f"  x {spec.label}: {err}")
            else:
                if result.get("skipped"):  # completed by another process since `pending` looked
                    summary.skipped += 1
                else:
                    summary.statuses[result["status"]] += 1
                    bar.write("  " + describe_result(spec, result))
                if result["status"] not in NOT_FAILED:
                    summary.errors.append((spec.label, result.get("error") or result["status"]))
            bar.update(1)
            bar.set_postfix(done=summary.statuses["completed"], failed=summary.failed, refresh=False)
    return summary


# -- the job that submitit runs ----------------------------------------------------------------
class RunJob:
    """A picklable callable: one run inside a submitit job, with SLURM's signals handled.

    USR2 (end of allocation or preemption) and TERM (scancel) ask the loop to stop at the next
    step boundary; it checkpoints and the record says ``preempted``. After USR2 the job then hands
    over to submitit, which calls ``checkpoint`` and requeues the job; the requeued job resumes.
    """

    def __init__(self, results_dir: str, data_root: str | None, device: str | None, concurrent: int = 1):
        self.results_dir, self.data_root, self.device = str(results_dir), data_root, device
        self.concurrent = concurrent  # processes started at once on this machine (local executor): they share its cores

    def __call__(self, spec_dict: dict[str, Any]) -> dict[str, Any]:
        from bench.train import request_stop, run_one, run_threads

        spec = RunSpec.from_dict(spec_dict)
        spec.import_plugins()  # a fresh worker process: register the suite's plugin models and datasets first
        _export_distributed_environment()
        received: list[int] = []
        submitit_handler = signal.getsignal(signal.SIGUSR2)

        def on_signal(signum: int, frame: Any) -> None:
            received.append(signum)
            request_stop()

        signal.signal(signal.SIGUSR2, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        record = RunRecord(self.results_dir, spec.suite, spec.run_id)
        result = run_one(spec, record, data_root=self.data_root, device=self.device, progress=False,
                         threads=run_threads(getattr(self, "concurrent", 1)))
        if result["status"] == "preempted":
            why = "SLURM's end-of-allocation signal" if signal.SIGUSR2 in received else "SIGTERM (scancel or shutdown)"
            result["error"] = f"stopped by {why} at step {result.get('steps')}; checkpointed, resumes when run again"
            record.write_result(result)
            if signal.SIGUSR2 in received and callable(submitit_handler):
                submitit_handler(signal.SIGUSR2, None)  # submitit: checkpoint() -> requeue -> exit
        return {"run_id": spec.run_id, "status": result["status"], "error": result.get("error")}

    def checkpoint(self, spec_dict: dict[str, Any]) -> Any:
        """submitit's hook on preemption/timeout: requeue this same run (it resumes from its checkpoint)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, spec_dict)


def _export_distributed_environment() -> None:
    """For a job of several tasks (one per GPU), set RANK, WORLD_SIZE, MASTER_ADDR... for torch.distributed."""
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job
        return
    if tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


# -- slurm and local ---------------------------------------------------------------------------
def parse_slurm_overrides(text: str | None) -> dict[str, Any]:
    """``"partition=gpu,timeout_min=120"`` -> {"partition": "gpu", "timeout_min": 120}."""
    out: dict[str, Any] = {}
    for piece in filter(None, (p.strip() for p in (text or "").split(","))):
        key, eq, value = piece.partition("=")
        if not eq:
            raise FlowbenchError(f'--slurm {text}: expected KEY=VALUE pairs, e.g. "partition=gpu,timeout_min=120"')
        out[key.strip()] = parse_value(value.strip())
    return out


def slurm_parameters(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Suite/CLI SLURM options -> submitit parameters, each key checked."""
    merged = {**SLURM_DEFAULTS, **options}
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


def job_states(job_ids: Sequence[str]) -> dict[str, str]:
    """SLURM's state of each job id (array tasks as ``123_4``), from sacct, then squeue."""
    states: dict[str, str] = {}
    ids = sorted({j for j in job_ids if j})
    if not ids:
        return states
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-X", "--format=JobID,State", "-j", ",".join(i.split("_")[0] for i in ids)],
                             capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            job, _, state = line.partition("|")
            states[job] = state.split()[0] if state else "UNKNOWN"
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, timeout=60).stdout
        for line in out.splitlines():
            job, _, state = line.partition("|")
            if job in ids:
                states[job] = state
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {j: states.get(j, "UNKNOWN") for j in ids}


def read_slurm_info(record: RunRecord) -> dict[str, Any]:
    try:
        return json.loads((record.dir / "slurm.json").read_text())
    except (OSError, ValueError):
        return {}


def submit(specs: Sequence[RunSpec], results_dir: str | Path, executor: str, slurm_options: Mapping[str, Any],
           data_root: str | None = None, device: str | None = None,
           force: bool = False) -> tuple[SweepSummary, list[RunSpec], list]:
    """Submit the pending runs as one job array; returns the summary, the submitted specs and their jobs."""
    import submitit

    todo, done = pending(specs, results_dir, force)
    summary = SweepSummary(skipped=done)
    if executor == "slurm":
        check_slurm_reachable()
        queued = {spec.run_id: read_slurm_info(RunRecord(results_dir, spec.suite, spec.run_id)).get("job_id")
                  for spec in todo}
        states = job_states([j for j in queued.values() if j])
        active = {rid for rid, job in queued.items() if job and states.get(job) in ACTIVE_STATES}
        if active:
            summary.statuses["queued"] += len(active)
            todo = [s for s in todo if s.run_id not in active]
    held = {s.run_id for s in todo if RunRecord(results_dir, s.suite, s.run_id).claim_state() == "live"}
    if held:  # a live process trains them now: never submitted twice, never cleared under it
        summary.statuses["claimed"] += len(held)
        todo = [s for s in todo if s.run_id not in held]
    if not todo:
        return summary, [], []
    suite = todo[0].suite
    folder = Path(results_dir) / suite / "_slurm"
    folder.mkdir(parents=True, exist_ok=True)
    params = slurm_parameters(slurm_options, "slurm")
    if executor == "local":
        params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    params.setdefault("name", f"flowbench-{suite}")
    ex = submitit.AutoExecutor(folder=folder, cluster=executor)
    ex.update_parameters(**params)
    for spec in todo:
        record = RunRecord(results_dir, spec.suite, spec.run_id)
        record.create(spec.to_dict())
        if force:
            record.clear()
    concurrent = len(todo) * int(params.get("tasks_per_node") or 1) if executor == "local" else 1
    job_fn = RunJob(str(Path(results_dir).resolve()), data_root, device, concurrent)
    try:
        jobs = ex.map_array(job_fn, [s.to_dict() for s in todo])
    except Exception as err:  # sbatch refused (bad partition, account, ...)
        raise FlowbenchError(f"submission failed: {str(err).strip().splitlines()[-1] if str(err).strip() else err}; "
                             "nothing was submitted") from None
    now = time.time()
    for spec, job in zip(todo, jobs):
        atomic_write_json(RunRecord(results_dir, spec.suite, spec.run_id).dir / "slurm.json",
                          {"job_id": job.job_id, "executor": executor, "submitted": now,
                           "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)})
    summary.statuses["submitted"] += len(jobs)
    summary.job_ids = [j.job_id for j in jobs]
    return summary, todo, jobs


def wait(specs: Sequence[RunSpec], results_dir: str | Path, jobs: Sequence[Any], progress: bool = True,
         poll_s: float = 2.0) -> SweepSummary:
    """Wait for submitted jobs, showing a bar of finished runs; the final statuses come from the records."""
    from tqdm.auto import tqdm

    by_job = {job.job_id: spec for job, spec in zip(jobs, specs)}
    final: dict[str, str] = {}
    with tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress, dynamic_ncols=True) as bar:
        while len(final) < len(jobs):
            for job in jobs:
                if job.job_id in final or not job.done():
                    continue
                spec = by_job[job.job_id]
                result = RunRecord(results_dir, spec.suite, spec.run_id).read_result() or {}
                status = result.get("status")
                if status == "preempted" and job.state in ACTIVE_STATES:
                    continue  # requeued: not finished yet
                final[job.job_id] = status if status in FINAL_STATUSES else "failed"
                bar.update(1)
                bar.set_postfix(done=sum(s == "completed" for s in final.values()),
                                failed=sum(s != "completed" for s in final.values()), refresh=False)
            if len(final) < len(jobs):
                time.sleep(poll_s)
    summary = SweepSummary()
    for job_id, status in final.items():
        summary.statuses[status] += 1
        if status != "completed":
            spec = by_job[job_id]
            result = RunRecord(results_dir, spec.suite, spec.run_id).read_result() or {}
            summary.errors.append((spec.label, f"{result.get('error') or status} (log: {jobs_log(job_id, jobs)})"))
    return summary


def jobs_log(job_id: str, jobs: Sequence[Any]) -> str:
    for job in jobs:
        if job.job_id == job_id:
            return str(job.paths.stderr)
    return "?"


def slurm_view(specs: Sequence[RunSpec], results_dir: str | Path) -> dict[str, dict[str, Any]]:
    """run_id -> {"job_id", "state", "stderr"} for runs submitted through SLURM (or local)."""
    infos = {s.run_id: read_slurm_info(RunRecord(results_dir, s.suite, s.run_id)) for s in specs}
    slurm_ids = [i["job_id"] for i in infos.values() if i.get("executor") == "slurm" and i.get("job_id")]
    states = job_states(slurm_ids) if slurm_ids and shutil.which("sacct") else {}
    return {rid: {**info, "state": states.get(info.get("job_id"), "")} for rid, info in infos.items() if info}


DEAD_STATES = {"CANCELLED": "failed", "FAILED": "failed", "TIMEOUT": "timeout", "OUT_OF_MEMORY": "failed",
               "NODE_FAIL": "failed", "PREEMPTED": "preempted", "BOOT_FAIL": "failed", "DEADLINE": "timeout"}


def reconcile(spec: RunSpec, results_dir: str | Path, info: Mapping[str, Any]) -> dict[str, Any] | None:
    """A run whose job died without a final record (OOM, node failure, kill -9) gets one saying so."""
    state = info.get("state", "")
    record = RunRecord(results_dir, spec.suite, spec.run_id)
    result = record.read_result()
    if state not in DEAD_STATES or (result and result.get("status") != "running"):
        return None
    new = {**(result or {}), "run_id": spec.run_id, "status": DEAD_STATES[state],
           "error": f"SLURM job {info.get('job_id')} ended {state} before the run finished; log: {info.get('stderr')}"}
    record.write_result(new)
    return new


def cancel(specs: Sequence[RunSpec], results_dir: str | Path) -> list[str]:
    """scancel the queued or running jobs of these runs; returns the job ids cancelled."""
    view = slurm_view(specs, results_dir)
    ids = sorted({v["job_id"] for v in view.values() if v.get("state") in ACTIVE_STATES})
    if ids:
        if shutil.which("scancel") is None:
            raise FlowbenchError("scancel not found: SLURM's client tools are not on PATH")
        subprocess.run(["scancel", *ids], check=False, capture_output=True, timeout=60)
    return ids


def environment_has_slurm() -> bool:
    return shutil.which("sbatch") is not None and bool(os.environ.get("SLURM_CONF") or Path("/etc/slurm/slurm.conf").exists())
