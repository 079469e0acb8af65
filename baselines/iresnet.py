"""i-ResNet (Behrmann et al. 2019) for vectors and images.

Invertible residual blocks ``z = x + g(x)`` where every layer of g is spectrally normalised to a
coefficient c < 1 (normflows' ``InducedNormLinear``/``InducedNormConv2d``, refreshed by power
iteration at every training step) with ELU between layers, so Lip(g) < 1. The log-determinant
is the paper's truncated power series with Hutchinson probes (``train_series_terms`` while
training, ``eval_series_terms`` at evaluation); the inverse is a fixed-point iteration with at
most ``inverse_iters`` steps. ActNorm sits before every block. Images use the multi-scale
variant of the official code: a squeeze, then stages of blocks with half the channels factored
out between stages; g has an ELU on its input in every block but the first and default-initialised
convolutions, as there, and ``learn_prior`` puts the official learned diagonal Gaussian (a mean
and log-scale per latent dimension) on the output instead of N(0, I).
"""

from __future__ import annotations

import normflows as nf
import torch
from torch import Tensor

from typing import Annotated

from baselines.base import FlowModel, std_normal_log_prob
from baselines.constraints import Choice, Count, NonNegInt, Positive, Range
from baselines.layers import (PROBES, GaussianPrior, HostFlagActNorm, InvertibleResidualBlock, MultiScaleFlow,
                              MultiScaleModel, StandardNormalPrior, VectorFlowModel, lipschitz_cnn, lipschitz_mlp,
                              refresh_spectral_norms, squeezable, squeezed)

__all__ = ["build", "iresnet_image", "IResNetImage", "IResNetVector"]


class _SpectralRefresh:
    """Mixin: one power-iteration refresh of every spectral norm per training forward."""

    n_power_iter: int

    def _maybe_refresh(self) -> None:
        if self.training and torch.is_grad_enabled():
            refresh_spectral_norms(self, self.n_power_iter)


class IResNetVector(_SpectralRefresh, VectorFlowModel):
    """i-ResNet for vectors (Behrmann et al. 2019): ``n_blocks`` times an ActNorm and an invertible
    residual block ``z = x + g(x)`` over N(0, I), g an MLP of ``n_hidden`` layers of ``hidden`` units,
    every layer spectrally normalised to ``coeff`` < 1 (``n_power_iter`` power iterations per training
    step); ``block_options`` set the power-series log-determinant and the fixed-point inverse
    (``InvertibleResidualBlock``). ``log_prob`` estimates log|det| stochastically, ``log_prob_exact``
    computes it from the full Jacobian.

    >>> _ = torch.manual_seed(0)
    >>> model = IResNetVector(2, n_blocks=2, hidden=8).eval()
    >>> x = torch.randn(5, 2)
    >>> z, log_det = model.to_latent(x)
    >>> torch.allclose(model.from_latent(z), x, atol=1e-5)  # fixed-point inverse
    True
    >>> torch.allclose(model.log_prob(x), model.log_prob_exact(x), atol=1e-2)  # 20-term series vs exact
    True
    """

    def __init__(self, dim: int, n_blocks: int = 10, hidden: int = 128, n_hidden: int = 2, coeff: float = 0.9,
                 n_power_iter: int = 5, **block_options):
        super().__init__()
        self.n_power_iter = n_power_iter
        flows = []  # normflows order: latent -> data; data -> latent each block is actnorm, residual
        for _ in range(n_blocks):
            g = lipschitz_mlp(dim, hidden, n_hidden, coeff, n_power_iter)
            flows += [InvertibleResidualBlock(g, **block_options), HostFlagActNorm((dim,))]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)
        refresh_spectral_norms(self, 200)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self._maybe_refresh()
        return super().log_prob(x, y)

    def log_prob_exact(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) with every block's log|det(I + J_g(x))| from its full Jacobian (one backward pass
        per dimension) instead of the stochastic power series: deterministic and unbiased, so density
        plots of low-dimensional data are smooth rather than speckled. Costs O(D) passes and O(D^3)
        per example; for evaluation only (the result carries no gradient)."""
        h = x.detach()
        dim = h.shape[1]
        eye = torch.eye(dim, dtype=h.dtype, device=h.device)
        log_det = h.new_zeros(h.shape[0])
        with torch.enable_grad():
            for flow in reversed(self.flow.flows):  # data -> latent, as to_latent
                if isinstance(flow, InvertibleResidualBlock):
                    h_in = h.detach().requires_grad_(True)
                    gx = flow.g(h_in)
                    rows = [torch.autograd.grad(gx[:, i].sum(), h_in, retain_graph=i < dim - 1)[0]
                            for i in range(dim)]  # row i: d g_i / d x, per example (g acts per example)
                    jac = torch.stack(rows, 1) + eye
                    log_det = log_det + torch.linalg.slogdet(jac.detach())[1]
                    h = (h_in + gx).detach()
                else:
                    h, ld = flow.inverse(h)
                    h, log_det = h.detach(), log_det + ld.detach()
        return std_normal_log_prob(h) + log_det


class IResNetImage(_SpectralRefresh, MultiScaleModel):
    """The multi-scale i-ResNet (Behrmann et al. 2019), as ``iresnet_image`` and ``build`` make it:
    stages of ActNorm + convolutional residual blocks, half the channels factored out between
    stages, every latent piece under the learned per-element Gaussian or N(0, I); ``log_prob``
    refreshes the spectral norms while training.

    >>> _ = torch.manual_seed(0)
    >>> model = iresnet_image((1, 4, 4), n_stages=2, n_blocks=1, hidden=8).eval()
    >>> x = torch.rand(3, 1, 4, 4)
    >>> z, log_det = model.to_latent(x)
    >>> z.shape, model.flow.latent_shapes, torch.allclose(model.from_latent(z), x, atol=1e-5)
    (torch.Size([3, 16]), [(2, 2, 2), (8, 1, 1)], True)
    >>> model.num_params() - iresnet_image((1, 4, 4), n_stages=2, n_blocks=1, hidden=8,
    ...                                    learn_prior=False).num_params()  # a mean and log-std per latent element
    32
    """

    def __init__(self, flow: MultiScaleFlow, shape: tuple[int, ...], n_power_iter: int):
        super().__init__(flow, shape)
        self.n_power_iter = n_power_iter
        refresh_spectral_norms(self, 200)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        self._maybe_refresh()
        return super().log_prob(x, y)


def iresnet_image(shape: tuple[int, int, int], n_stages: int = 3, n_blocks: int = 16, hidden: int = 512,
                  coeff: float = 0.9, n_power_iter: int = 5, learn_prior: bool = True,
                  **block_options) -> IResNetImage:
    """Stages of (ActNorm, residual block) x n_blocks, each stage starting with a squeeze when the
    size allows, half the channels factored out after every stage but the last; every factored-out
    part and the last stage's output under a learned per-element Gaussian (``learn_prior``) or N(0, I)."""
    levels, priors, shapes = [], [], []
    cur = tuple(shape)
    for stage in range(n_stages):
        level: list[nf.flows.Flow] = []
        if squeezable(cur):
            level.append(nf.flows.Squeeze())
            cur = squeezed(cur)
        for i in range(n_blocks):
            g = lipschitz_cnn(cur, hidden, coeff, n_power_iter, input_elu=stage + i > 0)
            level += [HostFlagActNorm((cur[0], 1, 1)), InvertibleResidualBlock(g, **block_options)]
        levels.append(level)
        out = cur if stage == n_stages - 1 else (cur[0] - cur[0] // 2, cur[1], cur[2])
        priors.append(GaussianPrior(out) if learn_prior else StandardNormalPrior())
        shapes.append(cur)
        if stage < n_stages - 1:
            cur = (cur[0] // 2, cur[1], cur[2])
            if cur[0] < 1:
                raise ValueError(f"iresnet: {n_stages} stages factor out more channels than {shape} has")
    return IResNetImage(MultiScaleFlow(levels, priors, shapes), shape, n_power_iter)


def build(data, n_blocks: Count = 10, hidden: Count = 128, n_hidden: NonNegInt = 2, n_stages: Count = 3,
          coeff: Annotated[float, Range(0, 1, min_open=True, max_open=True)] = 0.9, n_power_iter: Count = 5,
          train_series_terms: Count = 5, eval_series_terms: Count = 20, train_probes: Count = 1,
          eval_probes: Count = 1, probe: Annotated[str, Choice(*PROBES)] = "gaussian", inverse_iters: Count = 100,
          inverse_tol: Positive = 1e-6, learn_prior: bool = True) -> FlowModel:
    """i-ResNet (Behrmann et al. 2019, "Invertible Residual Networks"): residual blocks made
    invertible by spectral normalisation, trained by maximum likelihood with a power-series estimate
    of the log-determinant; ``IResNetVector`` for vectors, ``IResNetImage`` for images.

    ``data``: what the model is for (``name``, ``shape``: ``(D,)`` for toy and tabular data,
    ``(C, H, W)`` for images). Both kinds: ``n_blocks`` residual blocks (10; per stage for images),
    g of width ``hidden`` (128; ``n_hidden`` layers, 2, for vectors), every layer's Lipschitz
    constant at most ``coeff`` (0.9, in (0, 1)) with ``n_power_iter`` power iterations a training
    step (5); ``train_series_terms`` / ``eval_series_terms`` power-series terms (5 / 20) with
    ``train_probes`` / ``eval_probes`` Hutchinson probes (1 / 1) drawn from ``probe`` (gaussian or
    rademacher); the inverse iterates at most ``inverse_iters`` times (100) until a change below
    ``inverse_tol`` (1e-6). Images only: ``n_stages`` stages (3) and the official learned diagonal
    Gaussian prior (``learn_prior``, true; false: N(0, I)). docs/models.md has the full table.

    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,))
    >>> _ = torch.manual_seed(0)
    >>> model = build(toy, n_blocks=2, hidden=8).eval()
    >>> lp = model.log_prob(torch.randn(5, 2))
    >>> type(model).__name__, lp.shape, bool(lp.isfinite().all()), model.num_params()
    ('IResNetVector', torch.Size([5]), True, 236)
    >>> build(toy, coeff=1.0)
    Traceback (most recent call last):
    ...
    ValueError: iresnet: coeff must be in (0, 1) for invertibility, got 1.0
    """
    if not 0 < coeff < 1:
        raise ValueError(f"iresnet: coeff must be in (0, 1) for invertibility, got {coeff}")
    options = dict(train_terms=train_series_terms, eval_terms=eval_series_terms, train_probes=train_probes,
                   eval_probes=eval_probes, probe=probe, inverse_iters=inverse_iters, inverse_tol=inverse_tol)
    if len(data.shape) == 1:
        return IResNetVector(data.shape[0], n_blocks=n_blocks, hidden=hidden, n_hidden=n_hidden, coeff=coeff,
                             n_power_iter=n_power_iter, **options)
    if len(data.shape) == 3:
        return iresnet_image(tuple(data.shape), n_stages=n_stages, n_blocks=n_blocks, hidden=hidden, coeff=coeff,
                             n_power_iter=n_power_iter, learn_prior=learn_prior, **options)
    raise ValueError(f"iresnet needs flat (D,) or image (C, H, W) data, got shape {data.shape} for {data.name}")
