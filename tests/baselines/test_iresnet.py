"""i-ResNet: the power-series log-det within a stated statistical tolerance of the brute-force
Jacobian, the fixed-point inverse, Lipschitz constraint kept while training, a short run."""

from __future__ import annotations

import math

import normflows as nf
import pytest
import torch

from baselines.iresnet import build
from baselines.layers import GaussianPrior, InvertibleResidualBlock, StandardNormalPrior, refresh_spectral_norms

COEFF = 0.8
CASES = [
    ((2,), dict(n_blocks=3, hidden=8, n_hidden=1, coeff=COEFF)),
    ((5,), dict(n_blocks=3, hidden=8, n_hidden=1, coeff=COEFF)),
    ((1, 4, 4), dict(n_stages=2, n_blocks=2, hidden=8, coeff=COEFF)),
    ((3, 4, 4), dict(n_stages=2, n_blocks=1, hidden=8, coeff=COEFF)),
]
TERMS = 30
# g has two (vectors) or three (images) layers each normalised to COEFF, so Lip(g) <= L = COEFF^2 and
# the series truncated after n terms is off by at most D * L^(n+1) / ((n+1)(1-L)) per block
LIP = COEFF**2
TRUNCATION = 16 * LIP ** (TERMS + 1) / ((TERMS + 1) * (1 - LIP))  # D <= 48, blocks <= 4: < 1e-9 in all


def prepared(flowcheck, shape, hp, **extra):
    """A perturbed float64 i-ResNet whose residual branches are far from zero (raw weights of norm
    well above the coefficient, then spectrally normalised back to it)."""
    model = flowcheck.prepared(build, shape, **hp, **extra)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nf.nets.InducedNormLinear, nf.nets.InducedNormConv2d)):
                m.weight.add_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
    refresh_spectral_norms(model, 500)
    return model


def brute_force(flowcheck, model, x):
    """The brute-force log|det| (the series is switched to one cheap term while differentiating)."""
    blocks = [m for m in model.modules() if isinstance(m, InvertibleResidualBlock)]
    saved = [(b.eval_terms, b.eval_probes) for b in blocks]
    for b in blocks:
        b.eval_terms, b.eval_probes = 1, 1
    try:
        return flowcheck.brute_force_logdet(model, x)
    finally:
        for b, (terms, probes) in zip(blocks, saved):
            b.eval_terms, b.eval_probes = terms, probes


@pytest.mark.parametrize("shape,hp", CASES, ids=lambda c: str(c))
def test_series_log_det_matches_the_brute_force_jacobian(flowcheck, shape, hp):
    """8 independent estimates with 400 Rademacher probes each: their mean is within 5 standard
    errors (from their spread) plus the truncation bound of log|det| of the full Jacobian."""
    model = prepared(flowcheck, shape, hp, eval_series_terms=TERMS, eval_probes=400, probe="rademacher")
    x = torch.rand(2, *shape, dtype=torch.float64)
    brute = brute_force(flowcheck, model, x)
    with torch.no_grad():
        estimates = torch.stack([model.to_latent(x)[1] for _ in range(8)])
    mean, se = estimates.mean(0), estimates.std(0) / math.sqrt(8)
    assert torch.all((mean - brute).abs() <= 5 * se + TRUNCATION), (mean, brute, se)
    assert float(se.max()) < 0.05  # the tolerance is tight, not vacuous
    # the residual blocks carry a real part of the log-det (ActNorm's part is exact and known)
    actnorm = sum(-f.s.sum() * (math.prod(shape[1:]) if len(shape) == 3 else 1)
                  for f in model.modules() if isinstance(f, nf.flows.ActNorm))
    assert torch.all((brute - actnorm).abs() > 5 * se), (brute, actnorm, se)


@pytest.mark.parametrize("shape,hp", CASES[:2], ids=lambda c: str(c))
def test_exact_log_prob_is_the_brute_force_jacobian_and_deterministic(flowcheck, shape, hp):
    """The plots' density path: log N(z) + log|det dz/dx| of the full autograd Jacobian, to float64
    precision, the same on every call; the series estimate it replaces varies from call to call."""
    model = prepared(flowcheck, shape, hp, eval_series_terms=5, eval_probes=1)
    x = torch.randn(6, *shape, dtype=torch.float64)
    brute = brute_force(flowcheck, model, x)
    with torch.no_grad():
        z, _ = model.to_latent(x)
        exact = model.log_prob_exact(x)
        again = model.log_prob_exact(x)
        series = torch.stack([model.log_prob(x) for _ in range(2)])
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1) + brute
    torch.testing.assert_close(exact, expected, rtol=1e-10, atol=1e-10)
    assert torch.equal(exact, again) and not exact.requires_grad
    assert (series[0] - series[1]).abs().max() > 1e-6  # the stochastic path differs between calls
    actnorm = sum(-f.s.sum() for f in model.modules() if isinstance(f, nf.flows.ActNorm))
    assert (brute - actnorm).abs().min() > 1e-3  # the residual blocks contribute: not a trivial match


@pytest.mark.parametrize("shape,hp", CASES, ids=lambda c: str(c))
def test_fixed_point_inverse_and_samples(flowcheck, shape, hp):
    model = prepared(flowcheck, shape, hp, inverse_iters=200, inverse_tol=1e-12)
    x = torch.rand(8, *shape, dtype=torch.float64)
    z, _ = model.to_latent(x)
    torch.testing.assert_close(model.from_latent(z), x, rtol=0, atol=1e-9)
    samples = model.sample(16)
    assert samples.shape == (16, *shape) and torch.isfinite(samples).all()


def test_inverse_runs_at_most_the_stated_iterations(flowcheck):
    shape, hp = CASES[1]
    few = prepared(flowcheck, shape, {**hp, "coeff": 0.9}, inverse_iters=2, inverse_tol=0.0)
    x = torch.rand(8, *shape, dtype=torch.float64)
    z, _ = few.to_latent(x)
    err_few = (few.from_latent(z) - x).abs().max()
    blocks = [m for m in few.modules() if isinstance(m, InvertibleResidualBlock)]
    assert all(b.last_inverse_iters == 2 for b in blocks)
    for b in blocks:
        b.inverse_iters = 500
        b.inverse_tol = 1e-12
    err_many = (few.from_latent(z) - x).abs().max()
    assert err_many < 1e-9 < err_few
    assert all(b.last_inverse_iters < 500 for b in blocks)  # stopped early at the tolerance


def test_evaluation_uses_more_series_terms_than_training(flowcheck):
    model = prepared(flowcheck, (5,), CASES[1][1], train_series_terms=1, eval_series_terms=TERMS,
                     eval_probes=400, probe="rademacher")
    x = torch.rand(2, 5, dtype=torch.float64)
    brute = brute_force(flowcheck, model, x)
    blocks = [m for m in model.modules() if isinstance(m, InvertibleResidualBlock)]
    assert {(b.train_terms, b.eval_terms) for b in blocks} == {(1, TERMS)}
    with torch.no_grad():
        torch.manual_seed(1)
        eval_err = (model.to_latent(x)[1] - brute).abs().max()
        for b in blocks:  # the same estimator with the training truncation is biased by the k >= 2 terms
            b.eval_terms = 1
        torch.manual_seed(1)
        one_term_err = (model.to_latent(x)[1] - brute).abs().max()
    assert eval_err < one_term_err


def test_spectral_norms_stay_below_the_coefficient_while_training(flowcheck):
    torch.manual_seed(0)
    model = build(flowcheck.info((4,)), n_blocks=2, hidden=16, coeff=0.7, n_power_iter=5)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)  # large steps push the raw weights' norms up
    x = torch.randn(256, 4) * 3
    for _ in range(30):
        loss, _ = model.training_loss(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.log_prob(x)  # a training-mode forward refreshes the estimates for the last step's weights
    layers = [m for m in model.modules() if isinstance(m, nf.nets.InducedNormLinear)]
    raw = max(float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) for m in layers)
    effective = [float(torch.linalg.matrix_norm(m.compute_weight(update=False).detach(), ord=2)) for m in layers]
    assert raw > 0.7 and max(effective) <= 0.7 * 1.01, (raw, effective)


def test_learned_prior_is_a_per_dimension_gaussian(flowcheck):
    """The official model's prior: a learned mean and log-std for every latent dimension (on by
    default); its log-density is the diagonal Gaussian's."""
    model = flowcheck.prepared(build, (3, 8, 8), n_stages=2, n_blocks=1, hidden=8)
    priors = list(model.flow.priors)
    assert all(isinstance(p, GaussianPrior) for p in priors)
    assert [tuple(p.mean.shape[1:]) for p in priors] == model.flow.latent_shapes == [(6, 4, 4), (24, 2, 2)]
    x = torch.rand(4, 3, 8, 8, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(3)  # the same Hutchinson probes for both evaluations
        z, log_det = model.to_latent(x)
        prior_free = build(flowcheck.info((3, 8, 8)), n_stages=2, n_blocks=1, hidden=8, learn_prior=False).double()
    assert all(isinstance(p, StandardNormalPrior) for p in prior_free.flow.priors)
    # whitening by the learned Gaussian: z = (h - mean) / std, log|det| includes -sum(log std)
    mean = torch.cat([p.mean.flatten() for p in priors])
    log_std = torch.cat([p.log_scale.flatten() for p in priors])
    assert log_std.abs().max() > 0  # perturbed: a non-trivial prior
    h = z * torch.exp(log_std) + mean
    log_p = torch.distributions.Normal(mean, torch.exp(log_std)).log_prob(h).sum(1)
    torch.manual_seed(3)
    torch.testing.assert_close(model.log_prob(x), log_p + log_det + log_std.sum(), rtol=1e-9, atol=1e-9)


def test_image_blocks_are_the_official_ones(flowcheck):
    """An ELU on g's input in every block but the very first; g default-initialised (not zero)."""
    model = build(flowcheck.info((3, 8, 8)), n_stages=2, n_blocks=2, hidden=8)
    blocks = [m for m in model.modules() if isinstance(m, InvertibleResidualBlock)]
    assert [isinstance(b.g[0], torch.nn.ELU) for b in blocks] == [False, True, True, True]
    assert [sum(isinstance(m, nf.nets.InducedNormConv2d) for m in b.g) for b in blocks] == [3] * 4
    x = torch.rand(2, 12, 4, 4)
    assert blocks[0].g(x).abs().max() > 1e-3  # the residual branch is active from the start


def test_short_run_on_8gaussians_lowers_test_nll(short_run):
    before, result = short_run("iresnet", {"n_blocks": 3, "hidden": 32, "eval_series_terms": 10}, steps=250)
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 0.5 and result["test"]["nll"] < 4.0, (before, result["test"])


def test_short_run_on_digits_gives_finite_bits_per_dim_below_uniform(digits_run, flowcheck):
    flowcheck.digits_below_uniform(*digits_run("iresnet", {"n_stages": 2, "n_blocks": 2, "hidden": 16, "eval_series_terms": 10}))


def _layer_pair(kind: str):
    """(ours, normflows') spectrally normalised layers of one kind with the same weights and buffers,
    the raw weights scaled up so that the soft normalisation acts (sigma > coeff)."""
    from baselines.layers import SpectralNormConv2d, SpectralNormLinear

    torch.manual_seed(0)
    if kind == "linear":
        ours = SpectralNormLinear(6, 5, coeff=0.9, n_iterations=3)
        theirs = nf.nets.InducedNormLinear(6, 5, coeff=0.9, domain=2, codomain=2, n_iterations=3)
        x = torch.randn(4, 6)
    else:
        k = 3 if kind == "conv3" else 1
        ours = SpectralNormConv2d(3, 4, k, k // 2, coeff=0.9, n_iterations=3)
        theirs = nf.nets.InducedNormConv2d(3, 4, k, stride=1, padding=k // 2, coeff=0.9, domain=2, codomain=2,
                                           n_iterations=3)
        x = torch.randn(2, 3, 5, 5)
        ours(x)  # the first forward fixes the spatial size and draws u, v
        theirs(x)
    with torch.no_grad():
        ours.weight.mul_(4.0)
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs, x


@pytest.mark.parametrize("kind", ["linear", "conv3", "conv1"])
def test_spectral_norm_layers_match_normflows(kind):
    """Ours and normflows' layer, from the same weights and buffers: after every one of k refreshes
    (power iterations) the same u, v, sigma, normalised weight, forward output and weight gradient."""
    ours, theirs, x = _layer_pair(kind)
    assert set(ours.state_dict()) == set(theirs.state_dict())  # checkpoints load either way
    for _ in range(4):
        refresh_spectral_norms(ours, 2)
        nf.utils.update_lipschitz(theirs, 2)
        outs = []
        for layer in (ours, theirs):
            layer.zero_grad()
            out = layer(x)
            out.pow(2).sum().backward()
            outs.append((out.detach(), layer.compute_weight(update=False).detach(), layer.weight.grad.clone(),
                         layer.u.clone(), layer.v.clone(), layer.scale.clone()))
        assert float(outs[0][5]) > 0.9  # sigma above coeff: the normalisation is active
        for a, b in zip(*outs):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_iresnet_checkpoints_load_into_a_fresh_model_and_forwards_read_no_buffer(flowcheck):
    """A trained model's state dict (the keys normflows' layers had) loads into a fresh model, whose
    host-side flags and spatial sizes follow it: the same log-density, and no ActNorm re-initialisation."""
    from baselines.layers import ActNorm, SpectralNormConv2d

    torch.manual_seed(0)
    model = build(flowcheck.info((1, 4, 4)), n_stages=2, n_blocks=1, hidden=8)
    x = torch.rand(8, 1, 4, 4)
    model.training_loss(x)[0].backward()  # initialises the ActNorms on this batch
    fresh = build(flowcheck.info((1, 4, 4)), n_stages=2, n_blocks=1, hidden=8)
    assert not any(m.host_flag for m in fresh.modules() if isinstance(m, ActNorm))
    fresh.load_state_dict(model.state_dict())
    assert all(m.host_flag for m in fresh.modules() if isinstance(m, ActNorm))
    assert all(m.host_flag and m.spatial == tuple(int(s) for s in m.spatial_dims)
               for m in fresh.modules() if isinstance(m, SpectralNormConv2d))
    model.eval(), fresh.eval()
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model.log_prob(x + 1)  # a shifted batch: a re-initialised ActNorm would differ
        torch.manual_seed(1)
        torch.testing.assert_close(fresh.log_prob(x + 1), expected)
