"""Builders with an options dataclass (baselines/registry.py): the flat signature suites see, the
packing of flat keyword arguments, and a field declared twice."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Annotated

import pytest

from baselines.constraints import Range
from baselines.registry import call_builder, flat_options, flat_signature, option_groups


@dataclass(frozen=True)
class Solve:
    tol: Annotated[float, Range(min=0, min_open=True)] = 1e-5
    method: str = "dopri5"


@dataclass(frozen=True)
class Wide(Solve):
    width: int = 4


def plain(data, depth: int = 2, solve: Solve = Solve(method="rk4")):
    return data, depth, solve


@flat_options
def decorated(data, depth: int = 2, solve: Wide = Wide()):
    return data, depth, solve


def test_flat_signature_expands_the_dataclass_in_place():
    params = flat_signature(plain).parameters
    assert list(params) == ["data", "depth", "tol", "method"]
    assert params["method"].default == "rk4"  # the default instance's value, not the field's
    assert params["tol"].annotation == Annotated[float, Range(min=0, min_open=True)]  # evaluated, markers kept
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in params.items() if name != "data")
    assert list(flat_signature(decorated).parameters) == ["data", "depth", "tol", "method", "width"]
    assert option_groups(plain) == {"solve": (Solve, Solve(method="rk4"), ("tol", "method"))}


def test_flat_keywords_are_packed_into_the_dataclass():
    assert call_builder(plain, "d", {"tol": 1e-3, "depth": 3}) == ("d", 3, Solve(1e-3, "rk4"))
    assert call_builder(plain, "d", {}) == ("d", 2, Solve(method="rk4"))
    assert decorated("d", width=8) == ("d", 2, Wide(width=8))
    assert decorated("d", solve=Wide(tol=1.0), width=8) == ("d", 2, Wide(tol=1.0, width=8))  # flat fields win
    assert decorated("d", solve=Wide(tol=1.0)) == ("d", 2, Wide(tol=1.0))
    with pytest.raises(TypeError, match="nope"):
        decorated("d", nope=1)
    assert inspect.signature(decorated).parameters["solve"].annotation in (Wide, "Wide")  # the builder's own


def test_a_field_declared_twice_is_refused():
    def twice(data, tol: float = 1.0, solve: Solve = Solve()):
        return data

    with pytest.raises(TypeError, match="'tol' is declared twice"):
        flat_signature(twice)


def test_a_builder_without_options_is_unchanged():
    def simple(data, a: int = 1, b: str = "x"):
        return data

    params = flat_signature(simple).parameters
    assert [(n, p.annotation, p.default) for n, p in params.items()] == [
        ("data", inspect.Parameter.empty, inspect.Parameter.empty), ("a", int, 1), ("b", str, "x")]
    assert option_groups(simple) == {} and call_builder(simple, "d", {"a": 2}) == "d"
