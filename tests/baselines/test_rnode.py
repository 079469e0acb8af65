"""RNODE: regulariser values against their direct computation, Hutchinson Frobenius, rk4, harness run."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torchdiffeq import odeint

from baselines.rnode import build
from bench.data.base import DataInfo

TOY = DataInfo("random", "toy", (2,))


def model64(**hp):
    torch.manual_seed(0)
    hp = {"hidden": [16, 16], "zero_last": False, "atol": 1e-10, "rtol": 1e-10, "adjoint": False, **hp}
    return build(TOY, **hp).double()


def test_regularisers_equal_direct_computation_on_the_trajectory():
    """Kinetic 0.5 mean_d f^2 and ||J||_F^2 / D integrated over [0, T] on the solved trajectory (T = 0.8)."""
    model = model64(kinetic=0.3, jacobian=0.2, end_time=0.8)
    x = torch.randn(5, 2, dtype=torch.float64)
    loss, stats = model.training_loss(x)
    net = model.blocks[0].func.net
    t = torch.linspace(0, 0.8, 161, dtype=torch.float64)
    with torch.no_grad():
        traj = odeint(lambda s, y: net(s, y), x, t, rtol=1e-11, atol=1e-11)
        kin = torch.stack([0.5 * net(ti, zt).pow(2).mean(1) for ti, zt in zip(t, traj)])
    frob = torch.stack([torch.stack([jacobian(lambda v: net(ti, v[None])[0], zi).pow(2).sum() / 2 for zi in zt])
                        for ti, zt in zip(t, traj)])
    w = torch.ones(len(t), dtype=torch.float64)
    w[1:-1:2], w[2:-1:2] = 4, 2
    h = float(t[1] - t[0])
    kinetic = float((w[:, None] * kin).sum(0).mean() * h / 3)
    frobenius = float((w[:, None] * frob).sum(0).mean() * h / 3)
    assert stats["kinetic"] == pytest.approx(kinetic, rel=1e-6)
    assert stats["jacobian"] == pytest.approx(frobenius, rel=1e-6)
    assert loss.item() == pytest.approx(stats["nll"] + 0.3 * kinetic + 0.2 * frobenius, rel=1e-9)


def test_hutchinson_frobenius_is_unbiased_and_kinetic_unchanged():
    model = model64(divergence="hutchinson", atol=1e-8, rtol=1e-8)
    x = torch.randn(1, 2, dtype=torch.float64)
    block = model.blocks[0]
    with torch.no_grad():
        block.divergence = "exact"
        _, _, exact = block(x)
        block.divergence = "hutchinson"
        _, _, est = block(x.expand(4000, 2).contiguous())
    assert torch.allclose(est[:, 0], exact[0, 0].expand(4000), rtol=1e-6)  # kinetic needs no probe
    err = est[:, 1].std() / math.sqrt(len(est))
    assert abs(est[:, 1].mean() - exact[0, 1]) < 4 * err, (float(est[:, 1].mean()), float(exact[0, 1]), float(err))


@pytest.mark.parametrize("adjoint", [True, False])
def test_rk4_fixed_steps_have_fixed_nfe(adjoint):
    model = build(TOY, solver="rk4", step_size=0.25, adjoint=adjoint)
    loss, stats = model.training_loss(torch.randn(64, 2))
    assert model.read_nfe() == (16, 0)  # 4 steps x 4 stages
    loss.backward()
    assert model.read_nfe() == (0, 16 if adjoint else 0)
    assert set(stats) == {"nll", "kinetic", "jacobian"}
    model.eval()
    with torch.no_grad():
        model.log_prob(torch.randn(8, 2))
    forward, _ = model.read_nfe()
    assert forward != 16 and forward % 6 in (0, 2)  # evaluation is adaptive dopri5 (FSAL: 6 per step + 2)


def test_reference_defaults():
    model = build(TOY)
    block = model.blocks[0]
    assert model.kinetic == 0.01 and model.jacobian == 0.01 and block.regularize
    assert block.func.end_time.item() == 1.0 and not block.func.sqrt_end_time.requires_grad
    last = block.func.net.layers[-1]
    assert last.weight.abs().sum().item() == 0.0  # RNODE zeroes the last layer's weights only
    assert last.bias.abs().sum().item() > 0.0
    img = build(DataInfo("mnist", "image", (1, 28, 28), levels=256))
    assert img.loss_scale == pytest.approx(784 * math.log(2))


def test_short_run_with_rk4_lowers_nll(short_run):
    before, result = short_run("rnode", {"hidden": [32, 32], "solver": "rk4", "step_size": 0.25}, steps=100, lr=1e-2)
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 0.5, (before, result["test"])
    assert result["nfe"]["train_forward"] == 16 and result["nfe"]["train_backward"] == 16
