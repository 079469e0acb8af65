"""RealNVP (Dinh et al. 2017) for vectors and images.

Vectors (toy, tabular): normflows' affine couplings with MLP conditioners whose halves swap
between layers (alternating masks), with batch normalisation between couplings as the MAF and
FFJORD tables ran it (``RunningBatchNorm``: running statistics in eval mode).

Images: the multi-scale architecture of the paper (section 3.6) built as the authors' TensorFlow
code builds it. Each scale but the last: ``n_checker`` checkerboard couplings, a squeeze,
``n_channel`` channel couplings, then half the channels are factored out; the last scale:
``n_checker + 1`` checkerboard couplings. Couplings use ``s = scale * tanh(h)`` with a learned
scale, weight-normalised residual conditioners with batch norm, and batch normalisation of their
output (``baselines.layers.RealNVPCoupling``); with ``double_width`` the conditioner width doubles
at every scale and channel couplings use twice the checkerboard width, as that code does.
``weight_decay_params()`` names the parameters the paper's L2 penalty acts on.
"""

from __future__ import annotations

import normflows as nf
from torch import nn

from baselines.base import FlowModel, SoftClampScale
from baselines.constraints import Count, NonNegInt, Positive
from baselines.layers import (MultiScaleFlow, MultiScaleModel, RealNVPCoupling, RunningBatchNorm, StandardNormalPrior,
                              VectorFlowModel, WNConv2d, checkerboard, squeezable, squeezed)

__all__ = ["build", "RealNVP", "realnvp_image", "RealNVPImage"]


class RealNVP(VectorFlowModel):
    """RealNVP for vectors (Dinh, Sohl-Dickstein & Bengio 2017): ``n_layers`` affine couplings over
    N(0, I) whose halves swap between layers, each conditioner an MLP of ``n_hidden`` layers of
    ``hidden`` units with a zero-initialised last layer (so the model starts as the identity), its
    log-scales bounded smoothly to (-``scale_bound``, ``scale_bound``), and with ``batch_norm`` a
    ``RunningBatchNorm`` bijection between couplings. ``dim`` must be at least 2.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = RealNVP(3, n_layers=2, hidden=8).eval()
    >>> with torch.no_grad():  # the couplings start as the identity: give them random weights
    ...     for p in model.parameters():
    ...         _ = p.normal_(0, 0.3)
    >>> x = torch.randn(4, 3)
    >>> z, log_det = model.to_latent(x)
    >>> z.shape, torch.allclose(model.from_latent(z), x, atol=1e-5), bool(log_det.abs().min() > 0)
    (torch.Size([4, 3]), True, True)
    >>> RealNVP(1)
    Traceback (most recent call last):
    ...
    ValueError: RealNVP needs at least 2 dimensions, got 1
    """

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


class RealNVPImage(MultiScaleModel):
    """RealNVP's multi-scale image model (Dinh, Sohl-Dickstein & Bengio 2017, section 3.6), as
    ``realnvp_image`` and ``build`` make it: checkerboard and channel couplings per scale with half
    the channels factored out between scales, all latent pieces whitened into one flat vector
    (``to_latent``/``from_latent``); ``weight_decay_params`` returns its "weight scale" parameters.

    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = realnvp_image((1, 4, 4), n_checker=1, n_channel=1, hidden=4, n_blocks=1).eval()
    >>> x = torch.rand(3, 1, 4, 4)
    >>> z, log_det = model.to_latent(x)
    >>> z.shape, model.flow.latent_shapes, torch.allclose(model.from_latent(z), x, atol=1e-5)
    (torch.Size([3, 16]), [(2, 2, 2), (2, 2, 2)], True)
    >>> len(model.weight_decay_params()), model.num_params()
    (19, 5699)
    """

    def weight_decay_params(self) -> list[nn.Parameter]:
        """The parameters the official code's L2 term (coefficient 5e-5) acts on: every
        weight-norm magnitude and the learned tanh scale of every checkerboard coupling."""
        params = [m.magnitude for m in self.modules() if isinstance(m, WNConv2d) and m.magnitude is not None]
        params += [m.scale for m in self.modules() if isinstance(m, RealNVPCoupling) and m.checker]
        return params


def realnvp_image(shape: tuple[int, int, int], n_scales: int = 2, n_checker: int = 3, n_channel: int = 3,
                  hidden: int = 64, n_blocks: int = 8, batch_norm: bool = True, weight_norm: bool = True,
                  double_width: bool = True) -> RealNVPImage:
    """RealNVP's multi-scale image model; a scale whose size is odd keeps its resolution (no squeeze).

    Checkerboard couplings start with the tanh scale at 0, channel couplings at 1 (the official
    initial values); checkerboard parity and channel halves alternate.
    """
    levels, priors, shapes = [], [], []
    cur = tuple(shape)
    for s in range(n_scales):
        last = s == n_scales - 1
        width = hidden * 2 ** s if double_width else hidden
        level: list[nf.flows.Flow] = []
        for i in range(n_checker + 1 if last else n_checker):
            level.append(RealNVPCoupling(cur[0], width, n_blocks, mask=checkerboard(cur[1], cur[2], (i + 1) % 2),
                                         batch_norm=batch_norm, weight_norm=weight_norm, scale_init=0.0))
        if not last:
            if squeezable(cur):
                level.append(nf.flows.Squeeze())
                cur = squeezed(cur)
            if cur[0] >= 2:
                for i in range(n_channel):
                    level.append(RealNVPCoupling(cur[0], 2 * width if double_width else width, n_blocks,
                                                 cond_first=i % 2 == 0, batch_norm=batch_norm,
                                                 weight_norm=weight_norm, scale_init=1.0))
        levels.append(level)
        priors.append(StandardNormalPrior())
        shapes.append(cur)
        if not last:
            cur = (cur[0] // 2, cur[1], cur[2])
            if cur[0] < 1:
                raise ValueError(f"realnvp: {n_scales} scales factor out more channels than {shape} has")
    return RealNVPImage(MultiScaleFlow(levels, priors, shapes), shape, channels_last=True)


def build(data, n_layers: Count = 8, hidden: Count = 64, n_hidden: NonNegInt = 2, scale_bound: Positive = 3.0,
          batch_norm: bool = True, n_scales: Count = 2, n_checker: NonNegInt = 3, n_channel: NonNegInt = 3,
          n_blocks: NonNegInt = 8, weight_norm: bool = True, double_width: bool = True) -> FlowModel:
    """RealNVP (Dinh, Sohl-Dickstein & Bengio 2017, "Density estimation using Real NVP"): affine
    coupling layers trained by maximum likelihood; ``RealNVP`` for vectors, ``RealNVPImage`` for images.

    ``data``: what the model is for (``name``, ``shape``: ``(D,)`` for toy and tabular data,
    ``(C, H, W)`` for images); an option of the other kind is ignored. Vectors: ``n_layers``
    couplings (8) with MLP conditioners of ``n_hidden`` (2) layers of ``hidden`` (64) units, log-scales
    bounded to (-``scale_bound``, ``scale_bound``) (3.0), ``batch_norm`` between couplings (true).
    Images: ``n_scales`` scales (2), ``n_checker`` checkerboard (3) and ``n_channel`` channel (3)
    couplings per scale, residual conditioners of ``n_blocks`` blocks (8) with ``hidden`` feature maps
    at the first scale (64), batch norm in and after every coupling (``batch_norm``, true),
    weight-normalised convolutions (``weight_norm``, true), widths doubling per scale as the official
    code has them (``double_width``, true). docs/models.md has the full table.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,))
    >>> model = build(toy, n_layers=2, hidden=8).eval()
    >>> lp = model.log_prob(torch.randn(5, 2))
    >>> type(model).__name__, lp.shape, bool(lp.isfinite().all()), model.num_params()
    ('RealNVP', torch.Size([5]), True, 216)
    >>> digits = SimpleNamespace(name="digits", kind="image", shape=(1, 8, 8), levels=17, num_classes=10)
    >>> model = build(digits, hidden=4, n_blocks=1, n_checker=1, n_channel=1)
    >>> type(model).__name__, model.log_prob(torch.rand(2, 1, 8, 8)).shape
    ('RealNVPImage', torch.Size([2]))
    """
    if len(data.shape) == 1:
        return RealNVP(data.shape[0], n_layers=n_layers, hidden=hidden, n_hidden=n_hidden, scale_bound=scale_bound,
                       batch_norm=batch_norm)
    if len(data.shape) == 3:
        return realnvp_image(tuple(data.shape), n_scales=n_scales, n_checker=n_checker, n_channel=n_channel,
                             hidden=hidden, n_blocks=n_blocks, batch_norm=batch_norm, weight_norm=weight_norm,
                             double_width=double_width)
    raise ValueError(f"realnvp needs flat (D,) or image (C, H, W) data, got shape {data.shape} for {data.name}")
