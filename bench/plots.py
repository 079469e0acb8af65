"""seaborn figures of a suite's records, each written as PNG and PDF.

- ``metric_vs_time`` / ``metric_vs_nfe``: the validation headline metric against training
  wall-clock and against cumulative NFE (forward + backward), one line per run, colour per model
  (and variant: a row of the tables);
- ``nfe_over_training``: forward and backward NFE per step over training (CNFs);
- ``tolerances``: learned solver tolerances over training (``train_tol_*`` columns of metrics.jsonl);
- ``bars``: the test headline metric per model (and variant), mean with a ± std error bar over seeds, per dataset;
- ``sweep_<key>``: for a swept setting (``grid:`` or ``--set``), the test headline metric against its
  values, mean ± std over seeds, one line per model and the other swept values;
- ``toy_density`` / ``toy_samples``: 2-D density heat maps and samples, the data first, then each
  model (toy data); a model's exact deterministic density (``log_prob_exact``) where it has one;
- ``samples_<model>_<dataset>``: image sample grids.

Figures use constrained layout with one legend below the panels, so no text overlaps other text,
a neighbouring panel or the figure's edge, and no legend covers data.

Only ``bench.store`` is imported at module level; matplotlib and seaborn load in ``all_figures``
and torch, ``baselines`` and ``bench.data`` only in the functions that rebuild trained models.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.models import load_model

__all__ = ["all_figures", "bars", "density_grid", "image_figures", "load_histories", "metric_vs", "nfe_over_training",
           "sample_grid", "save", "start_workers", "sweep", "sweep_points", "swept_keys", "to_images", "tolerances",
           "toy_figures"]

MAX_RUNS_PER_GROUP = 3  # curves: at most this many seeds per (model, dataset), to keep plots legible and fast
MAX_PANELS = 12  # datasets per figure
MAX_TOY_MODELS = 8


_THEMED = False


def _setup() -> Any:
    """seaborn, with its theme applied once per process (and the Agg backend where there is no display)."""
    global _THEMED
    import matplotlib

    if not _THEMED and not os.environ.get("DISPLAY") and not os.environ.get("MPLBACKEND"):
        matplotlib.use("Agg")
    import seaborn as sns

    if not _THEMED:
        sns.set_theme(style="whitegrid", context="paper")
        _THEMED = True
    return sns


def save(fig: Any, out_dir: Path, name: str) -> Path:
    """Write ``name.png`` and ``name.pdf``; returns the PNG's path and closes the figure."""
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    fig.savefig(png, dpi=100)  # the layout (constrained) runs with this draw; no bbox_inches pass
    if fig.get_layout_engine() is not None:
        fig.set_layout_engine("none")  # the PDF keeps the PNG's layout: one layout pass, not two
    fig.savefig(out_dir / f"{name}.pdf")
    plt.close(fig)
    return png


def _grid(n: int, size: tuple[float, float] = (3.6, 2.8), max_cols: int = 4) -> tuple[Any, list[Any]]:
    """``n`` panels of ``size`` inches, up to ``max_cols`` a row, under constrained layout (titles, tick
    and axis labels, outside legends and figure-level text laid out without overlaps)."""
    import matplotlib.pyplot as plt

    cols = max(1, min(n, max_cols))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(size[0] * cols, size[1] * rows), squeeze=False,
                             layout="constrained")
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _legend_below(fig: Any, handles: Sequence[Any], labels: Sequence[str]) -> Any:
    """One legend for the whole figure, below the panels (constrained layout keeps it off the data,
    the titles and the axis labels), in as many columns as the figure's width holds; the figure grows
    by the legend's height (and width, for a label wider than it) so the panels keep their size."""
    renderer = fig.canvas.get_renderer()
    kw = dict(loc="outside lower center", fontsize="small", frameon=False)
    probe = fig.legend(handles, labels, ncols=1, **kw)
    one = probe.get_window_extent(renderer)  # one column: the widest entry, every row
    probe.remove()
    w, h = fig.get_size_inches()
    spacing = 0.3 * fig.dpi  # between columns (columnspacing) with room to spare
    w = max(w, one.width / fig.dpi + 0.3)
    ncols = max(1, min(len(labels), int((0.95 * w * fig.dpi + spacing) // (one.width + spacing))))
    rows = math.ceil(len(labels) / ncols)
    fig.set_size_inches(w, h + one.height / fig.dpi * rows / len(labels) + 0.15)
    return fig.legend(handles, labels, ncols=ncols, **kw)


# -- histories ------------------------------------------------------------------------------------
def load_histories(records: Any, per_group: int = MAX_RUNS_PER_GROUP) -> Any:
    """metrics.jsonl of up to ``per_group`` completed runs per (model, dataset), as one DataFrame.

    Adds ``model`` (the table row: model and variant), ``dataset``, ``seed``, ``run_id``,
    ``val_headline`` (the validation value of the run's headline: a conditional model's marginal)
    and ``nfe_total`` (cumulative forward + backward NFE).
    """
    import pandas as pd

    done = records.completed
    if done.empty or "path" not in done:
        return pd.DataFrame()
    chosen = done.sort_values("seed").groupby(["model", "variant", "dataset"], sort=False).head(per_group)
    rows: list[dict[str, Any]] = []  # one frame built at the end: per-run frames and concat cost more
    columns = ["row", "dataset", "seed", "run_id", "path", "headline_metric", "headline_field"]
    for row in chosen[columns].itertuples(index=False):
        try:
            with open(os.path.join(row.path, "metrics.jsonl"), "rb") as f:
                lines = [json.loads(line) for line in f if line.strip()]
        except (OSError, ValueError):
            continue
        keys = (f"val_{row.headline_field}", f"val_{row.headline_metric}")  # a conditional model's marginal first
        for line in lines:
            value = next((line[k] for k in keys if isinstance(line.get(k), (int, float))), math.nan)
            line.update(model=row.row, dataset=row.dataset, seed=row.seed, run_id=row.run_id, val_headline=value)
        rows.extend(lines)
    if not rows:
        return pd.DataFrame()
    hist = pd.DataFrame(rows)
    for col in ("nfe_forward_total", "nfe_backward_total", "nfe_forward", "nfe_backward", "seconds", "step"):
        hist[col] = pd.to_numeric(hist[col], errors="coerce").fillna(0.0) if col in hist else 0.0
    hist["nfe_total"] = hist["nfe_forward_total"] + hist["nfe_backward_total"]
    return hist


def _palette(models: Sequence[str]) -> dict[str, Any]:
    sns = _setup()
    return dict(zip(models, sns.color_palette(n_colors=max(1, len(models)))))


def _per_dataset(frame: Any, datasets: Sequence[str], draw: Callable[[Any, Any, str], None],
                 ylabel_of: Callable[[str], str], xlabel: str | Callable[[str], str],
                 size: tuple[float, float] = (3.6, 2.8), max_cols: int = 4) -> Any:
    """One panel per dataset; ``draw(ax, frame, dataset)`` fills it; one legend for the figure, below
    the panels (a legend inside a panel covers its lines)."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    names = [d for d in datasets if d in set(frame["dataset"])][:MAX_PANELS]
    fig, axes = _grid(len(names), size, max_cols)
    groups = dict(tuple(frame.groupby("dataset", sort=False)))
    for ax, d in zip(axes, names):
        draw(ax, groups[d], d)
        ax.set_title(d, y=1.0)  # a fixed position: automatic title placement measures every tick label
        ax.set_xlabel(xlabel(d) if callable(xlabel) else xlabel)
        ax.set_ylabel(ylabel_of(d))
        if ax.get_xscale() == "linear" and not isinstance(ax.xaxis.get_major_locator(), FixedLocator):
            ax.xaxis.set_major_locator(MaxNLocator(4))  # a log axis or categories keep their own ticks
        if ax.get_yscale() == "linear" and not isinstance(ax.yaxis.get_major_locator(), FixedLocator):
            ax.yaxis.set_major_locator(MaxNLocator(5))
        if ax.get_legend() is not None:
            ax.get_legend().remove()
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels and not lab.startswith("_"):
                handles.append(h)
                labels.append(lab)
    if handles and axes:
        _legend_below(fig, handles, labels)
    return fig


def _lines(ax: Any, frame: Any, x: str, y: str, colors: dict[str, Any], style: str | None = None) -> None:
    """One line per run (and per ``style`` value: solid, dashed, dotted), coloured by model."""
    dashes = ["-", "--", ":", "-."]
    styles = list(dict.fromkeys(frame[style])) if style else [None]
    for (model, run), g in frame.groupby(["model", "run_id"], sort=False):
        for k, value in enumerate(styles):
            part = g if value is None else g[g[style] == value]
            if part.empty:
                continue
            label = model if value is None else f"{model} {value}"
            ax.plot(part[x].to_numpy(), part[y].to_numpy(), dashes[k % 4], color=colors[model], linewidth=1.1,
                    marker="o" if value is None else None, markersize=2.5, label=label, alpha=0.85)


def _models(hist: Any, models: Sequence[str] | None) -> list[str]:
    """Every model of the suite in order (so a model has the same colour in every figure), then others."""
    order = list(models or [])
    return order + sorted(set(hist["model"]) - set(order))


def metric_vs(hist: Any, x: str, xlabel: str, metrics: dict[str, str], datasets: Sequence[str],
              models: Sequence[str] | None = None) -> Any:
    """Validation headline metric against ``x`` (seconds or nfe_total), one line per run, colour per model."""
    colors = _palette(_models(hist, models))
    return _per_dataset(hist, datasets, lambda ax, f, d: _lines(ax, f, x, "val_headline", colors),
                        lambda d: f"val {metrics.get(d, 'metric')}", xlabel)


def nfe_over_training(hist: Any, datasets: Sequence[str], models: Sequence[str] | None = None) -> Any:
    """Forward (solid) and backward (dashed) NFE per training step, over steps (models with NFE only);
    a run's backward line is left out when it is zero throughout (direct backpropagation counts none)."""
    colors = _palette(_models(hist, models))
    cnf = hist.groupby("model")[["nfe_forward", "nfe_backward"]].transform("max").sum(axis=1) > 0
    hist = hist[cnf]
    long = hist.melt(id_vars=["model", "dataset", "run_id", "step"], value_vars=["nfe_forward", "nfe_backward"],
                     var_name="pass", value_name="nfe")
    long["pass"] = long["pass"].str.replace("nfe_", "", regex=False)
    counted = long["nfe"].abs().groupby([long["run_id"], long["pass"]]).transform("max") > 0
    long = long[(long["pass"] == "forward") | counted]
    return _per_dataset(long, datasets, lambda ax, f, d: _lines(ax, f, "step", "nfe", colors, "pass"),
                        lambda d: "NFE per step", "training step")


def tolerances(hist: Any, columns: Sequence[str], datasets: Sequence[str], models: Sequence[str] | None = None) -> Any:
    """Learned solver tolerances (``tol_*`` / ``train_tol_*`` columns) over training, log scale."""
    long = hist.melt(id_vars=["model", "dataset", "run_id", "step"], value_vars=list(columns), var_name="tolerance",
                     value_name="value").dropna(subset=["value"])
    long["tolerance"] = long["tolerance"].str.replace(r"^(train_)?tol_", "", regex=True)
    colors = _palette(_models(hist, models))

    def draw(ax: Any, frame: Any, d: str) -> None:
        _lines(ax, frame, "step", "value", colors, "tolerance")
        _value_axis(ax.yaxis, frame["value"].to_numpy())

    return _per_dataset(long, datasets, draw, lambda d: "tolerance", "training step")


def _value_axis(axis: Any, values: Any) -> None:
    """Labelled ticks for positive values of any spread: a log axis where they span a decade or more
    (minor ticks labelled too while the span is under two decades), else a linear axis whose every tick
    carries its value in full (``3.4e-5``: no offset text to miss, no log axis without a labelled tick)."""
    import numpy as np
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, MaxNLocator

    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() <= 0:
        return
    if values.max() >= 10 * values.min():
        (axis.axes.set_yscale if axis.axis_name == "y" else axis.axes.set_xscale)("log")
        axis.set_major_locator(LogLocator(numticks=6))
        axis.set_minor_locator(LogLocator(subs=(2.0, 5.0), numticks=12))
        # the 2 and 5 ticks carry labels while the view spans at most two decades, none beyond
        axis.set_minor_formatter(LogFormatterSciNotation(labelOnlyBase=False, minor_thresholds=(2.0, 2.0)))
        return
    axis.set_major_locator(MaxNLocator(4))
    axis.set_major_formatter(_full_value_formatter())


def _full_value_formatter() -> Any:
    """Tick labels in one style for the whole axis (scientific for small or large values: ``3.25e-5``)
    with the fewest digits that tell the ticks apart."""
    from matplotlib.ticker import Formatter

    class FullValue(Formatter):
        code, digits = "g", 2

        def set_locs(self, locs: Sequence[float]) -> None:
            super().set_locs(locs)
            top = max((abs(v) for v in locs), default=1.0)
            self.code = "e" if top and (top < 1e-2 or top >= 1e5) else "g"
            for self.digits in range(0 if self.code == "e" else 1, 8):
                if len({f"{v:.{self.digits}{self.code}}" for v in locs}) == len(locs):
                    break

        def __call__(self, x: float, pos: int | None = None) -> str:
            text = f"{x:.{self.digits}{self.code}}"
            mantissa, e, exponent = text.partition("e")
            return f"{mantissa}e{int(exponent)}" if e else text

    return FullValue()


def _rows(records: Any) -> list[str]:
    """The tables' rows (model and variant) as figure labels, in the tables' order."""
    from bench.variants import row_label

    return [row_label(m, v) for m, v in records.rows]


def bars(records: Any) -> Any:
    """Test headline metric per model (and variant): mean over seeds with ± std error bars, one panel per dataset."""
    done = records.completed.dropna(subset=["headline"])
    metrics = records.headline_metrics
    agg = done.groupby(["dataset", "row"], sort=False)["headline"].agg(["mean", "std", "count"]).reset_index()
    agg = agg.rename(columns={"row": "model"})
    agg["std"] = agg["std"].fillna(0.0)
    models = [m for m in _rows(records) if m in set(agg["model"])]
    palette = _palette(models)

    def draw(ax: Any, frame: Any, d: str) -> None:  # horizontal bars: long (model, variant) labels stay legible
        frame = frame.set_index("model").loc[[m for m in models if m in set(frame["model"])]].reset_index()
        y = range(len(frame))
        ax.barh(y, frame["mean"], color=[palette[m] for m in frame["model"]], height=0.75)
        ax.errorbar(frame["mean"], y, xerr=frame["std"], fmt="none", ecolor="0.2", capsize=3, linewidth=1)
        ax.set_yticks(list(y), list(frame["model"]), fontsize=BAR_LABEL_SIZE)
        ax.invert_yaxis()  # the tables' order, top down
        lo, hi = (frame["mean"] - frame["std"]).min(), (frame["mean"] + frame["std"]).max()
        pad = 0.25 * (hi - lo) + 1e-3 * (abs(hi) + 1)
        ax.set_xlim(lo - pad, hi + pad)  # metrics can be negative: no zero baseline

    # every bar gets its label: panels as tall as their rows need and as wide as the longest label
    # (measured in the label font) plus the bars, so constrained layout never squeezes or cuts a label
    per_panel = max((len(set(g["model"])) for _, g in agg.groupby("dataset")), default=1)
    label_in = max((_text_inches(m, BAR_LABEL_SIZE) for m in models), default=0.5)
    size = (label_in + 3.0, max(2.8, 0.24 * per_panel + 1.2))
    fig = _per_dataset(agg, records.datasets, draw, lambda d: "", lambda d: f"test {metrics.get(d, '')} (mean ± std)",
                       size=size, max_cols=max(1, min(4, int(18 // size[0]))))
    _spread_note(fig)
    return fig


BAR_LABEL_SIZE = 7  # points


def _text_inches(text: str, fontsize: float) -> float:
    """Width of one line of text in the current font, in inches (from its glyph outlines)."""
    from matplotlib.textpath import TextPath

    return float(TextPath((0, 0), text, size=fontsize).get_extents().width) / 72.0


def _spread_note(fig: Any) -> None:
    """What the error bars mean: the title of the legend below the panels where there is one (a line of
    its own there would share the legend's place), else a line under everything (constrained layout
    reserves it)."""
    if fig.legends:
        fig.legends[0].set_title(_SPREAD_NOTE, prop={"size": 7})
        fig.legends[0].get_title().set_color("0.35")
        w, h = fig.get_size_inches()
        fig.set_size_inches(w, h + 0.15)  # the title's line: the panels keep their height
    else:
        fig.supxlabel(_SPREAD_NOTE, fontsize=7, color="0.35", x=0.01, ha="left")


_SPREAD_NOTE = "error bars: ± sample standard deviation over seeds (none with one seed)"


def sweep_points(records: Any, key: str) -> Any:
    """The test headline per (dataset, line, value of the swept ``key``): mean, std and n over seeds;
    a line is a model with the other swept values (and named variant) of its rows."""
    from bench.variants import fmt_value, row_label

    done = records.completed.dropna(subset=["headline"])
    col = f"sweep.{key}"
    done = done[done[col].notna()] if col in done else done.iloc[:0]
    values = [fmt_value(v) if isinstance(v, (list, tuple)) else v for v in done[col]]

    def others(variant: str, value: Any) -> str:  # the label without this key's part (short or full name)
        own = {f"{key.rpartition('.')[2]}={fmt_value(value)}", f"{key}={fmt_value(value)}"}
        return " ".join(p for p in variant.split() if p not in own)

    lines = [row_label(m, others(v, x)) for m, v, x in zip(done["model"], done["variant"], values)]
    frame = done.assign(line=lines, value=values)
    agg = frame.groupby(["dataset", "line", "value"], sort=False)["headline"].agg(["mean", "std", "count"])
    return agg.rename(columns={"count": "n"}).reset_index()


def sweep(records: Any, key: str) -> Any:
    """The test headline against the values of a swept setting, mean ± std over seeds, one panel per
    dataset, one line per model (and the other swept values); a log axis for positive values that
    span a factor of ten or more, categories for values that are not numbers."""
    import numpy as np
    import pandas as pd

    agg = sweep_points(records, key)
    metrics = records.headline_metrics
    numeric = pd.to_numeric(agg["value"], errors="coerce")
    categorical = numeric.isna().any()
    if categorical:
        order = list(dict.fromkeys(agg["value"].astype(str)))
        agg = agg.assign(x=[order.index(v) for v in agg["value"].astype(str)])
    else:
        agg = agg.assign(x=numeric)
    log = not categorical and (agg["x"] > 0).all() and agg["x"].max() >= 10 * agg["x"].min()
    colors = _palette(list(dict.fromkeys(agg["line"])))

    def draw(ax: Any, frame: Any, d: str) -> None:
        for line, g in frame.groupby("line", sort=False):
            g = g.sort_values("x")
            ax.errorbar(g["x"].to_numpy(), g["mean"].to_numpy(), yerr=np.nan_to_num(g["std"].to_numpy()),
                        marker="o", markersize=3, capsize=3, linewidth=1.1, color=colors[line], label=line)
        if log:
            ax.set_xscale("log")
        if categorical:
            ax.set_xticks(range(len(order)), order)

    fig = _per_dataset(agg, records.datasets, draw, lambda d: f"test {metrics.get(d, '')} (mean ± std)", key)
    _spread_note(fig)
    return fig


def swept_keys(records: Any) -> list[str]:
    """Settings the records sweep (``sweep.*`` columns) with two or more values among completed runs."""
    done = records.completed
    return [c[6:] for c in done.columns if c.startswith("sweep.") and done[c].dropna().astype(str).nunique() > 1]


def _safe(name: str) -> str:
    """A figure's file name from a label (model names, variants, dotted keys)."""
    import re

    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name).strip("_")


# -- trained models (torch) -------------------------------------------------------------------------
def _first_runs(records: Any, kind: str) -> list[tuple[str, str, str]]:
    """(row: model and variant, dataset, run dir) of the lowest-seed completed run with model.pt per
    row and dataset, for one data kind."""
    from bench.data import REGISTRY

    done = records.completed
    if done.empty or "path" not in done:
        return []
    out = []
    for (m, d), group in done.sort_values("seed").groupby(["row", "dataset"], sort=False):
        entry = REGISTRY.get(d)
        if entry is None or entry.kind != kind:
            continue
        for p in group["path"]:
            if os.path.exists(os.path.join(p, "model.pt")):
                out.append((m, d, p))
                break
    return out


TOY_LABEL_CHARS = 18  # row labels wrap at this many characters: a (model, variant) label stays within its row


def density_grid(model: Any, lo: Sequence[float], hi: Sequence[float], resolution: int) -> Any:
    """log p of ``model`` on a ``resolution`` x ``resolution`` grid over [lo, hi] (rows y, columns x),
    as a numpy array. A model with an exact deterministic density (``log_prob_exact``: the i-ResNet's
    log-det from the full Jacobian rather than its stochastic power series) is evaluated with it, so the
    heat map shows the density, not the estimator's per-point noise."""
    import numpy as np
    import torch

    gx, gy = np.linspace(lo[0], hi[0], resolution), np.linspace(lo[1], hi[1], resolution)
    mesh = torch.from_numpy(np.stack(np.meshgrid(gx, gy), -1).reshape(-1, 2))
    ref = next(model.parameters(), None)
    mesh = mesh.to(dtype=ref.dtype if ref is not None else torch.float32)
    log_prob = getattr(model, "log_prob_exact", None) or model.log_prob
    with torch.no_grad():
        return log_prob(mesh).reshape(resolution, resolution).double().cpu().numpy()


def _toy_range(x: Any) -> tuple[Any, Any]:
    """The plotted square of a 2-D data set: its central 99% with a 15% margin."""
    import numpy as np

    lo, hi = np.percentile(x, 0.5, axis=0), np.percentile(x, 99.5, axis=0)
    pad = 0.15 * (hi - lo)
    return lo - pad, hi + pad


def toy_figures(records: Any, resolution: int = 120, n_samples: int = 2000) -> dict[str, Any]:
    """Density heat maps and samples on each 2-D toy dataset: one column per dataset, the data first
    (a histogram of the training set; test points), then one row per model (and variant)."""
    import textwrap

    import matplotlib.pyplot as plt
    import numpy as np
    import torch

    runs = _first_runs(records, "toy")
    if not runs:
        return {}
    models = [m for m in _rows(records) if any(r[0] == m for r in runs)][:MAX_TOY_MODELS]
    datasets = [d for d in records.datasets if any(r[1] == d for r in runs)][:MAX_PANELS]
    _setup()
    shape = (len(models) + 1, len(datasets))
    size = (2.3 * shape[1] + 0.6, 2.3 * shape[0] + 0.5)
    fig_d, ax_d = plt.subplots(*shape, figsize=size, squeeze=False, layout="constrained")
    fig_s, ax_s = plt.subplots(*shape, figsize=size, squeeze=False, layout="constrained")
    for axes in (ax_d, ax_s):
        for ax in axes.ravel():
            ax.set_xticks([]), ax.set_yticks([])

    def note(i: int, j: int, text: str) -> None:
        for ax in (ax_d[i, j], ax_s[i, j]):
            ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=7, transform=ax.transAxes)

    ranges: dict[str, tuple[Any, Any]] = {}
    drawn: set[tuple[int, int]] = set()
    for m, d, path in runs:
        if m not in models or d not in datasets:
            continue
        i, j = models.index(m) + 1, datasets.index(d)
        drawn.add((i, j))
        try:
            model, data = load_model(path)
            if d not in ranges:  # the data row, from the first run that loads on this dataset
                x = data.test.x[:5000].double().numpy()
                lo, hi = ranges[d] = _toy_range(x)
                many = data.train.x[:50000].double().numpy()  # the larger split: a less grainy histogram
                hist, _, _ = np.histogram2d(many[:, 0], many[:, 1], bins=50, density=True,
                                            range=[[lo[0], hi[0]], [lo[1], hi[1]]])
                ax_d[0, j].imshow(hist.T, origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap="magma",
                                  aspect="auto")
                ax_s[0, j].scatter(x[:n_samples, 0], x[:n_samples, 1], s=1, alpha=0.4, color="0.25", rasterized=True)
                ax_s[0, j].set_xlim(lo[0], hi[0]), ax_s[0, j].set_ylim(lo[1], hi[1])
                drawn.add((0, j))
            lo, hi = ranges[d]
            logp = density_grid(model, lo, hi, resolution)
            with torch.no_grad():
                torch.manual_seed(0)
                samples = model.sample(n_samples).detach().double().cpu().numpy()
            ax_d[i, j].imshow(np.exp(logp), origin="lower", extent=(lo[0], hi[0], lo[1], hi[1]), cmap="magma",
                              aspect="auto")
            ax_s[i, j].scatter(samples[:, 0], samples[:, 1], s=1, alpha=0.4, color="C0", rasterized=True)
            ax_s[i, j].set_xlim(lo[0], hi[0]), ax_s[i, j].set_ylim(lo[1], hi[1])
        except Exception as err:  # a model that cannot be rebuilt leaves a note, not a broken report
            note(i, j, f"cannot load:\n{type(err).__name__}")
    for i in range(shape[0]):
        for j in range(shape[1]):
            if (i, j) not in drawn:
                note(i, j, "no run" if i else "no data")
    for axes, data_label in ((ax_d, "data (histogram of the training set)"), (ax_s, "data (test points)")):
        for j, d in enumerate(datasets):
            axes[0, j].set_title(d, fontsize=9)
        for i, label in enumerate([data_label] + models):
            axes[i, 0].set_ylabel("\n".join(textwrap.wrap(label, TOY_LABEL_CHARS)), fontsize=8)
    fig_d.suptitle("density on the test data's range", fontsize=10)
    fig_s.suptitle(f"{n_samples} samples per model", fontsize=10)
    return {"toy_density": fig_d, "toy_samples": fig_s}


def to_images(samples: Any) -> Any:
    """Model-space samples (N, C, H, W) -> images in [0, 1]: logit-space values go through a sigmoid."""
    import numpy as np

    x = np.asarray(samples, dtype="float64")
    if x.min() < -0.05 or x.max() > 1.05:
        x = 1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))
    return np.clip(x, 0.0, 1.0)


def sample_grid(samples: Any, title: str = "", ncol: int = 8) -> Any:
    """A grid of images (N, C, H, W) in [0, 1] (grey for one channel)."""
    import matplotlib.pyplot as plt
    import numpy as np

    x = to_images(samples)
    n, c, h, w = x.shape
    ncol = min(ncol, n)
    nrow = math.ceil(n / ncol)
    canvas = np.ones((nrow * (h + 2) + 2, ncol * (w + 2) + 2, 3))
    for k in range(n):
        r, col = divmod(k, ncol)
        img = np.repeat(x[k], 3, 0) if c == 1 else x[k, :3]
        canvas[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + col * (w + 2):2 + col * (w + 2) + w] = img.transpose(1, 2, 0)
    width = max(4.0, canvas.shape[1] / 40)
    fig, ax = plt.subplots(figsize=(width, width * canvas.shape[0] / canvas.shape[1] + 0.4))
    ax.imshow(canvas, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def image_figures(records: Any, n: int = 32) -> dict[str, Any]:
    """A sample grid per (model, dataset) of image data, from each pair's lowest-seed completed run."""
    import torch

    out = {}
    for m, d, path in _first_runs(records, "image")[:MAX_PANELS]:
        try:
            model, _ = load_model(path)
            with torch.no_grad():
                torch.manual_seed(0)
                x = model.sample(n).detach().float().cpu().numpy()
        except Exception:
            continue
        if x.ndim == 4:
            out[_safe(f"samples_{m}_{d}")] = sample_grid(x, f"{m} on {d}")
    return out


# -- everything -------------------------------------------------------------------------------------
def _warm() -> None:
    """Worker initialiser: load what drawing needs (pandas, matplotlib, seaborn: ~2 s) before work comes."""
    import pandas  # noqa: F401  (the figures' data arrive as DataFrames)

    _setup()


def start_workers(workers: int | None = None) -> Any:
    """A pool of forked processes (``bench.forking``) that load the plotting stack now, while the
    caller reads records, and draw the figures later; None where forking does not pay or is not
    safe. Close it with ``pool.close(); pool.join()``."""
    from bench.forking import fork_pool

    return fork_pool(workers, initializer=_warm)


def _draw(name: str, build: Callable[..., Any], args: tuple, out_dir: Path) -> Path:
    """Build one figure and write it (runs in a worker or here)."""
    _setup()
    return save(build(*args), out_dir, name)


def _render_all(jobs: dict[str, tuple[Callable[..., Any], tuple]], out_dir: Path, workers: int | None = None,
                pool: Any = None) -> dict[str, Path]:
    """Build and save figures: in ``pool`` when given, else in a pool forked now where the platform
    allows and there are cores to spare, else here; drawing the panels' text is what costs, and it
    runs one figure per core. ``jobs``: name -> (module-level builder, its picklable arguments)."""
    from bench.forking import MAX_WORKERS, usable_cores

    items = [(name, build, args, out_dir) for name, (build, args) in jobs.items()]
    if pool is not None and items:
        return dict(zip(jobs, pool.starmap(_draw, items, chunksize=1)))
    workers = min(len(items), usable_cores(), MAX_WORKERS) if workers is None else workers
    own = start_workers(workers) if len(items) > 1 else None
    if own is None:
        return {name: _draw(*item) for name, item in zip(jobs, items)}
    try:
        return dict(zip(jobs, own.starmap(_draw, items, chunksize=1)))
    finally:
        own.close()
        own.join()


def _slim(records: Any) -> Any:
    """What the bar chart reads of the records, small enough to send to a worker process."""
    from dataclasses import replace

    cols = [c for c in records.completed.columns if c in ("model", "variant", "row", "dataset", "seed", "headline",
                                                          "headline_metric") or c.startswith("sweep.")]
    return replace(records, df=records.df.iloc[:0], completed=records.completed[cols], failed=records.failed.iloc[:0])


def all_figures(records: Any, tables: Sequence[Any], out_dir: str | os.PathLike, models: bool = True,
                workers: int | None = None, pool: Any = None) -> dict[str, Path]:
    """Every figure the records allow, written as PNG + PDF under ``out_dir``; name -> PNG path.

    ``models=False`` skips the figures that rebuild trained models (toy densities, image samples);
    ``workers`` caps the processes that draw the record figures (default: up to 4 cores; 1: serial);
    ``pool`` (from ``start_workers``) draws them in processes that have the plotting stack loaded.
    """
    out_dir = Path(out_dir)
    if records.completed.empty:
        return {}
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics, datasets, order = records.headline_metrics, records.datasets, _rows(records)
    jobs: dict[str, tuple[Callable[..., Any], tuple]] = {}
    if records.completed["headline"].notna().any():
        slim = _slim(records)
        jobs["bars"] = (bars, (slim,))
        for key in swept_keys(records):
            jobs[_safe(f"sweep_{key}")] = (sweep, (slim, key))
    hist = load_histories(records)
    if not hist.empty and hist["val_headline"].notna().any():
        jobs["metric_vs_time"] = (metric_vs, (hist, "seconds", "training seconds", metrics, datasets, order))
        cnf = hist[hist.groupby("model")["nfe_total"].transform("max") > 0]  # models that count NFE
        if not cnf.empty:
            jobs["metric_vs_nfe"] = (metric_vs, (cnf, "nfe_total", "cumulative NFE (forward + backward)", metrics,
                                                 datasets, order))
    if not hist.empty and ((hist["nfe_forward"] > 0) | (hist["nfe_backward"] > 0)).any():
        jobs["nfe_over_training"] = (nfe_over_training, (hist, datasets, order))
    # learned tolerances: the models' ``tol_*`` training stats, logged by the harness as ``train_tol_*``
    tol_cols = [c for c in hist.columns if c.startswith(("tol_", "train_tol_"))] if not hist.empty else []
    if tol_cols:
        jobs["tolerances"] = (tolerances, (hist, tol_cols, datasets, order))
    written = _render_all(jobs, out_dir, workers, pool)
    if models and "path" in records.completed:
        has_weights = any(os.path.exists(os.path.join(p, "model.pt")) for p in
                          records.completed.drop_duplicates(["model", "dataset"])["path"])
        if has_weights:
            for name, fig in {**toy_figures(records), **image_figures(records)}.items():
                written[name] = save(fig, out_dir, name)
    return written
