"""The compact adjoint (baselines/adjoint.py) against torchdiffeq's own: the same forward solution,
the same backward steps (NFE) and the same gradients, for plain and regularised CNF states."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

from baselines.adjoint import odeint_adjoint, segment_rms_norm
from baselines.cnf import CNFDynamics, Solver, TimeNet, forward_solve


def test_segment_norm_is_the_largest_rms_over_the_pieces():
    pieces = [torch.randn(5, dtype=torch.float64), torch.randn(1, dtype=torch.float64) * 9,
              torch.zeros(0, dtype=torch.float64), torch.randn(7, dtype=torch.float64)]
    norm = segment_rms_norm([p.numel() for p in pieces], torch.device("cpu"))
    expected = max(float(p.pow(2).mean().sqrt()) for p in pieces if p.numel())
    assert float(norm(torch.cat(pieces))) == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("regularize", [False, True])
@pytest.mark.parametrize("seminorm", [False, True])
def test_compact_adjoint_takes_torchdiffeqs_steps_and_gives_its_gradients(regularize, seminorm):
    torch.manual_seed(3)
    net = TimeNet((3,), (16, 16), "concatsquash", "softplus").double()
    func = CNFDynamics(net, end_time=0.8).double()
    func.exact, func.n_regs, func.detach_time = False, 2 if regularize else 0, True
    func.probe = torch.randn(6, 3, dtype=torch.float64)
    x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    zeros = torch.zeros(6, dtype=torch.float64)
    state = (x, zeros) + ((zeros, zeros) if regularize else ())
    t = torch.tensor([0.0, 0.8], dtype=torch.float64)
    tol = (1e-7, 1e-7, 1e20, 1e20) if regularize else 1e-7
    params = tuple(net.parameters())
    weights = [torch.randn(p.shape, dtype=torch.float64) for p in state]
    runs = []
    for ours in (True, False):
        with forward_solve(func, Solver("dopri5", 1e-7, 1e-7)):
            if ours:
                out = odeint_adjoint(func, state, t, params, rtol=tol, atol=tol, method="dopri5",
                                     adjoint_rtol=1e-7, adjoint_atol=1e-7, seminorm=seminorm)
            else:
                out = torchdiffeq.odeint_adjoint(func, state, t, rtol=tol, atol=tol, method="dopri5",
                                                 adjoint_params=params, adjoint_rtol=1e-7, adjoint_atol=1e-7,
                                                 adjoint_options={"norm": "seminorm"} if seminorm else None)
        loss = sum((o[-1] * w).sum() for o, w in zip(out, weights))
        grads = torch.autograd.grad(loss, (x, *params))
        runs.append(([o[-1] for o in out], grads, func.read_nfe()))
    (ours_out, ours_grads, ours_nfe), (ref_out, ref_grads, ref_nfe) = runs
    assert all(torch.equal(a, b) for a, b in zip(ours_out, ref_out))  # the same forward solve
    assert ours_nfe == ref_nfe and ours_nfe[1] > 0  # the same backward steps
    for a, b in zip(ours_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_per_piece_tolerances_need_single_backward_tolerances():
    x = torch.ones(2, 3, requires_grad=True)
    with pytest.raises(ValueError, match="atol is given per state piece: give adjoint_atol as one value"):
        odeint_adjoint(lambda t, y: (-y[0], -y[0].sum(1)), (x, torch.zeros(2)), torch.tensor([0.0, 1.0]), (),
                       rtol=1e-6, atol=(1e-6, 1e20), adjoint_rtol=1e-6, method="dopri5")
