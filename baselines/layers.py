"""Layers shared by the discrete flows (RealNVP, Glow, i-ResNet) that normflows 1.7.3 lacks.

Direction convention (normflows'): a ``nf.flows.Flow`` maps latent -> data in ``forward(z)`` and
data -> latent in ``inverse(x)``; each returns the log |det| of the map it applies. The
multi-scale container below lists its flows in data -> latent order and calls ``inverse``.

What is here and why:
- ``RunningBatchNorm``: batch norm as a flow with running statistics used in eval mode
  (normflows' ``BatchNorm`` always uses the batch's statistics, wrong at test time).
- RealNVP's image coupling as the authors' TensorFlow code builds it (``RealNVPCoupling``:
  checkerboard or channel-wise, scale ``s = scale * tanh(h)``, batch normalisation of the
  coupling's output ``OutputBatchNorm``) with its weight-normalised residual conditioner
  (``RealNVPResNet``, ``WNConv2d``, ``ShiftBatchNorm``); normflows has neither the spatial
  checkerboard mask nor these conditioners.
- Glow's pieces as openai/glow builds them (``GlowStep``: ``GlowActNorm`` with the log-scale
  factor 3, normflows' invertible 1x1 convolution, ``GlowAffineCoupling`` with the edge-padded
  ``EdgePaddedConv2d`` conditioner and zero-initialised output), its learned top prior
  (``LearnedTopPrior``) and split priors (``ConditionalGaussianPrior``).
- ``GaussianPrior``: a learned diagonal Gaussian per element (i-ResNet's learned prior).
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
from typing import Any

import normflows as nf
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from baselines import shards
from baselines.base import LatentFlowModel

__all__ = ["ActNorm", "batch_rows", "checkerboard", "ConditionalGaussianPrior", "EdgePaddedConv2d", "GaussianPrior",
           "GlowActNorm", "GlowAffineCoupling", "GlowStep", "HostMirroredFlag", "InvertibleResidualBlock",
           "LearnedTopPrior", "lipschitz_cnn", "lipschitz_mlp", "MultiScaleFlow", "MultiScaleModel",
           "OutputBatchNorm", "PROBES", "rademacher_like", "RealNVPCoupling", "RealNVPResNet", "refresh_spectral_norms",
           "RunningBatchNorm", "ShiftBatchNorm", "SpectralNormConv2d", "SpectralNormLinear", "squeezable", "squeezed",
           "StandardNormalPrior", "sum_per_example", "VectorFlowModel", "WNConv2d"]


def batch_rows(x: Tensor) -> int:
    """Rows of the batch ``x`` belongs to: the global batch's in a sharded multi-process step."""
    shard = shards.current()
    return x.shape[0] if shard is None else shard.total


def rademacher_like(x: Tensor) -> Tensor:
    """Random signs (+1 or -1, equally likely) shaped like ``x``."""
    return torch.randint_like(x, 0, 2) * 2 - 1


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
        if self.training and x is not None and batch_rows(x) > 1:
            mean = shards.batch_mean(x, self.reduce_dims)
            var = shards.batch_var(x, self.reduce_dims, unbiased=self.moving)
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


# -- RealNVP image pieces (Dinh et al. 2017, as their TensorFlow code builds them) -------------
class WNConv2d(nn.Module):
    """RealNVP's weight-normalised convolution: ``w = magnitude * v / ||v||`` per output channel
    (only the unit-norm direction when ``magnitude`` is false), ``v`` uniform in (-std, std) with
    ``std = sqrt(2 / in_channels)``, 'same' padding. ``magnitude`` is the "weight scale" that the
    paper's L2 penalty acts on (``RealNVPImage.weight_decay_params``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True, magnitude: bool = True,
                 weight_norm: bool = True):
        super().__init__()
        std = math.sqrt(2.0 / in_channels)
        self.v = nn.Parameter(torch.empty(out_channels, in_channels, kernel, kernel).uniform_(-std, std))
        self.weight_norm = weight_norm
        init = std * math.sqrt(in_channels * kernel * kernel / 12.0)
        self.magnitude = nn.Parameter(torch.full((out_channels,), init)) if magnitude and weight_norm else None
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.padding = kernel // 2

    def weight(self) -> Tensor:
        if not self.weight_norm:
            return self.v
        w = self.v / self.v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        return w if self.magnitude is None else w * self.magnitude.view(-1, 1, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class ShiftBatchNorm(nn.Module):
    """Batch normalisation with a learned shift and no learned scale (RealNVP's conditioner BN):
    batch statistics in training, running averages (momentum 0.1) in eval mode, eps 1e-4."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = shards.BatchNorm2d(channels, eps=1e-4, momentum=0.1, affine=False)
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x) + self.beta


class RealNVPResNet(nn.Module):
    """RealNVP's conditioner: 3x3 conv in, ``n_blocks`` pre-activation residual blocks (BN, ReLU,
    3x3 conv, BN, ReLU, 3x3 conv), 1x1 skip connections from the input conv and from every block
    summed, then BN, ReLU and a 1x1 conv out. Convolutions are weight-normalised (``WNConv2d``);
    without ``batch_norm`` the BNs are left out and the inner convs get biases."""

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, n_blocks: int = 8,
                 batch_norm: bool = True, weight_norm: bool = True):
        super().__init__()

        def norm() -> nn.Module:
            return ShiftBatchNorm(hidden) if batch_norm else nn.Identity()

        def conv(cin: int, cout: int, k: int, bias: bool = True, magnitude: bool = True) -> WNConv2d:
            return WNConv2d(cin, cout, k, bias=bias, magnitude=magnitude, weight_norm=weight_norm)

        self.inp = conv(in_channels, hidden, 3, magnitude=False)
        self.skip_in = conv(hidden, hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(norm(), nn.ReLU(), conv(hidden, hidden, 3, bias=not batch_norm, magnitude=False), norm(),
                          nn.ReLU(), conv(hidden, hidden, 3))
            for _ in range(n_blocks))
        self.skips = nn.ModuleList(conv(hidden, hidden, 1) for _ in range(n_blocks))
        self.out = nn.Sequential(norm(), nn.ReLU(), conv(hidden, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        out = self.skip_in(h)
        for block, skip in zip(self.blocks, self.skips):
            h = h + block(h)
            out = out + skip(h)
        return self.out(out)


class OutputBatchNorm(nn.Module):
    """RealNVP's batch normalisation of a coupling's output (no learned parameters): the
    transformed elements (``weight`` = 1) are standardised per channel by batch statistics of
    ``x * weight`` in training (running averages, momentum 0.1, in eval mode); ``weight`` = 0
    elements pass unchanged. Returns (output, per-element log-scale of the map)."""

    def __init__(self, channels: int, eps: float = 1e-4, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.register_buffer("running_mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("running_var", torch.ones(1, channels, 1, 1))

    def stats(self, x: Tensor | None, weight: Tensor) -> tuple[Tensor, Tensor]:
        if self.training and x is not None and batch_rows(x) > 1:
            masked = x * weight
            mean = shards.batch_mean(masked, (0, 2, 3))
            var = shards.batch_var(masked, (0, 2, 3), unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach(), self.momentum)
            return mean, var + self.eps
        return self.running_mean, self.running_var + self.eps

    def inverse(self, x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """data -> latent."""
        mean, var = self.stats(x, weight)
        log_scale = -0.5 * torch.log(var) * weight
        return (x - mean * weight) * torch.exp(log_scale), log_scale.expand_as(x)

    def forward(self, z: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
        """latent -> data (running statistics)."""
        mean, var = self.stats(None, weight)
        log_scale = -0.5 * torch.log(var) * weight
        return z * torch.exp(-log_scale) + mean * weight, (-log_scale).expand_as(z)


def checkerboard(height: int, width: int, parity: int) -> Tensor:
    """A (1, 1, H, W) 0/1 mask with ones where (i + j + parity) is even."""
    i = torch.arange(height)[:, None]
    j = torch.arange(width)[None, :]
    return ((i + j + parity) % 2 == 0).float()[None, None]


class RealNVPCoupling(nf.flows.Flow):
    """RealNVP's affine coupling, checkerboard (``mask`` given) or channel-wise (``mask`` None).

    data -> latent on the transformed elements: ``y = (x + t) * exp(s)`` with
    ``s = scale * tanh(h)`` (the paper's "hyperbolic tangent multiplied by a learned scale"),
    then ``OutputBatchNorm`` when ``batch_norm``. The conditioner sees the conditioning part batch
    normalised (checkerboard: times 2, as the official code), concatenated with its negation (so
    the first ReLU keeps both signs) and, for a checkerboard, the mask as an extra channel.
    Channel-wise: ``cond_first`` says whether the first or the second half conditions.
    """

    def __init__(self, channels: int, hidden: int, n_blocks: int, mask: Tensor | None = None,
                 cond_first: bool = True, batch_norm: bool = True, weight_norm: bool = True,
                 scale_init: float = 0.0):
        super().__init__()
        self.checker = mask is not None
        if self.checker:
            self.register_buffer("mask", mask)
            c_cond, c_out, extra = channels, channels, 1
        else:
            self.cond_first = cond_first
            half = channels // 2
            self.split = half if cond_first else channels - half
            c_cond = self.split if cond_first else channels - self.split
            c_out = channels - c_cond
            extra = 0
        self.in_norm = ShiftBatchNorm(c_cond) if batch_norm else nn.Identity()
        self.net = RealNVPResNet(2 * c_cond + extra, 2 * c_out, hidden, n_blocks, batch_norm, weight_norm)
        self.scale = nn.Parameter(torch.tensor(float(scale_init)))
        self.out_norm = OutputBatchNorm(c_out) if batch_norm else None

    def _halves(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x[:, :self.split], x[:, self.split:]
        return (a, b) if self.cond_first else (b, a)

    def _join(self, cond: Tensor, out: Tensor) -> Tensor:
        return torch.cat([cond, out] if self.cond_first else [out, cond], dim=1)

    def _params(self, cond: Tensor) -> tuple[Tensor, Tensor]:
        h = self.in_norm(cond)
        if self.checker:
            h = 2.0 * h
            h = torch.cat([h, -h, self.mask.expand(cond.shape[0], 1, *cond.shape[2:])], dim=1)
        else:
            h = torch.cat([h, -h], dim=1)
        shift, raw = self.net(F.relu(h)).chunk(2, dim=1)
        return shift, self.scale * torch.tanh(raw)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """data -> latent, with log|det|."""
        if self.checker:
            keep = self.mask
            shift, log_scale = self._params(x * keep)
            free = 1 - keep
            y = (x + shift * free) * torch.exp(log_scale * free)
            log_det = log_scale * free
            if self.out_norm is not None:
                y, ld = self.out_norm.inverse(y, free)
                log_det = log_det + ld
            return y, sum_per_example(log_det)
        cond, x2 = self._halves(x)
        shift, log_scale = self._params(cond)
        y = (x2 + shift) * torch.exp(log_scale)
        log_det = log_scale
        if self.out_norm is not None:
            y, ld = self.out_norm.inverse(y, torch.ones_like(y[:1, :, :1, :1]))
            log_det = log_det + ld
        return self._join(cond, y), sum_per_example(log_det)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """latent -> data, with log|det| (eval-mode statistics)."""
        if self.checker:
            keep, free = self.mask, 1 - self.mask
            log_det = torch.zeros_like(z)
            if self.out_norm is not None:
                z, ld = self.out_norm.forward(z, free)
                log_det = log_det + ld
            shift, log_scale = self._params(z * keep)  # the kept elements are unchanged
            x = z * torch.exp(-log_scale * free) - shift * free
            return x, sum_per_example(log_det - log_scale * free)
        cond, y = self._halves(z)
        log_det = torch.zeros_like(y)
        if self.out_norm is not None:
            y, ld = self.out_norm.forward(y, torch.ones_like(y[:1, :, :1, :1]))
            log_det = log_det + ld
        shift, log_scale = self._params(cond)
        x2 = y * torch.exp(-log_scale) - shift
        return self._join(cond, x2), sum_per_example(log_det - log_scale)


# -- Glow image pieces (as openai/glow builds them) ------------------------------------------
class HostMirroredFlag:
    """Mixin: a 0/1 buffer (``flag_buffer`` names it) mirrored in a Python bool, ``host_flag``, that
    forwards read instead of the buffer: reading a device buffer on the host is a sync (a stall on
    CUDA) every forward, the Python bool is free. The buffer stays in state dicts (checkpoints keep
    it); loading one refreshes the mirror (the only host read of the buffer)."""

    flag_buffer: str
    host_flag: bool = False

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)  # type: ignore[misc]
        self.host_flag = bool(getattr(self, self.flag_buffer))


class ActNorm(HostMirroredFlag, nf.flows.ActNorm):
    """normflows' ActNorm (same parameters, buffer and data-dependent initialisation on the first
    batch: the mean and the unbiased standard deviation + 1e-6), with the statistics over the global
    batch of a multi-process step and its ``data_dep_init_done`` flag mirrored on the host, so no
    forward after the first reads it."""

    flag_buffer = "data_dep_init_done"

    def _statistics(self, z: Tensor) -> tuple[Tensor, Tensor]:
        dims = self.batch_dims
        return shards.batch_mean(z, dims), torch.log(shards.batch_var(z, dims, unbiased=True).sqrt() + 1e-6)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if not self.host_flag:  # latent -> data first: the map that sends this batch to zero mean, unit scale
            with torch.no_grad():
                mean, log_std = self._statistics(z)
                self.s.data, self.t.data = -log_std, -mean * torch.exp(-log_std)
                self.data_dep_init_done.fill_(1.0)
            self.host_flag = True
        return nf.flows.AffineConstFlow.forward(self, z)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if not self.host_flag:
            with torch.no_grad():
                mean, log_std = self._statistics(z)
                self.s.data, self.t.data = log_std, mean
                self.data_dep_init_done.fill_(1.0)
            self.host_flag = True
        return nf.flows.AffineConstFlow.inverse(self, z)


class GlowActNorm(HostMirroredFlag, nf.flows.Flow):
    """Glow's ActNorm, data -> latent ``z = (x + b) * exp(logscale_factor * p)`` per channel, with
    the official log-scale factor 3 and data-dependent initialisation on the first batch it sees
    (``b = -mean``, ``exp(3 p) = 1 / (std + 1e-6)``). The flag is a buffer, so it survives
    checkpoints, mirrored on the host (``HostMirroredFlag``) so forwards never read it."""

    flag_buffer = "initialised"

    def __init__(self, channels: int, logscale_factor: float = 3.0):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.p = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.logscale_factor = logscale_factor
        self.register_buffer("initialised", torch.tensor(0.0))
        self.host_flag = False

    def _init(self, x: Tensor) -> None:
        with torch.no_grad():
            mean = shards.batch_mean(x, (0, 2, 3))
            std = shards.batch_mean((x - mean).pow(2), (0, 2, 3)).sqrt()
            self.b.copy_(-mean)
            self.p.copy_(torch.log(1.0 / (std + 1e-6)) / self.logscale_factor)
            self.initialised.fill_(1.0)
            self.host_flag = True

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.host_flag:
            self._init(x)
        log_scale = self.logscale_factor * self.p
        return (x + self.b) * torch.exp(log_scale), (log_scale.sum() * x.shape[2] * x.shape[3]).expand(x.shape[0])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_scale = self.logscale_factor * self.p
        return z * torch.exp(-log_scale) - self.b, (-log_scale.sum() * z.shape[2] * z.shape[3]).expand(z.shape[0])


class EdgePaddedConv2d(nn.Module):
    """openai/glow's 'same' convolution: zero padding plus one extra input channel that is 1 on the
    padded border, so the net can tell padding from a zero-valued input. ``zeros``: Glow's
    ``conv2d_zeros`` (weights and bias zero, output times ``exp(3 * logs)`` per channel); otherwise
    weights N(0, 0.05) and no bias (an ActNorm follows)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, zeros: bool = False,
                 logscale_factor: float = 3.0):
        super().__init__()
        self.pad = kernel // 2
        extra = 1 if self.pad else 0
        self.conv = nn.Conv2d(in_channels + extra, out_channels, kernel, bias=zeros)
        self.zeros, self.logscale_factor = zeros, logscale_factor
        if zeros:
            nn.init.zeros_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
            self.logs = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        else:
            nn.init.normal_(self.conv.weight, std=0.05)

    def forward(self, x: Tensor) -> Tensor:
        return self.scaled(x)

    def scaled(self, x: Tensor, scale: Tensor | None = None, shift: Tensor | None = None) -> Tensor:
        """``(conv(x) + shift) * scale`` per output channel (``[1, C, 1, 1]`` or None; an ActNorm
        that follows), computed as one convolution with the scales and shifts folded into its
        weights and bias: the same map, without elementwise passes over the output. The padding
        indicator channel's contribution is the same for every example, so it is one small map
        added to the zero-padded convolution of ``x`` rather than a channel concatenated to it
        (for a channels-last ``x`` that addition runs on the [N, H, W, C] view, whose backward sum
        over the batch is a contiguous reduction; torch's over a channels-last NCHW tensor is 15x
        slower on CPU)."""
        w, b = self.conv.weight, self.conv.bias
        if self.zeros:
            e = torch.exp(self.logscale_factor * self.logs).view(-1)
            w, b = w * e[:, None, None, None], b * e
        if shift is not None:
            b = shift.view(-1) if b is None else b + shift.view(-1)
        if scale is not None:
            s = scale.view(-1)
            w, b = w * s[:, None, None, None], (None if b is None else b * s)
        if not self.pad:
            return F.conv2d(x, w, b)
        p, c = self.pad, x.shape[1]
        edge = F.pad(x.new_zeros(1, 1, *x.shape[2:]), (p, p, p, p), value=1.0)
        y, border = F.conv2d(x, w[:, :c], b, padding=p), F.conv2d(edge, w[:, c:])
        if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous():
            return (y.permute(0, 2, 3, 1) + border[0].permute(1, 2, 0)).permute(0, 3, 1, 2)
        return y + border


class _HiddenActNorm(nn.Module):
    """A GlowActNorm used inside a conditioner net (its log-determinant is not part of the flow)."""

    def __init__(self, channels: int):
        super().__init__()
        self.actnorm = GlowActNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.actnorm.inverse(x)[0]


class _GlowConditioner(nn.Sequential):
    """Glow's coupling net as a ``Sequential`` (the same parameter names), each edge-padded conv and
    the initialised ActNorm after it applied as one folded convolution (``EdgePaddedConv2d.scaled``)."""

    def forward(self, x: Tensor) -> Tensor:
        mods = list(self)
        i = 0
        while i < len(mods):
            m, nxt = mods[i], (mods[i + 1] if i + 1 < len(mods) else None)
            if isinstance(m, EdgePaddedConv2d) and isinstance(nxt, _HiddenActNorm) and nxt.actnorm.host_flag:
                an = nxt.actnorm
                x = m.scaled(x, torch.exp(an.logscale_factor * an.p), an.b)
                i += 2
            else:  # an ActNorm not yet initialised sees the conv's output first (data-dependent init)
                x = m(x)
                i += 1
        return x


class GlowAffineCoupling(nf.flows.Flow):
    """Glow's affine coupling: the first half ``x1`` conditions ``h = NN(x1)`` (3x3 conv, ActNorm,
    ReLU, 1x1 conv, ActNorm, ReLU, zero-initialised 3x3 conv), data -> latent
    ``y2 = (x2 + h[0::2]) * sigmoid(h[1::2] + 2)``."""

    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.split = channels // 2
        c_out = channels - self.split
        self.net = _GlowConditioner(EdgePaddedConv2d(self.split, hidden, 3), _HiddenActNorm(hidden), nn.ReLU(),
                                    EdgePaddedConv2d(hidden, hidden, 1), _HiddenActNorm(hidden), nn.ReLU(),
                                    EdgePaddedConv2d(hidden, 2 * c_out, 3, zeros=True))

    def _params(self, x1: Tensor) -> tuple[Tensor, Tensor]:
        h = self.net(x1)
        return h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x1, x2 = x[:, :self.split], x[:, self.split:]
        shift, scale = self._params(x1)
        return torch.cat([x1, (x2 + shift) * scale], dim=1), sum_per_example(torch.log(scale))

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        z1, z2 = z[:, :self.split], z[:, self.split:]
        shift, scale = self._params(z1)
        return torch.cat([z1, z2 / scale - shift], dim=1), -sum_per_example(torch.log(scale))


class GlowStep(nf.flows.Flow):
    """One step of Glow, data -> latent: ActNorm, invertible 1x1 convolution (plain weight, the
    official default, or LU-parameterised with ``lu``), affine coupling."""

    def __init__(self, channels: int, hidden: int, lu: bool = False):
        super().__init__()
        self.actnorm = GlowActNorm(channels)
        self.conv = nf.flows.Invertible1x1Conv(channels, use_lu=lu)
        self.coupling = GlowAffineCoupling(channels, hidden)

    def inverse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return _compose(x, [f.inverse for f in (self.actnorm, self.conv, self.coupling)])

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return _compose(z, [f.forward for f in (self.coupling, self.conv, self.actnorm)])


def _compose(x: Tensor, maps: Sequence[Callable[[Tensor], tuple[Tensor, Tensor]]]) -> tuple[Tensor, Tensor]:
    """Apply ``(x -> (y, log_det))`` maps in order; the log-determinants summed per example."""
    log_det = x.new_zeros(x.shape[0])
    for step in maps:
        x, ld = step(x)
        log_det = log_det + ld
    return x, log_det


# -- priors and the multi-scale container ---------------------------------------------------
class StandardNormalPrior(nn.Module):
    """N(0, I): whitening is the identity."""

    def whiten(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        return z, z.new_zeros(z.shape[0])

    def color(self, eps: Tensor, cond: Tensor | None) -> Tensor:
        return eps


class GaussianPrior(nn.Module):
    """A diagonal Gaussian with a learned mean and log-scale per element (i-ResNet's learned prior)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(1, *shape))
        self.log_scale = nn.Parameter(torch.zeros(1, *shape))

    def whiten(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        eps = (z - self.mean) * torch.exp(-self.log_scale)
        return eps, -self.log_scale.sum().expand(z.shape[0])

    def color(self, eps: Tensor, cond: Tensor | None) -> Tensor:
        return eps * torch.exp(self.log_scale) + self.mean


class LearnedTopPrior(nn.Module):
    """Glow's learned top prior (``--learntop``): mean and log-scale from Glow's zero-initialised
    edge-padded convolution applied to zeros, i.e. a learned value per channel plus learned
    offsets near the border (through the padding indicator channel)."""

    def __init__(self, shape: Sequence[int]):
        super().__init__()
        self.shape = tuple(shape)
        self.conv = EdgePaddedConv2d(2 * shape[0], 2 * shape[0], 3, zeros=True)

    def _params(self, like: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conv(like.new_zeros(1, 2 * self.shape[0], *self.shape[1:]))
        return h[:, 0::2], h[:, 1::2]

    def whiten(self, z: Tensor, cond: Tensor | None) -> tuple[Tensor, Tensor]:
        mean, log_scale = self._params(z)
        return (z - mean) * torch.exp(-log_scale), -log_scale.sum().expand(z.shape[0])

    def color(self, eps: Tensor, cond: Tensor | None) -> Tensor:
        mean, log_scale = self._params(eps)
        return eps * torch.exp(log_scale) + mean


class ConditionalGaussianPrior(nn.Module):
    """Glow's split prior: mean and log-scale of the factored-out half from Glow's zero-initialised
    edge-padded 3x3 convolution (``conv2d_zeros``) of the half that goes on."""

    def __init__(self, cond_channels: int, out_channels: int):
        super().__init__()
        self.conv = EdgePaddedConv2d(cond_channels, 2 * out_channels, 3, zeros=True)

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
    """A ``MultiScaleFlow`` over whitened latents: the shared body of the image models.

    ``channels_last``: keep the convolution weights and the input in channels-last memory order
    ([N, H, W, C] in memory, the same NCHW tensors to every caller). Only the layout changes, never
    a value; oneDNN's CPU convolutions run 10-15% faster a training step on Glow and RealNVP
    (docs/models.md). i-ResNet stays contiguous: normflows' spectral-norm convolutions ``view``
    their 4-D buffers, which channels-last order forbids.
    """

    def __init__(self, flow: MultiScaleFlow, shape: tuple[int, ...], channels_last: bool = False):
        super().__init__()
        self.flow = flow.to(memory_format=torch.channels_last) if channels_last else flow
        self.shape = tuple(shape)
        self.channels_last = channels_last

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [N, C, H, W] -> (whitened latent [N, D], log|det dz/dx|)."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.flow.to_latent(x)

    def from_latent(self, z: Tensor) -> Tensor:
        return self.flow.from_latent(z)

    @property
    def latent_dim(self) -> int:
        return math.prod(self.shape)



# -- i-ResNet ---------------------------------------------------------------------------------
PROBES = ("gaussian", "rademacher")  # Hutchinson probes of the i-ResNet log-det


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
        if probe not in PROBES:
            raise ValueError(f"probe must be gaussian or rademacher, got {probe!r}")
        self.g = g
        self.train_terms, self.eval_terms = train_terms, eval_terms
        self.train_probes, self.eval_probes = train_probes, eval_probes
        self.probe = probe
        self.inverse_iters, self.inverse_tol = inverse_iters, inverse_tol
        self.last_inverse_iters = 0

    def _probes(self, x: Tensor, blocks: int) -> Tensor:
        """Probes for ``x``, which holds ``blocks`` copies of the batch."""
        return shards.draw_like(x, torch.randn_like if self.probe == "gaussian" else rademacher_like, blocks)

    def log_det(self, x: Tensor, n_terms: int, n_probes: int, create_graph: bool) -> tuple[Tensor, Tensor]:
        """(g(x), truncated-series Hutchinson estimate of log|det(I + J_g(x))|) per example."""
        batch = x.shape[0]
        with torch.enable_grad():
            if not x.requires_grad:
                x = x.detach().requires_grad_(True)
            xr = x if n_probes == 1 else x.repeat(n_probes, *([1] * (x.dim() - 1)))
            gx_all = self.g(xr)
            v = self._probes(xr, n_probes)
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


def _check_power_iteration(n_iterations: int | None, atol: float | None, rtol: float | None) -> int:
    """The number of power iterations to run; a tolerance-driven stop (normflows' ``atol``/``rtol``)
    would read the error on the host every iteration, so it is refused."""
    if atol is not None or rtol is not None:
        raise ValueError("sync-free spectral norms run a fixed number of power iterations (no atol/rtol)")
    if n_iterations is None:
        raise ValueError("give n_iterations: the number of power iterations")
    return n_iterations


def _soft_normalised(weight: Tensor, sigma: Tensor, coeff: float, scale: Tensor) -> Tensor:
    """``weight / max(1, sigma / coeff)`` on the device (normflows' soft normalisation: only a weight
    whose spectral norm exceeds ``coeff`` is scaled down); ``sigma`` recorded in ``scale``."""
    with torch.no_grad():
        scale.copy_(sigma)
    return weight / torch.clamp(sigma / coeff, min=1.0)


class SpectralNormLinear(nf.nets.InducedNormLinear):
    """normflows' ``InducedNormLinear`` in the 2-norm (domain = codomain = 2, what i-ResNet uses) with
    the same numerics and state (weight, bias, ``u``, ``v``, ``scale``) but no host read or host-to-
    device copy: a fixed number of power iterations on the ``u``/``v`` buffers and the factor
    ``max(1, sigma / coeff)`` taken on the device (normflows builds ``torch.ones(1)`` on the host for it)."""

    def __init__(self, in_features: int, out_features: int, coeff: float, n_iterations: int, zero_init: bool = False):
        super().__init__(in_features, out_features, coeff=coeff, domain=2, codomain=2, n_iterations=n_iterations,
                         zero_init=zero_init)

    def compute_weight(self, update: bool = True, n_iterations: int | None = None, atol: float | None = None,
                       rtol: float | None = None) -> Tensor:
        """The normalised weight, after ``n_iterations`` power iterations (``update``; default the layer's)."""
        if update:
            steps = _check_power_iteration(self.n_iterations if n_iterations is None else n_iterations, atol, rtol)
            with torch.no_grad():
                for _ in range(steps):  # in place on the buffers, as normflows' out= normalisations
                    F.normalize(torch.mv(self.weight, self.v), dim=0, out=self.u)
                    F.normalize(torch.mv(self.weight.t(), self.u), dim=0, out=self.v)
            u, v = self.u.clone(), self.v.clone()
        else:
            u, v = self.u, self.v
        sigma = torch.dot(u, torch.mv(self.weight, v))
        return _soft_normalised(self.weight, sigma, self.coeff, self.scale)


class SpectralNormConv2d(HostMirroredFlag, nf.nets.InducedNormConv2d):
    """normflows' ``InducedNormConv2d`` in the 2-norm with its numerics and state dict, without host
    reads after the first forward: the input's spatial size (the ``spatial_dims`` buffer, which
    normflows reads twice a forward) and the ``initialized`` flag are mirrored in Python, the power
    iteration runs a fixed number of steps and the soft normalisation is taken on the device."""

    flag_buffer = "initialized"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int, coeff: float,
                 n_iterations: int, zero_init: bool = False):
        super().__init__(in_channels, out_channels, kernel_size, stride=1, padding=padding, coeff=coeff, domain=2,
                         codomain=2, n_iterations=n_iterations, zero_init=zero_init)
        self.host_flag = False
        self.spatial: tuple[int, int] = (1, 1)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.spatial = (int(self.spatial_dims[0]), int(self.spatial_dims[1]))

    def _initialise(self, input: Tensor) -> None:
        """normflows' first-forward set-up: the spatial size from ``input``, random ``u``/``v``, one update."""
        self.spatial_dims.copy_(torch.tensor(input.shape[2:4]).to(self.spatial_dims))
        self.spatial = (int(input.shape[2]), int(input.shape[3]))
        self.host_flag = True  # before _initialize_u_v, whose compute_weight(True) comes back here
        self._initialize_u_v()

    def _operators(self) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, torch.Size], Tensor]]:
        """(v -> W v, (u, out_shape) -> W^T u) on the flattened input / output of one example."""
        w, c, (h, wd) = self.weight, self.in_channels, self.spatial
        if self.kernel_size == (1, 1):
            mat = w.view(self.out_channels, self.in_channels)
            return (lambda v: torch.mv(mat, v)), (lambda u, shape: torch.mv(mat.t(), u))

        def forward(v: Tensor) -> Tensor:
            return F.conv2d(v.view(1, c, h, wd), w, stride=self.stride, padding=self.padding)

        def adjoint(u: Tensor, shape: torch.Size) -> Tensor:
            return F.conv_transpose2d(u.view(shape), w, stride=self.stride, padding=self.padding, output_padding=0)

        return forward, adjoint

    def compute_weight(self, update: bool = True, n_iterations: int | None = None, atol: float | None = None,
                       rtol: float | None = None) -> Tensor:
        """The normalised weight, after ``n_iterations`` power iterations (``update``; default the layer's)."""
        if not self.host_flag:
            raise RuntimeError("SpectralNormConv2d: run a forward first (it fixes the input's spatial size)")
        forward, adjoint = self._operators()
        if update:
            steps = _check_power_iteration(self.n_iterations if n_iterations is None else n_iterations, atol, rtol)
            with torch.no_grad():
                for _ in range(steps):
                    wv = forward(self.v)
                    F.normalize(wv.reshape(-1), dim=0, out=self.u)
                    F.normalize(adjoint(self.u, wv.shape).reshape(-1), dim=0, out=self.v)
            u, v = self.u.clone(), self.v.clone()
        else:
            u, v = self.u, self.v
        sigma = torch.dot(u.view(-1), forward(v).view(-1))
        return _soft_normalised(self.weight, sigma, self.coeff, self.scale)

    def forward(self, input: Tensor) -> Tensor:
        if not self.host_flag:
            self._initialise(input)
        weight = self.compute_weight(update=False)
        return F.conv2d(input, weight, self.bias, self.stride, self.padding, 1, 1)


def lipschitz_mlp(dim: int, hidden: int, n_hidden: int, coeff: float, n_power_iter: int) -> nn.Sequential:
    """g for vectors: spectrally normalised linear layers (each to ``coeff``) with ELU between."""
    sizes = [dim] + [hidden] * n_hidden + [dim]
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(nn.ELU())
        layers.append(SpectralNormLinear(sizes[i], sizes[i + 1], coeff, n_power_iter, zero_init=i == len(sizes) - 2))
    return nn.Sequential(*layers)


def lipschitz_cnn(shape: Sequence[int], hidden: int, coeff: float, n_power_iter: int, input_elu: bool = False,
                  zero_last: bool = False) -> nn.Sequential:
    """g for images (i-ResNet's block): [ELU,] 3x3, ELU, 1x1, ELU, 3x3 spectrally normalised
    convolutions. The official code puts an ELU on the input of every block but the first
    (``input_elu``) and initialises all three convolutions with PyTorch's default (``zero_last``
    false); ELU is 1-Lipschitz, so Lip(g) stays below ``coeff``."""
    channels = shape[0]
    spec = [(channels, hidden, 3), (hidden, hidden, 1), (hidden, channels, 3)]
    layers: list[nn.Module] = [nn.ELU()] if input_elu else []
    for i, (cin, cout, k) in enumerate(spec):
        if i:
            layers.append(nn.ELU())
        layers.append(SpectralNormConv2d(cin, cout, k, k // 2, coeff, n_power_iter, zero_init=zero_last and i == 2))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        net(torch.zeros(1, *shape))  # fixes the spatial size the convolutions' norms are taken at
    return net


def refresh_spectral_norms(module: nn.Module, n_iterations: int) -> None:
    """Advance the power iteration of every spectrally normalised layer (normflows' forward does not)."""
    nf.utils.update_lipschitz(module, n_iterations)
