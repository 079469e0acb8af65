"""The eight 2-D toy densities of FFJORD, generated from a seed, with labels.

Each generator draws i.i.d. points (angles are sampled, not laid on a grid, so the three splits
come from one density) and a natural component label (the Gaussian, ring, arm, spiral, moon or
square a point came from), which the conditional suites use as the class.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from baselines.constraints import Count, Seed
from bench.data.base import GENERATED
from bench.data.registry import register_dataset

__all__ = ["GENERATORS", "DESCRIPTIONS", "sample", "load"]

Generator = Callable[[np.random.Generator, int], tuple[np.ndarray, np.ndarray]]


def swissroll(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    xyz = np.stack([t * np.cos(t), 21 * rng.random(n), t * np.sin(t)], 1) + rng.standard_normal((n, 3))
    return xyz[:, [0, 2]] / 5, (t > 3 * math.pi).astype(np.int64)


def circles(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    label = rng.integers(0, 2, n)
    theta = 2 * math.pi * rng.random(n)
    radius = np.where(label == 0, 1.0, 0.5)
    x = np.stack([np.cos(theta), np.sin(theta)], 1) * radius[:, None]
    return (x + 0.08 * rng.standard_normal((n, 2))) * 3, label


def rings(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    label = rng.integers(0, 4, n)
    theta = 2 * math.pi * rng.random(n)
    radius = 1.0 - 0.25 * label
    x = np.stack([np.cos(theta), np.sin(theta)], 1) * radius[:, None] * 3.0
    return x + 0.08 * rng.standard_normal((n, 2)), label


def moons(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    label = rng.integers(0, 2, n)
    theta = math.pi * rng.random(n)
    upper = np.stack([np.cos(theta), np.sin(theta)], 1)
    lower = np.stack([1 - np.cos(theta), 0.5 - np.sin(theta)], 1)
    x = np.where(label[:, None] == 0, upper, lower) + 0.1 * rng.standard_normal((n, 2))
    return x * 2 + np.array([-1.0, -0.2]), label


def eight_gaussians(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    s = 1 / math.sqrt(2)
    centers = 4.0 * np.array([(1, 0), (-1, 0), (0, 1), (0, -1), (s, s), (s, -s), (-s, s), (-s, -s)])
    label = rng.integers(0, 8, n)
    x = centers[label] + 0.5 * rng.standard_normal((n, 2))
    return x / 1.414, label


def pinwheel(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    arms, rate = 5, 0.25
    label = rng.integers(0, arms, n)
    features = rng.standard_normal((n, 2)) * np.array([0.3, 0.1])
    features[:, 0] += 1.0
    angle = 2 * math.pi * label / arms + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    x = np.stack([features[:, 0] * cos + features[:, 1] * sin, -features[:, 0] * sin + features[:, 1] * cos], 1)
    return 2 * x, label


def two_spirals(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    label = rng.integers(0, 2, n)
    t = np.sqrt(rng.random(n)) * 540 * (2 * math.pi) / 360
    x = np.stack([-np.cos(t) * t + 0.5 * rng.random(n), np.sin(t) * t + 0.5 * rng.random(n)], 1)
    x = np.where(label[:, None] == 0, x, -x) / 3
    return x + 0.1 * rng.standard_normal((n, 2)), label


def checkerboard(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    x1 = 4 * rng.random(n) - 2
    x2 = rng.random(n) - 2 * rng.integers(0, 2, n) + np.floor(x1) % 2
    col, row = np.floor(x1).astype(np.int64) + 2, np.floor(x2).astype(np.int64) + 2
    return np.stack([x1, x2], 1) * 2, (row * 4 + col) // 2


GENERATORS: dict[str, tuple[Generator, int]] = {  # name -> (generator, number of labels)
    "swissroll": (swissroll, 2),
    "circles": (circles, 2),
    "rings": (rings, 4),
    "moons": (moons, 2),
    "8gaussians": (eight_gaussians, 8),
    "pinwheel": (pinwheel, 5),
    "2spirals": (two_spirals, 2),
    "checkerboard": (checkerboard, 8),
}


def sample(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points (float32, n x 2) and their component labels (int64) of toy density ``name``."""
    generator, _ = GENERATORS[name]
    x, y = generator(np.random.default_rng(seed), n)
    return x.astype(np.float32), y.astype(np.int64)


DESCRIPTIONS = {
    "swissroll": "2-D swiss roll (FFJORD toy)",
    "circles": "2-D two concentric circles (FFJORD toy)",
    "rings": "2-D four concentric rings (FFJORD toy)",
    "moons": "2-D two moons (FFJORD toy)",
    "8gaussians": "2-D mixture of 8 Gaussians on a circle (FFJORD toy)",
    "pinwheel": "2-D pinwheel with 5 arms (FFJORD toy)",
    "2spirals": "2-D two interleaved spirals (FFJORD toy)",
    "checkerboard": "2-D 4x4 checkerboard (FFJORD toy)",
}


def load(name: str, root: Path | None = None, *, n_train: Count = 20_000, n_val: Count = 5_000,
         n_test: Count = 20_000, seed: Seed = 0):
    """Fixed-size train/val/test splits of one toy density, drawn from ``seed``."""
    import torch

    from bench.data.base import DataInfo, Dataset, Split

    x, y = sample(name, n_train + n_val + n_test, seed)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    cuts = (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None))
    splits = [Split(x[c], y[c]) for c in cuts]
    info = DataInfo(name=name, kind="toy", shape=(2,), num_classes=GENERATORS[name][1], metric="nll",
                    notes=f"generated, seed {seed}, {n_train}/{n_val}/{n_test}")
    return Dataset(info, *splits)


for _name, _description in DESCRIPTIONS.items():  # one loader, eight datasets
    register_dataset(_name, kind="toy", description=_description, files=GENERATED)(load)
