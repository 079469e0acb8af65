"""Glow (Kingma & Dhariwal 2018) for images and vectors.

Images, as openai/glow builds them: L levels of squeeze + K steps, each step data -> latent
ActNorm (log-scale factor 3, data-dependent initialisation on the first batch), an invertible
1x1 convolution (a plain weight matrix, the official code's default; ``lu=True`` for the
LU-parameterised variant) and an affine coupling with the scale ``sigmoid(h + 2)`` and an
edge-padded 3x3 / 1x1 / zero-initialised 3x3 conditioner; half the channels are factored out
after every level but the last under a learned split prior (a zero-initialised conv of the other
half), and the top latent has Glow's learned prior (``learn_top``) or N(0, I).
Vectors: K normflows steps (affine coupling with an MLP, a dense invertible linear map, ActNorm).

``glow_ffjord`` (``build_ffjord_tabular``): the different vector Glow that produced the Glow rows of
FFJORD's Table 2 (rtqichen/ffjord ``train_discrete_tabular.py --glow``): blocks of an
identity-initialised dense linear map and a masked affine coupling with separate tanh-MLP
log-scale and ReLU-MLP shift networks; no ActNorm, no zero initialisation.
"""

from __future__ import annotations

import warnings

from collections.abc import Sequence

import normflows as nf
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from baselines.base import FlowModel, LatentFlowModel
from baselines.constraints import Count, NonNegInt
from baselines.layers import (ActNorm, ConditionalGaussianPrior, GaussianPrior, GlowStep, LearnedTopPrior, MultiScaleFlow,
                              MultiScaleModel, StandardNormalPrior, VectorFlowModel, squeezable, squeezed)

__all__ = ["alternate_mask", "build", "build_ffjord_tabular", "DenseLinearFlow", "glow_image", "GlowFFJORDTabular",
           "GlowVector", "MaskedAffineCoupling"]


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
                      ActNorm((dim,))]
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


# -- Glow as FFJORD's tabular table ran it (rtqichen/ffjord train_discrete_tabular.py --glow) ----------
class DenseLinearFlow(nn.Module):
    """``x -> x W^T`` with a dense ``dim x dim`` weight that starts at the identity, no bias;
    log|det| = log|det W|, computed in float64 (the form of FFJORD's ``BruteForceLayer``).

    >>> layer = DenseLinearFlow(3)
    >>> y, log_det = layer(torch.ones(2, 3))
    >>> y.tolist(), log_det.tolist(), layer.inverse(y).tolist()
    ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], [0.0, 0.0], [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    """

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.eye(dim))

    def log_abs_det(self) -> Tensor:
        """log|det W| (a 0-dim tensor in the weight's dtype; float64 arithmetic, as the official layer)."""
        return torch.linalg.slogdet(self.weight.double())[1].to(self.weight.dtype)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (x W^T, log|det W| for every example)."""
        return F.linear(x, self.weight), self.log_abs_det().expand(x.shape[0])

    def inverse(self, y: Tensor) -> Tensor:
        """y -> y W^{-T} (a float64 solve, cast back to y's dtype)."""
        return torch.linalg.solve(self.weight.double().T, y.double(), left=False).to(y.dtype)


def alternate_mask(dim: int, swap: bool) -> Tensor:
    """MAF's index mask as FFJORD builds it: 1 (conditioning, left unchanged) on even indices,
    0 (transformed) on odd ones; ``swap`` flips it.

    >>> alternate_mask(5, swap=False).tolist(), alternate_mask(5, swap=True).tolist()
    ([1.0, 0.0, 1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0, 0.0])
    """
    mask = torch.zeros(dim)
    mask[::2] = 1
    return 1 - mask if swap else mask


def _mlp(dim: int, hidden: Sequence[int], activation: type[nn.Module]) -> nn.Sequential:
    """``dim -> hidden... -> dim`` Linear layers with ``activation`` after every hidden one (torch's
    default initialisation; the last layer is not zeroed)."""
    widths = [dim, *hidden, dim]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(hidden):
            layers.append(activation())
    return nn.Sequential(*layers)


class MaskedAffineCoupling(nn.Module):
    """Masked affine coupling (the form of FFJORD's ``MaskedCouplingLayer``), data -> latent:
    ``y = x * exp(s) + t`` on the entries where ``mask`` is 0, the others pass unchanged, with
    ``s = scale_net(x * mask)`` (an MLP with tanh between its layers, linear output) and
    ``t = shift_net(x * mask)`` (a separate MLP with ReLU); both map all ``dim`` entries to ``dim``
    and only the unmasked outputs are used. log|det| = sum of ``s`` over the unmasked entries.
    """

    def __init__(self, dim: int, hidden: Sequence[int], mask: Tensor):
        super().__init__()
        self.register_buffer("mask", mask.reshape(1, dim).clone())
        self.scale_net = _mlp(dim, hidden, nn.Tanh)
        self.shift_net = _mlp(dim, hidden, nn.ReLU)

    def _scale_shift(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(log-scale, shift), zero on the conditioning entries, from the conditioning entries of x."""
        kept = x * self.mask
        free = 1 - self.mask
        return self.scale_net(kept) * free, self.shift_net(kept) * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (y, log|det dy/dx| per example)."""
        log_scale, shift = self._scale_shift(x)
        return x * torch.exp(log_scale) + shift, log_scale.sum(1)

    def inverse(self, y: Tensor) -> Tensor:
        """y -> x (the conditioning entries of y are those of x)."""
        log_scale, shift = self._scale_shift(y)
        return (y - shift) * torch.exp(-log_scale)


class GlowFFJORDTabular(LatentFlowModel):
    """The Glow of FFJORD's tabular table (rtqichen/ffjord ``train_discrete_tabular.py --glow``):
    ``n_blocks`` blocks over N(0, I), each, data -> latent, a ``DenseLinearFlow`` (identity at the
    start) and a ``MaskedAffineCoupling`` whose log-scale and shift MLPs have the ``hidden`` widths;
    block i transforms the even indices when i is even, the odd ones when i is odd (the official
    ``swap=i % 2 == 0`` on MAF's alternating mask).

    >>> _ = torch.manual_seed(0)
    >>> model = GlowFFJORDTabular(3, n_blocks=2, hidden=(4,))
    >>> x = torch.randn(5, 3)
    >>> z, log_det = model.to_latent(x)
    >>> z.shape, torch.allclose(model.from_latent(z), x, atol=1e-5), model.num_params()
    (torch.Size([5, 3]), True, 142)
    """

    def __init__(self, dim: int, n_blocks: int = 10, hidden: Sequence[int] = (100, 100)):
        super().__init__()
        self.dim = dim
        self.blocks = nn.ModuleList()
        for i in range(n_blocks):
            self.blocks.append(DenseLinearFlow(dim))
            self.blocks.append(MaskedAffineCoupling(dim, hidden, alternate_mask(dim, swap=i % 2 == 0)))

    def to_latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (z, log|det dz/dx|)."""
        log_det = x.new_zeros(x.shape[0])
        for layer in self.blocks:
            x, ld = layer(x)
            log_det = log_det + ld
        return x, log_det

    def from_latent(self, z: Tensor) -> Tensor:
        for layer in reversed(self.blocks):
            z = layer.inverse(z)
        return z

    @property
    def latent_dim(self) -> int:
        return self.dim


def build_ffjord_tabular(data, n_blocks: Count = 10, hidden: Sequence[Count] = (100, 100)) -> FlowModel:
    """Glow as FFJORD's tabular table ran it (Grathwohl et al. 2019, Table 2's Glow rows; rtqichen/ffjord
    ``train_discrete_tabular.py --glow``): ``n_blocks`` (``--depth``, 10) blocks of an
    identity-initialised dense linear map and a masked affine coupling whose tanh log-scale and ReLU
    shift MLPs have the ``hidden`` widths (``--dims``, 100-100). Vectors only. docs/models.md.

    >>> from types import SimpleNamespace
    >>> power = SimpleNamespace(name="power", kind="tabular", shape=(6,))
    >>> build_ffjord_tabular(power).num_params()
    228480
    """
    if len(data.shape) != 1:
        raise ValueError(f"glow_ffjord is FFJORD's tabular model: it needs flat (D,) data, got shape {data.shape} "
                         f"for {data.name}")
    return GlowFFJORDTabular(data.shape[0], n_blocks=n_blocks, hidden=tuple(hidden))
