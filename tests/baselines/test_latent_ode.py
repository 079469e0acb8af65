"""LatentODE and InfoCNF's partitioned variant: shapes, ELBO terms against torch.distributions,
extrapolation from the observed window only, supervised heads on the supervised dims only, NFE
counts, and short harness runs on small spirals.

The spiral generator itself (formulas, half each way, windows, noise) is tested in
tests/bench/data/test_timeseries.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from baselines.latent_ode import (LatentODE, LatentODEOptions, PartitionedLatentODE, build, build_partitioned,
                                  gaussian_kl, gaussian_log_lik)
from bench.data import load_dataset
from bench.data.base import DataInfo

SMALL = {"n_spirals": 300, "n_val": 50, "n_test": 50, "length": 150, "window": 30, "horizon": 10, "seed": 1}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These models are small and step-bound: one thread is faster than two on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data():
    return load_dataset("spirals", {**SMALL, "targets": "all"})


def perturbed(model, seed: int = 0, scale: float = 0.3):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def test_shapes_terms_and_surface(data):
    torch.manual_seed(0)
    model = build(data.info)
    assert isinstance(model, LatentODE) and not isinstance(model, PartitionedLatentODE)
    x = data.train.x[:6]
    assert x.shape == (6, 40, 2)
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (6, 5)
    assert model.decode(mean).shape == (6, 40, 2) and model.decode(mean, 30).shape == (6, 30, 2)
    model.eval()
    terms = model.evaluate(x, data.train.y[:6])
    assert sorted(terms) == ["mse", "mse_extrapolation", "neg_elbo"]
    assert all(v.shape == (6,) and torch.isfinite(v).all() for v in terms.values())
    assert model.sample(4).shape == (4, 40, 2)
    with pytest.raises(NotImplementedError, match="not a flow"):
        model.log_prob(x)
    # the paper's sizes: GRU encoder of 25 units, 5-D latent, 20-unit dynamics and decoder
    assert model.rnn.hidden_size == 25 and model.dynamics.net[0].out_features == 20
    assert model.decoder[0].out_features == 20 and model.rnn.input_size == 3  # (x, y, dt)
    with pytest.raises(ValueError, match=r"x must be \[batch, 40, 2\]"):
        model.encode(x[:, :30])
    with pytest.raises(ValueError, match="need a timeseries dataset"):
        build(DataInfo("moons", "toy", (2,)))
    # flat options (as suites give them) and the options dataclass build the same model
    flat = build(data.info, atol=1e-6, rtol=1e-5, obs_std=0.5, rnn="rnn")
    assert flat.solver.atol == 1e-6 and flat.obs_std == 0.5 and isinstance(flat.rnn, torch.nn.RNN)
    packed = build(data.info, ode=LatentODEOptions(atol=1e-6, rtol=1e-5, obs_std=0.5, rnn="rnn"))
    assert packed.solver == flat.solver and isinstance(packed.rnn, torch.nn.RNN)


def test_kl_and_gaussian_likelihood_match_torch_distributions():
    gen = torch.Generator().manual_seed(0)

    def draw(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    mean, logvar, pm, pls = draw(4, 5), draw(4, 5), draw(4, 5), 0.5 * draw(4, 5)
    q = Normal(mean, torch.exp(0.5 * logvar))
    torch.testing.assert_close(gaussian_kl(mean, logvar), kl_divergence(q, Normal(0.0, 1.0)).sum(-1))
    torch.testing.assert_close(gaussian_kl(mean, logvar, pm, pls), kl_divergence(q, Normal(pm, pls.exp())).sum(-1))
    x, mu = draw(4, 7, 2), draw(4, 7, 2)
    torch.testing.assert_close(gaussian_log_lik(x, mu, 0.3), Normal(mu, 0.3).log_prob(x).sum((1, 2)))


def test_loss_is_the_negative_elbo_of_the_observed_window(data):
    torch.manual_seed(0)
    model = perturbed(build(data.info).double(), scale=0.1)
    x, y = data.val.x[:5].double(), data.val.y[:5].double()
    model.eval()  # z0 = posterior mean, so the loss is deterministic
    loss, stats = model.training_loss(x, y)
    mean, logvar = model.encode(x)
    pred = model.decode(mean)[:, :30]
    log_lik = Normal(pred, 0.3).log_prob(x[:, :30]).sum((1, 2))
    kl = kl_divergence(Normal(mean, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(loss, (kl - log_lik).mean())
    torch.testing.assert_close(model.evaluate(x, y)["neg_elbo"], kl - log_lik)
    assert stats["kl"] == pytest.approx(float(kl.detach().mean()))
    assert stats["log_lik"] == pytest.approx(float(log_lik.detach().mean()))
    terms = model.evaluate(x, y)
    traj = model.decode(mean)
    torch.testing.assert_close(terms["mse"], (traj[:, :30] - x[:, :30]).pow(2).mean((1, 2)))
    torch.testing.assert_close(terms["mse_extrapolation"], (traj[:, 30:] - x[:, 30:]).pow(2).mean((1, 2)))
    model.train()  # training samples z0: a different draw gives a different loss
    torch.manual_seed(1)
    a = model.training_loss(x, y)[0]
    torch.manual_seed(2)
    assert not torch.isclose(a, model.training_loss(x, y)[0])


@pytest.mark.parametrize("builder", [build, build_partitioned])
def test_extrapolation_sees_only_the_observed_points(data, builder):
    torch.manual_seed(0)
    model = perturbed(builder(data.info)).eval()
    x, y = data.val.x[:4].clone(), data.val.y[:4]
    before = model.evaluate(x, y)
    enc, traj = model.encode(x), model.decode(model.encode(x)[0])
    changed = x.clone()
    changed[:, 30:] += 3.0 * torch.randn_like(changed[:, 30:])  # other horizon observations
    after = model.evaluate(changed, y)
    for a, b in zip(enc, model.encode(changed)):
        assert torch.equal(a, b)
    assert torch.equal(traj, model.decode(model.encode(changed)[0]))
    for key in before:
        if key == "mse_extrapolation":
            assert (after[key] - before[key]).abs().min() > 1e-3
        else:
            assert torch.equal(before[key], after[key]), key
    nudged = x.clone()
    nudged[:, 0] += 1.0  # an observed point does reach the encoder (the first: the RNN's last input)
    assert not torch.allclose(model.encode(nudged)[0], enc[0])


def test_partitioned_heads_and_prior_use_only_the_supervised_dims(data):
    torch.manual_seed(0)
    model = build_partitioned(data.info)
    assert isinstance(model, PartitionedLatentODE) and model.n_supervised == 3
    y = data.val.y[:6]
    like = torch.zeros(6, 5)
    mean, logstd = model.prior(y, like)  # q_phi is zero-initialised: N(0, I) at the start
    assert torch.equal(mean, like) and torch.equal(logstd, like)
    perturbed(model)
    z = torch.randn(6, 5, requires_grad=True)
    logits, params = model.heads(z)
    assert logits.shape == (6, 2) and params.shape == (6, 2)
    grad = torch.autograd.grad(logits.sum() + params.sum(), z)[0]
    assert torch.equal(grad[:, 3:], torch.zeros(6, 2)) and grad[:, :3].abs().min() > 0
    mean, logstd = model.prior(y, like)
    assert torch.equal(mean[:, 3:], torch.zeros(6, 2)) and torch.equal(logstd[:, 3:], torch.zeros(6, 2))
    flipped = y.clone()
    flipped[:, 0] = 1 - flipped[:, 0]
    assert not torch.allclose(model.prior(flipped, like)[0][:, :3], mean[:, :3])  # the label moves the prior
    # the loss: -ELBO with the conditional prior + beta (cross-entropy + (a, b) squared error)
    model.eval()
    x = data.val.x[:6]
    loss, stats = model.training_loss(x, y)
    enc_mean, enc_logvar = model.encode(x)
    kl = kl_divergence(Normal(enc_mean, torch.exp(0.5 * enc_logvar)), Normal(mean, logstd.exp())).sum(-1)
    logits, params = model.heads(enc_mean)
    sup = (torch.nn.functional.cross_entropy(logits, y[:, 0].long(), reduction="none")
           + (params - y[:, 1:]).pow(2).mean(1))
    log_lik = Normal(model.decode(enc_mean, 30), 0.3).log_prob(x[:, :30]).sum((1, 2))
    torch.testing.assert_close(loss, (kl - log_lik + model.beta * sup).mean(), rtol=1e-5, atol=1e-3)
    assert {"ce", "error", "param_mse", "kl", "log_lik", "mse"} <= set(stats)
    terms = model.evaluate(x, y)
    assert {"error", "param_mse"} <= set(terms) and all(v.shape == (6,) for v in terms.values())
    # direction-only labels (the loader's default targets): classification alone, prior from the label
    only = model.evaluate(x, y[:, 0].long())
    assert "error" in only and "param_mse" not in only
    assert torch.equal(only["error"], terms["error"])
    unlabelled = model.evaluate(x)  # no labels: N(0, I) prior, no supervised terms
    assert sorted(unlabelled) == ["mse", "mse_extrapolation", "neg_elbo"]
    assert torch.equal(unlabelled["mse"], terms["mse"])
    assert model.sample(3, y[:3]).shape == (3, 40, 2) and model.sample(3).shape == (3, 40, 2)


def test_nfe_counts_and_resets(data):
    model = build(data.info, solver="rk4", step_size=0.05).eval()
    t = data.info.extra["t"]
    model.decode(torch.zeros(2, 5))
    assert model.read_nfe() == (4 * math.ceil(float(t[-1] - t[0]) / 0.05), 0)  # 4 evaluations an rk4 step
    assert model.read_nfe() == (0, 0)
    adjoint = build(data.info, adjoint=True, solver="rk4", step_size=0.25).train()
    loss, _ = adjoint.training_loss(data.train.x[:8], data.train.y[:8])
    loss.backward()
    forward, backward = adjoint.read_nfe()
    assert forward == 4 * math.ceil(float(t[29] - t[0]) / 0.25) and backward > 0  # the adjoint solve counts apart
    direct = build(data.info).train()
    direct.training_loss(data.train.x[:8])[0].backward()
    assert direct.read_nfe()[1] == 0


@pytest.mark.parametrize("model,targets", [("latent_ode", "direction"), ("latent_ode_partitioned", "all")])
@pytest.mark.slow
def test_short_harness_run_improves_the_fit(short_run, model, targets):
    before, result = short_run(model, {}, steps=100, dataset="spirals", batch_size=64, lr=1e-2,
                               data_config={**SMALL, "targets": targets}, metric="mse")
    assert result["status"] == "completed", result.get("error")
    test = result["test"]
    assert test["mse"] < 0.25 * before, (before, test)  # 100 steps take the untrained fit (~16) below 4
    assert math.isfinite(test["mse_extrapolation"]) and result["nfe"]["train_forward"] > 0
    if model == "latent_ode_partitioned":
        assert test["error"] < 0.3 and test["param_mse"] < 0.1  # chance error is 0.5
