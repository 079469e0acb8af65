"""Figures: every figure is produced (PNG and PDF) from a small results folder, and reads as an image:
labelled ticks, legends clear of the data, every label whole, no text over other text."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from figure_checks import draw, tick_labels, visible_axes
from report_records import write_run

from bench import plots, report
from bench.cli import main
from bench.store import scan


def _written(figs, name):
    png = figs[name]
    return png.exists() and png.stat().st_size > 1000 and png.with_suffix(".pdf").stat().st_size > 1000


def test_every_curve_and_bar_figure(results, tmp_path):
    for model, base, nfe in (("ffjord", 1.0, 20.0), ("infocnf", 0.9, 14.0)):
        for dataset in ("moons", "rings"):
            for seed in range(2):
                write_run(results, "p", model, dataset, seed, base + 0.05 * seed, nfe=nfe + seed, tolerances=True)
    rec = report.prepare(scan(results, "p"))
    figs = plots.all_figures(rec, report.build_tables(rec), tmp_path / "figs")
    assert set(figs) == {"bars", "metric_vs_time", "metric_vs_nfe", "nfe_over_training", "tolerances"}
    for name in figs:
        assert _written(figs, name), name
    hist = plots.load_histories(rec)
    assert len(hist) == 2 * 2 * 2 * 4 and hist["nfe_total"].max() == pytest.approx(3 * 21 * 100)
    for fig in (plots.bars(rec), plots.metric_vs(hist, "nfe_total", "cumulative NFE", {}, rec.datasets),
                plots.nfe_over_training(hist, rec.datasets),
                plots.tolerances(hist, ["train_tol_block0", "train_tol_block1"], rec.datasets)):
        assert draw(fig).clean() == [], fig.axes[0].get_ylabel()
        plt_close(fig)


def test_no_nfe_no_tolerances_no_empty_figures(results, tmp_path):
    write_run(results, "p", "realnvp", "moons", 0, 1.0)
    rec = report.prepare(scan(results, "p"))
    figs = plots.all_figures(rec, report.build_tables(rec), tmp_path / "figs")
    assert set(figs) == {"bars", "metric_vs_time"}  # a discrete flow has no NFE curves


def test_toy_density_heat_maps_and_samples_from_a_real_run(write_suite, results, tmp_path):
    """The data first (a histogram; test points), then a row per model; no text over another; the
    i-ResNet's heat map from its exact log-det, the same grid on every evaluation."""
    import torch

    path = write_suite(textwrap.dedent("""
        datasets:
          8gaussians: {n_train: 1000, n_val: 200, n_test: 500}
          moons: {n_train: 1000, n_val: 200, n_test: 500}
        models: {realnvp: {n_layers: 2, hidden: 16}, iresnet: {n_blocks: 2, hidden: 16, eval_series_terms: 3}}
        seeds: [0]
        train: {max_steps: 20, batch_size: 100, eval_every: 10}
    """), name="toy")
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--set",
                 "train.eval_every=5", "--set", "train.batch_size=100"]) == 0  # --set: long row labels
    rec = report.prepare(scan(results, "toy"))
    figs = plots.all_figures(rec, report.build_tables(rec), tmp_path / "figs")
    assert {"toy_density", "toy_samples", "bars", "metric_vs_time"} <= set(figs)
    assert _written(figs, "toy_density") and _written(figs, "toy_samples")
    for name, fig in plots.toy_figures(rec, resolution=40, n_samples=300).items():
        shown = draw(fig)
        grid = fig.axes
        assert [ax.get_title() for ax in grid[:2]] == ["8gaussians", "moons"], name
        assert grid[0].get_ylabel().startswith("data") and len(grid) == 2 * 3
        assert "eval_every=5" in grid[2].get_ylabel().replace("\n", " "), grid[2].get_ylabel()  # wrapped, whole
        assert all(ax.images or ax.collections for ax in grid), name  # data and both models drawn
        assert shown.clean() == [], name
        plt_close(fig)
    by_model = rec.completed.set_index("model")["path"]
    model, data = plots.load_model(by_model[by_model.index.str.startswith("iresnet")].iloc[0])
    assert data.info.shape == (2,) and model.sample(5).shape == (5, 2)
    lo, hi = [-3.0, -3.0], [3.0, 3.0]
    grid = plots.density_grid(model, lo, hi, 30)
    np.testing.assert_array_equal(grid, plots.density_grid(model, lo, hi, 30))  # deterministic
    mesh = torch.tensor([[-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0]])
    np.testing.assert_allclose(grid[[0, 0, -1], [0, -1, 0]], model.log_prob_exact(mesh).double().numpy(), rtol=1e-6)
    with torch.no_grad():
        series = model.log_prob(torch.from_numpy(np.float32([[0.3, -0.2]] * 2)))
    assert series[0] != series[1]  # the stochastic estimate the heat map no longer uses


def test_image_sample_grids(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.uniform(0, 1, size=(12, 1, 8, 8))
    logit = rng.normal(0, 3, size=(10, 3, 8, 8))
    assert plots.to_images(logit).min() >= 0 and plots.to_images(logit).max() <= 1
    np.testing.assert_allclose(plots.to_images(grey), grey)
    for name, x in (("grey", grey), ("colour", logit)):
        png = plots.save(plots.sample_grid(x, name, ncol=4), tmp_path, f"samples_{name}")
        assert png.stat().st_size > 500 and png.with_suffix(".pdf").exists()


def test_figures_drawn_by_workers_started_before_the_records_are_read(results, tmp_path):
    """`flowbench report` forks its figure workers first (they load seaborn while records are read):
    in a fresh process (no torch) they are used, and draw the same figures as drawing them here."""
    import json
    import subprocess
    import sys

    for model, nfe in (("ffjord", 20.0), ("infocnf", 14.0)):
        for seed in range(2):
            write_run(results, "p", model, "moons", seed, 1.0 + 0.1 * seed, nfe=nfe, tolerances=True)
    code = ("import json, sys; from bench import plots, report; from bench.store import scan; "
            "pool = plots.start_workers(2); "
            f"rec = report.prepare(scan({str(results)!r}, 'p')); "
            f"figs = plots.all_figures(rec, report.build_tables(rec), {str(tmp_path / 'pool')!r}, pool=pool); "
            "pool.close(); pool.join(); "
            "print(json.dumps({'pool': type(pool).__name__, 'figs': {k: str(v) for k, v in figs.items()}, "
            "'torch': 'torch' in sys.modules}))")
    out = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert out["pool"] == "Pool" and not out["torch"]
    rec = report.prepare(scan(results, "p"))
    here = plots.all_figures(rec, report.build_tables(rec), tmp_path / "here", workers=1)
    assert set(out["figs"]) == set(here) == {"bars", "metric_vs_time", "metric_vs_nfe", "nfe_over_training",
                                             "tolerances"}
    from pathlib import Path

    for name, png in out["figs"].items():
        assert Path(png).stat().st_size > 1000 and Path(png).with_suffix(".pdf").stat().st_size > 1000, name


# -- the figures as images: extents from the renderer (tests/bench/figure_checks.py) --------------------
LONG = "hidden=256 n_layers=12 lr=0.0003 schedule=cosine"  # a (model, variant) label of 60 characters


def _history(models, datasets=("moons", "rings", "8gaussians"), steps=6, tol=None, backward=None):
    """A small synthetic metrics history, as load_histories returns it (one run per model and dataset)."""
    import pandas as pd

    rows = []
    for k, model in enumerate(models):
        for d in datasets:
            for i in range(1, steps + 1):
                fwd = 10.0 + k + i
                row = dict(model=model, dataset=d, seed=0, run_id=f"{model}/{d}", step=25 * i, seconds=2.0 * i,
                           val_headline=3.0 - 0.1 * i + 0.05 * k, nfe_forward=fwd,
                           nfe_backward=(backward or {}).get(model, 2 * fwd), nfe_total=3 * fwd * i)
                if tol is not None:
                    row["train_tol_block0"] = tol[0] + (tol[1] - tol[0]) * (i - 1) / (steps - 1)
                rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("span", [(3.3e-5, 4.8e-5), (2.0e-4, 9.0e-3), (0.011, 0.019)])
def test_tolerance_axis_shows_labelled_values_whatever_their_span(span):
    """Within one decade the axis is linear with every tick's value written out; across decades it is
    logarithmic; either way at least three distinct labelled ticks, read back as the plotted range."""

    fig = plots.tolerances(_history(["ffjord"], ("moons",), tol=span), ["train_tol_block0"], ["moons"])
    shown = draw(fig)
    ax = fig.axes[0]
    labels = [t.get_text() for t in tick_labels(ax, "y")]
    assert len(set(labels)) >= 3, labels
    assert ax.get_yscale() == ("log" if span[1] >= 10 * span[0] else "linear")
    if ax.get_yscale() == "linear":  # the labels are the values themselves, no offset text to combine
        values = [float(t) for t in labels]
        assert min(values) >= span[0] * 0.8 and max(values) <= span[1] * 1.2, labels
        assert not ax.yaxis.get_offset_text().get_text()
    assert shown.clean() == []


def test_legends_sit_below_the_panels_and_cover_nothing():
    models = [f"m{k} ({LONG})" for k in range(5)]
    hist = _history(models, backward={models[0]: 0.0})
    for fig in (plots.metric_vs(hist, "seconds", "training seconds", {}, ["moons", "rings", "8gaussians"], models),
                plots.nfe_over_training(hist, ["moons", "rings", "8gaussians"], models)):
        shown = draw(fig)
        assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
        legend = shown.box(fig.legends[0])
        assert legend.y1 <= min(shown.box(ax.patch).y0 for ax in fig.axes)  # below every panel
        assert shown.clean() == []
        plt_close(fig)


def test_all_zero_backward_nfe_lines_are_left_out():
    models = ["ffjord", "rnode"]
    fig = plots.nfe_over_training(_history(models, ("moons",), backward={"ffjord": 0.0}), ["moons"], models)
    entries = [t.get_text() for t in fig.legends[0].get_texts()]
    assert entries == ["ffjord forward", "rnode forward", "rnode backward"]
    assert len(fig.axes[0].get_lines()) == 3  # no flat line at zero under the others
    plt_close(fig)


def test_every_bar_carries_its_full_label(results):
    variants = [f"{LONG} v{k}" for k in range(9)] + [""]
    datasets = ["moons", "rings", "8gaussians", "checkerboard", "pinwheel"]
    for k, variant in enumerate(variants):
        for d in datasets:
            write_run(results, "p", "realnvp", d, 0, 1.0 + 0.1 * k, variant=variant, history=1)
    rec = report.prepare(scan(results, "p"))
    fig = plots.bars(rec)
    shown = draw(fig)
    expected = [f"realnvp ({v})" if v else "realnvp" for v in variants]
    assert len(visible_axes(fig)) == len(datasets)
    for ax in visible_axes(fig):
        assert sorted(t.get_text() for t in tick_labels(ax, "y")) == sorted(expected)
    assert shown.clean() == []  # no label cut by the edge, over a neighbouring panel or over another label
    plt_close(fig)


def test_sweep_figure_with_its_note_and_legend(results):
    for lr in (0.01, 0.001, 0.0001):
        for model in ("realnvp", "glow"):
            for seed in range(2):
                write_run(results, "g", model, "moons", seed, 1.0 + lr + 0.01 * seed, variant=f"lr={lr:g} {LONG}",
                          sweep={"train.lr": lr}, history=1)
    rec = report.prepare(scan(results, "g"))
    fig = plots.sweep(rec, "train.lr")
    shown = draw(fig)
    assert fig.axes[0].get_xscale() == "log" and len(fig.legends) == 1
    assert shown.clean() == []
    plt_close(fig)


def plt_close(fig):
    import matplotlib.pyplot as plt

    plt.close(fig)
