"""The check history: every `flowbench check` appends its outcome to ``results/SUITE/check_history.jsonl``
(date, the records' git sha, the verdict, and per quantity the current and pinned values), and
`flowbench history SUITE` shows a quantity over the checks as a table and a figure, so a slow drift
is visible before it crosses a tolerance.

Only the standard library is imported at module level; pandas and matplotlib load on use.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import FlowbenchError

__all__ = ["append", "default_quantities", "figure", "HISTORY_FILE", "history_path", "read", "ROW_FIELDS", "table",
           "to_markdown"]

if TYPE_CHECKING:
    import pandas as pd

HISTORY_FILE = "check_history.jsonl"
ROW_FIELDS = ("model", "variant", "dataset", "quantity", "column", "pinned", "pinned_std", "pinned_n", "current",
              "current_std", "current_n", "test", "p", "verdict")


def history_path(results_dir: str | os.PathLike, suite: str) -> Path:
    """``results/SUITE/check_history.jsonl``."""
    return Path(results_dir) / suite / HISTORY_FILE


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (NaN -> None, numpy numbers -> Python)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def append(results_dir: str | os.PathLike, suite: str, result: Any, pinned_file: str | os.PathLike = "",
           now: _dt.datetime | None = None) -> Path:
    """Append one check's outcome (a ``bench.check.CheckResult``) as one JSON line; returns the file."""
    entry = {"date": (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds"),
             "git_sha": result.git_sha, "suite": suite, "pinned": str(pinned_file), "alpha": result.alpha,
             "exit_code": result.exit_code,
             "rows": [{k: _plain(getattr(r, k, None)) for k in ROW_FIELDS} for r in result.rows.itertuples(index=False)]}
    path = history_path(results_dir, suite)
    line = (json.dumps(entry, separators=(",", ":")) + "\n").encode()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        try:
            os.write(fd, line)  # one write of a whole line: concurrent checks never interleave within a line
        finally:
            os.close(fd)
    except OSError as err:
        raise FlowbenchError(f"cannot append to the check history {path}: {err.strerror}") from None
    return path


def read(results_dir: str | os.PathLike, suite: str) -> pd.DataFrame:
    """Every recorded check as one long DataFrame: entry (0, 1, ...), date, git_sha, exit_code and the
    row fields; a FlowbenchError when there is no history yet."""
    import pandas as pd

    path = history_path(results_dir, suite)
    try:
        lines = path.read_text().splitlines()
    except OSError:
        raise FlowbenchError(f'no check history for suite "{suite}" ({path}); `flowbench check {suite}` '
                             "writes one entry per check") from None
    rows = []
    for i, line in enumerate(x for x in lines if x.strip()):
        try:
            entry = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash: the others still count
        for r in entry.get("rows", []):
            rows.append({"entry": i, "date": entry.get("date"), "git_sha": entry.get("git_sha") or "",
                         "exit_code": entry.get("exit_code"), **r})
    frame = pd.DataFrame(rows, columns=["entry", "date", "git_sha", "exit_code", *ROW_FIELDS])
    frame["variant"] = frame["variant"].fillna("")
    return frame


def default_quantities(frame: pd.DataFrame) -> list[str]:
    """The headline quantities (the test metrics a suite's `metric:` may name), else every quantity."""
    from bench.metrics import suite_metric_names

    present = list(dict.fromkeys(frame["quantity"]))
    headline = suite_metric_names()
    return [q for q in present if q in headline] or present


def _commit(sha: str, date: str) -> str:
    return f"{(sha or '?')[:7]}{'+' if sha.endswith('+dirty') else ''} {str(date)[:10]}"


def table(frame: pd.DataFrame, quantity: str | None = None, last: int = 10) -> pd.DataFrame:
    """Rows (model, variant, dataset, quantity), one column per check (the commit's short sha and the
    date), cells the current mean; the last column is the pinned mean."""
    from bench.variants import row_label

    quantities = [quantity] if quantity else default_quantities(frame)
    sub = frame[frame["quantity"].isin(quantities)]
    if sub.empty:
        known = ", ".join(sorted(set(frame["quantity"])))
        raise FlowbenchError(f'history: no quantity "{quantity}" was checked (checked: {known})')
    entries = sorted(sub["entry"].unique())[-last:]
    sub = sub[sub["entry"].isin(entries)]
    heads = {e: f"#{e} {_commit(*sub.loc[sub['entry'] == e, ['git_sha', 'date']].iloc[0])}" for e in entries}
    sub = sub.assign(row=[row_label(m, v) for m, v in zip(sub["model"], sub["variant"])], head=sub["entry"].map(heads))
    wide = sub.pivot_table(index=["row", "dataset", "quantity"], columns="head", values="current", aggfunc="first",
                           sort=False)
    wide = wide[[heads[e] for e in entries if heads[e] in wide.columns]]
    pinned = sub.sort_values("entry").groupby(["row", "dataset", "quantity"], sort=False)["pinned"].last()
    return wide.assign(pinned=pinned.reindex(wide.index)).rename_axis(columns=None)


def to_markdown(wide: pd.DataFrame) -> str:
    """The history table as Markdown (4 significant digits)."""
    heads = ["model", "dataset", "quantity", *map(str, wide.columns)]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for key, values in zip(wide.index, wide.itertuples(index=False)):
        cells = ["–" if v != v else f"{v:.4g}" for v in values]
        lines.append("| " + " | ".join([*map(str, key), *cells]) + " |")
    return "\n".join(lines) + "\n"


def figure(frame: pd.DataFrame, quantity: str | None = None, last: int = 30) -> Any:
    """The quantity over the checks: one panel per (dataset, quantity), one line per model (variant),
    error bars ± the current sample std over seeds, the pinned mean dashed."""
    import matplotlib

    if not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.variants import row_label

    quantities = [quantity] if quantity else default_quantities(frame)
    sub = frame[frame["quantity"].isin(quantities)]
    entries = sorted(sub["entry"].unique())[-last:]
    sub = sub[sub["entry"].isin(entries)]
    panels = list(dict.fromkeys(zip(sub["dataset"], sub["quantity"])))[:12]
    cols = min(len(panels), 3) or 1
    rows = -(-len(panels) // cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    ticks = {e: _commit(*sub.loc[sub["entry"] == e, ["git_sha", "date"]].iloc[0]) for e in entries}
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    for ax, (d, q) in zip(axes.ravel(), panels):
        part = sub[(sub["dataset"] == d) & (sub["quantity"] == q)]
        for (m, v), g in part.groupby(["model", "variant"], sort=False):
            g = g.sort_values("entry")
            line = ax.errorbar(g["entry"], g["current"], yerr=g["current_std"].fillna(0.0), marker="o", markersize=3,
                               capsize=2, linewidth=1, label=row_label(m, v))
            ax.plot(g["entry"], g["pinned"], "--", linewidth=0.8, color=line[0].get_color())
        ax.set_title(f"{d}: {q}", fontsize=9)
        ax.set_xticks(list(ticks), list(ticks.values()), rotation=30, ha="right", fontsize=6)
    legend: dict[str, Any] = {}  # every line once, in the first panel
    for ax in axes.ravel()[:len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    axes[0, 0].legend(list(legend.values()), list(legend), fontsize="x-small")
    fig.suptitle("check history: current mean ± std over seeds (error bars); pinned mean dashed", fontsize=9)
    fig.tight_layout()
    return fig
