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

from typing import Any

from baselines.base import FlowModel
from baselines.cnf_options import RNODEOptions
from baselines.ffjord import make_cnf_model
from baselines.registry import flat_options

__all__ = ["build"]


@flat_options
def build(data: Any, cnf: RNODEOptions = RNODEOptions()) -> FlowModel:
    """RNODE (Finlay et al. 2020, "How to Train Your Neural ODE: the World of Jacobian and Kinetic
    Regularization"): FFJORD's model (``baselines.ffjord.build`` has the kind defaults) plus the
    kinetic-energy and Jacobian-norm regularisers, weighted by ``kinetic`` and ``jacobian``.

    ``data``: what the model is for (``name``, ``kind``, ``shape``); ``cnf``: the options
    (``baselines.cnf_options.RNODEOptions``, also accepted as flat keyword arguments): RNODE's
    defaults T = 1 fixed, Gaussian probes, zeroed last weights; ``solver: rk4`` uses ``step_size``
    (0.25); ``first_step`` fixes an adaptive solver's first step (RNODE's scripts use 0.166667 with
    dopri5).

    >>> import torch
    >>> from types import SimpleNamespace
    >>> toy = SimpleNamespace(name="toy", kind="toy", shape=(2,))
    >>> model = build(toy, hidden=[8], solver="rk4")
    >>> loss, stats = model.training_loss(torch.randn(16, 2))
    >>> sorted(stats), model.read_nfe()[0]  # rk4 with step 0.25 over [0, 1]: 4 steps of 4 evaluations
    (['jacobian', 'kinetic', 'nll'], 16)
    """
    return make_cnf_model(data, cnf)
