"""Bits/dim bookkeeping against hand computations, and end to end through an image dataset's preprocessing."""

from __future__ import annotations

import math

import pytest
import torch

from bench.data import load_dataset
from bench.data.base import DataInfo
from bench.metrics import bits_per_dim, nll_from_bits_per_dim, reported_metrics
from bench.train import evaluate


def test_bits_per_dim_by_hand():
    # 100 nats over 784 dims in [0,1)^D: (100 + 784 ln 256) / (784 ln 2) = 100 / 543.42739 + 8 = 8.1840172
    assert bits_per_dim(100.0, 784, 256) == pytest.approx(8.1840172, abs=1e-7)
    # a uniform density on [0,1)^D (NLL 0) is log2(levels) bits: 8 for bytes, log2 17 = 4.0874628 for digits
    assert bits_per_dim(0.0, 3072, 256) == pytest.approx(8.0)
    assert bits_per_dim(0.0, 64, 17) == pytest.approx(4.0874628, abs=1e-7)
    # FFJORD's formula: -(mean log p(x) / D - log 256) / log 2 with log p in [0,1) space
    assert bits_per_dim(-500.0, 784) == pytest.approx(-((500.0 / 784) - math.log(256)) / math.log(2))
    assert nll_from_bits_per_dim(bits_per_dim(123.4, 64, 17), 64, 17) == pytest.approx(123.4)


def test_reported_metrics_add_bits_per_dim_twins_only_for_quantised_data():
    image = DataInfo("d", "image", (1, 8, 8), levels=17, metric="bpd")
    out = reported_metrics(image, {"nll": 10.0, "nll_marginal": 12.0, "error": 0.5})
    assert out["bpd"] == pytest.approx((10.0 + 64 * math.log(17)) / (64 * math.log(2)))
    assert out["bpd_marginal"] == pytest.approx(bits_per_dim(12.0, 64, 17)) and "bpd_error" not in out
    assert reported_metrics(DataInfo("t", "tabular", (6,)), {"nll": 1.0}) == {"nll": 1.0}


class LogitUniform(torch.nn.Module):
    """The exact density of y = logit(alpha + (1 - 2 alpha) u) for u ~ U(0,1)^D: log p(y) = -log|dy/du|."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def evaluate(self, y, labels=None):
        s = torch.sigmoid(y.double())
        log_dy_du = math.log1p(-2 * self.alpha) - torch.log(s) - torch.log1p(-s)
        return {"nll": log_dy_du.flatten(1).sum(1)}


@pytest.mark.parametrize("logit", [True, False])
def test_uniform_model_through_digits_preprocessing_gives_log2_17_bits(logit):
    """The harness removes the preprocessing log-determinant: the uniform density is log2(17) bits/dim."""
    data = load_dataset("digits", {"logit": logit, "alpha": 0.05})
    model = LogitUniform(0.05) if logit else _Uniform()
    out = evaluate(model, data, data.test, torch.device("cpu"), batch_size=100)
    assert out["bpd"] == pytest.approx(math.log2(17), abs=1e-4)
    assert out["nll"] == pytest.approx(0.0, abs=1e-3)


class _Uniform(torch.nn.Module):
    def evaluate(self, y, labels=None):  # y = u - 0.5 on [-0.5, 0.5)^D: density 1
        return {"nll": torch.zeros(y.shape[0], dtype=torch.float64)}


def test_one_table_of_metric_definitions_read_by_spec_report_and_check():
    import csv

    from bench import check, metrics, spec
    from bench.errors import FlowbenchError
    from bench.published import PUBLISHED_CSV

    assert spec.METRICS == ("auto", *metrics.SUITE_METRICS) and "mse" in metrics.SUITE_METRICS
    with open(PUBLISHED_CSV, newline="") as f:
        for row in csv.DictReader(f):  # every published metric is defined, in the unit the file uses
            assert metrics.METRICS[row["metric"]].unit == row["unit"], row
    nll, marginal = metrics.METRICS["nll"], metrics.METRICS["nll_marginal"]
    assert nll.marginal == "nll_marginal" and nll.unit == marginal.unit == "nats" and nll.family == "nll"
    assert metrics.METRICS["nll_conditional"].source == "test.nll" and metrics.METRICS["nll_conditional"].published_name == "nll"
    assert metrics.METRICS["nfe_train"].source == "nfe.train_total" and metrics.METRICS["params"].family is None
    assert metrics.METRICS["train_seconds"].published_name == "train_hours"
    assert check.tolerance_for("mse_extrapolation", {}) == ("rel", 0.1)
    with pytest.raises(FlowbenchError, match='"likelihood" is not a quantity check compares'):
        check.tolerance_for("likelihood", {})
    with pytest.raises(FlowbenchError, match='--metric: unknown metric "nlll" \\(did you mean "nll"\\?\\)'):
        metrics.get_metric("nlll", "--metric")
    with pytest.raises(FlowbenchError, match='unknown tolerance family "speed"'):
        metrics.register_metric(metrics.Metric("fps", "frames/s", "frames per second", "speed"))
    metrics.register_metric(metrics.Metric("kl", "nats", "test KL", "nll"))
    try:
        assert check.tolerance_for("kl", {"nll": 0.2}) == ("abs", 0.2)
    finally:
        del metrics.METRICS["kl"]
