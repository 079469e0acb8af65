"""RealNVP: exact change of variables, invertibility, samples, eval-mode batch norm, the image
model's structure (scales, widths, the parameters its L2 term marks), short runs."""

from __future__ import annotations

import math

import pytest
import torch

from baselines.layers import OutputBatchNorm, RealNVPCoupling, RunningBatchNorm, ShiftBatchNorm, WNConv2d
from baselines.realnvp import RealNVP, RealNVPImage, build
from baselines.registry import get_builder

CASES = [
    ((2,), dict(n_layers=4, hidden=16)),
    ((5,), dict(n_layers=5, hidden=16)),
    ((1, 4, 4), dict(n_scales=2, n_checker=2, n_channel=2, hidden=8, n_blocks=1)),
    ((3, 4, 4), dict(n_scales=2, n_checker=2, n_channel=2, hidden=8, n_blocks=1)),
    ((2, 4, 4), dict(n_scales=2, n_checker=1, n_channel=2, hidden=4, n_blocks=2, batch_norm=False, weight_norm=False,
                     double_width=False)),
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


def test_image_eval_density_does_not_depend_on_the_batch(flowcheck):
    model = flowcheck.prepared(build, (3, 4, 4), n_scales=2, n_checker=2, n_channel=2, hidden=8, n_blocks=1)
    assert any(isinstance(m, OutputBatchNorm) for m in model.modules())
    x = torch.rand(6, 3, 4, 4, dtype=torch.float64)
    alone = torch.cat([model.log_prob(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(model.log_prob(x), alone)


def test_cifar10_structure_downscales_once_and_doubles_widths(flowcheck):
    """Dinh et al. 4.1: on CIFAR-10 8 residual blocks of 64 feature maps and one downscale; the
    official code doubles the width per scale and uses twice the width in channel couplings."""
    model = build(flowcheck.info((3, 32, 32)), hidden=8)
    assert isinstance(model, RealNVPImage)
    assert model.flow.level_shapes == [(12, 16, 16), (6, 16, 16)]
    assert model.flow.latent_shapes == [(6, 16, 16), (6, 16, 16)]
    couplings = [[m for m in level if isinstance(m, RealNVPCoupling)] for level in model.flow.levels]
    assert [[c.checker for c in level] for level in couplings] == [[True] * 3 + [False] * 3, [True] * 4]
    widths = [[c.net.inp.v.shape[0] for c in level] for level in couplings]
    assert widths == [[8, 8, 8, 16, 16, 16], [16, 16, 16, 16]]
    assert all(len(c.net.blocks) == 8 for level in couplings for c in level)
    assert [c.scale.item() for c in couplings[0]] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # the official initial values
    assert sum(isinstance(m, ShiftBatchNorm) for m in couplings[0][0].modules()) == 1 + 2 * 8 + 1
    assert all(isinstance(c.out_norm, OutputBatchNorm) for level in couplings for c in level)


def test_weight_decay_params_are_the_weight_scales(flowcheck):
    """The official L2 term: weight-norm magnitudes and the checkerboard couplings' tanh scales only."""
    model = build(flowcheck.info((3, 8, 8)), n_scales=2, n_checker=2, n_channel=2, hidden=4, n_blocks=2)
    marked = model.weight_decay_params()
    ids = {id(p) for p in marked}
    assert len(ids) == len(marked)
    magnitudes = [m.magnitude for m in model.modules() if isinstance(m, WNConv2d) and m.magnitude is not None]
    checker = [c.scale for c in model.modules() if isinstance(c, RealNVPCoupling) and c.checker]
    channel = [c.scale for c in model.modules() if isinstance(c, RealNVPCoupling) and not c.checker]
    assert len(checker) == 2 + 3 and len(channel) == 2
    # per conditioner: the input skip, 2 blocks x (out conv + skip), the output conv carry magnitudes
    assert len(magnitudes) == (5 + 2) * (1 + 2 * 2 + 1)
    assert ids == {id(p) for p in magnitudes + checker}
    assert not ids & {id(p) for p in channel}
    assert not ids & {id(m.v) for m in model.modules() if isinstance(m, WNConv2d)}


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
