"""Run records: atomic writes survive a kill, scan reads records and reports broken ones."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from bench.store import RunRecord, scan

WRITER = """
import sys
from bench.io import atomic_write_json
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
    caplog.set_level("INFO", logger="flowbench")
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


# -- nothing in a results folder runs code ---------------------------------------------------------
def test_scan_cache_is_json_and_a_planted_pickle_in_it_never_runs(results, planted_pickle):
    from bench.store import SCAN_CACHE

    _record(results, "s", "a1", test={"nll": 1.5})
    scan(results, "s")
    assert json.loads((results / "s" / SCAN_CACHE).read_text())["keys"]["a1"]  # plain JSON
    markers = [planted_pickle(results / "s" / name) for name in (SCAN_CACHE, ".scan-cache.pkl")]
    df = scan(results, "s")  # the planted cache is not JSON: rebuilt from the records; the old .pkl is never read
    assert df.set_index("run_id").loc["a1", "test.nll"] == 1.5 and df.attrs["skipped"] == []
    assert not any(m.exists() for m in markers)


def test_records_are_written_with_the_users_umask(results):
    old = os.umask(0o077)
    try:
        private = _record(results, "s", "a1")
        os.umask(0o022)
        shared = _record(results, "s", "b2")
    finally:
        os.umask(old)
    assert {oct(p.stat().st_mode & 0o777) for p in (private.spec_path, private.result_path)} == {"0o600"}
    assert {oct(p.stat().st_mode & 0o777) for p in (shared.spec_path, shared.result_path)} == {"0o644"}


@pytest.mark.parametrize("content", ["pickle", "torch.save", "random bytes"])
def test_model_pt_that_is_not_plain_weights_is_refused_in_one_line(results, planted_pickle, content):
    from bench.errors import FlowbenchError
    from bench.models import load_model

    rec = _record(results, "s", "a1", test={"nll": 1.5})
    if content == "random bytes":
        rec.model_path.write_bytes(os.urandom(4096))
        marker = None
    else:
        marker = planted_pickle(rec.model_path, torch_zip=content == "torch.save")
    with pytest.raises(FlowbenchError) as err:
        load_model(rec.dir)
    message = str(err.value)
    assert message.startswith(f"run {rec.dir}: cannot load model.pt (") and "\n" not in message
    assert "--force" in message
    assert marker is None or not marker.exists()


def test_spec_with_a_non_integer_seed_is_an_unreadable_record(results):
    _record(results, "s", "a1", test={"nll": 1.5})
    bad = _record(results, "s", "b2", test={"nll": 1.0})
    spec = json.loads(bad.spec_path.read_text())
    bad.spec_path.write_text(json.dumps({**spec, "seed": "zero"}))
    df = scan(results, "s")
    assert list(df["run_id"]) == ["a1"]
    assert df.attrs["skipped"] == [(str(bad.dir), "ValueError: spec.json: seed 'zero' is not an integer")]


# -- one run, one owner ----------------------------------------------------------------------------
def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_is_exclusive_until_released(results):
    from bench.store import RunClaimed

    rec = _record(results, "s", "a1", status="pending")
    with rec.claim() as claim:
        holder = json.loads(rec.claim_path.read_text())
        assert holder["pid"] == os.getpid() and holder["token"] == claim.info["token"]
        assert {"owner", "host", "heartbeat"} <= set(holder)
        assert rec.claim_state() == "live"
        rec.write_result({"status": "running"})
        assert rec.shown_status() == "running"  # held by a live process: not stale
        with pytest.raises(RunClaimed, match=r"claimed by .* pid \d+"):
            rec.claim()
    assert not rec.claim_path.exists() and rec.claim_state() == ""
    with rec.claim():
        pass


def test_a_dead_owners_claim_is_taken_over(results, monkeypatch):
    import socket

    from bench.store import RunClaimed

    rec = _record(results, "s", "a1", status="running")
    here = {"owner": "x", "host": socket.gethostname(), "token": "old", "heartbeat": time.time()}
    rec.claim_path.write_text(json.dumps({**here, "pid": _dead_pid()}))  # its process is gone
    assert rec.claim_state() == "stale" and rec.shown_status() == "stale"
    with rec.claim() as claim:
        assert json.loads(rec.claim_path.read_text())["token"] == claim.info["token"]
    elsewhere = {**here, "host": "another-node", "pid": 1}
    rec.claim_path.write_text(json.dumps(elsewhere))  # another host, beating: live
    with pytest.raises(RunClaimed, match="another-node"):
        rec.claim()
    monkeypatch.setenv("FLOWBENCH_CLAIM_STALE_S", "60")
    os.utime(rec.claim_path, (time.time() - 120, time.time() - 120))  # no heartbeat for two minutes: dead
    with rec.claim():
        pass


def test_a_claim_taken_over_while_held_is_lost(results, monkeypatch):
    monkeypatch.setenv("FLOWBENCH_HEARTBEAT_S", "0.05")
    rec = _record(results, "s", "a1", status="pending")
    with rec.claim() as claim:
        rec.claim_path.write_text(json.dumps({"host": "another-node", "pid": 1, "token": "theirs"}))
        assert claim.lost.wait(5)
    assert json.loads(rec.claim_path.read_text())["token"] == "theirs"  # release leaves another's claim alone


def test_a_requeued_slurm_job_takes_its_own_claim_over(results, monkeypatch):
    """A node failed: the claim of its job still looks alive (another host, a recent heartbeat), but
    SLURM runs a job id once at a time, so the requeued job (same id) takes it over."""
    from bench.store import RunClaimed

    rec = _record(results, "s", "a1", status="running")
    rec.claim_path.write_text(json.dumps({"host": "dead-node", "pid": 1, "token": "old", "slurm_job": "77_3"}))
    monkeypatch.setenv("SLURM_JOB_ID", "78_0")
    with pytest.raises(RunClaimed, match="dead-node"):
        rec.claim()
    monkeypatch.setenv("SLURM_JOB_ID", "77_3")
    with rec.claim():
        assert json.loads(rec.claim_path.read_text())["slurm_job"] == "77_3"
