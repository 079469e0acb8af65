"""Executors: ``inline`` (this process), ``local`` (submitit's LocalExecutor, parallel processes)
and ``slurm`` (one submitit job array on a SLURM cluster).

Every executor runs the same ``bench.train.run_one`` into the same records. On SLURM, a run
checkpoints and requeues itself when SLURM signals the end of its allocation (USR2, sent
``signal_delay_s`` before the time limit, or a preemption), and a ``scancel`` (TERM) leaves a
checkpoint and a ``preempted`` record, so the next ``flowbench run`` resumes it. ``slurm.json``
in a run's folder remembers its job, so a run that is still queued is never submitted twice.

Runs whose resources differ (``slurm:`` of an override or variant) go in one array per resource
set. The submitted code is snapshotted (``bench.snapshot``) and the jobs start in the copy, so a
queued or requeued task runs the code of its submission. Which records ``run`` takes up again is
``bench.retry``'s policy; what SLURM says of the jobs comes from ``bench.slurm``. The local
executor runs at most ``--jobs`` processes at once, each on its own GPU(s).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError
from bench.io import atomic_write_json
from bench.metrics import headline_of
from bench.retry import DEFAULT_RETRY, pending
from bench.slurm import (ACTIVE_STATES, check_slurm_reachable, job_states, read_slurm_info, slurm_parameters,
                         still_queued)
from bench.snapshot import running_code, snapshot_code
from bench.spec import RunSpec
from bench.store import RunRecord

__all__ = ["EXECUTORS", "SweepSummary", "RunJob", "run_inline", "run_local", "local_gpus", "submit", "wait",
           "slurm_view", "reconcile", "cancel", "resource_groups", "run_resources", "environment_has_slurm", "gpus_per_run", "pick_gpus",
           "describe_resources"]

EXECUTORS = ("inline", "local", "slurm")

FINAL_STATUSES = {"completed", "failed", "timeout", "preempted", "diverged", "oom"}
NOT_FAILED = ("completed", "submitted", "queued", "claimed")  # claimed: another live process trains the run


@dataclass
class SweepSummary:
    """What a sweep did: counts by final status, skipped (already completed) runs, problems."""

    statuses: Counter = field(default_factory=Counter)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (run label, message)
    job_ids: list[str] = field(default_factory=list)
    left: Counter = field(default_factory=Counter)  # records the retry policy leaves alone, by status (diverged)
    arrays: list[tuple[str, int, str]] = field(default_factory=list)  # (array job id, runs, resources) per array

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s not in NOT_FAILED)

    def line(self) -> str:
        parts = [f"{n} {s}" for s, n in sorted(self.statuses.items())]
        parts += [f"{n} {s} left alone (--retry {s} re-runs {'it' if n == 1 else 'them'})"
                  for s, n in sorted(self.left.items())]
        return ", ".join(parts + [f"{self.skipped} already completed"]) if parts or self.skipped else "nothing to run"


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


# -- progress -----------------------------------------------------------------------------------
PROGRESS_EVERY_S = float(os.environ.get("FLOWBENCH_PROGRESS_S", "60") or 60)  # plain-line heartbeat of a long run


def progress_bars(progress: bool) -> bool:
    """Bars (tqdm, carriage returns) only on a terminal; a log file or pipe gets plain lines instead."""
    stream = sys.stderr
    return progress and hasattr(stream, "isatty") and stream.isatty()


def progress_line(text: str) -> None:
    """One plain progress line on stderr (no carriage return, no cursor codes), flushed at once."""
    print(text, file=sys.stderr, flush=True)


class Heartbeat:
    """While a run trains without a bar, a plain line every ``every`` seconds: its time and last
    evaluated step, so a long run in a log shows it is alive."""

    def __init__(self, prefix: str, record: RunRecord, every: float = PROGRESS_EVERY_S):
        self.prefix, self.record, self.every = prefix, record, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._start = time.monotonic()

    def _beat(self) -> None:
        while not self._stop.wait(self.every):
            try:
                rows = self.record.read_metrics()
            except Exception:  # noqa: BLE001 - a heartbeat never fails the run
                rows = []
            step = f", step {rows[-1].get('step')}" if rows else ""
            progress_line(f"{self.prefix} running, {time.monotonic() - self._start:.0f} s{step}")

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


# -- inline -------------------------------------------------------------------------------------
def run_inline(specs: Sequence[RunSpec], results_dir: str | Path, data_root: str | None = None,
               device: str | None = None, force: bool = False, progress: bool = True,
               retry: frozenset[str] = DEFAULT_RETRY) -> SweepSummary:
    """Run the pending specs one after another in this process. Progress on a terminal: a bar of
    done/failed runs (each finished run a line on stdout); elsewhere (a log, a pipe): one plain line
    per finished run on stderr, and a heartbeat line every FLOWBENCH_PROGRESS_S seconds of a long run."""
    from tqdm.auto import tqdm

    from bench.train import run_one

    left: Counter = Counter()
    todo, done = pending(specs, results_dir, force, retry, left)
    summary = SweepSummary(skipped=done, left=left)
    bars = progress_bars(progress)
    lines = progress and not bars
    with tqdm(total=len(todo), desc="runs", unit="run", disable=not bars or not todo, dynamic_ncols=True) as bar:
        def say(k: int, text: str) -> None:
            progress_line(f"[{k}/{len(todo)}] {text}") if lines else bar.write(f"  {text}")

        for k, spec in enumerate(todo, 1):
            record = RunRecord(results_dir, spec.suite, spec.run_id)
            beat = Heartbeat(f"[{k}/{len(todo)}] {spec.label}:", record) if lines else contextlib.nullcontext()
            try:
                with beat:
                    result = run_one(spec, record, data_root=data_root, device=device, progress=bars, force=force)
            except FlowbenchError as err:  # e.g. a checkpoint that does not fit: the record stays as it was
                summary.statuses["failed"] += 1
                summary.errors.append((spec.label, str(err)))
                say(k, f"x {spec.label}: {err}")
            else:
                if result.get("skipped"):  # completed by another process since `pending` looked
                    summary.skipped += 1
                    if lines:
                        say(k, f"- {spec.label} [{spec.run_id}] completed by another process")
                else:
                    summary.statuses[result["status"]] += 1
                    say(k, describe_result(spec, result))
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

    def __init__(self, results_dir: str, data_root: str | None, device: str | None, concurrent: int = 1,
                 code: Mapping[str, Any] | None = None):
        self.results_dir, self.data_root, self.device = str(results_dir), data_root, device
        self.concurrent = concurrent  # processes started at once on this machine (local executor): they share its cores
        self.code = dict(code or {})  # the submitted snapshot: {"sha", "git", "dir"}

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
        code = {"submitted": getattr(self, "code", {}).get("sha"), "ran": running_code(spec.plugins),
                "git": getattr(self, "code", {}).get("git")}

        def annotate(result: dict[str, Any]) -> dict[str, Any]:
            """What ran, next to what was submitted (status flags a mismatch), and why a run stopped."""
            result = {**result, "code": code}
            env = result.get("env")
            if isinstance(env, dict) and not env.get("git_sha"):  # a snapshot has no .git: the submission's commit
                result["env"] = {**env, "git_sha": code["git"] or (f"snapshot:{code['ran']}" if code["ran"] else None)}
            if result["status"] == "preempted":
                why = ("SLURM's end-of-allocation signal" if signal.SIGUSR2 in received
                       else "SIGTERM (scancel or shutdown)")
                result["error"] = (f"stopped by {why} at step {result.get('steps')}; checkpointed, "
                                   f"resumes when run again")
            return result

        result = run_one(spec, record, data_root=self.data_root, device=self.device, progress=False,
                         threads=run_threads(getattr(self, "concurrent", 1)), annotate=annotate)
        if result["status"] == "preempted" and signal.SIGUSR2 in received and callable(submitit_handler):
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


@contextlib.contextmanager
def _cwd(path: str | Path) -> Iterator[None]:
    """Work in ``path`` for a while: jobs started now start there, with its code first on sys.path."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


# -- submission ---------------------------------------------------------------------------------
def run_resources(spec: RunSpec, options: Mapping[str, Any]) -> dict[str, Any]:
    """One run's resources: its own ``slurm`` (suite < override < variant) under the command line's
    ``options``; what SLURM arrays are grouped by and local runs are given GPUs by."""
    return {**spec.slurm, **options}


def resource_groups(specs: Sequence[RunSpec], options: Mapping[str, Any]) -> list[tuple[dict[str, Any], list[RunSpec]]]:
    """The runs grouped by their resources (``run_resources``), in the order first met: one job
    array per group."""
    groups: dict[str, tuple[dict[str, Any], list[RunSpec]]] = {}
    for spec in specs:
        merged = run_resources(spec, options)
        key = json.dumps(merged, sort_keys=True, default=str)
        groups.setdefault(key, (merged, []))[1].append(spec)
    return list(groups.values())


def describe_resources(options: Mapping[str, Any], common: Mapping[str, Any] | None = None) -> str:
    """``{"partition": "gpu", "gpus_per_node": 4}`` -> ``"gpu x4"``; other keys as key=value (those
    in ``common`` left out)."""
    common = common or {}
    where = options.get("partition", "")
    gpus = options.get("gpus_per_node")
    head = f"{where or 'default partition'}" + (f" x{gpus}" if gpus else "")
    rest = [f"{k}={v}" for k, v in sorted(options.items())
            if k not in ("partition", "gpus_per_node") and common.get(k, object()) != v]
    return head + (f" ({', '.join(rest)})" if rest else "")


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


def _prepare(specs: Sequence[RunSpec], results_dir: str | Path, force: bool, retry: frozenset[str],
             summary: SweepSummary, slurm: bool) -> list[RunSpec]:
    """The runs to start: ``pending``, less those whose job is still queued (slurm) and those a
    live process holds; counted in ``summary``."""
    todo = list(specs)
    if slurm:
        infos = {s.run_id: read_slurm_info(RunRecord(results_dir, s.suite, s.run_id)) for s in todo}
        states = job_states([i.get("job_id") for i in infos.values() if i.get("executor") == "slurm"])
        active = {rid for rid, i in infos.items() if i.get("executor") == "slurm" and i.get("job_id")
                  and still_queued({**i, "state": states.get(i["job_id"], "UNKNOWN")})}
        if active:
            summary.statuses["queued"] += len(active)
            todo = [s for s in todo if s.run_id not in active]
    held = {s.run_id for s in todo if RunRecord(results_dir, s.suite, s.run_id).claim_state() == "live"}
    if held:  # a live process trains them now: never submitted twice, never cleared under it
        summary.statuses["claimed"] += len(held)
        todo = [s for s in todo if s.run_id not in held]
    for spec in todo:
        record = RunRecord(results_dir, spec.suite, spec.run_id)
        record.create(spec.to_dict())
        if force:
            record.clear()
    return todo


def _job_dicts(specs: Sequence[RunSpec], code: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The specs as the jobs get them: plugins are imported from the snapshot when they were copied."""
    copied = set(os.listdir(code["dir"]))
    out = []
    for spec in specs:
        d = spec.to_dict()
        if spec.plugins and all(m.split(".")[0] in copied or f"{m.split('.')[0]}.py" in copied for m in spec.plugins):
            d["plugin_path"] = code["dir"]
        out.append(d)
    return out


def _write_slurm_info(results_dir: str | Path, spec: RunSpec, job: Any, executor: str, code: Mapping[str, Any],
                      extra: Mapping[str, Any] | None = None) -> None:
    atomic_write_json(RunRecord(results_dir, spec.suite, spec.run_id).dir / "slurm.json",
                      {"job_id": job.job_id, "executor": executor, "submitted": time.time(),
                       "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                       "code": {"sha": code["sha"], "git": code["git"]}, **(extra or {})})


def submit(specs: Sequence[RunSpec], results_dir: str | Path, executor: str, slurm_options: Mapping[str, Any],
           data_root: str | None = None, device: str | None = None, force: bool = False,
           retry: frozenset[str] = DEFAULT_RETRY) -> tuple[SweepSummary, list[RunSpec], list]:
    """Submit the runs ``run`` takes up as SLURM job arrays, one per resource set (``resource_groups``),
    all running one snapshot of the code; returns the summary (``arrays``: one entry per array), the
    submitted specs and their jobs."""
    import submitit

    if executor != "slurm":
        raise FlowbenchError(f"submit: executor {executor!r}; the local executor runs through run_local")
    left: Counter = Counter()
    todo, done = pending(specs, results_dir, force, retry, left)
    summary = SweepSummary(skipped=done, left=left)
    check_slurm_reachable()
    todo = _prepare(todo, results_dir, force, retry, summary, slurm=True)
    if not todo:
        return summary, [], []
    suite = todo[0].suite
    folder = Path(results_dir).resolve() / suite / "_slurm"
    folder.mkdir(parents=True, exist_ok=True)
    code = snapshot_code(folder, todo[0].plugins, todo[0].plugin_path)
    job_fn = RunJob(str(Path(results_dir).resolve()), _absolute(data_root or os.environ.get("FLOWBENCH_DATA")),
                    device, 1, code)
    groups = resource_groups(todo, slurm_options)
    common = {k: v for k, v in groups[0][0].items() if all(g[0].get(k, object()) == v for g in groups)}
    submitted, jobs = [], []
    for options, group in groups:
        params = slurm_parameters(options, "slurm")
        params.setdefault("name", f"flowbench-{suite}")
        extra = dict(params.get("slurm_additional_parameters") or {})
        params["slurm_additional_parameters"] = {**extra, "chdir": code["dir"]}  # the snapshot, first on sys.path
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        ex.update_parameters(**params)
        try:
            with _cwd(code["dir"]):
                array = ex.map_array(job_fn, _job_dicts(group, code))
        except Exception as err:  # sbatch refused (bad partition, account, ...)
            first = str(err).strip().splitlines()[-1] if str(err).strip() else err
            done_note = f"; {len(jobs)} runs in {len(summary.arrays)} arrays were submitted before" if jobs else \
                "; nothing was submitted"
            raise FlowbenchError(f"submission of {len(group)} runs on {describe_resources(options)} failed: "
                                 f"{first}{done_note}") from None
        for spec, job in zip(group, array):
            _write_slurm_info(results_dir, spec, job, "slurm", code)
        summary.arrays.append((array[0].job_id.split("_")[0], len(array), describe_resources(options, common)))
        submitted += group
        jobs += array
    summary.statuses["submitted"] += len(jobs)
    summary.job_ids = [j.job_id for j in jobs]
    return summary, submitted, jobs


def local_gpus() -> list[str]:
    """The GPUs this machine lends to local runs: $CUDA_VISIBLE_DEVICES's entries when set (ids or
    UUIDs), else every CUDA device torch sees; [] on a CPU-only machine."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def gpus_per_run(spec: RunSpec, options: Mapping[str, Any], available: int) -> int:
    """GPUs one run takes on this machine: from its resources (``run_resources``),
    ``gpus_per_node`` or one per task, at least 1 and at most the ``available`` GPUs; 0 without GPUs."""
    if not available:
        return 0
    merged = run_resources(spec, options)
    want = max(int(merged.get("gpus_per_node") or 0), int(merged.get("tasks_per_node") or 1))
    return min(max(1, want), available)


def pick_gpus(usage: Sequence[int], need: int, share: bool) -> list[int] | None:
    """Which GPUs (indices into ``usage``, the runs each GPU holds now) the next run takes: the
    ``need`` least used, the first listed among equals. Without ``share`` only idle GPUs, else None
    (the run waits); with it (``--jobs`` beyond what the GPUs hold) busy ones too, round-robin.

    >>> pick_gpus([1, 0, 0, 1], 2, share=False), pick_gpus([1, 1], 1, share=False), pick_gpus([1, 2], 1, share=True)
    ([1, 2], None, [0])
    """
    order = sorted(range(len(usage)), key=lambda i: (usage[i], i))[:need]
    if len(order) < need or (not share and any(usage[i] for i in order)):
        return None
    return sorted(order)


def run_local(specs: Sequence[RunSpec], results_dir: str | Path, options: Mapping[str, Any],
              jobs: int | None = None, gpus: Sequence[str] | None = None, data_root: str | None = None,
              device: str | None = None, force: bool = False, retry: frozenset[str] = DEFAULT_RETRY,
              progress: bool = True, poll_s: float = 0.5) -> SweepSummary:
    """Run the pending runs as local processes (submitit's LocalExecutor), all from one code snapshot,
    in suite order. Each takes the GPUs its resources ask for (``gpus_per_run``: a variant's
    ``slurm: {gpus_per_node: 2}`` gets two) through CUDA_VISIBLE_DEVICES, and starts when that many
    are idle; ``jobs`` bounds the runs alive at once (default: as many as the GPUs hold, 1 without
    GPUs), and a ``jobs`` beyond that shares GPUs round-robin (``pick_gpus``). Waits for them and
    returns the summary (``arrays`` holds one entry: runs at once and the GPUs)."""
    import submitit
    from tqdm.auto import tqdm

    if jobs is not None and jobs < 1:
        raise FlowbenchError(f"--jobs {jobs}: expected a positive number of runs at once")
    left: Counter = Counter()
    todo, done = pending(specs, results_dir, force, retry, left)
    summary = SweepSummary(skipped=done, left=left)
    todo = _prepare(todo, results_dir, force, retry, summary, slurm=False)
    if not todo:
        return summary
    gpus = list(local_gpus() if gpus is None else gpus) if (device or "auto") != "cpu" else []
    needs = {s.run_id: gpus_per_run(s, options, len(gpus)) for s in todo}
    most_tasks = max(int(run_resources(s, options).get("tasks_per_node") or 1) for s in todo)
    n = min(jobs or (max(1, len(gpus) // min(needs.values())) if gpus else 1), len(todo))
    folder = Path(results_dir).resolve() / todo[0].suite / "_slurm"
    folder.mkdir(parents=True, exist_ok=True)
    code = snapshot_code(folder, todo[0].plugins, todo[0].plugin_path)
    params = {k: v for k, v in slurm_parameters(options, "slurm").items()
              if not k.startswith("slurm_") and k not in ("gpus_per_node", "name")}
    job_fn = RunJob(str(Path(results_dir).resolve()), _absolute(data_root or os.environ.get("FLOWBENCH_DATA")),
                    device, n * most_tasks, code)
    fewest, most = min(needs.values()), max(needs.values())
    gpu_note = f", {len(gpus)} GPUs ({fewest}{f'-{most}' if most > fewest else ''} a run)" if gpus else ""
    summary.arrays.append(("local", len(todo), f"{n} at once{gpu_note}"))
    queue = list(zip(todo, _job_dicts(todo, code)))
    running: list[tuple[Any, RunSpec, list[int]]] = []
    usage = [0] * len(gpus)
    bars = progress_bars(progress)
    with tqdm(total=len(todo), desc="runs", unit="run", disable=not bars, dynamic_ncols=True) as bar:
        try:
            while queue or running:
                while queue and len(running) < n:
                    spec, spec_dict = queue[0]
                    held = pick_gpus(usage, needs[spec.run_id], share=jobs is not None) if gpus else []
                    if held is None:
                        break  # its GPUs are busy: wait for a run to end (suite order is kept)
                    queue.pop(0)
                    for i in held:
                        usage[i] += 1
                    visible = ",".join(gpus[i] for i in held)
                    ex = submitit.AutoExecutor(folder=folder, cluster="local")
                    ex.update_parameters(**params, local_setup=[f"export CUDA_VISIBLE_DEVICES={visible}"])
                    with _cwd(code["dir"]):
                        job = ex.submit(job_fn, spec_dict)
                    _write_slurm_info(results_dir, spec, job, "local", code, {"cuda_visible_devices": visible})
                    running.append((job, spec, held))
                    summary.job_ids.append(job.job_id)
                for job, spec, held in list(running):
                    if not job.done():
                        continue
                    running.remove((job, spec, held))
                    for i in held:
                        usage[i] -= 1
                    result = RunRecord(results_dir, spec.suite, spec.run_id).read_result() or {}
                    status = result.get("status") if result.get("status") in FINAL_STATUSES else "failed"
                    summary.statuses[status] += 1
                    if status != "completed":
                        summary.errors.append((spec.label, f"{result.get('error') or status} "
                                                           f"(log: {job.paths.stderr})"))
                    if progress and not bars:
                        progress_line(f"[{sum(summary.statuses.values())}/{len(todo)}] {status} {spec.label} "
                                      f"[{spec.run_id}]")
                    bar.update(1)
                if queue or running:
                    time.sleep(poll_s)
        except KeyboardInterrupt:  # the started runs checkpoint on TERM and resume on the next `run`
            for job, _, _ in running:
                job.cancel(check=False)
            raise
    return summary


def wait(specs: Sequence[RunSpec], results_dir: str | Path, jobs: Sequence[Any], progress: bool = True,
         poll_s: float = 2.0) -> SweepSummary:
    """Wait for submitted jobs, showing a bar of finished runs; the final statuses come from the records."""
    from tqdm.auto import tqdm

    by_job = {job.job_id: spec for job, spec in zip(jobs, specs)}
    final: dict[str, str] = {}
    bars = progress_bars(progress)  # elsewhere than a terminal: one plain line per finished run
    with tqdm(total=len(jobs), desc="runs", unit="run", disable=not bars, dynamic_ncols=True) as bar:
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
                if progress and not bars:
                    progress_line(f"[{len(final)}/{len(jobs)}] {final[job.job_id]} {spec.label} [{spec.run_id}]")
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


DEAD_STATES = {"CANCELLED": "failed", "FAILED": "failed", "TIMEOUT": "timeout", "OUT_OF_MEMORY": "oom",
               "NODE_FAIL": "failed", "PREEMPTED": "preempted", "BOOT_FAIL": "failed", "DEADLINE": "timeout"}


def reconcile(spec: RunSpec, results_dir: str | Path, info: Mapping[str, Any]) -> dict[str, Any] | None:
    """A run whose job died without a final record (OOM, node failure, kill -9) gets one saying so."""
    state = info.get("state", "")
    record = RunRecord(results_dir, spec.suite, spec.run_id)
    result = record.read_result()
    if state not in DEAD_STATES or not result or result.get("status") != "running":
        return None  # no record at all: the job ended before the run started (``decide``: lost)
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
