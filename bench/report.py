"""Reports: a suite's records as the papers' tables beside the published numbers, written out.

``write_report`` reads the records (``bench.records.prepare``: newest per run, per model, variant,
dataset and seed), lays out the tables (``bench.tables.build_tables``: a row per (model, variant),
one metric per table, the published number of the same setting beside each cell) and writes
Markdown, LaTeX (booktabs), CSV, Parquet, the figures (``bench.plots``) and a self-contained
``index.html`` into ``reports/SUITE/``. The names of ``bench.records`` and ``bench.tables`` are
re-exported here (``report.prepare``, ``report.build_tables``, ``report.to_markdown``, ...).

Only ``bench.store`` (and the light ``bench.metrics``, ``bench.published``, ``bench.variants``,
``bench.records``, ``bench.tables``) is imported at module level; pandas and the plotting stack
load on use.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.published import PUBLISHED_CSV, load_published
from bench.records import (FAILED_STATUSES, KEYS, UNFINISHED_STATUSES, Records, aggregate, headline_values, latest,
                           prepare, run_counts, with_labels)
from bench.tables import (SECONDARY, Table, build_tables, fmt_cell, fmt_gap, fmt_number, headline_tables, make_table,
                          reference_values, sources_text, tex_escape, to_html, to_latex, to_long, to_markdown, to_wide)
from bench.variants import run_label

__all__ = [  # this module's own, and what it re-exports of bench.records, bench.tables and bench.published
    "Report", "write_report", "render_markdown", "render_html", "missing_text", "differences_text",
    "environment_summary", "status_counts", "headline_column", "table",
    "FAILED_STATUSES", "KEYS", "UNFINISHED_STATUSES", "Records", "aggregate", "headline_values", "latest", "prepare",
    "run_counts", "with_labels", "SECONDARY", "Table", "build_tables", "fmt_cell", "fmt_gap", "fmt_number",
    "headline_tables", "make_table", "reference_values", "sources_text", "tex_escape", "to_html", "to_latex", "to_long",
    "to_markdown", "to_wide", "PUBLISHED_CSV", "load_published",
]


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
        lines += [f"  {run_label(m, v, d, s)}" for m, v, d, s in records.missing[:limit]]
        if len(records.missing) > limit:
            lines.append(f"  ... and {len(records.missing) - limit} more")
    if not records.failed.empty:
        lines.append(f"{len(records.failed)} run(s) failed:")
        for row in records.failed.head(limit).itertuples():
            err = str(getattr(row, "error", "") or "").splitlines()
            lines.append(f"  {run_label(row.model, row.variant, row.dataset, row.seed)} [{row.status}]: "
                         f"{err[0][:120] if err else ''}")
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


def _overview(records: Records) -> str:
    variants = f" ({len(records.rows)} model/variant rows)" if records.has_variants else ""
    return (f"{len(records.completed)} completed, {len(records.failed)} failed, {len(records.missing)} missing runs; "
            f"{len(records.models)} models{variants} x {len(records.datasets)} datasets.")


def render_markdown(suite: str, records: Records, tables: Sequence[Table], differences: Sequence[str] = ()) -> str:
    """The whole report as Markdown: headline tables, the suite's declared differences from the
    papers, what is missing, the other tables."""
    parts = [f"# {suite}\n", _overview(records) + "\n"]
    heads = headline_tables(tables)
    parts += [to_markdown(tab, f"## {tab.title}") for tab in heads]
    if differences:
        parts.append(differences_text(differences))
    miss = missing_text(records)
    if miss:
        parts.append("```text\n" + miss + "```\n")
    parts += [to_markdown(tab, f"## {tab.title}") for tab in tables if tab not in heads]
    return "\n".join(parts)


def write_report(df, suite: str, out_dir: str | os.PathLike, metric: str | None = None,
                 expected: Sequence[tuple[str, str, int]] | None = None, figures: bool = True,
                 published_path: str | os.PathLike | None = None, figure_pool: Any = None,
                 differences: Sequence[str] = (), labels: Mapping[str, Mapping[str, Any]] | None = None) -> Report:
    """Write every output of a report into ``out_dir/SUITE/``; returns what was written.

    ``figure_pool`` (``bench.plots.start_workers``, started before the records were read) draws the
    figures in processes that loaded the plotting stack meanwhile. ``differences``: the suite's
    declared differences from the papers, shown under the headline tables. ``labels``: the suite's
    variant labels and published settings by run_id (``with_labels``).

    Files: report.md, table.md (the headline tables), tables.tex, summary.csv (long form of every
    table), headline.csv (the first headline table as printed), runs.csv (completed/failed/missing per model and dataset),
    records.parquet and summary.parquet, figures/*.png|pdf and index.html.
    """
    records = prepare(df, expected, metric, labels)
    published = load_published(published_path)
    tables = build_tables(records, published)
    path = Path(out_dir) / suite
    old_figures = sorted(p for p in (path / "figures").glob("*") if p.is_file()) if (path / "figures").is_dir() else []
    if old_figures and not figures:  # never a thinner report over a fuller one
        from bench.errors import FlowbenchError

        raise FlowbenchError(f"{path} holds a report with figures ({len(old_figures)} files in {path / 'figures'}); "
                             "a report without figures would replace its index.html: drop --no-figures, "
                             "or write elsewhere with --out DIR")
    path.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    md = render_markdown(suite, records, tables, differences)
    files["markdown"] = path / "report.md"
    files["markdown"].write_text(md)
    files["table"] = path / "table.md"  # the headline tables alone
    files["table"].write_text("\n".join(to_markdown(t, f"## {suite}: {t.title}") for t in headline_tables(tables)))
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
        made = {p.name for png in figs.values() for p in (png, png.with_suffix(".pdf"))}
        for stale in old_figures:  # figures of an earlier report these records no longer make
            if stale.name not in made:
                stale.unlink(missing_ok=True)
    files["html"] = path / "index.html"
    files["html"].write_text(render_html(suite, records, tables, figs, published, differences, out_dir=path))
    return Report(suite, path, records, tables, figs, files, md)


def render_html(suite: str, records: Records, tables: Sequence[Table], figures: dict[str, Path], published=None,
                differences: Sequence[str] = (), out_dir: str | os.PathLike | None = None) -> str:
    """A self-contained page: tables, figures as base64 PNG, environment, failed and missing runs.

    Every table sorts by a click on a header and has a filter box (``bench.html``: plain script in
    the page, views shareable as ``#sort=COL:desc&filter=TEXT`` links); each failed run links to its
    log, error and training log by paths relative to ``out_dir``, the folder the page is written to
    (file: URIs when it is not given)."""
    import base64

    from bench.html import failed_runs_html, page

    esc = html.escape
    body = [f"<h1>flowbench report: {esc(suite)}</h1>",
            f'<p class="small">{esc(_overview(records))} '
            "Best per column in bold; ± is the sample standard deviation over seeds, se the standard error; "
            "<i>pub.</i> is the number the papers report for the same setting (baselines/published.csv; hover "
            "for its paper, table and setting) and Δ the gap to it (ours − published).</p>"]
    heads = headline_tables(tables)
    body += [to_html(t) for t in heads]
    if differences:
        body.append('<h3>differences from the papers kept on purpose</h3><ul class="differences">')
        body += [f"<li>{esc(d)}</li>" for d in differences]
        body.append("</ul>")
    body += [to_html(t) for t in tables if t not in heads]
    counts = run_counts(records)
    if not counts.empty:
        if not records.has_variants:
            counts = counts.drop(columns="variant")
        body.append("<h3>runs per model and dataset</h3>")
        body.append(counts.to_html(index=False, classes="counts", border=0, table_id="counts"))
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
        body.append(esc("\n".join(run_label(*k) for k in records.missing)))
        body.append("</pre>")
    if not records.failed.empty:
        body += failed_runs_html(records.failed, out_dir, run_label)
    env = environment_summary(records)
    if not env.empty:
        body.append("<h2>environment</h2>")
        body.append(env.to_html(index=False, classes="env", border=0, table_id="environment"))
    if published is not None and not published.empty:
        pub = published[published["dataset"].isin(records.datasets)]
        if not pub.empty:
            body.append("<h2>published numbers for these datasets</h2>")
            body.append(pub.to_html(index=False, classes="published", border=0, na_rep="", table_id="published"))
    return page(f"flowbench: {suite}", body)


def status_counts(df) -> dict[str, Any]:
    return df["status"].value_counts().to_dict() if "status" in df else {}


# -- compatibility with the core's table helpers ---------------------------------------------------
def headline_column(df, metric: str | None = None) -> str:
    metric = metric or (df["metric"].mode().iat[0] if "metric" in df and not df.empty else "nll")
    return f"test.{metric}"


def table(df, column: str | None = None, digits: int = 3):
    """Rows (model, variant), columns datasets, cells 'mean ± std' over seeds (strings), no published columns."""
    import pandas as pd

    metric = column[5:] if column and column.startswith("test.") else None
    records = prepare(df, metric=metric)
    agg = aggregate(records, "headline" if column is None or metric else column)
    if agg.empty:
        return pd.DataFrame()
    tab = make_table(agg, "headline", "", records.rows, records.datasets, digits=digits)
    tab.bold = False
    return to_wide(tab)
