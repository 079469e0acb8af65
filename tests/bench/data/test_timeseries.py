"""InfoCNF's spirals (geometry, parameter statistics, windows, noise) and the 1-D three-Gaussian mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bench.data import load_dataset
from bench.data.timeseries import T_END, make_spirals, mixture_log_density, spiral_curves
from bench.errors import FlowbenchError


def test_spiral_curves_follow_the_two_formulas():
    a, b = np.array([1.0, 1.0]), np.array([0.25, 0.25])
    curves = spiral_curves(a, b, np.array([True, False]), 1000)
    t = np.linspace(0, T_END, 1000)
    z = T_END + 1 - t
    r_cw = 1.0 + 0.25 * 50 / z
    np.testing.assert_allclose(curves[0, :, 0], r_cw * np.cos(z) - 5)
    np.testing.assert_allclose(curves[0, :, 1], r_cw * np.sin(z))
    np.testing.assert_allclose(np.hypot(curves[1, :, 0] - 5, curves[1, :, 1]), 1.0 + 0.25 * t)
    assert curves[0, :, 0].mean() < 0 < curves[1, :, 0].mean()  # centred at -5 and +5


def test_spiral_statistics_windows_and_noise():
    d = make_spirals(5000, seed=0)
    assert d["x"].shape == (5000, 400, 2) and d["truth"].shape == (5000, 400, 2)
    assert d["direction"].sum() == 2500  # half each way
    assert abs(d["a"].mean() - 1.0) < 0.005 and abs(d["a"].std() - 0.08) < 0.005
    assert abs(d["b"].mean() - 0.25) < 0.002 and abs(d["b"].std() - 0.03) < 0.002
    assert d["start"].min() >= 200 and d["start"].max() <= 1000 - 400
    noise = (d["x"] - d["truth"]).astype(np.float64)
    assert abs(noise.std() - 0.3) < 0.003 and abs(noise.mean()) < 0.003
    np.testing.assert_allclose(np.diff(d["t"]), T_END / 999, rtol=1e-4)  # equally spaced
    # every window is a slice of its own noise-free spiral
    i = 7
    curve = spiral_curves(d["a"][i:i + 1].astype(np.float64), d["b"][i:i + 1].astype(np.float64),
                          d["direction"][i:i + 1] == 0, 1000)[0]
    np.testing.assert_allclose(d["truth"][i], curve[d["start"][i]:d["start"][i] + 400], atol=1e-5)


def test_spirals_dataset_splits_labels_and_determinism():
    opts = {"n_spirals": 300, "n_val": 50, "n_test": 50, "seed": 3}
    data = load_dataset("spirals", opts)
    assert [len(s) for s in (data.train, data.val, data.test)] == [200, 50, 50]
    assert data.info.kind == "timeseries" and data.info.shape == (400, 2) and data.info.num_classes == 2
    assert data.info.extra["n_observed"] == 200 and data.info.extra["t"].shape == (400,)
    assert data.info.extra["params"]["test"].shape == (50, 2) and data.info.extra["truth"]["val"].shape == (50, 400, 2)
    assert data.train.y.dtype == torch.int64 and set(data.train.y.tolist()) == {0, 1}
    again = make_spirals(300, seed=3)
    assert np.array_equal(data.test.x.numpy(), again["x"][250:])
    with pytest.raises(FlowbenchError, match=r"window 600 and horizon 200 need 2 x window \+ horizon <= length 1000"):
        make_spirals(10, window=600)


def test_mixture1d_samples_its_density():
    data = load_dataset("mixture1d", {"n_train": 30000, "n_val": 10, "n_test": 20000, "seed": 1})
    x = data.train.x[:, 0].double().numpy()
    y = data.train.y.numpy()
    assert data.info.shape == (1,) and data.info.num_classes == 3
    assert np.allclose(np.bincount(y) / len(y), 1 / 3, atol=0.01)
    for k, mu in enumerate((-2.0, 0.0, 2.0)):
        assert abs(x[y == k].mean() - mu) < 0.02 and abs(x[y == k].std() - 0.5) < 0.02
    mu, sd, w = np.array([-2.0, 0, 2]), np.full(3, 0.5), np.full(3, 1 / 3)
    grid = np.linspace(-8, 8, 20001)
    integral = np.exp(mixture_log_density(grid, mu, sd, w)).sum() * (grid[1] - grid[0])
    assert abs(integral - 1) < 1e-6
    floor = data.info.extra["test_nll_of_true_density"]
    assert 0.5 * math.log(2 * math.pi * math.e * 0.25) < floor < 0.5 * math.log(2 * math.pi * math.e * 0.25) + math.log(3)
    with pytest.raises(FlowbenchError, match=r'load_dataset\("mixture1d"\)\.means: expected numbers separated by commas'):
        load_dataset("mixture1d", {"means": "a,b"})


def test_spirals_targets_all_carries_direction_and_parameters():
    opts = {"n_spirals": 120, "n_val": 20, "n_test": 20, "length": 200, "window": 30, "horizon": 10,
            "seed": 4}
    plain = load_dataset("spirals", opts)
    full = load_dataset("spirals", {**opts, "targets": "all"})
    for name in ("train", "val", "test"):
        p, f = getattr(plain, name), getattr(full, name)
        assert torch.equal(p.x, f.x) and f.y.shape == (len(p), 3) and f.y.dtype == torch.float32
        assert torch.equal(f.y[:, 0].long(), p.y)  # the direction, as the default targets give it
        assert torch.equal(f.y[:, 1:], full.info.extra["params"][name])  # (a, b) of each spiral
    with pytest.raises(FlowbenchError, match=r'load_dataset\("spirals"\)\.targets: expected one of direction, all'):
        load_dataset("spirals", {**opts, "targets": "both"})
