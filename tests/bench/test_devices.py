"""GPU clusters without a GPU: one device per process, a missing CUDA recorded as a failed run,
checkpoints that load anywhere, numerics recorded, out-of-memory as its own state. CUDA calls are
monkeypatched where a test needs a machine with GPUs."""

from __future__ import annotations

import contextlib

import pytest
import torch

from baselines.base import FlowModel
from baselines.registry import register
from bench.spec import load_suite
from bench.store import RunRecord

TINY = """
datasets:
  8gaussians: {n_train: 512, n_val: 128, n_test: 128}
models:
  realnvp: {n_layers: 2, hidden: 16, batch_norm: false}
seeds: [0]
train: {max_steps: 40, batch_size: 64, lr: 5e-3, eval_every: 20, checkpoint_every: 20}
"""


def _spec(write_suite, text: str = TINY):
    return load_suite(write_suite(text)).runs()[0]


class _BuiltNothingYet(Exception):
    """Raised by the patched load_dataset: the Trainer got as far as building its first object."""


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_each_process_of_a_multi_process_run_uses_and_sets_its_own_gpu(write_suite, tmp_path, monkeypatch, rank):
    import torch.distributed as dist

    from bench import train

    calls: list = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d=None: calls.append(("reset", str(d))))
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: calls.append(("init", backend)))
    monkeypatch.setattr(dist, "get_rank", lambda: rank)
    monkeypatch.setattr(dist, "get_world_size", lambda: 4)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("LOCAL_RANK", str(rank))

    def first_build(*args, **kwargs):
        calls.append("load_dataset")
        raise _BuiltNothingYet

    monkeypatch.setattr(train, "load_dataset", first_build)
    spec = _spec(write_suite)
    for device in ("cuda", "auto"):
        calls.clear()
        with pytest.raises(_BuiltNothingYet):
            train.Trainer(spec, RunRecord(tmp_path, spec.suite, spec.run_id), device=device, progress=False)
        assert calls == [("init", "nccl"), ("set_device", f"cuda:{rank}"), ("reset", f"cuda:{rank}"), "load_dataset"]
    assert train.resolve_device("cuda", rank, 4) == torch.device("cuda", rank)
    assert train.resolve_device("cuda:3", 0, 1) == torch.device("cuda", 3)  # explicit, one process: as given
    with pytest.raises(train.FlowbenchError, match="one GPU per process"):
        train.resolve_device("cuda:3", rank, 4)
    with pytest.raises(train.FlowbenchError, match=r"needs cuda:5, but the machine shows 4 CUDA device"):
        train.resolve_device("cuda", 5, 8)


def test_cuda_on_a_machine_without_it_is_a_recorded_failed_run(write_suite, tmp_path, monkeypatch):
    from bench.train import run_one

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = _spec(write_suite)
    record = RunRecord(tmp_path, spec.suite, spec.run_id)
    result = run_one(spec, record, device="cuda", progress=False)  # what a SLURM task runs: no traceback
    written = record.read_result()
    assert result["status"] == written["status"] == "failed"
    assert written["error"] == "--device cuda: CUDA is not available on this machine; use --device cpu or auto"
    assert written["env"]["device"] == "cuda" and written["env"]["device_name"].startswith("unavailable")
    assert (record.dir / "spec.json").exists() and not record.checkpoint_path.exists()
    other = RunRecord(tmp_path / "typo", spec.suite, spec.run_id)
    assert run_one(spec, other, device="nosuchdevice", progress=False)["status"] == "failed"
    assert other.read_result()["error"] == ("--device nosuchdevice: not a device torch knows; use auto, cpu, cuda "
                                            "or cuda:N")


@contextlib.contextmanager
def _saved_on(location: str):
    """torch.save inside the block tags every storage with ``location`` (e.g. "cuda:1"), as a file saved
    on that GPU is: torch.load without map_location then needs that device."""
    entry = (-1, lambda storage: location, lambda storage, where: None)
    torch.serialization.register_package(*entry)
    try:
        yield
    finally:
        registry = torch.serialization._package_registry
        registry[:] = [e for e in registry if e[1] is not entry[1]]


def _preempted_checkpoint(write_suite, tmp_path, stop_at_step, stop_at: int = 25):
    """A real checkpoint of a run stopped (preempted) after step ``stop_at``: (spec, record, checkpoint)."""
    from bench.train import run_one

    spec = _spec(write_suite)
    record = RunRecord(tmp_path, spec.suite, spec.run_id)
    stop_at_step(stop_at)
    assert run_one(spec, record, device="cpu", progress=False)["status"] == "preempted"
    stop_at_step(None)
    return spec, record, torch.load(record.checkpoint_path, weights_only=True)


def _as_saved_on_two_gpus(record, ckpt, own_key: bool = True) -> dict:
    """Rewrite ``ckpt`` as a run on cuda:1 of a two-GPU node saves it: storages tagged cuda:1, two
    per-GPU RNG states and (``own_key``) the run's own GPU's state."""
    gpu_states = [torch.arange(16, dtype=torch.uint8) + i for i in range(2)]
    rng = {**ckpt["rng"], "cuda": gpu_states}
    if own_key:
        rng["cuda_device"] = gpu_states[1].clone()
    else:
        rng.pop("cuda_device", None)  # a checkpoint from before the key existed
    saved = {**ckpt, "rng": rng}
    with _saved_on("cuda:1"):
        torch.save(saved, record.checkpoint_path)
    return saved


def test_a_checkpoint_saved_on_a_gpu_resumes_on_the_cpu(write_suite, tmp_path, monkeypatch, stop_at_step):
    from bench import train

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec, record, ckpt = _preempted_checkpoint(write_suite, tmp_path, stop_at_step)
    saved = _as_saved_on_two_gpus(record, ckpt)
    with pytest.raises(RuntimeError, match="CUDA"):  # the file really asks for a GPU
        torch.load(record.checkpoint_path, weights_only=True)
    on_meta = torch.load(record.checkpoint_path, map_location="meta", weights_only=True)
    with pytest.raises(TypeError, match="RNG state must be a torch.ByteTensor"):  # loading onto the run's device
        train._set_rng_states(on_meta["rng"], torch.device("cpu"))  # (not the CPU) breaks every RNG restore

    loaded = []
    real_load = train.load_tensors

    def spy(*args, **kwargs):
        loaded.append(real_load(*args, **kwargs))
        return loaded[-1]

    monkeypatch.setattr(train, "load_tensors", spy)
    trainer = train.Trainer(spec, record, device="cpu", progress=False)
    rng = loaded[0]["rng"]
    assert all(t.device.type == "cpu" and t.dtype == torch.uint8 for t in (rng["torch"], *rng["cuda"],
                                                                            rng["cuda_device"]))
    assert torch.equal(torch.get_rng_state(), saved["rng"]["torch"]) and trainer.state.step == 25
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, saved["model"][name]), name
    for p in trainer.model.parameters():
        state = trainer.optimizer.state[p]
        assert state["step"].device.type == "cpu" and float(state["step"]) == 25
        assert state["exp_avg"].device == p.device and state["exp_avg_sq"].device == p.device
    assert trainer.warnings == ["the checkpoint holds the random states of 2 CUDA device(s) and this machine "
                                "shows 0; 0 were restored, so CUDA random draws after the resume differ from an "
                                "uninterrupted run's"]


def test_an_older_checkpoint_of_two_gpus_resumes_on_none_with_a_warning(write_suite, tmp_path, monkeypatch,
                                                                        stop_at_step):
    from bench.train import run_one

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    spec, record, ckpt = _preempted_checkpoint(write_suite, tmp_path, stop_at_step)
    _as_saved_on_two_gpus(record, ckpt, own_key=False)
    result = run_one(spec, record, device="cpu", progress=False)
    written = record.read_result()
    assert result["status"] == written["status"] == "completed" and written["resumes"] == 1 and written["steps"] == 40
    assert len(written["warnings"]) == 1 and "random states of 2 CUDA device(s)" in written["warnings"][0]
    assert "shows 0; 0 were restored" in written["warnings"][0]


@pytest.mark.parametrize("visible, own_key, restored", [
    (1, True, [(0, 0), ("own", "cuda:0")]),  # fewer GPUs: the first, then the run's own state on its GPU
    (4, False, [(0, 0), (1, 1)]),  # more GPUs, an older checkpoint: the two it has
    (2, True, [(0, 0), (1, 1), ("own", "cuda:0")]),
])
def test_cuda_random_states_go_onto_the_gpus_that_exist(monkeypatch, visible, own_key, restored):
    from bench.train import _set_rng_states

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state",
                        lambda state, device: calls.append((int(state[0]) if int(state[0]) < 2 else "own", str(device)
                                                            if isinstance(device, torch.device) else device)))
    states = {"torch": torch.get_rng_state(), "cuda": [torch.full((16,), i, dtype=torch.uint8) for i in range(2)],
              "numpy": _numpy_state(), "python": __import__("random").getstate()}
    if own_key:
        states["cuda_device"] = torch.full((16,), 7, dtype=torch.uint8)
    warnings = _set_rng_states(states, torch.device("cuda", 0))
    assert calls == restored
    assert bool(warnings) == (visible != 2)


def _numpy_state() -> list:
    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


@pytest.fixture
def numerics_restored(monkeypatch):
    """torch's process-wide numerics flags (and cuBLAS's workspace setting) as they were before the test."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.are_deterministic_algorithms_enabled())
    yield
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark,
     torch.backends.cudnn.deterministic) = flags[:4]
    torch.use_deterministic_algorithms(flags[4])


@pytest.mark.parametrize("train, expected", [
    ("", {"tf32_matmul": False, "tf32_cudnn": False, "cudnn_benchmark": False, "cudnn_deterministic": True,
          "deterministic_algorithms": False}),
    (", tf32: true, cudnn_benchmark: true", {"tf32_matmul": True, "tf32_cudnn": True, "cudnn_benchmark": True,
                                             "cudnn_deterministic": False, "deterministic_algorithms": False}),
    (", cudnn_benchmark: true, deterministic: true", {"tf32_matmul": False, "tf32_cudnn": False,
                                                      "cudnn_benchmark": True, "cudnn_deterministic": True,
                                                      "deterministic_algorithms": True}),
])
def test_the_numerics_a_run_asks_for_are_set_and_recorded(write_suite, tmp_path, numerics_restored, train, expected):
    from bench.train import run_one

    torch.backends.cuda.matmul.allow_tf32 = not expected["tf32_matmul"]  # the opposite of what the run asks
    torch.backends.cudnn.benchmark = not expected["cudnn_benchmark"]
    text = TINY.replace("max_steps: 40", "max_steps: 5").replace("checkpoint_every: 20", f"checkpoint_every: 20{train}")
    spec = _spec(write_suite, text)
    record = RunRecord(tmp_path, spec.suite, spec.run_id)
    assert run_one(spec, record, device="cpu", progress=False)["status"] == "completed"
    env = record.read_result()["env"]
    assert env["numerics"] == expected
    assert (env["device"], env["device_kind"], env["gpu_name"], env["cudnn_version"]) == ("cpu", "cpu", None, None)
    assert env["cuda_version"] == torch.version.cuda  # None on a CPU build of torch
    assert torch.backends.cudnn.allow_tf32 is expected["tf32_cudnn"]  # set in this process, not only recorded


_MEMORY = {"short": True}  # the oom_after_3 model runs out while this holds


@register("oom_after_3", "test model that runs out of memory at its fourth training step")
def _build_oom(data):
    class RunsOut(FlowModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.calls = 0

        def log_prob(self, x, y=None):
            if self.training:
                self.calls += 1
                if self.calls > 3 and _MEMORY["short"]:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB.\nmore text")
            return -0.5 * (x ** 2).sum(1) * self.w

    return RunsOut()


def test_a_run_out_of_memory_is_oom_left_alone_until_retry_oom(write_suite, results, capsys, monkeypatch):
    from bench.cli import main
    from bench.retry import DEFAULT_RETRY, decide, parse_retry

    monkeypatch.setitem(_MEMORY, "short", True)
    path = write_suite(TINY.replace("realnvp: {n_layers: 2, hidden: 16, batch_norm: false}", "oom_after_3: {}"))
    spec = load_suite(path).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    result = record.read_result()
    assert result["status"] == "oom" and result["steps"] == 3 and "traceback" not in result
    assert result["error"] == ("out of memory after 3 steps: CUDA out of memory. Tried to allocate 20.00 GiB.; "
                               "lower train.batch_size or raise train.accumulate (or use a larger device), then run "
                               "with --retry oom")
    assert list(result["memory"]) == ["peak_rss_mb"] and 10 < result["memory"]["peak_rss_mb"] < 1e6  # a CPU run
    assert "1 oom" in capsys.readouterr().out

    why = ("out of memory at step 3; left alone: lower train.batch_size or raise train.accumulate (a new run), or "
           "re-run it with --retry oom on a larger device")
    assert decide("oom", result, DEFAULT_RETRY) == (False, why)
    assert decide("oom", result, parse_retry("oom")) == (True, "oom at step 3: re-runs")
    assert main(["status", str(path), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert why in out and "1 oom" in out and "would take up 0" in out

    before = record.result_path.read_bytes()
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    assert "1 oom left alone (--retry oom re-runs it)" in capsys.readouterr().out
    assert record.result_path.read_bytes() == before
    monkeypatch.setitem(_MEMORY, "short", False)  # a larger device
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--retry", "oom"]) == 0
    assert record.read_result()["status"] == "completed"


def test_oom_figures_on_a_gpu_are_the_allocator_peaks_and_the_device_total(monkeypatch):
    from bench.train import out_of_memory

    mb = 2 ** 20
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 700 * mb)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda d: 900 * mb)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"total_memory": 1024 * mb}))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    result = out_of_memory(torch.OutOfMemoryError("CUDA out of memory."), torch.device("cuda", 1), 12)
    assert result["memory"] == {"max_allocated_mb": 700.0, "max_reserved_mb": 900.0, "total_mb": 1024.0}
    assert result["status"] == "oom" and result["error"].startswith("out of memory after 12 steps: CUDA out of memory.;")
