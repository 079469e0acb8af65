"""Experiment trackers: optional mirrors of a run's record in TensorBoard, MLflow or Weights & Biases.

Off by default. A suite's ``trackers: [tensorboard, mlflow]`` or ``flowbench run --tracker wandb``
(repeatable) turns them on; they travel with the RunSpec (spec.json) to worker processes but are not
part of the run id, so adding one never re-runs a finished run. The training loop hands every
metrics.jsonl history to ``Trackers.log`` (the one hook, where metrics.jsonl is written) and the
result to ``Trackers.finish``; each tracker gets every metric line (train loss, lr, NFE, validation
metrics, whatever the model reports), the final test metrics, and the resolved spec as parameters.

Resuming (after kill -9, a preemption or a SLURM requeue) continues the same tracker run and never
logs a step twice: TensorBoard writes a new event file whose ``purge_step`` hides every earlier
event (readers drop the stale tail) and rewrites the history; MLflow reopens the run whose id the
run folder keeps (``trackers.json``) and logs, per metric, only steps beyond those it holds; wandb
resumes ``id=run_id`` (offline unless the user configured it) and skips the steps that the run's
earlier ``.wandb`` files already hold (read back with ``read_wandb_records``).

A tracker never breaks a run: whatever it raises is one warning naming it, and the run goes on
without it. Packages are imported only when a tracker is used.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import math
import os
import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError, did_you_mean
from bench.io import atomic_write_json

__all__ = ["TRACKERS", "STATE_FILE", "check_trackers", "require_installed", "add_trackers", "Trackers",
           "read_wandb_records", "wandb_history"]

# name -> (the module it needs, the pyproject extra that installs it)
TRACKERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}
STATE_FILE = "trackers.json"  # in the run folder: the MLflow run that continues on resume
log = logging.getLogger("flowbench")


def check_trackers(value: Any, where: str) -> list[str]:
    """Tracker names (one name is a list of one), each known, duplicates dropped; FlowbenchError
    naming ``where`` (the suite file's key, or --tracker) otherwise."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise FlowbenchError(f"{where}: expected a list of tracker names ({', '.join(TRACKERS)}), got {value!r}")
    for name in value:
        if name not in TRACKERS:
            raise FlowbenchError(f'{where}: unknown tracker "{name}"{did_you_mean(name, TRACKERS)}')
    return list(dict.fromkeys(value))


def require_installed(names: Iterable[str]) -> None:
    """Fail before any run starts when a requested tracker's package is missing (one line naming the
    pyproject extra that installs it); looks the package up without importing it."""
    for name in names:
        module, extra = TRACKERS[name]
        if importlib.util.find_spec(module) is None:
            raise FlowbenchError(f'tracker {name}: the {module} package is not installed; pip install '
                                 f'"flowbench[{extra}]" (or drop it from --tracker and the suite\'s trackers:)')


def add_trackers(specs: Sequence[Any], names: Iterable[str] | None, where: str = "--tracker") -> list[Any]:
    """The RunSpecs with the trackers ``names`` (``run --tracker``) added to the suite's, after
    checking that every tracker they use is installed. The run ids stay the same."""
    import dataclasses

    extra = check_trackers(list(names or []), where)
    out = [dataclasses.replace(s, trackers=list(dict.fromkeys([*s.trackers, *extra]))) if extra else s
           for s in specs]
    require_installed(dict.fromkeys(name for s in out for name in s.trackers))
    return out


def _numbers(row: Mapping[str, Any]) -> dict[str, float]:
    """The numeric fields of a metrics line, except its step."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def _flat(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _scalar(value: Any) -> Any:
    """A parameter value as trackers take it: numbers, text and booleans as they are, the rest as JSON."""
    if isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True, default=str)


class _Tracker:
    """One tracker's run. ``last_step(key)``: the last step of metric ``key`` it already holds."""

    name = ""

    def last_step(self, key: str) -> int:
        return -1

    def log(self, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def final(self, step: int, metrics: dict[str, float]) -> None:
        self.log(step, metrics)

    def close(self, status: str) -> None:
        raise NotImplementedError


class _TensorBoard(_Tracker):
    """Event files under RUN/tensorboard. A resumed run writes a new file that starts with
    ``purge_step`` 0 (readers drop every earlier event) and rewrites the whole history, so a reader
    sees each step once whatever the earlier session wrote after its last checkpoint."""

    name = "tensorboard"

    def __init__(self, spec: Any, folder: Path):
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        folder.mkdir(parents=True, exist_ok=True)
        earlier = [int(m.group(1)) for p in folder.iterdir()
                   if (m := re.match(r"events\.out\.tfevents\.(\d+)\.", p.name))]
        if earlier:  # readers order event files by name (a second-resolution time): this one must sort last
            wait = max(earlier) + 1 - time.time()
            if wait > 0:
                time.sleep(wait)
        self.writer = SummaryWriter(str(folder), purge_step=0 if earlier else None, flush_secs=30)
        config = {k: _scalar(v) if v is not None else "null" for k, v in _flat(spec.to_dict()).items()}
        for summary in hparams(config, {}):
            self.writer.file_writer.add_summary(summary)
        self.writer.add_text("spec", "```\n" + json.dumps(spec.to_dict(), indent=2, sort_keys=True) + "\n```", 0)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class _MLflow(_Tracker):
    """A run in the suite's experiment of the tracking store ($MLFLOW_TRACKING_URI, else the file
    store RESULTS/mlruns), named by the run id and tagged with it; its MLflow id is kept in the run
    folder, so a resumed run continues it."""

    name = "mlflow"

    def __init__(self, spec: Any, run_dir: Path, state: dict[str, Any], save_state: Any):
        uri = os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.parent.parent / "mlruns").resolve().as_uri()
        if uri.startswith("file:"):  # MLflow 3 keeps the file store behind this switch
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self._metric = Metric
        self.client = client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(spec.suite)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(spec.suite)
            except Exception:  # noqa: BLE001 - another run of the suite created it meanwhile
                experiment_id = client.get_experiment_by_name(spec.suite).experiment_id
        else:
            experiment_id = experiment.experiment_id
        self.run_id = self._existing(state, uri, experiment_id, spec.run_id)
        self._held: dict[str, int] = {}
        self._fresh = self.run_id is None
        if self.run_id is None:
            run = client.create_run(experiment_id, run_name=spec.run_id,
                                    tags={"flowbench.run_id": spec.run_id, "flowbench.label": spec.label,
                                          "flowbench.suite": spec.suite})
            self.run_id = run.info.run_id
            save_state({"tracking_uri": uri, "run_id": self.run_id})
            params = [Param(k, str(_scalar(v))[:6000]) for k, v in sorted(_flat(spec.to_dict()).items())]
            for start in range(0, len(params), 100):
                client.log_batch(self.run_id, params=params[start:start + 100])
        else:
            client.update_run(self.run_id, status="RUNNING")

    def _existing(self, state: dict[str, Any], uri: str, experiment_id: str, run_id: str) -> str | None:
        """The MLflow run this run continues: the one trackers.json names, else one tagged with the run id."""
        if state.get("tracking_uri") == uri and state.get("run_id"):
            try:
                if self.client.get_run(state["run_id"]).info.lifecycle_stage == "active":
                    return str(state["run_id"])
            except Exception:  # noqa: BLE001 - gone from the store: look it up by tag, or start anew
                pass
        found = self.client.search_runs([experiment_id], filter_string=f"tags.`flowbench.run_id` = '{run_id}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        return found[0].info.run_id if found else None

    @staticmethod
    def _key(key: str) -> str:
        """A metric name as MLflow accepts it (letters, digits, _ - . / and spaces)."""
        return re.sub(r"[^\w\-./ ]", "_", key)

    def last_step(self, key: str) -> int:
        key = self._key(key)
        if key not in self._held:
            history = [] if self._fresh else self.client.get_metric_history(self.run_id, key)
            self._held[key] = max((m.step for m in history), default=-1)
        return self._held[key]

    def log(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = {self._key(k): v for k, v in metrics.items()}
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, now, step) for k, v in metrics.items()])
        for key in metrics:
            self._held[key] = step

    def close(self, status: str) -> None:
        self.client.set_terminated(self.run_id, status={"completed": "FINISHED", "preempted": "KILLED"}.get(
            status, "FAILED"))


class _Wandb(_Tracker):
    """A wandb run with ``id`` the run id in the project $WANDB_PROJECT (else flowbench-SUITE), its
    files under RUN/wandb; offline (``wandb sync`` uploads it) unless $WANDB_API_KEY or $WANDB_MODE
    says otherwise. Resumes with ``resume="allow"``; steps the earlier sessions' files hold are skipped."""

    name = "wandb"

    def __init__(self, spec: Any, run_dir: Path):
        import wandb

        self._held = wandb_history(run_dir / "wandb", spec.run_id)
        configured = "WANDB_API_KEY" in os.environ or "WANDB_MODE" in os.environ
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT") or f"flowbench-{spec.suite}", id=spec.run_id, name=spec.label,
            group=spec.suite, dir=str(run_dir), resume="allow", config=spec.to_dict(), reinit="create_new",
            mode=None if configured else "offline",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True, x_disable_machine_info=True,
                                    disable_git=True, disable_code=True))

    def last_step(self, key: str) -> int:
        return self._held.get(key, -1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(metrics, step=step, commit=True)

    def final(self, step: int, metrics: dict[str, float]) -> None:
        self.run.summary.update(metrics)  # wandb steps only grow: the test metrics are the run's summary

    def close(self, status: str) -> None:
        import wandb

        self.run.finish(exit_code=0 if status == "completed" else 1)
        wandb.teardown()  # waits until the run's file is written out: a requeued run reads it back at once


class Trackers:
    """The trackers of one run (none unless its spec names some, and only in the main process of a
    multi-process run). Opened at the first ``log``; every failure is one warning and that tracker
    is dropped."""

    def __init__(self, spec: Any, record: Any, enabled: bool = True):
        self.spec, self.record = spec, record
        self.names: list[str] = list(getattr(spec, "trackers", None) or []) if enabled else []
        self.open: dict[str, _Tracker] | None = None
        self._logged: dict[str, int] = {}  # tracker -> last history step handed to it in this process

    def _warn(self, name: str, action: str, err: BaseException) -> None:
        text = (str(err).strip().splitlines() or [""])[0][:300]
        if isinstance(err, ImportError):
            module, extra = TRACKERS[name]
            text = f'the {module} package is not installed here; pip install "flowbench[{extra}]"'
        log.warning("tracker %s: %s failed (%s: %s); run %s goes on without it", name, action,
                    type(err).__name__, text, self.spec.run_id)

    def _state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.record.dir / STATE_FILE).read_text())
            return state if isinstance(state, dict) else {}
        except (OSError, ValueError):
            return {}

    def _save_state(self, name: str, entry: dict[str, Any]) -> None:
        atomic_write_json(self.record.dir / STATE_FILE, {**self._state(), name: entry})

    def _start(self) -> None:
        self.open = {}
        run_dir = Path(self.record.dir)
        for name in self.names:
            try:
                if name == "tensorboard":
                    tracker: _Tracker = _TensorBoard(self.spec, run_dir / "tensorboard")
                elif name == "mlflow":
                    entry = self._state().get("mlflow")
                    tracker = _MLflow(self.spec, run_dir, entry if isinstance(entry, dict) else {},
                                      lambda e: self._save_state("mlflow", e))
                else:
                    tracker = _Wandb(self.spec, run_dir)
            except Exception as err:  # noqa: BLE001 - a tracker never stops a run
                self._warn(name, "starting", err)
                continue
            self.open[name] = tracker
        if self.open:
            atexit.register(self.close)

    def _send(self, name: str, tracker: _Tracker, step: int, metrics: dict[str, float], final: bool) -> None:
        try:
            new = {k: v for k, v in metrics.items() if step > tracker.last_step(k)}
            if new:
                (tracker.final if final else tracker.log)(step, new)
        except Exception as err:  # noqa: BLE001
            self._drop(name, "logging", err)

    def _drop(self, name: str, action: str, err: BaseException) -> None:
        self._warn(name, action, err)
        tracker = self.open.pop(name, None) if self.open else None
        try:
            if tracker is not None:
                tracker.close("failed")
        except Exception:  # noqa: BLE001 - already reported once
            pass

    def log(self, history: Sequence[Mapping[str, Any]]) -> None:
        """Hand the metric lines of ``history`` (metrics.jsonl's rows) that a tracker has not had yet
        to every tracker; the first call opens them and catches up on a resumed run's history."""
        if not self.names:
            return
        if self.open is None:
            self._start()
        for name, tracker in list(self.open.items()):
            done = self._logged.get(name, -1)
            fresh = [row for row in reversed(history) if row["step"] > done][::-1] if history else []
            for row in fresh:
                self._send(name, tracker, int(row["step"]), _numbers(row), final=False)
            if fresh:
                self._logged[name] = int(fresh[-1]["step"])

    def finish(self, result: Mapping[str, Any]) -> None:
        """Log a completed run's test metrics (as ``test_<metric>`` at its last step) and close every
        tracker with the run's status."""
        if not self.names:
            return
        status = str(result.get("status"))
        if status == "completed" and self.open is None:
            self._start()
        for name, tracker in list((self.open or {}).items()):
            if status == "completed":
                test = {f"test_{k}": v for k, v in _numbers(result.get("test") or {}).items() if math.isfinite(v)}
                self._send(name, tracker, int(result.get("steps") or 0), test, final=True)
        self.close(status)

    def close(self, status: str = "preempted") -> None:
        """Close every open tracker (at exit: as preempted, the run resumes later)."""
        for name, tracker in list((self.open or {}).items()):
            try:
                tracker.close(status)
            except Exception as err:  # noqa: BLE001
                self._warn(name, "closing", err)
        if self.open:
            atexit.unregister(self.close)
        self.open = {} if self.open is not None else None


# -- reading wandb's run files (a LevelDB-style log of wandb's protobuf records) ------------------
_WANDB_HEADER = b":W&B\xe1\xbe\x00"
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_wandb_records(path: str | os.PathLike) -> Iterator[Any]:
    """The records of a ``.wandb`` run file (``wandb.proto.wandb_internal_pb2.Record``), in order;
    stops quietly at a torn tail (a process killed while writing) or a record whose checksum fails."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if not data.startswith(_WANDB_HEADER):
        raise ValueError(f"{path}: not a wandb run file (header {data[:7]!r})")
    pos, parts = len(_WANDB_HEADER), b""
    while True:
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
        if pos + 7 > len(data):
            return
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        payload = data[pos + 7:pos + 7 + length]
        if len(payload) < length or kind not in (_FULL, _FIRST, _MIDDLE, _LAST) or \
                zlib.crc32(bytes([kind]) + payload) & 0xFFFFFFFF != crc:
            return
        pos += 7 + length
        parts = payload if kind in (_FULL, _FIRST) else parts + payload
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            try:
                record.ParseFromString(parts)
            except DecodeError:
                return
            yield record
            parts = b""


def wandb_history(folder: str | os.PathLike, run_id: str) -> dict[str, int]:
    """For each metric, the last step the wandb run ``run_id``'s files under ``folder`` hold (every
    earlier session, offline or online); empty when there are none."""
    held: dict[str, int] = {}
    for path in sorted(Path(folder).glob(f"*run-*/run-{run_id}.wandb")):  # run-TIME-ID, or run-TIME-ID-1 ...
        try:
            for record in read_wandb_records(path):
                if record.WhichOneof("record_type") != "history":
                    continue
                items = {(i.key or "/".join(i.nested_key)): i.value_json for i in record.history.item}
                step = record.history.step.num if record.history.HasField("step") else json.loads(
                    items.get("_step", "-1"))
                for key in items:
                    if not key.startswith("_"):
                        held[key] = max(held.get(key, -1), int(step))
        except (OSError, ValueError) as err:
            log.warning("tracker wandb: cannot read %s (%s); its steps may be logged again", path, err)
    return held
