"""Like with like: a conditional model's headline is its marginal NLL, time series get their own
table, published numbers only of the same setting (InfoCNF's large batch), variants as rows."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml
from report_records import write_run, write_spec_run

from bench import report
from bench.cli import _suite_context, main
from bench.spec import SUITES_DIR, load_suite, read_yaml
from bench.store import scan

# what suites/infocnf-cifar10-large.yaml declares (or, until it does, what this test adds to it)
LARGE_BATCH = {
    "setting": "large batch (8000)",
    "overrides": [
        {"match": {"model": "infocnf"}, "setting": "large batch (8000); fixed tolerances"},
        {"match": {"model": "infocnf_learned"}, "setting": "large batch (8000); learned tolerances",
         "published_model": "infocnf"},
    ],
}


def _large_batch_suite(tmp_path):
    raw = read_yaml(SUITES_DIR / "infocnf-cifar10-large.yaml")
    if "setting" not in raw:
        raw = {**raw, "setting": LARGE_BATCH["setting"],
               "overrides": [*(raw.get("overrides") or []), *LARGE_BATCH["overrides"]]}
    path = tmp_path / "infocnf-cifar10-large.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_conditional_models_headline_is_their_marginal_nll(results, tmp_path):
    """CCNF's conditional NLL (2.655) beside unconditional flows would win the column; its marginal
    (3.367) is what the headline holds, and the conditional NLL and error get their own tables."""
    write_run(results, "s", "realnvp", "8gaussians", 0, 3.294)
    write_run(results, "s", "ffjord", "8gaussians", 0, 3.235, nfe=30.0)
    write_run(results, "s", "ccnf", "8gaussians", 0, 2.655, nfe=28.0, extra_test={"nll_marginal": 3.367, "error": 9.5})
    write_run(results, "s", "latent_ode", "spirals", 0, 0.387, metric="mse", nfe=25.0,
              extra_test={"mse_extrapolation": 0.61})
    rep = report.write_report(scan(results, "s"), "s", tmp_path / "rep", figures=False)
    tables = {t.key: t for t in rep.tables}
    head = tables["headline"]
    assert head.cell("ccnf", "8gaussians")["mean"] == pytest.approx(3.367)
    assert head.cell("ccnf", "8gaussians")["field"] == "nll_marginal" and not head.cell("ccnf", "8gaussians")["best"]
    assert head.cell("ffjord", "8gaussians")["best"] and head.datasets == ["8gaussians"]
    assert "conditional models: their marginal" in head.title
    cond = tables["nll_conditional"]
    assert cond.models == ["ccnf"] and cond.cell("ccnf", "8gaussians")["mean"] == pytest.approx(2.655)
    assert "−log p(x|y)" in cond.title
    assert tables["error"].models == ["ccnf"]
    mse = tables["headline_mse"]  # time series: a table of their own
    assert mse.datasets == ["spirals"] and mse.unit == "MSE" and "spirals" not in head.datasets
    assert tables["mse_extrapolation"].cell("latent_ode", "spirals")["mean"] == pytest.approx(0.61)
    assert [t.key for t in report.headline_tables(rep.tables)] == ["headline", "headline_mse"]
    md = rep.files["table"].read_text()  # table.md: every headline table, nothing else
    assert "| ccnf | 3.367 |" in md and "0.3870" in md and "2.655" not in md
    long = pd.read_csv(rep.files["csv"], keep_default_na=False)
    row = long[(long["table"] == "headline") & (long["model"] == "ccnf")].iloc[0]
    assert row["metric"] == "nll_marginal" and row["unit"] == "nats"


def test_infocnf_large_batch_suite_shows_the_large_batch_published_numbers(tmp_path):
    suite_path = _large_batch_suite(tmp_path)
    suite = load_suite(suite_path)
    results = tmp_path / "results"
    nfe = {"ccnf": (220.0, 440.0), "infocnf": (190.0, 390.0), "infocnf_learned": (195.0, 395.0)}
    for spec in suite.runs(check_models=False):
        record = {**spec.to_dict(), "setting": ""}  # a record written before settings: the suite's current ones apply
        write_spec_run(results, record, {"bpd": 3.7 + 0.01 * spec.seed, "bpd_marginal": 3.9, "error": 35.0},
                       nfe[spec.model])
    assert main(["report", str(suite_path), "--results", str(results), "--out", str(tmp_path / "rep"),
                 "--no-figures"]) == 0
    labels = _suite_context(str(suite_path)).labels  # what `flowbench report` passes: the suite's settings by run id
    tables = {t.key: t for t in report.write_report(scan(results, suite.name), suite.name, tmp_path / "rep2",
                                                    figures=False, labels=labels).tables}
    want = {"ccnf": (3.71, 38.14, 660.71), "infocnf": (3.674, 31.64, 582.22), "infocnf_learned": (3.638, 27.88, 589.69)}
    for model, (bpd, error, nfe_train) in want.items():
        assert tables["bpd_conditional"].cell(model, "cifar10")["published"] == pytest.approx(bpd)
        # Table 1's error is the lowest over training; ours is the best-test-bits/dim checkpoint's
        assert tables["error"].cell(model, "cifar10")["published"] != tables["error"].cell(model, "cifar10")["published"]
        assert any(f"on cifar10: {error:g} (" in n and "checkpoint best_test vs lowest" in n
                   for n in tables["error"].not_compared), tables["error"].not_compared
        assert tables["nfe_train"].cell(model, "cifar10")["published"] == pytest.approx(nfe_train)
    assert tables["headline"].published_datasets == []  # nobody published a marginal bits/dim
    md = (tmp_path / "rep" / suite.name / "report.md").read_text()
    assert "Nguyen et al. (InfoCNF), Table 1, setting: large batch (8000); learned tolerances" in md
    tables_md = md[:md.index("## NFE per training step, forward solve")]
    for small_batch in ("3.511", "33.09", "924.12", "3.568", "20.99", "775.98"):
        assert small_batch not in md, small_batch  # never another setting's number
    assert "[3]" in tables_md  # three rows (one per setting) beside one column: each cell says which


def test_a_published_number_needs_the_same_setting_and_unit(results, tmp_path):
    write_run(results, "s", "ccnf", "cifar10", 0, 3.6, metric="bpd", extra_test={"error": 35.0})  # no setting
    write_run(results, "s", "realnvp", "power", 0, -0.2)
    csv = tmp_path / "published.csv"
    csv.write_text("model,dataset,metric,unit,value,std,setting,source,table,notes\n"
                   "realnvp,power,nll,bits/dim,-0.17,0.01,,A paper,Table 2,a wrong unit\n"
                   "ccnf,cifar10,error,%,38.14,1.14,large batch (8000),B paper,Table 1,\n")
    rep = report.write_report(scan(results, "s"), "s", tmp_path / "rep", figures=False, published_path=csv)
    tables = {t.key: t for t in rep.tables}
    assert tables["headline"].published_datasets == [] and tables["error"].published_datasets == []


def test_variants_are_rows_of_the_report_and_the_pinned_file(results, tmp_path, capsys):
    for lr, shift in ((0.001, 0.0), (0.0005, 0.3)):
        for seed in range(2):
            for model in ("realnvp", "ffjord"):
                write_run(results, "g", model, "moons", seed, 1.0 + shift + 0.01 * seed, variant=f"lr={lr:g}",
                          sweep={"train.lr": lr}, nfe=10.0 if model == "ffjord" else 0.0)
    rep = report.write_report(scan(results, "g"), "g", tmp_path / "rep", figures=True)
    head = rep.tables[0]
    assert head.rows == [("ffjord", "lr=0.0005"), ("ffjord", "lr=0.001"), ("realnvp", "lr=0.0005"),
                         ("realnvp", "lr=0.001")]
    assert head.cell("realnvp", "moons", "lr=0.0005")["mean"] == pytest.approx(1.305)
    md = report.to_markdown(head)
    assert "| model | variant | moons |" in md and "| realnvp | lr=0.001 | **1.005 ± 0.007 (se 0.005)** |" in md
    assert {"bars", "sweep_train.lr"} <= set(rep.figures)
    assert main(["pin", "g", "--results", str(results), "--pinned", str(tmp_path / "pinned")]) == 0
    assert "4 (model, variant, dataset) rows (seeds 0 1)" in capsys.readouterr().out
    pinned = pd.read_csv(tmp_path / "pinned" / "g.csv", keep_default_na=False)
    nll = pinned[pinned["quantity"] == "nll"]
    assert sorted(zip(nll["model"], nll["variant"])) == [("ffjord", "lr=0.0005"), ("ffjord", "lr=0.001"),
                                                         ("realnvp", "lr=0.0005"), ("realnvp", "lr=0.001")]
    assert set(nll["seeds"]) == {"0 1"}
    assert main(["check", "g", "--results", str(results), "--pinned", str(tmp_path / "pinned")]) == 0


def test_sweep_points_group_seeds_by_the_swept_value(results):
    from bench import plots

    for lr in (0.01, 0.001):
        for big in (False, True):
            for seed in range(3):
                write_run(results, "g", "realnvp", "moons", seed, 1.0 + lr * 10 + (0.5 if big else 0.0) + 0.01 * seed,
                          variant=f"lr={lr:g}" + (" big" if big else ""), sweep={"train.lr": lr})
    rec = report.prepare(scan(results, "g"))
    assert plots.swept_keys(rec) == ["train.lr"]
    points = plots.sweep_points(rec, "train.lr").set_index(["line", "value"])
    assert set(points.index.get_level_values("line")) == {"realnvp", "realnvp (big)"}
    row = points.loc[("realnvp (big)", 0.01)]
    assert row["mean"] == pytest.approx(1.61) and row["n"] == 3 and row["std"] == pytest.approx(0.01)
