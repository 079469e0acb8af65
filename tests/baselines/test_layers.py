"""Shared layers: running-statistics batch norm, checkerboard coupling, multi-scale container."""

from __future__ import annotations

import pytest
import torch

from baselines.layers import (ConditionalGaussianPrior, MaskedAffineCoupling, MultiScaleFlow, RunningBatchNorm,
                              StandardNormalPrior, checkerboard, std_normal_log_prob)


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


def test_checkerboard_coupling_keeps_the_masked_pixels():
    torch.manual_seed(0)
    layer = MaskedAffineCoupling((2, 4, 4), parity=1, hidden=8, n_blocks=1).double()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.rand(3, 2, 4, 4, dtype=torch.float64)
    z, log_det = layer.inverse(x)
    mask = checkerboard(4, 4, 1).bool().expand_as(x)
    assert torch.equal(z[mask], x[mask]) and not torch.allclose(z[~mask], x[~mask])
    back, ld_back = layer.forward(z)
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld_back, -log_det)
    assert checkerboard(2, 2, 0).flatten().tolist() == [1.0, 0.0, 0.0, 1.0]


def test_multiscale_container_whitens_and_inverts():
    torch.manual_seed(0)
    prior = ConditionalGaussianPrior(2, 2).double()
    torch.nn.init.normal_(prior.conv.weight, std=0.2)
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
