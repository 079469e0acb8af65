"""Glow: exact change of variables, ActNorm's data-dependent init, LU 1x1 conv, split priors, a short run."""

from __future__ import annotations

import math

import normflows as nf
import pytest
import torch

from baselines.glow import GlowVector, build
from baselines.layers import ConditionalGaussianPrior, GaussianPrior

CASES = [
    ((2,), dict(n_steps=4, hidden=16)),
    ((5,), dict(n_steps=4, hidden=16)),
    ((1, 4, 4), dict(n_levels=2, n_steps=2, hidden=8)),
    ((3, 4, 4), dict(n_levels=2, n_steps=2, hidden=8)),
]


@pytest.mark.parametrize("shape,hp", CASES, ids=lambda c: str(c))
def test_log_prob_is_the_change_of_variables(flowcheck, shape, hp):
    model = flowcheck.prepared(build, shape, **hp)
    flowcheck.change_of_variables(model, shape)


@pytest.mark.parametrize("shape,hp", CASES, ids=lambda c: str(c))
def test_inverse_and_samples(flowcheck, shape, hp):
    model = flowcheck.prepared(build, shape, **hp)
    flowcheck.inverse_and_samples(model, shape)


def test_actnorm_initialises_from_the_first_batch(flowcheck):
    torch.manual_seed(0)
    model = build(flowcheck.info((4, 8, 8)), n_levels=1, n_steps=1, hidden=8)
    x = 3.0 + 2.0 * torch.rand(256, 4, 8, 8)
    model.log_prob(x)
    squeeze, step = model.flow.levels[0]
    actnorm = next(f for f in step.flows if isinstance(f, nf.flows.ActNorm))
    h, _ = actnorm.inverse(squeeze.inverse(x)[0])
    torch.testing.assert_close(h.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(h.std(dim=(0, 2, 3)), torch.ones(16), atol=1e-3, rtol=0)


def test_steps_use_lu_1x1_convs_and_levels_use_split_priors(flowcheck):
    model = build(flowcheck.info((1, 8, 8)), n_levels=3, n_steps=2, hidden=8)
    convs = [m for m in model.modules() if isinstance(m, nf.flows.Invertible1x1Conv)]
    assert len(convs) == 6 and all(c.use_lu for c in convs)
    priors = list(model.flow.priors)
    assert [type(p) for p in priors] == [ConditionalGaussianPrior, ConditionalGaussianPrior, GaussianPrior]
    assert model.flow.latent_shapes == [(2, 4, 4), (4, 2, 2), (16, 1, 1)]  # 32 + 16 + 16 = 64 dims


def test_split_prior_conditions_on_the_kept_half(flowcheck):
    prior = ConditionalGaussianPrior(2, 2)
    torch.nn.init.normal_(prior.conv.weight)
    z = torch.randn(4, 2, 3, 3)
    eps_a, _ = prior.whiten(z, torch.zeros(4, 2, 3, 3))
    eps_b, _ = prior.whiten(z, torch.ones(4, 2, 3, 3))
    assert not torch.allclose(eps_a, eps_b)
    torch.testing.assert_close(prior.color(eps_b, torch.ones(4, 2, 3, 3)), z)


def test_odd_sizes_skip_the_squeeze(flowcheck):
    model = build(flowcheck.info((1, 28, 28)), n_levels=3, n_steps=1, hidden=8)
    assert model.flow.level_shapes == [(4, 14, 14), (8, 7, 7), (4, 7, 7)]
    x = torch.rand(2, 1, 28, 28)
    assert torch.isfinite(model.log_prob(x)).all()


def test_vector_variant_is_glow_steps():
    model = GlowVector(6, n_steps=3)
    kinds = [type(f) for f in model.flow.flows]
    assert kinds == [nf.flows.AffineCouplingBlock, nf.flows.InvertibleAffine, nf.flows.ActNorm] * 3


def test_short_run_on_8gaussians_lowers_test_nll(short_run):
    before, result = short_run("glow", {"n_steps": 6, "hidden": 32})
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 0.5 and result["test"]["nll"] < 3.8, (before, result["test"])


def test_short_run_on_digits_gives_finite_bits_per_dim_below_uniform(digits_run, flowcheck):
    flowcheck.digits_below_uniform(*digits_run("glow", {"n_levels": 2, "n_steps": 2, "hidden": 16}))
