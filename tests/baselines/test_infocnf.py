"""InfoCNF / CCNF: the conditional density against independent computations, the marginal, what
the classifier sees, REINFORCE's gradient, learned and manual tolerances, short harness runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import Normal

from baselines.cnf import read_nfe
from baselines.infocnf import build_ccnf, build_infocnf, build_infocnf_learned, reinforce_surrogate
from bench.data.base import DataInfo

TOY3 = DataInfo("random", "toy", (3,), num_classes=3)
TIGHT = dict(eval_atol=1e-9, eval_rtol=1e-9, adjoint=False)


@pytest.fixture(autouse=True)
def one_thread():
    """Small solves on a shared 2-core machine: one thread is several times faster than two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturbed(builder, data: DataInfo = TOY3, scale: float = 0.3, **hp):
    """A float64 model, every parameter moved off its (often zero) initial value, in eval mode."""
    torch.manual_seed(0)
    model = builder(data, hidden=[8], **{**TIGHT, **hp}).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def test_conditional_log_likelihood_is_gaussian_prior_plus_flow_log_det():
    """log p(x|y) = log N(z_y; W[:, y] + b) + log N(z_u; 0, I) + log|det dz/dx| with the Jacobian by autograd."""
    model = perturbed(build_infocnf, condition_ratio=0.67)
    assert model.cond_dim == 2
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        lp = model.log_prob(x, y)
    W, b = model.prior.linear.weight, model.prior.linear.bias  # rows: 2 means, then 2 log-stds
    for i in range(4):
        def flat_latent(v):
            return torch.cat(model.flow.to_latent(v[None])[0], 1)[0]
        z = flat_latent(x[i])
        log_det = torch.linalg.slogdet(jacobian(flat_latent, x[i]))[1]
        mean, log_std = W[:2, y[i]] + b[:2], W[2:, y[i]] + b[2:]
        expected = (Normal(mean, log_std.exp()).log_prob(z[:2]).sum() + Normal(0.0, 1.0).log_prob(z[2:]).sum()
                    + log_det)
        assert abs(log_det) > 1e-3 and abs(mean).min() > 1e-3  # a non-trivial flow and prior
        torch.testing.assert_close(lp[i], expected.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("class_prior", ["uniform", "train"])
def test_marginal_is_logsumexp_of_conditionals_with_the_class_prior(class_prior):
    model = perturbed(build_ccnf, class_prior=class_prior)
    counts = torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64)
    model.class_counts.copy_(counts)
    log_prior = (torch.log((counts + 1) / (counts.sum() + 3)) if class_prior == "train"
                 else torch.full((3,), -math.log(3), dtype=torch.float64))
    x = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1])
    with torch.no_grad():
        conditionals = torch.stack([model.log_prob(x, torch.full((5,), c)) for c in range(3)], 1)
        marginal = model.log_prob(x)
        terms = model.evaluate(x, y)
    expected = torch.logsumexp(conditionals + log_prior, 1)
    torch.testing.assert_close(marginal, expected, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(terms["nll_marginal"], -expected, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(terms["nll"], -conditionals[torch.arange(5), y], atol=1e-8, rtol=1e-8)
    assert (conditionals.std(1) > 1e-3).all()  # the classes differ, so the prior weights matter


def test_error_term_is_the_classifier_argmax_mistake_rate():
    model = perturbed(build_infocnf)
    x = torch.randn(50, 3, dtype=torch.float64)
    y = torch.randint(0, 3, (50,))
    with torch.no_grad():
        z, _ = model.latent(x)
        predicted = (z[:, :model.cond_dim] @ model.classifier.weight.T + model.classifier.bias).argmax(1)
        error = model.evaluate(x, y)["error"]
    torch.testing.assert_close(error, 100.0 * (predicted != y).double())
    assert 0 < error.mean() < 100


@pytest.mark.parametrize("builder, supervised", [(build_infocnf, 1), (build_ccnf, 3)])
def test_classifier_sees_only_the_supervised_latent(builder, supervised):
    model = perturbed(builder)
    z = torch.randn(3, dtype=torch.float64)
    jac = jacobian(lambda v: model.logits(v[None])[0], z)  # [classes, latent dims], eval mode: no dropout
    column_norms = jac.abs().sum(0)
    assert (column_norms[:supervised] > 1e-3).all()
    assert (column_norms[supervised:] == 0).all()


def test_conditional_samples_carry_the_class_mean_in_the_latent():
    model = perturbed(build_infocnf, data=DataInfo("random", "toy", (2,), num_classes=2), scale=0.05)
    with torch.no_grad():
        model.prior.linear.weight.zero_()
        model.prior.linear.weight[0] = torch.tensor([3.0, -3.0], dtype=torch.float64)  # mu(0) = 3, mu(1) = -3
        torch.manual_seed(2)
        for c, mean in ((0, 3.0), (1, -3.0)):
            x = model.sample(300, torch.full((300,), c))
            z, _ = model.latent(x)
            assert abs(float(z[:, 0].mean()) - mean) < 0.25 and abs(float(z[:, 1].mean())) < 0.25


def test_reinforce_gradient_matches_the_exact_gradient_of_the_expected_discounted_return():
    """Two blocks, Gaussian policies, R1 = -(a1 - 2)^2, R2 = -(a2 - a1)^2, gamma = 0.9: the surrogate's
    gradient is -d/dmu1 E[R1 + gamma R2] = 2 (mu1 - 2) - 2 gamma (mu2 - mu1) and -d/dmu2 E[R2] = 2 (mu2 - mu1)."""
    torch.manual_seed(0)
    n, gamma, std = 400_000, 0.9, 0.5
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    actions = (mu.detach()[:, None] + std * torch.randn(2, n, dtype=torch.float64))
    log_probs = Normal(mu[:, None], std).log_prob(actions)
    rewards = torch.stack([-(actions[0] - 2) ** 2, -(actions[1] - actions[0]) ** 2])
    (reinforce_surrogate(log_probs, rewards, gamma) / n).backward()
    m1, m2 = mu.detach()
    exact = torch.stack([2 * (m1 - 2) - 2 * gamma * (m2 - m1), 2 * (m2 - m1)])
    torch.testing.assert_close(mu.grad, exact, atol=0.08, rtol=0.0)


def learned_model(**hp):
    torch.manual_seed(0)
    return build_infocnf_learned(TOY3, hidden=[8], n_blocks=2, adjoint=False, **hp).double()


def test_policy_gradient_of_the_training_loss_is_alpha_times_reinforce():
    """The gates' last bias gets only the REINFORCE term: -alpha sum_i G_i (a_i - mu_i) / sigma_i^2 dmu_i/db."""
    model = learned_model(tol_min=1e-6, tol_max=1e-3, alpha=0.5, gamma=0.8)
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss, stats = model.training_loss(x, y)
    loss.backward()
    record, policy = model.policy.record, model.policy
    nfe = torch.tensor(record["nfe"], dtype=torch.float64)
    returns = torch.stack([-nfe[0] - 0.8 * nfe[1], -nfe[1]])
    mu = (policy.lo + policy.hi) / 2  # zero-initialised last layers: sigmoid(0) = 1/2
    var = policy.log_std.detach().exp() ** 2
    dmu_db = (policy.hi - policy.lo) * 0.25
    for i, gate in enumerate(policy.gates):
        expected = -0.5 * returns[i] * (record["action"][i] - mu) / var[i] * dmu_db
        torch.testing.assert_close(gate[-1].bias.grad[0], expected, atol=1e-8, rtol=1e-6)
    assert stats["rl"] == pytest.approx(float(-(torch.stack(record["log_prob"]).detach() * returns).sum()))


def test_learned_tolerances_drive_the_solver_and_are_logged():
    model = learned_model(tol_min=1e-8, tol_max=1e-2)
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randint(0, 3, (64,))
    runs = {}
    for name, bias in (("loose", 30.0), ("tight", -30.0)):
        with torch.no_grad():
            model.policy.log_std.fill_(math.log(1e-3))
            for gate in model.policy.gates:
                gate[-1].bias.fill_(bias)
        read_nfe(model)
        _, stats = model.training_loss(x, y)
        counted = read_nfe(model)[0]
        runs[name] = (stats, sum(model.policy.record["nfe"]), counted)
    for name, target in (("loose", 1e-2), ("tight", 1e-8)):
        stats, nfe, counted = runs[name]
        assert [stats["tol_block0"], stats["tol_block1"]] == [pytest.approx(target, rel=0.02)] * 2
        assert nfe == counted > 0  # the harness's counters still see every training evaluation
    assert runs["tight"][1] > 1.5 * runs["loose"][1], (runs["tight"][1], runs["loose"][1])
    model.eval()
    with torch.no_grad():
        terms = evaluate_with_learned_tolerances(model, x, y)
    assert terms["nfe_learned"][0] < read_nfe(model)[0]  # the learned pass is one of the two counted passes


def evaluate_with_learned_tolerances(model, x, y):
    model.eval_learned_tolerance = True
    terms = model.evaluate(x, y)
    assert {"nll", "nll_marginal", "error", "nll_learned", "error_learned", "nfe_learned"} <= set(terms)
    assert model.policy.record["tol"] == [pytest.approx(1e-8, rel=0.02)] * 2
    torch.testing.assert_close(terms["nll_learned"], terms["nll"], atol=1e-3, rtol=0)  # both tight solves
    return terms


def test_manual_tolerances_apply_per_block_in_training_only():
    torch.manual_seed(0)
    model = build_infocnf(TOY3, hidden=[8], n_blocks=2, adjoint=False, tolerance="manual",
                          manual_tolerances=["1e-3", 1e-7]).double()
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randint(0, 3, (64,))
    _, stats = model.training_loss(x, y)
    assert stats["tol_block0"] == 1e-3 and stats["tol_block1"] == 1e-7
    loose, tight = model.policy.record["nfe"]
    assert tight > loose
    assert all(b.tolerance is None for b in model.flow.blocks)  # reset after each solve
    with pytest.raises(ValueError, match="one per CNF block"):
        build_infocnf(TOY3, n_blocks=2, tolerance="manual", manual_tolerances=[1e-3, 1e-4, 1e-5])


def test_image_model_gates_every_block():
    data = DataInfo("random", "image", (1, 4, 4), num_classes=3, levels=256)
    torch.manual_seed(0)
    model = build_infocnf_learned(data, hidden=[4], n_blocks=1, n_scales=2, adjoint=False)
    assert model.cond_dim == 8 and model.sizes == [8, 8]
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    loss, stats = model.training_loss(x, y)
    loss.backward()
    assert sorted(k for k in stats if k.startswith("tol_")) == ["tol_block0", "tol_block1", "tol_block2"]
    assert all(gate[-1].weight.grad.abs().sum() > 0 for gate in model.policy.gates)  # conv gates trained
    assert model._loss_scale() == pytest.approx(16 * math.log(2))  # CE and REINFORCE on the bits/dim scale


def test_unlabelled_data_is_refused():
    with pytest.raises(ValueError, match="labelled"):
        build_ccnf(DataInfo("power", "tabular", (6,)))


@pytest.mark.parametrize("model", ["ccnf", "infocnf", "infocnf_learned"])
def test_short_run_lowers_the_conditional_nll(short_run, model):
    hp = {"hidden": [16, 16], "adjoint": False, "eval_learned_tolerance": model == "infocnf_learned"}
    before, result = short_run(model, hp, steps=40, lr=1e-2, batch_size=128,
                               data_config={"n_train": 2000, "n_val": 300, "n_test": 500})
    assert result["status"] == "completed", result.get("error")
    test = result["test"]
    assert test["nll"] < before - 0.5, (before, test)
    assert test["nll_marginal"] <= test["nll"] + math.log(8) + 1e-6  # p(x) >= p(y) p(x|y), p(y) = 1/8
    assert test["error"] < 87.5  # below chance (8 classes)
    assert result["nfe"]["train_forward"] > 5
