"""Shared layers: running-statistics batch norm, RealNVP's coupling and its output batch norm, Glow's
ActNorm, edge-padded convolution and priors, the multi-scale container."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.base import std_normal_log_prob
from baselines.layers import (ConditionalGaussianPrior, EdgePaddedConv2d, GlowActNorm, LearnedTopPrior, MultiScaleFlow,
                              OutputBatchNorm, RealNVPCoupling, RunningBatchNorm, StandardNormalPrior, WNConv2d,
                              checkerboard)


def jacobian_logdet(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the full autograd Jacobian of ``fn`` at the single example ``x`` (float64)."""
    jac = torch.autograd.functional.jacobian(lambda a: fn(a.view(1, *x.shape)).reshape(-1), x.reshape(-1))
    return torch.linalg.slogdet(jac)[1]


@pytest.mark.parametrize("shape", [(5,), (3, 4, 4)])
def test_batch_norm_uses_running_statistics_in_eval_mode(shape):
    torch.manual_seed(0)
    bn = RunningBatchNorm(shape, momentum=0.5).double()
    data = 2.0 + 3.0 * torch.randn(512, *shape, dtype=torch.float64)
    bn.train()
    for _ in range(40):
        z, _ = bn.inverse(data)
    dims = [0] + list(range(2, len(shape) + 1))
    torch.testing.assert_close(z.mean(dims), torch.zeros(shape[0], dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(bn.running_mean.flatten(), data.mean(dims), atol=1e-6, rtol=0)
    bn.eval()
    with torch.no_grad():
        bn.log_gamma.normal_()
        bn.beta.normal_()
    one, ld_one = bn.inverse(data[:1])
    many, ld_many = bn.inverse(data)
    torch.testing.assert_close(one, many[:1])  # no dependence on the rest of the batch
    jac = torch.autograd.functional.jacobian(lambda a: bn.inverse(a.view(1, *shape))[0].reshape(-1),
                                             data[0].reshape(-1))
    torch.testing.assert_close(ld_one[0], torch.linalg.slogdet(jac)[1])
    back, ld_back = bn.forward(one)
    torch.testing.assert_close(back, data[:1])
    torch.testing.assert_close(ld_back, -ld_one)


def _trained_coupling(**kw) -> RealNVPCoupling:
    torch.manual_seed(0)
    layer = RealNVPCoupling(2, 8, 1, **kw).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn_like(p))
    layer.train()
    layer.inverse(torch.rand(64, 2, 4, 4, dtype=torch.float64))  # batch-norm running statistics
    return layer.eval()


@pytest.mark.parametrize("kw", [dict(mask=checkerboard(4, 4, 1)), dict(cond_first=True), dict(cond_first=False)],
                         ids=["checkerboard", "channel-first", "channel-second"])
def test_realnvp_coupling_keeps_its_conditioning_part_and_logdet_is_exact(kw):
    layer = _trained_coupling(**kw)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    z, log_det = layer.inverse(x)
    if "mask" in kw:
        keep = checkerboard(4, 4, 1).bool().expand_as(x)
    else:
        keep = torch.zeros_like(x, dtype=torch.bool)
        keep[:, 0 if kw["cond_first"] else 1] = True
    assert torch.equal(z[keep], x[keep]) and not torch.allclose(z[~keep], x[~keep])
    for i in range(3):
        torch.testing.assert_close(log_det[i], jacobian_logdet(lambda a: layer.inverse(a)[0], x[i]))
    back, ld_back = layer.forward(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld_back, -log_det)


def test_realnvp_scale_is_a_learned_multiple_of_tanh():
    """s = scale * tanh(h): with scale 0 the affine part is volume preserving (only the output
    batch norm changes volume); with scale c every log-scale lies in [-c, c]."""
    layer = _trained_coupling(mask=checkerboard(4, 4, 0), batch_norm=False)
    x = torch.rand(5, 2, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        layer.scale.fill_(0.0)
        assert torch.equal(layer.inverse(x)[1], torch.zeros(5, dtype=torch.float64))
        layer.scale.fill_(0.25)
        for net_out in layer.net.out[-1].parameters():
            net_out.mul_(50.0)  # a conditioner output far beyond the tanh's linear range
        _, log_scale = layer._params(x * layer.mask)
    assert log_scale.abs().max() <= 0.25 and log_scale.abs().max() > 0.2
    assert layer.inverse(x)[1].abs().max() <= 0.25 * 16 / 2  # 8 transformed elements per channel


def test_output_batch_norm_standardises_the_transformed_elements():
    torch.manual_seed(0)
    norm = OutputBatchNorm(2).double().train()
    x = 3.0 + 2.0 * torch.randn(256, 2, 4, 4, dtype=torch.float64)
    free = 1 - checkerboard(4, 4, 0).double()
    y, log_scale = norm.inverse(x, free)
    kept = free.bool().logical_not().expand_as(x)
    assert torch.equal(y[kept], x[kept])
    mean, var = (x * free).mean((0, 2, 3)), (x * free).var((0, 2, 3), unbiased=False)  # the official statistics
    expected = (x - mean.view(1, 2, 1, 1)) / torch.sqrt(var.view(1, 2, 1, 1) + 1e-4)
    torch.testing.assert_close(y[~kept], expected[~kept])
    torch.testing.assert_close(log_scale[0, :, 0, 1], -0.5 * torch.log(var + 1e-4))
    torch.testing.assert_close(norm.running_mean.flatten(), 0.1 * mean)  # momentum 0.1 from 0
    norm.eval()
    back, _ = norm.forward(*norm.inverse(x[:2], free)[:1], free)
    torch.testing.assert_close(back, x[:2])


def test_weight_norm_conv_has_unit_directions_times_magnitude():
    conv = WNConv2d(3, 4, 3).double()
    w = conv.weight()
    torch.testing.assert_close(w.flatten(1).norm(dim=1), conv.magnitude)
    plain = WNConv2d(3, 4, 3, magnitude=False)
    assert plain.magnitude is None and torch.allclose(plain.weight().flatten(1).norm(dim=1), torch.ones(4))
    std = math.sqrt(2 / 3)
    torch.testing.assert_close(conv.magnitude, torch.full((4,), std * math.sqrt(27 / 12), dtype=torch.float64))


def test_glow_actnorm_initialises_from_its_first_batch_with_log_scale_factor_3():
    torch.manual_seed(0)
    an = GlowActNorm(3).double()
    x = 3.0 + 2.0 * torch.randn(128, 3, 4, 4, dtype=torch.float64)
    z, log_det = an.inverse(x)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3, dtype=torch.float64), atol=1e-5, rtol=0)
    std = x.std((0, 2, 3), unbiased=False)
    torch.testing.assert_close(3 * an.p.flatten(), -torch.log(std + 1e-6))  # the stored parameter is log-scale / 3
    assert bool(an.initialised)
    z2, _ = an.inverse(x + 5)  # initialised once: a later batch does not re-initialise
    torch.testing.assert_close(z2 - z, 5 * torch.exp(3 * an.p).expand_as(z))
    torch.testing.assert_close(log_det[0], jacobian_logdet(lambda a: an.inverse(a)[0], x[0]))
    back, ld = an.forward(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld, -log_det)


def test_edge_padded_conv_marks_the_padded_border():
    conv = EdgePaddedConv2d(1, 1, 3).double()
    with torch.no_grad():
        conv.conv.weight.zero_()
        conv.conv.weight[0, 1, 0, 0] = 1.0  # the top-left tap of the indicator channel
    out = conv(torch.zeros(1, 1, 4, 5, dtype=torch.float64))[0, 0]
    expected = torch.zeros(4, 5, dtype=torch.float64)
    expected[0, :], expected[:, 0] = 1.0, 1.0  # only outputs whose top-left neighbour is padding
    torch.testing.assert_close(out, expected)
    zeros = EdgePaddedConv2d(2, 4, 3, zeros=True)
    assert torch.equal(zeros(torch.randn(2, 2, 3, 3)), torch.zeros(2, 4, 3, 3))  # Glow's conv2d_zeros
    with torch.no_grad():
        zeros.conv.bias.fill_(1.0)
        zeros.logs.fill_(0.5)
    torch.testing.assert_close(zeros(torch.zeros(1, 2, 3, 3)), torch.full((1, 4, 3, 3), math.exp(1.5)))


def test_learned_top_prior_is_per_channel_inside_and_inverts():
    prior = LearnedTopPrior((2, 4, 4)).double()
    with torch.no_grad():
        prior.conv.conv.bias.copy_(torch.tensor([0.5, -0.2, 1.0, 0.3]))
        prior.conv.conv.weight[:, -1].normal_()  # learned border offsets through the padding indicator
    mean, log_scale = prior._params(torch.zeros(1, dtype=torch.float64))
    torch.testing.assert_close(mean[0, :, 1:3, 1:3], torch.tensor([0.5, 1.0]).double().view(2, 1, 1).expand(2, 2, 2))
    assert not torch.allclose(mean[0, :, 0, 0], mean[0, :, 1, 1])
    z = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps, log_det = prior.whiten(z, None)
    torch.testing.assert_close(prior.color(eps, None), z)
    torch.testing.assert_close(log_det, -log_scale.sum().expand(3))


def test_multiscale_container_whitens_and_inverts():
    torch.manual_seed(0)
    prior = ConditionalGaussianPrior(2, 2).double()
    torch.nn.init.normal_(prior.conv.conv.weight, std=0.2)
    flow = MultiScaleFlow([[], []], [prior, StandardNormalPrior()], [(4, 2, 2), (2, 2, 2)])
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    z, log_det = flow.to_latent(x)
    assert z.shape == (3, 16)
    torch.testing.assert_close(flow.from_latent(z), x)
    mean, log_scale = prior._params(x[:, :2])
    expected = ((x[:, 2:] - mean) * torch.exp(-log_scale)).flatten(1)
    torch.testing.assert_close(z[:, :8], expected)
    torch.testing.assert_close(z[:, 8:], x[:, :2].flatten(1))
    torch.testing.assert_close(log_det, -log_scale.flatten(1).sum(1))
    assert std_normal_log_prob(z).shape == (3,)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_glow_conditioner_folds_its_actnorms_into_the_convolutions(memory_format):
    """The coupling's network applies each ActNorm (and the zero-conv's output scale) folded into the
    convolution before it, for speed: outputs and gradients equal the layers applied one by one, also
    with weights and inputs in channels-last order (the border term then adds on the NHWC view)."""
    import torch.nn.functional as F

    from baselines.layers import EdgePaddedConv2d, GlowAffineCoupling

    torch.manual_seed(0)
    coupling = GlowAffineCoupling(4, 16).double()
    for m in coupling.modules():  # a zero-initialised last conv would hide its scale's gradient
        if isinstance(m, EdgePaddedConv2d) and m.zeros:
            for p in (m.conv.weight, m.conv.bias, m.logs):
                torch.nn.init.normal_(p, std=0.1)

    def conv_one_by_one(m: EdgePaddedConv2d, x: torch.Tensor) -> torch.Tensor:
        if m.pad:  # zero padding plus an indicator channel of the padded border
            p = m.pad
            edge = F.pad(x.new_zeros(1, 1, *x.shape[2:]), (p, p, p, p), value=1.0).expand(x.shape[0], -1, -1, -1)
            x = torch.cat([F.pad(x, (p, p, p, p)), edge], dim=1)
        h = m.conv(x)
        return h * torch.exp(m.logscale_factor * m.logs) if m.zeros else h

    def one_by_one(x: torch.Tensor) -> torch.Tensor:
        for m in coupling.net:
            x = conv_one_by_one(m, x) if isinstance(m, EdgePaddedConv2d) else m(x)
        return x

    coupling.to(memory_format=memory_format)
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64).contiguous(memory_format=memory_format)
    torch.testing.assert_close(coupling.net(x), one_by_one(x))  # the first call initialises the ActNorms
    y = torch.randn(5, 2, 6, 6, dtype=torch.float64).contiguous(memory_format=memory_format)
    torch.testing.assert_close(coupling.net(y), one_by_one(y))
    params = list(coupling.net.parameters())
    fused = torch.autograd.grad(coupling.net(y).pow(2).sum(), params, allow_unused=True)
    plain = torch.autograd.grad(one_by_one(y).pow(2).sum(), params, allow_unused=True)
    for a, b in zip(fused, plain):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["glow", "realnvp"])
def test_image_models_keep_channels_last_weights_without_changing_a_value(name):
    """Glow and RealNVP keep their convolutions in channels-last order for speed: the log-densities
    and gradients equal those of a contiguous twin with the same weights, and a checkpoint written
    from either loads into the other."""
    from baselines.registry import get_builder
    from bench.data.base import DataInfo

    info = DataInfo("x", "image", (2, 8, 8), levels=256)
    hp = {"glow": {"n_levels": 2, "n_steps": 2, "hidden": 8},
          "realnvp": {"n_scales": 2, "n_checker": 1, "n_channel": 1, "hidden": 4, "n_blocks": 1}}[name]
    torch.manual_seed(0)
    model = get_builder(name)(info, **hp).double().eval()
    kernels = [w for w in model.parameters() if w.dim() == 4 and w.shape[1] > 1 and w.shape[2] * w.shape[3] > 1]
    assert kernels and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in kernels)
    twin = get_builder(name)(info, **hp).double().eval()
    twin.channels_last = False
    twin.flow.to(memory_format=torch.contiguous_format)
    twin.load_state_dict(model.state_dict())
    x = torch.rand(4, 2, 8, 8, dtype=torch.float64)
    with torch.no_grad():  # Glow's ActNorms initialise on the first batch: the same batch for both
        model.log_prob(x), twin.log_prob(x)
    lp, lp_twin = model.log_prob(x), twin.log_prob(x)
    torch.testing.assert_close(lp, lp_twin)
    grads = torch.autograd.grad(lp.sum(), list(model.parameters()))
    twin_grads = torch.autograd.grad(lp_twin.sum(), list(twin.parameters()))
    for a, b in zip(grads, twin_grads):
        torch.testing.assert_close(a, b)
    back = get_builder(name)(info, **hp).double().eval()
    back.load_state_dict(twin.state_dict())
    torch.testing.assert_close(back.log_prob(x), lp)
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in back.parameters() if w.dim() == 4)


def test_glow_actnorm_mirrors_its_flag_on_the_host_and_follows_loaded_checkpoints():
    """Forwards read the Python mirror, not the buffer; the buffer stays in the state dict, and loading
    one sets (or clears) the mirror, so a loaded ActNorm neither re-initialises nor skips its first batch."""
    torch.manual_seed(0)
    an = GlowActNorm(3)
    x = torch.randn(16, 3, 4, 4)
    assert not an.host_flag and "initialised" in an.state_dict()
    an.inverse(x)
    assert an.host_flag and float(an.initialised) == 1.0
    loaded = GlowActNorm(3)
    loaded.load_state_dict(an.state_dict())
    assert loaded.host_flag
    torch.testing.assert_close(loaded.inverse(x + 1)[0], an.inverse(x + 1)[0])  # no re-initialisation
    cleared = GlowActNorm(3)
    cleared.host_flag = True
    cleared.load_state_dict(GlowActNorm(3).state_dict())
    assert not cleared.host_flag
    cleared.inverse(x)  # initialises on its first batch
    torch.testing.assert_close(cleared.b, an.b)
