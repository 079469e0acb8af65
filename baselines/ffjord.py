"""FFJORD (Grathwohl et al. 2019): continuous normalising flows with Hutchinson's trace estimator.

Vectors (toy, tabular): a stack of CNF blocks with concat-squash MLP dynamics, optionally with
batch normalisation before every block and after the last (the layout of FFJORD's tabular
models). Images: the multi-scale model (per scale ``n_blocks`` CNFs, squeeze, ``n_blocks`` CNFs,
the second half of the channels factored out; the last scale ``n_blocks`` CNFs), dynamics of 3x3
concat convolutions (time as an input channel), as the official ODENVP builds them.
The logit transform of images is the dataset's preprocessing, not the model's.

``CNFFlowModel`` also carries RNODE's regularisers (weights 0 here; see ``baselines.rnode``).
Kind-dependent defaults (``None`` / ``"auto"``) follow the official entry points (rtqichen/ffjord's
train_toy.py, train_tabular.py, train_cnf.py; docs/cnf.md lists them with where we differ).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from baselines.base import FlowModel
from baselines.cnf import (ACTIVATIONS, CNF, DIVERGENCES, LAYER_TYPES, NOISES, Solver, SolverName, TimeNet, read_nfe,
                           squeeze, unsqueeze)
from baselines.constraints import Choice, Count, NonNegInt, NonNegative, Positive
from baselines.layers import RunningBatchNorm, std_normal_log_prob


# the declared values of the CNF builders' hyperparameters (ffjord, rnode, ccnf, infocnf)
Widths = Count | Sequence[Count] | None  # hidden: one width or one per layer; None: the kind's default
LayerType = Annotated[str, Choice("auto", *LAYER_TYPES)]
Activation = Annotated[str, Choice("auto", *ACTIVATIONS)]
Divergence = Annotated[str, Choice(*DIVERGENCES)]
Noise = Annotated[str, Choice("auto", *NOISES)]


class CNFFlowModel(FlowModel):
    """Base of the CNF models: ``to_latent(x) -> (latent pieces, log-det, regularisers)``, the loss
    ``mean NLL + reg_scale * (kinetic * K + jacobian * B)`` and NFE reading."""

    def __init__(self, kinetic: float = 0.0, jacobian: float = 0.0, reg_scale: float = 1.0):
        super().__init__()
        self.kinetic, self.jacobian, self.reg_scale = kinetic, jacobian, reg_scale

    def to_latent(self, x: Tensor) -> tuple[list[Tensor], Tensor, Tensor | None]:
        raise NotImplementedError

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        pieces, log_det, _ = self.to_latent(x)
        return sum(std_normal_log_prob(p) for p in pieces) + log_det

    def training_loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        pieces, log_det, regs = self.to_latent(x)
        nll = -(sum(std_normal_log_prob(p) for p in pieces) + log_det).mean()
        loss = nll
        stats = {"nll": float(nll.detach())}
        if regs is not None:
            kinetic, jac = regs.mean(0).unbind()
            loss = loss + self.reg_scale * (self.kinetic * kinetic + self.jacobian * jac)
            stats.update(kinetic=float(kinetic.detach()), jacobian=float(jac.detach()))
        return loss, stats

    def read_nfe(self) -> tuple[int, int]:
        """(forward, backward) dynamics evaluations since the last call, summed over blocks; resets."""
        return read_nfe(self)

    def end_times(self) -> list[float]:
        return [float(m.func.end_time.detach()) for m in self.modules() if isinstance(m, CNF)]


def _add_regs(total: Tensor | None, regs: Tensor | None) -> Tensor | None:
    if regs is None:
        return total
    return regs if total is None else total + regs


class VectorCNF(CNFFlowModel):
    """A stack of CNF blocks over N(0, I), with optional batch norm around every block."""

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
    """FFJORD's multi-scale image model (ODENVP without the logit layer).

    Per scale: ``n_blocks`` CNFs, squeeze (C, H, W) -> (4C, H/2, W/2), ``n_blocks`` CNFs, then the
    first half of the channels goes on to the next scale and the second half is factored out, as the
    official ``ODENVP`` splits them; the last scale has ``n_blocks`` CNFs and no squeeze. The latent
    pieces come out in the official order: the piece factored out first comes first.
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


def make_cnf_model(data: Any, *, n_blocks: int | None, hidden: Sequence[int] | None, layer_type: str,
                   activation: str, end_time: float, train_end_time: bool, divergence: str, eval_divergence: str,
                   noise: str, solver: str, atol: float | None, rtol: float | None, step_size: float | None,
                   eval_solver: str, eval_atol: float | None, eval_rtol: float | None, adjoint: bool, steer: float,
                   batch_norm: bool, n_scales: int, zero_last: bool, adjoint_seminorm: bool = False,
                   kinetic: float = 0.0, jacobian: float = 0.0, first_step: float | None = None) -> CNFFlowModel:
    """The CNF model for ``data`` (vector stack or multi-scale image model) with kind defaults filled in."""
    # YAML reads "1e-5" as a string: numbers from suites are coerced here
    atol, rtol, eval_atol, eval_rtol, step_size, first_step = (
        None if v is None else float(v) for v in (atol, rtol, eval_atol, eval_rtol, step_size, first_step))
    end_time, steer, kinetic, jacobian = float(end_time), float(steer), float(kinetic), float(jacobian)
    shape = tuple(data.shape)
    image = len(shape) == 3
    if len(shape) not in (1, 3):
        raise ValueError(f"CNF models need flat (D,) or image (C, H, W) data, got shape {shape} for {data.name}")
    toy = data.kind == "toy"
    if hidden is None:
        hidden = (64, 64, 64) if toy or image else (10 * shape[0],)
    hidden = tuple(int(h) for h in ([hidden] if isinstance(hidden, int) else hidden))
    # the official entry points: concat-squash layers for vectors, concat layers in the multi-scale model
    layer_type = layer_type if layer_type != "auto" else ("concat" if image else "concatsquash")
    activation = activation if activation != "auto" else ("tanh" if toy else "softplus")
    noise = noise if noise != "auto" else ("rademacher" if image else "gaussian")
    tabular = not toy and not image
    atol = atol if atol is not None else (1e-8 if tabular else 1e-5)
    rtol = rtol if rtol is not None else (1e-6 if tabular else 1e-5)
    train_solver = Solver(solver, atol, rtol, step_size, first_step)
    test_solver = Solver(eval_solver, eval_atol if eval_atol is not None else min(atol, 1e-5),
                         eval_rtol if eval_rtol is not None else min(rtol, 1e-5), step_size)
    regularize = bool(kinetic or jacobian)

    def make_block(block_shape: tuple[int, ...]) -> CNF:
        net = TimeNet(block_shape, hidden, layer_type, activation, zero_last=zero_last)
        return CNF(net, block_shape, end_time=end_time, train_end_time=train_end_time, divergence=divergence,
                   eval_divergence=eval_divergence, noise=noise, train_solver=train_solver, eval_solver=test_solver,
                   adjoint=adjoint, steer=steer, regularize=regularize, adjoint_seminorm=adjoint_seminorm)

    # images: regularisers on the bits/dim scale of the loss, as RNODE weighs them
    loss = dict(kinetic=kinetic, jacobian=jacobian, reg_scale=math.prod(shape) * math.log(2) if image else 1.0)
    if image:
        return MultiScaleCNF(shape, make_block, n_blocks=n_blocks or 2, n_scales=n_scales, **loss)
    return VectorCNF(shape[0], make_block, n_blocks=n_blocks or 1, batch_norm=batch_norm, **loss)


def build(data, n_blocks: Count | None = None, hidden: Widths = None, layer_type: LayerType = "auto",
          activation: Activation = "auto", end_time: Positive | None = None, train_end_time: bool = True,
          divergence: Divergence = "auto", eval_divergence: Divergence = "auto", noise: Noise = "auto",
          solver: SolverName = "dopri5", atol: Positive | None = None, rtol: Positive | None = None,
          step_size: Positive | None = None, eval_solver: SolverName = "dopri5", eval_atol: Positive | None = None,
          eval_rtol: Positive | None = None, adjoint: bool = True, steer: NonNegative = 0.0, batch_norm: bool = False,
          n_scales: NonNegInt = 0, zero_last: bool = False, adjoint_seminorm: bool = False,
          first_step: Positive | None = None) -> FlowModel:
    """FFJORD. Defaults by data kind, as the official entry points have them (docs/cnf.md): toy 3x64
    concat-squash tanh, T = 0.5 trained, exact divergence; tabular one hidden layer of 10 D
    concat-squash softplus, atol/rtol 1e-8/1e-6, Gaussian Hutchinson, no batch norm; images
    multi-scale with 2 blocks a scale, 64-64-64 concat conv softplus (time as an input channel),
    Rademacher. Evaluation: dopri5 at min(train tolerance, 1e-5), exact divergence for vectors up to
    64 dimensions. ``adjoint_seminorm`` leaves parameter adjoints out of the backward solve's error
    control; ``first_step`` fixes the adaptive solver's first step (``None``: torchdiffeq's choice)."""
    if end_time is None:
        end_time = 0.5 if data.kind == "toy" else 1.0
    return make_cnf_model(data, n_blocks=n_blocks, hidden=hidden, layer_type=layer_type, activation=activation,
                          end_time=end_time, train_end_time=train_end_time, divergence=divergence,
                          eval_divergence=eval_divergence, noise=noise, solver=solver, atol=atol, rtol=rtol,
                          step_size=step_size, eval_solver=eval_solver, eval_atol=eval_atol, eval_rtol=eval_rtol,
                          adjoint=adjoint, steer=steer, batch_norm=batch_norm, n_scales=n_scales, zero_last=zero_last,
                          adjoint_seminorm=adjoint_seminorm, first_step=first_step)
