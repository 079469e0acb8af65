"""Experiment trackers (bench/trackers.py): what TensorBoard, MLflow and wandb hold after a run, and
after a run killed with SIGKILL and resumed, read back with each package's own readers."""

from __future__ import annotations

import collections
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.cli import main
from bench.errors import FlowbenchError
from bench.spec import RunSpec, load_suite
from bench.store import RunRecord
from bench.trackers import STATE_FILE, Trackers, add_trackers, read_wandb_records

EventAccumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator").EventAccumulator
MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
pytest.importorskip("wandb")

SUITE = """
datasets:
  8gaussians: {n_train: 1000, n_val: 2000, n_test: 500}
models:
  realnvp: {n_layers: 2, hidden: 16}
seeds: [0]
trackers: [tensorboard, mlflow]
train: {max_steps: MAX, batch_size: 64, lr: 5e-3, eval_every: 10, checkpoint_every: 30}
"""
TRACKER_ENV = ("WANDB_MODE", "WANDB_API_KEY", "WANDB_PROJECT", "MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """wandb offline, MLflow in the results folder: as for a user who configured neither (the runs
    start without MLFLOW_ALLOW_FILE_STORE; this process sets it to read the file store back)."""
    for name in TRACKER_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


def _cli(path: Path, results: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in TRACKER_ENV}
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--results", str(results), "--quiet",
                             "--no-report", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**env, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def _tensorboard(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow_run(results: Path, run_id: str):
    client = MlflowClient(tracking_uri=(results / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("t")
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`flowbench.run_id` = '{run_id}'")
    return client, runs


def _wandb(run_dir: Path, run_id: str) -> tuple[dict[str, list[tuple[int, float]]], dict, dict, list[str], int]:
    """Per metric the (step, value) pairs of every session's .wandb file, the last summary, the
    config, the run ids the files name and the number of files (sessions)."""
    history: dict[str, list[tuple[int, float]]] = collections.defaultdict(list)
    summary, config, ids = {}, {}, []
    files = sorted((run_dir / "wandb").glob(f"offline-run-*/run-{run_id}.wandb"))  # a session in the same second: -1
    for path in files:
        for record in read_wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "history":
                items = {"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in record.history.item}
                for key, value in items.items():
                    if not key.startswith("_"):
                        history[key].append((items["_step"], value))
            elif kind == "summary":
                summary.update({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                for i in record.summary.update})
            elif kind == "config":
                config.update({i.key: json.loads(i.value_json) for i in record.config.update})
            elif kind == "run":  # the run's first record carries the config given to wandb.init
                ids.append(record.run.run_id)
                config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
    return dict(history), summary, config, ids, len(files)


def _expected(rows: list[dict], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if key in r]


def _close(got: list[tuple[int, float]], want: list[tuple[int, float]], key: str, tracker: str) -> None:
    """Each step of metrics.jsonl once, in order, with its value (wall-clock fields: steps only, as a
    step the killed session logged keeps that session's time)."""
    assert [s for s, _ in got] == [s for s, _ in want], (tracker, key, got, want)
    if key == "seconds":
        return
    for (_, a), (_, b) in zip(got, want):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-9), (tracker, key)


@pytest.mark.slow
def test_killed_run_resumes_the_same_tracker_runs_without_repeating_a_step(write_suite, tmp_path):
    path = write_suite(SUITE.replace("MAX", "300"))
    spec = load_suite(path).runs()[0]
    results = tmp_path / "results"
    record = RunRecord(results, spec.suite, spec.run_id)
    proc = _cli(path, results, "--tracker", "wandb")
    deadline = time.time() + 90
    last = 0
    # kill when the last line is 20 steps past a checkpoint (every 30): the tracker already has a step the
    # checkpoint lacks (the line 10 steps back), which the resumed run computes again
    while time.time() < deadline and proc.poll() is None:
        rows = record.read_metrics() if record.metrics_path.exists() else []
        last = rows[-1]["step"] if rows else 0
        if last >= 50 and last % 30 == 20 and record.checkpoint_path.exists():
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and record.read_result()["status"] == "running", \
        proc.stderr.read().decode()[-2000:]
    client, runs = _mlflow_run(results, spec.run_id)
    held_before = [m.step for m in client.get_metric_history(runs[0].info.run_id, "train_loss")]
    assert max(held_before) >= last - 10 > last - 20  # the stale tail the resumed run must not repeat

    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--tracker", "wandb"]) == 0
    result, rows = record.read_result(), record.read_metrics()
    assert result["status"] == "completed" and result["resumes"] == 1
    steps = list(range(10, 301, 10))
    assert [r["step"] for r in rows] == steps
    keys = ("train_loss", "lr", "nfe_forward", "nfe_backward", "val_nll", "seconds")

    board = _tensorboard(record.dir)  # the reader drops the killed session's events after purge_step
    for key in keys:
        _close(board[key], _expected(rows, key), key, "tensorboard")
    assert board["test_nll"] == [(300, pytest.approx(result["test"]["nll"], rel=1e-6))]

    client, runs = _mlflow_run(results, spec.run_id)
    assert len(runs) == 1  # the same MLflow run, reopened
    run = runs[0]
    assert run.info.run_name == spec.run_id and run.info.status == "FINISHED"
    assert json.loads((record.dir / STATE_FILE).read_text())["mlflow"]["run_id"] == run.info.run_id
    assert run.data.params["train.max_steps"] == "300" and run.data.params["model"] == "realnvp"
    for key in keys:
        history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
        _close(sorted(history), _expected(rows, key), key, "mlflow")
    assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "test_nll")] == \
        [(300, pytest.approx(result["test"]["nll"]))]

    # wandb-core buffers its file: a session killed with SIGKILL may leave only the header, and the resumed
    # session then logs the whole history again (read back, not assumed)
    history, summary, config, ids, sessions = _wandb(record.dir, spec.run_id)
    assert sessions == 2 and set(ids) == {spec.run_id}  # two sessions of one wandb run
    for key in keys:
        _close(sorted(history[key]), _expected(rows, key), key, "wandb")
    assert summary["test_nll"] == pytest.approx(result["test"]["nll"])
    assert config["run_id"] == spec.run_id and config["train"]["max_steps"] == 300


def test_trackers_do_not_change_run_ids_or_rerun_finished_runs(write_suite, results, capsys):
    path = write_suite(SUITE.replace("MAX", "20").replace("trackers: [tensorboard, mlflow]\n", ""))
    plain = load_suite(path).runs()[0]
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    record = RunRecord(results, plain.suite, plain.run_id)
    assert not (record.dir / "tensorboard").exists() and not (results / "mlruns").exists()  # off by default
    tracked = add_trackers([plain], ["tensorboard", "mlflow", "tensorboard"])[0]
    assert tracked.trackers == ["tensorboard", "mlflow"] and tracked.run_id == plain.run_id
    assert RunSpec.from_dict(tracked.to_dict()).trackers == ["tensorboard", "mlflow"]  # reaches workers
    capsys.readouterr()
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report",
                 "--tracker", "tensorboard"]) == 0
    assert "0 to run, 1 already completed" in capsys.readouterr().out
    assert not (record.dir / "tensorboard").exists()


def test_unknown_tracker_is_one_line_with_a_suggestion(write_suite, results, capsys):
    path = write_suite(SUITE.replace("MAX", "20").replace("tensorboard, mlflow", "tensorbord"))
    with pytest.raises(FlowbenchError,
                       match=r'trackers: unknown tracker "tensorbord" \(did you mean "tensorboard"\?\)'):
        load_suite(path)
    good = write_suite(SUITE.replace("MAX", "20"), name="good")
    assert main(["run", str(good), "--results", str(results), "--tracker", "mlfow"]) == 2
    err = capsys.readouterr().err
    assert '--tracker: unknown tracker "mlfow" (did you mean "mlflow"?)' in err and "Traceback" not in err
    assert not results.exists() or not any(results.rglob("spec.json"))


def test_missing_package_names_its_extra_before_anything_runs(write_suite, results, capsys, monkeypatch):
    import bench.trackers

    real = bench.trackers.importlib.util.find_spec
    monkeypatch.setattr(bench.trackers.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    path = write_suite(SUITE.replace("MAX", "20"))
    assert main(["run", str(path), "--results", str(results), "--tracker", "wandb"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ['flowbench: error: tracker wandb: the wandb package is not installed; '
                   'pip install "flowbench[wandb]" (or drop it from --tracker and the suite\'s trackers:)']
    assert not results.exists() or not any(results.rglob("spec.json"))  # refused before any record


def test_a_failing_tracker_is_one_warning_and_the_run_goes_on(write_suite, results, caplog, monkeypatch):
    import bench.trackers

    calls = []

    def broken(self, step, metrics):
        calls.append(step)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(bench.trackers._TensorBoard, "log", broken)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://nowhere")  # MLflow cannot even start
    path = write_suite(SUITE.replace("MAX", "60"))
    spec = load_suite(path).runs()[0]
    with caplog.at_level(logging.WARNING, logger="flowbench"):
        assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    result = RunRecord(results, spec.suite, spec.run_id).read_result()
    assert result["status"] == "completed" and result["steps"] == 60
    warnings = [r.getMessage() for r in caplog.records if "tracker" in r.getMessage()]
    assert len(warnings) == 2, warnings  # one per tracker, not one per metrics line
    assert any("tracker tensorboard: logging failed (OSError" in w and "No space left" in w for w in warnings)
    assert any(w.startswith("tracker mlflow: starting failed") for w in warnings)
    assert calls == [10]  # dropped after its first failure


def test_history_is_handed_over_once_and_test_metrics_at_the_end(tmp_path):
    class Recorder:
        name = "recorder"

        def __init__(self):
            self.logged, self.held = [], {"train_loss": 20}  # the tracker already holds steps up to 20

        def last_step(self, key):
            return self.held.get(key, -1)

        def log(self, step, metrics):
            self.logged.append((step, sorted(metrics)))

        def final(self, step, metrics):
            self.logged.append(("final", step, metrics))

        def close(self, status):
            self.logged.append(("closed", status))

    spec = RunSpec("t", "realnvp", "moons", 0, trackers=["tensorboard"])
    trackers = Trackers(spec, RunRecord(tmp_path, "t", spec.run_id))
    recorder = Recorder()
    trackers.open = {"tensorboard": recorder}
    history = [{"step": s, "train_loss": 1.0, "val_nll": 2.0, "note": "text", "flag": True} for s in (10, 20)]
    trackers.log(history)
    history.append({"step": 30, "train_loss": 0.5, "val_nll": 1.5})
    trackers.log(history)
    trackers.log(history)  # nothing new
    trackers.finish({"status": "completed", "steps": 30, "test": {"nll": 1.25, "nfe": float("nan")}})
    assert recorder.logged == [(10, ["val_nll"]), (20, ["val_nll"]), (30, ["train_loss", "val_nll"]),
                               ("final", 30, {"test_nll": 1.25}), ("closed", "completed")]
    assert Trackers(spec, RunRecord(tmp_path, "t", spec.run_id), enabled=False).names == []


def test_wandb_resume_skips_the_steps_its_earlier_session_holds(tmp_path):
    spec = RunSpec("t", "realnvp", "moons", 0, train={"max_steps": 50}, trackers=["wandb"])
    record = RunRecord(tmp_path, "t", spec.run_id)
    record.dir.mkdir(parents=True)
    rows = [{"step": s, "train_loss": 1.0 / s, "lr": 0.01} for s in (10, 20, 30, 40, 50)]
    first = Trackers(spec, record)
    first.log(rows[:3])
    first.finish({"status": "preempted"})  # a graceful stop (SLURM's signal): wandb writes its file out
    history, _, _, _, sessions = _wandb(record.dir, spec.run_id)
    assert sessions == 1 and [s for s, _ in history["train_loss"]] == [10, 20, 30]
    second = Trackers(spec, record)  # the requeued run: its history again, plus two new lines
    second.log(rows)
    second.finish({"status": "completed", "steps": 50, "test": {"nll": 0.75}})
    history, summary, config, ids, sessions = _wandb(record.dir, spec.run_id)
    assert sessions == 2 and set(ids) == {spec.run_id}
    for key in ("train_loss", "lr"):
        _close(sorted(history[key]), _expected(rows, key), key, "wandb")
    assert summary["test_nll"] == 0.75 and config["run_id"] == spec.run_id


def test_a_package_missing_on_a_worker_is_one_warning_naming_the_extra(tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError, as on a bare node
    spec = RunSpec("t", "realnvp", "moons", 0, trackers=["wandb"])
    trackers = Trackers(spec, RunRecord(tmp_path, "t", spec.run_id))
    with caplog.at_level(logging.WARNING, logger="flowbench"):
        trackers.log([{"step": 10, "train_loss": 1.0}])
        trackers.log([{"step": 10, "train_loss": 1.0}, {"step": 20, "train_loss": 0.5}])
        trackers.finish({"status": "completed", "steps": 20, "test": {"nll": 1.0}})
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("tracker wandb: starting failed (")
    assert 'the wandb package is not installed here; pip install "flowbench[wandb]"' in messages[0]
    assert not (tmp_path / "t" / spec.run_id / "wandb").exists()
