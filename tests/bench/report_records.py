"""Synthetic run records for the report, plot and check tests (written with bench.store.RunRecord)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path
from typing import Any

from bench.store import RunRecord


def write_run(results: Path, suite: str, model: str, dataset: str, seed: int, value: float | None = None, *,
              status: str = "completed", metric: str = "nll", nfe: float = 0.0, seconds: float = 10.0,
              params: int = 1000, error: str | None = None, tag: str = "", history: int = 4,
              tolerances: bool = False, extra_test: dict[str, float] | None = None, mtime: float | None = None,
              env: dict[str, Any] | None = None) -> RunRecord:
    """One record: spec.json, metrics.jsonl (``history`` evaluations) and result.json (unless pending)."""
    content = f"{suite}/{model}/{dataset}/{seed}/{tag}"
    run_id = hashlib.sha256(content.encode()).hexdigest()[:12]
    rec = RunRecord(results, suite, run_id)
    rec.create({"run_id": run_id, "suite": suite, "model": model, "dataset": dataset, "seed": seed,
                "model_config": {"hidden": 8, "tag": tag}, "data_config": {"n_train": 100},
                "train": {"max_steps": 100, "lr": 1e-3}, "metric": metric})
    if status == "pending":
        return rec
    rows = []
    for i in range(1, history + 1):
        row = {"step": 25 * i, "epoch": i / 2, "seconds": seconds * i / history, "train_loss": 5.0 - i,
               "lr": 1e-3, "nfe_forward": nfe, "nfe_backward": 2 * nfe,
               "nfe_forward_total": nfe * 25 * i, "nfe_backward_total": 2 * nfe * 25 * i,
               f"val_{metric}": (value if value is not None else 0.0) + (history - i) * 0.1}
        if tolerances:
            row.update(train_tol_block0=1e-3 / i, train_tol_block1=1e-2 / i)  # as the harness logs them
        rows.append(row)
    rec.write_metrics(rows)
    result: dict[str, Any] = {"status": status, "run_id": run_id, "suite": suite, "model": model, "dataset": dataset,
                              "seed": seed, "error": error}
    if status == "completed":
        result.update(test={metric: value, **(extra_test or {})}, steps=100, train_seconds=seconds, params=params,
                      nfe={"train_forward": nfe, "train_backward": 2 * nfe, "test_forward": nfe or None},
                      peak_memory_mb=100.0)
    result["env"] = env or {"git_sha": "abc123", "device": "cpu", "device_name": "cpu (x86_64, 2 threads)",
                            "host": "testhost", "versions": {"python": "3.11", "torch": "2.x"}}
    rec.write_result(result)
    if mtime is not None:
        os.utime(rec.result_path, (mtime, mtime))
    return rec


def now() -> float:
    return time.time()
