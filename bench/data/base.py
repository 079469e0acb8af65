"""What every loader returns: DataInfo (what the data is and how its metric is reported) and splits."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch stays out of `flowbench list`
    from torch import Tensor

__all__ = ["KINDS", "DEQUANTIZE", "CROP_PADDING", "DataInfo", "Split", "Dataset", "Preprocess", "Status", "NoFiles",
           "GENERATED", "SKLEARN"]

KINDS = ("toy", "tabular", "image", "conditional", "timeseries")
# image preprocessing choices: implemented by bench/data/images.py and declared in its loaders'
# signatures (Choice(*DEQUANTIZE)), both read from here, so they cannot drift apart
DEQUANTIZE = ("uniform", "center")  # test-time dequantisation: U(0,1) noise (FFJORD) or the bin centre (RNODE)
CROP_PADDING = ("symmetric", "reflect", "zero")


@dataclass(frozen=True)
class DataInfo:
    """Describes a dataset to models (shape, classes) and to the harness (how NLL is reported).

    ``levels`` is set for quantised data (images): the model's NLL, in the [0, 1) space that
    ``Dataset.preprocess`` starts from, becomes bits/dim of the ``levels``-valued data
    (see ``bench.metrics.bits_per_dim``).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    num_classes: int = 0
    metric: str = "nll"
    levels: int | None = None
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


@dataclass
class Split:
    """One split: inputs ``x`` and, for labelled data, targets ``y``."""

    x: "Tensor"
    y: "Tensor | None" = None

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class Status:
    """One dataset's verdict from `flowbench data verify`: ``found``, ``missing``, ``corrupt``,
    ``generated``, ``built-in`` (or ``error`` when a plug-in's check itself failed), with where it
    looked and why; ``how`` says how to get missing or corrupt files."""

    name: str
    state: str
    where: str
    detail: str = ""
    how: str = ""


@dataclass(frozen=True)
class NoFiles:
    """A dataset's declaration that it reads no data files: its verdict (``generated``, ``built-in``)
    and where the data comes from instead."""

    state: str
    where: str

    def verify(self, name: str, root: Any = None) -> Status:
        """The verdict is the declaration itself: there is nothing to check."""
        return Status(name, self.state, self.where)


GENERATED = NoFiles("generated", "generated from a seed")
SKLEARN = NoFiles("built-in", "scikit-learn (ships with the package)")

# preprocess(batch_x, train) -> (model_input, log|det d model_input / d batch_x| per example)
Preprocess = Callable[["Tensor", bool], "tuple[Tensor, Tensor]"]


@dataclass
class Dataset:
    """A loaded dataset: info, the three splits, and the optional per-batch preprocessing.

    ``preprocess`` maps a stored batch into the model's space (e.g. uint8 images -> dequantised,
    logit-transformed values) and returns the log-determinant of that map, so that the harness
    reports the NLL of the data, not of the model's input.
    """

    info: DataInfo
    train: Split
    val: Split
    test: Split
    preprocess: Preprocess | None = None
