"""Figures: every figure is produced (PNG and PDF) from a small results folder."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
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


def test_no_nfe_no_tolerances_no_empty_figures(results, tmp_path):
    write_run(results, "p", "realnvp", "moons", 0, 1.0)
    rec = report.prepare(scan(results, "p"))
    figs = plots.all_figures(rec, report.build_tables(rec), tmp_path / "figs")
    assert set(figs) == {"bars", "metric_vs_time"}  # a discrete flow has no NFE curves


def test_toy_density_heat_maps_and_samples_from_a_real_run(write_suite, results, tmp_path):
    path = write_suite(textwrap.dedent("""
        datasets: {8gaussians: {n_train: 1000, n_val: 200, n_test: 500}}
        models: {realnvp: {n_layers: 2, hidden: 16}}
        seeds: [0]
        train: {max_steps: 20, batch_size: 100, eval_every: 10}
    """), name="toy")
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    rec = report.prepare(scan(results, "toy"))
    figs = plots.all_figures(rec, report.build_tables(rec), tmp_path / "figs")
    assert {"toy_density", "toy_samples", "bars", "metric_vs_time"} <= set(figs)
    assert _written(figs, "toy_density") and _written(figs, "toy_samples")
    model, data = plots.load_model(rec.completed["path"].iloc[0])
    assert data.info.shape == (2,) and model.sample(5).shape == (5, 2)


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
