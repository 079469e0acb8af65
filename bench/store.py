"""The run record: ``results/<suite>/<run_id>/`` with spec.json, metrics.jsonl, result.json and
checkpoint.pt, every file written to a temporary name and renamed, and ``scan`` into a DataFrame.

A killed process never leaves a half-written file, and many processes (array tasks) can share
one results folder because each run owns its own directory.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError

log = logging.getLogger("flowbench")

_UMASK = os.umask(0)
os.umask(_UMASK)

STATUSES = ("pending", "running", "completed", "failed", "timeout", "preempted", "diverged")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync, rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide records from the rest of a lab
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str, allow_nan=True) + "\n").encode())


def atomic_torch_save(path: Path, obj: Any) -> None:
    import io

    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


class RunRecord:
    """The files of one run under ``results/<suite>/<run_id>/``."""

    def __init__(self, results_dir: str | os.PathLike, suite: str, run_id: str):
        self.dir = Path(results_dir) / suite / run_id
        self.spec_path = self.dir / "spec.json"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.result_path = self.dir / "result.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"  # training state, while the run is unfinished
        self.model_path = self.dir / "model.pt"  # best-validation weights of a completed run

    def create(self, spec: dict[str, Any]) -> None:
        """Make the folder and write spec.json (idempotent); a clear error if it cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self.spec_path.exists():
                atomic_write_json(self.spec_path, spec)
        except OSError as err:
            raise FlowbenchError(f"cannot write the run record {self.dir}: {err.strerror}; "
                                 "choose a writable folder with --results") from None

    def read_result(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.result_path.read_text())
        except (OSError, ValueError):
            return None

    @property
    def status(self) -> str:
        """The recorded status, or "pending" when no result has been written."""
        result = self.read_result()
        return result.get("status", "failed") if result else "pending"

    def clear(self) -> None:
        """Remove result, metrics and weights (for --force); spec.json stays."""
        for path in (self.result_path, self.metrics_path, self.checkpoint_path, self.model_path):
            path.unlink(missing_ok=True)

    def write_result(self, result: dict[str, Any]) -> None:
        atomic_write_json(self.result_path, result)

    def write_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl with the whole history (so a resumed run never duplicates a line)."""
        text = "".join(json.dumps(r, default=str) + "\n" for r in rows)
        atomic_write_bytes(self.metrics_path, text.encode())

    def read_metrics(self) -> list[dict[str, Any]]:
        try:
            return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        except OSError:
            return []


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping -> one level with dotted keys; lists stay as values."""
    out: dict[str, Any] = {}
    stack = [(prefix, obj)]
    while stack:
        pre, d = stack.pop()
        for k, v in d.items():
            if isinstance(v, dict):
                stack.append((f"{pre}{k}.", v))
            else:
                out[f"{pre}{k}"] = v
    return out


def _record_dirs(results_dir: Path, suite: str | None) -> Iterable[Path]:
    base = results_dir / suite if suite else results_dir
    if not base.is_dir():
        return []
    if (base / "spec.json").exists():
        return [base]
    direct = [p.parent for p in base.glob("*/spec.json")]
    return direct if (direct or suite) else [p.parent for p in base.glob("*/*/spec.json")]


def read_row(run_dir: Path) -> dict[str, Any]:
    """One run's record as a flat row (spec fields, then result fields); raises on unreadable files."""
    spec = json.loads((run_dir / "spec.json").read_text())
    row: dict[str, Any] = {k: spec.get(k) for k in ("run_id", "suite", "model", "dataset", "seed", "metric")}
    row.update(flatten(spec.get("model_config", {}), "model_config."))
    row.update(flatten(spec.get("data_config", {}), "data_config."))
    row.update(flatten(spec.get("train", {}), "train."))
    result_path = run_dir / "result.json"
    if result_path.exists():
        result = json.loads(result_path.read_text())
        row.update(flatten({k: v for k, v in result.items() if k not in row}))
    else:
        row["status"] = "pending"
    row["path"] = str(run_dir)
    return row


def scan(results_dir: str | os.PathLike = "results", suite: str | None = None):
    """Every run record below ``results_dir`` (optionally one suite) as a DataFrame, one row per run.

    Unreadable records are skipped, logged, and listed in ``df.attrs["skipped"]`` as (path, reason).
    """
    import pandas as pd

    rows, skipped = [], []
    for run_dir in _record_dirs(Path(results_dir), suite):
        try:
            rows.append(read_row(run_dir))
        except (OSError, ValueError, AttributeError, TypeError) as err:
            reason = f"{type(err).__name__}: {err}"
            skipped.append((str(run_dir), reason))
            log.warning("skipping unreadable record %s (%s)", run_dir, reason)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    return df
