"""Build a shipped suite's model as the harness builds it, without the data files (shape only)."""

from __future__ import annotations

from typing import Any

from bench.data.base import DataInfo

IMAGE_SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
TABULAR_DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}  # MAF's preprocessed sets


def build_from_suite(suite: str, model: str, dataset: str) -> Any:
    """The model of the seed-0 run of (model, dataset) in ``suite``, on an image DataInfo of that shape
    (a tabular one of the set's dimension for the MAF tabular sets)."""
    from baselines.registry import get_builder
    from bench.spec import load_suite

    (spec,) = [s for s in load_suite(suite).runs(only={"model": {model}, "dataset": {dataset}}) if s.seed == 0]
    if dataset in TABULAR_DIMS:
        info = DataInfo(dataset, "tabular", (TABULAR_DIMS[dataset],))
    else:
        info = DataInfo(dataset, "image", IMAGE_SHAPES[dataset], num_classes=10, metric="bpd", levels=256)
    return get_builder(spec.model)(info, **spec.model_config)
