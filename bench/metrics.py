"""Metrics, defined once: NLL <-> bits/dim, the reported metrics of a dataset, memory, timing, and
the table of metric definitions (``METRICS``: unit, direction, tolerance family, label) that the
suites, the report and the regression check all read.

Bits/dim follows FFJORD and RealNVP: the model's NLL of the dequantised data scaled to [0, 1)^D
(after undoing every preprocessing log-determinant) becomes the NLL of the same data on the
``levels``-valued grid [0, levels)^D by adding ``D ln(levels)``, then is divided by ``D ln 2``.
"""

from __future__ import annotations

import math
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["bits_per_dim", "get_metric", "headline_of", "LN2", "Metric", "METRICS", "nll_from_bits_per_dim",
           "peak_memory_mb", "register_metric", "reported_metrics", "SUITE_METRICS", "suite_metric_names",
           "TOLERANCE_FAMILIES"]

LN2 = math.log(2.0)


def bits_per_dim(nll_unit: float, dim: int, levels: int = 256) -> float:
    """Bits/dim of ``levels``-valued data from the mean NLL (nats) of its [0, 1)-scaled version.

    The uniform density on [0, 1)^D (NLL 0) spends log2(levels) bits on every dimension:

    >>> bits_per_dim(0.0, 3 * 32 * 32), bits_per_dim(0.0, 64, levels=2)
    (8.0, 1.0)
    """
    return (nll_unit + dim * math.log(levels)) / (dim * LN2)


def nll_from_bits_per_dim(bpd: float, dim: int, levels: int = 256) -> float:
    """The inverse of ``bits_per_dim``: mean NLL (nats) in the [0, 1)-scaled space.

    >>> round(nll_from_bits_per_dim(bits_per_dim(-1000.0, 784), 784), 6)
    -1000.0
    """
    return bpd * dim * LN2 - dim * math.log(levels)


def reported_metrics(info: Any, means: dict[str, float]) -> dict[str, float]:
    """Per-example means of a split -> the metrics a report shows.

    Every ``nll*`` term (nats, data space) is kept; for quantised data (``info.levels``) each one
    also gets its bits/dim twin (``nll`` -> ``bpd``, ``nll_marginal`` -> ``bpd_marginal``).
    """
    out = dict(means)
    if getattr(info, "levels", None):
        for key, value in means.items():
            if key == "nll" or key.startswith("nll_"):
                out["bpd" + key[3:]] = bits_per_dim(value, info.dim, info.levels)
    return out


def peak_memory_mb(device: Any = None) -> float:
    """Peak memory of this run: CUDA's allocator peak on a GPU, the process's max RSS on a CPU."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


# -- metric definitions: read by spec (suite metrics), report (tables), check (tolerances) --------------
@dataclass(frozen=True)
class Metric:
    """One quantity a report shows or a check compares, defined once.

    ``column``: where a record holds it (default ``test.<name>``); ``family``: the tolerance family
    ``flowbench check`` applies (None: never checked); ``published``: the metric name of
    ``baselines/published.csv`` rows measuring the same thing (default the name; None: no published
    rows), with ``published_scale`` converting their unit to this one (hours -> seconds).
    """

    name: str
    unit: str
    label: str
    family: str | None = None
    direction: str = "lower"  # "lower" or "higher" is better
    column: str = ""
    digits: int = 3
    rank: bool = True  # the best cell of a column is bold
    spread: bool = True  # tables show ± std over seeds (not for a constant of the configuration)
    published: str | None = ""
    published_scale: float = 1.0
    marginal: str | None = None  # a conditional model's marginal twin: its headline instead of this
    suite_metric: bool = False  # may be a suite's `metric:` (a test term every run of its data reports)
    protocol: tuple[tuple[str, str], ...] = ()  # protocol fields this metric sets (bench.protocol), e.g. checkpoint

    @property
    def source(self) -> str:
        """The record column holding the metric."""
        return self.column or f"test.{self.name}"

    @property
    def published_name(self) -> str | None:
        """The published.csv metric this one is compared with (None: none is)."""
        return self.name if self.published == "" else self.published

    @property
    def sign(self) -> int:
        """+1 when lower is better, -1 when higher is."""
        return 1 if self.direction == "lower" else -1


# tolerance families of `flowbench check`: (kind, default). "abs": in the metric's unit; "rel": a fraction of the pinned mean
TOLERANCE_FAMILIES: dict[str, tuple[str, float]] = {
    "nll": ("abs", 0.05),  # nats
    "bpd": ("abs", 0.01),  # bits/dim
    "error": ("abs", 1.0),  # percentage points
    "mse": ("rel", 0.10),
    "nfe": ("rel", 0.10),
    "time": ("rel", 1.0),  # wall-clock differs between machines: only a doubling fails by default
}

_NLL = "NLL −log p(x)"
METRICS: dict[str, Metric] = {m.name: m for m in (
    # density: a conditional model's `nll` is -log p(x|y); its headline is the marginal -log p(x)
    Metric("nll", "nats", f"test {_NLL}", "nll", marginal="nll_marginal", suite_metric=True),
    Metric("nll_marginal", "nats", f"test marginal {_NLL}", "nll", suite_metric=True),
    Metric("nll_conditional", "nats", "test conditional NLL −log p(x|y) (conditional models)", "nll",
           column="test.nll", published="nll"),
    Metric("bpd", "bits/dim", "test bits/dim of p(x)", "bpd", marginal="bpd_marginal", suite_metric=True),
    Metric("bpd_marginal", "bits/dim", "test marginal bits/dim of p(x)", "bpd", suite_metric=True),
    Metric("bpd_conditional", "bits/dim", "test conditional bits/dim of p(x|y) (conditional models)", "bpd",
           column="test.bpd", published="bpd"),
    Metric("error", "%", "test error (%)", "error", digits=2, suite_metric=True),
    Metric("error_min", "%", "lowest test error over training (%)", "error", digits=2, published="error",
           protocol=(("checkpoint", "lowest"),)),
    # time series (LatentODE)
    Metric("mse", "MSE", "test trajectory MSE (observed window)", "mse", digits=4, suite_metric=True),
    Metric("mse_extrapolation", "MSE", "test trajectory MSE (extrapolation)", "mse", digits=4, suite_metric=True),
    # InfoCNF with learned tolerances, evaluated at them (eval_learned_tolerance)
    Metric("nll_learned", "nats", "test conditional NLL at the learned tolerances", "nll"),
    Metric("bpd_learned", "bits/dim", "test conditional bits/dim at the learned tolerances", "bpd"),
    Metric("error_learned", "%", "test error at the learned tolerances (%)", "error", digits=2),
    # cost; every NFE says which count it is
    Metric("nfe_forward", "evaluations", "NFE per training step, forward solve", "nfe", column="nfe.train_forward",
           digits=1),
    Metric("nfe_backward", "evaluations", "NFE per training step, backward pass", "nfe",
           column="nfe.train_backward", digits=1),
    Metric("nfe_train", "evaluations", "NFE per training step, forward + backward", "nfe", column="nfe.train_total",
           digits=1),
    Metric("nfe_test", "evaluations", "NFE per test batch (evaluation, forward)", "nfe", column="nfe.test_forward",
           digits=1),
    Metric("train_seconds", "seconds", "training wall-clock", "time", column="train_seconds", digits=2,
           published="train_hours", published_scale=3600.0),
    Metric("params", "parameters", "trainable parameters", None, column="params", digits=0, rank=False,
           spread=False, published=None),
    # only in published.csv
    Metric("train_hours", "hours", "training wall-clock (hours)", "time", column="-"),
    Metric("seconds_per_batch", "seconds", "seconds per training batch", "time", column="-"),
    Metric("rel_error_reduction", "%", "relative test-error reduction (%)", None, "higher", column="-"),
    Metric("rel_nfe_reduction", "%", "relative NFE reduction (%)", None, "higher", column="-"),
)}
SUITE_METRICS = tuple(name for name, m in METRICS.items() if m.suite_metric)  # the built-in ones


def suite_metric_names() -> tuple[str, ...]:
    """The metrics a suite's `metric:` may name, those of registered plugins included (read now)."""
    return tuple(name for name, m in METRICS.items() if m.suite_metric)


def headline_of(metric: str, test: Mapping[str, Any]) -> tuple[str, Any]:
    """(field, value) of a run's headline among its test terms: the marginal twin where the model
    reports one (a conditional model's -log p(x)), else the metric itself.

    >>> headline_of("nll", {"nll": 1.2, "nll_marginal": 1.1}), headline_of("nll", {"nll": 1.2})
    (('nll_marginal', 1.1), ('nll', 1.2))
    """
    twin = METRICS[metric].marginal if metric in METRICS else None
    if twin and isinstance(test.get(twin), (int, float)):
        return twin, test[twin]
    return metric, test.get(metric)


def get_metric(name: str, where: str = "metric") -> Metric:
    """The definition of ``name``; a FlowbenchError naming ``where`` for an unknown one.

    >>> bpd = get_metric("bpd")
    >>> bpd.unit, bpd.direction, bpd.source, get_metric("nfe_train").source
    ('bits/dim', 'lower', 'test.bpd', 'nfe.train_total')
    >>> get_metric("bdp", where="suites/tiny.yaml: metric")
    Traceback (most recent call last):
    ...
    bench.errors.FlowbenchError: suites/tiny.yaml: metric: unknown metric "bdp" (did you mean "bpd"?)
    """
    from bench.errors import FlowbenchError, did_you_mean

    try:
        return METRICS[name]
    except KeyError:
        raise FlowbenchError(f'{where}: unknown metric "{name}"{did_you_mean(str(name), METRICS)}') from None


def register_metric(metric: Metric) -> None:
    """Add a plugin's metric (its test term, unit, tolerance family) to the table."""
    if metric.family is not None and metric.family not in TOLERANCE_FAMILIES:
        from bench.errors import FlowbenchError

        raise FlowbenchError(f'metric "{metric.name}": unknown tolerance family "{metric.family}"; '
                             f"use one of {', '.join(TOLERANCE_FAMILIES)} or None")
    METRICS[metric.name] = metric
