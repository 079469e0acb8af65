"""Reports: the records of a suite aggregated into the papers' tables, beside the published numbers.

``prepare`` keeps the newest record per run (and per model/dataset/seed), ``aggregate`` gives
mean ± std over seeds with counts of seeds and failed runs, ``build_tables`` lays them out as
the papers do (rows models, columns datasets, best per column in bold, the published value and
the gap beside each cell), and ``write_report`` writes Markdown, LaTeX (booktabs), CSV, Parquet,
the figures (``bench.plots``) and a self-contained ``index.html`` into ``reports/SUITE/``.

Only ``bench.store`` is imported at module level; pandas and the plotting stack load on use.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.store import STATUSES

PUBLISHED_CSV = Path(__file__).resolve().parent.parent / "baselines" / "published.csv"
FAILED_STATUSES = ("failed", "diverged", "timeout", "preempted")
UNFINISHED_STATUSES = ("pending", "running")
KEYS = ["model", "dataset"]


# -- records --------------------------------------------------------------------------------------
@dataclass
class Records:
    """The records a report is built from, and what is missing from the suite's grid."""

    df: Any  # newest record per (model, dataset, seed), every status
    completed: Any  # the completed ones, with a ``headline`` column
    failed: Any  # failed / diverged / timeout / preempted ones
    missing: list[tuple[str, str, int]] = field(default_factory=list)  # (model, dataset, seed) without a result
    superseded: int = 0  # older records of the same run or of the same (model, dataset, seed)
    models: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)

    @property
    def headline_metrics(self) -> dict[str, str]:
        """dataset -> the headline metric used for it."""
        if self.completed.empty:
            return {}
        pairs = self.completed.drop_duplicates("dataset")[["dataset", "headline_metric"]]
        return dict(zip(pairs["dataset"], pairs["headline_metric"]))


def latest(df):
    """The newest record per run_id, by the ``mtime`` ``bench.store.scan`` records (its result.json's
    modification time); a frame without it keeps its row order (the last row wins)."""
    if df.empty:
        return df
    order = df["mtime"].astype(float).fillna(0.0) if "mtime" in df else range(len(df))
    df = df.assign(_order=list(order)).sort_values("_order", kind="stable")
    if "run_id" in df:
        df = df.drop_duplicates("run_id", keep="last")
    return df


def headline_values(df, metric: str | None = None):
    """(metric name per row, value per row): each run's own headline metric, or ``metric`` for all."""
    import numpy as np
    import pandas as pd

    names = pd.Series(metric, index=df.index) if metric else df.get("metric", pd.Series("nll", index=df.index))
    names = names.fillna("nll").astype(str)
    values = pd.Series(np.nan, index=df.index, dtype=float)
    for name in names.unique():
        col = f"test.{name}"
        if col in df:
            mask = names == name
            values[mask] = pd.to_numeric(df.loc[mask, col], errors="coerce")
    return names, values


def prepare(df, expected: Sequence[tuple[str, str, int]] | None = None, metric: str | None = None) -> Records:
    """Newest record per run_id, then per (model, dataset, seed); what of ``expected`` is missing.

    ``expected`` is the suite's grid as (model, dataset, seed); records outside it (other suites'
    leftovers, removed models) are kept, since they were run under this suite's name.
    """
    import pandas as pd

    n_in = len(df)
    df = latest(df)
    if not df.empty and {"model", "dataset", "seed"} <= set(df.columns):
        # a changed hyperparameter is a new run_id for the same (model, dataset, seed): newest wins,
        # but a finished record beats a newer unfinished one (a re-run in progress)
        done = (~df["status"].isin(UNFINISHED_STATUSES)).astype(int) if "status" in df else 0
        df = df.assign(_done=done).sort_values(["_done", "_order"], kind="stable")
        df = df.drop_duplicates(["model", "dataset", "seed"], keep="last").drop(columns="_done")
    superseded = n_in - len(df)
    if "status" not in df:
        df = df.assign(status="pending")
    present = set()
    if not df.empty:
        finished = df[~df["status"].isin(UNFINISHED_STATUSES)]
        present = set(zip(finished["model"], finished["dataset"], finished["seed"].astype(int)))
    missing = sorted(k for k in (expected or []) if (k[0], k[1], int(k[2])) not in present)
    if not df.empty:
        unfinished = df[df["status"].isin(UNFINISHED_STATUSES)]
        extra = {(m, d, int(s)) for m, d, s in zip(unfinished["model"], unfinished["dataset"], unfinished["seed"])}
        missing = sorted(set(missing) | extra)
    completed = df[df["status"] == "completed"].copy() if not df.empty else df
    if not completed.empty:
        names, values = headline_values(completed, metric)
        completed["headline_metric"], completed["headline"] = names, values
        if {"nfe.train_forward", "nfe.train_backward"} <= set(completed.columns):
            # InfoCNF's Table 1 counts a training iteration's evaluations, forward and backward together
            completed["nfe.train_total"] = completed["nfe.train_forward"] + completed["nfe.train_backward"]
    failed = df[df["status"].isin(FAILED_STATUSES)] if not df.empty else df
    models = list(dict.fromkeys([*(k[0] for k in expected or []), *sorted(df["model"].unique() if not df.empty else [])]))
    datasets = list(dict.fromkeys([*(k[1] for k in expected or []),
                                   *sorted(df["dataset"].unique() if not df.empty else [])]))
    if completed.empty:
        completed = pd.DataFrame(columns=[*df.columns, "headline_metric", "headline"])
    return Records(df=df, completed=completed, failed=failed, missing=missing, superseded=superseded,
                   models=models, datasets=datasets)


# -- aggregation ----------------------------------------------------------------------------------
def aggregate(records: Records, column: str = "headline"):
    """mean, std (sample, over seeds), n (completed seeds) and failed per (model, dataset)."""
    import pandas as pd

    done = records.completed
    cols = ["model", "dataset", "mean", "std", "n", "failed"]
    if done.empty or column not in done:
        return pd.DataFrame(columns=cols)
    values = pd.to_numeric(done[column], errors="coerce")
    frame = done[KEYS].assign(_v=values).dropna(subset=["_v"])
    if frame.empty:
        return pd.DataFrame(columns=cols)
    out = frame.groupby(KEYS, sort=False)["_v"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out = out.reset_index()
    fails = records.failed.groupby(KEYS).size().rename("failed") if not records.failed.empty else None
    if fails is not None:
        out = out.merge(fails.reset_index(), on=KEYS, how="left")
        out["failed"] = out["failed"].fillna(0).astype(int)
    else:
        out["failed"] = 0
    return out[cols]


def run_counts(records: Records):
    """Per (model, dataset): completed, failed and missing runs (the sweep's progress)."""
    import pandas as pd

    df = records.df
    rows: dict[tuple[str, str], dict[str, int]] = {}
    if not df.empty:
        for (m, d, s), n in df.groupby(["model", "dataset", "status"]).size().items():
            entry = rows.setdefault((m, d), {"completed": 0, "failed": 0, "missing": 0})
            if s == "completed":
                entry["completed"] += int(n)
            elif s in FAILED_STATUSES:
                entry["failed"] += int(n)
    missing = [(m, d) for m, d, _ in records.missing]
    for m, d in missing:
        rows.setdefault((m, d), {"completed": 0, "failed": 0, "missing": 0})["missing"] += 1
    return pd.DataFrame([{"model": m, "dataset": d, **v} for (m, d), v in rows.items()],
                        columns=["model", "dataset", "completed", "failed", "missing"])


# -- published numbers ----------------------------------------------------------------------------
def load_published(path: str | os.PathLike | None = None):
    """baselines/published.csv as a DataFrame (empty when the file is absent)."""
    import pandas as pd

    path = Path(path) if path else PUBLISHED_CSV
    if not path.exists():
        return pd.DataFrame(columns=["model", "dataset", "metric", "unit", "value", "std", "setting", "source",
                                     "table", "notes"])
    return pd.read_csv(path, keep_default_na=False, na_values={"value": [""], "std": [""]})


def reference_values(published, metric_of: dict[str, str] | str) -> dict[tuple[str, str], tuple[float, float]]:
    """(model, dataset) -> (value, std) of the reference row: the first in file order for the metric."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    if published is None or published.empty:
        return out
    for m, d, met, v, s in zip(published["model"], published["dataset"], published["metric"], published["value"],
                               published["std"]):
        want = metric_of if isinstance(metric_of, str) else metric_of.get(d)
        if met == want and (m, d) not in out:
            out[(m, d)] = (float(v), float(s) if s == s else math.nan)
    return out


# -- tables ---------------------------------------------------------------------------------------
@dataclass
class Table:
    """One model x dataset table: aggregated cells, published references, formatting."""

    key: str
    title: str
    cells: Any  # DataFrame: model, dataset, mean, std, n, failed, published, published_std, gap, best
    models: list[str]
    datasets: list[str]
    digits: int = 3
    bold: bool = True
    unit: str = ""
    scale: float = 1.0  # values are divided by this for display (seconds -> hours)
    show_failed: bool = False  # "(k failed)" in cells (the headline table)

    def cell(self, model: str, dataset: str) -> dict[str, Any] | None:
        row = self._index.get((model, dataset))
        return None if row is None else row

    def __post_init__(self) -> None:
        self._index = {(r["model"], r["dataset"]): r for r in self.cells.to_dict("records")}

    @property
    def published_datasets(self) -> list[str]:
        """Datasets with at least one published reference for this table's metric."""
        have = {d for (m, d), r in self._index.items() if r["published"] == r["published"]}
        return [d for d in self.datasets if d in have]


def fmt_number(x: float, digits: int) -> str:
    if x is None or x != x:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_cell(mean: float, std: float, n: int, digits: int) -> str:
    """'mean ± std' over seeds (std only with two or more seeds)."""
    if mean is None or mean != mean:
        return "–"
    if n and n > 1 and std == std:
        return f"{fmt_number(mean, digits)} ± {fmt_number(std, digits)}"
    return fmt_number(mean, digits)


def fmt_gap(gap: float, digits: int) -> str:
    if gap is None or gap != gap:
        return ""
    return f"{gap:+.{digits}f}" if digits else f"{gap:+,.0f}"


def make_table(agg, key: str, title: str, models: Sequence[str], datasets: Sequence[str],
               published: dict[tuple[str, str], tuple[float, float]] | None = None, digits: int = 3,
               bold: bool = True, unit: str = "", scale: float = 1.0) -> Table:
    """Add published values, gaps and the best-per-column flag to an aggregate."""
    import numpy as np

    cells = agg.copy()
    published = published or {}
    cells["mean"] = cells["mean"].astype(float) / scale
    cells["std"] = cells["std"].astype(float) / scale
    cells["published"] = [published.get((m, d), (np.nan, np.nan))[0] for m, d in zip(cells["model"], cells["dataset"])]
    cells["published_std"] = [published.get((m, d), (np.nan, np.nan))[1]
                              for m, d in zip(cells["model"], cells["dataset"])]
    cells["gap"] = cells["mean"] - cells["published"]
    best = cells.groupby("dataset")["mean"].transform("min") if not cells.empty else cells["mean"]
    # best: the lowest mean, compared at the printed precision so ties are all bold
    cells["best"] = np.isclose(cells["mean"].round(digits), best.round(digits)) & (cells.groupby("dataset")[
        "mean"].transform("count") > 1 if not cells.empty else False)
    present_models = [m for m in models if m in set(cells["model"])]
    present_datasets = [d for d in datasets if d in set(cells["dataset"])]
    return Table(key, title, cells, present_models or sorted(set(cells["model"])),
                 present_datasets or sorted(set(cells["dataset"])), digits, bold, unit, scale)


SECONDARY = [
    # key, column, title, digits, bold, published metric
    # published NFE rows say which count they are: `nfe_train` is forward + backward per training step
    ("nfe_forward", "nfe.train_forward", "NFE per training step, forward solve", 1, True, None),
    ("nfe_backward", "nfe.train_backward", "NFE per training step, backward pass", 1, True, None),
    ("nfe_train", "nfe.train_total", "NFE per training step, forward + backward", 1, True, "nfe_train"),
    ("nfe_test", "nfe.test_forward", "NFE at evaluation (per test batch)", 1, True, None),
    ("error", "test.error", "test error (%)", 2, True, "error"),
    ("wall_clock", "train_seconds", "training wall-clock", 2, True, "train_hours"),
    ("params", "params", "parameters", 0, False, None),
]


def _time_unit(values: Iterable[float]) -> tuple[str, float]:
    vals = [v for v in values if v == v]
    top = max(vals) if vals else 0.0
    if top >= 3 * 3600:
        return "hours", 3600.0
    if top >= 180:
        return "minutes", 60.0
    return "seconds", 1.0


def build_tables(records: Records, published=None) -> list[Table]:
    """The headline table first, then each secondary table that has data (NFE, error, time, params)."""
    tables: list[Table] = []
    metric_of = records.headline_metrics
    names = sorted(set(metric_of.values()))
    head_title = "test " + "/".join(names or ["nll"]) + " (mean ± std over seeds; lower is better)"
    agg = aggregate(records, "headline")
    refs = reference_values(published, metric_of)
    head = make_table(agg, "headline", head_title, records.models, records.datasets, refs)
    head.show_failed = True
    tables.append(head)
    done = records.completed
    for key, column, title, digits, bold, pub_metric in SECONDARY:
        if column not in done or done.empty:
            continue
        agg = aggregate(records, column)
        if key.startswith("nfe"):  # models without NFE (discrete flows) have nothing to show here
            with_nfe = set(agg.loc[agg["mean"].abs() > 0, "model"])
            agg = agg[agg["model"].isin(with_nfe)]
        if agg.empty:
            continue
        refs = reference_values(published, pub_metric) if pub_metric else {}
        scale, unit = 1.0, ""
        if key == "wall_clock":
            unit, scale = _time_unit(agg["mean"])
            refs = {k: (v * 3600 / scale, s * 3600 / scale) for k, (v, s) in refs.items()}
            title = f"{title} ({unit})"
        tables.append(make_table(agg, key, title, records.models, records.datasets, refs, digits, bold, unit, scale))
    return tables


def _columns(tab: Table) -> list[tuple[str, str]]:
    """(dataset, part) for each printed column: part is 'value', 'pub' or 'gap'."""
    pub = set(tab.published_datasets)
    out = []
    for d in tab.datasets:
        out.append((d, "value"))
        if d in pub:
            out += [(d, "pub"), (d, "gap")]
    return out


def _text(tab: Table, model: str, dataset: str, part: str, bold: tuple[str, str]) -> str:
    c = tab.cell(model, dataset)
    if c is None:
        return "–" if part == "value" else ""
    if part == "pub":
        return fmt_cell(c["published"], c["published_std"], 2, tab.digits) if c["published"] == c["published"] else ""
    if part == "gap":
        return fmt_gap(c["gap"], tab.digits)
    text = fmt_cell(c["mean"], c["std"], c["n"], tab.digits)
    if c["failed"] and tab.show_failed:
        text += f" ({c['failed']} failed)"
    if tab.bold and c["best"]:
        text = f"{bold[0]}{text}{bold[1]}"
    return text


def _header(d: str, part: str) -> str:
    return d if part == "value" else (f"{d} pub." if part == "pub" else f"{d} Δ")


def to_markdown(tab: Table, title: str | None = None) -> str:
    """A Markdown table; best per column in bold, published value and gap beside each cell."""
    title = tab.title if title is None else title
    head = f"{title}\n\n" if title else ""
    if tab.cells.empty:
        return f"{head}(no completed runs)\n"
    cols = _columns(tab)
    lines = ["| " + " | ".join(["model", *(_header(d, p) for d, p in cols)]) + " |",
             "|" + "---|" * (len(cols) + 1)]
    for m in tab.models:
        lines.append("| " + " | ".join([m, *(_text(tab, m, d, p, ("**", "**")) for d, p in cols)]) + " |")
    return head + "\n".join(lines) + "\n"


_TEX_ESCAPE = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
               "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(text))


def to_latex(tab: Table) -> str:
    """A booktabs table: models as rows, datasets (with published value and gap) as columns."""
    if tab.cells.empty:
        return f"% {tex_escape(tab.title)}: no completed runs\n"
    cols = _columns(tab)
    spec = "l" + "r" * len(cols)
    head = ["Model", *(tex_escape(d) if p == "value" else ("pub." if p == "pub" else r"$\Delta$") for d, p in cols)]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{tex_escape(tab.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for m in tab.models:
        cells = []
        for d, p in cols:
            text = _text(tab, m, d, p, ("\x00", "\x01"))
            text = tex_escape(text).replace("±", r"$\pm$").replace("–", "--")
            text = text.replace("\x00", r"\textbf{").replace("\x01", "}")
            cells.append(text)
        lines.append(" & ".join([tex_escape(m), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\label{{tab:{tex_escape(tab.key)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(tab: Table) -> str:
    if tab.cells.empty:
        return f"<h3>{html.escape(tab.title)}</h3><p>(no completed runs)</p>"
    cols = _columns(tab)
    out = [f'<h3>{html.escape(tab.title)}</h3>', f'<table class="results" id="table-{tab.key}">', "<thead><tr><th>model</th>"]
    out += [f'<th class="{p}">{html.escape(_header(d, p))}</th>' for d, p in cols]
    out.append("</tr></thead><tbody>")
    for m in tab.models:
        row = [f"<tr><th>{html.escape(m)}</th>"]
        for d, p in cols:
            text = html.escape(_text(tab, m, d, p, ("\x00", "\x01"))).replace("\x00", "<b>").replace("\x01", "</b>")
            row.append(f'<td class="{p}">{text}</td>')
        out.append("".join(row) + "</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def to_wide(tab: Table):
    """The table as a DataFrame of strings (what the CSV of a single table holds)."""
    import pandas as pd

    cols = _columns(tab)
    data = [[_text(tab, m, d, p, ("", "")) for d, p in cols] for m in tab.models]
    return pd.DataFrame(data, index=pd.Index(tab.models, name="model"), columns=[_header(d, p) for d, p in cols])


def to_long(tables: Sequence[Table]):
    """Every table's cells in long form: table, model, dataset, mean, std, n, failed, published, gap, best."""
    import pandas as pd

    frames = [t.cells.assign(table=t.key, unit=t.unit) for t in tables if not t.cells.empty]
    if not frames:
        return pd.DataFrame(columns=["table", "model", "dataset", "mean", "std", "n", "failed", "published",
                                     "published_std", "gap", "best", "unit"])
    out = pd.concat(frames, ignore_index=True)
    return out[["table", "model", "dataset", "mean", "std", "n", "failed", "published", "published_std", "gap",
                "best", "unit"]]


# -- what is missing ------------------------------------------------------------------------------
def differences_text(differences: Sequence[str]) -> str:
    """The suite's declared differences from the papers, one bullet a line (empty when none)."""
    if not differences:
        return ""
    return "Differences from the papers kept on purpose (the suite's `differences:`):\n" + "".join(
        f"- {d}\n" for d in differences)


def missing_text(records: Records, limit: int = 20) -> str:
    """One paragraph on failed and missing runs (empty when the sweep is complete)."""
    lines = []
    if records.missing:
        lines.append(f"{len(records.missing)} run(s) missing (pending or running):")
        lines += [f"  {m}/{d}/seed{s}" for m, d, s in records.missing[:limit]]
        if len(records.missing) > limit:
            lines.append(f"  ... and {len(records.missing) - limit} more")
    if not records.failed.empty:
        lines.append(f"{len(records.failed)} run(s) failed:")
        for row in records.failed.head(limit).itertuples():
            err = str(getattr(row, "error", "") or "").splitlines()
            lines.append(f"  {row.model}/{row.dataset}/seed{row.seed} [{row.status}]: {err[0][:120] if err else ''}")
        if len(records.failed) > limit:
            lines.append(f"  ... and {len(records.failed) - limit} more")
    return "\n".join(lines) + ("\n" if lines else "")


def environment_summary(records: Records):
    """The environments the runs ran in: one row per distinct (git sha, device, host, versions), with a count."""
    import pandas as pd

    df = records.df
    cols = [c for c in df.columns if c.startswith("env.") and c not in ("env.pid",)]
    cols = [c for c in cols if not c.startswith("env.slurm.")]
    if df.empty or not cols:
        return pd.DataFrame(columns=["runs"])
    sub = df[cols].astype(str).replace({"None": "", "nan": ""})
    out = sub.groupby(cols, dropna=False).size().rename("runs").reset_index()
    out.columns = [c.replace("env.versions.", "").replace("env.", "") for c in out.columns]
    return out.sort_values("runs", ascending=False)


# -- writing --------------------------------------------------------------------------------------
@dataclass
class Report:
    suite: str
    out_dir: Path
    records: Records
    tables: list[Table]
    figures: dict[str, Path]
    files: dict[str, Path]
    markdown: str


def _parquet_safe(df):
    """Object columns holding lists, dicts or mixed types become strings (Parquet wants one type)."""
    df = df.copy()
    for col in df.columns:
        if df[col].dtype == object:
            kinds = {type(v) for v in df[col].dropna()}
            if len(kinds) > 1 or kinds & {list, dict, tuple}:
                df[col] = df[col].map(lambda v: v if v is None or v != v else str(v))
    return df


def render_markdown(suite: str, records: Records, tables: Sequence[Table], differences: Sequence[str] = ()) -> str:
    """The whole report as Markdown: headline table, the suite's declared differences from the
    papers, what is missing, secondary tables."""
    parts = [f"# {suite}\n"]
    n_done, n_fail, n_miss = len(records.completed), len(records.failed), len(records.missing)
    parts.append(f"{n_done} completed, {n_fail} failed, {n_miss} missing runs; "
                 f"{len(records.models)} models x {len(records.datasets)} datasets.\n")
    for i, tab in enumerate(tables):
        parts.append(to_markdown(tab, f"## {tab.title}"))
        if i == 0 and differences:
            parts.append(differences_text(differences))
        if i == 0:
            miss = missing_text(records)
            if miss:
                parts.append("```text\n" + miss + "```\n")
    return "\n".join(parts)


def write_report(df, suite: str, out_dir: str | os.PathLike, metric: str | None = None,
                 expected: Sequence[tuple[str, str, int]] | None = None, figures: bool = True,
                 published_path: str | os.PathLike | None = None, figure_pool: Any = None,
                 differences: Sequence[str] = ()) -> Report:
    """Write every output of a report into ``out_dir/SUITE/``; returns what was written.

    ``figure_pool`` (``bench.plots.start_workers``, started before the records were read) draws the
    figures in processes that loaded the plotting stack meanwhile. ``differences``: the suite's
    declared differences from the papers, shown under the headline table.

    Files: report.md, tables.tex, summary.csv (long form of every table), headline.csv (the
    headline table as printed), runs.csv (completed/failed/missing per model and dataset),
    records.parquet and summary.parquet, figures/*.png|pdf and index.html.
    """
    records = prepare(df, expected, metric)
    published = load_published(published_path)
    tables = build_tables(records, published)
    path = Path(out_dir) / suite
    path.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    md = render_markdown(suite, records, tables, differences)
    files["markdown"] = path / "report.md"
    files["markdown"].write_text(md)
    files["table"] = path / "table.md"  # the headline table alone
    files["table"].write_text(to_markdown(tables[0], f"## {suite}: {tables[0].title}"))
    files["latex"] = path / "tables.tex"
    files["latex"].write_text("% requires \\usepackage{booktabs}\n" + "\n".join(to_latex(t) for t in tables))
    long = to_long(tables)
    files["csv"] = path / "summary.csv"
    long.to_csv(files["csv"], index=False)
    files["headline_csv"] = path / "headline.csv"
    to_wide(tables[0]).to_csv(files["headline_csv"])
    files["runs_csv"] = path / "runs.csv"
    run_counts(records).to_csv(files["runs_csv"], index=False)
    files["parquet"] = path / "summary.parquet"
    long.to_parquet(files["parquet"], index=False)
    files["records_parquet"] = path / "records.parquet"
    _parquet_safe(records.df.drop(columns=["_order"], errors="ignore")).to_parquet(files["records_parquet"], index=False)
    figs: dict[str, Path] = {}
    if figures:
        from bench import plots

        figs = plots.all_figures(records, tables, path / "figures", pool=figure_pool)
    files["html"] = path / "index.html"
    files["html"].write_text(render_html(suite, records, tables, figs, published, differences))
    return Report(suite, path, records, tables, figs, files, md)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #ddd}
thead th{border-bottom:2px solid #444}td{white-space:nowrap}tbody th{text-align:left}td.pub,td.gap{color:#777;font-size:90%}
figure{display:inline-block;margin:0.5em;vertical-align:top}figure img{max-width:560px;border:1px solid #eee}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}.small{font-size:85%;color:#555}
"""

_CHECK_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
  document.body.setAttribute('data-tables', String(document.querySelectorAll('table.results').length));
});
"""


def render_html(suite: str, records: Records, tables: Sequence[Table], figures: dict[str, Path], published=None,
                differences: Sequence[str] = ()) -> str:
    """A self-contained page: tables, figures as base64 PNG, environment, failed and missing runs."""
    import base64

    esc = html.escape
    body = [f"<h1>flowbench report: {esc(suite)}</h1>",
            f'<p class="small">{len(records.completed)} completed, {len(records.failed)} failed, '
            f"{len(records.missing)} missing runs; {len(records.models)} models x {len(records.datasets)} datasets. "
            "Lower is better everywhere; best per column in bold; <i>pub.</i> is the number the papers report "
            "(baselines/published.csv) and Δ the gap to it (ours − published).</p>"]
    body += [to_html(t) for t in tables[:1]]
    if differences:
        body.append('<h3>differences from the papers kept on purpose</h3><ul class="differences">')
        body += [f"<li>{esc(d)}</li>" for d in differences]
        body.append("</ul>")
    body += [to_html(t) for t in tables[1:]]
    counts = run_counts(records)
    if not counts.empty:
        body.append("<h3>runs per model and dataset</h3>")
        body.append(counts.to_html(index=False, classes="counts", border=0))
    if figures:
        body.append("<h2>figures</h2>")
        for name, png in figures.items():
            if png.suffix != ".png" or not png.exists():
                continue
            data = base64.b64encode(png.read_bytes()).decode()
            body.append(f'<figure><img alt="{esc(name)}" src="data:image/png;base64,{data}">'
                        f"<figcaption>{esc(name)}</figcaption></figure>")
    if records.missing:
        body.append(f"<h2>missing runs ({len(records.missing)})</h2><pre>")
        body.append(esc("\n".join(f"{m}/{d}/seed{s}" for m, d, s in records.missing)))
        body.append("</pre>")
    if not records.failed.empty:
        body.append(f'<h2 id="failed">failed runs ({len(records.failed)})</h2><table class="failed"><thead><tr>'
                    "<th>run</th><th>run_id</th><th>status</th><th>error</th></tr></thead><tbody>")
        for row in records.failed.itertuples():
            err = str(getattr(row, "error", "") or "")
            body.append(f"<tr><th>{esc(f'{row.model}/{row.dataset}/seed{row.seed}')}</th><td>{esc(str(row.run_id))}"
                        f"</td><td>{esc(str(row.status))}</td><td style='text-align:left'><pre>{esc(err)}</pre></td></tr>")
        body.append("</tbody></table>")
    env = environment_summary(records)
    if not env.empty:
        body.append("<h2>environment</h2>")
        body.append(env.to_html(index=False, classes="env", border=0))
    if published is not None and not published.empty:
        pub = published[published["dataset"].isin(records.datasets)]
        if not pub.empty:
            body.append("<h2>published numbers for these datasets</h2>")
            body.append(pub.to_html(index=False, classes="published", border=0, na_rep=""))
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>flowbench: {esc(suite)}</title><style>{_CSS}</style><script>{_CHECK_JS}</script></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def status_counts(df) -> dict[str, Any]:
    return df["status"].value_counts().to_dict() if "status" in df else {}


# -- compatibility with the core's table helpers ---------------------------------------------------
def headline_column(df, metric: str | None = None) -> str:
    metric = metric or (df["metric"].mode().iat[0] if "metric" in df and not df.empty else "nll")
    return f"test.{metric}"


def table(df, column: str | None = None, digits: int = 3):
    """Rows models, columns datasets, cells 'mean ± std' over seeds (strings), no published columns."""
    import pandas as pd

    metric = column[5:] if column and column.startswith("test.") else None
    records = prepare(df, metric=metric)
    agg = aggregate(records, "headline" if column is None or metric else column)
    if agg.empty:
        return pd.DataFrame()
    tab = make_table(agg, "headline", "", records.models, records.datasets, digits=digits, bold=False)
    return to_wide(tab)
