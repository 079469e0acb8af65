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
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError

log = logging.getLogger("flowbench")

_UMASK = os.umask(0)
os.umask(_UMASK)

STATUSES = ("pending", "running", "completed", "failed", "timeout", "preempted", "diverged")


def atomic_write_bytes(path: Path, data: bytes, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder, fsync (unless told not to),
    rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide records from the rest of a lab
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
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
    if not any(isinstance(v, dict) for v in obj.values()):  # the common case: already flat
        return {prefix + k: v for k, v in obj.items()} if prefix else dict(obj)
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
CACHE_VERSION = 4  # 4: rows carry variant, setting, published_model and sweep.*
PARALLEL_READS = 2000  # uncached records from which scan reads in forked worker processes


def _record_dirs(results_dir: str, suite: str | None) -> list[str]:
    """Candidate run folders of one suite (every sub-folder: those without spec.json are passed over
    when read), or the folders holding spec.json of every suite below ``results_dir``."""
    base = os.path.join(results_dir, suite) if suite else results_dir
    if os.path.exists(os.path.join(base, "spec.json")):
        return [base]
    try:
        children = sorted(e.path for e in os.scandir(base) if e.is_dir() and not e.name.startswith((".", "_")))
    except OSError:
        return []
    if suite:
        return children
    direct = [c for c in children if os.path.exists(os.path.join(c, "spec.json"))]
    if direct:
        return direct
    return [d for c in children for d in _record_dirs(c, None) if d != c]


def _stat_key(run_dir: str) -> tuple[int, ...]:
    """What identifies a record's content on disk: (mtime_ns, size) of spec.json and result.json.
    Raises FileNotFoundError for a folder without spec.json (not a run)."""
    spec = os.stat(run_dir + "/spec.json")
    try:
        result = os.stat(run_dir + "/result.json")
        return spec.st_mtime_ns, spec.st_size, result.st_mtime_ns, result.st_size
    except FileNotFoundError:
        return spec.st_mtime_ns, spec.st_size, 0, -1


# spec.json fields a scanned row keeps as columns (besides the flattened model_config., data_config.,
# train. and sweep. sections)
SPEC_FIELDS = ("run_id", "suite", "model", "variant", "dataset", "seed", "metric", "setting", "published_model")


def read_row(run_dir: str | os.PathLike, key: tuple[int, ...] | None = None) -> dict[str, Any]:
    """One run's record as a flat row (spec fields, then result fields); raises on unreadable files.

    ``mtime`` is the result's modification time (the spec's while pending): newest-wins uses it.
    ``key`` (from ``_stat_key``) saves the stat calls when the caller already made them.
    """
    run_dir = os.fspath(run_dir)
    key = key or _stat_key(run_dir)
    with open(run_dir + "/spec.json", "rb") as f:
        spec = json.loads(f.read())
    row: dict[str, Any] = {k: spec.get(k) for k in SPEC_FIELDS}
    row["variant"] = row["variant"] or ""  # records from before variants have none
    for section in ("model_config", "data_config", "train", "sweep"):
        row.update(flatten(spec.get(section) or {}, section + "."))
    if key[3] >= 0:
        try:
            with open(run_dir + "/result.json", "rb") as f:
                result = json.loads(f.read())
            row["mtime"] = key[2] / 1e9
        except FileNotFoundError:  # removed between the stat and the read
            key = key[:2] + (0, -1)
    if key[3] < 0:
        result = {"status": "pending"}
        row["mtime"] = key[0] / 1e9
    if not isinstance(result, dict):
        raise ValueError(f"result.json holds {type(result).__name__}, not a mapping")
    row.update(flatten({k: v for k, v in result.items() if k not in row}))
    row["path"] = run_dir
    return row


def _read_one(run_dir: str) -> tuple[str, Any, Any]:
    """(run_dir, stat key, row) or (run_dir, None, reason) for an unreadable record, (run_dir, None,
    None) for a folder that is not a run (no spec.json) or vanished while scanning."""
    try:
        key = _stat_key(run_dir)
        return run_dir, key, read_row(run_dir, key)
    except FileNotFoundError:
        return run_dir, None, None
    except (OSError, ValueError, AttributeError, TypeError) as err:
        return run_dir, None, f"{type(err).__name__}: {err}"


def _read_chunk(dirs: list[str]) -> list[tuple[str, Any, Any]]:
    return [_read_one(d) for d in dirs]


def _read_many(dirs: list[str]) -> Callable[[], list[tuple[str, Any, Any]]]:
    """Start reading ``dirs``; returns a function giving [(run_dir, key, row|reason|None)] in order.

    Many records are read by forked worker processes (``bench.forking``), so the caller can import
    pandas meanwhile; otherwise they are read here when the result is asked for.
    """
    from bench.forking import MAX_WORKERS, fork_pool, usable_cores

    workers = min(usable_cores(), MAX_WORKERS)
    pool = fork_pool(workers) if len(dirs) >= PARALLEL_READS else None
    if pool is None:
        return lambda: _read_chunk(dirs)
    size = -(-len(dirs) // (4 * workers))  # a few chunks per worker: an uneven share evens out
    pending = pool.map_async(_read_chunk, [dirs[i:i + size] for i in range(0, len(dirs), size)])

    def collect() -> list[tuple[str, Any, Any]]:
        try:
            return [item for chunk in pending.get() for item in chunk]
        finally:
            pool.close()
            pool.join()

    return collect


def _load_cache(path: str) -> dict[str, Any]:
    import pickle

    try:
        with open(path, "rb") as f:
            cache = pickle.load(f)
        return cache if isinstance(cache, dict) and cache.get("version") == CACHE_VERSION else {}
    except Exception:  # absent, foreign or from another version: rebuilt
        return {}


def _save_cache(path: str, df: Any, keys: list[tuple[int, ...]]) -> None:
    """The scanned frame and each row's stat key, as run folder name -> (key, row position)."""
    import pickle

    keys = {os.path.basename(p): (k, i) for i, (p, k) in enumerate(zip(df["path"], keys))}
    try:  # atomic but not fsynced: a cache lost in a crash is rebuilt from the records
        atomic_write_bytes(Path(path), pickle.dumps({"version": CACHE_VERSION, "keys": keys, "frame": df},
                                                    protocol=pickle.HIGHEST_PROTOCOL), fsync=False)
    except OSError:  # a read-only results folder: scanning still works, uncached
        pass


def scan(results_dir: str | os.PathLike = "results", suite: str | None = None, cache: bool = True):
    """Every run record below ``results_dir`` (optionally one suite) as a DataFrame, one row per run.

    Unreadable records are skipped, logged, and listed in ``df.attrs["skipped"]`` as (path, reason).
    With ``cache`` (and a suite), rows of records whose spec.json and result.json are unchanged
    (same modification time and size) come from the frame kept in ``results/SUITE/.scan-cache.pkl``,
    so a report or check over thousands of records reads only what changed since the last one;
    thousands of uncached records are read by forked worker processes while pandas loads here.
    """
    results_dir = os.fspath(results_dir)
    dirs = _record_dirs(results_dir, suite)
    cache_path = os.path.join(results_dir, suite, SCAN_CACHE) if (cache and suite and dirs) else None
    cached = _load_cache(cache_path) if cache_path else {}
    cached_keys = cached.get("keys", {})
    kept: list[tuple[int, str, tuple[int, ...]]] = []  # (row in the cached frame, run folder, stat key)
    misses = []
    for run_dir in dirs:
        hit = cached_keys.get(os.path.basename(run_dir))
        if hit is not None:
            try:
                key = _stat_key(run_dir)
            except FileNotFoundError:
                continue  # removed since the last scan
            if hit[0] == key:
                kept.append((hit[1], run_dir, key))
                continue
        misses.append(run_dir)
    collect = _read_many(misses)
    import pandas as pd  # loads while worker processes read

    new_rows, new_keys, skipped = [], [], []
    for run_dir, key, row in collect():
        if key is not None:
            new_rows.append(row)
            new_keys.append(key)
        elif row is not None:
            skipped.append((run_dir, row))
            log.warning("skipping unreadable record %s (%s)", run_dir, row)
    parts = []
    if kept:  # the folder's spelling of this scan, whatever the cached one was
        parts.append(cached["frame"].iloc[[i for i, _, _ in kept]].assign(path=[d for _, d, _ in kept]))
    if new_rows:
        parts.append(pd.DataFrame(new_rows))
    df = pd.concat(parts, ignore_index=True) if len(parts) > 1 else (parts[0].reset_index(drop=True) if parts
                                                                      else pd.DataFrame())
    keys = [k for _, _, k in kept] + new_keys
    if kept and new_rows:  # back into folder order
        order = df["path"].argsort(kind="stable").to_numpy()
        df, keys = df.iloc[order].reset_index(drop=True), [keys[i] for i in order]
    if cache_path and (misses or len(kept) != len(cached_keys)):
        _save_cache(cache_path, df, keys)
    df.attrs = {"skipped": skipped}
    return df
