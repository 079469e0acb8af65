"""Glow (Kingma & Dhariwal 2018) for images and vectors, built on normflows.

One step of flow, data -> latent: ActNorm (data-dependent initialisation on the first batch),
an invertible 1x1 convolution parameterised by its LU decomposition, an affine coupling with
Glow's sigmoid scale (``sigmoid(h + 2)``) and a zero-initialised conditioner. Images: L levels of
squeeze + K steps, with half the channels factored out after every level but the last under a
learned split prior (a zero-initialised 3x3 conv of the other half) and a learned top prior.
Vectors: K steps with a dense LU-parameterised linear map in place of the 1x1 convolution.
"""

from __future__ import annotations

import warnings

import normflows as nf

from baselines.base import FlowModel
from baselines.layers import (ConditionalGaussianPrior, GaussianPrior, MultiScaleFlow, MultiScaleModel, VectorFlowModel,
                              squeezable, squeezed)


class GlowVector(VectorFlowModel):
    """K Glow steps (ActNorm, LU linear, sigmoid-scale affine coupling with an MLP) over N(0, I)."""

    def __init__(self, dim: int, n_steps: int = 8, hidden: int = 64, n_hidden: int = 2):
        super().__init__()
        if dim < 2:
            raise ValueError(f"Glow needs at least 2 dimensions, got {dim}")
        flows = []  # normflows order: latent -> data, so each step is listed coupling, linear, actnorm
        for _ in range(n_steps):
            d_cond, d_out = (dim + 1) // 2, dim // 2
            net = nf.nets.MLP([d_cond] + [hidden] * n_hidden + [2 * d_out], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(net, scale_map="sigmoid", split_mode="channel"),
                      nf.flows.InvertibleAffine(dim, use_lu=True),
                      nf.flows.ActNorm((dim,))]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def glow_image(shape: tuple[int, int, int], n_levels: int = 3, n_steps: int = 32, hidden: int = 512,
               split_prior: bool = True) -> MultiScaleModel:
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
        for _ in range(n_steps):
            # GlowBlock lists coupling, 1x1 conv, actnorm in the latent -> data order; its inverse
            # (used here, data -> latent) runs actnorm, 1x1 conv, coupling: one Glow step.
            level.append(nf.flows.GlowBlock(cur[0], hidden, scale_map="sigmoid", split_mode="channel",
                                            init_zeros=True, use_lu=True, net_actnorm=True))
        levels.append(level)
        shapes.append(cur)
        if last:
            priors.append(GaussianPrior(cur))
        else:
            keep = cur[0] // 2
            priors.append(ConditionalGaussianPrior(keep, cur[0] - keep) if split_prior else GaussianPrior(
                (cur[0] - keep, cur[1], cur[2])))
            cur = (keep, cur[1], cur[2])
    return MultiScaleModel(MultiScaleFlow(levels, priors, shapes), shape)


def build(data, n_levels: int = 3, n_steps: int = 32, hidden: int = 512, n_hidden: int = 2,
          split_prior: bool = True) -> FlowModel:
    """Glow: L levels (n_levels) of K steps (n_steps) with conv hidden channels for images; K steps
    with MLP conditioners (hidden, n_hidden) for vectors."""
    with warnings.catch_warnings():  # normflows' LU set-up calls the deprecated torch.lu (harmless)
        warnings.filterwarnings("ignore", message="torch.lu is deprecated")
        if len(data.shape) == 1:
            return GlowVector(data.shape[0], n_steps=n_steps, hidden=hidden, n_hidden=n_hidden)
        if len(data.shape) == 3:
            return glow_image(tuple(data.shape), n_levels=n_levels, n_steps=n_steps, hidden=hidden,
                              split_prior=split_prior)
    raise ValueError(f"glow needs flat (D,) or image (C, H, W) data, got shape {data.shape} for {data.name}")
