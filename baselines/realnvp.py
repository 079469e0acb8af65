"""RealNVP (Dinh et al. 2017) for vector data, built on normflows' affine coupling.

Each coupling splits the features in two halves, predicts a shift and a log-scale for one half
from the other with an MLP, and the halves swap between couplings (alternating masks).
"""

from __future__ import annotations

import normflows as nf
import torch
from torch import Tensor, nn

from baselines.base import FlowModel, SoftClampScale


class RealNVP(FlowModel):
    """A stack of ``n_layers`` affine couplings over a standard-normal base."""

    def __init__(self, dim: int, n_layers: int = 8, hidden: int = 64, n_hidden: int = 2, scale_bound: float = 3.0):
        super().__init__()
        if dim < 2:
            raise ValueError(f"RealNVP needs at least 2 dimensions, got {dim}")
        self.dim = dim
        flows = []
        for _ in range(n_layers):
            d_cond, d_out = dim // 2, dim - dim // 2
            conditioner = nn.Sequential(
                nf.nets.MLP([d_cond] + [hidden] * n_hidden + [2 * d_out], init_zeros=True),
                SoftClampScale(scale_bound),
            )
            flows += [nf.flows.AffineCouplingBlock(conditioner, scale_map="exp", split_mode="channel"),
                      nf.flows.Permute(dim, mode="swap")]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim, trainable=False), flows)

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (z, log|det dz/dx|)."""
        return self.flow.inverse_and_log_det(x)

    def from_latent(self, z: Tensor) -> Tensor:
        return self.flow.forward(z)

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        z, log_det = self.to_latent(x)
        return self.flow.q0.log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        z, _ = self.flow.q0(n)
        return self.from_latent(z)


def build(data, n_layers: int = 8, hidden: int = 64, n_hidden: int = 2, scale_bound: float = 3.0) -> RealNVP:
    """RealNVP for vector data (toy, tabular)."""
    if len(data.shape) != 1:
        raise ValueError(f"realnvp (vector) needs flat data, got shape {data.shape} for {data.name}")
    return RealNVP(data.shape[0], n_layers=n_layers, hidden=hidden, n_hidden=n_hidden, scale_bound=scale_bound)
