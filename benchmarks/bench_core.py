"""Harness speed: CLI start-up, grid expansion, scan of records, per-step overhead of the loop.

    python benchmarks/bench_core.py

Targets (issue 2): `flowbench --help` < 0.3 s; 10,000-run grid < 1 s; scan of 10,000 records
< 3 s; the harness's overhead per training step < 2% of a RealNVP toy step.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from baselines.base import FlowModel
from baselines.registry import register


@register("bench_null", "a one-parameter Gaussian: isolates the harness's own per-step cost")
def _null(data):
    class Null(FlowModel):
        def __init__(self):
            super().__init__()
            self.log_scale = torch.nn.Parameter(torch.zeros(()))

        def log_prob(self, x, y=None):
            return -0.5 * (x * torch.exp(-self.log_scale)).pow(2).sum(1) - 2 * self.log_scale

    return Null()


def time_help(repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "bench", "--help"], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_grid(tmp: Path) -> tuple[float, int]:
    from bench.spec import load_suite

    path = tmp / "grid.yaml"
    path.write_text("datasets: [8gaussians, moons]\nmodels: {realnvp: {}}\n"
                    f"seeds: {list(range(5000))}\ntrain: {{max_steps: 100}}\n")
    start = time.perf_counter()
    specs = load_suite(path).runs()
    return time.perf_counter() - start, len(specs)


def time_scan(tmp: Path, n: int = 10_000) -> tuple[float, int]:
    from bench.store import RunRecord, scan

    for i in range(n):
        rec = RunRecord(tmp / "results", "big", f"{i:012x}")
        rec.dir.mkdir(parents=True)
        (rec.spec_path).write_text(f'{{"run_id": "{i:012x}", "suite": "big", "model": "m{i % 7}", "dataset": '
                                   f'"d{i % 5}", "seed": {i % 3}, "metric": "nll", "model_config": {{"hidden": 64}}, '
                                   '"train": {"lr": 0.001, "max_steps": 1000}}')
        rec.result_path.write_text(f'{{"status": "completed", "test": {{"nll": {i / n}, "bpd": 1.0}}, "steps": 1000, '
                                   '"nfe": {"train_forward": 20, "train_backward": 30}, "train_seconds": 12.5, '
                                   '"env": {"git_sha": "abc", "versions": {"torch": "2.13.0"}}}')
    start = time.perf_counter()
    df = scan(tmp / "results", "big")
    return time.perf_counter() - start, len(df)


def time_overhead(tmp: Path, model: str, hparams: dict, steps: int = 400, rounds: int = 5) -> tuple[float, float]:
    """Seconds per step: the bare model step, and the same step inside bench.train.Trainer."""
    from baselines.registry import get_builder
    from bench.data import load_dataset
    from bench.fields import TRAIN_DEFAULTS
    from bench.spec import RunSpec
    from bench.store import RunRecord
    from bench.train import Trainer

    train = {**TRAIN_DEFAULTS, "max_steps": steps, "batch_size": 512, "eval_every": 10**9,
             "checkpoint_every": 10**9, "eval_max_examples": 512}
    spec = RunSpec("bench", model, "8gaussians", 0, hparams, {"n_train": 20_000, "n_val": 5_000, "n_test": 20_000, "seed": 0}, train, "nll")
    data = load_dataset(spec.dataset, spec.data_config)

    def bare() -> float:
        torch.manual_seed(0)
        net = get_builder(model)(data.info, **spec.model_config)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x_all = data.train.x
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(x_all), generator=gen)
        start = time.perf_counter()
        for i in range(steps):
            j = (i % (len(x_all) // 512)) * 512
            x = x_all[perm[j:j + 512]]
            loss = -net.log_prob(x).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (time.perf_counter() - start) / steps

    def harness(k: int) -> float:
        record = RunRecord(tmp / "overhead", model, f"r{k}")
        record.create(spec.to_dict())
        trainer = Trainer(spec, record, progress=True)
        with open(os.devnull, "w") as devnull, contextlib.redirect_stderr(devnull):
            start = time.perf_counter()
            trainer.fit()
            elapsed = time.perf_counter() - start - trainer.state.eval_seconds
        return elapsed / steps

    bare_times, harness_times = [], []
    for k in range(rounds):  # interleaved, so drifts in machine load hit both alike
        bare_times.append(bare())
        harness_times.append(harness(k))
    return min(bare_times), min(harness_times)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        help_s = time_help()
        print(f"flowbench --help                 {help_s:8.3f} s   (target < 0.3 s)")
        grid_s, n = time_grid(tmp)
        print(f"load + expand a {n:,}-run grid    {grid_s:8.3f} s   (target < 1 s)")
        scan_s, n = time_scan(tmp)
        print(f"scan {n:,} records                {scan_s:8.3f} s   (target < 3 s)")
        realnvp = {"n_layers": 8, "hidden": 64, "n_hidden": 2, "scale_bound": 3.0}
        bare, harness = time_overhead(tmp, "realnvp", realnvp)
        print(f"RealNVP toy step, bare loop       {1e3 * bare:8.3f} ms  (8 couplings, 64-64, batch 512, 2-D)")
        print(f"RealNVP toy step, flowbench loop  {1e3 * harness:8.3f} ms  ({100 * (harness / bare - 1):+.2f} %, "
              "end to end; sensitive to machine load)")
        # The harness's own cost, isolated: the same comparison with a model that costs ~nothing.
        null_bare, null_harness = time_overhead(tmp, "bench_null", {}, steps=2000)
        overhead = null_harness - null_bare
        print(f"harness bookkeeping per step      {1e6 * overhead:8.1f} us  (null model: bare "
              f"{1e6 * null_bare:.1f} us, in the loop {1e6 * null_harness:.1f} us)")
        print(f"harness overhead / RealNVP step   {100 * overhead / bare:8.2f} %   (target < 2 %)")


if __name__ == "__main__":
    main()
