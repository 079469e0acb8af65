"""GPU clusters without a GPU: one device per process, a missing CUDA recorded as a failed run,
checkpoints that load anywhere, numerics recorded, out-of-memory as its own state. CUDA calls are
monkeypatched where a test needs a machine with GPUs."""

from __future__ import annotations

import pytest
import torch

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
