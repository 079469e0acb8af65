"""InfoCNF / CCNF: the conditional density against independent computations, the marginal, what
the classifier sees, the paper's Eq. 6 returns, REINFORCE's gradient for both tolerance
distributions, learned and manual tolerances, the author's parameter counts, short harness runs."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian
from torch.distributions import HalfNormal, Normal

from baselines.cnf import collect_block_nfe
from baselines.infocnf import (build_ccnf, build_infocnf, build_infocnf_learned, discounted_returns,
                               reinforce_surrogate, tolerance_returns)
from bench.data.base import DataInfo
from suite_models import build_from_suite

TOY3 = DataInfo("random", "toy", (3,), num_classes=3)
CIFAR10 = DataInfo("cifar10", "image", (3, 32, 32), num_classes=10, metric="bpd", levels=256)
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


# -- the conditional density -----------------------------------------------------------------------
def test_conditional_log_likelihood_is_gaussian_prior_plus_flow_log_det():
    """log p(x|y) = log N(z_y; mean, std) + log N(z_u; 0, I) + log|det dz/dx|, with
    (mean, log std) = (W[:, y] + b) exp(3 logs) + h (the author's zero-initialised scaled linear layer
    and its detached offset h) and the Jacobian by autograd."""
    model = perturbed(build_infocnf, condition_ratio=0.67)
    assert model.cond_dim == 2
    x = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    with torch.no_grad():
        lp = model.log_prob(x, y)
    lin = model.prior.linear  # rows: 2 means, then 2 log-stds
    W, b, logs, h = lin.weight, lin.bias, lin.logs, model.prior.prior_h
    for i in range(4):
        def flat_latent(v):
            return torch.cat(model.flow.to_latent(v[None])[0], 1)[0]
        z = flat_latent(x[i])
        log_det = torch.linalg.slogdet(jacobian(flat_latent, x[i]))[1]
        params = (W[:, y[i]] + b) * torch.exp(3 * logs) + h
        mean, log_std = params[:2], params[2:]
        expected = (Normal(mean, log_std.exp()).log_prob(z[:2]).sum() + Normal(0.0, 1.0).log_prob(z[2:]).sum()
                    + log_det)
        assert abs(log_det) > 1e-3 and abs(mean).min() > 1e-3  # a non-trivial flow and prior
        torch.testing.assert_close(lp[i], expected.detach(), atol=1e-6, rtol=1e-6)


def test_prior_offset_is_a_parameter_that_never_trains():
    """The author's prior_h: counted as a parameter, added detached, so no gradient ever reaches it."""
    model = perturbed(build_infocnf).train()
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(0, 3, (16,))
    loss, _ = model.training_loss(x, y)
    loss.backward()
    assert model.prior.prior_h.requires_grad and model.prior.prior_h.grad is None
    assert model.prior.linear.logs.grad.abs().sum() > 0  # the learned output scale does train


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
    cls = model.classifier
    with torch.no_grad():
        z, _ = model.latent(x)
        logits = (z[:, :model.cond_dim] @ cls.weight.T + cls.bias) * torch.exp(3 * cls.logs)
        error = model.evaluate(x, y)["error"]
    torch.testing.assert_close(error, 100.0 * (logits.argmax(1) != y).double())
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
        for p in (model.prior.linear.weight, model.prior.linear.logs, model.prior.prior_h):
            p.zero_()
        model.prior.linear.weight[0] = torch.tensor([3.0, -3.0], dtype=torch.float64)  # mu(0) = 3, mu(1) = -3
        torch.manual_seed(2)
        for c, mean in ((0, 3.0), (1, -3.0)):
            x = model.sample(300, torch.full((300,), c))
            z, _ = model.latent(x)
            assert abs(float(z[:, 0].mean()) - mean) < 0.25 and abs(float(z[:, 1].mean())) < 0.25


# -- the returns and REINFORCE ---------------------------------------------------------------------
def test_eq6_returns_are_the_papers_formula_and_discount_to_the_authors_loop():
    """gamma = 1: r_i = -[L + (alpha / N) sum_{j >= i} NFE_j] (Eq. 6 with R_j = -NFE_j); gamma < 1:
    the author's loop, R = -L, then R = -(alpha / N) NFE_j + gamma R from the last block back."""
    nfe = torch.tensor([20.0, 26.0, 14.0, 32.0], dtype=torch.float64)
    L, alpha, n = 3.5, 0.1, 4
    eq6 = tolerance_returns("eq6", L, nfe, alpha, 1.0)
    expected = [-(L + alpha / n * sum(nfe[i:].tolist())) for i in range(n)]
    torch.testing.assert_close(eq6, torch.tensor(expected, dtype=torch.float64))
    gamma, running, author = 0.99, -L, []
    for r in reversed(nfe.tolist()):
        running = -alpha / n * r + gamma * running
        author.insert(0, running)
    discounted = tolerance_returns("eq6", L, nfe, alpha, gamma)
    torch.testing.assert_close(discounted, torch.tensor(author, dtype=torch.float64))
    variant = tolerance_returns("nfe_discounted", L, nfe, alpha, 0.5)
    torch.testing.assert_close(variant, torch.tensor([-(20 + 13 + 3.5 + 4), -(26 + 7 + 8), -(14 + 16), -32.0],
                                                     dtype=torch.float64))
    with pytest.raises(ValueError, match="reward"):
        tolerance_returns("loss_only", L, nfe, alpha, 1.0)


def test_reinforce_gradient_matches_the_exact_gradient_of_the_expected_discounted_return():
    """Two blocks, Gaussian policies, R1 = -(a1 - 2)^2, R2 = -(a2 - a1)^2, gamma = 0.9: the surrogate's
    gradient is -d/dmu1 E[R1 + gamma R2] = 2 (mu1 - 2) - 2 gamma (mu2 - mu1) and -d/dmu2 E[R2] = 2 (mu2 - mu1)."""
    torch.manual_seed(0)
    n, gamma, std = 400_000, 0.9, 0.5
    mu = torch.tensor([0.5, -1.0], dtype=torch.float64, requires_grad=True)
    actions = (mu.detach()[:, None] + std * torch.randn(2, n, dtype=torch.float64))
    log_probs = Normal(mu[:, None], std).log_prob(actions)
    rewards = torch.stack([-(actions[0] - 2) ** 2, -(actions[1] - actions[0]) ** 2])
    (reinforce_surrogate(log_probs, discounted_returns(rewards, gamma)) / n).backward()
    m1, m2 = mu.detach()
    exact = torch.stack([2 * (m1 - 2) - 2 * gamma * (m2 - m1), 2 * (m2 - m1)])
    torch.testing.assert_close(mu.grad, exact, atol=0.08, rtol=0.0)


def learned_model(**hp):
    torch.manual_seed(0)
    model = build_infocnf_learned(TOY3, hidden=[8], n_blocks=2, adjoint=False, **hp).double()
    with torch.no_grad():  # every gate's output starts at sigmoid(0) = 1/2 for every example
        for gate in model.policy.gates:
            gate.head.weight.zero_()
            gate.head.bias.zero_()
    return model


def authors_returns(stats: dict, nfe: list[int], weight_y: float, alpha: float, gamma: float) -> torch.Tensor:
    """The author's return loop on this batch: R = -L (L = NLL + weight_y CE, toy data: scale 1)."""
    running, out = -(stats["nll"] + weight_y * stats["ce"]), []
    for r in reversed(nfe):
        running = -alpha / len(nfe) * r + gamma * running
        out.insert(0, running)
    return torch.tensor(out, dtype=torch.float64)


def test_log_gaussian_policy_gradient_is_rl_weight_times_reinforce_on_eq6_returns():
    """Log-Gaussian tolerances: the gates' last bias and the log-stds get only the REINFORCE term,
    -rl_weight r_i dlog pi_i, with r_i the Eq. 6 returns (here discounted, gamma 0.8)."""
    model = learned_model(distribution="log_gaussian", tol_min=1e-6, tol_max=1e-3, alpha=0.5, rl_weight=0.3,
                          gamma=0.8)
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss, stats = model.training_loss(x, y)
    loss.backward()
    record, policy = model.policy.record, model.policy
    returns = authors_returns(stats, record["nfe"], 0.5, 0.5, 0.8)
    mu = (policy.lo + policy.hi) / 2
    var = policy.log_std.detach().exp() ** 2
    dmu_db = (policy.hi - policy.lo) * 0.25
    for i, gate in enumerate(policy.gates):
        a = record["action"][i]
        torch.testing.assert_close(gate.head.bias.grad[0], -0.3 * returns[i] * (a - mu) / var[i] * dmu_db,
                                   atol=1e-8, rtol=1e-6)
        torch.testing.assert_close(policy.log_std.grad[i], -0.3 * returns[i] * ((a - mu) ** 2 / var[i] - 1),
                                   atol=1e-8, rtol=1e-6)
    assert stats["rl"] == pytest.approx(float(-(torch.stack(record["log_prob"]).detach() * returns).sum()))


def test_halfnormal_cnn1_tolerance_is_gate_mean_plus_halfnormal_and_trains_no_parameter():
    """The author's cnn1 gate: tolerance m + a, m = tol_min + (tol_max - tol_min) mean_b sigmoid(g_b),
    a ~ HalfNormal(tol_std); its log-density depends on no parameter, so no gate receives a gradient."""
    torch.manual_seed(0)
    model = build_infocnf_learned(TOY3, hidden=[8], n_blocks=2, adjoint=False, tol_std=3e-5).double()
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss, stats = model.training_loss(x, y)
    loss.backward()
    record = model.policy.record
    with torch.no_grad():  # block 0's input is x itself; the gate in training mode, as in the solve
        m0 = 1e-5 + 9e-5 * model.policy.gates[0](x).mean()
    assert 1e-5 < float(m0) < 1e-4 and all(a >= 0 for a in record["action"])
    assert stats["tol_block0"] == pytest.approx(float(m0) + record["action"][0], rel=1e-12)
    halfnormal = HalfNormal(torch.tensor(3e-5, dtype=torch.float64))
    for lp, a in zip(record["log_prob"], record["action"]):
        expected = halfnormal.log_prob(torch.tensor(a, dtype=torch.float64))
        assert float(lp) == pytest.approx(float(expected), rel=1e-9)
        assert not lp.requires_grad
    assert all(p.grad is None for p in model.policy.parameters())
    returns = authors_returns(stats, record["nfe"], 0.5, 0.1, 1.0)
    assert stats["rl"] == pytest.approx(float(-(torch.stack(record["log_prob"]) * returns).sum()))


def test_halfnormal_cnn2_trains_the_scale_output_by_reinforce():
    """The author's cnn2 gate: the half-normal scale s = tol_std sigmoid(g_1) + 1e-8 is a gate output;
    its bias gets -rl_weight r_i (-1/s + a^2/s^3) ds/db, the mean output none."""
    model = learned_model(gate="cnn2", tol_std=2e-5, alpha=0.2, rl_weight=0.05)
    x, y = torch.randn(32, 3, dtype=torch.float64), torch.randint(0, 3, (32,))
    loss, stats = model.training_loss(x, y)
    loss.backward()
    record = model.policy.record
    returns = authors_returns(stats, record["nfe"], 0.5, 0.2, 1.0)
    s = 2e-5 * 0.5 + 1e-8
    for i, gate in enumerate(model.policy.gates):
        a = record["action"][i]
        expected = -0.05 * returns[i] * (-1 / s + a ** 2 / s ** 3) * 2e-5 * 0.25
        torch.testing.assert_close(gate.head.bias.grad[1], expected, atol=1e-12, rtol=1e-6)
        assert gate.head.bias.grad[0] == 0 and gate.head.weight.grad[0].abs().sum() == 0
        assert stats[f"tol_block{i}"] == pytest.approx(1e-5 + 9e-5 * 0.5 + a, rel=1e-12)


def test_learned_tolerances_drive_the_solver_and_are_logged():
    model = learned_model(tol_min=1e-8, tol_max=1e-2, tol_std=1e-14)
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randint(0, 3, (64,))
    runs = {}
    for name, bias in (("loose", 30.0), ("tight", -30.0)):
        with torch.no_grad():
            for gate in model.policy.gates:
                gate.head.bias.fill_(bias)
        collect_block_nfe(model)
        _, stats = model.training_loss(x, y)
        counted = collect_block_nfe(model)[0]
        runs[name] = (stats, sum(model.policy.record["nfe"]), counted)
    for name, target in (("loose", 1e-2), ("tight", 1e-8)):
        stats, nfe, counted = runs[name]
        assert [stats["tol_block0"], stats["tol_block1"]] == [pytest.approx(target, rel=0.02)] * 2
        assert nfe == counted > 0  # the harness's counters still see every training evaluation
    assert runs["tight"][1] > 1.5 * runs["loose"][1], (runs["tight"][1], runs["loose"][1])
    model.eval()
    with torch.no_grad():
        terms = evaluate_with_learned_tolerances(model, x, y)
    assert terms["nfe_learned"][0] < collect_block_nfe(model)[0]  # the learned pass is one of the two counted passes


def evaluate_with_learned_tolerances(model, x, y):
    model.eval_learned_tolerance = True
    terms = model.evaluate(x, y)
    assert {"nll", "nll_marginal", "error", "nll_learned", "error_learned", "nfe_learned"} <= set(terms)
    # the deterministic tolerance: the gate's mean plus the half-normal's mean, s sqrt(2 / pi)
    assert model.policy.record["tol"] == [pytest.approx(1e-8 + 1e-14 * math.sqrt(2 / math.pi), rel=0.02)] * 2
    torch.testing.assert_close(terms["nll_learned"], terms["nll"], atol=1e-3, rtol=0)  # both tight solves
    return terms


def test_manual_tolerances_apply_per_block_in_training_only():
    torch.manual_seed(0)
    model = build_infocnf(TOY3, hidden=[8], n_blocks=2, adjoint=False, tolerance="manual",
                          manual_tolerances=[1e-3, 1e-7]).double()
    x, y = torch.randn(64, 3, dtype=torch.float64), torch.randint(0, 3, (64,))
    _, stats = model.training_loss(x, y)
    assert stats["tol_block0"] == 1e-3 and stats["tol_block1"] == 1e-7
    loose, tight = model.policy.record["nfe"]
    assert tight > loose
    assert all(b.tolerance is None for b in model.flow.blocks)  # reset after each solve
    with pytest.raises(ValueError, match="one per CNF block"):
        build_infocnf(TOY3, n_blocks=2, tolerance="manual", manual_tolerances=[1e-3, 1e-4, 1e-5])


# -- images: the author's gates and parameter counts -----------------------------------------------
def gate_params(channels_in: int, outputs: int) -> int:
    """The author's image gate: 3x3 conv C -> 10 and 3x3 conv 10 -> 10 without bias, two batch norms
    (weight and bias), 1x1 conv 10 -> outputs with bias: 90 C + 920 + 11 outputs."""
    return 10 * channels_in * 9 + 2 * 10 + 10 * 10 * 9 + 2 * 10 + (10 + 1) * outputs


@pytest.mark.parametrize("gate, outputs", [("cnn1", 1), ("cnn2", 2)])
def test_image_model_gates_every_block_as_the_author_builds_them(gate, outputs):
    data = DataInfo("random", "image", (1, 4, 4), num_classes=3, levels=256)
    torch.manual_seed(0)
    model = build_infocnf_learned(data, hidden=[4], n_blocks=1, n_scales=2, adjoint=False, gate=gate)
    assert model.cond_dim == 8 and model.sizes == [8, 8]
    channels = [b.shape[0] for b in model.flow.modules() if b.__class__.__name__ == "CNF"]
    assert channels == [1, 4, 2]
    assert [sum(p.numel() for p in g.parameters()) for g in model.policy.gates] == [
        gate_params(c, outputs) for c in channels]
    x, y = torch.rand(8, 1, 4, 4), torch.randint(0, 3, (8,))
    loss, stats = model.training_loss(x, y)
    loss.backward()
    assert sorted(k for k in stats if k.startswith("tol_")) == ["tol_block0", "tol_block1", "tol_block2"]
    if gate == "cnn2":  # REINFORCE reaches the conv gates through the learned scale
        assert all(g.head.weight.grad[1].abs().sum() > 0 for g in model.policy.gates)
    else:  # a constant half-normal scale: nothing in the gates trains (the author's cnn1)
        assert all(p.grad is None for p in model.policy.parameters())
    assert model._loss_scale() == pytest.approx(16 * math.log(2))  # CE and REINFORCE on the bits/dim scale


@pytest.mark.parametrize("builder, supervised", [(build_infocnf, 1536), (build_ccnf, 3072)])
def test_prior_and_classifier_have_the_authors_parameter_count(builder, supervised):
    """On top of the flow: q_phi 10 x 2C weights, 2C biases, 2C log-scales, 2C (detached) offsets;
    q_theta C x 10 weights, 10 biases, 10 log-scales: 36 C + 20 = 55,316 (C = 1,536) or 110,612."""
    model = builder(CIFAR10, hidden=[4], n_blocks=1)
    assert model.cond_dim == supervised
    extra = model.num_params() - model.flow.num_params()
    assert extra == 36 * supervised + 20 == {1536: 55_316, 3072: 110_612}[supervised]


def test_cifar10_gates_add_the_authors_parameter_count():
    """14 blocks seeing 3,3,12,12,6,6,24,24,12,12,48,48,24,24 channels: cnn1 gates 90 x 258 + 14 x 951 =
    36,534 parameters (1,450,732 - 1,414,198 in the author's logs), cnn2 154 more (1,450,886)."""
    for gate, expected in (("cnn1", 36_534), ("cnn2", 36_688)):
        model = build_infocnf_learned(CIFAR10, hidden=[4], gate=gate)
        channels = [b.shape[0] for b in model.flow.modules() if b.__class__.__name__ == "CNF"]
        assert channels == [3, 3, 12, 12, 6, 6, 24, 24, 12, 12, 48, 48, 24, 24]
        assert sum(p.numel() for p in model.policy.parameters()) == expected


@pytest.mark.parametrize("suite, model, expected", [
    ("infocnf-cifar10", "infocnf", 1_414_198), ("infocnf-cifar10", "ccnf", 1_469_494),
    ("infocnf-cifar10", "infocnf_learned", 1_450_732), ("infocnf-cifar10-large", "infocnf", 1_414_198),
    ("infocnf-cifar10-large", "ccnf", 1_469_494), ("infocnf-cifar10-large", "infocnf_learned", 1_450_886)])
def test_paper_scale_suites_have_the_authors_parameter_counts(suite, model, expected):
    """As the author's logs print them ("Number of trainable parameters") and the ODENVP formula gives
    them: the FFJORD flow 1,358,882 (14 concat-conv ODE-nets of 1,162 C + 75,648 parameters and one
    sqrt(T) each) plus the prior, classifier and gates above."""
    net = build_from_suite(suite, model, "cifar10")
    assert net.num_params() == sum(p.numel() for p in net.parameters()) == expected
    channels = [b.shape[0] for b in net.flow.modules() if b.__class__.__name__ == "CNF"]
    assert net.flow.num_params() == sum(1162 * c + 75_648 + 1 for c in channels) == 1_358_882


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
