"""The papers' numbers (``baselines/published.csv``) and which of them a cell of ours is compared with.

A published row is put beside a cell only when model, dataset, metric, unit and setting all agree:
the model is the run's ``published_model`` (default its own name), the metric is the record field
the cell's value comes from (``nll``, ``nll_marginal``, ``error``, ``nfe_train``, ...; its
definition in ``bench.metrics`` says which published metric and unit measure the same thing), and
the setting is the one the suite, an override or a variant names (``setting:``; "" by default).
There is no fallback to another setting's number.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.metrics import METRICS
from bench.protocol import Protocol, of_published

__all__ = ["COLUMNS", "index", "Key", "load_published", "lookup", "PUBLISHED_CSV", "Reference", "rows_for"]

PUBLISHED_CSV = Path(__file__).resolve().parent.parent / "baselines" / "published.csv"
COLUMNS = ["model", "dataset", "metric", "unit", "value", "std", "setting", "source", "table", "notes", "dims",
           "dequantize", "checkpoint", "device"]  # the last four: the row's protocol (bench.protocol)


@dataclass(frozen=True)
class Reference:
    """One published number and the row it came from."""

    value: float
    std: float
    source: str
    table: str
    setting: str
    protocol: Protocol = Protocol()

    @property
    def cite(self) -> str:
        """Paper, table and setting: what a report prints under the table and in the HTML title."""
        return f"{self.source}, {self.table}" + (f", setting: {self.setting}" if self.setting else "")


def load_published(path: str | os.PathLike | None = None) -> Any:
    """baselines/published.csv as a DataFrame (empty when the file is absent)."""
    import pandas as pd

    path = Path(path) if path else PUBLISHED_CSV
    if not path.exists():
        return pd.DataFrame(columns=COLUMNS)
    table = pd.read_csv(path, keep_default_na=False, na_values={"value": [""], "std": [""]})
    for column in COLUMNS:  # a file from before the protocol columns states no protocol
        if column not in table:
            table[column] = ""
    return table


Key = tuple[str, str, str, str]  # (published model, dataset, published metric, setting)


def index(published) -> dict[Key, Reference]:
    """Every usable row by (model, dataset, metric, setting); a row whose unit is not its metric's
    (``bench.metrics``) is never matched; of duplicate keys the first in file order is kept."""
    out: dict[Key, Reference] = {}
    if published is None or published.empty:
        return out
    for row in published.itertuples(index=False):
        definition = METRICS.get(row.metric)
        if definition is not None and row.unit != definition.unit:
            continue
        key = (row.model, row.dataset, row.metric, " ".join(str(row.setting).split()))
        if key not in out:
            std = float(row.std) if row.std == row.std else float("nan")
            out[key] = Reference(float(row.value), std, str(row.source), str(row.table), key[3],
                                 of_published(row._asdict()))
    return out


def lookup(refs: dict[Key, Reference], model: str, dataset: str, field: str, setting: str = "",
           published_model: str = "") -> tuple[Reference | None, float]:
    """The published row for a cell whose values come from the record field ``field`` (``nll``,
    ``nll_marginal``, ``nfe_train``, ``train_seconds``, ...), and the factor that converts its unit to
    the field's (1, or 3600 for published hours beside our seconds); (None, 1) when none agrees."""
    definition = METRICS.get(field)
    name = definition.published_name if definition else field
    if not name:
        return None, 1.0
    ref = refs.get((published_model or model, dataset, name, " ".join(str(setting or "").split())))
    return ref, (definition.published_scale if definition else 1.0)


def rows_for(published, datasets: list[str]) -> Any:
    """The published rows of some datasets (the report's context table)."""
    return published[published["dataset"].isin(datasets)] if published is not None and not published.empty else None
