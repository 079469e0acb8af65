"""Every number carries its protocol (bench/protocol.py): a column holds one protocol, and a published
number gets a gap and takes part in the bold only beside a cell of its own protocol."""

from __future__ import annotations

import math

import pytest
from report_records import write_spec_run

from bench import report
from bench.protocol import Protocol, differences, of_record, of_spec
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
    assert head.not_compared == []  # each published number met a cell of its own protocol
    markdown = (tmp_path / "rep" / "p" / "report.md").read_text()
    assert "| mnist (3x32x32) |" in markdown and "not compared" not in markdown.split("## ")[1]


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


def test_every_published_row_a_shipped_suite_meets_has_the_suites_protocol():
    """Walk every shipped suite's runs and every row of baselines/published.csv they match (model,
    dataset, metric, setting): each published number has a cell of its own protocol among the ones
    the run records (its own; with ``test_center`` the bin-centre test; with the test set as the
    validation curve, ``error_min``'s lowest error)."""
    import dataclasses

    refs = index(load_published())
    found: dict[tuple[str, str, str], str] = {}
    for name in suite_names():
        for spec in load_suite(name).runs(check_models=False):
            ours = of_spec(spec.dataset, spec.data_config, spec.train)
            offered = [ours]
            if spec.train.get("test_center"):
                offered.append(dataclasses.replace(ours, dequantize="center"))
            for (model, dataset, metric, setting), ref in refs.items():
                if (model, dataset, setting) != (spec.published_model or spec.model, spec.dataset, spec.setting):
                    continue
                cells = offered + ([dataclasses.replace(ours, checkpoint="lowest")]
                                   if metric == "error" and ours.checkpoint == "best_test" else [])
                if all(differences(cell, ref.protocol) for cell in cells):
                    found[(model, dataset, metric)] = ", ".join(differences(ours, ref.protocol))
    assert found == {}
    assert not any(math.isnan(r.value) for r in refs.values())


DIGITS = """
datasets: {{digits: {{dequantize: {dequantize}}}}}
models: {{realnvp: {{n_scales: 1, n_checker: 2, n_channel: 2, hidden: 8, n_blocks: 1}}}}
seeds: [0]
train: {{max_steps: 4, batch_size: 64, eval_every: 2, test_center: {centre}}}
"""


def test_test_center_is_the_bin_centre_test_of_the_same_weights(write_suite, tmp_path):
    """Training draws noise whatever the test convention, so a uniform-test run with ``test_center``
    and a centre-test run train the same weights: the first's ``bpd_center`` is the second's ``bpd``."""
    from bench.store import RunRecord
    from bench.train import run_one

    results = {}
    for dequantize, centre in (("uniform", "true"), ("center", "false")):
        spec = load_suite(write_suite(DIGITS.format(dequantize=dequantize, centre=centre), dequantize)).runs()[0]
        record = RunRecord(tmp_path, spec.suite, spec.run_id)
        results[dequantize] = run_one(spec, record, device="cpu", progress=False)["test"]
        written = record.read_result() if dequantize == "uniform" else written
    assert results["uniform"]["bpd_center"] == results["center"]["bpd"]
    assert written["protocol"] == {"dims": "1x8x8", "dequantize": "uniform", "checkpoint": "best_val",
                                   "device": written["env"]["device_name"]}
    assert results["uniform"]["nll_center"] == results["center"]["nll"]
    assert results["uniform"]["bpd"] != results["uniform"]["bpd_center"] and "bpd_center" not in results["center"]


def test_error_min_is_the_lowest_error_over_the_evaluations_of_the_test_set(write_suite, tmp_path):
    """When the validation curve is the test set (a suite's ``n_val: 0``), the record adds the lowest
    test error over the evaluations (InfoCNF Table 1's protocol) beside the chosen checkpoint's."""
    import dataclasses

    from bench.store import RunRecord
    from bench.train import Trainer

    path = write_suite("""
        datasets: {8gaussians: {n_train: 1000, n_val: 200, n_test: 200}}
        models: {ccnf: {hidden: [8], adjoint: false}}
        seeds: [0]
        train: {max_steps: 4, batch_size: 64, eval_every: 2, lr: 1e-2}
    """)
    spec = load_suite(path).runs()[0]
    record = RunRecord(tmp_path, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    trainer = Trainer(spec, record, device="cpu", progress=False)
    trainer.data = dataclasses.replace(trainer.data, val=trainer.data.test)  # as n_val: 0 loads it
    result = trainer.run()
    errors = [row["val_error"] for row in trainer.state.history]
    assert len(errors) == 2 and result["test"]["error_min"] == min(errors + [result["test"]["error"]])
    other = RunRecord(tmp_path / "other", spec.suite, spec.run_id)
    other.create(spec.to_dict())
    separate = Trainer(spec, other, device="cpu", progress=False)
    assert "error_min" not in separate.run()["test"]  # a held-out validation set is not the test set
