"""Metrics, defined once: NLL <-> bits/dim, the reported metrics of a dataset, memory, timing.

Bits/dim follows FFJORD and RealNVP: the model's NLL of the dequantised data scaled to [0, 1)^D
(after undoing every preprocessing log-determinant) becomes the NLL of the same data on the
``levels``-valued grid [0, levels)^D by adding ``D ln(levels)``, then is divided by ``D ln 2``.
"""

from __future__ import annotations

import math
import resource
import sys
from typing import Any

LN2 = math.log(2.0)


def bits_per_dim(nll_unit: float, dim: int, levels: int = 256) -> float:
    """Bits/dim of ``levels``-valued data from the mean NLL (nats) of its [0, 1)-scaled version."""
    return (nll_unit + dim * math.log(levels)) / (dim * LN2)


def nll_from_bits_per_dim(bpd: float, dim: int, levels: int = 256) -> float:
    """The inverse of ``bits_per_dim``: mean NLL (nats) in the [0, 1)-scaled space."""
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
