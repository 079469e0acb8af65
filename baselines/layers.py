"""Layers shared by the discrete flows (RealNVP, Glow, i-ResNet) that normflows 1.7.3 lacks.

Direction convention (normflows'): a ``nf.flows.Flow`` maps latent -> data in ``forward(z)`` and
data -> latent in ``inverse(x)``; each returns the log |det| of the map it applies. The
multi-scale container below lists its flows in data -> latent order and calls ``inverse``.

What is here and why:
- ``RunningBatchNorm``: batch norm as a flow with running statistics used in eval mode
  (normflows' ``BatchNorm`` always uses the batch's statistics, wrong at test time).
- ``MaskedAffineCoupling``: RealNVP's spatial checkerboard coupling with the mask as an input
  channel (normflows' checkerboard ``Split`` reshapes the image into half-width halves instead).
- ``ConvResNet``: the residual conditioner network of RealNVP.
- ``GaussianPrior`` / ``ConditionalGaussianPrior``: Glow's learned top prior and split priors
  (``MultiscaleFlow`` has only unconditional per-level base distributions).
- ``MultiScaleFlow``: squeeze / flows / factor-out levels ending in one whitened latent vector,
  so ``to_latent`` is a bijection whose Jacobian tests can check.
- ``InvertibleResidualBlock``: i-ResNet's block with the biased truncated power-series
  log-determinant (n terms, Hutchinson probes) and a fixed-point inverse with a stated number of
  iterations (normflows' ``Residual`` uses Russian roulette in eval mode and a surrogate in
  training, see docs/models.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import normflows as nf
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from baselines.base import LatentFlowModel, SoftClampScale, std_normal_log_prob  # noqa: F401 (re-exported)


def sum_per_example(t: Tensor) -> Tensor:
    return t.flatten(1).sum(1)


# -- normalisation --------------------------------------------------------------------------
class RunningBatchNorm(nf.flows.Flow):
    """Batch normalisation as a bijection (RealNVP / MAF): batch statistics while training,
    running averages in eval mode, so a test log-density does not depend on the test batch.

    data -> latent: ``z = (x - mean) / sqrt(var + eps) * exp(log_gamma) + beta``.

    ``moving=True`` is FFJORD's moving batch norm (its tabular CNFs, with ``momentum=0.1, eps=1e-4``):
    training batches are normalised by the running averages too (as they stood before the batch), and
    the averages then move towards the batch's mean and unbiased variance; no gradient flows through
    the statistics.
    """

    def __init__(self, shape: Sequence[int], momentum: float = 0.05, eps: float = 1e-5, moving: bool = False):
        super().__init__()
        shape = tuple(shape)
        # per-feature statistics for vectors, per-channel for images
        self.param_shape = (1, shape[0]) + (1,) * (len(shape) - 1)
        self.reduce_dims = [0] + list(range(2, len(shape) + 1))
        self.momentum, self.eps, self.moving = momentum, eps, moving
        self.log_gamma = nn.Parameter(torch.zeros(self.param_shape))
        self.beta = nn.Parameter(torch.zeros(self.param_shape))
        self.register_buffer("running_mean", torch.zeros(self.param_shape))
        self.register_buffer("running_var", torch.ones(self.param_shape))
        self.spatial = math.prod(shape[1:])

    def _stats(self, x: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.training and x is not None and x.shape[0] > 1:
            mean = x.mean(dim=self.reduce_dims, keepdim=True)
            var = x.var(dim=self.reduce_dims, keepdim=True, unbiased=self.moving)
            used = (self.running_mean.clone(), self.running_var.clone()) if self.moving else (mean, var)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
            return used
        return self.running_mean, self.running_var

    def _log_det(self, var: Tensor, batch: int) -> Tensor:
        per_feature = self.log_gamma - 0.5 * torch.log(var + self.eps)
        return (self.spatial * per_feature.sum()).expand(batch)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self._stats(x)
        z = (x - mean) / torch.sqrt(var + self.eps) * torch.exp(self.log_gamma) + self.beta
        return z, self._log_det(var, x.shape[0])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        mean, var = self.running_mean, self.running_var
        x = (z - self.beta) * torch.exp(-self.log_gamma) * torch.sqrt(var + self.eps) + mean
        return x, -self._log_det(var, z.shape[0])


# -- RealNVP image pieces -------------------------------------------------------------------
class ConvResNet(nn.Module):
    """RealNVP's conditioner: 3x3 conv in, ``n_blocks`` residual blocks, zero-initialised 3x3 out."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, n_blocks: int = 2):
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(hidden, hidden, 3, padding=1))
            for _ in range(n_blocks))
        self.out = nn.Conv2d(hidden, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = h + block(h)
        return self.out(F.relu(h))


def checkerboard(height: int, width: int, parity: int) -> Tensor:
    """A (1, 1, H, W) 0/1 mask with ones where (i + j + parity) is even."""
    i = torch.arange(height)[:, None]
    j = torch.arange(width)[None, :]
    return ((i + j + parity) % 2 == 0).float()[None, None]


class MaskedAffineCoupling(nf.flows.Flow):
    """RealNVP's checkerboard coupling: the masked pixels (mask = 1) pass unchanged and
    condition a shift and a bounded log-scale of the others (data -> latent: ``x * exp(s) + t``).
    """

    def __init__(self, shape: Sequence[int], parity: int, hidden: int = 64, n_blocks: int = 2,
                 scale_bound: float = 3.0):
        super().__init__()
        channels, height, width = shape
        self.register_buffer("mask", checkerboard(height, width, parity))
        self.net = nn.Sequential(ConvResNet(channels + 1, 2 * channels, hidden, n_blocks), SoftClampScale(scale_bound))

    def _params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b = self.mask
        h = self.net(torch.cat([x * b, b.expand(x.shape[0], 1, *x.shape[2:])], dim=1))
        shift, log_scale = h[:, 0::2], h[:, 1::2]
        return shift * (1 - b), log_scale * (1 - b)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._params(x)
        return x * torch.exp(log_scale) + shift, sum_per_example(log_scale)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        shift, log_scale = self._params(z)  # masked part of z equals that of x
        return (z - shift) * torch.exp(-log_scale), -sum_per_example(log_scale)


def channel_coupling(channels: int, parity: int, net: Callable[[int, int], nn.Module],
                     scale_bound: float = 3.0) -> nf.flows.Flow:
    """normflows' channel-split affine coupling with a bounded exp scale; parity flips the halves."""
    d_cond = (channels + 1) // 2 if parity == 0 else channels // 2
    d_out = channels - d_cond
    conditioner = nn.Sequential(net(d_cond, 2 * d_out), SoftClampScale(scale_bound))
    return nf.flows.AffineCouplingBlock(conditioner, scale_map="exp",
                                        split_mode="channel" if parity == 0 else "channel_inv")


# -- priors and the multi-scale container ---------------------------------------------------
class StandardNormalPrior(nn.Module):
    """N(0, I): whitening is the identity."""

    def whiten(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])

    def color(self, eps: Tensor, cond: Tensor | None) -> Tensor:
        return eps


class GaussianPrior(nn.Module):
    """A diagonal Gaussian with a learned mean and log-scale per element (Glow's learned top)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))

    def whiten(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        eps = (z - self.mean) * torch.exp(-self.log_scale)
        return eps, -self.log_scale.sum().expand(z.shape[0])

    def color(self, eps: Tensor, cond: Tensor | None) -> Tensor:
        return eps * torch.exp(self.log_scale) + self.mean


class ConditionalGaussianPrior(nn.Module):
    """Glow's split prior: mean and log-scale of the factored-out half from a zero-initialised
    3x3 convolution of the half that goes on."""

    def __init__(self, cond_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(cond_channels, 2 * out_channels, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def _params(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(cond)
        return h[:, 0::2], h[:, 1::2]

    def whiten(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, log_scale = self._params(cond)
        return (z - mean) * torch.exp(-log_scale), -sum_per_example(log_scale)

    def color(self, eps: Tensor, cond: Tensor | None) -> Tensor:
        mean, log_scale = self._params(cond)
        return eps * torch.exp(log_scale) + mean


def squeezable(shape: Sequence[int]) -> bool:
    return shape[1] % 2 == 0 and shape[2] % 2 == 0


def squeezed(shape: Sequence[int]) -> tuple[int, int, int]:
    c, h, w = shape
    return 4 * c, h // 2, w // 2


class MultiScaleFlow(nn.Module):
    """Levels of flows (each in data -> latent order) with half the channels factored out after
    every level but the last; each factored-out part and the last level's output are whitened
    by their prior, and ``to_latent`` returns all of them as one vector.

    ``level_shapes[i]`` is the (C, H, W) that level ``i`` outputs (before its factor-out).
    """

    def __init__(self, levels: Sequence[Sequence[nf.flows.Flow]], priors: Sequence[nn.Module],
                 level_shapes: Sequence[Sequence[int]]):
        super().__init__()
        if not len(levels) == len(priors) == len(level_shapes):
            raise ValueError("one prior and one output shape per level")
        self.levels = nn.ModuleList(nn.ModuleList(level) for level in levels)
        self.priors = nn.ModuleList(priors)
        self.level_shapes = [tuple(s) for s in level_shapes]
        self.latent_shapes = []
        for i, (c, h, w) in enumerate(self.level_shapes):
            last = i == len(self.level_shapes) - 1
            self.latent_shapes.append((c, h, w) if last else (c - c // 2, h, w))

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (whitened latent vector [N, D], log|det| of that map)."""
        log_det = x.new_zeros(x.shape[0])
        parts = []
        h = x
        for i, level in enumerate(self.levels):
            for flow in level:
                h, ld = flow.inverse(h)
                log_det = log_det + ld
            if i < len(self.levels) - 1:
                keep = h.shape[1] // 2
                h, out = h[:, :keep], h[:, keep:]
                eps, ld = self.priors[i].whiten(out, h)
            else:
                eps, ld = self.priors[i].whiten(h, None)
            log_det = log_det + ld
            parts.append(eps.flatten(1))
        return torch.cat(parts, dim=1), log_det

    def from_latent(self, z: Tensor) -> Tensor:
        """The inverse of ``to_latent``."""
        sizes = [math.prod(s) for s in self.latent_shapes]
        parts = [p.reshape(-1, *s) for p, s in zip(torch.split(z, sizes, dim=1), self.latent_shapes)]
        h = None
        for i in range(len(self.levels) - 1, -1, -1):
            if i == len(self.levels) - 1:
                h = self.priors[i].color(parts[i], None)
            else:
                h = torch.cat([h, self.priors[i].color(parts[i], h)], dim=1)
            for flow in reversed(self.levels[i]):
                h, _ = flow.forward(h)
        return h


class VectorFlowModel(LatentFlowModel):
    """A normflows ``NormalizingFlow`` (flows listed latent -> data) over N(0, I) for vector data.

    normflows accumulates log-determinants in a float32 buffer whatever the input's dtype; this
    accumulates in the input's dtype, so float64 checks are exact to float64 precision.
    """

    flow: nf.NormalizingFlow

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (z, log|det dz/dx|)."""
        log_det = x.new_zeros(x.shape[0])
        for flow in reversed(self.flow.flows):
            x, ld = flow.inverse(x)
            log_det = log_det + ld
        return x, log_det

    def from_latent(self, z: Tensor) -> Tensor:
        for flow in self.flow.flows:
            z, _ = flow.forward(z)
        return z

    @property
    def latent_dim(self) -> int:
        return int(self.flow.q0.shape[0])


class MultiScaleModel(LatentFlowModel):
    """A ``MultiScaleFlow`` over whitened latents: the shared body of the image models."""

    def __init__(self, flow: MultiScaleFlow, shape: tuple[int, ...]):
        super().__init__()
        self.flow = flow
        self.shape = tuple(shape)

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, C, H, W] -> (whitened latent [N, D], log|det dz/dx|)."""
        return self.flow.to_latent(x)

    def from_latent(self, z: Tensor) -> Tensor:
        return self.flow.from_latent(z)

    @property
    def latent_dim(self) -> int:
        return math.prod(self.shape)



# -- i-ResNet ---------------------------------------------------------------------------------
class InvertibleResidualBlock(nf.flows.Flow):
    """i-ResNet block (Behrmann et al. 2019): data -> latent ``z = x + g(x)`` with Lip(g) < 1.

    log|det(I + J_g)| = sum_{k>=1} (-1)^{k+1} tr(J_g^k) / k, truncated after ``n_terms`` terms
    and estimated with ``n_probes`` Hutchinson probes (the paper's biased estimator). Training
    uses ``train_terms``/``train_probes``, eval mode ``eval_terms``/``eval_probes``. The inverse
    runs at most ``inverse_iters`` fixed-point iterations ``x <- z - g(x)``, stopping early once
    the largest change is below ``inverse_tol``.
    """

    def __init__(self, g: nn.Module, train_terms: int = 5, eval_terms: int = 20, train_probes: int = 1,
                 eval_probes: int = 1, probe: str = "gaussian", inverse_iters: int = 100, inverse_tol: float = 1e-6):
        super().__init__()
        if probe not in ("gaussian", "rademacher"):
            raise ValueError(f"probe must be gaussian or rademacher, got {probe!r}")
        self.g = g
        self.train_terms, self.eval_terms = train_terms, eval_terms
        self.train_probes, self.eval_probes = train_probes, eval_probes
        self.probe = probe
        self.inverse_iters, self.inverse_tol = inverse_iters, inverse_tol
        self.last_inverse_iters = 0

    def _probes(self, x: Tensor) -> Tensor:
        if self.probe == "gaussian":
            return torch.randn_like(x)
        return torch.randint_like(x, 0, 2) * 2 - 1

    def log_det(self, x: Tensor, n_terms: int, n_probes: int, create_graph: bool) -> tuple[Tensor, Tensor]:
        """(g(x), truncated-series Hutchinson estimate of log|det(I + J_g(x))|) per example."""
        batch = x.shape[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            xr = x if n_probes == 1 else x.repeat(n_probes, *([1] * (x.dim() - 1)))
            gx_all = self.g(xr)
            v = self._probes(xr)
            w = v
            total = x.new_zeros(xr.shape[0])
            for k in range(1, n_terms + 1):
                (w,) = torch.autograd.grad(gx_all, xr, w, create_graph=create_graph, retain_graph=True)
                total = total + (-1) ** (k + 1) / k * sum_per_example(w * v)
        estimate = total.view(n_probes, batch).mean(0)
        gx = gx_all[:batch]
        if not create_graph:
            gx, estimate = gx.detach(), estimate.detach()
        return gx, estimate

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.training:
            terms, probes = self.train_terms, self.train_probes
        else:
            terms, probes = self.eval_terms, self.eval_probes
        create_graph = torch.is_grad_enabled()
        gx, ld = self.log_det(x, terms, probes, create_graph)
        return x + gx, ld

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            x = z.clone()
            self.last_inverse_iters = self.inverse_iters
            for it in range(self.inverse_iters):
                new = z - self.g(x)
                change = (new - x).abs().max()
                x = new
                if change < self.inverse_tol:
                    self.last_inverse_iters = it + 1
                    break
        _, ld = self.log_det(x, self.eval_terms, self.eval_probes, create_graph=False)
        return x, -ld


def lipschitz_mlp(dim: int, hidden: int, n_hidden: int, coeff: float, n_power_iter: int) -> nn.Sequential:
    """g for vectors: spectrally normalised linear layers (each to ``coeff``) with ELU between."""
    sizes = [dim] + [hidden] * n_hidden + [dim]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(nn.ELU())
        layers.append(nf.nets.InducedNormLinear(sizes[i], sizes[i + 1], coeff=coeff, domain=2, codomain=2,
                                                n_iterations=n_power_iter, zero_init=i == len(sizes) - 2))
    return nn.Sequential(*layers)


def lipschitz_cnn(shape: Sequence[int], hidden: int, coeff: float, n_power_iter: int) -> nn.Sequential:
    """g for images (i-ResNet's block): 3x3, 1x1, 3x3 spectrally normalised convolutions with ELU."""
    channels = shape[0]
    spec = [(channels, hidden, 3), (hidden, hidden, 1), (hidden, channels, 3)]
    layers: list[nn.Module] = []
    for i, (cin, cout, k) in enumerate(spec):
        if i:
            layers.append(nn.ELU())
        layers.append(nf.nets.InducedNormConv2d(cin, cout, k, stride=1, padding=k // 2, coeff=coeff, domain=2,
                                                codomain=2, n_iterations=n_power_iter, zero_init=i == 2))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net(torch.zeros(1, *shape))  # fixes the spatial size the convolutions' norms are taken at
    return net


def refresh_spectral_norms(module: nn.Module, n_iterations: int) -> None:
    """Advance the power iteration of every spectrally normalised layer (normflows' forward does not)."""
    nf.utils.update_lipschitz(module, n_iterations)
