"""InfoCNF (Nguyen et al.): conditional CNFs with a partitioned latent and learned solver tolerances.

Three models on one FFJORD flow (``baselines.ffjord.make_cnf_model`` with the flow's options,
``baselines.cnf_options.CNFOptions``: the vector stack, or the multi-scale image model), wrapped by
``ConditionalCNF``:

- ``ccnf``: the class-conditional CNF baseline. The whole latent ``z`` has the prior
  ``N(mu(y), sigma(y)^2)`` with ``(mu, log sigma) = q_phi(one_hot(y))``, and a classifier
  ``q_theta(z)`` predicts ``y`` from all of ``z``.
- ``infocnf``: ``z = (z_y, z_u)``; ``z_y``, the first ``condition_ratio`` of the latent, has the
  conditional prior and feeds the classifier (through dropout 0.5); ``z_u ~ N(0, I)``:
  ``log p(z | y) = log N(z_y; mu(y), sigma(y)^2) + log N(z_u; 0, I)``.
- ``infocnf_learned``: ``infocnf`` whose training solves run at tolerances chosen per CNF block by
  gating networks and trained by REINFORCE (``TolerancePolicy``).

q_phi and q_theta are built as the author's code builds them (``ScaledLinear``: a zero-initialised
linear layer whose outputs are scaled by ``exp(3 logs)``, plus, for q_phi, a zero offset of the
prior that is registered as a parameter and used detached), so the parameter counts equal the
author's logs (docs/infocnf.md has the arithmetic).

The latent is the concatenation of the flow's latent pieces in ``to_latent``'s order (for images
the piece factored out first comes first), and ``z_y`` is its first ``int(condition_ratio * D)``
coordinates, as the author's code slices the first ``condition_ratio`` of its flattened ``z``.

Objective (per batch): ``mean NLL(x | y) / s + weight_y * CE + rl_weight * REINFORCE`` with
``s = D ln 2`` for images and 1 otherwise, i.e. for images the author's ``bpd + weight_y * CE +
rl_loss`` up to a constant (the flow's ``loss_scale``, as FFJORD/RNODE's losses). The REINFORCE
returns follow the paper's Eq. 6 by default (``tolerance_returns``).

Evaluation terms: ``nll`` = -log p(x | y) and ``nll_marginal`` = -log sum_c p(c) p(x | c), both at
the tight evaluation tolerance; ``error`` = 100 * [argmax q_theta(z_y) != y] (dropout off).
``class_prior="uniform"`` (default) uses p(c) = 1 / C; ``"train"`` uses the label counts of the
training batches seen so far, add-one smoothed (a buffer saved with the model).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Annotated, Any, Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from baselines import shards
from baselines.base import FlowModel, normal_log_prob, std_normal_log_prob
from baselines.cnf import CNF, collect_block_nfe
from baselines.cnf_options import CNFOptions
from baselines.constraints import Choice, Count, NonNegative, Positive, Range, UnitInterval
from baselines.ffjord import CNFFlowModel, MultiScaleCNF, make_cnf_model
from baselines.registry import flat_options

__all__ = ["CLASS_PRIORS", "ConditionalCNF", "ConditionalPrior", "DISTRIBUTIONS", "GATES", "INFOCNF_FLOW", "REWARDS",
           "ScaledLinear", "TOLERANCE_MODES", "TolerancePolicy", "ToleranceGate", "build_ccnf", "build_infocnf",
           "build_infocnf_learned", "cnf_blocks", "discounted_returns", "latent_sizes", "reinforce_surrogate",
           "tolerance_returns"]

TOLERANCE_MODES = ("fixed", "learned", "manual")
DISTRIBUTIONS = ("halfnormal", "log_gaussian")
GATES = ("cnn1", "cnn2")
REWARDS = ("eq6", "nfe_discounted")
CLASS_PRIORS = ("uniform", "train")


# -- latent layout -------------------------------------------------------------------------------
def latent_sizes(flow: CNFFlowModel) -> list[int]:
    """Sizes of the flat latent pieces ``flow.to_latent`` returns, in its order."""
    if isinstance(flow, MultiScaleCNF):
        return [math.prod(shape) for shape in flow.piece_shapes]
    return [flow.dim]


def cnf_blocks(flow: nn.Module) -> list[CNF]:
    """The CNF blocks of ``flow`` in the order ``to_latent`` runs them (module registration order)."""
    return [m for m in flow.modules() if isinstance(m, CNF)]


# -- q_phi and q_theta -----------------------------------------------------------------------------
class ScaledLinear(nn.Linear):
    """``(W x + b) * exp(logscale * logs)``, all of W, b and the per-output ``logs`` starting at zero.

    The author's code uses this layer (Glow's zero-initialised linear layer with a learned output
    scale) for both the prior and the classifier: the output starts at exactly zero, and the
    ``logs`` parameters (one per output) are why the models have the parameter counts of its logs.
    """

    def __init__(self, in_features: int, out_features: int, logscale: float = 3.0):
        super().__init__(in_features, out_features)
        self.logscale = logscale
        self.logs = nn.Parameter(torch.zeros(out_features))
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        """The linear map, each output scaled by its learned exp(logscale * logs)."""
        return super().forward(x) * torch.exp(self.logscale * self.logs)


class ConditionalPrior(nn.Module):
    """q_phi: one-hot label -> (mean, log-std) of the supervised latent, ``ScaledLinear`` plus a fixed offset.

    ``prior_h`` (2 * dim zeros) is the author's unconditional part of the prior: a registered
    parameter that its code adds detached, so it never trains and stays zero. It is kept (and added
    the same way) only so that the models have the author's parameter counts.
    """

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.num_classes, self.dim = num_classes, dim
        self.linear = ScaledLinear(num_classes, 2 * dim)
        self.prior_h = nn.Parameter(torch.zeros(2 * dim))

    def forward(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-std) of z_y for the labels ``y``: the first and second half of the layer's output."""
        h = self.linear(F.one_hot(y, self.num_classes).to(self.linear.weight.dtype)) + self.prior_h.detach()
        mean, log_std = h.chunk(2, -1)
        return mean, log_std

    def log_prob(self, z_y: Tensor, y: Tensor) -> Tensor:
        """log p(z_y | y) per example."""
        return normal_log_prob(z_y, *self(y))

    def log_prob_all(self, z_y: Tensor) -> Tensor:
        """log p(z_y | c) for every class c: [batch, num_classes]."""
        classes = torch.arange(self.num_classes, device=z_y.device)
        mean, log_std = self(classes)
        return normal_log_prob(z_y[:, None, :], mean[None], log_std[None])


# -- REINFORCE -------------------------------------------------------------------------------------
def discounted_returns(rewards: Tensor, gamma: float) -> Tensor:
    """G_i = sum_{j >= i} gamma^(j - i) R_j: each block's reward plus the discounted later ones."""
    out, running = [], rewards.new_zeros(rewards.shape[1:])
    for r in reversed(rewards.unbind(0)):
        running = r + gamma * running
        out.append(running)
    return torch.stack(out[::-1])


def tolerance_returns(reward: str, loss: float | Tensor, nfe: Tensor, alpha: float, gamma: float) -> Tensor:
    """The return r_i of each CNF block's tolerance choice (blocks in solve order, i = 0 .. N-1).

    ``eq6`` (the paper's Eq. 6, with R_j = -NFE_j): ``r_i = -[L + (alpha / N) sum_{j >= i} NFE_j]``,
    L the training loss of the batch on the bits/dim scale. With ``gamma < 1`` the discounted form
    of the author's code: ``r_i = -[gamma^(N - i) L + (alpha / N) sum_{j >= i} gamma^(j - i) NFE_j]``
    (its loop starts from -L and discounts once per block); ``gamma = 1`` is Eq. 6 exactly.
    ``nfe_discounted`` (an earlier variant of this harness): ``r_i = -sum_{j >= i} gamma^(j - i) NFE_j``,
    no loss term and no alpha / N.
    """
    nfe = nfe.to(torch.get_default_dtype()) if not nfe.is_floating_point() else nfe
    if reward == "eq6":
        n = nfe.shape[0]
        loss_weight = gamma ** torch.arange(n, 0, -1, dtype=nfe.dtype, device=nfe.device)
        return -(loss_weight * loss + alpha / n * discounted_returns(nfe, gamma))
    if reward == "nfe_discounted":
        return discounted_returns(-nfe, gamma)
    raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")


def reinforce_surrogate(log_probs: Tensor, returns: Tensor) -> Tensor:
    """-sum_i log pi(a_i) r_i with the returns detached: its gradient is minus the REINFORCE estimate
    of the policy gradient of the expected returns (minimising it maximises them)."""
    return -(log_probs * returns.detach()).sum()


# -- gates and the tolerance policy ----------------------------------------------------------------
class ToleranceGate(nn.Module):
    """A block's input -> ``outputs`` numbers in (0, 1) per example (``head``'s output through a sigmoid).

    Images: the author's feed-forward gate: 2x2 max-pooling, a 3x3 conv to ``channels`` (10) maps,
    batch norm, ReLU, a 3x3 conv with stride 2, batch norm, ReLU, global average pooling and a 1x1
    conv (``head``); the convs before the head have no bias. Vectors (our extension; the author's
    gates are for images): Linear(D, channels), ReLU, Linear (``head``). PyTorch's default
    initialisation, as the author's.
    """

    def __init__(self, shape: Sequence[int], channels: int = 10, outputs: int = 1):
        super().__init__()
        if len(shape) == 3:
            self.body: nn.Module = nn.Sequential(
                nn.MaxPool2d(2, ceil_mode=True),  # ceil: a 1x1 map stays 1x1 (equal to floor on even sizes)
                nn.Conv2d(shape[0], channels, 3, padding=1, bias=False), shards.BatchNorm2d(channels), nn.ReLU(),
                nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), shards.BatchNorm2d(channels),
                nn.ReLU(), nn.AdaptiveAvgPool2d(1))
            self.head: nn.Module = nn.Conv2d(channels, outputs, 1)
        else:
            self.body = nn.Sequential(nn.Linear(shape[0], channels), nn.ReLU())
            self.head = nn.Linear(channels, outputs)

    def forward(self, x: Tensor) -> Tensor:
        """[batch, outputs] gate values in (0, 1) for the block inputs ``x``."""
        return torch.sigmoid(self.head(self.body(x)).flatten(1))


class TolerancePolicy(nn.Module):
    """Per-block tolerance choice, applied through forward hooks on the flow's CNF blocks.

    Block i's gate sees the block's (detached) input; one solve serves the whole batch, so every
    quantity below is the batch mean of the gate's per-example outputs ``g`` (in (0, 1)), and the
    action is one number per block and batch; ``lo, hi = tol_min, tol_max``.

    - ``distribution="halfnormal"`` (the author's code): mean tolerance ``m = lo + (hi - lo) g_0``
      (its ``1e-5 + 9e-5 sigmoid``); action ``a = |e|``, ``e ~ N(0, s^2)``, applied tolerance
      ``m + a`` (atol = rtol);
      ``log pi = log HalfNormal(a; s)``. ``gate="cnn1"``: ``s = tol_std``, a constant, so log pi
      depends on no parameter and REINFORCE trains nothing (as in the author's code);
      ``gate="cnn2"``: ``s = tol_std * g_1 + 1e-8`` from a second gate output, which REINFORCE
      trains. The deterministic ("mean") tolerance is the expected one, ``m + s sqrt(2 / pi)``.
    - ``distribution="log_gaussian"`` (an earlier variant of this harness): on the log10 scale,
      ``mu = log10 lo + (log10 hi - log10 lo) g_0``, ``a ~ N(mu, sigma_i^2)`` with a learned
      per-block ``sigma_i`` (initially ``init_std`` decades), applied tolerance
      ``10^clip(a, log10 lo, log10 hi)``; the deterministic tolerance is ``10^mu``.

    Modes (``mode``): ``off`` (the configured solvers), ``sample`` (training: draw a_i, record
    log pi(a_i)), ``mean`` (the deterministic tolerance: evaluation with the learned tolerances),
    ``manual`` (the fixed ``manual`` tolerances, one per block). Each pass records, per block, the
    applied tolerance, the action, the forward-solve NFE (read off the block's counter without
    resetting it, so the harness's ``read_nfe`` still counts every evaluation) and log pi.
    """

    def __init__(self, blocks: list[CNF], tol_min: float = 1e-5, tol_max: float = 1e-4,
                 distribution: str = "halfnormal", gate: str = "cnn1", tol_std: float = 1e-4,
                 init_std: float = 0.2, channels: int = 10, learned: bool = True,
                 manual: Sequence[float] | None = None):
        super().__init__()
        if not 0 < tol_min <= tol_max:
            raise ValueError(f"need 0 < tol_min <= tol_max, got {tol_min}, {tol_max}")
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
        if gate not in GATES:
            raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
        if distribution == "log_gaussian" and gate == "cnn2":
            raise ValueError("gate 'cnn2' (a learned half-normal scale) needs distribution 'halfnormal'")
        if not tol_std > 0:
            raise ValueError(f"tol_std must be positive, got {tol_std}")
        self.tol_min, self.tol_max, self.tol_std = tol_min, tol_max, tol_std
        self.lo, self.hi = math.log10(tol_min), math.log10(tol_max)
        self.distribution, self.gate = distribution, gate
        outputs = 2 if gate == "cnn2" else 1
        self.gates = (nn.ModuleList(ToleranceGate(b.shape, channels, outputs) for b in blocks) if learned
                      else nn.ModuleList())
        self.log_std = (nn.Parameter(torch.full((len(blocks),), math.log(init_std)))
                        if learned and distribution == "log_gaussian" else None)
        self.manual = list(manual) if manual else None
        if self.manual is not None:
            if len(self.manual) == 1:
                self.manual = self.manual * len(blocks)
            if len(self.manual) != len(blocks) or min(self.manual) <= 0:
                raise ValueError(f"manual_tolerances: one positive tolerance, or one per CNF block ({len(blocks)}); "
                                 f"got {list(manual)}")
        self.mode = "off"
        self.record: dict[str, list] = {}
        self.reset()
        self._start: dict[int, int] = {}
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(functools.partial(self._before, i))
            block.register_forward_hook(functools.partial(self._after, i))

    def reset(self) -> None:
        """Start an empty record (tolerances, actions, NFE, log-probabilities) for the next pass."""
        self.record = {"tol": [], "nfe": [], "log_prob": [], "action": []}

    def distribution_of(self, i: int, x: Tensor) -> tuple[Tensor, torch.distributions.Distribution]:
        """(location, distribution of the action) of block i for the batch ``x``: for ``halfnormal``
        the mean tolerance m and HalfNormal(s); for ``log_gaussian`` mu and N(mu, sigma_i^2)."""
        g = shards.batch_mean(self.gates[i](x.detach()), (0,))[0]  # over the global batch
        if self.distribution == "halfnormal":
            mean = self.tol_min + (self.tol_max - self.tol_min) * g[0]
            scale = self.tol_std * g[1] + 1e-8 if self.gate == "cnn2" else g.new_tensor(self.tol_std)
            return mean, torch.distributions.HalfNormal(scale)
        mu = self.lo + (self.hi - self.lo) * g[0]
        return mu, torch.distributions.Normal(mu, self.log_std[i].exp())

    def _tolerance(self, location: Tensor, action: Tensor) -> float:
        if self.distribution == "halfnormal":
            return float(location + action)
        return 10 ** float(action.clamp(self.lo, self.hi))

    def _before(self, i: int, block: CNF, args: tuple) -> None:
        self._start[i] = block.func.nfe_forward
        if self.mode == "off":
            block.tolerance = None
            return
        if self.mode == "manual":
            block.tolerance = self.manual[i]
        else:
            location, dist = self.distribution_of(i, args[0])
            if self.mode == "sample":
                action = dist.sample().detach()
                self.record["log_prob"].append(dist.log_prob(action))
                self.record["action"].append(float(action))
            else:
                action = dist.mean.detach() if self.distribution == "halfnormal" else location.detach()
            block.tolerance = self._tolerance(location.detach(), action)
        self.record["tol"].append(block.tolerance)

    def _after(self, i: int, block: CNF, args: tuple, output: Any) -> None:
        self.record["nfe"].append(block.func.nfe_forward - self._start.pop(i, block.func.nfe_forward))
        block.tolerance = None

    @contextmanager
    def acting(self, mode: str) -> Iterator[dict[str, list]]:
        """Run the enclosed solves in ``mode``; yields the record of this pass."""
        previous, self.mode = self.mode, mode
        self.reset()
        try:
            yield self.record
        finally:
            self.mode = previous


# -- the model -------------------------------------------------------------------------------------
class ConditionalCNF(FlowModel):
    """InfoCNF's model (Nguyen et al., "InfoCNF: An Efficient Conditional Continuous Normalizing Flow
    with Adaptive Solvers"): a CNF ``flow`` with a class-conditional prior on the first ``cond_dim``
    latent coordinates, a classifier on them, and optionally a tolerance ``policy`` (see the module
    docstring).

    ``num_classes`` labels; ``weight_y`` of the cross-entropy; ``dropout`` before the classifier;
    ``class_prior`` p(c) of the marginal likelihood (uniform or train); ``tolerance`` mode (fixed,
    manual, learned); REINFORCE: ``rl_weight``, ``alpha``, ``gamma``, ``reward``;
    ``eval_learned_tolerance``: also evaluate at the policy's tolerances.

    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,))
    >>> model = ConditionalCNF(make_cnf_model(toy, CNFOptions(hidden=[8])), num_classes=3, cond_dim=1).eval()
    >>> sorted(model.evaluate(torch.zeros(4, 2), torch.tensor([0, 1, 2, 0])))
    ['error', 'nll', 'nll_marginal']
    """

    def __init__(self, flow: CNFFlowModel, num_classes: int, cond_dim: int, weight_y: float = 0.5,
                 dropout: float = 0.0, class_prior: str = "uniform", tolerance: str = "fixed",
                 policy: TolerancePolicy | None = None, rl_weight: float = 0.01, alpha: float = 0.1,
                 gamma: float = 1.0, reward: str = "eq6", eval_learned_tolerance: bool = False):
        super().__init__()
        if class_prior not in CLASS_PRIORS:
            raise ValueError(f"class_prior must be 'uniform' or 'train', got {class_prior!r}")
        if tolerance not in TOLERANCE_MODES:
            raise ValueError(f"tolerance must be one of {TOLERANCE_MODES}, got {tolerance!r}")
        if reward not in REWARDS:
            raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
        self.flow, self.num_classes, self.cond_dim = flow, num_classes, cond_dim
        self.sizes = latent_sizes(flow)
        self.prior = ConditionalPrior(num_classes, cond_dim)
        self.dropout = shards.Dropout(dropout)
        self.classifier = ScaledLinear(cond_dim, num_classes)
        self.weight_y, self.rl_weight, self.alpha, self.gamma, self.reward = weight_y, rl_weight, alpha, gamma, reward
        self.class_prior, self.tolerance = class_prior, tolerance
        self.policy = policy
        self.eval_learned_tolerance = eval_learned_tolerance and tolerance == "learned"
        self.register_buffer("class_counts", torch.zeros(num_classes))

    # latent and densities
    def latent(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (flat latent [batch, D], log|det dz/dx|)."""
        pieces, log_det, _ = self.flow.to_latent(x)
        return torch.cat(pieces, 1), log_det

    def split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """(z_y, z_u): the supervised and unsupervised parts of the flat latent."""
        return z[:, :self.cond_dim], z[:, self.cond_dim:]

    def log_pz(self, z: Tensor, y: Tensor) -> Tensor:
        """log p(z | y) = log N(z_y; mu(y), sigma(y)^2) + log N(z_u; 0, I)."""
        z_y, z_u = self.split(z)
        return self.prior.log_prob(z_y, y) + std_normal_log_prob(z_u)

    def log_pz_all(self, z: Tensor) -> Tensor:
        """log p(z | c) for every class: [batch, num_classes]."""
        z_y, z_u = self.split(z)
        return self.prior.log_prob_all(z_y) + std_normal_log_prob(z_u)[:, None]

    def log_class_prior(self) -> Tensor:
        """log p(c): uniform, or the add-one-smoothed label frequencies of the training batches."""
        if self.class_prior == "uniform":
            return self.class_counts.new_full((self.num_classes,), -math.log(self.num_classes))
        return torch.log((self.class_counts + 1) / (self.class_counts.sum() + self.num_classes))

    def marginal_log_pz(self, z: Tensor) -> Tensor:
        """log sum_c p(c) p(z | c)."""
        return torch.logsumexp(self.log_pz_all(z) + self.log_class_prior().to(z.dtype), 1)

    def logits(self, z: Tensor) -> Tensor:
        """q_theta's class logits from z_y (through dropout in training mode)."""
        return self.classifier(self.dropout(self.split(z)[0]))

    def log_prob(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(x | y), or the marginal log sum_c p(c) p(x | c) when y is None."""
        z, log_det = self.latent(x)
        return (self.log_pz(z, y) if y is not None else self.marginal_log_pz(z)) + log_det

    # training
    def _loss_scale(self) -> float:
        return float(self.flow.loss_scale)  # D ln 2 for images (the loss in bits/dim), 1 otherwise

    def training_loss(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor | float]]:
        """Mean NLL(x | y) / s + weight_y CE (+ rl_weight REINFORCE with learned tolerances) and its stats,
        detached 0-dim tensors (the harness reads them once a step; the chosen tolerances are floats)."""
        if y is None:
            raise ValueError("conditional CNFs (ccnf, infocnf) need labelled data (a dataset with classes)")
        if self.class_prior == "train":
            counts = shards.all_sum(torch.bincount(y, minlength=self.num_classes))  # the global batch's
            self.class_counts += counts.to(self.class_counts.dtype)
        mode = {"fixed": "off", "manual": "manual", "learned": "sample"}[self.tolerance]
        with self._acting(mode) as record:
            z, log_det = self.latent(x)
        nll = -(self.log_pz(z, y) + log_det).mean()
        logits = self.logits(z)
        ce = F.cross_entropy(logits, y)
        scale = self._loss_scale()
        loss = nll / scale + self.weight_y * ce
        stats: dict[str, Tensor | float] = {"nll": nll.detach(), "ce": ce.detach(),
                                            "error": 100.0 * (logits.argmax(1) != y).to(nll.dtype).mean().detach()}
        if record is not None and record["tol"]:
            stats.update({f"tol_block{i}": t for i, t in enumerate(record["tol"])})
        if self.tolerance == "learned":
            # L on the author's scale (bpd + weight_y CE, less terms the tolerance choice cannot change)
            base = shards.global_mean(loss.detach(), len(x))
            nfe = torch.tensor(record["nfe"], dtype=x.dtype, device=x.device)
            returns = tolerance_returns(self.reward, base, nfe, self.alpha, self.gamma)
            rl = reinforce_surrogate(torch.stack(record["log_prob"]).to(x.dtype), returns)
            loss = loss + self.rl_weight * rl
            stats["rl"] = rl.detach()
        return loss, stats

    @contextmanager
    def _acting(self, mode: str) -> Iterator[dict[str, list] | None]:
        if self.policy is None:
            yield None
            return
        with self.policy.acting(mode) as record:
            yield record

    # evaluation and sampling
    def _terms(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(-log p(x|y), -log p(x), 100 * misclassified) per example, at the current tolerances."""
        z, log_det = self.latent(x)
        cond = -(self.log_pz(z, y) + log_det)
        marginal = -(self.marginal_log_pz(z) + log_det)
        error = 100.0 * (self.logits(z).argmax(1) != y).to(z.dtype)
        return cond, marginal, error

    def evaluate(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``nll``, ``nll_marginal``, ``error`` at the evaluation solver's tolerance; with
        ``eval_learned_tolerance`` also ``nll_learned``, ``error_learned`` and ``nfe_learned`` (that
        pass's forward NFE summed over blocks) from a second pass at the policy's deterministic
        tolerances. Without labels only the marginal ``nll``."""
        if y is None:
            with self._acting("off"):
                return {"nll": -self.log_prob(x)}
        with self._acting("off"):
            cond, marginal, error = self._terms(x, y)
        out = {"nll": cond, "nll_marginal": marginal, "error": error}
        if self.eval_learned_tolerance:
            with self.policy.acting("mean") as record:
                cond_l, _, error_l = self._terms(x, y)
            out.update(nll_learned=cond_l, error_learned=error_l,
                       nfe_learned=cond_l.new_full(cond_l.shape, float(sum(record["nfe"]))))
        return out

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None) -> Tensor:
        """n samples of p(x | y) (y: n labels), or of the marginal (labels drawn from p(c))."""
        ref = self.classifier.weight
        if y is None:
            y = torch.multinomial(self.log_class_prior().exp(), n, replacement=True)
        y = y.to(ref.device)
        mean, log_std = self.prior(y)
        z_y = mean + log_std.exp() * torch.randn_like(mean)
        z = torch.cat([z_y, torch.randn(n, sum(self.sizes) - self.cond_dim, device=ref.device, dtype=ref.dtype)], 1)
        return self.flow.from_latent(list(z.split(self.sizes, 1)))

    def read_nfe(self) -> tuple[int, int]:
        """(forward, backward) dynamics evaluations of every block since the last call; resets."""
        return collect_block_nfe(self)


# -- builders --------------------------------------------------------------------------------------
INFOCNF_FLOW = CNFOptions(eval_atol=1e-5, eval_rtol=1e-5)  # FFJORD's options, evaluated at 1e-5


@flat_options
def build_infocnf(data: Any, condition_ratio: Annotated[float, Range(0, 1, min_open=True)] = 0.5,
                  weight_y: NonNegative = 0.5, dropout: UnitInterval = 0.5,
                  class_prior: Annotated[str, Choice(*CLASS_PRIORS)] = "uniform",
                  tolerance: Annotated[str, Choice(*TOLERANCE_MODES)] = "fixed",
                  manual_tolerances: Positive | Sequence[Positive] | None = None, tol_min: Positive = 1e-5,
                  tol_max: Positive = 1e-4, distribution: Annotated[str, Choice(*DISTRIBUTIONS)] = "halfnormal",
                  gate: Annotated[str, Choice(*GATES)] = "cnn1", tol_std: Positive = 1e-4, tol_init_std: Positive = 0.2,
                  gate_channels: Count = 10, reward: Annotated[str, Choice(*REWARDS)] = "eq6", alpha: NonNegative = 0.1,
                  rl_weight: NonNegative = 0.01, gamma: UnitInterval = 1.0, eval_learned_tolerance: bool = False,
                  cnf: CNFOptions = INFOCNF_FLOW) -> FlowModel:
    """InfoCNF (Nguyen et al., "InfoCNF: An Efficient Conditional Continuous Normalizing Flow with
    Adaptive Solvers"): the first ``condition_ratio`` of the latent is supervised (conditional prior
    and classifier, ``dropout`` before it), the rest N(0, I); loss NLL + s * weight_y * CE.

    ``data``: what the model is for (``name``, ``kind``, ``shape``, ``num_classes`` > 0).
    ``class_prior``: p(c) of the marginal likelihood (``uniform``, or ``train``: the training labels'
    frequencies). ``tolerance``: ``fixed`` (the train solver's atol/rtol), ``manual``
    (``manual_tolerances``, one or one per block, in training solves) or ``learned``: gates (``gate``
    cnn1/cnn2, ``gate_channels``) choose each block's tolerance from ``distribution`` over
    [tol_min, tol_max] (``tol_std``: the half-normal's scale; ``tol_init_std``: the log-Gaussian's
    initial std in decades), trained by REINFORCE with the ``reward`` returns (``eq6``: the paper's
    Eq. 6 with ``alpha``, discount ``gamma``; ``nfe_discounted``) weighted by ``rl_weight``.
    Defaults: the author's weights (alpha = its eta 0.1, rl_weight 0.01), Eq. 6 undiscounted.
    ``eval_learned_tolerance`` adds an evaluation pass at the learned tolerances. ``cnf``: the
    flow's options (``baselines.cnf_options.CNFOptions``, also accepted as flat keyword arguments)
    with FFJORD's kind defaults, except that evaluation runs at eval_atol/eval_rtol 1e-5.

    >>> import torch
    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,), dim=2, num_classes=4)
    >>> model = build_infocnf(toy, hidden=[8])
    >>> model.cond_dim, model.flow.blocks[0].eval_solver.atol
    (1, 1e-05)
    >>> loss, stats = model.training_loss(torch.randn(8, 2), torch.tensor([0, 1, 2, 3] * 2))
    >>> sorted(stats)
    ['ce', 'error', 'nll']
    """
    if not data.num_classes:
        raise ValueError(f"{data.name} has no class labels: conditional CNFs need a labelled dataset")
    if not 0.0 < condition_ratio <= 1.0:
        raise ValueError(f"condition_ratio must be in (0, 1], got {condition_ratio}")
    if tolerance not in TOLERANCE_MODES:
        raise ValueError(f"tolerance must be one of {TOLERANCE_MODES}, got {tolerance!r}")
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    flow = make_cnf_model(data, cnf)
    policy = None
    if tolerance == "learned":
        policy = TolerancePolicy(cnf_blocks(flow), tol_min, tol_max, distribution=distribution, gate=gate,
                                 tol_std=tol_std, init_std=tol_init_std, channels=gate_channels)
    elif tolerance == "manual":
        if not manual_tolerances:
            raise ValueError("tolerance: manual needs manual_tolerances (one tolerance, or one per CNF block)")
        manual = [manual_tolerances] if isinstance(manual_tolerances, (int, float)) else manual_tolerances
        policy = TolerancePolicy(cnf_blocks(flow), learned=False, manual=manual)
    dim = data.dim
    cond_dim = min(dim, max(1, int(condition_ratio * dim)))
    return ConditionalCNF(flow, data.num_classes, cond_dim, weight_y=weight_y, dropout=dropout,
                          class_prior=class_prior, tolerance=tolerance, policy=policy, rl_weight=rl_weight,
                          alpha=alpha, gamma=gamma, reward=reward, eval_learned_tolerance=eval_learned_tolerance)


# CCNF: the whole latent conditional, the classifier on all of z, no dropout (the author's code's
# default; its Table 1 CCNF runs set dropout 0.5, as suites/infocnf-cifar10*.yaml do);
# InfoCNF with learned tolerances: the same builder with tolerance="learned". Partials keep one
# signature (the suites resolve defaults from it) and show the presets as its defaults.
build_ccnf = functools.partial(build_infocnf, condition_ratio=1.0, dropout=0.0)
build_ccnf.__doc__ = "CCNF: build_infocnf with condition_ratio=1.0 (all of z conditional) and dropout=0.0."
build_infocnf_learned = functools.partial(build_infocnf, tolerance="learned")
build_infocnf_learned.__doc__ = "InfoCNF with learned tolerances: build_infocnf with tolerance='learned'."
