"""FFJORD (Grathwohl et al. 2019): continuous normalising flows with Hutchinson's trace estimator.

Vectors (toy, tabular): a stack of CNF blocks with concat-squash MLP dynamics, optionally with
batch normalisation before every block and after the last (the layout of FFJORD's tabular
models). Images: the multi-scale model (per scale ``n_blocks`` CNFs, squeeze, ``n_blocks`` CNFs,
the second half of the channels factored out; the last scale ``n_blocks`` CNFs), dynamics of 3x3
concat convolutions (time as an input channel), as the official ODENVP builds them.
The logit transform of images is the dataset's preprocessing, not the model's.

``CNFFlowModel`` also carries RNODE's regularisers (weights 0 here; see ``baselines.rnode``).
The options are ``baselines.cnf_options.CNFOptions`` (declared once for ffjord, rnode, ccnf and
infocnf). Kind-dependent defaults (``None`` / ``"auto"``) follow the official entry points
(rtqichen/ffjord's train_toy.py, train_tabular.py, train_cnf.py; docs/cnf.md lists them with where
we differ); ``make_cnf_model`` fills them in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from baselines.base import FlowModel, std_normal_log_prob
from baselines.cnf import CNF, Solver, TimeNet, collect_block_nfe, squeeze, unsqueeze
from baselines.cnf_options import CNFOptions, FFJORDOptions
from baselines.layers import RunningBatchNorm
from baselines.registry import flat_options

__all__ = ["CNFFlowModel", "MultiScaleCNF", "VectorCNF", "auto_scales", "build", "make_cnf_model"]


class CNFFlowModel(FlowModel):
    """Base of the CNF models (FFJORD, Grathwohl et al. 2019; RNODE, Finlay et al. 2020):
    ``to_latent(x) -> (latent pieces, log-det, regularisers)``, the loss
    ``mean NLL / loss_scale + kinetic * K + jacobian * B`` and NFE reading.

    ``kinetic``, ``jacobian``: the regularisers' weights (0: plain FFJORD); ``loss_scale``: nats per
    unit of the loss, D ln 2 for images (the loss is in bits/dim, as the official code trains them:
    the adjoint's backward solve and gradient clipping see the official magnitudes), 1 otherwise.
    """

    def __init__(self, kinetic: float = 0.0, jacobian: float = 0.0, loss_scale: float = 1.0):
        super().__init__()
        self.kinetic, self.jacobian, self.loss_scale = kinetic, jacobian, loss_scale

    def to_latent(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor | None]:
        raise NotImplementedError

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        pieces, log_det, _ = self.to_latent(x)
        return sum(std_normal_log_prob(p) for p in pieces) + log_det

    def training_loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss and its stats as detached 0-dim tensors (the harness reads them once a step)."""
        pieces, log_det, regs = self.to_latent(x)
        nll = -(sum(std_normal_log_prob(p) for p in pieces) + log_det).mean()
        loss = nll / self.loss_scale
        stats = {"nll": nll.detach()}
        if regs is not None:
            kinetic, jac = regs.mean(0).unbind()
            loss = loss + self.kinetic * kinetic + self.jacobian * jac
            stats.update(kinetic=kinetic.detach(), jacobian=jac.detach())
        return loss, stats

    def read_nfe(self) -> tuple[int, int]:
        """(forward, backward) dynamics evaluations since the last call, summed over blocks; resets."""
        return collect_block_nfe(self)

    def end_times(self) -> list[float]:
        return [float(m.func.end_time.detach()) for m in self.modules() if isinstance(m, CNF)]


def _add_regs(total: Tensor | None, regs: Tensor | None) -> Tensor | None:
    if regs is None:
        return total
    return regs if total is None else total + regs


class VectorCNF(CNFFlowModel):
    """FFJORD's model of vectors (toy and tabular data; Grathwohl et al. 2019): a stack of
    ``n_blocks`` CNF blocks over N(0, I), each made by ``make_block((dim,))``, with FFJORD's moving
    batch norm before every block and after the last when ``batch_norm``; ``loss``: the
    regularisers' weights (``CNFFlowModel``).

    >>> from baselines.cnf import CNF, TimeNet
    >>> model = VectorCNF(2, lambda shape: CNF(TimeNet(shape, [8]), shape), n_blocks=2).eval()
    >>> model.log_prob(torch.zeros(3, 2)).shape, len(model.end_times())
    (torch.Size([3]), 2)
    """

    def __init__(self, dim: int, make_block: Any, n_blocks: int = 1, batch_norm: bool = False, **loss: float):
        super().__init__(**loss)
        self.dim = dim
        self.blocks = nn.ModuleList(make_block((dim,)) for _ in range(n_blocks))
        # FFJORD's moving batch norm (decay 0.1, eps 1e-4), before every block and after the last
        self.norms = (nn.ModuleList(RunningBatchNorm((dim,), momentum=0.1, eps=1e-4, moving=True)
                                    for _ in range(n_blocks + 1)) if batch_norm else None)

    def to_latent(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor | None]:
        log_det = x.new_zeros(x.shape[0])
        regs = None
        for i, block in enumerate(self.blocks):
            if self.norms is not None:
                x, ld = self.norms[i].inverse(x)
                log_det = log_det + ld
            x, ld, r = block(x)
            log_det, regs = log_det + ld, _add_regs(regs, r)
        if self.norms is not None:
            x, ld = self.norms[-1].inverse(x)
            log_det = log_det + ld
        return [x], log_det, regs

    def from_latent(self, pieces: list[Tensor]) -> Tensor:
        """Latent -> data by the reverse solves (evaluation solver)."""
        z = pieces[0]
        if self.norms is not None:
            z = self.norms[-1].forward(z)[0]
        for i in reversed(range(len(self.blocks))):
            z = self.blocks[i].inverse(z)
            if self.norms is not None:
                z = self.norms[i].forward(z)[0]
        return z

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        ref = next(self.parameters())
        return self.from_latent([torch.randn(n, self.dim, device=ref.device, dtype=ref.dtype)])


def auto_scales(shape: Sequence[int]) -> int:
    """FFJORD's number of scales: halve while both sides are at least 4."""
    n, h, w = 0, shape[1], shape[2]
    while h >= 4 and w >= 4:
        n, h, w = n + 1, h // 2, w // 2
    return max(1, n)


class MultiScaleCNF(CNFFlowModel):
    """FFJORD's multi-scale image model (ODENVP without the logit layer; Grathwohl et al. 2019).

    Per scale: ``n_blocks`` CNFs, squeeze (C, H, W) -> (4C, H/2, W/2), ``n_blocks`` CNFs, then the
    first half of the channels goes on to the next scale and the second half is factored out, as the
    official ``ODENVP`` splits them; the last scale has ``n_blocks`` CNFs and no squeeze. The latent
    pieces come out in the official order: the piece factored out first comes first.
    ``make_block(shape)`` makes one CNF block; ``n_scales`` 0: ``auto_scales(shape)``; ``loss``: the
    regularisers' weights (``CNFFlowModel``).

    >>> from baselines.cnf import CNF, TimeNet
    >>> model = MultiScaleCNF((1, 4, 4), lambda s: CNF(TimeNet(s, [4], "concat"), s), n_blocks=1,
    ...                       n_scales=2).eval()
    >>> model.piece_shapes, model.log_prob(torch.rand(2, 1, 4, 4)).shape
    ([(2, 2, 2), (2, 2, 2)], torch.Size([2]))
    """

    def __init__(self, shape: Sequence[int], make_block: Any, n_blocks: int = 2, n_scales: int = 0, **loss: float):
        super().__init__(**loss)
        self.shape = tuple(shape)
        n_scales = n_scales or auto_scales(self.shape)
        cur = self.shape
        self.scales = nn.ModuleList()
        self.piece_shapes: list[tuple[int, int, int]] = []
        self.kept_channels: list[int] = []  # channels that go on to the next scale, per squeezing scale
        for s in range(n_scales):
            last = s == n_scales - 1 or cur[1] % 2 or cur[2] % 2
            pre = nn.ModuleList(make_block(cur) for _ in range(n_blocks))
            post = nn.ModuleList()
            if not last:
                cur = (cur[0] * 4, cur[1] // 2, cur[2] // 2)
                post = nn.ModuleList(make_block(cur) for _ in range(n_blocks))
                kept = cur[0] // 2
                self.kept_channels.append(kept)
                self.piece_shapes.append((cur[0] - kept, cur[1], cur[2]))
                cur = (kept, cur[1], cur[2])
            else:
                self.piece_shapes.append(cur)
            self.scales.append(nn.ModuleList([pre, post]))
            if last:
                break

    def to_latent(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor | None]:
        log_det = x.new_zeros(x.shape[0])
        regs, pieces = None, []
        for s, (pre, post) in enumerate(self.scales):
            for block in pre:
                x, ld, r = block(x)
                log_det, regs = log_det + ld, _add_regs(regs, r)
            if len(post):
                x = squeeze(x)
                for block in post:
                    x, ld, r = block(x)
                    log_det, regs = log_det + ld, _add_regs(regs, r)
                kept = self.kept_channels[s]
                pieces.append(x[:, kept:].reshape(x.shape[0], -1))
                x = x[:, :kept]
        pieces.append(x.reshape(x.shape[0], -1))
        return pieces, log_det, regs

    def from_latent(self, pieces: list[Tensor]) -> Tensor:
        """Latent pieces (flat, as ``to_latent`` returns them) -> image, by the reverse solves."""
        pieces = [p.reshape(p.shape[0], *shape) for p, shape in zip(pieces, self.piece_shapes)]
        x = pieces[-1]
        for s in reversed(range(len(self.scales))):
            pre, post = self.scales[s]
            if len(post):
                x = torch.cat([x, pieces[s]], 1)
                for block in reversed(post):
                    x = block.inverse(x)
                x = unsqueeze(x)
            for block in reversed(pre):
                x = block.inverse(x)
        return x

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        ref = next(self.parameters())
        return self.from_latent([torch.randn(n, math.prod(shape), device=ref.device, dtype=ref.dtype)
                                 for shape in self.piece_shapes])


def make_cnf_model(data: Any, options: CNFOptions) -> CNFFlowModel:
    """The CNF model for ``data`` (the vector stack or the multi-scale image model) with ``options``'
    kind defaults (``None`` / ``"auto"``) filled in, as the official entry points have them.
    ``data`` needs ``name``, ``kind`` (toy, tabular, image, ...) and ``shape`` ((D,) or (C, H, W))."""
    o = options
    shape = tuple(data.shape)
    image = len(shape) == 3
    if len(shape) not in (1, 3):
        raise ValueError(f"CNF models need flat (D,) or image (C, H, W) data, got shape {shape} for {data.name}")
    toy = data.kind == "toy"
    tabular = not toy and not image
    hidden = o.hidden if o.hidden is not None else ((64, 64, 64) if toy or image else (10 * shape[0],))
    hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
    # the official entry points: concat-squash layers for vectors, concat layers in the multi-scale model
    layer_type = o.layer_type if o.layer_type != "auto" else ("concat" if image else "concatsquash")
    activation = o.activation if o.activation != "auto" else ("tanh" if toy else "softplus")
    noise = o.noise if o.noise != "auto" else ("rademacher" if image else "gaussian")
    end_time = o.end_time if o.end_time is not None else (0.5 if toy else 1.0)
    atol = o.atol if o.atol is not None else (1e-8 if tabular else 1e-5)
    rtol = o.rtol if o.rtol is not None else (1e-6 if tabular else 1e-5)
    train_solver = Solver(o.solver, atol, rtol, o.step_size, o.first_adaptive_step())
    test_solver = Solver(o.eval_solver, o.eval_atol if o.eval_atol is not None else min(atol, 1e-5),
                         o.eval_rtol if o.eval_rtol is not None else min(rtol, 1e-5), o.step_size)
    kinetic, jacobian = o.regularisation()
    regularize = bool(kinetic or jacobian)

    def make_block(block_shape: tuple[int, ...]) -> CNF:
        net = TimeNet(block_shape, hidden, layer_type, activation, zero_last=o.zero_last)
        return CNF(net, block_shape, end_time=end_time, train_end_time=o.train_end_time, divergence=o.divergence,
                   eval_divergence=o.eval_divergence, noise=noise, train_solver=train_solver, eval_solver=test_solver,
                   adjoint=o.adjoint, steer=o.steer, regularize=regularize, adjoint_seminorm=o.adjoint_seminorm,
                   val_divergence=o.val_divergence)

    # images: the loss in bits/dim (less a constant) with the regularisers added to it, as FFJORD's and
    # RNODE's code train them
    loss = dict(kinetic=kinetic, jacobian=jacobian, loss_scale=math.prod(shape) * math.log(2) if image else 1.0)
    if image:
        return MultiScaleCNF(shape, make_block, n_blocks=o.n_blocks or 2, n_scales=o.n_scales, **loss)
    return VectorCNF(shape[0], make_block, n_blocks=o.n_blocks or 1, batch_norm=o.batch_norm, **loss)


@flat_options
def build(data: Any, cnf: FFJORDOptions = FFJORDOptions()) -> FlowModel:
    """FFJORD (Grathwohl et al. 2019, "FFJORD: Free-form Continuous Dynamics for Scalable Reversible
    Generative Models"): continuous normalising flows trained by maximum likelihood, the
    log-determinant integrated with Hutchinson's trace estimator.

    ``data``: what the model is for (``name``, ``kind``, ``shape``); ``cnf``: the options
    (``baselines.cnf_options.FFJORDOptions``; the harness and direct callers may also pass its fields
    as flat keyword arguments, ``build(data, hidden=[8])``). Defaults by data kind, as the official
    entry points have them (docs/cnf.md): toy 3x64 concat-squash tanh, T = 0.5 trained, exact
    divergence; tabular one hidden layer of 10 D concat-squash softplus, atol/rtol 1e-8/1e-6,
    Gaussian Hutchinson, no batch norm; images multi-scale with 2 blocks a scale, 64-64-64 concat
    conv softplus (time as an input channel), Rademacher. Evaluation: dopri5 at min(train
    tolerance, 1e-5), exact divergence for vectors up to 64 dimensions.

    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,))
    >>> model = build(toy, hidden=[8]).eval()
    >>> model.log_prob(torch.zeros(4, 2)).shape, [round(t, 6) for t in model.end_times()]
    (torch.Size([4]), [0.5])
    """
    return make_cnf_model(data, cnf)
