"""The check history: every `flowbench check` appends its outcome to ``SUITE.history.jsonl`` beside the
pinned file (or ``--history FILE``), so it survives the results folder a CI job throws away and is
committed with the pins: the date, the commit the records ran at (a code snapshot's submission
commit), the suite file's hash, the seeds, the device, the exit code, and per quantity the current
and pinned values, the rule that decided and the verdict. `flowbench history SUITE` shows a
quantity over the commits with the pinned tolerance band, as a table and a figure, from the
first check on, so a slow drift is visible before it crosses a tolerance.

Only the standard library is imported at module level; pandas and matplotlib load on use.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.errors import FlowbenchError

__all__ = ["append", "default_quantities", "figure", "history_path", "LEGACY_FILE", "read", "ROW_FIELDS", "table",
           "to_markdown"]

if TYPE_CHECKING:
    import pandas as pd

LEGACY_FILE = "check_history.jsonl"  # results/SUITE/check_history.jsonl: where checks were appended before
ROW_FIELDS = ("model", "variant", "dataset", "quantity", "column", "pinned", "pinned_std", "pinned_n", "current",
              "current_std", "current_n", "kind", "tolerance", "test", "lower", "upper", "verdict")


def history_path(pinned_folder: str | os.PathLike, suite: str, chosen: str | os.PathLike | None = None) -> Path:
    """``chosen`` (``--history FILE``), else ``SUITE.history.jsonl`` beside the pinned file."""
    return Path(chosen) if chosen else Path(pinned_folder) / f"{suite}.history.jsonl"


def _plain(value: Any) -> Any:
    """A JSON-friendly scalar (NaN -> None, numpy numbers -> Python)."""
    if value is None:
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value != value:
        return None
    return value


def file_sha(path: str | os.PathLike | None) -> str | None:
    """The first 12 hex digits of a file's SHA-256 (None without a readable file)."""
    if not path:
        return None
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    except OSError:
        return None


def append(path: str | os.PathLike, suite: str, result: Any, pinned_file: str | os.PathLike = "",
           suite_file: str | os.PathLike | None = None, now: _dt.datetime | None = None) -> Path:
    """Append one check's outcome (a ``bench.check.CheckResult``) as one JSON line to ``path``; returns it."""
    entry = {"date": (now or _dt.datetime.now(_dt.timezone.utc)).isoformat(timespec="seconds"),
             "git_sha": result.git_sha, "suite": suite, "suite_sha": file_sha(suite_file),
             "seeds": list(result.seeds), "device": result.device, "pinned": str(pinned_file),
             "alpha": result.alpha, "exit_code": result.exit_code,
             "rows": [{k: _plain(getattr(r, k, None)) for k in ROW_FIELDS} for r in result.rows.itertuples(index=False)]}
    path = Path(path)
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


def read(path: str | os.PathLike, suite: str, legacy: str | os.PathLike | None = None) -> pd.DataFrame:
    """Every recorded check as one long DataFrame: entry (0, 1, ...), date, git_sha, exit_code and the
    row fields, the ``legacy`` file's checks (results/SUITE/check_history.jsonl) first when it exists;
    a FlowbenchError when there is no history yet."""
    import pandas as pd

    lines = []
    for source in ([Path(legacy)] if legacy else []) + [Path(path)]:
        try:
            lines += source.read_text().splitlines()
        except OSError:
            continue
    if not lines:
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
    last_entry = sub.sort_values("entry").groupby(["row", "dataset", "quantity"], sort=False).last()
    lo, hi = band(last_entry)
    return wide.assign(pinned=last_entry["pinned"].reindex(wide.index), band_low=lo.reindex(wide.index),
                       band_high=hi.reindex(wide.index)).rename_axis(columns=None)


def band(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """The pinned tolerance band of history rows: pinned ± tolerance (absolute), pinned x (1 ± tolerance)
    (relative); NaN for rows recorded without their tolerance."""
    import pandas as pd

    pinned = pd.to_numeric(rows["pinned"], errors="coerce")
    tol = pd.to_numeric(rows.get("tolerance", pd.Series(float("nan"), index=rows.index)), errors="coerce")
    width = (tol * pinned.abs()).where(rows.get("kind", pd.Series("", index=rows.index)) == "rel", tol)
    return pinned - width, pinned + width


def to_markdown(wide: pd.DataFrame) -> str:
    """The history table as Markdown (4 significant digits); the band is the pinned tolerance band."""
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
            lo, hi = band(g)
            color = line[0].get_color()
            ax.plot(g["entry"], g["pinned"], "_" if len(g) == 1 else "--", markersize=14, linewidth=0.8, color=color)
            if lo.notna().any():  # the band where the verdict is ok: a span, so one check already shows it
                ax.fill_between(g["entry"], lo, hi, color=color, alpha=0.12, linewidth=0,
                                step="mid" if len(g) > 1 else None)
                if len(g) == 1:
                    ax.errorbar(g["entry"], g["pinned"], yerr=[g["pinned"] - lo, hi - g["pinned"]], fmt="none",
                                ecolor=color, alpha=0.3, elinewidth=8)
        ax.set_title(f"{d}: {q}", fontsize=9)
        ax.set_xticks(list(ticks), list(ticks.values()), rotation=30, ha="right", fontsize=6)
    legend: dict[str, Any] = {}  # every line once, in the first panel
    for ax in axes.ravel()[:len(panels)]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    axes[0, 0].legend(list(legend.values()), list(legend), fontsize="x-small")
    fig.suptitle("check history: current mean ± std over seeds (error bars); pinned mean dashed, its tolerance band "
                 "shaded", fontsize=9)
    fig.tight_layout()
    return fig
