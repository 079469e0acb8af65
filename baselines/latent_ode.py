"""LatentODE (Chen et al. 2018, section 5; Rubanova et al. 2019) and InfoCNF's partitioned-latent variant.

Data (``bench.data.timeseries`` spirals): ``x`` is ``[batch, T, 2]`` with ``T = window + horizon``
points at the shared relative times ``DataInfo.extra["t"]`` (length ``T``); the first ``n_observed``
(= window) points are the observations, the last ``horizon`` points are held out for extrapolation
and never reach the encoder or the likelihood.

Model (shapes for a batch of ``B``):
- encoder: an RNN (GRU or Elman, ``rnn_hidden`` = 25 units) run backwards in time over the observed
  points, input ``[x_i, dt_i]`` (``dt_i = t_{i+1} - t_i``, 0 for the last point), final state ->
  linear -> mean and log-variance of ``q(z0 | x)``, each ``[B, latent_dim]`` (5);
- ``z0 = mean + exp(logvar / 2) * eps`` (reparameterised; the posterior mean in evaluation);
- dynamics ``dz/dt = f(z)``: one hidden layer of ``hidden`` = 20 units, solved by torchdiffeq's
  ``odeint`` over the time grid -> ``z(t)`` ``[B, T, latent_dim]``;
- decoder: one hidden layer of 20 units -> ``[B, T, 2]``;
- ``log p(x | z)``: Gaussian with fixed std ``obs_std`` (0.3, the generator's noise), summed over the
  observed points and both coordinates; ``KL(q(z0 | x) || p(z0))`` analytic, summed over dims;
  ``loss = mean over the batch of (-log p(x | z) + KL)`` = -ELBO per example (Chen et al.'s
  normalisation: a sum over the observed points, not a mean).

Partitioned variant (InfoCNF appendix E): the first ``n_supervised`` (3) dims of z0 get a
conditional prior ``N(mu, sigma^2)`` whose mean and log-std come from a zero-initialised linear
``q_phi`` of the labels, and a linear head ``q_theta`` on those dims alone predicts the direction
(2 logits, cross-entropy) and, when the batch carries them, the spiral parameters ``(a, b)``
(squared error); the other dims keep ``N(0, I)``. ``loss = -ELBO + beta * (CE + squared error)``.
Labels: ``y`` is the direction ``[B]`` (the loader's default), or ``[B, 3]`` = (direction, a, b)
with the loader's ``targets="all"``.

Evaluation terms per example (the harness averages them over a split): ``mse`` (decoded trajectory
of the posterior mean vs the noisy observations, observed window, mean over points and
coordinates: its floor is ``noise^2`` = 0.09), ``mse_extrapolation`` (the same on the horizon),
``neg_elbo``; the partitioned model adds ``error`` (direction misclassified, 0/1) and, with
``(a, b)`` in ``y``, ``param_mse``. No ``nll`` term: this is not a density model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torchdiffeq import odeint, odeint_adjoint

from baselines import shards
from baselines.base import FlowModel, normal_log_prob
from baselines.cnf import SOLVERS, CountedDynamics, Solver, SolverFailure, SolverName, forward_solve
from baselines.constraints import Choice, Count, NonNegative, Positive
from baselines.registry import flat_options

__all__ = ["ACTIVATIONS", "LatentODE", "LatentODEOptions", "PartitionedLatentODE", "RNNS", "build",
           "build_partitioned", "gaussian_kl", "gaussian_log_lik"]

ACTIVATIONS = {"elu": nn.ELU, "tanh": nn.Tanh, "softplus": nn.Softplus, "relu": nn.ReLU}
RNNS = ("gru", "rnn")
Activation = Annotated[str, Choice(*ACTIVATIONS)]  # the builders' declared values
RNN = Annotated[str, Choice(*RNNS)]


def gaussian_kl(mean: Tensor, logvar: Tensor, prior_mean: Tensor | float = 0.0,
                prior_logstd: Tensor | float = 0.0) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(prior_mean, exp(prior_logstd)^2)), summed over the last dim."""
    prior_mean = torch.as_tensor(prior_mean, dtype=mean.dtype, device=mean.device)
    prior_logstd = torch.as_tensor(prior_logstd, dtype=mean.dtype, device=mean.device)
    scaled = (logvar.exp() + (mean - prior_mean).pow(2)) * torch.exp(-2 * prior_logstd)
    return (prior_logstd - 0.5 * logvar + 0.5 * scaled - 0.5).sum(-1)


def gaussian_log_lik(x: Tensor, mean: Tensor, std: float) -> Tensor:
    """log N(x; mean, std^2 I) per example, summed over every non-batch dimension."""
    return normal_log_prob(x.flatten(1), mean.flatten(1), x.new_tensor(math.log(std)))


class Dynamics(CountedDynamics):
    """``dz/dt = f(z)``, one hidden layer; counts its evaluations (forward solve / adjoint solve apart)."""

    def __init__(self, latent_dim: int, hidden: int, activation: str):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden), ACTIVATIONS[activation](),
                                 nn.Linear(hidden, latent_dim))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        self.count()
        return self.net(z)


class LatentODE(FlowModel):
    """Chen et al.'s latent ODE for equally spaced 2-D trajectories (see the module docstring)."""

    def __init__(self, times: Tensor, n_observed: int, obs_dim: int = 2, latent_dim: int = 5, rnn_hidden: int = 25,
                 hidden: int = 20, rnn: str = "gru", activation: str = "elu", obs_std: float = 0.3,
                 solver: Solver | None = None, adjoint: bool = False):
        super().__init__()
        if rnn not in RNNS:
            raise ValueError(f"rnn must be 'gru' or 'rnn', got {rnn!r}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not 2 <= n_observed <= len(times):
            raise ValueError(f"n_observed must be in [2, {len(times)}], got {n_observed}")
        if obs_std <= 0:
            raise ValueError(f"obs_std must be > 0, got {obs_std}")
        self.register_buffer("times", torch.as_tensor(times, dtype=torch.float32).clone())
        self.n_observed, self.obs_dim, self.latent_dim = n_observed, obs_dim, latent_dim
        self.obs_std, self.adjoint = float(obs_std), adjoint
        self.solver = solver or Solver("dopri5", 1e-4, 1e-3)
        cell = nn.GRU if rnn == "gru" else nn.RNN
        self.rnn = cell(obs_dim + 1, rnn_hidden, batch_first=True)
        self.to_posterior = nn.Linear(rnn_hidden, 2 * latent_dim)
        self.dynamics = Dynamics(latent_dim, hidden, activation)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), ACTIVATIONS[activation](),
                                     nn.Linear(hidden, obs_dim))

    # -- pieces ------------------------------------------------------------------------------
    def _check(self, x: Tensor) -> None:
        if x.dim() != 3 or x.shape[1] != len(self.times) or x.shape[2] != self.obs_dim:
            raise ValueError(f"x must be [batch, {len(self.times)}, {self.obs_dim}], got {list(x.shape)}")

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z0 | observed points): (mean, logvar), each [B, latent_dim]; reads x[:, :n_observed] only."""
        self._check(x)
        obs = x[:, :self.n_observed]
        t = self.times[:self.n_observed].to(obs.dtype)
        dt = torch.cat([t[1:] - t[:-1], t.new_zeros(1)])  # gap to the next point; 0 after the last
        inp = torch.cat([obs, dt.view(1, -1, 1).expand(obs.shape[0], -1, 1)], -1)
        _, h = self.rnn(inp.flip(1))  # backwards in time: the final state summarises the window at t0
        mean, logvar = self.to_posterior(h[-1]).chunk(2, -1)
        return mean, logvar

    def latent_path(self, z0: Tensor, n_points: int | None = None) -> Tensor:
        """z(t) on the first ``n_points`` times (all by default): [B, n_points, latent_dim]."""
        t = self.times[:n_points or len(self.times)].to(z0.dtype)
        s, func = self.solver, self.dynamics
        kwargs = dict(rtol=s.rtol, atol=s.atol, method=s.method, options=s.options())
        with forward_solve(func, s):
            if self.adjoint and torch.is_grad_enabled() and self.training:
                path = odeint_adjoint(func, z0, t, adjoint_params=tuple(func.parameters()), **kwargs)
            else:
                path = odeint(func, z0, t, **kwargs)
        if shards.any_rank(not bool(torch.isfinite(path).all())):
            raise SolverFailure("latent ODE solve produced a non-finite state")
        return path.transpose(0, 1)

    def decode(self, z0: Tensor, n_points: int | None = None) -> Tensor:
        """Trajectory from z0: [B, n_points, obs_dim] (all T points by default)."""
        return self.decoder(self.latent_path(z0, n_points))

    def prior(self, y: Tensor | None, like: Tensor) -> tuple[Tensor | float, Tensor | float]:
        """(mean, log-std) of p(z0); N(0, I) here."""
        return 0.0, 0.0

    def _elbo_terms(self, x: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(log p(x_obs | z), KL, z0, decoded observed window), per example; z0 sampled in training."""
        mean, logvar = self.encode(x)
        z0 = mean + torch.exp(0.5 * logvar) * shards.draw_like(mean, torch.randn_like) if self.training else mean
        pred = self.decode(z0, self.n_observed)
        log_lik = gaussian_log_lik(x[:, :self.n_observed], pred, self.obs_std)
        prior_mean, prior_logstd = self.prior(y, mean)
        return log_lik, gaussian_kl(mean, logvar, prior_mean, prior_logstd), z0, pred

    # -- the harness's surface -----------------------------------------------------------------
    def training_loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The negative ELBO and its terms as detached 0-dim tensors (the harness reads them once a step)."""
        log_lik, kl, _, pred = self._elbo_terms(x, y)
        loss = (kl - log_lik).mean()
        mse = (pred - x[:, :self.n_observed]).pow(2).mean()
        return loss, {"log_lik": log_lik.detach().mean(), "kl": kl.detach().mean(), "mse": mse.detach()}

    @torch.no_grad()
    def evaluate(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-example ``mse`` (observed window), ``mse_extrapolation`` (horizon), ``neg_elbo``; z0 = posterior mean."""
        mean, logvar = self.encode(x)
        traj = self.decode(mean)
        err = (traj - x).pow(2).mean(-1)  # [B, T]
        n = self.n_observed
        log_lik = gaussian_log_lik(x[:, :n], traj[:, :n], self.obs_std)
        prior_mean, prior_logstd = self.prior(y, mean)
        out = {"mse": err[:, :n].mean(1), "neg_elbo": gaussian_kl(mean, logvar, prior_mean, prior_logstd) - log_lik}
        if err.shape[1] > n:
            out["mse_extrapolation"] = err[:, n:].mean(1)
        out.update(self._label_terms(mean, y))
        return out

    def _label_terms(self, z0: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """Extra per-example evaluation terms from z0 and the labels (none here)."""
        return {}

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        raise NotImplementedError("LatentODE is a VAE, not a flow: it has no exact log-likelihood; its training "
                                  "objective is the ELBO (see training_loss) and its metrics are mse / "
                                  "mse_extrapolation (see evaluate)")

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """Trajectories [n, T, obs_dim] decoded from z0 ~ p(z0 | y) (noise-free decoder means)."""
        ref = self.times
        dtype = next(self.parameters()).dtype
        like = torch.zeros(n, self.latent_dim, device=ref.device, dtype=dtype)
        prior_mean, prior_logstd = self.prior(y, like)
        z0 = prior_mean + torch.exp(torch.as_tensor(prior_logstd, dtype=dtype)) * torch.randn_like(like)
        return self.decode(z0)

    def read_nfe(self) -> tuple[int, int]:
        """Dynamics evaluations (forward solves, adjoint solves) since the last call; resets."""
        return self.dynamics.read_nfe()


class PartitionedLatentODE(LatentODE):
    """InfoCNF's latent ODE: z0[:, :n_supervised] supervised (conditional prior q_phi, heads q_theta)."""

    def __init__(self, times: Tensor, n_observed: int, n_supervised: int = 3, num_classes: int = 2,
                 beta: float = 1.0, **kwargs):
        super().__init__(times, n_observed, **kwargs)
        if not 1 <= n_supervised <= self.latent_dim:
            raise ValueError(f"n_supervised must be in [1, latent_dim={self.latent_dim}], got {n_supervised}")
        self.n_supervised, self.num_classes, self.beta = n_supervised, num_classes, beta
        self.n_params = 2  # (a, b) regressed when y carries them
        # q_phi: (one-hot direction, a, b) -> (mean, log-std) of the supervised dims; zero-initialised,
        # so the prior starts at N(0, I) as InfoCNF's does
        self.q_phi = nn.Linear(num_classes + self.n_params, 2 * n_supervised)
        nn.init.zeros_(self.q_phi.weight)
        nn.init.zeros_(self.q_phi.bias)
        # q_theta: supervised dims -> (direction logits, a, b)
        self.q_theta = nn.Linear(n_supervised, num_classes + self.n_params)

    def _labels(self, y: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor | None]:
        """(direction [B] long, (a, b) [B, 2] or None) from y = direction [B] or (direction, a, b) [B, 3]."""
        if y.dim() == 2:
            return y[:, 0].round().long(), y[:, 1:1 + self.n_params].to(dtype)
        return y.long(), None

    def heads(self, z0: Tensor) -> tuple[Tensor, Tensor]:
        """q_theta on the supervised dims only: (direction logits [B, C], predicted (a, b) [B, 2])."""
        out = self.q_theta(z0[:, :self.n_supervised])
        return out[:, :self.num_classes], out[:, self.num_classes:]

    def prior(self, y: Tensor | None, like: Tensor) -> tuple[Tensor | float, Tensor | float]:
        if y is None:
            return 0.0, 0.0
        direction, params = self._labels(y, like.dtype)
        feats = [F.one_hot(direction, self.num_classes).to(like.dtype)]
        feats.append(params if params is not None else like.new_zeros(len(like), self.n_params))
        mean_s, logstd_s = self.q_phi(torch.cat(feats, 1)).chunk(2, -1)
        rest = like.new_zeros(len(like), self.latent_dim - self.n_supervised)
        return torch.cat([mean_s, rest], 1), torch.cat([logstd_s, rest], 1)

    def supervised_terms(self, z0: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Per-example cross-entropy, 0/1 error and, with (a, b) in y, squared error of the regression."""
        direction, params = self._labels(y, z0.dtype)
        logits, pred = self.heads(z0)
        out = {"ce": F.cross_entropy(logits, direction, reduction="none"),
               "error": (logits.argmax(1) != direction).to(z0.dtype)}
        if params is not None:
            out["param_mse"] = (pred - params).pow(2).mean(1)
        return out

    def training_loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """The negative ELBO (+ beta times the supervised terms) and its stats as detached 0-dim tensors."""
        log_lik, kl, z0, pred = self._elbo_terms(x, y)
        loss = (kl - log_lik).mean()
        stats = {"log_lik": log_lik.detach().mean(), "kl": kl.detach().mean(),
                 "mse": (pred.detach() - x[:, :self.n_observed]).pow(2).mean()}
        if y is not None:
            sup = self.supervised_terms(z0, y)
            supervised = sup["ce"] + sup.get("param_mse", torch.zeros_like(sup["ce"]))
            loss = loss + self.beta * supervised.mean()
            stats.update({k: v.detach().mean() for k, v in sup.items()})
        return loss, stats

    def _label_terms(self, z0: Tensor, y: Tensor | None) -> dict[str, Tensor]:
        """``error`` (and ``param_mse`` with (a, b) in y) of the heads on the posterior mean."""
        if y is None:
            return {}
        sup = self.supervised_terms(z0, y)
        return {k: v for k, v in sup.items() if k != "ce"}


@dataclass(frozen=True)
class LatentODEOptions:
    """The options both latent ODE builders take (sizes of InfoCNF's appendix E, Rubanova et al.'s
    tolerances): ``latent_dim`` of z0, ``rnn_hidden`` encoder units, ``rnn`` cell (gru, or Elman
    rnn), ``hidden`` units of the dynamics and the decoder, their ``activation``, the observation
    model's ``obs_std``, the torchdiffeq ``solver`` with ``atol`` / ``rtol`` and ``step_size``
    (fixed-step methods), and ``adjoint`` backpropagation.

    >>> LatentODEOptions().solver, LatentODEOptions(latent_dim=3).latent_dim
    ('dopri5', 3)
    """

    latent_dim: Count = 5
    rnn_hidden: Count = 25
    hidden: Count = 20
    rnn: RNN = "gru"
    activation: Activation = "elu"
    obs_std: Positive = 0.3
    solver: SolverName = "dopri5"
    atol: Positive = 1e-4
    rtol: Positive = 1e-3
    step_size: Positive | None = None
    adjoint: bool = False


def _config(data: Any, o: LatentODEOptions) -> dict[str, Any]:
    """The data's time grid and the options -> LatentODE keyword arguments."""
    if data.kind != "timeseries" or "t" not in data.extra:
        raise ValueError(f"latent ODE models need a timeseries dataset with extra['t'] (spirals), got {data.name} "
                         f"({data.kind})")
    if o.solver not in SOLVERS:
        raise ValueError(f"solver must be a torchdiffeq method (dopri5, rk4, ...), got {o.solver!r}")
    return dict(times=data.extra["t"], n_observed=int(data.extra.get("n_observed", len(data.extra["t"]))),
                obs_dim=int(data.shape[-1]), latent_dim=o.latent_dim, rnn_hidden=o.rnn_hidden, hidden=o.hidden,
                rnn=o.rnn, activation=o.activation, obs_std=o.obs_std,
                solver=Solver(o.solver, o.atol, o.rtol, o.step_size), adjoint=o.adjoint)


@flat_options
def build(data: Any, ode: LatentODEOptions = LatentODEOptions()) -> LatentODE:
    """LatentODE (Chen et al. 2018, section 5; Rubanova et al. 2019) on a timeseries dataset
    (``data``: ``name``, ``kind`` "timeseries", ``shape`` (T, 2), ``extra["t"]`` the time grid);
    ``ode``: the options (``LatentODEOptions``, also accepted as flat keyword arguments).

    >>> import torch
    >>> from types import SimpleNamespace
    >>> spirals = SimpleNamespace(name="spirals", kind="timeseries", shape=(6, 2),
    ...                           extra={"t": torch.linspace(0, 1, 6), "n_observed": 4})
    >>> model = build(spirals, latent_dim=2, rnn_hidden=4, hidden=4)
    >>> sorted(model.evaluate(torch.randn(3, 6, 2)))
    ['mse', 'mse_extrapolation', 'neg_elbo']
    """
    return LatentODE(**_config(data, ode))


@flat_options
def build_partitioned(data: Any, n_supervised: Count = 3, beta: NonNegative = 1.0,
                      ode: LatentODEOptions = LatentODEOptions()) -> PartitionedLatentODE:
    """InfoCNF's LatentODE (appendix E) with ``n_supervised`` supervised latent dims (direction, and
    (a, b) with targets='all'), their terms weighted by ``beta``; ``ode`` as for ``build``."""
    return PartitionedLatentODE(n_supervised=n_supervised, num_classes=max(2, int(data.num_classes)), beta=beta,
                                **_config(data, ode))
