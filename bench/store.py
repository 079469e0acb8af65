"""The run record: ``results/<suite>/<run_id>/`` with spec.json, metrics.jsonl, result.json and
checkpoint.pt, every file written to a temporary name and renamed, and ``scan`` into a DataFrame.

A killed process never leaves a half-written file, and many processes (array tasks) can share
one results folder because each run owns its own directory.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError
from bench.forking import MAX_WORKERS, fork_pool, usable_cores
from bench.io import atomic_write_bytes, atomic_write_json

__all__ = ["acquire_claim", "CACHE_VERSION", "Claim", "claim_alive", "CLAIM_FILE", "flatten", "heartbeat_seconds",
           "PARALLEL_READS", "read_claim", "read_row", "RunClaimed", "RunRecord", "scan", "SCAN_CACHE", "SPEC_FIELDS",
           "stale_seconds", "STATUSES"]

log = logging.getLogger("flowbench")

STATUSES = ("pending", "running", "completed", "failed", "timeout", "preempted", "diverged", "oom")


class RunRecord:
    """The files of one run under ``results/<suite>/<run_id>/``."""

    def __init__(self, results_dir: str | os.PathLike, suite: str, run_id: str):
        self.dir = Path(results_dir) / suite / run_id
        self.spec_path = self.dir / "spec.json"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.result_path = self.dir / "result.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"  # training state, while the run is unfinished
        self.model_path = self.dir / "model.pt"  # best-validation weights of a completed run
        self.claim_path = self.dir / CLAIM_FILE  # who trains the run now (``claim``)

    @classmethod
    def at(cls, run_dir: str | os.PathLike) -> RunRecord:
        """The record in the folder ``run_dir`` (``results/<suite>/<run_id>``)."""
        run_dir = Path(run_dir)
        return cls(run_dir.parent.parent, run_dir.parent.name, run_dir.name)

    def create(self, spec: dict[str, Any]) -> None:
        """Make the folder and write spec.json (idempotent); a clear error if it cannot be written."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            if not self.spec_path.exists():
                atomic_write_json(self.spec_path, spec)
        except OSError as err:
            raise FlowbenchError(f"cannot write the run record {self.dir}: {err.strerror}; "
                                 "choose a writable folder with --results") from None

    def load_result(self) -> tuple[dict[str, Any] | None, str | None]:
        """(result.json as a mapping or None, why it is there but cannot be read or None): one read."""
        try:
            result = json.loads(self.result_path.read_bytes())
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as err:
            return None, f"{self.result_path} is unreadable ({err.strerror if isinstance(err, OSError) else err})"
        if not isinstance(result, dict):
            return None, f"{self.result_path} holds {type(result).__name__}, not a record"
        return result, None

    def read_result(self) -> dict[str, Any] | None:
        """result.json as a mapping, or None when it is absent or unreadable (``result_problem`` says why)."""
        return self.load_result()[0]

    def result_problem(self) -> str | None:
        """Why result.json is there but cannot be read (a folder, not JSON, not a mapping), else None."""
        return self.load_result()[1]

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

    def claim(self) -> Claim:
        """Claim the run for this process (raises ``RunClaimed`` when a live process holds it); a claim
        whose owner is dead is taken over. Use the returned Claim as a context manager: it beats while
        held and is released on exit."""
        return acquire_claim(self.claim_path)

    def claimed_here(self) -> int:
        """How many other runs of this suite live processes on this host hold now (they share its cores)."""
        import socket

        host, count = socket.gethostname(), 0
        try:
            siblings = [e.path for e in os.scandir(self.dir.parent) if e.is_dir() and e.name != self.dir.name]
        except OSError:
            return 0
        for sibling in siblings:
            holder, raw, mtime = read_claim(Path(sibling) / CLAIM_FILE)
            if raw is not None and holder and holder.get("host") == host and claim_alive(holder, mtime):
                count += 1
        return count

    def shown_status(self, recorded: str | None = None) -> str:
        """The status ``status`` shows: the recorded one (read here unless given), "stale" for a
        ``running`` record that no live process holds (its process died), "unreadable" for a
        result.json that is there but cannot be read."""
        if recorded is None:
            result, problem = self.load_result()
            recorded = "unreadable" if problem else (result.get("status", "failed") if result else "pending")
        return "stale" if recorded == "running" and self.claim_state() != "live" else recorded

    def claim_state(self) -> str:
        """"live" (a process holds the run), "stale" (its holder is dead) or "" (no claim)."""
        holder, raw, mtime = read_claim(self.claim_path)
        if raw is None:
            return ""
        return "live" if claim_alive(holder, mtime) else "stale"


# -- claims: one run, one owner -------------------------------------------------------------------
CLAIM_FILE = "claim.json"


def heartbeat_seconds() -> float:
    """How often a claim's holder shows it is alive ($FLOWBENCH_HEARTBEAT_S, default 30 s)."""
    return float(os.environ.get("FLOWBENCH_HEARTBEAT_S") or 30.0)


def stale_seconds() -> float:
    """A claim without a heartbeat for this long is dead ($FLOWBENCH_CLAIM_STALE_S, default 10 beats)."""
    return float(os.environ.get("FLOWBENCH_CLAIM_STALE_S") or 10 * heartbeat_seconds())


class RunClaimed(Exception):
    """Another live process holds the run."""

    def __init__(self, path: Path, holder: dict[str, Any] | None):
        self.holder = holder or {}
        who = (f"{self.holder.get('owner', '?')}@{self.holder.get('host', '?')} pid {self.holder.get('pid', '?')}"
               if holder else "another process")
        super().__init__(f"claimed by {who} ({path}); skipped")


def _proc_start(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a local process from /proc, or None where there is none."""
    try:
        with open(f"/proc/{int(pid)}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: Any, start: Any) -> bool:
    """Whether process ``pid`` of this host still runs (the same process: its start time matches)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    except (OverflowError, TypeError, ValueError, OSError):
        return False
    proc = _proc_start(int(pid))
    if proc is None:
        return True
    state, started = proc
    return state not in ("Z", "X") and (start is None or started == start)


def _claim_info() -> dict[str, Any]:
    import getpass
    import socket
    import uuid

    try:
        owner = getpass.getuser()
    except (KeyError, OSError):
        owner = str(os.getuid()) if hasattr(os, "getuid") else "?"
    now = time.time()
    proc = _proc_start(os.getpid())
    return {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(), "pid_start": proc and proc[1],
            "slurm_job": os.environ.get("SLURM_JOB_ID"), "token": uuid.uuid4().hex, "claimed": now, "heartbeat": now}


def read_claim(path: Path) -> tuple[dict[str, Any] | None, bytes | None, float]:
    """(the claim's content or None when unparsable, its raw bytes or None when absent, its mtime)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
            mtime = os.fstat(f.fileno()).st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None, None, 0.0
    except OSError:
        return None, b"", 0.0
    try:
        info = json.loads(raw)
    except ValueError:
        return None, raw, mtime
    return (info if isinstance(info, dict) else None), raw, mtime


def claim_alive(info: dict[str, Any] | None, mtime: float) -> bool:
    """Whether a claim's holder lives: its last heartbeat (the file's modification time: each beat
    rewrites it) is recent, and on this host its process runs."""
    import socket

    if time.time() - mtime > stale_seconds():
        return False
    if info and info.get("host") == socket.gethostname():
        return _pid_alive(info.get("pid"), info.get("pid_start"))
    return True


def _link_exclusive(tmp: Path, path: Path) -> bool:
    """Put ``tmp`` at ``path`` unless ``path`` exists (a hard link: atomic on NFS too); False when it does."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as err:
        import errno

        if err.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):  # no hard links here
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(tmp.read_bytes())
            return True
        try:  # NFS: the link may have been made though its reply was lost
            return os.stat(tmp).st_nlink == 2
        except OSError:
            raise err from None


def _break_stale(path: Path, raw: bytes) -> None:
    """Remove the claim at ``path`` if it still holds ``raw`` (judged dead), under a break lock, so two
    processes never both take over the same dead claim."""
    breaker = path.with_name(path.name + ".break")
    try:
        os.close(os.open(breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    except FileExistsError:
        try:
            if time.time() - os.stat(breaker).st_mtime > stale_seconds():  # a breaker that died breaking
                breaker.unlink()
        except OSError:
            pass
        time.sleep(0.05)
        return
    try:
        if read_claim(path)[1] == raw:
            path.unlink()
    except FileNotFoundError:
        pass
    finally:
        breaker.unlink(missing_ok=True)


class Claim:
    """A held claim: while entered, a thread rewrites its heartbeat; ``lost`` is set when another
    process took it over (this one was judged dead); exit releases it."""

    def __init__(self, path: Path, info: dict[str, Any]):
        self.path, self.info = path, info
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Claim:
        self._thread = threading.Thread(target=self._beat, name="flowbench-claim", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def held(self) -> bool:
        """Whether the claim on disk is still this one."""
        holder, _, _ = read_claim(self.path)
        return bool(holder) and holder.get("token") == self.info["token"]

    def _beat(self) -> None:
        while not self._done.wait(heartbeat_seconds()):
            if not self.held():
                self.lost.set()
                return
            self.info["heartbeat"] = time.time()
            try:
                atomic_write_bytes(self.path, json.dumps(self.info).encode(), fsync=False)
            except OSError:  # a full disk: the old heartbeat stands until the next beat
                pass

    def release(self) -> None:
        """Stop beating and remove the claim if it is still this one."""
        self._done.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        if self.held():
            self.path.unlink(missing_ok=True)


def acquire_claim(path: Path) -> Claim:
    """Claim ``path`` (a run's claim.json) for this process; ``RunClaimed`` when a live process holds it."""
    info = _claim_info()
    tmp = path.with_name(f".{path.name}.{info['token']}.tmp")
    atomic_write_bytes(tmp, json.dumps(info).encode())
    holder: dict[str, Any] | None = None
    try:
        for _ in range(20):
            if _link_exclusive(tmp, path):
                return Claim(path, info)
            holder, raw, mtime = read_claim(path)
            if raw is None:
                continue  # released meanwhile: try again
            requeued = bool(info["slurm_job"]) and holder is not None and holder.get("slurm_job") == info["slurm_job"]
            if claim_alive(holder, mtime) and not requeued:  # SLURM runs a job id once at a time: a claim of
                raise RunClaimed(path, holder)  # this same job is its previous run's (node failure, then requeue)
            _break_stale(path, raw)
        raise RunClaimed(path, holder)
    finally:
        tmp.unlink(missing_ok=True)


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


SCAN_CACHE = ".scan-cache.json"  # per suite folder: rows of unchanged records, keyed by file stats (JSON: no code)
CACHE_VERSION = 5  # 4: rows carry variant, setting, published_model and sweep.*; 5: JSON, not a pickle
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
    if not isinstance(spec, dict):
        raise ValueError(f"spec.json holds {type(spec).__name__}, not a mapping")
    row: dict[str, Any] = {k: spec.get(k) for k in SPEC_FIELDS}
    if not isinstance(row["seed"], int) or isinstance(row["seed"], bool):
        raise ValueError(f"spec.json: seed {row['seed']!r} is not an integer")
    for name in ("model", "dataset"):
        if not isinstance(row[name], str):
            raise ValueError(f"spec.json: {name} {row[name]!r} is not a name")
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
    """The cache of ``_save_cache``: {"keys": {run folder: (stat key, row)}, "frame": () -> DataFrame},
    or {} when it is absent, damaged, foreign or from another version (then it is rebuilt). JSON only:
    reading it can never run code, whoever wrote the file."""
    try:
        with open(path, "rb") as f:
            cache = json.loads(f.read())
        keys = {str(name): (tuple(int(x) for x in key), int(row)) for name, (key, row) in cache["keys"].items()}
        columns, data = list(cache["columns"]), dict(cache["data"])
        if cache.get("version") != CACHE_VERSION or set(columns) != set(data) or \
                any(not isinstance(v, list) or len(v) != len(keys) for v in data.values()):
            return {}
    except Exception:  # noqa: BLE001 - absent, foreign or damaged: rebuilt from the records
        return {}

    def frame():
        import pandas as pd

        return pd.DataFrame(data, columns=columns)

    return {"keys": keys, "frame": frame}


def _save_cache(path: str, df: Any, keys: list[tuple[int, ...]]) -> None:
    """The scanned frame (column -> values, as JSON) and each row's stat key, as run folder name ->
    (key, row position)."""
    keys = {os.path.basename(p): (k, i) for i, (p, k) in enumerate(zip(df["path"], keys))}
    data = {str(c): df[c].tolist() for c in df.columns}
    try:  # atomic but not fsynced: a cache lost in a crash is rebuilt from the records
        text = json.dumps({"version": CACHE_VERSION, "keys": keys, "columns": list(data), "data": data},
                          default=str, separators=(",", ":"))
        atomic_write_bytes(Path(path), text.encode(), fsync=False)
    except (OSError, ValueError, TypeError):  # a read-only results folder: scanning still works, uncached
        pass


def scan(results_dir: str | os.PathLike = "results", suite: str | None = None, cache: bool = True):
    """Every run record below ``results_dir`` (optionally one suite) as a DataFrame, one row per run.

    Unreadable records are skipped, logged (info), and listed in ``df.attrs["skipped"]`` as (path, reason).
    With ``cache`` (and a suite), rows of records whose spec.json and result.json are unchanged
    (same modification time and size) come from the frame kept in ``results/SUITE/.scan-cache.json``,
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
            log.info("skipping unreadable record %s (%s)", run_dir, row)  # callers show df.attrs["skipped"]
    parts = []
    if kept:  # the folder's spelling of this scan, whatever the cached one was
        parts.append(cached["frame"]().iloc[[i for i, _, _ in kept]].assign(path=[d for _, d, _ in kept]))
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
