"""Host syncs of the training loop (issue 24): a harness step adds one read of the device (the loss,
stats and agreed flags, packed), and none per ODE evaluation.

Reads are found where Python asks for a device value (``item``, ``tolist``, ``bool``, ``float``,
``int``: ``sync_sites``), which on CUDA each wait for the GPU; reads of the optimiser's CPU step
counters are not syncs and are left out. The models' own reads are budgeted by
tests/baselines/test_host_syncs.py (none for the discrete flows).
"""

from __future__ import annotations

import pytest
import torch
from sync_counts import sync_sites

from bench.spec import load_suite
from bench.store import RunRecord

FAMILIES = {
    "realnvp": ("digits", "{n_scales: 1, n_checker: 2, n_channel: 2, hidden: 8, n_blocks: 1, batch_norm: true}"),
    "glow": ("digits", "{n_levels: 2, n_steps: 2, hidden: 16, split_prior: true}"),
    "iresnet": ("digits", "{n_stages: 1, n_blocks: 1, hidden: 8}"),
    "ffjord": ("moons", "{hidden: [16, 16], batch_norm: true}"),
    "rnode": ("moons", "{hidden: [16, 16]}"),
    "infocnf": ("8gaussians", "{hidden: [8, 8]}"),
}
DISCRETE = ("realnvp", "glow", "iresnet")
SUITE = """
datasets: {{{dataset}: {{}}}}
models: {{{model}: {options}}}
seeds: [0]
train: {{max_steps: 100, batch_size: 32, lr: 1e-3, eval_every: 100}}
"""


def _reads(sites: list[str]) -> list[str]:
    """The host reads that are device syncs: not torch.optim's reads of its CPU step counters."""
    return [s for s in sites if "torch/optim/" not in s.splitlines()[-1] + s.splitlines()[-2]]


def _innermost_file(site: str) -> str:
    frames = [line for line in site.splitlines() if line.strip().startswith("File ")]
    return frames[-1].split('"')[1] if frames else ""


@pytest.mark.parametrize("model", sorted(FAMILIES))
def test_a_harness_step_reads_the_device_once(model, write_suite, tmp_path):
    from bench.train import Trainer

    dataset, options = FAMILIES[model]
    spec = load_suite(write_suite(SUITE.format(dataset=dataset, model=model, options=options))).runs()[0]
    trainer = Trainer(spec, RunRecord(tmp_path, spec.suite, spec.run_id), device="cpu", progress=False)
    torch.set_num_threads(1)
    for _ in range(2):  # data-dependent initialisation, the optimiser's lazy state
        trainer.timed_step(None)
    steps = 3
    reads = _reads(sync_sites(lambda: [trainer.timed_step(None) for _ in range(steps)], limit=12))
    harness = [s for s in reads if _innermost_file(s).endswith("bench/train.py")]
    assert len(harness) == steps, harness  # one packed read a step, in timed_step
    if model in DISCRETE:
        assert len(reads) == steps, reads  # and nothing else reads the device
