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


def load_model(run_dir: str | os.PathLike, data_root: str | None = None) -> tuple[Any, Any]:
    """Rebuild a completed run's model (best-validation weights, ``model.pt``) in eval mode; returns
    (model, dataset). Raises FlowbenchError naming the run when its files are missing or do not fit."""
    import torch

    from baselines.registry import get_builder
    from bench.data import load_dataset

    run_dir = Path(run_dir)
    try:
        spec = json.loads((run_dir / "spec.json").read_text())
        state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=False)
    except (OSError, ValueError, RuntimeError) as err:
        raise FlowbenchError(f"run {run_dir}: cannot read its spec.json / model.pt ({type(err).__name__}: {err}); "
                             "only completed runs keep model.pt") from None
    data = load_dataset(spec["dataset"], spec.get("data_config", {}), data_root)
    config = state.get("model_config", spec.get("model_config", {}))
    model = get_builder(spec["model"])(data.info, **config)
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as err:
        first = str(err).strip().splitlines()[0]
        raise FlowbenchError(f"run {run_dir}: model.pt does not fit the model built from its spec ({first}); "
                             "the model code changed since the run; re-run it with --force") from None
    model.eval()
    return model, data


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


SCAN_CACHE = ".scan-cache.pkl"  # per suite folder: rows of unchanged records, keyed by file stats


def _record_dirs(results_dir: Path, suite: str | None) -> list[str]:
    """Run folders (those holding spec.json) of one suite, or of every suite below ``results_dir``."""
    base = os.path.join(os.fspath(results_dir), suite) if suite else os.fspath(results_dir)
    if os.path.exists(os.path.join(base, "spec.json")):
        return [base]
    try:
        children = sorted(e.path for e in os.scandir(base) if e.is_dir())
    except OSError:
        return []
    direct = [c for c in children if os.path.exists(os.path.join(c, "spec.json"))]
    if direct or suite:
        return direct
    return [d for c in children for d in _record_dirs(Path(c), None) if d != c]


def _stat_key(run_dir: str) -> tuple[int, ...]:
    """What identifies a record's content on disk: (mtime_ns, size) of spec.json and result.json."""
    spec = os.stat(os.path.join(run_dir, "spec.json"))
    try:
        result = os.stat(os.path.join(run_dir, "result.json"))
        return spec.st_mtime_ns, spec.st_size, result.st_mtime_ns, result.st_size
    except FileNotFoundError:
        return spec.st_mtime_ns, spec.st_size, 0, -1


def read_row(run_dir: str | os.PathLike) -> dict[str, Any]:
    """One run's record as a flat row (spec fields, then result fields); raises on unreadable files.

    ``mtime`` is the result's modification time (the spec's while pending): newest-wins uses it.
    """
    run_dir = os.fspath(run_dir)
    with open(os.path.join(run_dir, "spec.json"), "rb") as f:
        spec = json.loads(f.read())
    row: dict[str, Any] = {k: spec.get(k) for k in ("run_id", "suite", "model", "dataset", "seed", "metric")}
    row.update(flatten(spec.get("model_config", {}), "model_config."))
    row.update(flatten(spec.get("data_config", {}), "data_config."))
    row.update(flatten(spec.get("train", {}), "train."))
    result_path = os.path.join(run_dir, "result.json")
    try:
        with open(result_path, "rb") as f:
            result = json.loads(f.read())
        row["mtime"] = os.stat(result_path).st_mtime
    except FileNotFoundError:
        result = {"status": "pending"}
        row["mtime"] = os.stat(os.path.join(run_dir, "spec.json")).st_mtime
    if not isinstance(result, dict):
        raise ValueError(f"result.json holds {type(result).__name__}, not a mapping")
    row.update(flatten({k: v for k, v in result.items() if k not in row}))
    row["path"] = run_dir
    return row


def _load_cache(path: str) -> dict[str, Any]:
    import pickle

    try:
        with open(path, "rb") as f:
            cache = pickle.load(f)
        return cache if isinstance(cache, dict) and cache.get("version") == 1 else {}
    except Exception:  # absent, foreign or from another version: rebuilt
        return {}


def _save_cache(path: str, rows: dict[str, Any]) -> None:
    import pickle

    try:
        atomic_write_bytes(Path(path), pickle.dumps({"version": 1, "rows": rows}, protocol=pickle.HIGHEST_PROTOCOL))
    except OSError:  # a read-only results folder: scanning still works, uncached
        pass


def scan(results_dir: str | os.PathLike = "results", suite: str | None = None, cache: bool = True):
    """Every run record below ``results_dir`` (optionally one suite) as a DataFrame, one row per run.

    Unreadable records are skipped, logged, and listed in ``df.attrs["skipped"]`` as (path, reason).
    With ``cache`` (and a suite), rows of records whose spec.json and result.json are unchanged
    (same modification time and size) come from ``results/SUITE/.scan-cache.pkl``, so a report or
    check over thousands of records reads only what changed since the last one.
    """
    import pandas as pd

    dirs = _record_dirs(Path(results_dir), suite)
    cache_path = os.path.join(os.fspath(results_dir), suite, SCAN_CACHE) if (cache and suite and dirs) else None
    cached = _load_cache(cache_path).get("rows", {}) if cache_path else {}
    rows, skipped, fresh = [], [], {}
    for run_dir in dirs:
        try:
            key = _stat_key(run_dir)
            name = os.path.basename(run_dir)
            hit = cached.get(name)
            row = hit[1] if hit is not None and hit[0] == key else read_row(run_dir)
            fresh[name] = (key, row)
            rows.append(dict(row))
        except FileNotFoundError:
            continue  # removed while scanning
        except (OSError, ValueError, AttributeError, TypeError) as err:
            reason = f"{type(err).__name__}: {err}"
            skipped.append((str(run_dir), reason))
            log.warning("skipping unreadable record %s (%s)", run_dir, reason)
    if cache_path and (len(fresh) != len(cached) or any(cached.get(k, (None,))[0] != v[0] for k, v in fresh.items())):
        _save_cache(cache_path, fresh)
    df = pd.DataFrame(rows)
    df.attrs["skipped"] = skipped
    return df
