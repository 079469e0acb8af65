"""A run on two processes (torch.distributed over gloo) is the run one process makes.

Every family, with what looks across the batch: batch norm (RealNVP's three kinds, FFJORD's moving
batch norm, InfoCNF's gate nets), ActNorm's data-dependent start (Glow, i-ResNet), Hutchinson
probes and dequantisation noise (drawn for the global batch), adaptive solvers (one error norm over
the global batch, the adjoint's parameter adjoint summed), InfoCNF's learned tolerances (the
reward of the global loss). The two processes end with identical weights, and the record of the
run is the single-process record but for timing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from bench.spec import load_suite
from bench.store import RunRecord

FAMILIES = {
    "realnvp": ("digits", "{n_scales: 1, n_checker: 2, n_channel: 2, hidden: 8, n_blocks: 1, batch_norm: true}"),
    "glow": ("digits", "{n_levels: 2, n_steps: 2, hidden: 16, split_prior: true}"),
    "iresnet": ("moons", "{n_blocks: 2, hidden: 16, n_hidden: 1}"),
    "ffjord": ("moons", "{hidden: [16, 16], batch_norm: true, n_blocks: 2, divergence: hutchinson, atol: 1e-4, "
                        "rtol: 1e-4, eval_atol: 1e-4, eval_rtol: 1e-4}"),
    "rnode": ("moons", "{hidden: [16, 16], atol: 1e-4, rtol: 1e-4, eval_atol: 1e-4, eval_rtol: 1e-4}"),
    "infocnf_learned": ("digits", "{hidden: [8, 8], adjoint: false}"),
}
DATA = {"digits": "{}", "moons": "{n_train: 512, n_val: 128, n_test: 130}"}

SUITE = """
datasets: {{{dataset}: {data}}}
models: {{{model}: {options}}}
seeds: [0]
train: {{max_steps: 6, batch_size: 64, eval_batch_size: 50, lr: 5e-3, eval_every: 3, checkpoint_every: 3,
         accumulate: {accumulate}}}
"""

WORKER = textwrap.dedent("""
    import json, sys, torch
    torch.set_num_threads(1)
    from bench.spec import load_suite
    from bench.store import RunRecord
    from bench.train import Trainer
    suite, results, out = sys.argv[1:4]
    spec = load_suite(suite).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    trainer = Trainer(spec, record, device="cpu", progress=False)
    first_step = trainer.optimizer.step

    def step(*args, **kwargs):  # the gradients of the first step (summed over the processes), kept
        if not hasattr(trainer, "first_grads"):
            trainer.first_grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        return first_step(*args, **kwargs)

    trainer.optimizer.step = step
    result = trainer.run()
    torch.save(trainer.first_grads, out + ".grads")
    torch.save(trainer.model.state_dict(), out)
    if trainer.dist.main:
        json.dump(result, open(out + ".json", "w"), default=str)
""")

TIMING = {"train_seconds", "eval_seconds", "seconds_per_step", "wall_seconds", "peak_memory_mb", "world_size", "env"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_processes(suite: Path, results: Path, out: Path, world: int, timeout: float = 240) -> list[Path]:
    """Run the suite's one run as ``world`` gloo processes (one process: no process group); the
    weights file of each rank."""
    script = out / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs, files = [], []
    for rank in range(world):
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1",
               "WORLD_SIZE": str(world), "RANK": str(rank), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        files.append(out / f"w{world}-rank{rank}.pt")
        procs.append(subprocess.Popen([sys.executable, str(script), str(suite), str(results), str(files[-1])],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    return files


def same_run(single: dict, multi: dict, rel: float | None = 1e-4) -> None:
    """Two results that differ only in timing (numbers to ``rel``; None: only their presence)."""
    assert set(single) == set(multi)
    for key in set(single) - TIMING:
        a, b = single[key], multi[key]
        if isinstance(a, dict):
            same_run(a, b, rel)
        elif isinstance(a, float):
            assert rel is None or b == pytest.approx(a, rel=rel, abs=1e-9), key
        else:
            assert a == b, key


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_two_processes_make_the_single_process_run(model, tmp_path):
    dataset, options = FAMILIES[model]
    # micro-batches: each process holds its rows of each part. Glow needs them here: a batch that
    # initialises an ActNorm has a zero mean there, so the gradient of its shift is zero but for rounding
    # (about 1e-7), and Adam turns that noise into a step of lr either way; the second part makes it real.
    accumulate = 2 if model in ("realnvp", "ffjord", "glow") else 1
    # RealNVP's conditioner puts biases before its batch norms: their gradient is zero but for rounding,
    # and Adam's first steps turn the rounding into steps of lr, which move the running averages. The
    # run is then only as reproducible as rounding allows: one process at 1 and at 2 torch threads
    # gives test bits/dim 3.4239 and 3.4305 here (and validation NLL after 3 steps differs by 10%).
    # Its first-step gradients are compared like everyone's; its records' numbers are not.
    rel = None if model == "realnvp" else 1e-4
    suite = tmp_path / "d.yaml"
    suite.write_text(SUITE.format(dataset=dataset, data=DATA[dataset], model=model, options=options,
                                  accumulate=accumulate))
    one = run_processes(suite, tmp_path / "one", tmp_path, 1)
    two = run_processes(suite, tmp_path / "two", tmp_path, 2)
    weights = [torch.load(f, weights_only=True) for f in two]
    for key, value in weights[0].items():  # the processes agree bit for bit
        assert torch.equal(value, weights[1][key]), key
    grads = [torch.load(str(f) + ".grads", weights_only=True) for f in (one[0], *two)]
    assert set(grads[0]) == set(grads[1]) == set(grads[2])
    scale = max(g.abs().max() for g in grads[0].values())
    for key, value in grads[0].items():  # the first step: the gradient one process computes
        assert torch.equal(grads[1][key], grads[2][key]), key
        torch.testing.assert_close(grads[1][key], value, rtol=1e-4, atol=1e-6 * float(scale), msg=key)
    if model != "realnvp":
        single = torch.load(one[0], weights_only=True)
        for key, value in single.items():
            if value.is_floating_point():
                torch.testing.assert_close(weights[0][key], value, rtol=1e-4, atol=1e-5, msg=key)
    result_one = json.loads(Path(str(one[0]) + ".json").read_text())
    result_two = json.loads(Path(str(two[0]) + ".json").read_text())
    same_run(result_one, result_two, rel)
    spec = load_suite(suite).runs()[0]
    history = [RunRecord(tmp_path / r, spec.suite, spec.run_id).read_metrics() for r in ("one", "two")]
    assert [h["step"] for h in history[0]] == [h["step"] for h in history[1]] == [3, 6]
    for a, b in zip(*history):
        same_run({k: v for k, v in a.items() if k != "seconds"}, {k: v for k, v in b.items() if k != "seconds"}, rel)
