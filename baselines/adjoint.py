"""The adjoint method for tuple-state ODEs, with a compact backward state (torchdiffeq's solvers).

``odeint_adjoint(func, y0, t, params, ...)`` solves and differentiates as torchdiffeq's
``odeint_adjoint`` does: the forward solve is torchdiffeq's ``odeint`` on the tuple ``y0`` without a
graph; the backward solve integrates the state, its adjoint and the parameter adjoints from the last
time back to the first, in the same steps, with the same error norm. What differs is how that
backward state is held. torchdiffeq keeps it as a tuple of one tensor per parameter (plus time,
state and adjoint), which its tuple machinery splits and joins at every evaluation and whose
mixed norm takes one small reduction per tensor; here it is one flat tensor, split into the state
pieces only, and the norm is one fused reduction over all pieces. The steps, the NFE and the gradients are
torchdiffeq's (tested against it), in fewer operations per evaluation.

The norm of the backward solve is torchdiffeq's default adjoint norm: the largest RMS over the
state's pieces, the adjoint's pieces and every parameter's adjoint (its time adjoint is zero here:
the integration times take no gradient). A ``func`` with an ``end_backward_solve()`` method has it
called when the backward solve ends, normally or not (``baselines.cnf`` reads its step-size floor
record there). ``seminorm`` leaves the parameter adjoints out (Kidger et al. 2021, "Hey, that's
not an ODE"). RMS values are summed in another order than torchdiffeq's per-tensor means, so an
error ratio can differ in its last bits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torchdiffeq import odeint

from baselines import shards

__all__ = ["odeint_adjoint", "segment_rms_norm", "sharded_adjoint_norm"]


def segment_rms_norm(sizes: Sequence[int], device: torch.device) -> Callable[[Tensor], Tensor]:
    """A norm of flat tensors made of consecutive pieces of ``sizes``: the largest RMS over the
    pieces (empty ones skipped), torchdiffeq's mixed norm over a tuple of those pieces, in a few
    operations whatever their number (one fused norm of all the pieces, ``torch._foreach_norm``,
    scaled by 1 / sqrt(size)). The sizes stay Python ints, so no call reads the device on the host
    (``torch.segment_reduce`` validates device-held lengths with two host reads a call). ``device``
    is where the flat tensors live (the signature of the norms built per backward solve)."""
    kept = [n for n in sizes if n]  # an empty piece holds no element of the flat tensor
    scales = [1.0 / math.sqrt(n) for n in kept]

    def norm(flat: Tensor) -> Tensor:
        return torch.stack(torch._foreach_mul(torch._foreach_norm(flat.split(kept)), scales)).max()

    return norm


def sharded_adjoint_norm(shapes: Sequence[Sequence[int]], param_sizes: Sequence[int], shard: shards.Shard,
                         seminorm: bool) -> Callable[[Tensor], Tensor]:
    """``segment_rms_norm`` of the backward state ``[state, adjoint, parameter adjoints]`` of a
    sharded multi-process solve, over the global batch: the state and adjoint pieces (``shapes``,
    batch first) hold this process's rows, so their squares are summed over the processes; the
    parameter adjoints are the global ones already (their rates are summed at every evaluation)."""
    local = [math.prod(s) for s in shapes] * 2
    counts = [shard.total * math.prod(s[1:]) for s in shapes] * 2
    kept = [i for i, n in enumerate(counts) if n]

    def norm(flat: Tensor) -> Tensor:
        pieces = flat.split([*local, *param_sizes])
        squares = shards.all_sum(torch.stack([pieces[i].pow(2).sum() for i in kept]))
        rms = [squares[j] / counts[i] for j, i in enumerate(kept)]
        if not seminorm:
            rms += [p.pow(2).mean() for p in pieces[len(local):] if p.numel()]
        return torch.stack(rms).max().sqrt()

    return norm


class _Adjoint(torch.autograd.Function):
    """Forward: ``odeint`` without a graph. Backward: the adjoint solve on a flat state."""

    @staticmethod
    def forward(ctx: Any, setup: dict[str, Any], t: Tensor, *tensors: Tensor) -> tuple[Tensor, ...]:
        n = setup["n_state"]
        y0, params = tensors[:n], tensors[n:]
        with torch.no_grad():
            solution = odeint(setup["func"], tuple(y0), t, rtol=setup["rtol"], atol=setup["atol"],
                              method=setup["method"], options=setup["options"])
        ctx.setup = setup
        ctx.save_for_backward(t, *solution, *params)
        return tuple(solution)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        setup = ctx.setup
        with shards.sharded(setup["shard"]):
            return _Adjoint._backward(ctx, setup, grads)

    @staticmethod
    def _backward(ctx: Any, setup: dict[str, Any], grads: tuple[Tensor | None, ...]) -> tuple[Tensor | None, ...]:
        n, func, shard = setup["n_state"], setup["func"], setup["shard"]
        t, *saved = ctx.saved_tensors
        solution, params = saved[:n], tuple(saved[n:])
        shapes = [s.shape[1:] for s in solution]
        sizes = [math.prod(s) for s in shapes]
        grads = tuple(torch.zeros_like(s) if g is None else g for g, s in zip(grads, solution))
        state_size = sum(sizes)

        def flat_at(pieces: Sequence[Tensor], i: int) -> Tensor:
            return torch.cat([p[i].reshape(-1) for p in pieces])

        def unflat(flat: Tensor) -> tuple[Tensor, ...]:
            out, start = [], 0
            for shape, size in zip(shapes, sizes):
                out.append(flat[start:start + size].view(shape))
                start += size
            return tuple(out)

        def dynamics(time: Tensor, aug: Tensor) -> Tensor:
            y, adj = aug[:state_size], aug[state_size:2 * state_size]
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                rates = func(time.detach(), unflat(y))
                rates = (rates,) if isinstance(rates, Tensor) else tuple(rates)
                tied = [(r, a) for r, a in zip(rates, unflat(-adj)) if r.requires_grad]  # a constant rate has none
                vjps = (torch.autograd.grad([r for r, _ in tied], (y, *params), [a for _, a in tied],
                                            allow_unused=True, retain_graph=True) if tied else [None] * (1 + len(params)))
            vjps = [torch.zeros_like(x) if g is None else g for g, x in zip(vjps, (y, *params))]
            param_rates = torch.cat([g.reshape(-1) for g in vjps[1:]]) if params else y.new_zeros(0)
            if shard is not None:  # every process integrates the global parameter adjoint
                param_rates = shards.all_sum(param_rates)
            return torch.cat([*(r.reshape(-1) for r in rates), vjps[0].reshape(-1), param_rates])

        for name in ("callback_step", "callback_accept_step", "callback_reject_step"):
            callback = getattr(func, name + "_adjoint", None)  # torchdiffeq's adjoint callbacks
            if callback is not None:
                setattr(dynamics, name, callback)

        param_sizes = [p.numel() for p in params]
        if shard is not None:
            norm = sharded_adjoint_norm(shapes, param_sizes, shard, setup["seminorm"])
        elif setup["seminorm"]:  # the parameter adjoints out of the error control
            state_norm = segment_rms_norm([*sizes, *sizes], t.device)

            def norm(flat: Tensor) -> Tensor:
                return state_norm(flat[:2 * state_size])
        else:
            norm = segment_rms_norm([*sizes, *sizes, *param_sizes], t.device)
        options = {k: v for k, v in (setup["options"] or {}).items() if k != "norm"}
        options["norm"] = norm
        aug = torch.cat([flat_at(solution, -1), flat_at(grads, -1),
                         solution[0].new_zeros(sum(param_sizes))])
        try:
            for i in range(len(t) - 1, 0, -1):
                aug = odeint(dynamics, aug, t[i - 1:i + 1].flip(0), rtol=setup["adjoint_rtol"],
                             atol=setup["adjoint_atol"], method=setup["method"], options=options)[1]
                aug = torch.cat([flat_at(solution, i - 1), aug[state_size:2 * state_size] + flat_at(grads, i - 1),
                                 aug[2 * state_size:]])
        finally:  # the dynamics' end-of-solve check (baselines.cnf's step floor): its failure is the one to report
            end = getattr(func, "end_backward_solve", None)
            if end is not None:
                end()
        adjoint_y0 = unflat(aug[state_size:2 * state_size])
        param_grads, start = [], 2 * state_size
        share = 1.0 / shard.step if shard is not None else None  # the harness sums the processes' gradients
        for p in params:
            grad = aug[start:start + p.numel()].view_as(p)
            param_grads.append(grad if share is None else grad * share)
            start += p.numel()
        return (None, None, *adjoint_y0, *param_grads)


def odeint_adjoint(func: Callable[[Tensor, tuple[Tensor, ...]], Sequence[Tensor]], y0: Sequence[Tensor], t: Tensor,
                   params: Sequence[Tensor], *, rtol: float | Sequence[float], atol: float | Sequence[float],
                   method: str, options: dict[str, Any] | None = None, adjoint_rtol: float | None = None,
                   adjoint_atol: float | None = None, seminorm: bool = False) -> tuple[Tensor, ...]:
    """The solution of ``dy/dt = func(t, y)`` (``y`` a tuple) at the times ``t``, one tensor per
    state piece ``[len(t), *piece.shape]``, differentiable in ``y0`` and ``params`` (the tensors
    ``func`` reads that require a gradient) by the adjoint method; ``t`` takes no gradient.
    ``rtol``/``atol`` (a value or one per piece) control the forward solve, ``adjoint_rtol``/
    ``adjoint_atol`` (single values; default the forward ones when those are single values) the
    backward solve, which uses ``method`` and ``options`` too (``first_step``, ``step_size``).

    >>> decay = lambda t, y: (-y[0], -y[0].sum(1))
    >>> x = torch.ones(2, 3, requires_grad=True)
    >>> z, total = odeint_adjoint(decay, (x, torch.zeros(2)), torch.tensor([0.0, 1.0]), (), rtol=1e-8,
    ...                           atol=1e-8, method="dopri5")
    >>> torch.autograd.grad(z[-1].sum(), x)[0]  # dz(1)/dx = exp(-1)
    tensor([[0.3679, 0.3679, 0.3679],
            [0.3679, 0.3679, 0.3679]])
    """
    for name, value, backward in (("rtol", rtol, adjoint_rtol), ("atol", atol, adjoint_atol)):
        if backward is None and not isinstance(value, (int, float)):
            raise ValueError(f"{name} is given per state piece: give adjoint_{name} as one value for the backward solve")
    setup = {"func": func, "n_state": len(y0), "shard": shards.current(), "rtol": rtol, "atol": atol, "method": method,
             "options": dict(options or {}), "seminorm": seminorm,
             "adjoint_rtol": rtol if adjoint_rtol is None else adjoint_rtol,
             "adjoint_atol": atol if adjoint_atol is None else adjoint_atol}
    params = tuple(p for p in params if p.requires_grad)
    return _Adjoint.apply(setup, t.detach(), *y0, *params)
