"""Declared types and ranges of hyperparameters and data options, readable without torch.

A builder declares a hyperparameter's range next to it, in its annotation:
``hidden: Annotated[int, Range(min=1)] = 64`` (or an alias below: ``hidden: Count = 64``);
``Choice`` lists the allowed values and ``Pattern`` the form of a text. ``conform(value,
annotation)`` checks a value against such an annotation and returns it normalised (an integer
where a number is declared becomes a float); it raises ``Invalid`` with what was expected, and the
caller adds where the value came from. ``bench.spec`` checks every suite's hyperparameters against
the builders' annotations and data options against ``bench.data``'s declarations with it.

Every value is also kept sane whatever its declaration: numbers finite, integers within 64 bits
(records, tables and RNG seeds hold them). Nothing here imports torch or bench.
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Union

__all__ = ["Choice", "conform", "Count", "describe", "INT64_MAX", "Invalid", "NonNegative", "NonNegInt", "Pattern",
           "Positive", "Range", "Seed", "UnitInterval"]

INT64_MAX = 2**63 - 1


class Invalid(ValueError):
    """A value that does not conform; the message says what was expected and what was given."""


def _num(x: float) -> str:
    return repr(x) if isinstance(x, int) else f"{x:g}"


@dataclass(frozen=True)
class Range:
    """Bounds of a number: ``min``/``max`` included unless ``min_open``/``max_open``."""

    min: float | None = None
    max: float | None = None
    min_open: bool = False
    max_open: bool = False

    def admits(self, value: float) -> bool:
        """Whether ``value`` lies within the bounds."""
        if self.min is not None and (value <= self.min if self.min_open else value < self.min):
            return False
        return not (self.max is not None and (value >= self.max if self.max_open else value > self.max))

    def text(self) -> str:
        """``>= 1``, ``> 0``, ``in [0, 0.5)``."""
        if self.min is not None and self.max is not None:
            left, right = "(" if self.min_open else "[", ")" if self.max_open else "]"
            return f"in {left}{_num(self.min)}, {_num(self.max)}{right}"
        if self.min is not None:
            return f"{'>' if self.min_open else '>='} {_num(self.min)}"
        if self.max is not None:
            return f"{'<' if self.max_open else '<='} {_num(self.max)}"
        return ""


@dataclass(frozen=True, init=False)
class Choice:
    """The allowed values (``Choice("gru", "rnn")``)."""

    values: tuple[Any, ...]

    def __init__(self, *values: Any):
        object.__setattr__(self, "values", tuple(values))

    def admits(self, value: Any) -> bool:
        return any(value == v and type(value) is type(v) for v in self.values)

    def text(self) -> str:
        return "one of " + ", ".join(map(str, self.values))


@dataclass(frozen=True)
class Pattern:
    """The form of a text: a regular expression it must match in full, and its description."""

    regex: str
    description: str

    def admits(self, value: str) -> bool:
        return re.fullmatch(self.regex, value) is not None

    def text(self) -> str:
        return self.description


# common declarations
Count = Annotated[int, Range(min=1)]  # widths, layers, blocks, iterations, examples
NonNegInt = Annotated[int, Range(min=0)]
Positive = Annotated[float, Range(min=0, min_open=True)]  # tolerances, scales, step sizes
NonNegative = Annotated[float, Range(min=0)]  # weights of loss terms
Seed = Annotated[int, Range(0, INT64_MAX)]
UnitInterval = Annotated[float, Range(0, 1)]

_NAMES = {int: ("an integer", "integers"), float: ("a number", "numbers"), str: ("text", "texts"),
          bool: ("true or false", "true/false values"), type(None): ("null", "nulls"), list: ("a list", "lists"),
          dict: ("a mapping", "mappings")}
_SEQUENCES = (list, tuple, Sequence)


def _parts(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """(the type, its markers) of ``Annotated[type, *markers]`` or a plain type."""
    if typing.get_origin(annotation) is Annotated:
        return annotation.__origin__, tuple(m for m in annotation.__metadata__ if hasattr(m, "admits"))
    return annotation, ()


def _alternatives(base: Any) -> tuple[Any, ...] | None:
    return typing.get_args(base) if typing.get_origin(base) in (Union, types.UnionType) else None


def _unchecked(base: Any) -> bool:
    return base is Any or base is inspect.Parameter.empty or isinstance(base, (str, typing.ForwardRef))


def describe(annotation: Any, plural: bool = False) -> str:
    """What an annotation admits, in words: ``an integer >= 1 or null``."""
    base, marks = _parts(annotation)
    alternatives = _alternatives(base)
    if alternatives is not None:
        words = [describe(a, plural) for a in alternatives if a is not type(None)]
        words += [describe(type(None), plural)] if type(None) in alternatives else []
        return " or ".join(words)
    whole = next((m for m in marks if isinstance(m, (Choice, Pattern))), None)
    if whole is not None:  # the values or the form say it all
        return whole.text()
    origin = typing.get_origin(base)
    if origin in _SEQUENCES:
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        text = f"a list of {describe(args[0], plural=True)}" if args else "a list"
    elif _unchecked(base):
        text = "values" if plural else "a value"
    else:
        text = _NAMES.get(origin or base, (getattr(base, "__name__", str(base)),) * 2)[plural]
    return " ".join([text, *(m.text() for m in marks)])


class _NotSane(Invalid):
    """A number that is not finite, or an integer beyond 64 bits (``reason`` says which)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def _sane(value: Any) -> Any:
    """``value`` itself when every number in it is finite and every integer fits 64 bits."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and abs(value) > INT64_MAX:
        raise _NotSane(*[f"{value!r} is beyond the 64-bit integer range"] * 2)
    if isinstance(value, float) and not math.isfinite(value):
        raise _NotSane(*[f"{value!r} is not a finite number"] * 2)
    if isinstance(value, Mapping):
        for v in value.values():
            _sane(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _sane(v)
    return value


def _fits(value: Any, base: Any) -> tuple[bool, Any]:
    """(whether ``value`` has the type ``base``, the value normalised), markers aside."""
    origin = typing.get_origin(base)
    if base is type(None):
        return value is None, value
    if base is bool:
        return isinstance(value, bool), value
    if base is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= INT64_MAX, value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return math.isfinite(float(value)), float(value)
        except OverflowError:  # an integer too large for a float
            return False, value
    if base is str:
        return isinstance(value, str), value
    if origin in _SEQUENCES or base in _SEQUENCES:
        if not isinstance(value, (list, tuple)):
            return False, value
        args = [a for a in typing.get_args(base) if a is not Ellipsis]
        return True, ([conform(v, args[0]) for v in value] if args else _sane(list(value)))
    if base in (dict, Mapping) or origin in (dict, Mapping):
        return isinstance(value, Mapping), _sane(value)
    if isinstance(base, type):
        return isinstance(value, base), value
    return True, _sane(value)


def conform(value: Any, annotation: Any) -> Any:
    """``value`` checked against ``annotation`` (type, ``Range``, ``Choice``, ``Pattern``) and
    normalised; raises ``Invalid`` saying what was expected. Undeclared (``Any``, no annotation,
    an annotation that did not evaluate): only kept sane.

    >>> conform(3, Annotated[int, Range(min=1)]), conform(1, Positive)  # a declared float comes back a float
    (3, 1.0)
    >>> conform(0, Annotated[int, Range(min=1)])
    Traceback (most recent call last):
    ...
    baselines.constraints.Invalid: expected an integer >= 1, got 0
    >>> conform("normal", Annotated[str, Choice("gaussian", "rademacher")])
    Traceback (most recent call last):
    ...
    baselines.constraints.Invalid: expected one of gaussian, rademacher, got 'normal'
    """
    base, marks = _parts(annotation)
    if _unchecked(base):
        try:
            return _sane(value)
        except _NotSane as err:
            raise Invalid(f"got {value!r}: {err.reason}") from None
    alternatives = _alternatives(base)
    given = value
    try:
        if alternatives is not None:
            insane = None  # an alternative of the right type whose numbers are not sane says why
            for alternative in alternatives:
                try:
                    value = conform(value, alternative)
                    break
                except _NotSane as err:
                    insane = err
                except Invalid:
                    continue
            else:
                raise insane or Invalid("")
        else:
            ok, value = _fits(value, base)
            if not ok:
                raise Invalid("")
        if value is not None and not all(m.admits(value) for m in marks):
            raise Invalid("")
    except Invalid as err:
        reason = getattr(err, "reason", "")
        why = ""
        if isinstance(given, int) and not isinstance(given, bool) and abs(given) > INT64_MAX:
            why = " (beyond the 64-bit integer range)"
        elif isinstance(given, float) and not math.isfinite(given):
            why = " (not a finite number)"
        elif reason:
            why = f" ({reason})"
        message = f"expected {describe(annotation)}, got {given!r}{why}"
        raise (_NotSane(message, reason) if reason else Invalid(message)) from None
    return value
