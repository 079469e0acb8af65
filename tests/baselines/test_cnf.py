"""The CNF core against independent computations: closed-form linear flows, brute-force Jacobians
along the solved trajectory, Hutchinson's unbiasedness, inversion, NFE accounting, end-time gradients,
STEER and solver failures."""

from __future__ import annotations

import math
import time

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian
from torchdiffeq import odeint, odeint_adjoint

from baselines.cnf import CNF, CNFDynamics, SolverFailure, Solver, TimeNet, exact_divergence

TIGHT = Solver("dopri5", 1e-10, 1e-10)


class LinearField(nn.Module):
    """dz/dt = A z: z(T) = expm(T A) z(0), log|det| = T tr(A)."""

    def __init__(self, a: torch.Tensor):
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a.T


def cnf(net: nn.Module, dim: int, **kw) -> CNF:
    kw = {"train_solver": TIGHT, "eval_solver": TIGHT, "divergence": "exact", "eval_divergence": "exact", **kw}
    return CNF(net, (dim,), **kw).double()


def simpson(values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Composite Simpson rule over an odd number of equally spaced points (first axis)."""
    h = (t[1] - t[0])
    w = torch.ones(len(t), dtype=values.dtype)
    w[1:-1:2], w[2:-1:2] = 4, 2
    return (w.view(-1, *[1] * (values.dim() - 1)) * values).sum(0) * h / 3


@pytest.mark.parametrize("dim", [2, 3])
def test_linear_flow_matches_closed_form(dim):
    torch.manual_seed(dim)
    a = torch.randn(dim, dim, dtype=torch.float64) * 0.7
    block = cnf(LinearField(a), dim, end_time=0.8).eval()
    x = torch.randn(5, dim, dtype=torch.float64)
    with torch.no_grad():
        z, logdet, _ = block(x)
    assert torch.allclose(z, x @ torch.linalg.matrix_exp(0.8 * a).T, atol=1e-8)
    assert torch.allclose(logdet, torch.full_like(logdet, 0.8 * float(torch.trace(a))), atol=1e-8)


@pytest.mark.parametrize("dim", [2, 3])
def test_exact_trace_matches_brute_force_jacobian_along_trajectory(dim):
    torch.manual_seed(0)
    net = TimeNet((dim,), (16, 16), "concatsquash", "tanh").double()
    block = cnf(net, dim, end_time=0.7).eval()
    x = torch.randn(4, dim, dtype=torch.float64)
    with torch.no_grad():
        z, logdet, _ = block(x)
    # independent: solve the state alone on a grid, trace of the autograd Jacobian at each point, Simpson
    t = torch.linspace(0, 0.7, 201, dtype=torch.float64)
    with torch.no_grad():
        traj = odeint(lambda s, y: net(s, y), x, t, rtol=1e-11, atol=1e-11)
    traces = torch.stack([torch.stack([torch.trace(jacobian(lambda v: net(ti, v[None])[0], zi)) for zi in zt])
                          for ti, zt in zip(t, traj)])
    assert torch.allclose(z, traj[-1], atol=1e-8)
    assert torch.allclose(logdet, simpson(traces, t), atol=1e-7)
    # and Liouville: the log-det of the flow map's Jacobian
    flow_map = [torch.linalg.slogdet(jacobian(lambda v: odeint(lambda s, y: net(s, y), v[None], t[[0, -1]],
                                                               rtol=1e-11, atol=1e-11)[-1, 0], xi))[1] for xi in x]
    assert torch.allclose(logdet, torch.stack(flow_map), atol=1e-7)


@pytest.mark.parametrize("noise", ["gaussian", "rademacher"])
def test_hutchinson_log_det_is_unbiased(noise):
    """One point repeated 4000 times: every copy gets its own probe (held fixed through its solve);
    the mean of the estimates is within 4 standard errors of the exact log-det."""
    torch.manual_seed(1)
    net = TimeNet((3,), (16, 16), "concatsquash", "tanh").double()
    block = cnf(net, 3, end_time=1.0, divergence="hutchinson", noise=noise, train_solver=Solver("dopri5", 1e-8, 1e-8))
    x = torch.randn(1, 3, dtype=torch.float64)
    with torch.no_grad():
        block.eval()
        _, exact, _ = block(x)
        block.train()
        _, estimates, _ = block(x.expand(4000, 3).contiguous())
    err = estimates.std() / math.sqrt(len(estimates))
    assert estimates.std() > 1e-3  # the probes do vary
    assert abs(estimates.mean() - exact[0]) < 4 * err, (float(estimates.mean()), float(exact[0]), float(err))


def test_exact_divergence_helper_matches_jacobian_trace_and_frobenius():
    torch.manual_seed(2)
    net = TimeNet((3,), (8,), "concatsquash", "softplus").double()
    z = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.3, dtype=torch.float64)
    div, frob = exact_divergence(net(t, z), z, create_graph=False)
    jacs = torch.stack([jacobian(lambda v: net(t, v[None])[0], zi) for zi in z.detach()])
    assert torch.allclose(div, jacs.diagonal(dim1=1, dim2=2).sum(1), atol=1e-12)
    assert torch.allclose(frob, jacs.pow(2).sum((1, 2)), atol=1e-12)


@pytest.mark.parametrize("shape", [(2,), (3,), (2, 4, 4)])
def test_reverse_solve_inverts_forward_solve(shape):
    torch.manual_seed(3)
    net = TimeNet(shape, (8, 8), "concatsquash", "tanh").double()
    block = CNF(net, shape, end_time=1.0, eval_solver=TIGHT).double().eval()
    x = torch.randn(5, *shape, dtype=torch.float64)
    with torch.no_grad():
        z, _, _ = block(x)
        back = block.inverse(z)
    assert (z - x).abs().max() > 1e-2
    assert torch.allclose(back, x, atol=1e-7)


class CountingNet(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, t, z):
        self.calls += 1
        return self.net(t, z)


@pytest.mark.parametrize("adjoint", [True, False])
@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_nfe_counters_equal_dynamics_calls(adjoint, divergence):
    torch.manual_seed(4)
    net = CountingNet(TimeNet((2,), (16,), "concatsquash", "tanh"))
    block = CNF(net, (2,), end_time=0.5, train_end_time=True, divergence=divergence, adjoint=adjoint,
                train_solver=Solver("dopri5", 1e-5, 1e-5))
    x = torch.randn(32, 2)
    z, logdet, _ = block(x)
    forward_calls = net.calls
    (z.pow(2).sum() - logdet.sum()).backward()
    backward_calls = net.calls - forward_calls
    assert forward_calls > 6
    assert block.read_nfe() == (forward_calls, backward_calls)
    assert (backward_calls > 6) if adjoint else (backward_calls == 0)
    assert block.read_nfe() == (0, 0)  # read resets
    block.eval()
    with torch.no_grad():
        block(x)
    assert block.read_nfe() == (net.calls - forward_calls - backward_calls, 0)


@pytest.mark.parametrize("adjoint", [True, False])
def test_end_time_receives_the_right_gradient(adjoint):
    """d loss / d sqrt(T) by backprop equals a central finite difference of the loss."""
    torch.manual_seed(5)
    net = TimeNet((2,), (16,), "concatsquash", "tanh").double()
    block = cnf(net, 2, end_time=0.5, train_end_time=True, adjoint=adjoint)
    x = torch.randn(16, 2, dtype=torch.float64)

    def loss() -> torch.Tensor:
        z, logdet, _ = block(x)
        return (0.5 * z.pow(2).sum(1) - logdet).mean()

    loss().backward()
    grad = float(block.func.sqrt_end_time.grad)
    p, h = block.func.sqrt_end_time, 1e-5
    with torch.no_grad():
        p += h
        up = float(loss())
        p -= 2 * h
        down = float(loss())
        p += h
    assert grad != 0.0
    assert abs(grad - (up - down) / (2 * h)) < 1e-5 * max(1.0, abs(grad))


def test_steer_samples_end_time_in_training_only():
    a = torch.diag(torch.tensor([0.5, -0.2, 0.9], dtype=torch.float64))
    block = cnf(LinearField(a), 3, end_time=1.0, steer=0.3)
    x = torch.randn(2, 3, dtype=torch.float64)
    with torch.no_grad():
        used = [float(block(x)[1][0]) / float(torch.trace(a)) for _ in range(8)]
        block.eval()
        evaluated = float(block(x)[1][0]) / float(torch.trace(a))
    assert all(0.7 - 1e-6 <= t <= 1.3 + 1e-6 for t in used) and max(used) - min(used) > 0.1
    assert evaluated == pytest.approx(1.0, abs=1e-8)


class Blowup(nn.Module):
    def forward(self, t, z):
        return z.pow(2) * 10  # z(t) = z0 / (1 - 10 z0 t): finite-time blow-up


class NaNField(nn.Module):
    def forward(self, t, z):
        return z * float("nan")


def test_solver_failures_are_floating_point_errors():
    block = CNF(Blowup(), (2,), end_time=1.0, divergence="exact", eval_divergence="exact").eval()
    with torch.no_grad(), pytest.raises(SolverFailure, match="underflow") as err:
        block(torch.ones(2, 2))
    assert isinstance(err.value, FloatingPointError)
    block = CNF(NaNField(), (2,), end_time=1.0, divergence="exact", eval_divergence="exact").eval()
    with torch.no_grad(), pytest.raises(FloatingPointError):
        block(torch.ones(2, 2))


def test_dynamics_regulariser_states_match_direct_computation():
    """The dynamics in original time t: dz/dt = f(t, z), the exact trace, kinetic 0.5 mean f^2 and
    Jacobian ||df/dz||_F^2 / D, against f and brute-force Jacobians at the same t."""
    torch.manual_seed(6)
    net = TimeNet((3,), (8,), "concatsquash", "tanh").double()
    func = CNFDynamics(net, end_time=0.6).double()
    func.exact, func.n_regs = True, 2
    z = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    dz, div, kin, frob = func(t, (z, torch.zeros(4), torch.zeros(4), torch.zeros(4)))
    f = net(t, z)
    jacs = torch.stack([jacobian(lambda v: net(t, v[None])[0], zi) for zi in z])
    assert torch.allclose(dz, f, atol=1e-12)
    assert torch.allclose(div, jacs.diagonal(dim1=1, dim2=2).sum(1), atol=1e-12)
    assert torch.allclose(kin, 0.5 * f.pow(2).mean(1), atol=1e-12)
    assert torch.allclose(frob, jacs.pow(2).sum((1, 2)) / 3, atol=1e-12)


@pytest.mark.parametrize("layer_type", ["concatsquash", "concat", "ignore"])
@pytest.mark.parametrize("shape,activation", [((3,), "tanh"), ((3,), "softplus"), ((3,), "swish"), ((3,), "relu"),
                                              ((2, 3, 3), "elu"), ((2, 3, 3), "tanh")])
def test_forward_mode_jacobian_products_match_autograd(shape, activation, layer_type):
    """TimeNet.forward_jvp (used for speed) gives the same divergence as reverse-mode autograd: exactly
    for the exact trace and, for one fixed probe, e^T (J e) = (e^T J) e; Frobenius terms equal exactly.
    Their gradients (what the adjoint's vector-Jacobian products take) agree too."""
    torch.manual_seed(7)
    net = TimeNet(shape, (6, 5), layer_type, activation).double()
    func = CNFDynamics(net, end_time=0.7).double()
    z = torch.randn(4, *shape, dtype=torch.float64, requires_grad=True)
    state = (z, torch.zeros(4), torch.zeros(4), torch.zeros(4))
    s = torch.tensor(0.4, dtype=torch.float64)
    func.n_regs = 2
    inputs = (z, *net.parameters())
    for exact in (True, False):
        func.exact, func.probe = exact, torch.randn_like(z)
        func.forward_mode = True
        fast = func(s, state)
        func.forward_mode = False
        slow = func(s, state)
        assert torch.allclose(fast[0], slow[0], atol=1e-12) and torch.allclose(fast[1], slow[1], atol=1e-10)
        if exact:
            assert torch.allclose(fast[3], slow[3], atol=1e-10)
        weights = [torch.randn_like(o) for o in fast[:2]]
        fast_grads = torch.autograd.grad(fast[:2], inputs, weights)
        slow_grads = torch.autograd.grad(slow[:2], inputs, weights)
        for a, b in zip(fast_grads, slow_grads):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_adjoint_and_direct_gradients_agree(divergence):
    """Every parameter's gradient (dynamics, T) through the adjoint (with and without the seminorm)
    equals direct backpropagation, with the same probe (one seed) and tight tolerances."""
    grads = []
    for adjoint, seminorm in ((True, False), (False, False), (True, True)):
        torch.manual_seed(8)
        net = TimeNet((3,), (8, 8), "concatsquash", "softplus").double()
        block = cnf(net, 3, end_time=0.6, train_end_time=True, divergence=divergence, adjoint=adjoint,
                    adjoint_seminorm=seminorm, train_solver=Solver("dopri5", 1e-9, 1e-9))
        x = torch.randn(8, 3, dtype=torch.float64)
        z, logdet, _ = block(x)
        (0.5 * z.pow(2).sum(1) - logdet).mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in block.parameters() if p.requires_grad]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-7)
    assert torch.allclose(grads[2], grads[1], rtol=1e-5, atol=1e-7)  # seminorm adjoint too


@pytest.mark.parametrize("shape", [(3,), (2, 5, 4)])
def test_concat_layers_equal_an_explicit_time_input(shape):
    """A concat layer is the official definition: the layer applied to [t, h] (for images t as a
    constant channel, zero-padded like the others), computed here by explicit concatenation."""
    torch.manual_seed(9)
    net = TimeNet(shape, (6, 5), "concat", "softplus").double()
    z = torch.randn(4, *shape, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    h = z
    for i, layer in enumerate(net.layers):
        t_input = t * torch.ones(h.shape[0], 1, *h.shape[2:], dtype=h.dtype)
        h = layer(torch.cat([t_input, h], 1))
        if i < len(net.layers) - 1:
            h = nn.functional.softplus(h)
    assert torch.allclose(net(t, z), h, atol=1e-12)
    assert not torch.allclose(net(t + 0.5, z), h)  # time really enters


def augmented_reference(net: nn.Module, calls: list[int]):
    """(z, log-det) dynamics written out independently, as FFJORD's code has them: f and its exact
    trace by autograd, in the plain ODE's time; counts its evaluations in ``calls``."""

    def dynamics(t, state):
        calls[0] += 1
        t = t.detach()  # FFJORD's dynamics copy t: no time adjoint in torchdiffeq's backward error norm
        z = state[0]
        with torch.enable_grad():
            z = z if z.requires_grad else z.detach().requires_grad_(True)
            f = net(t, z)
            div = sum(torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0][:, i] for i in range(f.shape[1]))
        return f, div

    return dynamics


@pytest.mark.parametrize("train_end_time", [False, True])
@pytest.mark.parametrize("end_time", [0.5, 1.0, 1.7])
def test_nfe_equals_torchdiffeq_on_the_plain_ode(end_time, train_end_time):
    """The solver takes the steps torchdiffeq takes on dz/dt = f(t, z) over [0, T] (no rescaled time,
    whose initial step differs): forward NFE equal, and the same log-det. A trained T costs one more
    evaluation, at the end point, for its gradient."""
    torch.manual_seed(10)
    net = TimeNet((2,), (32, 32), "concatsquash", "tanh").double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)  # a field that needs a few dozen steps
    solver = Solver("dopri5", 1e-5, 1e-5)
    block = cnf(net, 2, end_time=end_time, train_end_time=train_end_time, adjoint=False, train_solver=solver)
    x = torch.randn(64, 2, dtype=torch.float64)
    z, logdet, _ = block(x)
    ours = block.read_nfe()[0]
    calls = [0]
    zero = torch.zeros(64, dtype=torch.float64)
    ref_z, ref_logdet = odeint(augmented_reference(net, calls), (x, zero), torch.tensor([0.0, end_time], dtype=torch.float64),
                               rtol=solver.rtol, atol=solver.atol, method="dopri5")
    assert ours == calls[0] + int(train_end_time) and calls[0] > 20
    assert torch.allclose(z, ref_z[-1], atol=1e-10) and torch.allclose(logdet, ref_logdet[-1], atol=1e-10)


def test_adjoint_nfe_equals_torchdiffeq_on_the_plain_ode():
    """With the adjoint (T fixed), forward and backward NFE equal torchdiffeq's own on the same
    augmented dynamics over [0, T]."""
    torch.manual_seed(11)
    net = TimeNet((2,), (32, 32), "concatsquash", "tanh").double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(3.0)
    solver = Solver("dopri5", 1e-5, 1e-5)
    block = cnf(net, 2, end_time=0.8, train_end_time=False, adjoint=True, train_solver=solver)
    x = torch.randn(64, 2, dtype=torch.float64)
    z, logdet, _ = block(x)
    (0.5 * z.pow(2).sum(1) - logdet).mean().backward()
    ours = block.read_nfe()

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.net, self.calls = net, [0]
            self.dynamics = augmented_reference(net, self.calls)

        def forward(self, t, state):
            return self.dynamics(t, state)

    ref = Reference()
    zero = torch.zeros(64, dtype=torch.float64)
    ref_z, ref_logdet = odeint_adjoint(ref, (x, zero), torch.tensor([0.0, 0.8], dtype=torch.float64),
                                       rtol=solver.rtol, atol=solver.atol, method="dopri5",
                                       adjoint_params=tuple(net.parameters()))
    forward = ref.calls[0]
    (0.5 * ref_z[-1].pow(2).sum(1) - ref_logdet[-1]).mean().backward()
    assert ours == (forward, ref.calls[0] - forward) and forward > 20


class Stiff(nn.Module):
    """dz/dt = -k (z - cos(t)): stiff for large k, so an explicit adaptive solver needs ~k T steps."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k

    def forward(self, t, z):
        return -self.k * (z - torch.cos(t))


@pytest.mark.parametrize("adjoint", [True, False])
def test_solve_limits_stop_a_solve_that_would_run_long(adjoint):
    """A solve that needs far more evaluations than allowed stops at the limit with a SolverFailure
    naming it; a deadline stops it with SolveTimeout; outside the limits it completes."""
    from baselines.cnf import SolveTimeout, solve_limits

    block = CNF(Stiff(5e4), (2,), end_time=1.0, divergence="exact", train_solver=Solver("dopri5", 1e-6, 1e-6),
                adjoint=adjoint)
    x = torch.randn(4, 2)
    with solve_limits(max_evals=300), pytest.raises(SolverFailure, match="more than 300 function evaluations"):
        block(x)
    assert 300 < block.read_nfe()[0] <= 301
    start = time.monotonic()
    with solve_limits(seconds=0.3), pytest.raises(SolveTimeout, match="wall-clock budget"):
        block(x)
    assert time.monotonic() - start < 2.0
    quick = CNF(Stiff(1.0), (2,), end_time=1.0, divergence="exact", adjoint=adjoint)
    with solve_limits(max_evals=300, seconds=30):
        z, logdet, _ = quick(x.requires_grad_(True))
        (z.sum() + logdet.sum()).backward()  # the backward solve is bounded too, and fits


def test_solve_limits_count_the_backward_solve_apart():
    """The adjoint's backward solve gets its own count: a limit above either solve, below their sum, passes."""
    from baselines.cnf import solve_limits

    torch.manual_seed(12)
    net = TimeNet((2,), (16,), "concatsquash", "tanh")
    block = CNF(net, (2,), end_time=1.0, divergence="exact", adjoint=True)
    x = torch.randn(16, 2)
    z, logdet, _ = block(x)
    (z.sum() + logdet.sum()).backward()
    forward, backward = block.read_nfe()
    limit = max(forward, backward) + 1
    assert limit < forward + backward
    with solve_limits(max_evals=limit):
        z, logdet, _ = block(x)
        (z.sum() + logdet.sum()).backward()


@pytest.mark.parametrize("adjoint", [True, False])
def test_solve_limits_step_size_floor(adjoint):
    """A solver that must take steps shorter than the floor stops at once with a SolverFailure naming it,
    in the forward solve and in the adjoint's backward solve; a mild field passes."""
    from baselines.cnf import solve_limits

    stiff = CNF(Stiff(5e4), (2,), end_time=1.0, divergence="exact", train_solver=Solver("dopri5", 1e-6, 1e-6),
                adjoint=adjoint)
    x = torch.randn(4, 2, requires_grad=True)
    with solve_limits(min_step=1e-4), pytest.raises(SolverFailure, match="below the floor 0.0001"):
        stiff(x)
    assert stiff.read_nfe()[0] < 60  # stopped within the first few steps, not after thousands
    mild = CNF(Stiff(1.0), (2,), end_time=1.0, divergence="exact", adjoint=adjoint)
    with solve_limits(min_step=1e-4):
        z, logdet, _ = mild(x)
        (z.sum() + logdet.sum()).backward()


@pytest.mark.parametrize("divergence, regularize", [("exact", False), ("hutchinson", False), ("exact", True)])
@pytest.mark.slow
def test_compiled_dynamics_give_the_eager_gradients_and_nfe(divergence, regularize):
    """compile_dynamics swaps in torch.compile'd divergence terms: through the adjoint (which keeps each
    evaluation's graph) it gives the eager model's loss, gradients and NFE. The aot_eager backend
    traces forward and backward graphs as inductor does, in seconds instead of a compile."""
    from baselines.cnf import compile_dynamics, divergence_terms

    results = []
    for compiled in (False, True):
        torch.manual_seed(3)
        block = cnf(TimeNet((2,), (16, 16), "concatsquash", "tanh"), 2, end_time=0.5, divergence=divergence,
                    regularize=regularize, train_solver=Solver("dopri5", 1e-5, 1e-5))
        if compiled:
            assert compile_dynamics(block, backend="aot_eager") == 1 and block.func._terms is not divergence_terms
        x = torch.randn(32, 2, dtype=torch.float64)
        z, logdet, regs = block(x)
        loss = (0.5 * z.pow(2).sum(1) - logdet).mean() + (regs.sum(1).mean() if regularize else 0.0)
        loss.backward()
        results.append((loss.detach(), torch.cat([p.grad.reshape(-1) for p in block.parameters()
                                                  if p.grad is not None]), block.read_nfe()))
    (loss0, grad0, nfe0), (loss1, grad1, nfe1) = results
    assert torch.allclose(loss0, loss1, rtol=1e-10)
    assert torch.allclose(grad0, grad1, rtol=1e-8, atol=1e-10)
    assert nfe0 == nfe1 and nfe0[1] > 0  # the adjoint's backward solve ran through the compiled function


@pytest.mark.parametrize("sqrt_end_time", [0.0, float("nan")])
def test_a_collapsed_end_time_is_a_solver_failure_naming_it(sqrt_end_time):
    """T is checked with the end state in one host read after the solve (or when torchdiffeq rejects the
    times [0, 0]): a T that is not positive is a SolverFailure naming T, not a torchdiffeq assertion."""
    block = CNF(Stiff(1.0), (2,), end_time=1.0, divergence="exact", adjoint=False)
    with torch.no_grad():
        block.func.sqrt_end_time.fill_(sqrt_end_time)
    with pytest.raises(SolverFailure, match="the end time T is"):
        block(torch.randn(4, 2))


def test_a_non_finite_end_state_is_a_solver_failure():
    class Blowup(nn.Module):
        def forward(self, t, z):
            return z * float("inf")

    block = CNF(Blowup(), (2,), end_time=1.0, divergence="exact", adjoint=False,
                train_solver=Solver("rk4", step_size=0.5))
    with pytest.raises(SolverFailure, match="non-finite"):
        block(torch.randn(4, 2))
