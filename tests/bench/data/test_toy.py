"""Toy densities: determinism per seed, split sizes, labels, and shapes of the known densities."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.data.toy import GENERATORS, sample


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_deterministic_per_seed(name):
    x0, y0 = sample(name, 2000, seed=3)
    x1, y1 = sample(name, 2000, seed=3)
    x2, _ = sample(name, 2000, seed=4)
    assert np.array_equal(x0, x1) and np.array_equal(y0, y1)
    assert not np.array_equal(x0, x2)
    assert x0.shape == (2000, 2) and x0.dtype == np.float32 and np.isfinite(x0).all()
    assert set(np.unique(y0)) == set(range(GENERATORS[name][1]))  # every component appears


def test_splits_are_fixed_size_and_disjoint():
    data = load_dataset("moons", {"n_train": 300, "n_val": 50, "n_test": 70, "seed": 1})
    assert (len(data.train), len(data.val), len(data.test)) == (300, 50, 70)
    assert data.info.shape == (2,) and data.info.kind == "toy" and data.info.num_classes == 2
    full = torch.cat([data.train.x, data.val.x, data.test.x])
    assert torch.equal(full, torch.from_numpy(sample("moons", 420, 1)[0]))
    assert len(torch.unique(full, dim=0)) == 420


def test_geometry_of_known_densities():
    x, y = sample("8gaussians", 40_000, 0)
    centres = np.stack([x[y == k].mean(0) for k in range(8)])
    assert np.allclose(np.linalg.norm(centres, axis=1), 4 / 1.414, atol=0.03)  # on a circle of radius 4/1.414
    assert np.allclose([x[y == k].std(0) for k in range(8)], 0.5 / 1.414, atol=0.02)
    x, y = sample("rings", 40_000, 0)
    radii = [np.linalg.norm(x[y == k], axis=1).mean() for k in range(4)]
    assert np.allclose(radii, [3.0, 2.25, 1.5, 0.75], atol=0.02)
    x, _ = sample("checkerboard", 40_000, 0)
    cells = (np.floor(x[:, 0] / 2) + np.floor(x[:, 1] / 2)) % 2  # occupied squares alternate
    assert len(np.unique(cells)) == 1 and np.abs(x).max() <= 4.0
