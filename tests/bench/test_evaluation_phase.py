"""Validation and test evaluations told apart: a CNF's ``val_divergence`` applies to the harness's
validation only (FFJORD's train_tabular.py validates with Hutchinson and tests with the exact
trace), and the option leaves every existing run id alone at its default."""

from __future__ import annotations

import pytest
import torch

from baselines.base import evaluation_phase
from baselines.cnf import CNF
from baselines.registry import get_builder
from bench.data.base import DataInfo
from bench.fields import MODEL_RUN_ID_OPTIONAL
from bench.spec import SUITES_DIR, RunSpec, load_suite
from bench.store import RunRecord
from bench.train import run_one

SUITE = """
datasets:
  8gaussians: {n_train: 256, n_val: 200, n_test: 200}
models:
  ffjord: {hidden: [8], VAL}
seeds: [0]
train: {max_steps: 3, batch_size: 64, lr: 1e-3, eval_every: 3, checkpoint_every: 100, eval_batch_size: 200}
"""


def _run(write_suite, tmp_path, val: str):
    spec = load_suite(write_suite(SUITE.replace("VAL", val))).runs()[0]
    record = RunRecord(tmp_path / spec.run_id, spec.suite, spec.run_id)
    result = run_one(spec, record, device="cpu", progress=False)
    assert result["status"] == "completed", result.get("error")
    return spec, result


def test_validation_uses_val_divergence_and_the_test_the_exact_trace(write_suite, tmp_path):
    """One validation (at the last step, so the tested weights are the same in every run): with
    ``val_divergence: hutchinson`` its NLL is a stochastic estimate, off the exact one; the test
    NLL is the exact-trace one, to the bit (the training never reads the validation)."""
    exact_spec, exact = _run(write_suite, tmp_path, "eval_divergence: auto")
    hutch_spec, hutch = _run(write_suite, tmp_path, "val_divergence: hutchinson")
    assert "val_divergence" not in exact_spec.model_config and hutch_spec.model_config["val_divergence"] == "hutchinson"
    assert exact["best_step"] == hutch["best_step"] == 3
    assert hutch["test"]["nll"] == exact["test"]["nll"]
    assert abs(hutch["val"]["nll"] - exact["val"]["nll"]) > 1e-4, (hutch["val"], exact["val"])
    _, explicit = _run(write_suite, tmp_path, "val_divergence: exact")
    assert explicit["val"]["nll"] == pytest.approx(exact["val"]["nll"], rel=1e-9)


def test_a_block_reads_the_phase_only_when_evaluating():
    block = CNF(torch.nn.Linear(2, 2), (2,), divergence="hutchinson", eval_divergence="exact",
                val_divergence="hutchinson")
    model = torch.nn.Sequential(block)
    assert block._exact() is False  # training: divergence
    block.eval()
    assert block._exact() is True
    with evaluation_phase(model, "val"):
        assert block._exact() is False
        with evaluation_phase(model, "test"):
            assert block._exact() is True
        assert block.evaluation_phase == "val"
    assert block.evaluation_phase == "test" and block._exact() is True
    with pytest.raises(ValueError, match="evaluation phase"):
        with evaluation_phase(model, "train"):
            pass
    plain = CNF(torch.nn.Linear(2, 2), (2,), eval_divergence="exact").eval()  # no val_divergence: eval's
    with evaluation_phase(plain, "val"):
        assert plain._exact() is True
    with pytest.raises(ValueError, match="val_divergence"):
        CNF(torch.nn.Linear(2, 2), (2,), val_divergence="approximate")


def test_a_model_without_phase_aware_parts_is_unaffected():
    model = get_builder("realnvp")(DataInfo("t", "toy", (2,)), n_layers=2, hidden=8).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(16, 2)
    reference = model.log_prob(x)
    with evaluation_phase(model, "val"):
        assert torch.equal(model.log_prob(x), reference)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# run ids of the shipped smoke suite's CNF runs before val_divergence existed
SMOKE_CNF_IDS = {"ffjord/moons/seed0": "c01e960082f9", "rnode/checkerboard/seed0": "76d5d5c6329a",
                 "ccnf/checkerboard/seed0": "8257e3f1ee05", "infocnf/checkerboard/seed0": "bcc2a688adfd"}


def test_val_divergence_at_its_default_keeps_run_ids(write_suite):
    """Left out of the resolved model_config at its default (null), so the shipped runs keep their ids;
    any value set is a different run."""
    assert MODEL_RUN_ID_OPTIONAL == ("val_divergence",)
    runs = {r.label: r for r in load_suite(SUITES_DIR / "smoke.yaml").runs()}
    assert {label: runs[label].run_id for label in SMOKE_CNF_IDS} == SMOKE_CNF_IDS
    assert not any("val_divergence" in runs[label].model_config for label in SMOKE_CNF_IDS)
    plain = load_suite(write_suite(SUITE.replace(", VAL", ""))).runs()[0]
    ids = {value: load_suite(write_suite(SUITE.replace("VAL", f"val_divergence: {value}"))).runs()[0].run_id
           for value in ("null", "hutchinson", "exact", "auto")}
    assert ids["null"] == plain.run_id and "val_divergence" not in plain.model_config
    assert len({plain.run_id, ids["hutchinson"], ids["exact"], ids["auto"]}) == 4
    assert RunSpec.from_dict(plain.to_dict()).run_id == plain.run_id  # a spec.json read back
