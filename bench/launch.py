"""Executors: run a suite's pending runs in-process (``inline``); SLURM and local come in launch_*."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.spec import RunSpec
from bench.store import RunRecord

EXECUTORS = ("inline",)


@dataclass
class SweepSummary:
    """What a sweep did: counts by final status, skipped (already completed) runs, problems."""

    statuses: Counter = field(default_factory=Counter)
    skipped: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)  # (run label, message)

    @property
    def failed(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "completed")

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


def run_inline(specs: Sequence[RunSpec], results_dir: str | Path, data_root: str | None = None,
               device: str | None = None, force: bool = False, progress: bool = True) -> SweepSummary:
    """Run the pending specs one after another in this process, with a bar of done/failed runs."""
    from tqdm.auto import tqdm

    from bench.errors import FlowbenchError
    from bench.train import run_one

    todo, done = pending(specs, results_dir, force)
    summary = SweepSummary(skipped=done)
    with tqdm(total=len(todo), desc="runs", unit="run", disable=not progress or not todo, dynamic_ncols=True) as bar:
        for spec in todo:
            record = RunRecord(results_dir, spec.suite, spec.run_id)
            if force:
                record.clear()
            try:
                result = run_one(spec, record, data_root=data_root, device=device, progress=progress)
            except FlowbenchError as err:  # e.g. a checkpoint that does not fit: the record stays as it was
                summary.statuses["failed"] += 1
                summary.errors.append((spec.label, str(err)))
                bar.write(f"  x {spec.label}: {err}")
            else:
                summary.statuses[result["status"]] += 1
                bar.write("  " + describe_result(spec, result))
                if result["status"] != "completed":
                    summary.errors.append((spec.label, result.get("error") or result["status"]))
            bar.update(1)
            bar.set_postfix(done=summary.statuses["completed"], failed=summary.failed, refresh=False)
    return summary


def describe_result(spec: RunSpec, result: dict[str, Any]) -> str:
    """One line per finished run: status, headline test metric, time."""
    status = result["status"]
    if status != "completed":
        return f"x {spec.label} [{spec.run_id}] {status}: {result.get('error')}"
    value = result.get("test", {}).get(spec.metric)
    shown = f"test {spec.metric} {value:.4f}" if isinstance(value, float) else ""
    return f"ok {spec.label} [{spec.run_id}] {shown} ({result['steps']} steps, {result['train_seconds']:.1f} s)"
