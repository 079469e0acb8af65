"""Tables as the papers lay them out: a row per (model, variant), a column per dataset, one metric per
table, mean ± std (and the standard error) over seeds, the best per column in bold, and beside each
cell the published number of the same setting with the gap to it and the row it came from.

``build_tables`` makes the headline tables (one per headline metric: nll, bpd, mse; a conditional
model's marginal beside the unconditional models), each conditional twin (-log p(x|y)), and the
secondary tables (test error, extrapolation MSE, NFE, wall-clock, parameters); ``to_markdown``,
``to_latex``, ``to_html``, ``to_wide`` and ``to_long`` format them.
"""

from __future__ import annotations

import dataclasses
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bench.metrics import METRICS, Metric, get_metric
from bench.protocol import FIELDS as PROTOCOL_FIELDS, Protocol, differences, of_record
from bench.published import Reference, index as published_index, lookup
from bench.records import ModelRows, Records, aggregate

__all__ = ["build_tables", "column_label", "fmt_cell", "fmt_gap", "fmt_number", "headline_tables", "LONG_COLUMNS", "make_table",
           "protocol_columns", "reference_values", "SECONDARY", "sources_text", "Table", "tex_escape", "to_html", "to_latex", "to_long",
           "to_markdown", "to_wide"]

if TYPE_CHECKING:
    import pandas as pd

# tables after the headline ones (and the conditional ones that follow each headline metric with a marginal twin)
SECONDARY = ("error", "error_min", "mse_extrapolation", "nfe_forward", "nfe_backward", "nfe_train", "nfe_test", "train_seconds",
             "params")


# -- published numbers ----------------------------------------------------------------------------
def reference_values(published, metric_of: dict[str, str] | str, setting: str = "") -> dict[tuple[str, str], tuple[float, float]]:
    """(model, dataset) -> (value, std) of the published rows of one ``setting`` (default: the plain
    one, "") for the metric (or each dataset's metric)."""
    out: dict[tuple[str, str], tuple[float, float]] = {}
    for (m, d, met, s), ref in published_index(published).items():
        want = metric_of if isinstance(metric_of, str) else metric_of.get(d)
        if met == want and s == setting:
            out[(m, d)] = (ref.value, ref.std)
    return out


# -- tables ---------------------------------------------------------------------------------------
@dataclass
class Table(ModelRows):
    """One table: a row per (model, variant), a column per dataset, one metric."""

    key: str
    title: str
    cells: Any  # DataFrame: AGG_COLUMNS + published, published_std, published_ref, gap, best
    rows: list[tuple[str, str]]
    datasets: list[str]
    metric: Metric = METRICS["nll"]
    digits: int = 3
    bold: bool = True
    unit: str = ""
    scale: float = 1.0  # values are divided by this for display (seconds -> hours)
    show_failed: bool = False  # "(k failed)" in cells (the headline tables)
    sources: list[str] = field(default_factory=list)  # the published rows' citations, [k] in cells when several
    headline: bool = False
    not_compared: list[str] = field(default_factory=list)  # published rows of another protocol, and what differs

    def __post_init__(self) -> None:
        self._index = {(r["model"], r["variant"], r["dataset"]): r for r in self.cells.to_dict("records")}

    def cell(self, model: str, dataset: str, variant: str = "") -> dict[str, Any] | None:
        """The cell of (model, variant) on a dataset, or None when it has no completed run."""
        return self._index.get((model, variant, dataset))

    @property
    def same_n(self) -> int | None:
        """The number of seeds every cell has, or None when cells differ (each cell then says its n)."""
        ns = set(self.cells["n"].astype(int)) if not self.cells.empty else set()
        return ns.pop() if len(ns) == 1 else None

    @property
    def published_datasets(self) -> list[str]:
        """Datasets with at least one published reference for this table's metric."""
        have = {k[2] for k, r in self._index.items() if r["published"] == r["published"]}
        return [d for d in self.datasets if d in have]


def fmt_number(x: float, digits: int) -> str:
    """A number at ``digits`` decimals (thousands separated at 0); "–" for NaN."""
    if x is None or x != x:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def fmt_cell(mean: float, std: float, n: int, digits: int, se: float = math.nan, show_n: bool = False) -> str:
    """'mean ± std (se S, n=N)': std and standard error over seeds with two or more, n when asked."""
    if mean is None or mean != mean:
        return "–"
    text = fmt_number(mean, digits)
    notes = []
    if n and n > 1 and std == std:
        text += f" ± {fmt_number(std, digits)}"
        if se == se:
            notes.append(f"se {fmt_number(se, digits)}")
    if show_n:
        notes.append(f"n={int(n)}")
    return text + (f" ({', '.join(notes)})" if notes else "")


def fmt_gap(gap: float, digits: int) -> str:
    """Ours − published with its sign; "" without a published number."""
    if gap is None or gap != gap:
        return ""
    gap = round(gap, digits) + 0.0  # no "-0.000"
    return f"{gap:+.{digits}f}" if digits else f"{gap:+,.0f}"


def make_table(agg, key: str, title: str, rows: Sequence[tuple[str, str]], datasets: Sequence[str],
               refs: Mapping[Any, Reference] | None = None, metric: Metric | None = None, digits: int | None = None,
               unit: str | None = None, scale: float = 1.0, headline: bool = False) -> Table:
    """Add the published value of the same setting (``bench.published.lookup``), the gap and the
    best-per-column flag to an aggregate (``aggregate``)."""
    import numpy as np

    metric = metric or METRICS["nll"]
    digits = metric.digits if digits is None else digits
    cells = agg.copy()
    for col in ("mean", "std", "se"):
        cells[col] = cells[col].astype(float) / scale
    sources: list[str] = []
    not_compared: list[tuple[str, Reference]] = []
    compared: list[Reference] = []
    published, published_std, which = [], [], []
    bases = cells["base_dataset"] if "base_dataset" in cells else cells["dataset"]
    for row, m, d, f, s, pm in zip(cells.to_dict("records"), cells["model"], bases, cells["field"], cells["setting"],
                                   cells["published_model"]):
        ref, factor = lookup(dict(refs or {}), m, d, f, s, pm)
        if ref is not None:  # the same definition and setting: compared only under the same protocol
            ours = Protocol(*(str(row.get(f"protocol.{k}") or "") for k in PROTOCOL_FIELDS))
            ours = dataclasses.replace(ours, **dict(metric.protocol))  # a metric of its own protocol (error_min)
            differ = differences(ours, ref.protocol, with_device=metric.family == "time")
            if differ:
                note = (f"{pm or m} on {d}: {ref.value:g} ({ref.cite}): {', '.join(differ)}", ref)
                if note not in not_compared:
                    not_compared.append(note)
                ref = None
            else:
                compared.append(ref)
        if ref is None:
            published.append(np.nan), published_std.append(np.nan), which.append(-1)
            continue
        if ref.cite not in sources:
            sources.append(ref.cite)
        published.append(ref.value * factor / scale), published_std.append(ref.std * factor / scale)
        which.append(sources.index(ref.cite))
    cells["published"], cells["published_std"], cells["published_ref"] = published, published_std, which
    cells["gap"] = cells["mean"] - cells["published"]
    if cells.empty:
        cells["best"] = []
    else:
        signed = (cells["mean"] * metric.sign).round(digits)
        top = signed.groupby(cells["dataset"]).transform("min")
        several = cells.groupby("dataset")["mean"].transform("count") > 1
        cells["best"] = np.isclose(signed, top) & several  # ties at the printed precision are all best
    present = set(zip(cells["model"], cells["variant"]))
    return Table(key, title, cells, [r for r in rows if r in present] or sorted(present),
                 [d for d in datasets if d in set(cells["dataset"])] or sorted(set(cells["dataset"])), metric,
                 digits, metric.rank, metric.unit if unit is None else unit, scale, sources=sources, headline=headline,
                 not_compared=[text for text, ref in not_compared if ref not in compared])  # met in another column


def _title(metric: Metric, agg, unit: str | None = None, note: str = "") -> str:
    """'LABEL, UNIT (NOTE): mean ± std (standard error) over N seeds per cell; lower is better'."""
    label, unit = metric.label, metric.unit if unit is None else unit
    ns = set(agg["n"].astype(int)) if not agg.empty else {0}
    n = next(iter(ns)) if len(ns) == 1 else None
    if not metric.spread:
        return f"{label}{f', {unit}' if unit and unit not in label else ''}"
    direction = metric.direction
    if n is None:
        spread = "mean ± std (se: standard error; n: seeds) per cell"
    elif n > 1:
        spread = f"mean ± std (se: standard error) over {n} seeds per cell"
    else:
        spread = "1 seed per cell"
    unit_text = f", {unit}" if unit and unit not in label else ""
    return f"{label}{unit_text}{f' ({note})' if note else ''}: {spread}; {direction} is better"


def _time_unit(values: Iterable[float]) -> tuple[str, float]:
    vals = [v for v in values if v == v]
    top = max(vals) if vals else 0.0
    if top >= 3 * 3600:
        return "hours", 3600.0
    if top >= 180:
        return "minutes", 60.0
    return "seconds", 1.0


def _headline_groups(records: Records) -> dict[str, list[str]]:
    """Headline metric -> its datasets, in the records' dataset order (one table each)."""
    groups: dict[str, list[str]] = {}
    metric_of = records.headline_metrics
    for d in records.datasets:
        if d in metric_of:
            groups.setdefault(metric_of[d], []).append(d)
    return groups


def column_label(dataset: str, protocol: Protocol, native_dims: str) -> str:
    """A report column's name: the dataset, with what sets its protocol apart from the dataset's own:
    another shape (``mnist (3x32x32)``), test images at the bin centre (``mnist (center)``)."""
    parts = [protocol.dims] if protocol.dims and protocol.dims != native_dims else []
    if protocol.dequantize == "center":
        parts.append("center")
    return f"{dataset} ({', '.join(parts)})" if parts else dataset


def _with_center_rows(done):
    """Completed records plus, for each run also tested at the bin centre (``test.<field>_center``), a
    copy whose headline is that number and whose dequantisation is ``center``: its own column."""
    import pandas as pd

    if done.empty or "headline_field" not in done:
        return done
    centre = pd.Series(float("nan"), index=done.index)
    for field in done["headline_field"].unique():  # one column read per headline field, not per record
        column = f"test.{field}_center"
        if column in done:
            rows = done["headline_field"] == field
            centre[rows] = pd.to_numeric(done.loc[rows, column], errors="coerce")
    extra = done.assign(headline=centre, centre_copy=True, **{"data_config.dequantize": "center"})
    extra = extra[extra["headline"].notna()]
    return pd.concat([done, extra], ignore_index=True) if len(extra) else done


def protocol_columns(records: Records, centre: bool = False) -> Records:
    """The records with each run's report column as its ``dataset`` (``column_label``: MNIST padded and
    tiled to 3x32x32 has bits/dim per 3,072 dimensions, not 784, and its own column), beside
    ``base_dataset`` and its protocol (``protocol.dims``, ``.dequantize``, ``.checkpoint``,
    ``.device``; ``bench.protocol``). ``centre``: runs also tested at the bin centre add their centre
    numbers as the headline of a ``(center)`` column (the headline tables)."""
    import dataclasses

    from bench.data import REGISTRY
    from bench.protocol import shape_text

    def labelled(df):
        if df.empty or "dataset" not in df:
            return df
        wanted = [c for c in df.columns if c == "dataset" or c.startswith(("data_config.", "train.restore_best",
                                                                          "env.device_"))]
        keys = list(df[wanted].astype(str).itertuples(index=False, name=None))
        unique = {k: None for k in keys}  # runs of one grid share a protocol: derive each once
        for key, row in zip(keys, df[wanted].to_dict("records")):
            if unique[key] is None:
                unique[key] = of_record(row)
        protocols = [unique[k] for k in keys]
        native = {d: shape_text(REGISTRY[d].shape) if d in REGISTRY else "" for d in set(df["dataset"])}
        labels = [column_label(d, p, native[d]) for d, p in zip(df["dataset"], protocols)]
        extra = {f"protocol.{k}": [getattr(p, k) for p in protocols] for k in PROTOCOL_FIELDS}
        return df.assign(base_dataset=df["dataset"], dataset=labels, **extra)

    completed = labelled(_with_center_rows(records.completed) if centre else records.completed)
    failed = labelled(records.failed)
    present = list(dict.fromkeys([*completed.get("dataset", []), *failed.get("dataset", [])]))
    order = [label for d in records.datasets for label in [d, *sorted(x for x in present if x.startswith(f"{d} ("))]]
    order += [x for x in present if x not in order]
    return dataclasses.replace(records, completed=completed, failed=failed, datasets=order)


def build_tables(records: Records, published=None) -> list[Table]:
    """The headline tables first (one per headline metric: nll, bpd, mse), each followed by its
    conditional twin where conditional models ran (-log p(x|y)), then each secondary table that has
    data (test error, extrapolation MSE, NFE, wall-clock, parameters). A column holds one dataset under
    one protocol (``protocol_columns``)."""
    heads = protocol_columns(records, centre=True)
    records = protocol_columns(records)
    refs = published_index(published)
    done = heads.completed
    groups = _headline_groups(heads) or {"nll": []}
    tables: list[Table] = []
    conditional: list[Table] = []
    for i, (name, datasets) in enumerate(groups.items()):
        metric = METRICS.get(name) or get_metric(name)
        in_group = done["dataset"].isin(datasets) if not done.empty else None
        agg = aggregate(heads, "headline", where=in_group)
        marginal = bool(metric.marginal) and (agg["field"] == metric.marginal).any()
        note = "conditional models: their marginal −log p(x)" if marginal else ""
        tab = make_table(agg, "headline" if i == 0 else f"headline_{name}", _title(metric, agg, note=note),
                         heads.rows, datasets, refs, metric, headline=True)
        tab.show_failed = True
        tables.append(tab)
        if marginal:
            cond = METRICS[f"{name}_conditional"]
            own = ~done["centre_copy"].fillna(False).astype(bool) if "centre_copy" in done else True
            agg = aggregate(heads, cond.source, cond.name,
                            where=in_group & (done["headline_field"] == metric.marginal) & own)
            conditional.append(make_table(agg, cond.name, _title(cond, agg),
                                          records.rows, datasets, refs, cond))
    tables += conditional
    done = records.completed
    for name in SECONDARY:
        metric = METRICS[name]
        if name in groups or done.empty or metric.source not in done:
            continue
        agg = aggregate(records, metric.source, name)
        if metric.family == "nfe":  # models without NFE (discrete flows) have nothing to show here
            agg = agg[agg["model"].isin(set(agg.loc[agg["mean"].abs() > 0, "model"]))]
        if agg.empty:
            continue
        unit, scale = (_time_unit(agg["mean"]) if metric.family == "time" else (metric.unit, 1.0))
        tables.append(make_table(agg, name, _title(metric, agg, unit), records.rows,
                                 records.datasets, refs, metric, unit=unit, scale=scale))
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


def _row_heads(tab: Table) -> list[str]:
    return ["model", "variant"] if tab.has_variants else ["model"]


def _row_cells(tab: Table, model: str, variant: str) -> list[str]:
    return [model, variant] if tab.has_variants else [model]


def _text(tab: Table, row: tuple[str, str], dataset: str, part: str, bold: tuple[str, str]) -> str:
    c = tab.cell(row[0], dataset, row[1])
    if c is None:
        return "–" if part == "value" else ""
    if part == "pub":
        if c["published"] != c["published"]:
            return ""
        marker = f" [{c['published_ref'] + 1}]" if len(tab.sources) > 1 else ""
        return fmt_cell(c["published"], c["published_std"], 2, tab.digits) + marker
    if part == "gap":
        return fmt_gap(c["gap"], tab.digits)
    if tab.metric.spread:
        text = fmt_cell(c["mean"], c["std"], c["n"], tab.digits, c["se"], show_n=tab.same_n is None)
    else:
        text = fmt_number(c["mean"], tab.digits)
    if c["failed"] and tab.show_failed:
        text += f" ({c['failed']} failed)"
    if tab.bold and c["best"]:
        text = f"{bold[0]}{text}{bold[1]}"
    return text


def _header(d: str, part: str) -> str:
    return d if part == "value" else (f"{d} pub." if part == "pub" else f"{d} Δ")


def sources_text(tab: Table) -> str:
    """Which published rows the pub. columns hold (paper, table, setting), and the published rows of
    the same metric and setting left out because their protocol differs; empty when none."""
    parts = []
    if len(tab.sources) == 1:
        parts.append(f"pub.: {tab.sources[0]}")
    elif tab.sources:
        parts.append("pub.: " + "; ".join(f"[{k + 1}] {cite}" for k, cite in enumerate(tab.sources)))
    if tab.not_compared:
        parts.append("not compared (another protocol, ours vs theirs): " + "; ".join(tab.not_compared))
    return "\n".join(parts)


def to_markdown(tab: Table, title: str | None = None) -> str:
    """A Markdown table; best per column in bold, published value and gap beside each cell, and the
    published rows' sources under it."""
    title = tab.title if title is None else title
    head = f"{title}\n\n" if title else ""
    if tab.cells.empty:
        return f"{head}(no completed runs)\n"
    cols = _columns(tab)
    lines = ["| " + " | ".join([*_row_heads(tab), *(_header(d, p) for d, p in cols)]) + " |",
             "|" + "---|" * (len(cols) + len(_row_heads(tab)))]
    for row in tab.rows:
        lines.append("| " + " | ".join([*_row_cells(tab, *row), *(_text(tab, row, d, p, ("**", "**"))
                                                                   for d, p in cols)]) + " |")
    legend = sources_text(tab)
    return head + "\n".join(lines) + "\n" + (f"\n{legend}\n" if legend else "")


_TEX_ESCAPE = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
               "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def tex_escape(text: str) -> str:
    """LaTeX's special characters escaped."""
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(text))


def _tex_text(text: str) -> str:
    return tex_escape(text).replace("±", r"$\pm$").replace("–", "--").replace("−", "$-$")


def to_latex(tab: Table) -> str:
    """A booktabs table: (model, variant) rows, datasets (with published value and gap) as columns."""
    if tab.cells.empty:
        return f"% {tex_escape(tab.title)}: no completed runs\n"
    cols = _columns(tab)
    spec = "l" * len(_row_heads(tab)) + "r" * len(cols)
    head = [*(h.capitalize() for h in _row_heads(tab)),
            *(tex_escape(d) if p == "value" else ("pub." if p == "pub" else r"$\Delta$") for d, p in cols)]
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex_text(tab.title)}}}",
             rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(head) + r" \\", r"\midrule"]
    for row in tab.rows:
        cells = []
        for d, p in cols:
            text = _tex_text(_text(tab, row, d, p, ("\x00", "\x01")))
            cells.append(text.replace("\x00", r"\textbf{").replace("\x01", "}"))
        lines.append(" & ".join([*map(tex_escape, _row_cells(tab, *row)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if tab.sources:
        lines.append(rf"\par\footnotesize {_tex_text(sources_text(tab))}")
    lines += [rf"\label{{tab:{tex_escape(tab.key)}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def to_html(tab: Table) -> str:
    """An HTML table; a published cell's title attribute names its paper, table and setting."""
    if tab.cells.empty:
        return f"<h3>{html.escape(tab.title)}</h3><p>(no completed runs)</p>"
    cols = _columns(tab)
    out = [f'<h3>{html.escape(tab.title)}</h3>', f'<table class="results" id="table-{tab.key}">', "<thead><tr>"]
    out += [f"<th>{h}</th>" for h in _row_heads(tab)]
    out += [f'<th class="{p}">{html.escape(_header(d, p))}</th>' for d, p in cols]
    out.append("</tr></thead><tbody>")
    for row in tab.rows:
        line = ["<tr>" + "".join(f"<th>{html.escape(x)}</th>" for x in _row_cells(tab, *row))]
        for d, p in cols:
            text = html.escape(_text(tab, row, d, p, ("\x00", "\x01"))).replace("\x00", "<b>").replace("\x01", "</b>")
            c = tab.cell(row[0], d, row[1]) if p == "pub" else None
            title = (f' title="{html.escape(tab.sources[c["published_ref"]])}"'
                     if c is not None and c["published_ref"] >= 0 else "")
            line.append(f'<td class="{p}"{title}>{text}</td>')
        out.append("".join(line) + "</tr>")
    out.append("</tbody></table>")
    if tab.sources:
        out.append(f'<p class="small sources">{html.escape(sources_text(tab))}</p>')
    return "\n".join(out)


def to_wide(tab: Table) -> pd.DataFrame:
    """The table as a DataFrame of strings (what the CSV of a single table holds)."""
    import pandas as pd

    cols = _columns(tab)
    data = [[_text(tab, row, d, p, ("", "")) for d, p in cols] for row in tab.rows]
    index = (pd.MultiIndex.from_tuples(tab.rows, names=["model", "variant"]) if tab.has_variants
             else pd.Index([m for m, _ in tab.rows], name="model"))
    return pd.DataFrame(data, index=index, columns=[_header(d, p) for d, p in cols])


LONG_COLUMNS = ["table", "model", "variant", "dataset", "metric", "mean", "std", "se", "n", "failed", "published",
                "published_std", "published_source", "setting", "gap", "best", "unit"]


def to_long(tables: Sequence[Table]) -> pd.DataFrame:
    """Every table's cells in long form (summary.csv): table, model, variant, dataset, metric (the
    record field), mean, std, se, n, failed, published (± std, and which row: paper, table, setting),
    gap, best, unit."""
    import pandas as pd

    frames = []
    for t in tables:
        if t.cells.empty:
            continue
        source = [t.sources[k] if k >= 0 else "" for k in t.cells["published_ref"]]
        frames.append(t.cells.assign(table=t.key, unit=t.unit, metric=t.cells["field"], published_source=source))
    if not frames:
        return pd.DataFrame(columns=LONG_COLUMNS)
    return pd.concat(frames, ignore_index=True)[LONG_COLUMNS]


def headline_tables(tables: Sequence[Table]) -> list[Table]:
    """The headline tables (one per headline metric), which `run` and `report` print."""
    return [t for t in tables if t.headline] or list(tables[:1])
