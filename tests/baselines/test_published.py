"""baselines/published.csv: every number of the papers' tables, one row each, in consistent units."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest

PATH = Path(__file__).resolve().parents[2] / "baselines" / "published.csv"
UNITS = {"nll": "nats", "bpd": "bits/dim", "error": "%", "nfe": "evaluations", "nfe_train": "evaluations",
         "train_hours": "hours", "seconds_per_batch": "seconds", "rel_error_reduction": "%", "rel_nfe_reduction": "%"}
RANGES = {"bpd": (0.5, 8.0), "error": (0.0, 100.0), "nfe": (1.0, 10_000.0), "nfe_train": (1.0, 10_000.0),
          "train_hours": (1.0, 1000.0), "nll": (-200.0, 30.0), "seconds_per_batch": (0.0, 10.0),
          "rel_error_reduction": (0, 100), "rel_nfe_reduction": (0, 100)}


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with open(PATH, newline="") as f:
        return list(csv.DictReader(f))


def find(rows, model, dataset, metric, setting=""):
    hits = [r for r in rows if (r["model"], r["dataset"], r["metric"], r["setting"]) == (model, dataset, metric, setting)]
    assert len(hits) == 1, (model, dataset, metric, setting, hits)
    r = hits[0]
    return float(r["value"]), (float(r["std"]) if r["std"] else None)


def test_columns_and_no_duplicates(rows):
    assert list(rows[0]) == ["model", "dataset", "metric", "unit", "value", "std", "setting", "source", "table", "notes",
                             "dims", "dequantize", "checkpoint", "device"]
    keys = [(r["model"], r["dataset"], r["metric"], r["setting"]) for r in rows]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
    for r in rows:
        assert r["model"] and r["dataset"] and r["source"] and r["table"], r
        assert r["model"] == r["model"].lower() and r["dataset"] == r["dataset"].lower()


def test_units_are_consistent(rows):
    for r in rows:
        assert r["unit"] == UNITS[r["metric"]], r
        value = float(r["value"])
        lo, hi = RANGES[r["metric"]]
        assert math.isfinite(value) and lo <= value <= hi, r
        if r["std"]:
            assert 0 <= float(r["std"]) < abs(value) + 2, r
    # images are in bits/dim, never nats; tabular in nats, never bits/dim
    for r in rows:
        if r["dataset"] in ("mnist", "cifar10", "imagenet64"):
            assert r["metric"] != "nll", r
        if r["dataset"] in ("power", "gas", "hepmass", "miniboone", "bsds300"):
            assert r["metric"] == "nll", r


def test_known_values(rows):
    assert find(rows, "realnvp", "power", "nll") == (-0.17, 0.01)
    assert find(rows, "glow", "miniboone", "nll") == (11.35, 0.07)
    assert find(rows, "ffjord", "bsds300", "nll") == (-157.40, 0.19)
    assert find(rows, "ffjord", "hepmass", "nll", "poster") == (15.26, None)
    assert find(rows, "maf_ddsf", "miniboone", "nll") == (8.86, None)
    assert find(rows, "glow", "cifar10", "bpd") == (3.35, None)
    assert find(rows, "rnode", "cifar10", "bpd", "longer training") == (3.370, None)
    assert find(rows, "iresnet", "cifar10", "bpd") == (3.45, None)
    assert find(rows, "iresnet", "mnist", "bpd") == (1.06, None)  # the paper's Table 4: the default row
    assert find(rows, "iresnet", "mnist", "bpd", "RNODE talk table") == (1.05, None)
    iresnet_mnist = [r for r in rows if (r["model"], r["dataset"], r["metric"]) == ("iresnet", "mnist", "bpd")]
    assert [(r["value"], r["source"]) for r in iresnet_mnist] == [
        ("1.06", "Behrmann et al. 2019 (i-ResNet)"), ("1.05", "Finlay et al. 2020 (How to train your neural ODE)")]
    assert find(rows, "resflow", "imagenet64", "bpd") == (3.757, None)
    assert find(rows, "rnode", "cifar10", "train_hours") == (31.84, None)
    assert find(rows, "ffjord", "mnist", "train_hours", "vanilla, re-run by RNODE authors") == (68.47, None)
    assert find(rows, "infocnf", "cifar10", "nfe_train", "small batch (900); learned tolerances") == (775.98, 56.73)
    assert find(rows, "ccnf", "cifar10", "error", "large batch (8000)") == (38.14, 1.14)
    assert find(rows, "infocnf", "cifar10", "bpd", "large batch (8000); fixed tolerances") == (3.674, 0.022)
    assert find(rows, "iresnet", "unspecified", "seconds_per_batch", "with spectral norm and log-det") == (1.88, None)


def test_coverage_of_the_papers_tables(rows):
    tabular = {(r["model"], r["dataset"]) for r in rows if r["metric"] == "nll" and r["setting"] == ""}
    for model in ("realnvp", "glow", "ffjord", "made", "maf", "tan", "maf_ddsf"):
        for dataset in ("power", "gas", "hepmass", "miniboone", "bsds300"):
            assert (model, dataset) in tabular
    infocnf = [r for r in rows if r["table"] == "Table 1" and r["source"].startswith("Nguyen")]
    assert len(infocnf) == 6 * 3  # 6 settings x (error, bpd, nfe_train)
    images = {(r["model"], r["dataset"]) for r in rows if r["metric"] == "bpd"}
    for model in ("realnvp", "glow", "ffjord", "rnode", "iresnet"):
        assert (model, "mnist") in images and (model, "cifar10") in images


def test_infocnf_nfe_rows_are_per_training_iteration_forward_and_backward(rows):
    """InfoCNF's Table 1 NFE counts one training iteration's forward and backward solves together:
    its rows use nfe_train (compared with the harness's forward + backward per step), never plain nfe,
    and say so."""
    table1 = [r for r in rows if r["table"] == "Table 1" and r["source"].startswith("Nguyen")]
    nfe_rows = [r for r in table1 if r["metric"].startswith("nfe")]
    assert len(nfe_rows) == 6 and {r["metric"] for r in nfe_rows} == {"nfe_train"}
    assert all("forward and backward" in r["notes"] for r in nfe_rows)
    assert {(r["model"], r["setting"]) for r in nfe_rows} == {
        (r["model"], r["setting"]) for r in table1 if r["metric"] == "error"}


def test_the_report_reads_the_rows_of_the_default_setting():
    """Without a suite setting, the report compares with the rows whose setting is empty: the paper's own."""
    from bench.report import load_published, reference_values

    refs = reference_values(load_published(), {"mnist": "bpd", "power": "nll"})
    assert refs[("ffjord", "mnist")][0] == 0.99  # the paper's own number, not the RNODE re-run
    assert refs[("iresnet", "mnist")][0] == 1.06  # i-ResNet's own Table 4, not the RNODE talk's 1.05
    assert refs[("ffjord", "power")] == (-0.46, 0.01)
