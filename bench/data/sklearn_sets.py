"""Small real tabular sets that ship inside scikit-learn (no download): wine, breast cancer, iris, digits (64-D).

Rows are shuffled by a seeded permutation and split by fractions; every column is standardised by
the train split's mean and std (a column constant in train keeps std 1). Labels are the classes.
"""

from __future__ import annotations

from pathlib import Path

from typing import Annotated

import numpy as np

from baselines.constraints import Range, Seed
from bench.data.base import SKLEARN
from bench.data.registry import register_dataset

__all__ = ["SOURCES", "Fraction", "raw", "split_indices", "standardise", "load"]

SOURCES = {  # dataset -> (scikit-learn loader, what it is, what `flowbench list datasets` says)
    "wine": ("load_wine", "UCI wine, 178 x 13, 3 classes", "scikit-learn wine, 13-D, 3 classes"),
    "breast_cancer": ("load_breast_cancer", "UCI breast cancer Wisconsin, 569 x 30, 2 classes",
                      "scikit-learn breast cancer, 30-D, 2 classes"),
    "iris": ("load_iris", "UCI iris, 150 x 4, 3 classes", "scikit-learn iris, 4-D, 3 classes"),
    "digits64": ("load_digits", "UCI optdigits 8x8 as 64-D vectors, 1,797 x 64, 10 classes",
                 "scikit-learn 8x8 digits as 64-D vectors, 10 classes"),
}
Fraction = Annotated[float, Range(0, 1, min_open=True, max_open=True)]  # of the rows, for a split


def raw(name: str) -> tuple[np.ndarray, np.ndarray]:
    """The features (float64) and labels (int64) of a scikit-learn set, in the file's order."""
    import sklearn.datasets

    bunch = getattr(sklearn.datasets, SOURCES[name][0])()
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Seeded permutation cut into train/val/test (val and test get round(fraction x n) rows each)."""
    from bench.errors import FlowbenchError

    n_val, n_test = round(val_fraction * n), round(test_fraction * n)
    if min(n_val, n_test) < 1 or n_val + n_test >= n:
        raise FlowbenchError(f"val_fraction {val_fraction} and test_fraction {test_fraction} leave no rows for "
                             f"one of the splits of {n} rows")
    order = np.random.default_rng(seed).permutation(n)
    return order[: n - n_val - n_test], order[n - n_val - n_test: n - n_test], order[n - n_test:]


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Every array standardised by ``train``'s column means and stds (ddof 0; constant columns: std 1)."""
    mu, sd = train.mean(axis=0), train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return [((a - mu) / sd).astype(np.float32) for a in (train, *others)]


def load(name: str, root: Path | None = None, *, val_fraction: Fraction = 0.1, test_fraction: Fraction = 0.2,
         seed: Seed = 0):
    """Seeded train/val/test splits of a scikit-learn set, standardised by train statistics."""
    import torch

    from bench.data.base import DataInfo, Dataset, Split

    x, y = raw(name)
    parts = split_indices(len(x), val_fraction, test_fraction, seed)
    xs = standardise(*(x[p] for p in parts))
    splits = [Split(torch.from_numpy(xi), torch.from_numpy(y[p])) for xi, p in zip(xs, parts)]
    sizes = "/".join(str(len(p)) for p in parts)
    info = DataInfo(name=name, kind="tabular", shape=(x.shape[1],), num_classes=int(y.max()) + 1, metric="nll",
                    notes=f"scikit-learn {SOURCES[name][0]}, seed {seed}, {sizes}, standardised by train statistics")
    return Dataset(info, *splits)


for _name, (_, _, _description) in SOURCES.items():
    register_dataset(_name, kind="tabular", description=_description, files=SKLEARN)(load)
