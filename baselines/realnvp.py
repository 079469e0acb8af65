"""RealNVP (Dinh et al. 2017) for vectors and images, built on normflows' affine couplings.

Vectors (toy, tabular): couplings with MLP conditioners whose halves swap between layers
(alternating masks), with batch normalisation between couplings as the MAF and FFJORD tables
ran it (``RunningBatchNorm``: running statistics in eval mode).

Images: the multi-scale architecture. Each scale but the last: ``n_checker`` checkerboard
couplings, a squeeze, ``n_channel`` channel couplings, then half the channels are factored out;
the last scale: ``n_checker + 1`` checkerboard couplings. Conditioners are residual conv nets.
"""

from __future__ import annotations

import normflows as nf
from torch import nn

from baselines.base import FlowModel, SoftClampScale
from baselines.layers import (ConvResNet, MaskedAffineCoupling, MultiScaleFlow, MultiScaleModel, RunningBatchNorm,
                              StandardNormalPrior, VectorFlowModel, channel_coupling, squeezable, squeezed)


class RealNVP(VectorFlowModel):
    """A stack of ``n_layers`` affine couplings over a standard-normal base (vector data)."""

    def __init__(self, dim: int, n_layers: int = 8, hidden: int = 64, n_hidden: int = 2, scale_bound: float = 3.0,
                 batch_norm: bool = True):
        super().__init__()
        if dim < 2:
            raise ValueError(f"RealNVP needs at least 2 dimensions, got {dim}")
        self.dim = dim
        flows = []  # normflows order: latent -> data
        for i in range(n_layers):
            d_cond, d_out = (dim + 1) // 2, dim // 2  # normflows' channel split gives the first half the extra one
            conditioner = nn.Sequential(
                nf.nets.MLP([d_cond] + [hidden] * n_hidden + [2 * d_out], init_zeros=True),
                SoftClampScale(scale_bound),
            )
            flows += [nf.flows.AffineCouplingBlock(conditioner, scale_map="exp", split_mode="channel"),
                      nf.flows.Permute(dim, mode="swap")]
            if batch_norm and i < n_layers - 1:
                flows.append(RunningBatchNorm((dim,)))
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)


def realnvp_image(shape: tuple[int, int, int], n_scales: int = 3, n_checker: int = 3, n_channel: int = 3,
                  hidden: int = 64, n_blocks: int = 2, scale_bound: float = 3.0) -> MultiScaleModel:
    """RealNVP's multi-scale image model; a scale whose size is odd keeps its resolution (no squeeze)."""
    levels, priors, shapes = [], [], []
    cur = tuple(shape)
    for s in range(n_scales):
        last = s == n_scales - 1
        level: list[nf.flows.Flow] = []
        n_cb = n_checker + 1 if last else n_checker
        for i in range(n_cb):
            level.append(MaskedAffineCoupling(cur, parity=i % 2, hidden=hidden, n_blocks=n_blocks,
                                              scale_bound=scale_bound))
        if not last:
            if squeezable(cur):
                level.append(nf.flows.Squeeze())
                cur = squeezed(cur)
            if cur[0] >= 2:
                for i in range(n_channel):
                    level.append(channel_coupling(cur[0], i % 2, lambda a, b: ConvResNet(a, b, hidden, n_blocks),
                                                  scale_bound))
        levels.append(level)
        priors.append(StandardNormalPrior())
        shapes.append(cur)
        if not last:
            cur = (cur[0] // 2, cur[1], cur[2])
            if cur[0] < 1:
                raise ValueError(f"realnvp: {n_scales} scales factor out more channels than {shape} has")
    return MultiScaleModel(MultiScaleFlow(levels, priors, shapes), shape)


def build(data, n_layers: int = 8, hidden: int = 64, n_hidden: int = 2, scale_bound: float = 3.0,
          batch_norm: bool = True, n_scales: int = 3, n_checker: int = 3, n_channel: int = 3,
          n_blocks: int = 2) -> FlowModel:
    """RealNVP: couplings with MLP conditioners for vectors (n_layers, hidden, n_hidden, batch_norm),
    the multi-scale architecture for images (n_scales, n_checker, n_channel, hidden channels, n_blocks)."""
    if len(data.shape) == 1:
        return RealNVP(data.shape[0], n_layers=n_layers, hidden=hidden, n_hidden=n_hidden, scale_bound=scale_bound,
                       batch_norm=batch_norm)
    if len(data.shape) == 3:
        return realnvp_image(tuple(data.shape), n_scales=n_scales, n_checker=n_checker, n_channel=n_channel,
                             hidden=hidden, n_blocks=n_blocks, scale_bound=scale_bound)
    raise ValueError(f"realnvp needs flat (D,) or image (C, H, W) data, got shape {data.shape} for {data.name}")
