"""A batch split over processes, computed as one process would compute it.

In a multi-process run (torch.distributed, one process per GPU) every process holds some rows of
one global batch: rows ``start, start + step, ...`` of ``total`` (``Shard``). While
``sharded(...)`` is active, the pieces of a model that look across the batch see the global batch
rather than the process's rows, so that N processes train the model one process would:

- ``draw_like``: random draws (Hutchinson probes, dequantisation noise) are made for the global
  batch from the generator every process holds in the same state, and each process keeps its rows;
- ``batch_mean`` / ``batch_var``: batch-norm and ActNorm statistics over the global batch, through
  a differentiable all-reduce (its backward sums the gradients the processes send to the statistic);
- ``rms_norm``: the ODE solvers' error norm over the global state, so every process takes the steps
  one process would take on the whole batch (and all of them the same steps);
- ``all_sum`` / ``any_rank`` / ``global_mean``: sums, agreed flags and the global batch's mean;
- ``BatchNorm2d`` and ``Dropout``: torch's layers (same state) with global statistics and masks.

Outside ``sharded`` (one process, or code that holds whole batches) each of these is the plain
single-process operation, bit for bit. The shard is process-wide, not a context variable: the
adjoint's backward solve may run in autograd's own threads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["all_sum", "any_rank", "batch_mean", "BatchNorm2d", "batch_var", "current", "draw_like", "Dropout",
           "global_mean", "rms_norm", "Shard", "sharded"]


@dataclass(frozen=True)
class Shard:
    """This process's rows of the global batch: ``start::step`` of ``total`` rows; ``device`` is where
    its flags are reduced (the process's GPU under NCCL, the CPU under gloo)."""

    start: int
    step: int
    total: int
    device: str = "cpu"

    @property
    def size(self) -> int:
        """How many rows this process holds."""
        return len(range(self.start, self.total, self.step))


_shard: Shard | None = None


def current() -> Shard | None:
    """The active shard; None when this process holds whole batches."""
    return _shard


@contextmanager
def sharded(shard: Shard | None) -> Iterator[Shard | None]:
    """While inside, batch-wide operations of the models see ``shard``'s global batch (None: whole
    batches, the default). Shards nest; the innermost wins."""
    global _shard
    previous, _shard = _shard, shard
    try:
        yield shard
    finally:
        _shard = previous


def _reduce(t: Tensor) -> Tensor:
    import torch.distributed as dist

    if t.requires_grad and torch.is_grad_enabled():
        from torch.distributed.nn.functional import all_reduce

        return all_reduce(t)  # backward: the sum of every process's gradient
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def all_sum(t: Tensor) -> Tensor:
    """``t`` summed over the processes of the active shard (``t`` itself when none is active);
    differentiable when ``t`` requires a gradient."""
    return t if _shard is None else _reduce(t)


def global_mean(local_mean: Tensor, rows: int) -> Tensor:
    """The global batch's mean of a per-row quantity whose mean over this process's ``rows`` rows is
    ``local_mean`` (itself when no shard is active); differentiable."""
    if _shard is None:
        return local_mean
    return _reduce(local_mean * (rows / _shard.total))


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds in any process of the active shard (``flag`` itself when none is)."""
    if _shard is None:
        return flag
    return bool(_reduce(torch.tensor([float(flag)], device=_shard.device)).item() > 0)


def draw_like(like: Tensor, draw: Callable[[Tensor], Tensor], blocks: int = 1) -> Tensor:
    """``draw(like)`` (e.g. ``torch.randn_like``) as this process's rows of the same draw over the
    global batch. ``like`` holds ``blocks`` consecutive copies of the process's rows (probes
    repeated over the batch), so the global draw holds ``blocks`` copies of the global batch."""
    shard = _shard
    if shard is None:
        return draw(like)
    rows = like.shape[0] // blocks
    if rows != shard.size:
        raise ValueError(f"a sharded draw over {rows} rows, but this process holds {shard.size} of the batch")
    full = torch.empty((blocks * shard.total, *like.shape[1:]), dtype=like.dtype, device=like.device)
    if like.dim() == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
        full = full.contiguous(memory_format=torch.channels_last)  # the same values at the same places
    values = draw(full)
    mine = values.view(blocks, shard.total, *like.shape[1:])[:, shard.start::shard.step]
    return mine.reshape(like.shape)


def batch_mean(x: Tensor, dims: Sequence[int]) -> Tensor:
    """Mean over ``dims`` (the batch dimension 0 among them), keeping them: over the global batch."""
    shard = _shard
    if shard is None:
        return x.mean(dim=list(dims), keepdim=True)
    count = shard.total * math.prod(x.shape[d] for d in dims if d != 0)
    return all_sum(x.sum(dim=list(dims), keepdim=True)) / count


def batch_var(x: Tensor, dims: Sequence[int], unbiased: bool, mean: Tensor | None = None) -> Tensor:
    """Variance over ``dims`` (the batch dimension 0 among them), keeping them: over the global
    batch, about ``mean`` (its ``batch_mean`` when not given)."""
    shard = _shard
    if shard is None:
        return x.var(dim=list(dims), keepdim=True, unbiased=unbiased)
    count = shard.total * math.prod(x.shape[d] for d in dims if d != 0)
    centre = batch_mean(x, dims) if mean is None else mean
    return all_sum((x - centre).pow(2).sum(dim=list(dims), keepdim=True)) / (count - 1 if unbiased else count)


def rms_norm(pieces: Tensor | Sequence[Tensor]) -> Tensor:
    """torchdiffeq's error norm of an ODE state whose pieces hold the batch in dimension 0: the
    largest RMS over the pieces (one tensor: its RMS), over the global batch (one all-reduce)."""
    shard = _shard
    pieces = [pieces] if isinstance(pieces, Tensor) else list(pieces)
    sums = torch.stack([p.pow(2).sum() for p in pieces])
    if shard is not None:
        sums = _reduce(sums)
    counts = [shard.total * math.prod(p.shape[1:]) if shard is not None else p.numel() for p in pieces]
    return torch.stack([s / n for s, n in zip(sums.unbind(), counts)]).max().sqrt()


class BatchNorm2d(torch.nn.BatchNorm2d):
    """``nn.BatchNorm2d`` (same parameters, buffers and arithmetic) whose training statistics are
    the global batch's while a shard is active: normalised by the biased variance, running averages
    moved towards the unbiased one, as torch's own layer does."""

    def forward(self, x: Tensor) -> Tensor:
        if _shard is None or not self.training or not self.track_running_stats:
            return super().forward(x)
        dims = (0, 2, 3)
        mean = batch_mean(x, dims)
        var = batch_var(x, dims, unbiased=False, mean=mean)
        count = _shard.total * x.shape[2] * x.shape[3]
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            self.running_mean.lerp_(mean.detach().flatten(), momentum)
            self.running_var.lerp_(var.detach().flatten() * (count / max(1, count - 1)), momentum)
        out = (x - mean) / torch.sqrt(var + self.eps)
        if self.affine:
            out = out * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return out


class Dropout(torch.nn.Dropout):
    """``nn.Dropout`` whose mask, while a shard is active, is this process's rows of the global
    batch's mask (drawn by the same operation, so one process draws the same numbers)."""

    def forward(self, x: Tensor) -> Tensor:
        if _shard is None or not self.training or not self.p:
            return super().forward(x)
        return x * draw_like(x, lambda t: torch.nn.functional.dropout(torch.ones_like(t), self.p, True))
