"""The surface every model offers the harness (and any user): log_prob, sample, training_loss."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn

__all__ = ["EVALUATION_PHASES", "evaluation_phase", "FlowModel", "LatentFlowModel", "LOG_2PI", "normal_log_prob", "SoftClampScale", "std_normal_log_prob"]


LOG_2PI = math.log(2 * math.pi)
EVALUATION_PHASES = ("val", "test")


@contextlib.contextmanager
def evaluation_phase(model: nn.Module, phase: str) -> Iterator[None]:
    """Tell ``model`` which split the evaluations inside are for (``"val"`` or ``"test"``): every
    submodule with an ``evaluation_phase`` attribute (a CNF block, which then applies its
    ``val_divergence`` to validation) holds ``phase`` inside and its own value again after; a model
    without such submodules is unaffected.

    >>> layer = nn.Linear(1, 1)
    >>> layer.evaluation_phase = "test"
    >>> with evaluation_phase(nn.Sequential(layer), "val"):
    ...     layer.evaluation_phase
    'val'
    >>> layer.evaluation_phase
    'test'
    """
    if phase not in EVALUATION_PHASES:
        raise ValueError(f"evaluation phase must be one of {EVALUATION_PHASES}, got {phase!r}")
    marked = [m for m in model.modules() if isinstance(getattr(m, "evaluation_phase", None), str)]
    before = [m.evaluation_phase for m in marked]
    for module in marked:
        module.evaluation_phase = phase
    try:
        yield
    finally:
        for module, value in zip(marked, before):
            module.evaluation_phase = value


def std_normal_log_prob(z: Tensor) -> Tensor:
    """Per-example log N(z; 0, I), summed over every non-batch dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).flatten(1).sum(1)


def normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(z; mean, exp(log_std)^2) summed over the last dimension (broadcasting)."""
    return (-0.5 * ((z - mean) * torch.exp(-log_std)).pow(2) - log_std - 0.5 * LOG_2PI).sum(-1)


class FlowModel(nn.Module):
    """Base class of the baselines: a density model with a log-likelihood in nats.

    Subclasses implement ``log_prob`` and ``sample``; ``training_loss`` and ``evaluate`` have
    defaults (mean NLL; per-example NLL) that regularised or conditional models extend.
    """

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x) (or log p(x | y)) per example, in nats, in the model's input space."""
        raise NotImplementedError

    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def training_loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor | float]]:
        """The loss to minimise and scalar stats to log (default: mean negative log-likelihood). Stats
        are detached 0-dim tensors (or floats known on the host): reading a device value here would
        be a host sync per stat; the harness reads them all at once."""
        return -self.log_prob(x, y).mean(), {}

    def evaluate(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example evaluation terms; ``nll*`` terms are densities the harness converts to bits/dim."""
        return {"nll": -self.log_prob(x, y)}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


class LatentFlowModel(FlowModel):
    """A bijection ``to_latent`` onto a flat standard-normal latent of ``latent_dim`` dimensions.

    Subclasses give ``to_latent(x) -> (z, log|det dz/dx|)``, ``from_latent(z)`` and ``latent_dim``;
    the density and sampling follow from them, once for every discrete flow.
    """

    latent_dim: int

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def from_latent(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        z, log_det = self.to_latent(x)
        return std_normal_log_prob(z) + log_det

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        ref = next(self.parameters())
        return self.from_latent(torch.randn(n, self.latent_dim, device=ref.device, dtype=ref.dtype))


class SoftClampScale(nn.Module):
    """Bounds the log-scale channels (odd outputs, normflows' layout) smoothly to (-bound, bound).

    An unbounded exp scale overflows on deep stacks (normflows issue #73); ``bound * tanh(s / bound)``
    is the identity near zero and keeps every coupling invertible with a finite log-determinant.
    """

    def __init__(self, bound: float = 3.0):
        super().__init__()
        self.bound = bound

    def forward(self, param: Tensor) -> Tensor:
        shift, scale = param[:, 0::2], param[:, 1::2]
        scale = self.bound * torch.tanh(scale / self.bound)
        return torch.stack([shift, scale], dim=2).flatten(1, 2)  # re-interleave, any trailing dims
