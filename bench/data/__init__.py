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
from typing import Annotated, Any

from baselines.constraints import Choice, Count, NonNegInt, NonNegative, Pattern, Range, Seed
from bench.data.base import CROP_PADDING, DEQUANTIZE, DataInfo, Dataset, Split
from bench.errors import FlowbenchError, did_you_mean

__all__ = ["DataInfo", "Dataset", "Split", "REGISTRY", "dataset_names", "load_dataset", "resolve_root"]


@dataclass(frozen=True)
class DatasetEntry:
    loader: str  # "module:function"
    kind: str
    description: str
    options: dict[str, Any] = field(default_factory=dict)  # option -> default
    metric: str = "nll"  # the headline metric a suite's `metric: auto` resolves to
    checks: dict[str, Any] = field(default_factory=dict)  # option -> declared type and range (constraints.conform)


Declared = dict[str, tuple[Any, Any]]  # option -> (default, declared type and range)


def _entry(loader: str, kind: str, description: str, declared: Declared, metric: str = "nll") -> DatasetEntry:
    """A registry entry from its options' (default, declaration) pairs."""
    return DatasetEntry(loader, kind, description, {k: d for k, (d, _) in declared.items()}, metric,
                        {k: t for k, (_, t) in declared.items()})


_TOY_OPTIONS: Declared = {"n_train": (20_000, Count), "n_val": (5_000, Count), "n_test": (20_000, Count),
                          "seed": (0, Seed)}
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
    name: _entry("bench.data.toy:load", "toy", desc, _TOY_OPTIONS)
    for name, desc in _TOY_DESCRIPTIONS.items()
}


_BELOW_HALF = Annotated[float, Range(0, 0.5, max_open=True)]
_FRACTION = Annotated[float, Range(0, 1, min_open=True, max_open=True)]
_IMAGE_OPTIONS: Declared = {"logit": (True, bool), "alpha": (1e-6, _BELOW_HALF),
                            "dequantize": ("uniform", Annotated[str, Choice(*DEQUANTIZE)])}
# training-time augmentation of the full-size image sets (bench/data/images.py: make_preprocess)
_AUGMENT_OPTIONS: Declared = {"crop": (0, NonNegInt),
                              "crop_padding": ("symmetric", Annotated[str, Choice(*CROP_PADDING)]),
                              "shift": (0.0, _BELOW_HALF)}
_SKLEARN_OPTIONS: Declared = {"val_fraction": (0.1, _FRACTION), "test_fraction": (0.2, _FRACTION), "seed": (0, Seed)}
_CACHE: Declared = {"cache": (True, bool)}
_VERIFY: Declared = {"verify": (True, bool)}
_NUMBERS = Annotated[str, Pattern(r"\s*[-+]?[0-9.eE+-]+(\s*,\s*[-+]?[0-9.eE+-]+)*\s*",
                                  'numbers separated by commas, e.g. "-2,0,2"')]

REGISTRY.update({
    # MAF's five UCI sets (files of MAF's Zenodo archive under the data root)
    "power": _entry("bench.data.tabular:load", "tabular", "UCI household power, 6-D (MAF's preparation)", _CACHE),
    "gas": _entry("bench.data.tabular:load", "tabular", "UCI gas sensors (ethylene CO), 8-D (MAF's preparation)",
                  _CACHE),
    "hepmass": _entry("bench.data.tabular:load", "tabular", "UCI HEPMASS signal, 21-D (MAF's preparation)", _CACHE),
    "miniboone": _entry("bench.data.tabular:load", "tabular", "UCI MiniBooNE, 43-D (MAF's preparation)", _CACHE),
    "bsds300": _entry("bench.data.tabular:load", "tabular", "BSDS300 8x8 patches, 63-D (MAF's preparation)", _CACHE),
    # real tabular sets shipped with scikit-learn
    "wine": _entry("bench.data.sklearn_sets:load", "tabular", "scikit-learn wine, 13-D, 3 classes", _SKLEARN_OPTIONS),
    "breast_cancer": _entry("bench.data.sklearn_sets:load", "tabular", "scikit-learn breast cancer, 30-D, 2 classes",
                            _SKLEARN_OPTIONS),
    "iris": _entry("bench.data.sklearn_sets:load", "tabular", "scikit-learn iris, 4-D, 3 classes", _SKLEARN_OPTIONS),
    "digits64": _entry("bench.data.sklearn_sets:load", "tabular",
                       "scikit-learn 8x8 digits as 64-D vectors, 10 classes", _SKLEARN_OPTIONS),
    # images (bits/dim)
    "mnist": _entry("bench.data.images:load_mnist", "image",
                    "MNIST 1x28x28 from the IDX files (pad 2, channels 3: Glow/i-ResNet's 3x32x32), 10 classes",
                    {"n_val": (5000, NonNegInt), "pad": (0, Annotated[int, Range(0, 16)]),
                     "channels": (1, Annotated[int, Choice(1, 3)]), **_IMAGE_OPTIONS, "flip": (False, bool),
                     **_AUGMENT_OPTIONS, **_VERIFY}, metric="bpd"),
    "cifar10": _entry("bench.data.images:load_cifar10", "image", "CIFAR10 3x32x32 from the pickled batches",
                      {"n_val": (5000, NonNegInt), "flip": (True, bool), **_IMAGE_OPTIONS, **_AUGMENT_OPTIONS,
                       **_VERIFY}, metric="bpd"),
    "mnist10k": _entry("bench.data.images:load_mnist10k", "image",
                       "8,000/1,000/1,000 split of the real MNIST TEST set (small runs, not the benchmark)",
                       {"n_train": (8000, Count), "n_val": (1000, Count), "seed": (0, Seed), **_IMAGE_OPTIONS,
                        **_VERIFY}, metric="bpd"),
    "digits": _entry("bench.data.images:load_digits", "image",
                     "scikit-learn 8x8 digits as 1x8x8 images, 17 levels, 10 classes",
                     {**_SKLEARN_OPTIONS, **_IMAGE_OPTIONS}, metric="bpd"),
    # InfoCNF's generated data
    "spirals": _entry("bench.data.timeseries:load_spirals", "timeseries",
                      "InfoCNF's bi-directional spirals: 200 noisy points + extrapolation horizon",
                      {"n_spirals": (5000, Count), "n_val": (500, Count), "n_test": (500, Count),
                       "length": (1000, Count), "window": (200, Annotated[int, Range(min=2)]),
                       "horizon": (200, NonNegInt), "noise": (0.3, NonNegative), "seed": (0, Seed),
                       "targets": ("direction", Annotated[str, Choice("direction", "all")])}, metric="mse"),
    "mixture1d": _entry("bench.data.timeseries:load_mixture1d", "toy",
                        "1-D mixture of three Gaussians (InfoCNF appendix C)",
                        {**_TOY_OPTIONS, "means": ("-2,0,2", _NUMBERS), "stds": ("0.5,0.5,0.5", _NUMBERS),
                         "weights": ("1,1,1", _NUMBERS)}),
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
