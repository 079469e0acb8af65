"""InfoCNF's generated data: bi-directional spirals (appendix E) and a 1-D mixture of three Gaussians (appendix C).

Spirals: ``n_spirals`` ground-truth spirals of ``length`` points on t in [0, 6 pi] (half clockwise,
R = a + 50 b / z with z = 6 pi + 1 - t and x = R cos z - 5; half counter-clockwise, R = a + b t,
x = R cos t + 5; y = R sin of the same angle), a ~ N(1.0, 0.08), b ~ N(0.25, 0.03) per spiral. Each
spiral gives one window of ``window`` equally spaced points starting at a uniform index in
[window, length - window - horizon] plus the next ``horizon`` points held out for extrapolation;
observations carry Gaussian noise of std ``noise``. ``Split.x`` is N x (window + horizon) x 2 (noisy),
``Split.y`` the direction (0 clockwise, 1 counter-clockwise); ``DataInfo.extra`` holds the shared
relative times, the number of observed points, and per split the noise-free truth and (a, b).
With ``targets="all"`` ``Split.y`` is instead float N x 3: (direction, a, b), so that batches carry
the spiral parameters (InfoCNF's partitioned latent ODE regresses them).
"""

from __future__ import annotations

import math
from pathlib import Path

from typing import Annotated

import numpy as np

from baselines.constraints import Choice, Count, NonNegative, NonNegInt, Pattern, Range, Seed
from bench.data.base import GENERATED
from bench.data.registry import register_dataset
from bench.errors import FlowbenchError

__all__ = ["T_END", "Numbers", "spiral_curves", "make_spirals", "load_spirals", "parse_floats", "mixture_params",
           "mixture_log_density", "load_mixture1d"]

Numbers = Annotated[str, Pattern(r"\s*[-+]?[0-9.eE+-]+(\s*,\s*[-+]?[0-9.eE+-]+)*\s*",
                                 'numbers separated by commas, e.g. "-2,0,2"')]

T_END = 6 * math.pi


def spiral_curves(a: np.ndarray, b: np.ndarray, clockwise: np.ndarray, length: int) -> np.ndarray:
    """Noise-free spirals, n x length x 2, on ``length`` equally spaced t in [0, 6 pi]."""
    t = np.linspace(0.0, T_END, length)[None, :]
    a, b, cw = a[:, None], b[:, None], clockwise[:, None]
    angle = np.where(cw, T_END + 1.0 - t, t)
    radius = np.where(cw, a + b * 50.0 / np.where(cw, angle, 1.0), a + b * angle)
    shift = np.where(cw, -5.0, 5.0)
    return np.stack([radius * np.cos(angle) + shift, radius * np.sin(angle)], axis=-1)


def make_spirals(n: int, length: int = 1000, window: int = 200, horizon: int = 200, noise: float = 0.3,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """``x`` (noisy windows + horizons), ``truth``, ``direction``, ``a``, ``b``, ``start`` and relative ``t``."""
    if window < 2 or horizon < 0 or 2 * window + horizon > length:
        raise FlowbenchError(f"spirals: window {window} and horizon {horizon} need 2 x window + horizon <= length "
                             f"{length}")
    rng = np.random.default_rng(seed)
    direction = np.zeros(n, dtype=np.int64)
    direction[rng.permutation(n)[: n // 2]] = 1  # exactly half counter-clockwise
    a = rng.normal(1.0, 0.08, n)
    b = rng.normal(0.25, 0.03, n)
    curves = spiral_curves(a, b, direction == 0, length)
    span = window + horizon
    start = rng.integers(window, length - span + 1, n)
    idx = start[:, None] + np.arange(span)[None, :]
    truth = np.take_along_axis(curves, idx[:, :, None], axis=1)
    x = truth + noise * rng.standard_normal(truth.shape)
    t = np.linspace(0.0, T_END, length)[:span]
    return {"x": x.astype(np.float32), "truth": truth.astype(np.float32), "direction": direction,
            "a": a.astype(np.float32), "b": b.astype(np.float32), "start": start, "t": t.astype(np.float32)}


@register_dataset("spirals", kind="timeseries", metric="mse", files=GENERATED,
                  description="InfoCNF's bi-directional spirals: 200 noisy points + extrapolation horizon")
def load_spirals(name: str, root: Path | None = None, *, n_spirals: Count = 5000, n_val: Count = 500,
                 n_test: Count = 500, length: Count = 1000, window: Annotated[int, Range(min=2)] = 200,
                 horizon: NonNegInt = 200, noise: NonNegative = 0.3, seed: Seed = 0,
                 targets: Annotated[str, Choice("direction", "all")] = "direction"):
    """InfoCNF's bi-directional spirals, split into train/val/test by spiral.

    ``targets``: "direction" (``y`` = direction, int64 N) or "all" (``y`` = float32 N x 3, (direction, a, b)).
    """
    import torch

    from bench.data.base import DataInfo, Dataset, Split

    if n_val < 1 or n_test < 1 or n_val + n_test >= n_spirals:
        raise FlowbenchError(f"spirals: n_val {n_val} and n_test {n_test} must be >= 1 and leave training spirals "
                             f"out of {n_spirals}")
    d = make_spirals(n_spirals, length, window, horizon, noise, seed)
    cuts = {"train": slice(0, n_spirals - n_val - n_test), "val": slice(n_spirals - n_val - n_test, n_spirals - n_test),
            "test": slice(n_spirals - n_test, None)}
    if targets == "all":
        y = np.stack([d["direction"].astype(np.float32), d["a"], d["b"]], 1)
    else:
        y = d["direction"]
    splits = {k: Split(torch.from_numpy(d["x"][c]), torch.from_numpy(y[c])) for k, c in cuts.items()}
    extra = {"t": torch.from_numpy(d["t"]), "n_observed": window, "horizon": horizon,
             "truth": {k: torch.from_numpy(d["truth"][c]) for k, c in cuts.items()},
             "params": {k: torch.from_numpy(np.stack([d["a"][c], d["b"][c]], 1)) for k, c in cuts.items()}}
    info = DataInfo(name=name, kind="timeseries", shape=(window + horizon, 2), num_classes=2, metric="mse",
                    notes=f"generated, seed {seed}: {n_spirals} spirals of {length} points, {window} observed + "
                          f"{horizon} extrapolated, noise std {noise}", extra=extra)
    return Dataset(info, splits["train"], splits["val"], splits["test"])


def parse_floats(text: str, what: str) -> np.ndarray:
    """'a,b,c' -> array of floats, with a clear error."""
    try:
        return np.array([float(v) for v in text.split(",")], dtype=np.float64)
    except ValueError:
        raise FlowbenchError(f'{what} "{text}": expected numbers separated by commas, e.g. "-2,0,2"') from None


def mixture_params(means: str, stds: str, weights: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (means, stds, weights) of the 1-D mixture; weights are normalised."""
    mu, sd, w = parse_floats(means, "means"), parse_floats(stds, "stds"), parse_floats(weights, "weights")
    if not len(mu) == len(sd) == len(w) or (sd <= 0).any() or (w <= 0).any():
        raise FlowbenchError("mixture1d: means, stds and weights need the same length, stds and weights > 0")
    return mu, sd, w / w.sum()


def mixture_log_density(x: np.ndarray, mu: np.ndarray, sd: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Exact log-density of the 1-D Gaussian mixture at ``x`` (the NLL floor a flow can reach)."""
    z = (x[:, None] - mu[None]) / sd[None]
    comp = np.log(w)[None] - 0.5 * z**2 - np.log(sd)[None] - 0.5 * math.log(2 * math.pi)
    top = comp.max(1, keepdims=True)
    return (top + np.log(np.exp(comp - top).sum(1, keepdims=True)))[:, 0]


@register_dataset("mixture1d", kind="toy", files=GENERATED,
                  description="1-D mixture of three Gaussians (InfoCNF appendix C)")
def load_mixture1d(name: str, root: Path | None = None, *, n_train: Count = 20_000, n_val: Count = 5_000,
                   n_test: Count = 20_000, means: Numbers = "-2,0,2", stds: Numbers = "0.5,0.5,0.5",
                   weights: Numbers = "1,1,1", seed: Seed = 0):
    """A 1-D mixture of three Gaussians (InfoCNF appendix C's tolerance audit); component = label."""
    import torch

    from bench.data.base import DataInfo, Dataset, Split

    mu, sd, w = mixture_params(means, stds, weights)
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    label = rng.choice(len(w), size=n, p=w)
    x = (mu[label] + sd[label] * rng.standard_normal(n)).astype(np.float32)
    cuts = (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None))
    splits = [Split(torch.from_numpy(x[c, None].copy()), torch.from_numpy(label[c].astype(np.int64))) for c in cuts]
    test_floor = float(-mixture_log_density(x[cuts[2]].astype(np.float64), mu, sd, w).mean())
    info = DataInfo(name=name, kind="toy", shape=(1,), num_classes=len(w), metric="nll",
                    notes=f"generated, seed {seed}: means {means}, stds {stds}, weights {weights}; "
                          f"{n_train}/{n_val}/{n_test}",
                    extra={"test_nll_of_true_density": test_floor})
    return Dataset(info, *splits)
