"""RealNVP: exact change of variables, invertibility, samples, eval-mode batch norm, a short run."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.layers import RunningBatchNorm
from baselines.realnvp import RealNVP, build
from baselines.registry import get_builder

CASES = [
    ((2,), dict(n_layers=4, hidden=16)),
    ((5,), dict(n_layers=5, hidden=16)),
    ((1, 4, 4), dict(n_scales=2, n_checker=2, n_channel=2, hidden=8, n_blocks=1)),
    ((3, 4, 4), dict(n_scales=2, n_checker=2, n_channel=2, hidden=8, n_blocks=1)),
]


@pytest.mark.parametrize("shape,hp", CASES, ids=lambda c: str(c))
def test_log_prob_is_the_change_of_variables(flowcheck, shape, hp):
    model = flowcheck.prepared(build, shape, **hp)
    flowcheck.change_of_variables(model, shape)


@pytest.mark.parametrize("shape,hp", CASES, ids=lambda c: str(c))
def test_inverse_and_samples(flowcheck, shape, hp):
    model = flowcheck.prepared(build, shape, **hp)
    flowcheck.inverse_and_samples(model, shape)


def test_vector_model_has_batch_norm_between_couplings():
    model = RealNVP(4, n_layers=3, batch_norm=True)
    assert sum(isinstance(f, RunningBatchNorm) for f in model.flow.flows) == 2
    assert not any(isinstance(f, RunningBatchNorm) for f in RealNVP(4, n_layers=3, batch_norm=False).flow.flows)


def test_eval_density_does_not_depend_on_the_batch(flowcheck):
    model = flowcheck.prepared(build, (3,), n_layers=4, hidden=16)
    x = torch.randn(10, 3, dtype=torch.float64)
    alone = torch.cat([model.log_prob(x[i:i + 1]) for i in range(10)])
    torch.testing.assert_close(model.log_prob(x), alone)
    model.train()  # in training mode the batch statistics are used, so a shifted batch changes it
    shifted = torch.cat([x[:1], x[1:] + 3.0])
    assert not torch.allclose(model.log_prob(shifted)[0], model.log_prob(x)[0])


def test_image_model_factors_out_half_at_each_scale():
    model = build(type("I", (), {"shape": (1, 8, 8), "name": "x"})(), n_scales=3, hidden=4, n_blocks=1)
    assert model.flow.latent_shapes == [(2, 4, 4), (4, 2, 2), (4, 2, 2)]
    assert sum(math.prod(s) for s in model.flow.latent_shapes) == 64


def test_registered():
    assert get_builder("realnvp") is build


def test_short_run_on_8gaussians_lowers_test_nll(short_run):
    before, result = short_run("realnvp", {"n_layers": 4, "hidden": 32})
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 1.5 and result["test"]["nll"] < 3.8, (before, result["test"])


def test_short_run_on_digits_gives_finite_bits_per_dim_below_uniform(digits_run, flowcheck):
    flowcheck.digits_below_uniform(*digits_run("realnvp", {"n_scales": 2, "hidden": 16, "n_blocks": 1}))
