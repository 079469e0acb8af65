"""Datasets: the registry (``@register_dataset`` next to each loader, read lazily: listing never
imports torch) and ``load_dataset``.

A loader is ``load(name, root, **options) -> Dataset``. ``root`` is the data root given by
``--data-root``, the ``FLOWBENCH_DATA`` environment variable or the suite's ``data_root``;
generated datasets ignore it. How to add one: docs/datasets.md, "Adding a dataset".
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench.data.base import GENERATED, SKLEARN, DataInfo, Dataset, NoFiles, Split, Status
from bench.data.registry import REGISTRY, DatasetEntry, describe_datasets, register_dataset, resolve_data_options
from bench.errors import FlowbenchError, did_you_mean

__all__ = ["DataInfo", "Dataset", "DatasetEntry", "GENERATED", "NoFiles", "REGISTRY", "SKLEARN", "Split", "Status",
           "dataset_names", "describe_datasets", "load_dataset", "register_dataset", "resolve_root"]


def dataset_names() -> list[str]:
    """Every dataset name, built-in and plug-in, sorted (no torch import)."""
    return sorted(REGISTRY)


def resolve_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The data root: the explicit one (CLI or suite), else $FLOWBENCH_DATA, else None."""
    root = explicit or os.environ.get("FLOWBENCH_DATA")
    return Path(root).expanduser() if root else None


_cache: dict[tuple, Dataset] = {}


def load_dataset(name: str, options: dict[str, Any] | None = None, root: str | os.PathLike | None = None) -> Dataset:
    """Load (once per process) the dataset ``name`` with its options (merged over the registered
    defaults) from ``root`` (else $FLOWBENCH_DATA; generated sets need none): a ``Dataset`` with
    ``info`` (what a model's builder reads) and the ``train``/``val``/``test`` splits.
    Options are checked against the loader's declarations (``resolve_data_options``, as a suite's are): an
    unknown or out-of-range option is one FlowbenchError naming it.

    >>> data = load_dataset("moons", {"n_train": 500, "n_val": 100, "n_test": 200})
    >>> data.info.kind, data.info.shape, data.info.num_classes
    ('toy', (2,), 2)
    >>> [tuple(split.x.shape) for split in (data.train, data.val, data.test)], tuple(data.train.y.shape)
    ([(500, 2), (100, 2), (200, 2)], (500,))
    >>> load_dataset("moons", {"n_train": 500, "n_val": 100, "n_test": 200}) is data  # cached
    True
    >>> load_dataset("moon")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bench.errors.FlowbenchError: unknown dataset "moon" (did you mean "moons"?); `flowbench list datasets` shows...
    >>> load_dataset("moons", {"ntrain": 500})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bench.errors.FlowbenchError: load_dataset("moons"): dataset "moons" has no option "ntrain" (did you mean "n_train"?)
    """
    if name not in REGISTRY:
        raise FlowbenchError(f'unknown dataset "{name}"{did_you_mean(name, REGISTRY)}; '
                             "`flowbench list datasets` shows them all (a plug-in dataset needs its module imported "
                             "first: the suite's plugins:)")
    entry = REGISTRY[name]
    options = resolve_data_options(name, options or {}, f'load_dataset("{name}")')
    root_path = resolve_root(root)
    key = (name, id(entry.loader), json.dumps(options, sort_keys=True, default=str), str(root_path))
    if key not in _cache:
        _cache[key] = entry.load(root_path, options)
    return _cache[key]
