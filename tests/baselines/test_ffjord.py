"""FFJORD: densities against brute-force flow-map Jacobians, inversion, harness runs."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.functional import jacobian

from baselines.cnf import CNF, Solver
from baselines.ffjord import VectorCNF, build
from baselines.base import std_normal_log_prob
from baselines.registry import register
from bench.data.base import DataInfo

TIGHT = dict(eval_atol=1e-9, eval_rtol=1e-9)


def brute_log_prob(model, x: torch.Tensor) -> torch.Tensor:
    """log N(z) + log|det dz/dx| with the Jacobian of the whole data -> latent map by autograd."""
    out = []
    for xi in x:
        def flat_latent(v):
            return torch.cat(model.to_latent(v.view(1, *xi.shape))[0], 1)[0]
        z = flat_latent(xi.reshape(-1))
        jac = jacobian(flat_latent, xi.reshape(-1))
        out.append(std_normal_log_prob(z[None])[0] + torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def prepared(data: DataInfo, **hp):
    """A float64 model, parameters moved off their initial values, batch-norm statistics set, eval mode."""
    torch.manual_seed(0)
    model = build(data, **hp).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        model.train()
        model.log_prob(torch.randn(64, *data.shape, dtype=torch.float64))
    return model.eval()


def test_vector_stack_with_batch_norm_matches_brute_force():
    data = DataInfo("random", "tabular", (3,))
    model = prepared(data, n_blocks=2, hidden=[16], batch_norm=True, **TIGHT)
    assert len(model.blocks) == 2 and len(model.norms) == 3
    x = torch.randn(3, 3, dtype=torch.float64)
    with torch.no_grad():
        lp = model.log_prob(x)
    assert torch.allclose(lp, brute_log_prob(model, x), atol=1e-6)
    with torch.no_grad():
        back = model.from_latent(model.to_latent(x)[0])
    assert torch.allclose(back, x, atol=1e-6)


def test_multiscale_image_model_matches_brute_force_and_inverts():
    data = DataInfo("random", "image", (1, 4, 4), levels=256)
    model = prepared(data, hidden=[4], n_blocks=1, n_scales=2, eval_atol=1e-8, eval_rtol=1e-8,
                     eval_divergence="exact")
    assert [len(pre) + len(post) for pre, post in model.scales] == [2, 1]
    assert model.piece_shapes == [(2, 2, 2), (2, 2, 2)]
    x = torch.rand(1, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        lp = model.log_prob(x)
        back = model.from_latent(model.to_latent(x)[0])
        samples = model.sample(2)
    assert torch.allclose(lp, brute_log_prob(model, x), atol=1e-5)
    assert torch.allclose(back, x, atol=1e-5)
    assert samples.shape == (2, 1, 4, 4) and torch.isfinite(samples).all()


def test_kind_defaults_follow_the_reference():
    toy = build(DataInfo("8gaussians", "toy", (2,)))
    assert toy.num_params() == 9225  # FFJORD's default toy model, T included
    block = toy.blocks[0]
    assert block.func.end_time.item() == pytest.approx(0.5) and block.func.sqrt_end_time.requires_grad
    assert block._exact() and block.train_solver == Solver("dopri5", 1e-5, 1e-5)
    tab = build(DataInfo("power", "tabular", (6,)))
    tb = tab.blocks[0]
    assert not tb._exact() and tb.train_solver.atol == 1e-8 and tb.train_solver.rtol == 1e-6
    assert tb.eval_solver.atol == 1e-8 and tb.func.net.layers[0].out_features == 60
    tb.eval()
    assert tb._exact()  # exact divergence at test time on tabular data
    img = build(DataInfo("mnist", "image", (1, 28, 28), levels=256))
    assert len(img.scales) == 3 and img.scales[0][0][0].noise == "rademacher"
    img.eval()
    assert not img.scales[-1][0][0]._exact()  # images: Hutchinson at evaluation too (auto), even at 4x7x7


def test_short_run_lowers_nll_and_records_nfe(short_run):
    before, result = short_run("ffjord", {"hidden": [32, 32]}, steps=60, lr=1e-2, batch_size=64)
    assert result["status"] == "completed", result.get("error")
    assert result["test"]["nll"] < before - 0.5, (before, result["test"])
    nfe = result["nfe"]
    assert nfe["train_forward"] > 5 and nfe["train_backward"] > 5 and nfe["test_forward"] > 5


class _Blowup(torch.nn.Module):
    def forward(self, t, z):
        return 10 * z.pow(2)


@register("test-cnf-blowup")
def _blowup(data) -> VectorCNF:
    return VectorCNF(2, lambda shape: CNF(_Blowup(), shape, end_time=1.0, train_end_time=True, divergence="exact"))


def test_solver_underflow_marks_the_run_diverged(tmp_path):
    """8gaussians points sit at radius ~2: z' = 10 z^2 blows up long before t = 1."""
    from bench.fields import TRAIN_DEFAULTS
    from bench.spec import RunSpec
    from bench.store import RunRecord
    from bench.train import run_one

    # no step-size floor, so torchdiffeq's own underflow is what stops the solve (the floor has its own tests)
    train = {**TRAIN_DEFAULTS, "max_steps": 5, "batch_size": 32, "eval_every": 5, "checkpoint_every": 100,
             "min_solver_step": None}
    spec = RunSpec("test-cnf", "test-cnf-blowup", "8gaussians", 0, {}, {"n_train": 256, "n_val": 64, "n_test": 64},
                   train, "nll")
    result = run_one(spec, RunRecord(tmp_path, spec.suite, spec.run_id), device="cpu", progress=False)
    assert result["status"] == "diverged" and "underflow" in result["error"], result


def test_multiscale_factors_out_the_second_half_of_the_channels():
    """As the official ODENVP: after a squeeze the first half of the channels goes on and the second
    half is the latent piece (checked with the dynamics switched off, so every block is the identity)."""
    data = DataInfo("random", "image", (1, 4, 4), levels=256)
    model = build(data, hidden=[4], n_blocks=1, n_scales=2).double().eval()
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, CNF):
                for p in block.func.net.parameters():
                    p.zero_()
    x = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    squeezed = torch.nn.functional.pixel_unshuffle(x, 2)
    with torch.no_grad():
        pieces, log_det, _ = model.to_latent(x)
        back = model.from_latent(pieces)
    assert torch.allclose(pieces[0], squeezed[:, 2:].reshape(3, -1), atol=1e-12)  # solver rounding only
    assert torch.allclose(pieces[1], squeezed[:, :2].reshape(3, -1), atol=1e-12)
    assert not torch.allclose(pieces[0], squeezed[:, :2].reshape(3, -1), atol=1e-3)
    assert torch.allclose(log_det, torch.zeros(3, dtype=torch.float64)) and torch.allclose(back, x)


def test_batch_norm_is_ffjords_moving_batch_norm():
    """FFJORD's tabular batch norm: in training the batch is normalised by the running statistics
    as they stood before it (decay 0.1, eps 1e-4), which then move towards the batch's mean and
    unbiased variance; the log-det uses the statistics the batch was normalised with."""
    model = build(DataInfo("random", "tabular", (3,)), n_blocks=1, hidden=[8], batch_norm=True).double()
    bn = model.norms[0]
    assert (bn.momentum, bn.eps) == (0.1, 1e-4)
    with torch.no_grad():
        bn.running_mean.fill_(0.5)
        bn.running_var.fill_(2.0)
        bn.log_gamma.fill_(0.3)
    x = torch.randn(50, 3, dtype=torch.float64) * 3 + 1
    z, log_det = bn.inverse(x)
    assert torch.allclose(z, (x - 0.5) / (2.0 + 1e-4) ** 0.5 * torch.exp(torch.tensor(0.3)) + 0.0)
    assert torch.allclose(log_det, torch.full((50,), 3 * (0.3 - 0.5 * torch.log(torch.tensor(2.0 + 1e-4)).item()),
                                             dtype=torch.float64))
    assert torch.allclose(bn.running_mean[0], 0.9 * 0.5 + 0.1 * x.mean(0))
    assert torch.allclose(bn.running_var[0], 0.9 * 2.0 + 0.1 * x.var(0, unbiased=True))


@pytest.mark.parametrize("kind, shape", [("image", (1, 4, 4)), ("tabular", (3,))])
def test_training_loss_is_on_the_official_scale(kind, shape):
    """Images train on bits/dim (mean NLL / (D ln 2)), as the official code does: the adjoint's error
    control and gradient clipping see its magnitudes. Vectors train on nats."""
    import math

    torch.manual_seed(0)
    model = build(DataInfo("random", kind, shape, levels=256), hidden=[4], adjoint=False)
    x = torch.rand(6, *shape)
    loss, stats = model.training_loss(x)
    scale = math.prod(shape) * math.log(2) if kind == "image" else 1.0
    assert float(loss) == pytest.approx(stats["nll"] / scale, rel=1e-6)
