"""RNODE (Finlay et al. 2020): FFJORD regularised by kinetic energy and Jacobian Frobenius norm.

Both terms are integrated along the trajectory as extra ODE states (excluded from step-size
control), the Frobenius term reusing the Hutchinson probe's vector-Jacobian product; the loss is
``mean NLL + kinetic * K + jacobian * B`` (for images on the bits/dim scale, as the paper weighs
them), and K and B are the ``kinetic`` / ``jacobian`` stats of ``training_loss``. Fixed-step RK4
(``solver: rk4, step_size: 0.25``) trains regularised models (the paper's MNIST setting);
evaluation stays adaptive (dopri5 at 1e-5). Defaults follow cfinlay/ffjord-rnode's train.py: T = 1
not trained, last layer's weights zero-initialised (its bias keeps the default init), Gaussian probes,
concat layers in the multi-scale image model.
"""

from __future__ import annotations

from baselines.base import FlowModel
from baselines.constraints import Count, NonNegInt, NonNegative, Positive
from baselines.ffjord import Activation, Divergence, LayerType, Noise, SolverName, Widths, make_cnf_model


def build(data, kinetic: NonNegative = 0.01, jacobian: NonNegative = 0.01, n_blocks: Count | None = None,
          hidden: Widths = None, layer_type: LayerType = "auto", activation: Activation = "auto",
          end_time: Positive = 1.0, train_end_time: bool = False, divergence: Divergence = "auto",
          eval_divergence: Divergence = "auto", noise: Noise = "gaussian", solver: SolverName = "dopri5",
          atol: Positive | None = None, rtol: Positive | None = None, step_size: Positive | None = 0.25,
          eval_solver: SolverName = "dopri5", eval_atol: Positive | None = None, eval_rtol: Positive | None = None,
          adjoint: bool = True, steer: NonNegative = 0.0, batch_norm: bool = False, n_scales: NonNegInt = 0,
          zero_last: bool = True, adjoint_seminorm: bool = False, first_step: Positive | None = None) -> FlowModel:
    """RNODE: FFJORD's model (see baselines.ffjord.build for the kind defaults) plus kinetic-energy
    and Jacobian-norm regularisers with weights ``kinetic`` and ``jacobian``; ``solver: rk4`` uses
    ``step_size``; ``first_step`` fixes an adaptive solver's first step (RNODE's scripts use 0.166667
    with dopri5)."""
    return make_cnf_model(data, n_blocks=n_blocks, hidden=hidden, layer_type=layer_type, activation=activation,
                          end_time=end_time, train_end_time=train_end_time, divergence=divergence,
                          eval_divergence=eval_divergence, noise=noise, solver=solver, atol=atol, rtol=rtol,
                          step_size=step_size, eval_solver=eval_solver, eval_atol=eval_atol, eval_rtol=eval_rtol,
                          adjoint=adjoint, steer=steer, batch_norm=batch_norm, n_scales=n_scales,
                          zero_last=zero_last, adjoint_seminorm=adjoint_seminorm, kinetic=kinetic, jacobian=jacobian,
                          first_step=first_step)
