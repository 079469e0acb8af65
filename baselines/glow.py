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
from baselines.layers import (ConditionalGaussianPrior, GaussianPrior, GlowStep, LearnedTopPrior, MultiScaleFlow,
                              MultiScaleModel, StandardNormalPrior, VectorFlowModel, squeezable, squeezed)

__all__ = ["build", "glow_image", "GlowVector"]


class GlowVector(VectorFlowModel):
    """K Glow steps (ActNorm, invertible linear map, sigmoid-scale affine coupling with an MLP) over N(0, I)."""

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
                      nf.flows.ActNorm((dim,))]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def glow_image(shape: tuple[int, int, int], n_levels: int = 3, n_steps: int = 32, hidden: int = 512,
               split_prior: bool = True, lu: bool = False, learn_top: bool = True) -> MultiScaleModel:
    """Glow's multi-scale model; a level whose spatial size is odd skips its squeeze."""
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
    return MultiScaleModel(MultiScaleFlow(levels, priors, shapes), shape)


def build(data, n_levels: Count = 3, n_steps: Count = 32, hidden: Count = 512, n_hidden: NonNegInt = 2,
          split_prior: bool = True, lu: bool = False, learn_top: bool = True) -> FlowModel:
    """Glow: L levels (n_levels) of K steps (n_steps) with conv hidden channels, split priors and a
    learned top prior (learn_top) for images; K steps with MLP conditioners (hidden, n_hidden) for
    vectors. ``lu``: LU-parameterised 1x1 convolutions / linear maps instead of plain matrices."""
    with warnings.catch_warnings():  # normflows' LU set-up calls the deprecated torch.lu (harmless)
        warnings.filterwarnings("ignore", message="torch.lu is deprecated")
        if len(data.shape) == 1:
            return GlowVector(data.shape[0], n_steps=n_steps, hidden=hidden, n_hidden=n_hidden, lu=lu)
        if len(data.shape) == 3:
            return glow_image(tuple(data.shape), n_levels=n_levels, n_steps=n_steps, hidden=hidden,
                              split_prior=split_prior, lu=lu, learn_top=learn_top)
    raise ValueError(f"glow needs flat (D,) or image (C, H, W) data, got shape {data.shape} for {data.name}")
