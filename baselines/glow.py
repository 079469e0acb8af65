"""Glow (Kingma & Dhariwal 2018) for images and vectors.

Images, as openai/glow builds them: L levels of squeeze + K steps, each step data -> latent
ActNorm (log-scale factor 3, data-dependent initialisation on the first batch), an invertible
1x1 convolution (a plain weight matrix, the official code's default; ``lu=True`` for the
LU-parameterised variant) and an affine coupling with the scale ``sigmoid(h + 2)`` and an
edge-padded 3x3 / 1x1 / zero-initialised 3x3 conditioner; half the channels are factored out
after every level but the last under a learned split prior (a zero-initialised conv of the other
half), and the top latent has Glow's learned prior (``learn_top``) or N(0, I).
Vectors: K normflows steps (affine coupling with an MLP, a dense invertible linear map, ActNorm).
"""

from __future__ import annotations

import warnings

import normflows as nf

from baselines.base import FlowModel
from baselines.constraints import Count, NonNegInt
from baselines.layers import (ConditionalGaussianPrior, GaussianPrior, GlowStep, HostFlagActNorm, LearnedTopPrior,
                              MultiScaleFlow, MultiScaleModel, StandardNormalPrior, VectorFlowModel, squeezable, squeezed)

__all__ = ["build", "glow_image", "GlowVector"]


class GlowVector(VectorFlowModel):
    """Glow for vectors (Kingma & Dhariwal 2018): ``n_steps`` steps over N(0, I), each, data ->
    latent, an ActNorm (initialised from the first batch it sees so that batch comes out with zero
    mean and unit variance per dimension), an invertible linear map (a plain matrix, or
    LU-parameterised with ``lu``) and an affine coupling with the scale ``sigmoid(h + 2)`` whose
    conditioner is an MLP of ``n_hidden`` layers of ``hidden`` units. ``dim`` must be at least 2.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = GlowVector(3, n_steps=2, hidden=8).eval()
    >>> x = 2 * torch.randn(4, 3) + 1
    >>> z, log_det = model.to_latent(x)  # the first batch initialises every ActNorm
    >>> torch.allclose(z.mean(0), torch.zeros(3), atol=1e-5), torch.allclose(model.from_latent(z), x, atol=1e-5)
    (True, True)
    >>> log_det.shape, model.num_params()
    (torch.Size([4]), 258)
    """

    def __init__(self, dim: int, n_steps: int = 8, hidden: int = 64, n_hidden: int = 2, lu: bool = False):
        super().__init__()
        if dim < 2:
            raise ValueError(f"Glow needs at least 2 dimensions, got {dim}")
        flows = []  # normflows order: latent -> data, so each step is listed coupling, linear, actnorm
        for _ in range(n_steps):
            d_cond, d_out = (dim + 1) // 2, dim // 2
            net = nf.nets.MLP([d_cond] + [hidden] * n_hidden + [2 * d_out], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(net, scale_map="sigmoid", split_mode="channel"),
                      nf.flows.InvertibleAffine(dim, use_lu=lu),
                      HostFlagActNorm((dim,))]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def glow_image(shape: tuple[int, int, int], n_levels: int = 3, n_steps: int = 32, hidden: int = 512,
               split_prior: bool = True, lu: bool = False, learn_top: bool = True) -> MultiScaleModel:
    """Glow's multi-scale model (Kingma & Dhariwal 2018), the ``MultiScaleModel`` that ``build``
    returns for images: ``n_levels`` levels of a squeeze and ``n_steps`` steps with ``hidden``
    conditioner channels, half the channels factored out after every level but the last under a
    learned conditional prior (``split_prior``; else a learned unconditional Gaussian), Glow's
    learned top prior (``learn_top``; else N(0, I)), ``lu`` for LU-parameterised 1x1 convolutions.
    A level whose spatial size is odd skips its squeeze.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = glow_image((1, 4, 4), n_levels=2, n_steps=1, hidden=8)
    >>> x = torch.rand(3, 1, 4, 4)
    >>> z, log_det = model.to_latent(x)
    >>> z.shape, model.flow.latent_shapes, torch.allclose(model.from_latent(z), x, atol=1e-5)
    (torch.Size([3, 16]), [(2, 2, 2), (8, 1, 1)], True)
    >>> model.num_params(), model.sample(2).shape
    (4464, torch.Size([2, 1, 4, 4]))
    """
    levels, priors, shapes = [], [], []
    cur = tuple(shape)
    for lvl in range(n_levels):
        last = lvl == n_levels - 1
        level: list[nf.flows.Flow] = []
        if squeezable(cur):
            level.append(nf.flows.Squeeze())
            cur = squeezed(cur)
        if cur[0] < 2:
            raise ValueError(f"glow: level {lvl} has {cur[0]} channel(s) at {cur}; couplings need 2 or more")
        level += [GlowStep(cur[0], hidden, lu=lu) for _ in range(n_steps)]
        levels.append(level)
        shapes.append(cur)
        if last:
            priors.append(LearnedTopPrior(cur) if learn_top else StandardNormalPrior())
        else:
            keep = cur[0] // 2
            priors.append(ConditionalGaussianPrior(keep, cur[0] - keep) if split_prior else GaussianPrior(
                (cur[0] - keep, cur[1], cur[2])))
            cur = (keep, cur[1], cur[2])
    return MultiScaleModel(MultiScaleFlow(levels, priors, shapes), shape, channels_last=True)


def build(data, n_levels: Count = 3, n_steps: Count = 32, hidden: Count = 512, n_hidden: NonNegInt = 2,
          split_prior: bool = True, lu: bool = False, learn_top: bool = True) -> FlowModel:
    """Glow (Kingma & Dhariwal 2018, "Glow: Generative Flow with Invertible 1x1 Convolutions"):
    steps of ActNorm, an invertible 1x1 convolution and an affine coupling, trained by maximum
    likelihood; ``GlowVector`` for vectors, ``glow_image``'s multi-scale model for images.

    ``data``: what the model is for (``name``, ``shape``: ``(D,)`` for toy and tabular data,
    ``(C, H, W)`` for images); an option of the other kind is ignored. Images: ``n_levels`` levels L
    (3) of ``n_steps`` steps K (32) with ``hidden`` conditioner channels (512), learned conditional
    split priors (``split_prior``, true) and a learned top prior (``learn_top``, true). Vectors:
    ``n_steps`` steps in total (32) with MLP conditioners of ``n_hidden`` (2) layers of ``hidden``
    (512) units. Both: ``lu`` (false, openai/glow's default) LU-parameterises the 1x1 convolutions /
    linear maps instead of plain matrices. docs/models.md has the full table.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,))
    >>> model = build(toy, n_steps=2, hidden=8).eval()
    >>> lp = model.log_prob(torch.randn(5, 2))
    >>> type(model).__name__, lp.shape, bool(lp.isfinite().all()), model.num_params()
    ('GlowVector', torch.Size([5]), True, 228)
    >>> digits = SimpleNamespace(name="digits", kind="image", shape=(1, 8, 8), levels=17, num_classes=10)
    >>> model = build(digits, n_levels=2, n_steps=1, hidden=8)
    >>> type(model).__name__, model.flow.latent_shapes
    ('MultiScaleModel', [(2, 4, 4), (8, 2, 2)])
    """
    with warnings.catch_warnings():  # normflows' LU set-up calls the deprecated torch.lu (harmless)
        warnings.filterwarnings("ignore", message="torch.lu is deprecated")
        if len(data.shape) == 1:
            return GlowVector(data.shape[0], n_steps=n_steps, hidden=hidden, n_hidden=n_hidden, lu=lu)
        if len(data.shape) == 3:
            return glow_image(tuple(data.shape), n_levels=n_levels, n_steps=n_steps, hidden=hidden,
                              split_prior=split_prior, lu=lu, learn_top=learn_top)
    raise ValueError(f"glow needs flat (D,) or image (C, H, W) data, got shape {data.shape} for {data.name}")
