"""The options of the CNF models, declared once: solver, dynamics network, divergence and flow layout.

``CNFOptions`` holds what every CNF builder accepts (FFJORD's hyperparameters, Grathwohl et al.
2019); ``FFJORDOptions`` adds the adaptive solver's first step; ``RNODEOptions`` (Finlay et al.
2020) changes some defaults and adds the regulariser weights. InfoCNF's builder takes a
``CNFOptions`` whose default evaluation tolerances are 1e-5.

A builder takes one of them as a parameter (``cnf: FFJORDOptions = FFJORDOptions()``); the harness
shows and validates its fields as the suite's flat ``model:`` options (``baselines.registry``),
checked and coerced once against the annotations below (``baselines.constraints``). ``None`` and
``"auto"`` mean "the data kind's default" (``baselines.ffjord.make_cnf_model`` fills them in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from baselines.cnf import ACTIVATIONS, DIVERGENCES, LAYER_TYPES, NOISES, SolverName
from baselines.constraints import Choice, Count, NonNegInt, NonNegative, Positive

__all__ = ["Activation", "CNFOptions", "Divergence", "FFJORDOptions", "LayerType", "Noise", "RNODEOptions",
           "RegulariserWeights", "Widths"]

# the declared values of the CNF options
Widths = Count | Sequence[Count] | None  # hidden: one width or one per layer; None: the kind's default
LayerType = Annotated[str, Choice("auto", *LAYER_TYPES)]
Activation = Annotated[str, Choice("auto", *ACTIVATIONS)]
Divergence = Annotated[str, Choice(*DIVERGENCES)]
Noise = Annotated[str, Choice("auto", *NOISES)]


@dataclass(frozen=True)
class CNFOptions:
    """The options of a CNF flow (FFJORD, Grathwohl et al. 2019, "FFJORD: Free-form Continuous
    Dynamics for Scalable Reversible Generative Models"); ``None`` / ``"auto"``: the kind's default.

    Layout: ``n_blocks`` CNF blocks (vectors; default 1) or blocks per half-scale (images; 2),
    ``n_scales`` scales of the multi-scale image model (0: halve while both sides are >= 4),
    ``batch_norm`` (vectors: moving batch norm around every block).
    Dynamics network: ``hidden`` widths (toy and images 64-64-64, tabular one layer of 10 D),
    ``layer_type`` (vectors concatsquash, images concat), ``activation`` (toy tanh, else softplus),
    ``zero_last`` (zero the last layer's weights).
    Time: ``end_time`` T (toy 0.5, else 1.0), ``train_end_time`` (learn T), ``steer`` (STEER's b).
    Divergence: ``divergence`` / ``eval_divergence`` (hutchinson, exact, auto), ``noise`` of the
    Hutchinson probe (images rademacher, else gaussian); ``val_divergence`` in the harness's
    validation evaluations (``None``: ``eval_divergence``; FFJORD's train_tabular.py validates with
    Hutchinson and tests with the exact trace).
    Solvers: ``solver`` with ``atol`` / ``rtol`` (tabular 1e-8 / 1e-6, else 1e-5) and ``step_size``
    (fixed-step methods); ``eval_solver`` with ``eval_atol`` / ``eval_rtol`` (min(train, 1e-5));
    ``adjoint`` backpropagation, ``adjoint_seminorm`` (parameter adjoints out of the backward
    solve's error control).

    >>> CNFOptions(hidden=[8]).hidden, CNFOptions().solver
    ([8], 'dopri5')
    >>> CNFOptions().regularisation(), CNFOptions().first_adaptive_step() is None
    ((0.0, 0.0), True)
    """

    n_blocks: Count | None = None
    hidden: Widths = None
    layer_type: LayerType = "auto"
    activation: Activation = "auto"
    end_time: Positive | None = None
    train_end_time: bool = True
    divergence: Divergence = "auto"
    eval_divergence: Divergence = "auto"
    noise: Noise = "auto"
    solver: SolverName = "dopri5"
    atol: Positive | None = None
    rtol: Positive | None = None
    step_size: Positive | None = None
    eval_solver: SolverName = "dopri5"
    eval_atol: Positive | None = None
    eval_rtol: Positive | None = None
    adjoint: bool = True
    steer: NonNegative = 0.0
    batch_norm: bool = False
    n_scales: NonNegInt = 0
    zero_last: bool = False
    adjoint_seminorm: bool = False
    val_divergence: Divergence | None = None

    def regularisation(self) -> tuple[float, float]:
        """(kinetic, jacobian) weights of RNODE's regularisers in the loss: none for a plain CNF."""
        return 0.0, 0.0

    def first_adaptive_step(self) -> float | None:
        """The adaptive training solver's first step (None: torchdiffeq chooses it)."""
        return None


@dataclass(frozen=True)
class FFJORDOptions(CNFOptions):
    """``CNFOptions`` plus ``first_step``: the adaptive training solver's first step (``None``:
    torchdiffeq's choice; RNODE's scripts fix 0.166667 with dopri5).

    >>> FFJORDOptions(first_step=0.1).first_adaptive_step()
    0.1
    """

    first_step: Positive | None = None

    def first_adaptive_step(self) -> float | None:
        return self.first_step


@dataclass(frozen=True)
class RegulariserWeights:
    """RNODE's loss weights: ``kinetic`` of the kinetic energy, ``jacobian`` of the Jacobian's
    Frobenius norm (both integrated along the trajectory; see ``baselines.rnode``)."""

    kinetic: NonNegative = 0.01
    jacobian: NonNegative = 0.01


@dataclass(frozen=True)
class RNODEOptions(FFJORDOptions, RegulariserWeights):
    """RNODE's options (Finlay et al. 2020, "How to Train Your Neural ODE: the World of Jacobian and
    Kinetic Regularization"): the regulariser weights ``kinetic`` and ``jacobian`` (first, as RNODE's
    builder has always listed them), then FFJORD's options with cfinlay/ffjord-rnode's defaults
    (T = 1 not trained, Gaussian probes, the last layer's weights zeroed, ``step_size`` 0.25 for
    ``solver: rk4``).

    >>> options = RNODEOptions()
    >>> options.end_time, options.train_end_time, options.zero_last, options.regularisation()
    (1.0, False, True, (0.01, 0.01))
    >>> from dataclasses import fields
    >>> [f.name for f in fields(options)][:3]
    ['kinetic', 'jacobian', 'n_blocks']
    """

    end_time: Positive = 1.0
    train_end_time: bool = False
    noise: Noise = "gaussian"
    step_size: Positive | None = 0.25
    zero_last: bool = True

    def regularisation(self) -> tuple[float, float]:
        return self.kinetic, self.jacobian
