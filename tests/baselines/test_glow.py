"""Glow: exact change of variables, ActNorm's data-dependent init, the plain (default) and LU 1x1
convolutions, split and top priors, the official 3x32x32 MNIST shapes, short runs; FFJORD's tabular
Glow (glow_ffjord): its log-det and inverse, masks, layers and the official parameter counts."""

from __future__ import annotations


import normflows as nf
import pytest
import torch

from baselines.glow import (DenseLinearFlow, GlowFFJORDTabular, GlowVector, MaskedAffineCoupling, build,
                            build_ffjord_tabular)
from baselines.layers import (ActNorm, ConditionalGaussianPrior, GlowActNorm, GlowStep, LearnedTopPrior, StandardNormalPrior)

CASES = [
    ((2,), dict(n_steps=4, hidden=16)),
    ((5,), dict(n_steps=4, hidden=16)),
    ((1, 4, 4), dict(n_levels=2, n_steps=2, hidden=8)),
    ((3, 4, 4), dict(n_levels=2, n_steps=2, hidden=8)),
    ((3, 4, 4), dict(n_levels=2, n_steps=2, hidden=8, lu=True)),
    ((5,), dict(n_steps=3, hidden=16, lu=True)),
]


# FFJORD's tabular Glow (glow_ffjord: rtqichen/ffjord train_discrete_tabular.py --glow) beside ours
FFJORD_CASES = [((2,), dict(n_blocks=3, hidden=[16, 16])), ((5,), dict(n_blocks=4, hidden=[16, 16])),
                ((6,), dict(n_blocks=2, hidden=[8, 12, 8]))]
BUILT = [(build, shape, hp) for shape, hp in CASES] + [(build_ffjord_tabular, shape, hp) for shape, hp in FFJORD_CASES]


@pytest.mark.parametrize("builder,shape,hp", BUILT, ids=lambda c: getattr(c, "__name__", str(c)))
def test_log_prob_is_the_change_of_variables(flowcheck, builder, shape, hp):
    model = flowcheck.prepared(builder, shape, **hp)
    flowcheck.change_of_variables(model, shape)


@pytest.mark.parametrize("builder,shape,hp", BUILT, ids=lambda c: getattr(c, "__name__", str(c)))
def test_inverse_and_samples(flowcheck, builder, shape, hp):
    model = flowcheck.prepared(builder, shape, **hp)
    flowcheck.inverse_and_samples(model, shape)


def test_actnorm_initialises_from_the_first_batch(flowcheck):
    torch.manual_seed(0)
    model = build(flowcheck.info((4, 8, 8)), n_levels=1, n_steps=1, hidden=8)
    x = 3.0 + 2.0 * torch.rand(256, 4, 8, 8)
    model.log_prob(x)
    squeeze, step = model.flow.levels[0]
    assert isinstance(step, GlowStep) and isinstance(step.actnorm, GlowActNorm)
    h, _ = step.actnorm.inverse(squeeze.inverse(x)[0])
    torch.testing.assert_close(h.mean(dim=(0, 2, 3)), torch.zeros(16), atol=1e-4, rtol=0)
    torch.testing.assert_close(h.std(dim=(0, 2, 3)), torch.ones(16), atol=1e-3, rtol=0)


@pytest.mark.parametrize("lu", [False, True])
def test_1x1_convolution_is_plain_by_default_lu_as_an_option(flowcheck, lu):
    """The official default is a plain weight matrix (use_lu false); either way its log-det is
    H * W * log|det W| by brute force and its inverse returns the input."""
    hp = {} if not lu else {"lu": True}
    model = build(flowcheck.info((1, 8, 8)), n_levels=3, n_steps=2, hidden=8, **hp).double()
    convs = [m for m in model.modules() if isinstance(m, nf.flows.Invertible1x1Conv)]
    assert len(convs) == 6 and all(c.use_lu == lu for c in convs)
    assert all(hasattr(c, "W") != lu for c in convs)
    conv = convs[0]
    flowcheck.perturb(conv, scale=0.3)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    z, log_det = conv.inverse(x)
    jac = torch.autograd.functional.jacobian(lambda a: conv.inverse(a.view(1, 4, 3, 3))[0].reshape(-1),
                                             x[0].reshape(-1))
    brute = torch.linalg.slogdet(jac)[1]
    torch.testing.assert_close(torch.as_tensor(log_det).expand(2), brute.expand(2))  # one value for every example
    weight = conv._assemble_W() if lu else conv.W
    torch.testing.assert_close(brute, 9 * torch.linalg.slogdet(weight)[1])
    back, _ = conv.forward(z)
    torch.testing.assert_close(back, x)


def test_levels_use_split_priors_and_a_learned_top(flowcheck):
    model = build(flowcheck.info((1, 8, 8)), n_levels=3, n_steps=2, hidden=8)
    priors = list(model.flow.priors)
    assert [type(p) for p in priors] == [ConditionalGaussianPrior, ConditionalGaussianPrior, LearnedTopPrior]
    assert model.flow.latent_shapes == [(2, 4, 4), (4, 2, 2), (16, 1, 1)]  # 32 + 16 + 16 = 64 dims
    fixed = build(flowcheck.info((1, 8, 8)), n_levels=3, n_steps=2, hidden=8, learn_top=False)
    assert isinstance(fixed.flow.priors[-1], StandardNormalPrior)


def test_official_mnist_and_cifar10_shapes(flowcheck):
    """openai/glow feeds MNIST as 3x32x32 (pad 2, replicated): the same levels as CIFAR10."""
    model = build(flowcheck.info((3, 32, 32)), n_levels=3, n_steps=1, hidden=8)
    assert model.flow.level_shapes == [(12, 16, 16), (24, 8, 8), (48, 4, 4)]
    assert model.flow.latent_shapes == [(6, 16, 16), (12, 8, 8), (48, 4, 4)]
    assert torch.isfinite(model.log_prob(torch.rand(2, 3, 32, 32))).all()


def test_split_prior_conditions_on_the_kept_half(flowcheck):
    prior = ConditionalGaussianPrior(2, 2)
    torch.nn.init.normal_(prior.conv.conv.weight)
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
    assert kinds == [nf.flows.AffineCouplingBlock, nf.flows.InvertibleAffine, ActNorm] * 3
    assert issubclass(ActNorm, nf.flows.ActNorm)  # normflows' ActNorm: global statistics, its flag on the host
    assert not any(f.use_lu for f in model.flow.flows if isinstance(f, nf.flows.InvertibleAffine))
    lu = GlowVector(6, n_steps=2, lu=True)
    assert all(f.use_lu for f in lu.flow.flows if isinstance(f, nf.flows.InvertibleAffine))


def test_short_run_on_8gaussians_lowers_test_nll(short_run):
    before, result = short_run("glow", {"n_steps": 6, "hidden": 32})
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 0.5 and result["test"]["nll"] < 3.8, (before, result["test"])


def test_short_run_on_digits_gives_finite_bits_per_dim_below_uniform(digits_run, flowcheck):
    flowcheck.digits_below_uniform(*digits_run("glow", {"n_levels": 2, "n_steps": 2, "hidden": 16}))


# -- glow_ffjord: FFJORD's tabular Glow (rtqichen/ffjord train_discrete_tabular.py --glow) ----------------
def test_ffjord_dense_map_starts_at_the_identity_and_its_log_det_is_brute_force(flowcheck):
    layer = DenseLinearFlow(4).double()
    torch.testing.assert_close(layer.weight.detach(), torch.eye(4, dtype=torch.float64))
    flowcheck.perturb(layer, scale=0.4)
    x = torch.randn(3, 4, dtype=torch.float64)
    y, log_det = layer(x)
    brute = torch.linalg.slogdet(torch.autograd.functional.jacobian(lambda a: layer(a.view(1, 4))[0].view(-1), x[0]))[1]
    assert brute.abs() > 1e-3
    torch.testing.assert_close(log_det, brute.expand(3))
    torch.testing.assert_close(layer.inverse(y), x)


def test_ffjord_coupling_alternates_its_mask_and_uses_tanh_scale_and_relu_shift_nets(flowcheck):
    """Block 0 transforms the even indices and keeps the odd ones (the official swap = i % 2 == 0),
    block 1 the reverse; each coupling has two separate nets: tanh between the log-scale net's layers,
    ReLU in the shift net's, both D -> hidden -> D."""
    model = GlowFFJORDTabular(5, n_blocks=2, hidden=(7, 9)).double()
    flowcheck.perturb(model, scale=0.3)
    couplings = [m for m in model.blocks if isinstance(m, MaskedAffineCoupling)]
    assert [type(m) for m in model.blocks] == [DenseLinearFlow, MaskedAffineCoupling] * 2
    assert couplings[0].mask.tolist() == [[0.0, 1.0, 0.0, 1.0, 0.0]] and couplings[1].mask.tolist() == [[1.0, 0.0, 1.0, 0.0, 1.0]]
    x = torch.randn(4, 5, dtype=torch.float64)
    for coupling, kept in zip(couplings, ([1, 3], [0, 2, 4])):
        y, _ = coupling(x)
        moved = [i for i in range(5) if i not in kept]
        torch.testing.assert_close(y[:, kept], x[:, kept])
        assert (y[:, moved] - x[:, moved]).abs().min() > 0
    for net, act in ((couplings[0].scale_net, torch.nn.Tanh), (couplings[0].shift_net, torch.nn.ReLU)):
        assert [type(m) for m in net] == [torch.nn.Linear, act, torch.nn.Linear, act, torch.nn.Linear]
        assert [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)] == [(5, 7), (7, 9), (9, 5)]
    assert couplings[0].scale_net is not couplings[0].shift_net


def test_ffjord_tabular_refuses_images(flowcheck):
    with pytest.raises(ValueError, match="flat"):
        build_ffjord_tabular(flowcheck.info((1, 4, 4)))


def test_ffjord_tabular_short_run_on_8gaussians_lowers_test_nll(short_run):
    before, result = short_run("glow_ffjord", {"n_blocks": 4, "hidden": [32, 32]})
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 0.5 and result["test"]["nll"] < 3.8, (before, result["test"])
