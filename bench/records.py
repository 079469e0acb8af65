"""The records a report, pin, check and audit are built from: the newest record per run (and per
model/variant/dataset/seed), each run's headline value, and aggregates over seeds.

``prepare`` keeps the newest record per run_id, then per (model, variant, dataset, seed), and says
what of the suite's grid is missing; the headline is each run's own metric, a conditional model's
marginal where the metric has a marginal twin (``bench.metrics``); ``aggregate`` gives mean, std,
standard error and n per (model, variant, dataset) with the published setting they are compared under.

Only the light ``bench.metrics`` and ``bench.variants`` are imported at module level; pandas loads on use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.metrics import METRICS, get_metric
from bench.variants import row_label

__all__ = ["AGG_COLUMNS", "aggregate", "FAILED_STATUSES", "headline_values", "KEYS", "LABELS", "latest", "ModelRows",
           "prepare", "Records", "run_counts", "UNFINISHED_STATUSES", "with_labels"]

if TYPE_CHECKING:
    import pandas as pd

FAILED_STATUSES = ("failed", "diverged", "timeout", "preempted", "oom")
UNFINISHED_STATUSES = ("pending", "running")
KEYS = ["model", "variant", "dataset"]
LABELS = ("variant", "setting", "published_model")  # from spec.json; for the suite's own runs, from the suite


def _expected4(expected: Iterable[Sequence[Any]] | None) -> list[tuple[str, str, str, int]]:
    """The suite's grid as (model, variant, dataset, seed); (model, dataset, seed) means no variant."""
    return [(k[0], k[1], k[2], int(k[3])) if len(k) == 4 else (k[0], "", k[1], int(k[2])) for k in expected or []]


# -- records --------------------------------------------------------------------------------------
class ModelRows:
    """Rows of (model, variant) pairs in order: what records and tables share about their rows."""

    rows: list[tuple[str, str]]

    @property
    def models(self) -> list[str]:
        """The models of the rows, in order."""
        return list(dict.fromkeys(m for m, _ in self.rows))

    @property
    def has_variants(self) -> bool:
        """Whether any row has a variant label (a table then has a variant column)."""
        return any(v for _, v in self.rows)


@dataclass
class Records(ModelRows):
    """The records a report is built from, and what is missing from the suite's grid."""

    df: Any  # newest record per (model, variant, dataset, seed), every status
    completed: Any  # the completed ones, with ``headline``, ``headline_metric`` and ``headline_field`` columns
    failed: Any  # failed / diverged / timeout / preempted / oom ones
    missing: list[tuple[str, str, str, int]] = field(default_factory=list)  # (model, variant, dataset, seed)
    superseded: int = 0  # older records of the same run or of the same (model, variant, dataset, seed)
    rows: list[tuple[str, str]] = field(default_factory=list)  # (model, variant), in the suite's order
    datasets: list[str] = field(default_factory=list)

    @property
    def headline_metrics(self) -> dict[str, str]:
        """dataset -> the headline metric used for it."""
        if self.completed.empty:
            return {}
        pairs = self.completed.drop_duplicates("dataset")[["dataset", "headline_metric"]]
        return dict(zip(pairs["dataset"], pairs["headline_metric"]))


def latest(df: pd.DataFrame) -> pd.DataFrame:
    """The newest record per run_id, by the ``mtime`` ``bench.store.scan`` records (its result.json's
    modification time); a frame without it keeps its row order (the last row wins)."""
    if df.empty:
        return df
    order = df["mtime"].astype(float).fillna(0.0) if "mtime" in df else range(len(df))
    df = df.assign(_order=list(order)).sort_values("_order", kind="stable")
    if "run_id" in df:
        df = df.drop_duplicates("run_id", keep="last")
    return df


def with_labels(df: pd.DataFrame, labels: Mapping[str, Mapping[str, Any]] | None = None) -> pd.DataFrame:
    """The variant, setting and published_model columns filled in ("" for records from before
    variants); runs of the suite's grid (``labels``: run_id -> {variant, setting, published_model,
    sweep}) take the suite's current values, so renaming a variant or fixing a setting needs no re-run."""
    if df.empty:
        return df
    df = df.copy()
    for col in LABELS:
        df[col] = df[col].fillna("").astype(str) if col in df else ""
    known = df["run_id"].map(labels) if labels and "run_id" in df else None
    if known is not None and known.notna().any():
        hit = known.notna()
        found = list(known[hit])
        for col in LABELS:
            df.loc[hit, col] = [str(lab.get(col) or "") for lab in found]
        for key in dict.fromkeys(k for lab in found for k in lab.get("sweep") or {}):
            df.loc[hit, f"sweep.{key}"] = [(lab.get("sweep") or {}).get(key, math.nan) for lab in found]
    return df


def headline_values(df: pd.DataFrame, metric: str | None = None) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(metric name, record field, value) per row: each run's own headline metric (or ``metric`` for
    all); for a metric with a marginal twin (nll -> nll_marginal) a conditional model's marginal is
    its value, so every model in a column is judged on the same -log p(x)."""
    import numpy as np
    import pandas as pd

    names = pd.Series(metric, index=df.index) if metric else df.get("metric", pd.Series("nll", index=df.index))
    names = names.fillna("nll").astype(str)
    fields = names.copy()
    values = pd.Series(np.nan, index=df.index, dtype=float)
    for name in names.unique():
        mask = names == name
        col = f"test.{name}"
        own = pd.to_numeric(df.loc[mask, col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index[mask])
        twin = METRICS[name].marginal if name in METRICS else None
        if twin and f"test.{twin}" in df:
            marginal = pd.to_numeric(df.loc[mask, f"test.{twin}"], errors="coerce")
            use = marginal.notna()
            values[mask] = marginal.where(use, own)
            fields[mask] = np.where(use, twin, name)
        else:
            values[mask] = own
    return names, fields, values


def _row_order(expected: list[tuple[str, str, str, int]], df) -> list[tuple[str, str]]:
    """(model, variant) rows: the suite's models in order, each with its variants in order, then other records'."""
    pairs = [(m, v) for m, v, _, _ in expected]
    if not df.empty:
        pairs += sorted(set(zip(df["model"], df["variant"])))
    pairs = list(dict.fromkeys(pairs))
    models = list(dict.fromkeys(m for m, _ in pairs))
    return [(m, v) for m in models for mm, v in pairs if mm == m]


def prepare(df, expected: Sequence[Sequence[Any]] | None = None, metric: str | None = None,
            labels: Mapping[str, Mapping[str, Any]] | None = None) -> Records:
    """Newest record per run_id, then per (model, variant, dataset, seed); what of ``expected`` is missing.

    ``expected`` is the suite's grid as (model, variant, dataset, seed) (or (model, dataset, seed));
    records outside it (other suites' leftovers, removed models) are kept, since they were run under
    this suite's name. ``labels``: the suite's variant labels and settings by run_id (``with_labels``).
    """
    import pandas as pd

    if metric is not None:
        get_metric(metric, "--metric")
    expected4 = _expected4(expected)
    n_in = len(df)
    df = latest(with_labels(df, labels))
    if not df.empty and {"model", "dataset", "seed"} <= set(df.columns):
        # a changed hyperparameter is a new run_id for the same (model, variant, dataset, seed): newest
        # wins, but a finished record beats a newer unfinished one (a re-run in progress)
        done = (~df["status"].isin(UNFINISHED_STATUSES)).astype(int) if "status" in df else 0
        df = df.assign(_done=done).sort_values(["_done", "_order"], kind="stable")
        df = df.drop_duplicates(["model", "variant", "dataset", "seed"], keep="last").drop(columns="_done")
    superseded = n_in - len(df)
    if "status" not in df:
        df = df.assign(status="pending")
    present: set[tuple[str, str, str, int]] = set()
    missing = set()
    if not df.empty:
        seeds = df["seed"].astype(int)
        finished = ~df["status"].isin(UNFINISHED_STATUSES)
        keys = list(zip(df["model"], df["variant"], df["dataset"], seeds))
        present = {k for k, f in zip(keys, finished) if f}
        missing = {k for k, f in zip(keys, finished) if not f}
    missing = sorted(missing | {k for k in expected4 if k not in present})
    completed = df[df["status"] == "completed"].copy() if not df.empty else df
    if not completed.empty:
        names, fields, values = headline_values(completed, metric)
        completed["headline_metric"], completed["headline_field"], completed["headline"] = names, fields, values
        completed["row"] = [row_label(m, v) for m, v in zip(completed["model"], completed["variant"])]
        if {"nfe.train_forward", "nfe.train_backward"} <= set(completed.columns):
            # InfoCNF's Table 1 counts a training iteration's evaluations, forward and backward together
            completed["nfe.train_total"] = completed["nfe.train_forward"] + completed["nfe.train_backward"]
    failed = df[df["status"].isin(FAILED_STATUSES)] if not df.empty else df
    datasets = list(dict.fromkeys([*(k[2] for k in expected4),
                                   *sorted(df["dataset"].unique() if not df.empty else [])]))
    if completed.empty:
        completed = pd.DataFrame(columns=[*df.columns, *KEYS, "headline_metric", "headline_field", "headline", "row"])
    return Records(df=df, completed=completed, failed=failed, missing=missing, superseded=superseded,
                   rows=_row_order(expected4, df), datasets=datasets)


# -- aggregation ----------------------------------------------------------------------------------
AGG_COLUMNS = [*KEYS, "mean", "std", "se", "n", "failed", "field", "setting", "published_model"]


def aggregate(records: Records, column: str = "headline", field: str | None = None,
              where: pd.Series | None = None) -> pd.DataFrame:
    """Per (model, variant, dataset): mean, sample std, standard error (n > 1), n (completed seeds),
    failed runs, and the record field and published setting the values are compared under.

    ``field``: the metric name the values measure (default: the headline's per-run field, or
    ``column``); ``where``: a boolean mask on ``records.completed`` choosing the runs.
    """
    import numpy as np
    import pandas as pd

    done = records.completed if where is None else records.completed[where]
    if done.empty or column not in done:
        return pd.DataFrame(columns=AGG_COLUMNS)
    values = pd.to_numeric(done[column], errors="coerce")
    fields = done["headline_field"] if column == "headline" else pd.Series(field or column, index=done.index)
    frame = done[[*KEYS, "setting", "published_model"]].assign(_v=values, _f=fields).dropna(subset=["_v"])
    if frame.empty:
        return pd.DataFrame(columns=AGG_COLUMNS)
    g = frame.groupby(KEYS, sort=False)
    out = g["_v"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["field"], out["setting"], out["published_model"] = g["_f"].first(), g["setting"].first(), g[
        "published_model"].first()
    carried = [c for c in done.columns if c == "base_dataset" or c.startswith("protocol.")]
    for column in carried:  # a report column's protocol (bench.tables): one per column by construction
        out[column] = done.loc[frame.index].groupby(KEYS, sort=False)[column].first()
    out = out.reset_index()
    out["se"] = np.where(out["n"] > 1, out["std"] / np.sqrt(out["n"].clip(lower=1)), np.nan)
    fails = records.failed.groupby(KEYS).size().rename("failed") if not records.failed.empty else None
    if fails is not None:
        out = out.merge(fails.reset_index(), on=KEYS, how="left")
        out["failed"] = out["failed"].fillna(0).astype(int)
    else:
        out["failed"] = 0
    return out[AGG_COLUMNS + carried]


def run_counts(records: Records) -> pd.DataFrame:
    """Per (model, variant, dataset): completed, failed and missing runs (the sweep's progress)."""
    import pandas as pd

    df = records.df
    rows: dict[tuple[str, str, str], dict[str, int]] = {}
    if not df.empty:
        for (m, v, d, s), n in df.groupby([*KEYS, "status"]).size().items():
            entry = rows.setdefault((m, v, d), {"completed": 0, "failed": 0, "missing": 0})
            if s == "completed":
                entry["completed"] += int(n)
            elif s in FAILED_STATUSES:
                entry["failed"] += int(n)
    for m, v, d, _ in records.missing:
        rows.setdefault((m, v, d), {"completed": 0, "failed": 0, "missing": 0})["missing"] += 1
    return pd.DataFrame([{"model": m, "variant": v, "dataset": d, **c} for (m, v, d), c in rows.items()],
                        columns=[*KEYS, "completed", "failed", "missing"])
