"""The continuous-normalising-flow core shared by FFJORD, RNODE and InfoCNF (torchdiffeq).

Pieces:
- ``TimeNet``: the ODE dynamics network ``f(t, z)``, an MLP (vectors) or conv net (images) whose
  layers take time as FFJORD's layer types do: concat-squash ``layer(h) * sigmoid(a t + b) + c t``
  (the gates of every layer from one fused operation), concat (time as one more input or channel),
  or ignore (no time input).
- ``CNFDynamics``: the augmented ODE ``(z, log-det, [kinetic], [Jacobian])`` with the divergence
  by Hutchinson's estimator (one Gaussian or Rademacher probe per solve) or exactly (one autograd
  call per dimension); NFE counters for the forward solve and the backward pass apart.
- ``CNF``: one block, ``x -> (z(T), log|det dz/dx|, regularisers)``, solved over ``[0, T]``, so the
  solver takes exactly the steps torchdiffeq takes on the plain ODE (as FFJORD's code does), with
  T's exact gradient ``dL/dT = <dL/dstate(T), F(T, state(T))>`` attached at the end point (FFJORD's
  code cuts it, so T never trains there); the training
  and the evaluation solver/tolerances, adjoint (``baselines.adjoint``: torchdiffeq's method on a
  compact backward state) or direct backpropagation, STEER, and solver failures
  raised as ``SolverFailure`` (a ``FloatingPointError`` whose message says ``underflow`` when the
  step size collapsed), which the harness records as a diverged run.

Conventions: data at t = 0, latent at t = T; ``dz/dt = f(t, z)`` and ``d log|det|/dt = tr(df/dz)``,
so ``log p(x) = log p(z(T)) + log|det|``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchdiffeq import odeint

from baselines import shards
from baselines.adjoint import odeint_adjoint
from baselines.constraints import Choice

__all__ = ["act_and_tangent", "ACTIVATIONS", "ADAPTIVE_STEP", "AUTO_EXACT_EVAL_DIM", "AUTO_EXACT_TRAIN_DIM", "CNF",
           "CNFDynamics", "collect_block_nfe", "compile_dynamics", "CountedDynamics", "divergence_terms",
           "DIVERGENCES", "exact_divergence", "FIXED_STEP", "FLOOR_CHECK_STEPS", "forward_solve", "LAYER_TYPES",
           "NOISES", "sample_probe", "solve_limits", "SolveLimits", "Solver", "SolverFailure", "SolverName", "SOLVERS",
           "SolveTimeout", "squeeze", "StepFloorRecord", "TimeNet", "unsqueeze"]

ACTIVATIONS = {"tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU, "elu": nn.ELU, "swish": nn.SiLU}


def act_and_tangent(name: str, pre: Tensor, tangent: Tensor) -> tuple[Tensor, Tensor]:
    """(activation(pre), its Jacobian applied to ``tangent``) for forward-mode Jacobian products;
    ``tangent`` is [k, *pre.shape] (k tangents) or broadcasts to it. The tangent uses the
    activation's own backward kernel where that is faster through the adjoint's vector-Jacobian
    product too (tanh, relu): one fused op instead of a slope and a product."""
    if name == "tanh":
        y = torch.tanh(pre)
        return y, torch.ops.aten.tanh_backward(tangent, y)
    if name == "softplus":  # its fused kernel's own derivative costs more than a product's: 10% on MNIST's nets
        return F.softplus(pre), tangent * torch.sigmoid(pre)
    if name == "relu":
        return F.relu(pre), torch.ops.aten.threshold_backward(tangent, pre, 0.0)
    if name == "swish":  # silu_backward has no derivative of its own: the slope, spelt out
        sig = torch.sigmoid(pre)
        return pre * sig, tangent * (sig * (1 + pre * (1 - sig)))
    if name == "elu":
        y = F.elu(pre)
        return y, tangent * torch.where(pre > 0, torch.ones_like(pre), y + 1)
    raise ValueError(f"no derivative for activation {name!r}")


FIXED_STEP = ("rk4", "euler", "midpoint", "explicit_adams", "implicit_adams")
ADAPTIVE_STEP = ("dopri5", "dopri8", "bosh3", "adaptive_heun", "fehlberg2")
SOLVERS = (*ADAPTIVE_STEP, *FIXED_STEP)  # the torchdiffeq methods the solvers here drive
SolverName = Annotated[str, Choice(*SOLVERS)]  # a builder's declared solver hyperparameter


class SolverFailure(FloatingPointError):
    """The ODE solver gave up (step size underflow) or produced a non-finite state."""


class SolveTimeout(TimeoutError):
    """The wall-clock budget set by ``solve_limits`` ran out inside an ODE solve."""


_TIMEOUT = "the run's wall-clock budget ran out inside an ODE solve"


@dataclass(frozen=True)
class SolveLimits:
    """Bounds on every ODE solve: evaluations per solve, a step-size floor and a wall-clock deadline
    (``time.monotonic``)."""

    max_evals: int | None = None
    deadline: float | None = None
    min_step: float | None = None


# Process-wide, not a context variable: the adjoint's backward solve may run in autograd's own threads.
_limits = SolveLimits()


@contextmanager
def solve_limits(max_evals: int | None = None, seconds: float | None = None,
                 min_step: float | None = None) -> Iterator[SolveLimits]:
    """While inside: a solve that needs more than ``max_evals`` evaluations, or whose solver tries a step
    shorter than ``min_step`` (in the ODE's time), raises ``SolverFailure`` (a stiff or exploding field),
    and any evaluation after ``seconds`` raises ``SolveTimeout``, so one solve cannot hang a sweep.
    Limits nest; the innermost wins."""
    global _limits
    previous = _limits
    _limits = SolveLimits(max_evals, time.monotonic() + seconds if seconds is not None else None, min_step)
    try:
        yield _limits
    finally:
        _limits = previous


FLOOR_CHECK_STEPS = 8  # solver steps between host reads of the step-size floor record


class StepFloorRecord:
    """The smallest step of a run of solver steps and the time it started at, kept on the device
    (``observe`` adds a step without a host read), against the floor in force when it began."""

    def __init__(self, floor: float, step: Tensor, at: Tensor):
        self.floor, self.smallest, self.at, self.steps = floor, step, at, 1

    def observe(self, step: Tensor, at: Tensor) -> None:
        self.at = torch.where(step < self.smallest, at, self.at)
        self.smallest = torch.minimum(step, self.smallest)
        self.steps += 1


class CountedDynamics(nn.Module):
    """An ODE right-hand side that counts its evaluations: inside ``forward_solve`` as forward NFE,
    otherwise (the adjoint's backward solve) as backward NFE, and enforces ``solve_limits``.
    Subclasses call ``count()`` first."""

    _floor_record: StepFloorRecord | None = None  # steps not yet checked against the floor (a module
    # unpickled from before this attribute existed has none)

    def __init__(self):
        super().__init__()
        self.nfe_forward = 0
        self.nfe_backward = 0
        self.in_forward_solve = False
        self.solve_evals = 0  # evaluations in the current solve (forward, or the backward that follows)
        self._counting_forward = False
        self._floor_record: StepFloorRecord | None = None  # steps not yet checked against the floor

    def count(self) -> None:
        if self.in_forward_solve != self._counting_forward:  # a new solve: forward -> backward or back
            self._counting_forward, self.solve_evals = self.in_forward_solve, 0
        if self.in_forward_solve:
            self.nfe_forward += 1
        else:
            self.nfe_backward += 1
        self.solve_evals += 1
        limits = _limits
        if limits.max_evals is not None and self.solve_evals > limits.max_evals:
            self.check_step_floor()  # a step below the floor came first: that is the failure to report
            raise SolverFailure(f"more than {limits.max_evals} function evaluations in one ODE solve "
                                f"({'forward' if self.in_forward_solve else 'backward'}); the dynamics are too stiff "
                                "or exploding (lower the learning rate, or raise train.max_solver_evals)")
        if limits.deadline is not None and shards.current() is None and time.monotonic() > limits.deadline:
            raise SolveTimeout(_TIMEOUT)

    def callback_step(self, t0: Tensor, y0: Any, dt: Tensor) -> None:
        """torchdiffeq calls this before every step (forward solves): the step-size floor. The step is
        recorded on the device (``StepFloorRecord``) and read on the host every ``FLOOR_CHECK_STEPS``
        steps and when the solve ends (``check_step_floor``), not at every step. In a sharded
        multi-process step also the deadline, agreed by every process (so all stop at one step)."""
        deadline = _limits.deadline
        if deadline is not None and shards.current() is not None and shards.any_rank(time.monotonic() > deadline):
            raise SolveTimeout(_TIMEOUT)
        floor = _limits.min_step
        if floor is None:
            return
        step, at = abs(dt.detach()), t0.detach()
        record = self._floor_record
        if record is None or record.floor != floor:
            self._floor_record = record = StepFloorRecord(floor, step, at)
        else:
            record.observe(step, at)
        if record.steps >= FLOOR_CHECK_STEPS:
            self.check_step_floor()

    callback_step_adjoint = callback_step  # and before every step of the adjoint's backward solve

    def check_step_floor(self) -> None:
        """Read the steps recorded since the last check (one host read): a SolverFailure naming the floor
        when one fell below it; the record is cleared either way."""
        record, self._floor_record = self._floor_record, None
        if record is not None and bool(record.smallest < record.floor):
            raise SolverFailure(f"the ODE solver's step fell to {float(record.smallest):.3g} at t = "
                                f"{float(record.at):.4g}, below the floor {record.floor:g}; the dynamics are too stiff "
                                "or exploding (lower the learning rate, or lower train.min_solver_step)")

    def end_backward_solve(self) -> None:
        """``baselines.adjoint`` calls this when the backward solve ends: its last steps' floor check."""
        self.check_step_floor()

    def read_nfe(self) -> tuple[int, int]:
        """Evaluations (forward solves, backward solves) since the last call; resets."""
        out = (self.nfe_forward, self.nfe_backward)
        self.nfe_forward = self.nfe_backward = 0
        return out


@contextmanager
def forward_solve(func: CountedDynamics, solver: "Solver") -> Iterator[None]:
    """Around one forward solve: ``func`` counts its evaluations as forward NFE (``in_forward_solve``),
    its steps are checked against the step-size floor at the end (and steps left unchecked by a backward
    solve before it, torchdiffeq's adjoint, at the start), and torchdiffeq's step-size underflow becomes
    a SolverFailure naming the solver setting."""
    func.check_step_floor()
    func.in_forward_solve = True
    func.solve_evals = 0
    try:
        yield
    except Exception as err:
        func.check_step_floor()  # a step below the floor came first: that is the failure to report
        if isinstance(err, AssertionError) and "underflow" in str(err):
            raise SolverFailure(f"ODE solver step size underflow ({err}); tolerance {solver.atol}/{solver.rtol}, "
                                f"method {solver.method}") from None
        raise
    else:
        func.check_step_floor()
    finally:
        func.in_forward_solve = False


# -- dynamics networks ---------------------------------------------------------------------------
LAYER_TYPES = ("concatsquash", "concat", "ignore")


class TimeNet(nn.Module):
    """``f(t, z)``: a stack of linear (vectors) or 3x3 conv (images) layers with an activation between.

    How each layer sees time (``layer_type``, FFJORD's names):
    - ``"concatsquash"``: the output is gated by time, ``W h * sigmoid(g_w t + g_b) + b_w t``
      (FFJORD's toy and tabular default);
    - ``"concat"``: time is one more input, ``W [t, h] + b`` (for images a constant channel, zero-padded
      like the others; FFJORD's and RNODE's multi-scale image default);
    - ``"ignore"``: no time input.
    ``zero_last`` zeroes the last layer's weights (not its bias), as RNODE initialises its image nets.
    """

    def __init__(self, shape: Sequence[int], hidden: Sequence[int], layer_type: str = "concatsquash",
                 activation: str = "tanh", zero_last: bool = False):
        super().__init__()
        if layer_type not in LAYER_TYPES:
            raise ValueError(f"layer_type must be one of {', '.join(LAYER_TYPES)}, got {layer_type!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        shape = tuple(shape)
        self.conv = len(shape) == 3
        self.concat = layer_type == "concat"
        dims = [shape[0], *hidden, shape[0]]
        extra = 1 if self.concat else 0  # the time input comes first, as FFJORD's concat layers put it
        if self.conv:
            layers = [nn.Conv2d(a + extra, b, 3, padding=1) for a, b in zip(dims[:-1], dims[1:])]
        else:
            layers = [nn.Linear(a + extra, b) for a, b in zip(dims[:-1], dims[1:])]
        if zero_last:
            nn.init.zeros_(layers[-1].weight)
        self.layers = nn.ModuleList(layers)
        self.act = ACTIVATIONS[activation]()
        self.activation = activation
        self.squash = layer_type == "concatsquash"
        self.splits = dims[1:]
        if self.squash:  # per layer: gate = sigmoid(t g_w + g_b), bias = t b_w (FFJORD's hyper-networks)
            def uniform() -> nn.ParameterList:
                return nn.ParameterList(nn.Parameter(torch.empty(n).uniform_(-1, 1)) for n in self.splits)

            # one tensor a layer, as FFJORD's layers hold them: the adjoint's error norm takes the
            # largest RMS over parameter tensors, so fusing them would change the backward steps
            self.gate_w, self.gate_b, self.bias_w = uniform(), uniform(), uniform()

    def _time_gates(self, t: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
        """Every layer's concat-squash gate sigmoid(w t + b) and bias w' t, from one fused op."""
        # the lists' own parameter dicts: ParameterList's iterator re-indexes itself, item by item
        gate_w, gate_b, bias_w = (torch.cat(tuple(p._parameters.values()))
                                  for p in (self.gate_w, self.gate_b, self.bias_w))
        gates = torch.sigmoid(torch.addcmul(gate_b, gate_w, t)).split(self.splits)
        return gates, (bias_w * t).split(self.splits)

    def _state_weight(self, layer: nn.Module) -> Tensor:
        """The weights acting on the state (a concat layer's time column left out)."""
        return layer.weight[:, 1:] if self.concat else layer.weight

    def _linear(self, layer: nn.Module, h: Tensor, t: Tensor, bias: bool = True) -> Tensor:
        """One layer's affine map of ``h`` (and, for concat layers, of the time input)."""
        b = layer.bias if bias else None
        w = self._state_weight(layer)
        out = F.conv2d(h, w, b, padding=1) if self.conv else F.linear(h, w, b)
        if self.concat and bias:
            w_t = layer.weight[:, :1]
            if self.conv:  # time as a constant, zero-padded channel: t * conv(ones, w_t), one small map
                ones = h.new_ones(1, 1, *h.shape[2:])
                out = out + t * F.conv2d(ones, w_t, padding=1)
            else:
                out = out + t * w_t[:, 0]
        return out

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        h = z
        t = t.to(z.dtype)
        if self.squash:
            gates, biases = self._time_gates(t)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = self._linear(layer, h, t)
            if self.squash:
                g, b = (gates[i], biases[i]) if not self.conv else (gates[i][:, None, None], biases[i][:, None, None])
                h = torch.addcmul(b, h, g)
            if i < last:
                h = self.act(h)
        return h

    def forward_jvp(self, t: Tensor, z: Tensor, tangents: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(f(t, z), J v)`` for k tangents ``v`` [k, *z.shape] by forward-mode propagation: no autograd
        call, so the outer backward pass is first order (the divergence needs no double backward).
        ``tangents=None``: the D standard basis vectors (the exact trace). A linear first layer maps
        basis vector j to its weight column j for every example, so that product is the transposed
        weight, broadcast over the batch, with no matrix product."""
        batch = z.shape[0]
        k = z[0].numel() if tangents is None else tangents.shape[0]
        if tangents is None and self.conv:  # no shortcut for convolutions: the basis, explicitly
            tangents = torch.eye(k, dtype=z.dtype, device=z.device).view(k, 1, *z.shape[1:]).expand(k, *z.shape)
        v = None if tangents is None else tangents.reshape(k * batch, *z.shape[1:])
        h = z
        t = t.to(z.dtype)
        if self.squash:
            gates, biases = self._time_gates(t)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = self._linear(layer, h, t)
            # [k, 1, n] while the tangents are the same for every example, else [k * batch, ...]
            v = self._state_weight(layer).t().unsqueeze(1) if v is None else self._linear(layer, v, t, bias=False)
            if self.squash:
                g, b = (gates[i], biases[i]) if not self.conv else (gates[i][:, None, None], biases[i][:, None, None])
                h, v = torch.addcmul(b, h, g), v * g
            if i < last:
                h, v = act_and_tangent(self.activation, h, v.reshape(k, -1, *h.shape[1:]))
                v = v.reshape(k * batch, *h.shape[1:])
        return h, v.reshape(k, -1, *h.shape[1:]).expand(k, *h.shape)


# -- the augmented ODE ---------------------------------------------------------------------------
NOISES = ("gaussian", "rademacher")  # Hutchinson probes
DIVERGENCES = ("hutchinson", "exact", "auto")


def sample_probe(like: Tensor, noise: str) -> Tensor:
    """A Hutchinson probe with E[e e^T] = I: standard Gaussian or Rademacher (+-1); in a sharded
    multi-process step, this process's rows of the global batch's probe."""
    if noise == "gaussian":
        return shards.draw_like(like, torch.randn_like)
    if noise == "rademacher":
        return shards.draw_like(like, lambda t: torch.randint_like(t, 0, 2).mul_(2).sub_(1))
    raise ValueError(f"noise must be 'gaussian' or 'rademacher', got {noise!r}")


def exact_divergence(dz: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor]:
    """(trace of dz/dz per example, squared Frobenius norm per example), one autograd call per dimension.

    Relies on the dynamics acting on each example independently (no batch coupling).
    """
    flat = dz.reshape(dz.shape[0], -1)
    div = flat.new_zeros(flat.shape[0])
    frob = flat.new_zeros(flat.shape[0])
    n = flat.shape[1]
    for i in range(n):
        row = torch.autograd.grad(flat[:, i].sum(), z, retain_graph=True, create_graph=create_graph)[0]
        row = row.reshape(row.shape[0], -1)
        div = div + row[:, i]
        frob = frob + row.pow(2).sum(1)
    return div, frob


def divergence_terms(net: nn.Module, t: Tensor, z: Tensor, probe: Tensor | None,
                     want_frob: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(f(t, z), divergence, squared Jacobian norm or None)`` from ``net.forward_jvp``'s
    Jacobian-vector products: with ``probe=None`` the exact trace (the D basis vectors propagate
    with the state in one pass) and ``||J||_F^2``; else Hutchinson's ``e^T J e`` and ``||J e||^2``."""
    batch = z.shape[0]
    if probe is None:
        dim = z[0].numel()
        f, jv = net.forward_jvp(t, z, None)  # the standard basis
        jv = jv.reshape(dim, batch, dim)  # jv[i, b, j] = J[b]_{j i}
        div = torch.diagonal(jv, dim1=0, dim2=2).sum(1)
        frob = jv.pow(2).sum((0, 2)) if want_frob else None
    else:
        f, jv = net.forward_jvp(t, z, probe.unsqueeze(0))
        jv = jv[0]
        div = (jv * probe).reshape(batch, -1).sum(1)
        frob = jv.pow(2).reshape(batch, -1).sum(1) if want_frob else None
    return f, div, frob


class CNFDynamics(CountedDynamics):
    """The augmented dynamics ``(z, logdet, *regs) -> derivatives`` in the original time ``t in [0, T]``.

    ``dz/dt = f(t, z)``; ``dlogdet/dt = tr(df/dz)``; the regulariser states integrate ``0.5 mean_d f^2``
    (kinetic energy) and ``mean_d (J e)^2`` with the divergence's probe (``(e^T J)^2`` on the autograd
    path; both estimate ``||J||_F^2 / D``, which the exact divergence gives exactly), ``J = df/dz``.
    The end time ``T = sqrt_end_time^2`` is held here but enters only as the solve's upper limit
    (``CNF._solve``), so the solver takes the steps it takes on the plain ODE, as FFJORD's code does.
    """

    def __init__(self, net: nn.Module, end_time: float = 1.0, train_end_time: bool = False):
        super().__init__()
        self.net = net
        # T = sqrt_end_time^2 keeps T > 0; trains only when asked
        self.sqrt_end_time = nn.Parameter(torch.tensor(math.sqrt(end_time)), requires_grad=train_end_time)
        self.forward_mode = True  # Jacobian-vector products by forward propagation when the net offers them
        self._terms: Any = divergence_terms  # or its torch.compile'd twin (compile_divergence)
        # per-solve settings, set by CNF before each solve
        self.probe: Tensor | None = None
        self.exact = False
        self.n_regs = 0
        self.with_logdet = True
        self.detach_time = False

    @property
    def end_time(self) -> Tensor:
        return self.sqrt_end_time.pow(2)

    def forward(self, t: Tensor, state: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        self.count()
        if self.detach_time:
            # Adjoint solves: no gradient flows into the time input. Nothing needs d/dt of the integration
            # times (T's gradient is attached at the end point), and torchdiffeq's adjoint would otherwise
            # integrate a time adjoint inside its error norm, taking more backward steps than FFJORD's code
            # (whose dynamics copy t). Direct backpropagation keeps t: its gradient runs through the
            # solver's step sizes, and cutting one path of them would make it inconsistent.
            t = t.detach()
        if not self.with_logdet:  # sampling: the state alone (a tensor, not a tuple)
            return self.net(t, state)
        z = state[0]
        if self.forward_mode and hasattr(self.net, "forward_jvp"):
            dz, div, frob = self._forward_mode(t, z)
            out: list[Tensor] = [dz, div]
        else:
            create_graph = torch.is_grad_enabled()
            dz, div, frob = self._autograd(t, z, create_graph)
            out = [dz, div]
            if not create_graph:
                out = [o.detach() for o in out]
                frob = frob.detach() if frob is not None else None
        if self.n_regs:
            dim = z[0].numel()
            out.append(0.5 * out[0].pow(2).reshape(z.shape[0], -1).sum(1) / dim)
            out.append(frob / dim)
        return tuple(out)

    def compile_divergence(self, backend: str = "inductor") -> None:
        """Evaluate this block's dynamics and divergence (``divergence_terms``) through ``torch.compile``.

        Same arithmetic, fused kernels: fewer small-op dispatches per evaluation, in the forward
        solve and in the adjoint's vector-Jacobian products. Compiling costs seconds once per
        process and input shape, so it pays on long runs only (docs/cnf.md, "Speed")."""
        if not hasattr(self.net, "forward_jvp"):
            raise ValueError(f"{type(self.net).__name__} has no forward_jvp to compile")
        # torchdiffeq's adjoint keeps the graph of each evaluation (retain_graph), which compiled
        # backward graphs allow only without donated buffers; the backward graph is compiled at its
        # first use, outside any call here, so the setting is process-wide. Every block, mode
        # (exact, Hutchinson, regularised) and batch shape is one more compiled entry of the same code.
        from torch._dynamo import config as dynamo_config
        from torch._functorch import config as functorch_config

        functorch_config.donated_buffer = False
        dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, 64)
        # static shapes: one entry per block shape and batch size (inductor's dynamic shapes fail on the
        # multi-scale conv nets: "cannot determine truth value of Relational")
        self._terms = torch.compile(divergence_terms, dynamic=False, backend=backend)

    def _forward_mode(self, t: Tensor, z: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """Divergence from Jacobian-vector products (``divergence_terms``)."""
        return self._terms(self.net, t, z, None if self.exact else self.probe, bool(self.n_regs))

    def _autograd(self, t: Tensor, z: Tensor, create_graph: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Divergence by reverse-mode autograd (any dynamics module): e^T J e, or one call a dimension."""
        with torch.enable_grad():
            if not (create_graph and z.requires_grad):  # a fresh leaf unless the outer graph must run through z
                z = z.detach().requires_grad_(True)
            dz = self.net(t, z)
            if self.exact:
                div, frob = exact_divergence(dz, z, create_graph)
            else:
                e = self.probe
                e_j = torch.autograd.grad(dz, z, e, create_graph=create_graph)[0]
                div = (e_j * e).reshape(z.shape[0], -1).sum(1)
                frob = e_j.pow(2).reshape(z.shape[0], -1).sum(1) if self.n_regs else None
        return dz, div, frob


@dataclass
class Solver:
    """One solver setting: method, tolerances, the step size of fixed-step methods, and optionally the
    first step of adaptive ones (RNODE's scripts fix it; ``None`` lets torchdiffeq choose)."""

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    step_size: float | None = None
    first_step: float | None = None

    def options(self) -> dict | None:
        """torchdiffeq's ``options``; in a sharded multi-process step adaptive solvers take the error
        norm over the global batch (``shards.rms_norm``), so every process takes the steps one would."""
        if self.method in FIXED_STEP:
            return {"step_size": self.step_size if self.step_size else 0.25}
        options = {} if self.first_step is None else {"first_step": self.first_step}
        if shards.current() is not None:
            options["norm"] = shards.rms_norm
        return options or None


AUTO_EXACT_TRAIN_DIM = 4  # "auto" divergence: exact in training up to this dimension (toy data)
AUTO_EXACT_EVAL_DIM = 64  # ... and in evaluation up to this one (every tabular set); never for images


class CNF(nn.Module):
    """One continuous flow block ``x -> z(T)`` with its log-determinant (and regularisers).

    ``divergence`` (training) and ``eval_divergence`` (``self.training == False``): ``"hutchinson"``,
    ``"exact"``, or ``"auto"`` (exact for vectors up to AUTO_EXACT_TRAIN_DIM / AUTO_EXACT_EVAL_DIM
    dimensions; Hutchinson for images). ``val_divergence`` (``None``: ``eval_divergence``) replaces
    ``eval_divergence`` while ``evaluation_phase`` is ``"val"`` (the harness sets it around its
    validation evaluations, ``baselines.base.evaluation_phase``; ``"test"`` otherwise), as FFJORD's
    train_tabular.py validates with Hutchinson's estimator and tests with the exact trace.
    Training solves use ``train_solver``, evaluation solves ``eval_solver``.
    ``steer``: b of STEER; in training the end time is ``T + U(-b, b)``.
    ``regularize``: integrate the kinetic and Jacobian terms in training (returned by ``forward``).
    ``adjoint``: backpropagate by torchdiffeq's adjoint solve instead of through the solver's steps;
    ``adjoint_seminorm``: leave the parameter adjoints out of the adjoint solve's error control.
    ``tolerance``: a per-solve override (``None``: the configured solvers): while set, forward solves
    (training or evaluation, and the adjoint solve) use ``atol = rtol = tolerance`` (InfoCNF's learned
    tolerances set it from a policy before each block's solve).
    The continuous flow of Chen et al. 2018 (Neural ODEs) with FFJORD's stochastic trace
    (Grathwohl et al. 2019).

    >>> block = CNF(TimeNet((2,), [8]), (2,)).eval()
    >>> z, log_det, regs = block(torch.zeros(3, 2))
    >>> z.shape, log_det.shape, regs is None
    (torch.Size([3, 2]), torch.Size([3]), True)
    """

    def __init__(self, net: nn.Module, shape: Sequence[int], end_time: float = 1.0, train_end_time: bool = False,
                 divergence: str = "hutchinson", eval_divergence: str = "auto", noise: str = "gaussian",
                 train_solver: Solver | None = None, eval_solver: Solver | None = None, adjoint: bool = True,
                 steer: float = 0.0, regularize: bool = False, adjoint_seminorm: bool = False,
                 val_divergence: str | None = None):
        super().__init__()
        for name, value in (("divergence", divergence), ("eval_divergence", eval_divergence),
                            ("val_divergence", eval_divergence if val_divergence is None else val_divergence)):
            if value not in DIVERGENCES:
                raise ValueError(f"{name} must be 'hutchinson', 'exact' or 'auto', got {value!r}")
        if not 0.0 <= steer < end_time:
            raise ValueError(f"steer must be in [0, end_time={end_time}), got {steer}")
        sample_probe(torch.zeros(1), noise)  # validates noise
        self.func = CNFDynamics(net, end_time, train_end_time)
        self.shape = tuple(shape)
        self.dim = math.prod(self.shape)
        self.divergence, self.eval_divergence, self.noise = divergence, eval_divergence, noise
        self.val_divergence = val_divergence
        self.evaluation_phase = "test"  # "val" inside the harness's validation evaluations
        self.train_solver = train_solver or Solver()
        self.eval_solver = eval_solver or Solver()
        self.adjoint, self.steer, self.regularize = adjoint, steer, regularize
        self.adjoint_seminorm = adjoint_seminorm
        self.tolerance: float | None = None

    def _exact(self) -> bool:
        """Exact trace for this solve? ``auto`` means exact for low-dimensional vectors, never for images
        (a conv net's exact trace costs one tangent a pixel: Hutchinson, as FFJORD evaluates images)."""
        if self.training:
            mode, limit = self.divergence, AUTO_EXACT_TRAIN_DIM
        else:
            validating = self.evaluation_phase == "val" and self.val_divergence is not None
            mode, limit = (self.val_divergence if validating else self.eval_divergence), AUTO_EXACT_EVAL_DIM
        return mode == "exact" or (mode == "auto" and len(self.shape) == 1 and self.dim <= limit)

    def _end_time(self, steer_offset: float, like: Tensor) -> Tensor:
        """T (plus this solve's STEER offset) as a tensor that keeps its graph to ``sqrt_end_time``."""
        end = self.func.end_time.to(like.dtype)
        if steer_offset:
            end = end + steer_offset
        return end

    @staticmethod
    def _require_positive(end: Tensor) -> None:
        """A SolverFailure when T is not positive (a host read: on failure paths only)."""
        if not bool(end > 0):
            raise SolverFailure(f"the end time T is {float(end):.3g}: the flow has collapsed (T must stay positive)")

    def _check_solve(self, final: tuple[Tensor, ...], end: Tensor) -> None:
        """After a solve, one host read for both checks: T > 0 and a finite end state and log-det."""
        ok = torch.stack([end.detach() > 0, *(torch.isfinite(o).all() for o in final)]).all()
        if shards.any_rank(not bool(ok)):  # every process of a sharded step fails together
            self._require_positive(end)
            raise SolverFailure("ODE solve produced a non-finite state or log-det (NaN/inf; not an underflow)")

    def _solve(self, state: tuple[Tensor, ...], reverse: bool, solver: Solver,
               steer_offset: float = 0.0) -> tuple[Tensor, ...]:
        """Solve over ``[0, T]`` (``[T, 0]`` reversed): the plain ODE's time, so the solver takes the steps
        torchdiffeq takes on ``dz/dt = f(t, z)``. T's gradient is attached at the end point (below)."""
        func = self.func
        end = self._end_time(steer_offset, state[0])
        zero = torch.zeros((), dtype=end.dtype, device=end.device)
        t = torch.stack([end.detach(), zero] if reverse else [zero, end.detach()])
        n_extra = len(state) - 1
        # regulariser states take no part in step-size control (RNODE's choice)
        atol = solver.atol if not n_extra or n_extra == 1 else (solver.atol, solver.atol) + (1e20,) * (n_extra - 1)
        rtol = solver.rtol if not n_extra or n_extra == 1 else (solver.rtol, solver.rtol) + (1e20,) * (n_extra - 1)
        tensor_state = len(state) == 1
        kwargs = dict(rtol=rtol, atol=atol, method=solver.method, options=solver.options())
        use_adjoint = self.adjoint and torch.is_grad_enabled() and self.training
        func.detach_time = use_adjoint  # kept for the backward solve that follows
        with forward_solve(func, solver):
            y0 = state[0] if tensor_state else state
            try:
                if use_adjoint:  # a compact backward state (baselines/adjoint.py); torchdiffeq's steps and norm
                    params = tuple(p for p in func.net.parameters() if p.requires_grad)  # the dynamics' own
                    out = odeint_adjoint(func, state, t, params, adjoint_atol=solver.atol, adjoint_rtol=solver.rtol,
                                         seminorm=self.adjoint_seminorm and solver.method not in FIXED_STEP, **kwargs)
                else:
                    out = odeint(func, y0, t, **kwargs)
            except AssertionError:  # torchdiffeq rejects the times [0, 0] of a collapsed T
                self._require_positive(end)
                raise
            out = (out,) if isinstance(out, Tensor) else out
            final = tuple(o[-1] for o in out)
            self._check_solve(final, end)
            if end.requires_grad and torch.is_grad_enabled() and not reverse:
                final = self._attach_end_time_gradient(final, end)
        return final

    def _attach_end_time_gradient(self, final: tuple[Tensor, ...], end: Tensor) -> tuple[Tensor, ...]:
        """d state(T) / dT = the dynamics at the end point: one more evaluation (a forward NFE), added as
        ``(T - T.detach()) * F(T, state(T))``, zero in value. Neither the adjoint nor the solver's steps
        see T, so its gradient costs no adjoint state and no step-size control, unlike integration
        times that require grad (torchdiffeq then integrates a time adjoint inside its error norm)."""
        with torch.no_grad():
            rate = self.func(end.detach(), final[0] if len(final) == 1 else final)
        rate = (rate,) if isinstance(rate, Tensor) else rate
        shift = end - end.detach()
        return tuple(s + shift * r for s, r in zip(final, rate))

    def _steer_offset(self) -> float:
        if self.training and self.steer > 0:
            return float(torch.empty(()).uniform_(-self.steer, self.steer))
        return 0.0

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """x -> (z(T), log|det dz/dx| per example, regularisers [batch, 2] or None)."""
        func = self.func
        func.exact = self._exact()
        func.probe = None if func.exact else sample_probe(x, self.noise)
        func.n_regs = 2 if (self.regularize and self.training) else 0
        func.with_logdet = True
        solver = self.train_solver if self.training else self.eval_solver
        if self.tolerance is not None:
            solver = replace(solver, atol=float(self.tolerance), rtol=float(self.tolerance))
        zeros = x.new_zeros(x.shape[0])
        state = (x, zeros) + (zeros, zeros) * (func.n_regs // 2)
        out = self._solve(state, reverse=False, solver=solver, steer_offset=self._steer_offset())
        regs = torch.stack(out[2:], 1) if func.n_regs else None
        return out[0], out[1], regs

    def inverse(self, z: Tensor) -> Tensor:
        """z(T) -> x by the reverse solve (evaluation solver; no log-determinant)."""
        func = self.func
        func.with_logdet, func.n_regs = False, 0
        try:
            return self._solve((z,), reverse=True, solver=self.eval_solver)[0]
        finally:
            func.with_logdet = True

    def read_nfe(self) -> tuple[int, int]:
        """(forward, backward) evaluations of this block's dynamics since the last call; resets."""
        return self.func.read_nfe()


def compile_dynamics(module: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` the Jacobian-vector function of every CNF block in ``module`` (see
    ``CNFDynamics.compile_divergence``); returns how many blocks were compiled (0: no CNF inside)."""
    blocks = [m for m in module.modules() if isinstance(m, CNFDynamics) and hasattr(m.net, "forward_jvp")]
    for block in blocks:
        block.compile_divergence(backend)
    return len(blocks)


def collect_block_nfe(module: nn.Module) -> tuple[int, int]:
    """(forward, backward) evaluations counted by every CNF block inside ``module`` since the last
    read, summed; resets the blocks' counters (what a CNF model's ``read_nfe()`` returns)."""
    forward = backward = 0
    for m in module.modules():
        if isinstance(m, CNFDynamics):
            f, b = m.read_nfe()
            forward, backward = forward + f, backward + b
    return forward, backward


def squeeze(x: Tensor) -> Tensor:
    """(C, H, W) -> (4C, H/2, W/2), volume preserving."""
    return F.pixel_unshuffle(x, 2)


def unsqueeze(x: Tensor) -> Tensor:
    return F.pixel_shuffle(x, 2)
