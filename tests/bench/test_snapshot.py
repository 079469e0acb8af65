"""The code a queued job runs (bench/snapshot.py): content-addressed, read-only, mismatches flagged."""

from __future__ import annotations

from bench.cli import main
from bench.spec import load_suite
from bench.store import RunRecord
from tiny_suites import REALNVP_MOONS as SUITE



def test_code_snapshot_is_content_addressed_and_read_only(tmp_path):
    import os

    from bench.snapshot import code_hash, snapshot_code

    first = snapshot_code(tmp_path / "a")
    again = snapshot_code(tmp_path / "a")
    snap = tmp_path / "a" / "code" / first["sha"]
    assert set(os.listdir(snap)) == {"bench", "baselines"} and first["dir"] == str(snap)
    assert not list(snap.rglob("__pycache__")) and (snap / "bench" / "launch.py").is_file()
    assert code_hash({p.name: p for p in snap.iterdir()}) == first["sha"]  # named by what it holds
    if again["sha"] == first["sha"]:  # (another process may edit the tree in between)
        assert len(os.listdir(tmp_path / "a" / "code")) == 1
    assert not os.access(snap / "bench" / "launch.py", os.W_OK) or os.geteuid() == 0
    assert (os.stat(snap / "bench" / "launch.py").st_mode & 0o222) == 0
    # any change to a file changes the hash
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(snap / "baselines", copy / "baselines")
    before = code_hash({"baselines": copy / "baselines"})
    target = copy / "baselines" / "__init__.py"
    target.chmod(0o644)
    target.write_text(target.read_text() + "\nMARKER = 1\n")
    assert code_hash({"baselines": copy / "baselines"}) != before


def test_status_flags_code_that_differs_from_the_submitted(write_suite, results, capsys):
    from bench.snapshot import code_mismatch

    assert code_mismatch({"code": {"submitted": "a1", "ran": "a1"}}) is None
    assert code_mismatch({}) is None
    path = write_suite(SUITE)
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report",
                 "--set", "train.max_steps=10"]) == 0
    spec = load_suite(path).runs(sets=["train.max_steps=10"])[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    record.write_result({**record.read_result(), "code": {"submitted": "aaaa", "ran": "bbbb", "git": "1234+dirty"}})
    capsys.readouterr()
    assert main(["status", str(path), "--results", str(results), "--set", "train.max_steps=10"]) == 0
    assert "code mismatch: realnvp/moons/seed0 (max_steps=10)" in capsys.readouterr().out
    assert "ran code bbbb but was submitted with aaaa (git 1234+dirty)" in code_mismatch(record.read_result())
