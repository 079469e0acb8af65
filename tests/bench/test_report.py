"""Reports: aggregation (means, stds, counts, newest wins), tables with bold and gaps, all outputs,
the CLI (the HTML page in headless Chromium: test_report_html.py)."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys

import pandas as pd
import pytest
from report_records import now, write_run

from bench import report
from bench.cli import main
from bench.store import scan


@pytest.fixture
def sweep(results):
    """realnvp and glow on power (3 seeds) and gas; one glow run failed, one pending, an older superseded record."""
    t = now()
    for seed, v in enumerate([-0.20, -0.10, -0.30]):
        write_run(results, "s", "realnvp", "power", seed, v, mtime=t)
    write_run(results, "s", "realnvp", "power", 0, 5.0, tag="old-config", mtime=t - 1000)  # superseded
    write_run(results, "s", "glow", "power", 0, -0.05, mtime=t)
    write_run(results, "s", "glow", "power", 1, -0.15, mtime=t)
    write_run(results, "s", "glow", "power", 2, status="diverged", error="non-finite training loss (nan) at step 7")
    write_run(results, "s", "realnvp", "gas", 0, -8.0, mtime=t)
    write_run(results, "s", "glow", "gas", 0, status="pending")
    return results


def test_aggregation_means_stds_counts_and_newest_wins(sweep):
    rec = report.prepare(scan(sweep, "s"), expected=[(m, "", d, s) for m in ("realnvp", "glow") for d in ("power", "gas")
                                                      for s in (0, 1, 2)])
    agg = report.aggregate(rec).set_index(["model", "dataset"])
    r = agg.loc[("realnvp", "power")]
    assert r["mean"] == pytest.approx(-0.2) and r["std"] == pytest.approx(statistics.stdev([-0.2, -0.1, -0.3]))
    assert r["n"] == 3 and r["failed"] == 0  # the 5.0 of the older config is superseded
    assert r["se"] == pytest.approx(r["std"] / 3 ** 0.5)  # the standard error over the 3 seeds
    g = agg.loc[("glow", "power")]
    assert g["mean"] == pytest.approx(-0.1) and g["n"] == 2 and g["failed"] == 1
    assert rec.superseded == 1
    assert ("glow", "", "gas", 0) in rec.missing and ("realnvp", "", "gas", 2) in rec.missing
    assert ("glow", "", "power", 2) not in rec.missing  # failed is not missing: it is listed as failed
    counts = report.run_counts(rec).set_index(["model", "variant", "dataset"])
    assert counts.loc[("glow", "", "power")].tolist() == [2, 1, 0]
    assert counts.loc[("glow", "", "gas")].tolist() == [0, 0, 3]
    # the grid given without variants reads the same
    assert report.prepare(scan(sweep, "s"), expected=[("glow", "gas", 0)]).missing[0] == ("glow", "", "gas", 0)


def test_newest_record_per_run_id_wins(results, tmp_path):
    write_run(results, "s", "realnvp", "power", 0, 1.0, mtime=now() - 100)
    other = tmp_path / "copy"
    shutil.copytree(results, other)
    write_run(other, "s", "realnvp", "power", 0, 2.0, mtime=now())  # same run_id, rewritten later
    df = pd.concat([scan(results, "s"), scan(other, "s")], ignore_index=True)
    assert len(df) == 2 and df["run_id"].nunique() == 1
    rec = report.prepare(df)
    assert rec.completed["headline"].tolist() == [2.0]


def test_table_bold_best_published_value_and_gap(sweep):
    rec = report.prepare(scan(sweep, "s"))
    tables = report.build_tables(rec, report.load_published())
    head = tables[0]
    md = report.to_markdown(head)
    header = md.splitlines()[2]
    assert header == "| model | gas | gas pub. | gas Δ | power | power pub. | power Δ |"
    realnvp = next(line for line in md.splitlines() if line.startswith("| realnvp"))
    glow = next(line for line in md.splitlines() if line.startswith("| glow"))
    sd, sd2 = statistics.stdev([-0.2, -0.1, -0.3]), statistics.stdev([-0.05, -0.15])
    # realnvp is best on power (-0.200 < -0.100): bold; published -0.17 ± 0.01; gap -0.030; cells differ in
    # their number of seeds, so each says its n, and the standard error where n > 1
    assert f"**-0.200 ± {sd:.3f} (se {sd / 3 ** 0.5:.3f}, n=3)** | -0.170 ± 0.010 | -0.030 |" in realnvp
    assert f"-0.100 ± {sd2:.3f} (se {sd2 / 2 ** 0.5:.3f}, n=2) (1 failed) | -0.170 ± 0.010 | +0.070 |" in glow
    assert "| -8.000 (n=1) | -8.330 ± 0.140 | +0.330 |" in realnvp  # single model on gas: nothing to beat, no bold
    assert md.splitlines()[0].startswith("test NLL −log p(x), nats: mean ± std (se: standard error; n: seeds)")
    assert "pub.: FFJORD (Grathwohl et al., ICLR 2019), Table 2" in md  # which rows the pub. columns hold
    assert "| – |" in glow  # glow on gas is pending
    tex = report.to_latex(head)
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\textbf{-0.200 $\pm$ " in tex and r"$\Delta$" in tex
    html = report.to_html(head)
    assert "<b>-0.200 ± " in html and 'class="gap">+0.070<' in html
    assert '<td class="pub" title="FFJORD (Grathwohl et al., ICLR 2019), Table 2">-0.170 ± 0.010</td>' in html


def test_secondary_tables_and_every_output_file(results, tmp_path):
    for seed in range(2):
        write_run(results, "s", "ffjord", "cifar10", seed, 3.5 + 0.1 * seed, metric="bpd", nfe=500 + 10 * seed,
                  seconds=7200 * 4, params=1_000_000, extra_test={"error": 20.0 + seed})
        write_run(results, "s", "rnode", "cifar10", seed, 3.4, metric="bpd", nfe=300, seconds=7200,
                  params=1_000_000, extra_test={"error": 25.0})
    write_run(results, "s", "realnvp", "cifar10", 0, 3.6, metric="bpd", nfe=0.0, extra_test={"error": 30.0})
    rep = report.write_report(scan(results, "s"), "s", tmp_path / "reports", figures=False)
    keys = [t.key for t in rep.tables]
    assert keys == ["headline", "error", "nfe_forward", "nfe_backward", "nfe_train", "nfe_test", "train_seconds",
                    "params"]
    assert "realnvp" in rep.tables[0].models and all("realnvp" not in t.models for t in rep.tables[2:6])
    head = rep.tables[0]
    # RNODE's 3.398 is at the bin centre, ours with uniform noise: listed under the table, no gap
    assert head.cell("rnode", "cifar10")["published"] != head.cell("rnode", "cifar10")["published"]
    assert head.cell("rnode", "cifar10")["best"]
    assert any(n.startswith("rnode on cifar10: 3.398") and "dequantize uniform vs center" in n for n in head.not_compared)
    wall = next(t for t in rep.tables if t.key == "train_seconds")
    assert wall.unit == "hours" and wall.cell("ffjord", "cifar10")["mean"] == pytest.approx(8.0)
    assert wall.cell("rnode", "cifar10")["published"] != wall.cell("rnode", "cifar10")["published"]  # other hardware
    assert any(n.startswith("rnode on cifar10: 31.84") and "vs unknown GPU" in n for n in wall.not_compared)
    for key in ("markdown", "table", "latex", "csv", "headline_csv", "runs_csv", "parquet", "records_parquet", "html"):
        assert rep.files[key].exists() and rep.files[key].stat().st_size > 0, key
    long = pd.read_parquet(rep.files["parquet"])
    assert set(long["table"]) == set(keys) and len(long) == 2 * len(keys) + 4  # realnvp: in 4 tables, not the NFE ones
    assert pd.read_parquet(rep.files["records_parquet"])["run_id"].nunique() == 5
    assert pd.read_csv(rep.files["csv"]).equals(pd.read_csv(rep.files["csv"]))  # plain CSV, readable
    md = rep.files["markdown"].read_text()
    assert "## NFE per training step, forward solve" in md and "## trainable parameters" in md
    assert "| ffjord | 1,000,000 |" in md  # a constant: no spread


def test_partial_sweep_says_what_is_missing(sweep, tmp_path):
    rep = report.write_report(scan(sweep, "s"), "s", tmp_path / "r", figures=False,
                              expected=[("realnvp", "power", 3)])
    md = rep.files["markdown"].read_text()
    assert "run(s) missing" in md and "realnvp/power/seed3" in md and "glow/gas/seed0" in md
    assert "1 run(s) failed" in md and "non-finite training loss" in md
    page = rep.files["html"].read_text()
    assert "failed runs (1)" in page and "non-finite training loss (nan)" in page and "testhost" in page


def test_cli_report_writes_everything_and_prints_the_table(sweep, tmp_path, capsys):
    assert main(["report", "s", "--results", str(sweep), "--out", str(tmp_path / "rep")]) == 0
    out = capsys.readouterr().out
    assert "| model | gas | gas pub. | gas Δ | power | power pub. | power Δ |" in out
    assert "missing" in out and "failed" in out
    folder = tmp_path / "rep" / "s"
    for name in ("report.md", "tables.tex", "summary.csv", "summary.parquet", "index.html", "figures/bars.png",
                 "figures/bars.pdf"):
        assert (folder / name).exists(), name


def test_modules_import_only_the_store():
    """The report's modules load no torch, pandas or plotting library until used, and of the models'
    package only its light registry and declarations (the settings' types: bench.fields)."""
    code = ("import sys; import bench.report, bench.plots, bench.check, bench.history, bench.stats, bench.variants;"
            "print('HEAVY', sorted(m for m in ('torch', 'pandas', 'seaborn', 'matplotlib') if m in sys.modules));"
            "print('MODELS', sorted(m for m in sys.modules if m.startswith('baselines')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "MODELS ['baselines', 'baselines.constraints', 'baselines.registry']" in out


def test_published_nfe_is_compared_with_the_same_count(results, tmp_path):
    """InfoCNF's Table 1 NFE counts forward and backward evaluations of a training step together: it
    sits beside our forward + backward count, never beside the forward count alone."""
    write_run(results, "s", "ccnf", "cifar10", 0, 3.6, metric="bpd", nfe=300.0,  # forward 300, backward 600
              setting="small batch (900)")
    rep = report.write_report(scan(results, "s"), "s", tmp_path / "reports", figures=False)
    tables = {t.key: t for t in rep.tables}
    total = tables["nfe_train"].cell("ccnf", "cifar10")
    assert total["mean"] == pytest.approx(900.0) and total["published"] == pytest.approx(924.12)
    assert tables["nfe_forward"].cell("ccnf", "cifar10")["published"] != tables["nfe_forward"].cell("ccnf", "cifar10")["published"]
    assert "per training step, forward + backward" in tables["nfe_train"].title
    assert "per test batch" in tables["nfe_test"].title


def test_report_shows_the_suites_differences_under_the_table(results, write_suite, tmp_path, capsys):
    suite = write_suite("""
        name: s
        datasets: [moons]
        models: [realnvp]
        seeds: [0]
        train: {max_steps: 5}
        differences:
          - "Adam at lr 1e-3 instead of the paper's
             Adamax."
          - Ten times fewer steps.
        """, "s")
    write_run(results, "s", "realnvp", "moons", 0, 1.2)
    assert main(["report", str(suite), "--results", str(results), "--out", str(tmp_path / "rep"), "--no-figures"]) == 0
    out = capsys.readouterr().out
    lines = ["- Adam at lr 1e-3 instead of the paper's Adamax.", "- Ten times fewer steps."]
    assert all(line in out for line in lines) and out.index("realnvp") < out.index(lines[0])
    md = (tmp_path / "rep" / "s" / "report.md").read_text()
    assert md.index("## test") < md.index(lines[0]) < md.index(lines[1])
    page = (tmp_path / "rep" / "s" / "index.html").read_text()
    assert "<li>Adam at lr 1e-3 instead of the paper&#x27;s Adamax.</li>" in page
