"""Every number carries its protocol (bench/protocol.py): a column holds one protocol, and a published
number gets a gap and takes part in the bold only beside a cell of its own protocol."""

from __future__ import annotations

import math

import pytest
from report_records import write_spec_run

from bench import report
from bench.protocol import Protocol, differences, of_record
from bench.published import index, load_published
from bench.spec import load_suite, suite_names
from bench.store import scan

SUITE = """
datasets: {mnist: {n_val: 0}}
models: {realnvp: {}, glow: {}, rnode: {}}
seeds: [0]
variants:
  native: {}
  padded: {data: {pad: 2, channels: 3}}
  centre: {data: {dequantize: center}}
"""


def test_mixed_protocols_get_their_own_columns_gaps_and_bold(write_suite, tmp_path):
    """MNIST native (784 dims), padded and tiled (3,072 dims), and tested at the bin centre: three
    columns. Glow's published 1.05 (3x32x32) meets the padded column only, RNODE's 0.973 (centre) the
    centre column only, RealNVP's 1.06 (1x28x28, noise) the native column only."""
    suite = load_suite(write_suite(SUITE, "p"))
    values = {("realnvp", "native"): 1.10, ("glow", "native"): 1.00, ("rnode", "native"): 0.98, ("realnvp", "padded"): 1.02,
              ("glow", "padded"): 1.04, ("rnode", "padded"): 1.20, ("realnvp", "centre"): 1.30,
              ("glow", "centre"): 1.25, ("rnode", "centre"): 0.99}
    results = tmp_path / "results"
    for spec in suite.runs(check_models=False):
        write_spec_run(results, spec.to_dict(), {"bpd": values[(spec.model, spec.variant)]})
    rep = report.write_report(scan(results, "p"), "p", tmp_path / "rep", figures=False)
    head = rep.tables[0]
    assert head.datasets == ["mnist", "mnist (3x32x32)", "mnist (center)"]
    cell = {(m, v, d): head.cell(m, d, v) for m, v in values for d in head.datasets if head.cell(m, d, v)}
    assert set(cell) == {("realnvp", "native", "mnist"), ("glow", "native", "mnist"), ("rnode", "native", "mnist"),
                         ("realnvp", "padded", "mnist (3x32x32)"), ("glow", "padded", "mnist (3x32x32)"),
                         ("rnode", "padded", "mnist (3x32x32)"), ("realnvp", "centre", "mnist (center)"),
                         ("glow", "centre", "mnist (center)"), ("rnode", "centre", "mnist (center)")}
    published = {k: c["published"] for k, c in cell.items() if c["published"] == c["published"]}
    assert published == {("realnvp", "native", "mnist"): 1.06, ("glow", "padded", "mnist (3x32x32)"): 1.05,
                         ("rnode", "centre", "mnist (center)"): 0.973}
    assert cell[("glow", "padded", "mnist (3x32x32)")]["gap"] == pytest.approx(-0.01)
    best = {k for k, c in cell.items() if c["best"]}  # one best per column, never across columns
    assert best == {("rnode", "native", "mnist"), ("realnvp", "padded", "mnist (3x32x32)"),
                    ("rnode", "centre", "mnist (center)")}
    notes = " ".join(head.not_compared)
    assert "glow on mnist: 1.05" in notes and "dims 1x28x28 vs 3x32x32" in notes
    assert "rnode on mnist: 0.973" in notes and "dequantize uniform vs center" in notes
    markdown = (tmp_path / "rep" / "p" / "report.md").read_text()
    assert "not compared (another protocol, ours vs theirs): " in markdown and "| mnist (3x32x32) |" in markdown


def test_a_records_protocol_comes_from_its_spec():
    row = {"dataset": "mnist", "data_config.pad": 2, "data_config.channels": 3, "data_config.n_val": 0,
           "train.restore_best": True, "env.device_kind": "cuda", "env.device_name": "NVIDIA H100"}
    assert of_record(row) == Protocol("3x32x32", "uniform", "best_test", "NVIDIA H100")
    assert of_record({"dataset": "moons", "train.restore_best": False}) == Protocol("", "", "final", "")
    assert differences(Protocol("1x28x28", "uniform"), Protocol("1x28x28", "center")) == [
        "dequantize uniform vs center"]
    assert differences(Protocol(device="cpu"), Protocol(device="unknown GPU")) == []  # time only: with_device
    assert differences(Protocol(device="cpu"), Protocol(device="unknown GPU"), with_device=True) == [
        "device cpu vs unknown GPU"]


# The shipped suites' runs whose published number is of another protocol than the run's own, and what
# reproducing it takes (issue 26, left for later): RNODE's bits/dim are at the bin centre (a test-time
# `dequantize: center` metric beside the uniform one), InfoCNF Table 1's errors the lowest over
# training (a `test_error_min` metric), the published hours on unknown GPUs (never comparable).
PENDING = {
    ("rnode", "mnist", "bpd"): "dequantize uniform vs center",
    ("rnode", "cifar10", "bpd"): "dequantize uniform vs center",
    ("ccnf", "cifar10", "error"): "checkpoint best_test vs lowest",
    ("infocnf", "cifar10", "error"): "checkpoint best_test vs lowest",
}


def test_every_published_row_a_shipped_suite_meets_has_the_suites_protocol():
    """Walk every shipped suite's runs and every row of baselines/published.csv they match (model,
    dataset, metric, setting): the protocols agree, except the pending ones named above, exactly."""
    refs = index(load_published())
    found: dict[tuple[str, str, str], str] = {}
    for name in suite_names():
        for spec in load_suite(name).runs(check_models=False):
            row = {"dataset": spec.dataset, "train.restore_best": spec.train.get("restore_best", True),
                   **{f"data_config.{k}": v for k, v in spec.data_config.items()}}
            ours = of_record(row)
            for (model, dataset, metric, setting), ref in refs.items():
                if (model, dataset, setting) != (spec.published_model or spec.model, spec.dataset, spec.setting):
                    continue
                differ = differences(ours, ref.protocol)
                if differ:
                    found[(model, dataset, metric)] = ", ".join(differ)
    assert found == PENDING
    assert not any(math.isnan(r.value) for r in refs.values())
