"""Model registry: name -> builder, resolved lazily so that listing names never imports torch.

Three ways in: the built-in table below, the ``@register("name")`` decorator (for a module the
suite names under ``plugins:``), and the ``flowbench.models`` entry-point group of an installed
package (``name = "package.module:build"``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib import metadata

# name -> ("module:function", one-line description)
BUILTIN: dict[str, tuple[str, str]] = {
    "realnvp": ("baselines.realnvp:build", "RealNVP (Dinh et al. 2017): affine couplings, alternating masks"),
    "glow": ("baselines.glow:build", "Glow (Kingma & Dhariwal 2018): ActNorm, LU 1x1 conv, affine coupling, split priors"),
    "iresnet": ("baselines.iresnet:build", "i-ResNet (Behrmann et al. 2019): Lipschitz residual blocks, power-series log-det"),
    "ffjord": ("baselines.ffjord:build", "FFJORD (Grathwohl et al. 2019): CNF blocks, Hutchinson trace, multi-scale images"),
    "rnode": ("baselines.rnode:build", "RNODE (Finlay et al. 2020): FFJORD + kinetic/Jacobian-norm regularisers, rk4 option"),
    "ccnf": ("baselines.infocnf:build_ccnf", "CCNF (InfoCNF's baseline): CNF with a class-conditional prior on all of z"),
    "infocnf": ("baselines.infocnf:build_infocnf", "InfoCNF (Nguyen et al.): supervised/unsupervised latent split, fixed tolerances"),
    "infocnf_learned": ("baselines.infocnf:build_infocnf_learned",
                        "InfoCNF with solver tolerances learned per block by REINFORCE"),
    "latent_ode": ("baselines.latent_ode:build", "LatentODE (Rubanova et al. 2019): RNN encoder, ODE latent trajectory"),
    "latent_ode_partitioned": ("baselines.latent_ode:build_partitioned",
                               "LatentODE with InfoCNF's partitioned latent (3 supervised dims)"),
}

_registered: dict[str, tuple[Callable, str]] = {}

ENTRY_POINT_GROUP = "flowbench.models"


def register(name: str, description: str = "") -> Callable[[Callable], Callable]:
    """Decorator that registers ``build(data, **hparams) -> nn.Module`` under ``name``."""

    def decorate(builder: Callable) -> Callable:
        doc = description or (builder.__doc__ or "").strip().splitlines()[0:1]
        _registered[name] = (builder, doc if isinstance(doc, str) else "".join(doc))
        return builder

    return decorate


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def model_names() -> list[str]:
    """Every model name that can be built, without importing any model code."""
    return sorted(set(BUILTIN) | set(_registered) | set(_entry_points()))


def describe_models() -> dict[str, str]:
    """name -> one-line description, without importing model code."""
    out = {name: desc for name, (_, desc) in BUILTIN.items()}
    out.update({name: desc for name, (_, desc) in _registered.items()})
    for name, ep in _entry_points().items():
        out.setdefault(name, f"plug-in model from {ep.value}")
    return dict(sorted(out.items()))


def get_builder(name: str) -> Callable:
    """The builder registered under ``name`` (imports its module); KeyError if unknown."""
    if name in _registered:
        return _registered[name][0]
    if name in BUILTIN:
        module, _, func = BUILTIN[name][0].partition(":")
        return getattr(importlib.import_module(module), func)
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    raise KeyError(name)
