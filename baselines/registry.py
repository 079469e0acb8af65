"""Model registry: name -> builder, resolved lazily so that listing names never imports torch.

Three ways in: the built-in table below, the ``@register("name")`` decorator (for a module the
suite names under ``plugins:``), and the ``flowbench.models`` entry-point group of an installed
package (``name = "package.module:build"``).

A builder's hyperparameters are its keyword parameters after ``data``. A parameter annotated with
a dataclass (``cnf: CNFOptions = CNFOptions()``) stands for that dataclass's fields: they are the
hyperparameters, flat, with the field annotations and the default instance's values
(``flat_signature``), so options shared by several builders are declared once, in the dataclass.
``call_builder`` (and builders decorated with ``flat_options``) pack flat keyword arguments into
those dataclasses.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import typing
from collections.abc import Callable, Mapping
from importlib import metadata
from typing import Any

__all__ = ["BUILTIN", "ENTRY_POINT_GROUP", "call_builder", "describe_models", "flat_options", "flat_signature",
           "get_builder", "model_names", "option_groups", "register"]

# name -> ("module:function", one-line description)
BUILTIN: dict[str, tuple[str, str]] = {
    "realnvp": ("baselines.realnvp:build", "RealNVP (Dinh et al. 2017): affine couplings, alternating masks"),
    "glow": ("baselines.glow:build", "Glow (Kingma & Dhariwal 2018): ActNorm, LU 1x1 conv, affine coupling, split priors"),
    "glow_ffjord": ("baselines.glow:build_ffjord_tabular",
                    "Glow as FFJORD's tabular table ran it: identity-initialised dense map, masked affine coupling"),
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


# -- options dataclasses: declared once, flat to suites ------------------------------------------------
def _signature(builder: Callable) -> inspect.Signature:
    """The builder's signature with its annotations evaluated where they evaluate (they declare types
    and ranges); a plug-in whose annotations do not evaluate keeps them as text."""
    try:
        return inspect.signature(builder, eval_str=True)
    except Exception:  # noqa: BLE001 - e.g. names imported only under TYPE_CHECKING
        return inspect.signature(builder)


def _options_class(param: inspect.Parameter) -> type | None:
    """The dataclass a parameter stands for (its annotation, or its default's class), else None."""
    annotation = param.annotation
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    default = param.default
    if dataclasses.is_dataclass(default) and not isinstance(default, type):
        return type(default)
    return None


def _option_fields(cls: type, default: Any) -> list[inspect.Parameter]:
    """The fields of an options dataclass as keyword parameters: annotation (``Annotated`` kept)
    and default (the default instance's value, else the field's own default)."""
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # noqa: BLE001 - annotations that do not evaluate stay text (unchecked)
        hints = {}
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if default is not None:
            value = getattr(default, f.name)
        elif f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = inspect.Parameter.empty
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=value,
                                     annotation=hints.get(f.name, f.type)))
    return out


def option_groups(builder: Callable) -> dict[str, tuple[type, Any, tuple[str, ...]]]:
    """The builder's dataclass-typed parameters: name -> (dataclass, default instance or None, field names)."""
    out = {}
    for name, param in _signature(builder).parameters.items():
        cls = _options_class(param)
        if cls is not None:
            default = param.default if param.default is not inspect.Parameter.empty else None
            out[name] = (cls, default, tuple(f.name for f in dataclasses.fields(cls) if f.init))
    return out


def flat_signature(builder: Callable) -> inspect.Signature:
    """The builder's signature as suites see it: ``data`` first, then every hyperparameter, each
    dataclass-typed parameter replaced by its fields (keyword-only, with their annotations and the
    default instance's values). A field named like another hyperparameter is a TypeError."""
    signature = _signature(builder)
    params: list[inspect.Parameter] = []
    seen: set[str] = set()
    for i, (name, param) in enumerate(signature.parameters.items()):
        cls = _options_class(param) if i else None
        if cls is None:
            expanded = [param]
        else:
            default = param.default if param.default is not inspect.Parameter.empty else None
            expanded = _option_fields(cls, default)
        for p in expanded:
            if p.name in seen:
                raise TypeError(f"builder {getattr(builder, '__name__', builder)!r}: hyperparameter {p.name!r} is "
                                f"declared twice (a field of {cls.__name__ if cls else 'an options dataclass'} and "
                                "another parameter); rename one")
            seen.add(p.name)
            if i and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
                p = p.replace(kind=p.KEYWORD_ONLY)
            params.append(p)
    # keyword-only parameters may not precede positional ones: ``data`` stays first
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    rest = [p for p in params if p not in positional]
    return signature.replace(parameters=[*positional, *rest])


def _pack(groups: Mapping[str, tuple[type, Any, tuple[str, ...]]], kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Flat keyword arguments -> the builder's: each dataclass's fields gathered into an instance
    (the one passed by name, else the default instance, with the flat fields replacing its values)."""
    out = dict(kwargs)
    for name, (cls, default, names) in groups.items():
        given = {n: out.pop(n) for n in names if n in out}
        base = out.get(name, default)
        if given or name not in out:
            out[name] = dataclasses.replace(base, **given) if base is not None else cls(**given)
    return out


def call_builder(builder: Callable, data: Any, options: Mapping[str, Any]) -> Any:
    """``builder(data, ...)`` with flat hyperparameters (a suite's ``model:`` options) packed into the
    builder's options dataclasses."""
    return builder(data, **_pack(option_groups(builder), options))


def flat_options(builder: Callable) -> Callable:
    """Decorator: the builder also takes its options dataclasses' fields as flat keyword arguments
    (``build(data, hidden=[8])`` as well as ``build(data, cnf=CNFOptions(hidden=[8]))``), as the
    harness passes a suite's options. The signature shown stays the builder's own."""

    @functools.wraps(builder)
    def wrapper(data: Any, **kwargs: Any) -> Any:
        groups = wrapper.__dict__.get("_option_groups")
        if groups is None:  # read once, on the first call: the module is fully imported by then
            groups = wrapper._option_groups = option_groups(builder)
        return builder(data, **_pack(groups, kwargs))

    return wrapper
