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


_IMAGE_OPTIONS = {"logit": True, "alpha": 1e-6, "dequantize": "uniform"}
# training-time augmentation of the full-size image sets (bench/data/images.py: make_preprocess)
_AUGMENT_OPTIONS = {"crop": 0, "crop_padding": "symmetric", "shift": 0.0}
_SKLEARN_OPTIONS = {"val_fraction": 0.1, "test_fraction": 0.2, "seed": 0}

REGISTRY.update({
    # MAF's five UCI sets (files of MAF's Zenodo archive under the data root)
    "power": DatasetEntry("bench.data.tabular:load", "tabular", "UCI household power, 6-D (MAF's preparation)",
                          {"cache": True}),
    "gas": DatasetEntry("bench.data.tabular:load", "tabular", "UCI gas sensors (ethylene CO), 8-D (MAF's preparation)",
                        {"cache": True}),
    "hepmass": DatasetEntry("bench.data.tabular:load", "tabular", "UCI HEPMASS signal, 21-D (MAF's preparation)",
                            {"cache": True}),
    "miniboone": DatasetEntry("bench.data.tabular:load", "tabular", "UCI MiniBooNE, 43-D (MAF's preparation)",
                              {"cache": True}),
    "bsds300": DatasetEntry("bench.data.tabular:load", "tabular", "BSDS300 8x8 patches, 63-D (MAF's preparation)",
                            {"cache": True}),
    # real tabular sets shipped with scikit-learn
    "wine": DatasetEntry("bench.data.sklearn_sets:load", "tabular", "scikit-learn wine, 13-D, 3 classes",
                         dict(_SKLEARN_OPTIONS)),
    "breast_cancer": DatasetEntry("bench.data.sklearn_sets:load", "tabular",
                                  "scikit-learn breast cancer, 30-D, 2 classes", dict(_SKLEARN_OPTIONS)),
    "iris": DatasetEntry("bench.data.sklearn_sets:load", "tabular", "scikit-learn iris, 4-D, 3 classes",
                         dict(_SKLEARN_OPTIONS)),
    "digits64": DatasetEntry("bench.data.sklearn_sets:load", "tabular",
                             "scikit-learn 8x8 digits as 64-D vectors, 10 classes", dict(_SKLEARN_OPTIONS)),
    # images (bits/dim)
    "mnist": DatasetEntry("bench.data.images:load_mnist", "image",
                          "MNIST 1x28x28 from the IDX files (pad 2, channels 3: Glow/i-ResNet's 3x32x32), 10 classes",
                          {"n_val": 5000, "pad": 0, "channels": 1, **_IMAGE_OPTIONS, "flip": False,
                           **_AUGMENT_OPTIONS, "verify": True}, metric="bpd"),
    "cifar10": DatasetEntry("bench.data.images:load_cifar10", "image", "CIFAR10 3x32x32 from the pickled batches",
                            {"n_val": 5000, "flip": True, **_IMAGE_OPTIONS, **_AUGMENT_OPTIONS, "verify": True},
                            metric="bpd"),
    "mnist10k": DatasetEntry("bench.data.images:load_mnist10k", "image",
                             "8,000/1,000/1,000 split of the real MNIST TEST set (small runs, not the benchmark)",
                             {"n_train": 8000, "n_val": 1000, "seed": 0, **_IMAGE_OPTIONS, "verify": True},
                             metric="bpd"),
    "digits": DatasetEntry("bench.data.images:load_digits", "image",
                           "scikit-learn 8x8 digits as 1x8x8 images, 17 levels, 10 classes",
                           {**_SKLEARN_OPTIONS, **_IMAGE_OPTIONS}, metric="bpd"),
    # InfoCNF's generated data
    "spirals": DatasetEntry("bench.data.timeseries:load_spirals", "timeseries",
                            "InfoCNF's bi-directional spirals: 200 noisy points + extrapolation horizon",
                            {"n_spirals": 5000, "n_val": 500, "n_test": 500, "length": 1000, "window": 200,
                             "horizon": 200, "noise": 0.3, "seed": 0, "targets": "direction"}, metric="mse"),
    "mixture1d": DatasetEntry("bench.data.timeseries:load_mixture1d", "toy",
                              "1-D mixture of three Gaussians (InfoCNF appendix C)",
                              {**_TOY_OPTIONS, "means": "-2,0,2", "stds": "0.5,0.5,0.5", "weights": "1,1,1"}),
})


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
