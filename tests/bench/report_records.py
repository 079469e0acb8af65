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
              env: dict[str, Any] | None = None, variant: str = "", sweep: dict[str, Any] | None = None,
              setting: str = "", published_model: str = "", nfe_backward: float | None = None) -> RunRecord:
    """One record: spec.json, metrics.jsonl (``history`` evaluations) and result.json (unless pending).

    ``variant``, ``sweep``, ``setting`` and ``published_model`` go into spec.json as a suite's
    variants put them; ``nfe_backward`` defaults to twice ``nfe``."""
    content = f"{suite}/{model}/{variant}/{dataset}/{seed}/{tag}" if variant else f"{suite}/{model}/{dataset}/{seed}/{tag}"
    backward = 2 * nfe if nfe_backward is None else nfe_backward
    run_id = hashlib.sha256(content.encode()).hexdigest()[:12]
    rec = RunRecord(results, suite, run_id)
    rec.create({"run_id": run_id, "suite": suite, "variant": variant, "sweep": sweep or {}, "setting": setting,
                "published_model": published_model, "model": model, "dataset": dataset, "seed": seed,
                "model_config": {"hidden": 8, "tag": tag}, "data_config": {"n_train": 100},
                "train": {"max_steps": 100, "lr": 1e-3}, "metric": metric})
    if status == "pending":
        return rec
    rows = []
    for i in range(1, history + 1):
        row = {"step": 25 * i, "epoch": i / 2, "seconds": seconds * i / history, "train_loss": 5.0 - i,
               "lr": 1e-3, "nfe_forward": nfe, "nfe_backward": backward,
               "nfe_forward_total": nfe * 25 * i, "nfe_backward_total": backward * 25 * i,
               f"val_{metric}": (value if value is not None else 0.0) + (history - i) * 0.1}
        if tolerances:
            row.update(train_tol_block0=1e-3 / i, train_tol_block1=1e-2 / i)  # as the harness logs them
        rows.append(row)
    rec.write_metrics(rows)
    result: dict[str, Any] = {"status": status, "run_id": run_id, "suite": suite, "model": model, "dataset": dataset,
                              "seed": seed, "error": error}
    if status == "completed":
        result.update(test={metric: value, **(extra_test or {})}, steps=100, train_seconds=seconds, params=params,
                      nfe={"train_forward": nfe, "train_backward": backward, "test_forward": nfe or None},
                      peak_memory_mb=100.0)
    result["env"] = env or {"git_sha": "abc123", "device": "cpu", "device_name": "cpu (x86_64, 2 threads)",
                            "host": "testhost", "versions": {"python": "3.11", "torch": "2.x"}}
    rec.write_result(result)
    if mtime is not None:
        os.utime(rec.result_path, (mtime, mtime))
    return rec


def now() -> float:
    return time.time()


def write_spec_run(results: Path, spec: dict[str, Any], test: dict[str, float], nfe: tuple[float, float] = (0.0, 0.0),
                   seconds: float = 10.0) -> RunRecord:
    """A completed record for a suite's own RunSpec (``spec.to_dict()``: its run id, labels and settings)."""
    rec = RunRecord(results, spec["suite"], spec["run_id"])
    rec.create(spec)
    metric = spec.get("metric", "nll")
    rec.write_metrics([{"step": 100, "seconds": seconds, "train_loss": 1.0, f"val_{metric}": test.get(metric),
                        "nfe_forward": nfe[0], "nfe_backward": nfe[1]}])
    rec.write_result({"status": "completed", "run_id": spec["run_id"], "test": test, "steps": 100,
                      "train_seconds": seconds, "params": 1000, "peak_memory_mb": 1.0,
                      "nfe": {"train_forward": nfe[0], "train_backward": nfe[1], "test_forward": nfe[0] or None},
                      "env": {"git_sha": "abc123", "device": "cpu"}})
    return rec
