"""Run records: atomic writes survive a kill, scan reads records and reports broken ones."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from bench.store import RunRecord, atomic_write_json, scan

WRITER = """
import sys
from bench.store import atomic_write_json
path = sys.argv[1]
payload = {"blob": "x" * 2_000_000}
i = 0
while True:
    payload["i"] = i
    atomic_write_json(path, payload)
    i += 1
"""


def test_record_survives_a_process_killed_mid_write(tmp_path):
    target = tmp_path / "result.json"
    for attempt in range(5):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)])
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:  # the writer is running (slow on a busy CI)
            time.sleep(0.05)
        time.sleep(0.05 + 0.13 * attempt)  # land the kill somewhere inside a later write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        data = json.loads(target.read_text())  # never a half-written file
        assert len(data["blob"]) == 2_000_000 and data["i"] >= 0


def _record(results, suite, run_id, status="completed", **result):
    rec = RunRecord(results, suite, run_id)
    rec.create({"run_id": run_id, "suite": suite, "model": "realnvp", "dataset": "moons", "seed": 0,
                "metric": "nll", "model_config": {"hidden": 8}, "train": {"lr": 0.1}})
    if status != "pending":
        rec.write_result({"status": status, **result})
    return rec


def test_scan_flattens_and_skips_unreadable(results, caplog):
    _record(results, "s", "a1", test={"nll": 1.5, "bpd": 2.0}, steps=10)
    _record(results, "s", "b2", status="diverged", error="non-finite training loss")
    _record(results, "s", "c3", status="pending")
    broken = _record(results, "s", "d4")
    broken.result_path.write_text('{"status": "compl')  # e.g. a foreign tool's half file
    df = scan(results, "s")
    assert sorted(df["run_id"]) == ["a1", "b2", "c3"]
    row = df.set_index("run_id").loc["a1"]
    assert row["test.nll"] == 1.5 and row["model_config.hidden"] == 8 and row["train.lr"] == 0.1
    assert df.set_index("run_id").loc["c3", "status"] == "pending"
    assert [p for p, _ in df.attrs["skipped"]] == [str(broken.dir)]
    assert "skipping unreadable record" in caplog.text
    assert len(scan(results)) == 3  # the whole results folder, every suite


def test_scan_cache_serves_unchanged_records_and_rereads_changed_ones(results):
    from bench.store import SCAN_CACHE

    a = _record(results, "s", "a1", test={"nll": 1.5})
    _record(results, "s", "b2", status="pending")
    first = scan(results, "s").set_index("run_id")
    assert (results / "s" / SCAN_CACHE).exists()
    assert first.loc["b2", "status"] == "pending" and first.loc["a1", "test.nll"] == 1.5
    a.write_result({"status": "completed", "test": {"nll": 1.25, "bpd": 3.0}})  # changed: size and mtime
    _record(results, "s", "c3", test={"nll": 2.0})  # new
    second = scan(results, "s").set_index("run_id")
    assert second.loc["a1", "test.nll"] == 1.25 and second.loc["a1", "test.bpd"] == 3.0
    assert sorted(second.index) == ["a1", "b2", "c3"]
    (results / "s" / SCAN_CACHE).write_bytes(b"not a pickle")  # a damaged cache is rebuilt, not trusted
    assert scan(results, "s").set_index("run_id").loc["a1", "test.nll"] == 1.25
    uncached = scan(results, "s", cache=False).drop(columns="path")
    assert uncached.sort_values("run_id").reset_index(drop=True).equals(
        scan(results, "s").drop(columns="path").sort_values("run_id").reset_index(drop=True))


def test_metrics_history_is_rewritten_whole(results):
    rec = _record(results, "s", "e5", status="pending")
    rec.write_metrics([{"step": 1}, {"step": 2}])
    rec.write_metrics([{"step": 1}])
    assert rec.read_metrics() == [{"step": 1}]


def test_scan_in_worker_processes_matches_the_serial_read(results):
    """Thousands of uncached records are read by forked workers (a fresh process, no torch loaded):
    same frame, same skipped list, as reading them here."""
    import os
    import pickle

    for i in range(12):
        _record(results, "s", f"r{i:02d}", status="pending" if i == 3 else "completed", test={"nll": 1.0 + i})
    broken = _record(results, "s", "zz")
    broken.result_path.write_text("[1, 2")
    serial = scan(results, "s", cache=False)
    code = ("import os, sys, pickle, multiprocessing.pool as mpp; from bench import store; "
            "store.PARALLEL_READS = 2; calls = []; dispatch = mpp.Pool.map_async; "
            "mpp.Pool.map_async = lambda self, *a, **k: calls.append(os.getpid()) or dispatch(self, *a, **k); "
            f"df = store.scan({str(results)!r}, 's', cache=False); "
            "sys.stdout.buffer.write(pickle.dumps((df, df.attrs['skipped'], len(calls))))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    parallel, skipped, dispatched = pickle.loads(proc.stdout)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    assert dispatched == (1 if cores >= 2 and sys.platform.startswith("linux") else 0)
    assert parallel.equals(serial)
    assert skipped == serial.attrs["skipped"] == [(str(broken.dir), skipped[0][1])]
    assert "JSONDecodeError" in skipped[0][1]


def test_scan_cache_follows_the_folder_spelling_and_removals(results, monkeypatch):
    import shutil

    for name in ("a1", "b2", "c3"):
        _record(results, "s", name, test={"nll": 1.0})
    scan(results, "s")  # cache written with absolute paths
    monkeypatch.chdir(results.parent)
    shutil.rmtree(results / "s" / "b2")
    _record(results, "s", "a0", test={"nll": 3.0})  # new, sorts before the cached ones
    df = scan(results.name, "s")
    assert list(df["run_id"]) == ["a0", "a1", "c3"]  # folder order, the removed run gone
    assert list(df["path"]) == [f"{results.name}/s/{r}" for r in ("a0", "a1", "c3")]
    assert df.set_index("run_id").loc["a0", "test.nll"] == 3.0
