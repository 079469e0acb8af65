"""Small statistics without scipy (``flowbench check`` stays fast): the standard error, Student's t
distribution and Welch's t-test from summary numbers (mean, sample std, n)."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["betainc", "ShiftBounds", "shift_bounds", "seeds_to_settle", "standard_error", "t_ppf", "t_sf", "Welch",
           "welch"]


def standard_error(std: float, n: int) -> float:
    """std / sqrt(n) for n > 1 (NaN otherwise: one seed says nothing about the spread)."""
    return std / math.sqrt(n) if n and n > 1 and std == std else math.nan


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with ``df`` degrees of freedom."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return tail if t > 0 else 1.0 - tail


@dataclass(frozen=True)
class Welch:
    """Welch's t-test of mean_b - mean_a: the statistic, its degrees of freedom and one-sided p-values."""

    t: float
    df: float
    p_greater: float  # P(a difference this large | equal means), for mean_b > mean_a
    p_less: float


def welch(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int) -> Welch:
    """Welch's unequal-variance t-test from summaries (sample stds); needs n >= 2 on both sides.

    Zero spread on both sides: any difference is certain (p 0), none is no evidence (p 1).
    """
    if n_a < 2 or n_b < 2:
        raise ValueError("Welch's t-test needs at least two values on each side")
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    diff = mean_b - mean_a
    if va + vb == 0.0:
        return Welch(math.copysign(math.inf, diff) if diff else 0.0, math.inf,
                     0.0 if diff > 0 else 1.0, 0.0 if diff < 0 else 1.0)
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))
    upper = t_sf(t, df)
    return Welch(t, df, upper, 1.0 - upper)


def t_ppf(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (p in (0, 1); bisection on
    ``t_sf``, to 1e-10)."""
    if not 0 < p < 1:
        raise ValueError(f"a quantile needs 0 < p < 1, got {p}")
    if p < 0.5:
        return -t_ppf(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_sf(hi, df) > 1 - p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_sf(mid, df) > 1 - p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class ShiftBounds:
    """One-sided confidence bounds of a shift ``mean_b - mean_a`` between two samples: each bound
    holds with probability 1 - alpha on its own (Welch's degrees of freedom)."""

    shift: float
    lower: float
    upper: float
    df: float


def _welch_df(va: float, vb: float, n_a: int, n_b: int) -> float:
    return (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1))


def shift_bounds(mean_a: float, std_a: float, n_a: int, mean_b: float, std_b: float, n_b: int,
                 alpha: float) -> ShiftBounds:
    """Bounds of ``mean_b - mean_a`` from two samples' summaries (sample stds, n >= 2 each, not both
    spreads zero: without a spread there is no bound, and the caller must not pretend there is)."""
    if n_a < 2 or n_b < 2:
        raise ValueError("bounds of a shift need at least two values on each side")
    va, vb = std_a ** 2 / n_a, std_b ** 2 / n_b
    if not va + vb > 0:
        raise ValueError("bounds of a shift need a spread on at least one side")
    df = _welch_df(va, vb, n_a, n_b)
    half = t_ppf(1 - alpha, df) * math.sqrt(va + vb)
    shift = mean_b - mean_a
    return ShiftBounds(shift, shift - half, shift + half, df)


def seeds_to_settle(shift: float, std_a: float, std_b: float, tolerance: float, alpha: float,
                    limit: int = 1000) -> int | None:
    """The fewest seeds a side (n on both) at which, with these spreads and this observed shift, the
    one-sided bound would clear ``tolerance``: the lower bound above it when the shift is above it,
    the upper bound at or below it otherwise. None when even ``limit`` seeds would not (a shift at
    the tolerance itself, or no spread to go on)."""
    margin = abs(shift - tolerance)
    if not margin > 0 or not (std_a > 0 or std_b > 0):
        return None
    for n in range(2, limit + 1):
        va, vb = std_a ** 2 / n, std_b ** 2 / n
        if t_ppf(1 - alpha, _welch_df(va, vb, n, n)) * math.sqrt(va + vb) < margin:
            return n
    return None
