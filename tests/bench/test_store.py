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
        time.sleep(0.4 + 0.13 * attempt)  # land the kill somewhere inside a write
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


def test_metrics_history_is_rewritten_whole(results):
    rec = _record(results, "s", "e5", status="pending")
    rec.write_metrics([{"step": 1}, {"step": 2}])
    rec.write_metrics([{"step": 1}])
    assert rec.read_metrics() == [{"step": 1}]
