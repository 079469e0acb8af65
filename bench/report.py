"""Aggregation of run records into the papers' table layout (models x datasets, mean ± std)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

LOWER_IS_BETTER = True


def completed(df):
    """Completed runs only, newest record per run_id."""
    if df.empty or "status" not in df:
        return df.iloc[0:0]
    return df[df["status"] == "completed"]


def headline_column(df, metric: str | None = None) -> str:
    metric = metric or (df["metric"].mode().iat[0] if "metric" in df and not df.empty else "nll")
    return f"test.{metric}"


def aggregate(df, column: str):
    """Mean, std and count over seeds per (model, dataset) for ``column``."""
    import pandas as pd

    done = completed(df)
    if done.empty or column not in done:
        return pd.DataFrame(columns=["model", "dataset", "mean", "std", "n"])
    grouped = done.groupby(["model", "dataset"])[column]
    out = grouped.agg(["mean", "std", "count"]).rename(columns={"count": "n"}).reset_index()
    return out


def format_cell(mean: float, std: float, n: int, digits: int = 3) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if n > 1 and std == std:
        return f"{mean:.{digits}f} ± {std:.{digits}f}"
    return f"{mean:.{digits}f}"


def table(df, column: str, digits: int = 3):
    """Rows models, columns datasets, cells 'mean ± std' over seeds (strings)."""
    agg = aggregate(df, column)
    if agg.empty:
        import pandas as pd

        return pd.DataFrame()
    agg["cell"] = [format_cell(m, s, n, digits) for m, s, n in zip(agg["mean"], agg["std"], agg["n"])]
    return agg.pivot(index="model", columns="dataset", values="cell").fillna("–")


def to_markdown(tab, title: str = "") -> str:
    if tab.empty:
        return f"{title}\n\n(no completed runs)\n" if title else "(no completed runs)\n"
    header = ["model", *map(str, tab.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for model, row in tab.iterrows():
        lines.append("| " + " | ".join([str(model), *map(str, row.values)]) + " |")
    body = "\n".join(lines) + "\n"
    return f"{title}\n\n{body}" if title else body


def write_report(df, suite: str, out_dir: str | Path, metric: str | None = None) -> tuple[str, Path]:
    """The headline table as Markdown in ``out_dir/SUITE/table.md``; returns (markdown, path)."""
    column = headline_column(df, metric)
    md = to_markdown(table(df, column), f"## {suite}: {column} (mean ± std over seeds; lower is better)")
    path = Path(out_dir) / suite
    path.mkdir(parents=True, exist_ok=True)
    (path / "table.md").write_text(md)
    return md, path / "table.md"


def status_counts(df) -> dict[str, Any]:
    return df["status"].value_counts().to_dict() if "status" in df else {}
