"""Host syncs are budgeted (issue 24): one bare training step of every family (training_loss, backward,
foreach Adam's step; no harness) makes at most its budget of host reads of device values, counted
with the profiler (tests/sync_counts.py; a CPU build counts the reads CUDA would stall on).

Budgets: RealNVP, Glow (both vector forms) and i-ResNet none. The CNFs (FFJORD, RNODE, InfoCNF) pay torchdiffeq's own
reads (its step-size control reads the error ratio and the step on the host every step) plus ours:
at most ``OURS_PER_SOLVE`` a solve (the solve's one finiteness / end-time read and its step-floor
read at the end) and one step-floor read every ``FLOOR_CHECK_STEPS`` steps. torchdiffeq's share is
measured twice: attributed to its source lines inside the step, and predicted from plain ``odeint``
solves of a trivial dynamics with the same solver, state layout and tolerances (per solve + per step).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any

import pytest
import torch
from sync_counts import SyncCount, count_syncs, model_step

import baselines.adjoint
import baselines.cnf
from baselines.cnf import CNF, FLOOR_CHECK_STEPS, CountedDynamics, solve_limits
from baselines.registry import get_builder
from bench.data.base import DataInfo

OURS_PER_SOLVE = 2  # CNF._check_solve's one read (T > 0, finite state) + the step-floor read at the solve's end
LIMITS = dict(max_evals=20_000, min_step=1e-7)  # the harness's defaults (bench/spec.py)

DISCRETE = {
    "realnvp": ((3, 4, 4), dict(n_scales=1, n_checker=1, n_channel=1, n_blocks=1, hidden=4, batch_norm=True)),
    "realnvp-vector": ((3,), dict(n_layers=2, hidden=8, batch_norm=True)),
    "glow": ((3, 4, 4), dict(n_levels=2, n_steps=1, hidden=8)),
    "glow-vector": ((3,), dict(n_steps=2, hidden=8)),
    "glow_ffjord": ((3,), dict(n_blocks=2, hidden=[8, 8])),
    "iresnet": ((3, 4, 4), dict(n_stages=2, n_blocks=1, hidden=8)),
    "iresnet-vector": ((3,), dict(n_blocks=2, hidden=8)),
}
CNFS = {
    "ffjord": ((2,), dict(hidden=[8], n_blocks=1), None),
    "ffjord-direct": ((2,), dict(hidden=[8], n_blocks=1, adjoint=False), None),
    "rnode": ((2,), dict(hidden=[8], n_blocks=1), None),
    "rnode-rk4": ((2,), dict(hidden=[8], n_blocks=1, solver="rk4", step_size=0.25), None),
    "infocnf": ((2,), dict(), 4),
}


def _built(family: str, shape: tuple[int, ...], hparams: dict, classes: int | None) -> tuple[Any, Callable[[], None]]:
    """A small model of ``family`` in training mode and its bare step on a fixed batch, stepped once
    (data-dependent initialisations and lazy optimizer state happen before counting)."""
    torch.manual_seed(0)
    kind = "image" if len(shape) == 3 else "toy"
    info = DataInfo("random", kind, shape, levels=256 if kind == "image" else None, num_classes=classes)
    model = get_builder(family.split("-")[0])(info, **hparams).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)
    x = torch.rand(16, *shape)
    y = torch.randint(0, classes, (16,)) if classes else None
    step = model_step(model, optimizer, x, y)
    with solve_limits(**LIMITS):
        step()
    return model, step


@pytest.mark.parametrize("family", sorted(DISCRETE))
def test_discrete_flows_step_without_a_host_sync(family):
    shape, hparams = DISCRETE[family]
    _, step = _built(family, shape, hparams, None)
    counts = count_syncs(step)
    assert counts.syncs == 0, counts
    assert counts.optimizer_reads > 0  # the counter sees host reads: Adam's (CPU-held) step counters


class _Census:
    """Solver steps and solves of CNF solves, and the host reads made on torchdiffeq's source lines."""

    def __init__(self):
        self.steps = self.solves = self.torchdiffeq_reads = 0


def _is_torchdiffeq_read(frames: list[traceback.FrameSummary]) -> bool:
    """Whether the innermost frame of ours or torchdiffeq's is torchdiffeq's."""
    for frame in reversed(frames):
        if "torchdiffeq" in frame.filename:
            return True
        if "/baselines/" in frame.filename:
            return False
    return False


def _census(monkeypatch: pytest.MonkeyPatch) -> _Census:
    """Count steps (CountedDynamics' step callbacks), solves (odeint calls) and torchdiffeq's reads."""
    census = _Census()
    step_callback = CountedDynamics.callback_step

    def counted_step(self: CountedDynamics, t0: Any, y0: Any, dt: Any) -> None:
        census.steps += 1
        step_callback(self, t0, y0, dt)

    def counted_odeint(solve: Callable) -> Callable:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            census.solves += 1
            return solve(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(CountedDynamics, "callback_step", counted_step)
    monkeypatch.setattr(CountedDynamics, "callback_step_adjoint", counted_step)
    monkeypatch.setattr(baselines.cnf, "odeint", counted_odeint(baselines.cnf.odeint))
    monkeypatch.setattr(baselines.adjoint, "odeint", counted_odeint(baselines.adjoint.odeint))
    for name in ("__bool__", "item", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def read(self: torch.Tensor, *args: Any, _original: Callable = original, **kwargs: Any) -> Any:
            census.torchdiffeq_reads += _is_torchdiffeq_read(traceback.extract_stack()[:-1])
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    return census


class _Trivial(torch.nn.Module):
    """dy/dt = -y on a tuple state, counting solver steps."""

    def __init__(self):
        super().__init__()
        self.steps = 0

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(-s for s in state)

    def callback_step(self, t0: Any, y0: Any, dt: Any) -> None:
        self.steps += 1


def torchdiffeq_reads(block: CNF, state: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """(per solve, per step) host reads of torchdiffeq's own ``odeint`` with ``block``'s training solver on
    a trivial dynamics of ``state``'s layout: solves of two lengths fitted as a + b steps, forwards in
    time and backwards (as the adjoint's backward solve runs), the larger of each."""
    from torchdiffeq import odeint

    solver = block.train_solver
    n_extra = len(state) - 1
    tol = (lambda v: v if n_extra <= 1 else (v, v) + (1e20,) * (n_extra - 1))
    fits = []
    for sign in (1.0, -1.0):
        points = []
        for end in (1.0, 3.0):
            func = _Trivial()
            t = torch.tensor([0.0, end]) * sign
            counts = count_syncs(lambda: odeint(func, state, t, rtol=tol(solver.rtol), atol=tol(solver.atol),
                                                method=solver.method, options=solver.options()))
            points.append((func.steps, counts.syncs))
        (s1, r1), (s2, r2) = points
        per_step = (r2 - r1) / (s2 - s1)
        fits.append((r1 - per_step * s1, per_step))
    return max(a for a, _ in fits), max(b for _, b in fits)


@pytest.mark.parametrize("family", sorted(CNFS))
@pytest.mark.slow
def test_cnf_steps_read_the_host_no_more_than_torchdiffeq_plus_a_constant_a_solve(family, monkeypatch):
    shape, hparams, classes = CNFS[family]
    model, step = _built(family, shape, hparams, classes)
    census = _census(monkeypatch)
    with solve_limits(**LIMITS):
        counts: SyncCount = count_syncs(step)
    assert census.solves >= 1 and census.steps > 0
    ours = counts.syncs - census.torchdiffeq_reads
    assert ours <= OURS_PER_SOLVE * census.solves + census.steps // FLOOR_CHECK_STEPS, (counts, vars(census))
    monkeypatch.undo()
    block = next(m for m in model.modules() if isinstance(m, CNF))
    x = torch.rand(16, *shape)
    regs = 2 if block.regularize else 0
    per_solve, per_step = torchdiffeq_reads(block, (x, x.new_zeros(16)) + (x.new_zeros(16),) * regs)
    predicted = per_solve * census.solves + per_step * census.steps
    assert census.torchdiffeq_reads <= predicted + 1e-9, (census.torchdiffeq_reads, per_solve, per_step)
    assert counts.syncs <= predicted + OURS_PER_SOLVE * census.solves + census.steps // FLOOR_CHECK_STEPS
