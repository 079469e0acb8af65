"""Dataset registry: name -> loader, kind and options, resolved lazily (no torch import to list).

A loader is ``load(name, root, **options) -> Dataset``. ``root`` is the data root given by
``--data-root``, the ``FLOWBENCH_DATA`` environment variable or the suite's ``data_root``;
generated datasets ignore it.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.data.base import DataInfo, Dataset, Split
from bench.errors import FlowbenchError, did_you_mean

__all__ = ["DataInfo", "Dataset", "Split", "REGISTRY", "dataset_names", "load_dataset", "resolve_root"]


@dataclass(frozen=True)
class DatasetEntry:
    loader: str  # "module:function"
    kind: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)  # option -> default (its type is the check)
    metric: str = "nll"  # the headline metric a suite's `metric: auto` resolves to


_TOY_OPTIONS = {"n_train": 20_000, "n_val": 5_000, "n_test": 20_000, "seed": 0}
_TOY_DESCRIPTIONS = {
    "swissroll": "2-D swiss roll (FFJORD toy)",
    "circles": "2-D two concentric circles (FFJORD toy)",
    "rings": "2-D four concentric rings (FFJORD toy)",
    "moons": "2-D two moons (FFJORD toy)",
    "8gaussians": "2-D mixture of 8 Gaussians on a circle (FFJORD toy)",
    "pinwheel": "2-D pinwheel with 5 arms (FFJORD toy)",
    "2spirals": "2-D two interleaved spirals (FFJORD toy)",
    "checkerboard": "2-D 4x4 checkerboard (FFJORD toy)",
}

REGISTRY: dict[str, DatasetEntry] = {
    name: DatasetEntry("bench.data.toy:load", "toy", desc, dict(_TOY_OPTIONS))
    for name, desc in _TOY_DESCRIPTIONS.items()
}


def dataset_names() -> list[str]:
    return sorted(REGISTRY)


def resolve_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data root: the explicit one (CLI or suite), else $FLOWBENCH_DATA, else None."""
    root = explicit or os.environ.get("FLOWBENCH_DATA")
    return Path(root).expanduser() if root else None


_cache: dict[tuple, Dataset] = {}


def load_dataset(name: str, options: dict[str, Any] | None = None, root: str | os.PathLike | None = None) -> Dataset:
    """Load (once per process) the dataset ``name`` with its options."""
    if name not in REGISTRY:
        raise FlowbenchError(f'unknown dataset "{name}"{did_you_mean(name, REGISTRY)}; '
                             "`flowbench list datasets` shows them all")
    entry = REGISTRY[name]
    options = {**entry.options, **(options or {})}
    root_path = resolve_root(root)
    key = (name, json.dumps(options, sort_keys=True, default=str), str(root_path))
    if key not in _cache:
        module, _, func = entry.loader.partition(":")
        loader = getattr(importlib.import_module(module), func)
        _cache[key] = loader(name, root_path, **options)
    return _cache[key]
