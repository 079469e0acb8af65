"""Suites: validation messages, grid expansion, precedence of overrides, run-id stability."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.errors import FlowbenchError
from bench.fields import TRAIN_DEFAULTS
from bench.spec import RunSpec, load_suite, parse_only, parse_sets

BASE = """
datasets: [8gaussians, moons]
models: {realnvp: {n_layers: 4}}
seeds: [0, 1]
train: {max_steps: 50, lr: 1e-3}
"""


def test_grid_expansion_and_resolution(write_suite):
    suite = load_suite(write_suite(BASE))
    specs = suite.runs()
    assert [(s.dataset, s.model, s.seed) for s in specs] == [
        ("8gaussians", "realnvp", 0), ("8gaussians", "realnvp", 1), ("moons", "realnvp", 0), ("moons", "realnvp", 1)]
    spec = specs[0]
    assert spec.train["lr"] == 1e-3 and isinstance(spec.train["lr"], float)  # 1e-3 read as a float
    assert spec.train["batch_size"] == TRAIN_DEFAULTS["batch_size"]  # defaults filled in
    assert spec.model_config["n_layers"] == 4 and spec.model_config["hidden"] == 64  # builder default resolved
    assert spec.data_config["n_train"] == 20_000  # loader default resolved
    assert spec.metric == "nll"  # metric auto -> the dataset's own
    assert len({s.run_id for s in specs}) == 4


def test_override_precedence(write_suite):
    suite = load_suite(write_suite(BASE + """
overrides:
  - match: {model: realnvp}
    train: {lr: 0.01, batch_size: 64}
  - match: {model: realnvp, dataset: moons}
    train: {lr: 0.02}
    model: {hidden: 8}
    data: {n_train: 500}
"""))
    by = {(s.dataset, s.seed): s for s in suite.runs(sets=["train.batch_size=32"])}
    g, m = by[("8gaussians", 0)], by[("moons", 0)]
    assert (g.train["lr"], g.train["batch_size"], g.model_config["hidden"]) == (0.01, 32, 64)
    assert (m.train["lr"], m.train["batch_size"], m.model_config["hidden"], m.data_config["n_train"]) == (0.02, 32, 8, 500)


def test_skip_override_leaves_pairs_out(write_suite):
    suite = load_suite(write_suite("""
datasets: [8gaussians, moons]
models: [realnvp, glow]
train: {max_steps: 50}
overrides:
  - match: {model: glow, dataset: moons}
    skip: true
"""))
    assert [(s.dataset, s.model) for s in suite.runs()] == [
        ("8gaussians", "realnvp"), ("8gaussians", "glow"), ("moons", "realnvp")]
    bad = write_suite(BASE + """
overrides:
  - match: {model: realnvp}
    skip: "yes"
""")
    with pytest.raises(FlowbenchError, match=r"overrides\[0\]\.skip: expected true/false, got 'yes'"):
        load_suite(bad)


def test_filters_and_seeds(write_suite):
    suite = load_suite(write_suite(BASE))
    specs = suite.runs(only=parse_only("dataset=moons,seed=1"))
    assert [(s.dataset, s.seed) for s in specs] == [("moons", 1)]
    assert [s.seed for s in suite.runs(seeds=[3, 4, 5], only={"dataset": {"moons"}})] == [3, 4, 5]
    assert parse_only("model=realnvp,glow,dataset=moons") == {"model": {"realnvp", "glow"}, "dataset": {"moons"}}
    assert parse_sets(["train.max_steps=200", "model.hidden=32", "metric=nll", "train.grad_clip=null"]) == {
        "train": {"max_steps": 200, "grad_clip": None}, "model": {"hidden": 32}, "metric": "nll"}


def test_run_id_is_stable_and_sensitive(write_suite):
    a = load_suite(write_suite(BASE, "a")).runs()[0]
    reordered = """
train: {lr: 1e-3, max_steps: 50}
seeds: [0, 1]
models: {realnvp: {n_layers: 4}}
datasets: [8gaussians, moons]
"""
    b = load_suite(write_suite(reordered, "b")).runs()[0]
    assert a.run_id == b.run_id  # key order and suite name do not matter
    assert a.run_id != load_suite(write_suite(BASE, "c")).runs(sets=["model.hidden=65"])[0].run_id
    assert a.run_id == RunSpec.from_dict(a.to_dict()).run_id  # survives spec.json
    # the same in a fresh interpreter (no hash randomisation leaks in)
    code = f"from bench.spec import load_suite; print(load_suite({str(write_suite(BASE, 'd'))!r}).runs()[0].run_id)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == a.run_id and len(out) == 12


# run ids of the shipped smoke suite, computed before the GPU numerics fields (tf32, cudnn_benchmark,
# deterministic) existed: records and pinned numbers under these ids must still be found
SMOKE_IDS = {"realnvp/8gaussians/seed0": "e5912c8b0fc7", "ffjord/moons/seed0": "c01e960082f9",
             "latent_ode/spirals/seed0": "1ea838c24a4c"}


def test_shipped_run_ids_survive_new_fields_at_their_default():
    from bench.fields import RUN_ID_OPTIONAL
    from bench.spec import SUITES_DIR

    runs = {r.label: r for r in load_suite(SUITES_DIR / "smoke.yaml").runs()}
    assert {label: runs[label].run_id for label in SMOKE_IDS} == SMOKE_IDS
    spec = runs["realnvp/8gaussians/seed0"]
    assert {spec.train[k] for k in RUN_ID_OPTIONAL} == {False}  # present, at their default, not hashed
    older = {**spec.to_dict(), "train": {k: v for k, v in spec.train.items() if k not in RUN_ID_OPTIONAL}}
    assert RunSpec.from_dict(older).run_id == spec.run_id  # a spec.json written before the fields existed
    for name in RUN_ID_OPTIONAL:  # set away from the default, each is a different run
        changed = RunSpec.from_dict({**spec.to_dict(), "train": {**spec.train, name: True}})
        assert changed.run_id != spec.run_id, name


@pytest.mark.parametrize("text, message", [
    (BASE + "trian: {}\n", 'unknown key "trian" (did you mean "train"?)'),
    (BASE.replace("lr: 1e-3", "lr: fast"), "train.lr: expected a number >= 0, got 'fast'"),
    (BASE.replace("max_steps: 50", "max_steps: 2.5"), "train.max_steps: expected an integer >= 1 or null, got 2.5"),
    (BASE.replace("realnvp: {n_layers: 4}", "realnpv: {}"), 'unknown model "realnpv" (did you mean "realnvp"?)'),
    (BASE.replace("8gaussians", "8gaussian"), 'unknown dataset "8gaussian" (did you mean "8gaussians"?)'),
    (BASE.replace("n_layers: 4", "n_layer: 4"), 'model "realnvp" has no hyperparameter "n_layer" (did you mean "n_layers"?)'),
    (BASE.replace("datasets: [8gaussians, moons]", "datasets: []"), "datasets: missing or empty"),
    (BASE.replace("max_steps: 50, ", "max_steps: null, "), "no budget; set max_steps, max_epochs or max_minutes"),
    (BASE + "overrides:\n  - match: {dataset: rings}\n    train: {lr: 0.1}\n", 'match.dataset: "rings" is not in this suite'),
    (BASE + "metric: nlll\n", 'unknown metric "nlll" (did you mean "nll"?)'),
    (BASE.replace("train: {", "train: {schedule: linear, "), "train.schedule: expected one of constant, cosine, step, plateau, got 'linear'"),
    (BASE + "datasets: [moons\n", "is not valid YAML"),
    ("- just\n- a list\n", "a suite is a mapping"),
    (BASE + "differences: one line\n", "differences: expected a list of non-empty lines of text"),
    (BASE + "differences: [ok, 3]\n", "differences: expected a list of non-empty lines of text"),
])
def test_validation_messages(write_suite, text, message):
    path = write_suite(text)
    with pytest.raises(FlowbenchError) as err:
        load_suite(path).runs()
    assert message in str(err.value)
    if "YAML" not in message:
        assert str(path) in str(err.value)  # every message names the file


def test_cli_filter_errors(write_suite):
    suite = load_suite(write_suite(BASE))
    with pytest.raises(FlowbenchError, match=r'has no model "glow"'):
        suite.runs(only={"model": {"glow"}})
    with pytest.raises(FlowbenchError, match="the grid is empty"):
        suite.runs(only={"seed": {"7"}})
    with pytest.raises(FlowbenchError, match='unknown training setting "max_step" \\(did you mean "max_steps"\\?\\)'):
        suite.runs(sets=["train.max_step=3"])
    with pytest.raises(FlowbenchError, match='unknown section "trian"'):
        suite.runs(sets=["trian.lr=3"])


def test_missing_suite_file(tmp_path):
    with pytest.raises(FlowbenchError, match="does not exist"):
        load_suite(tmp_path / "nope.yaml")
    with pytest.raises(FlowbenchError, match='unknown suite "smok" \\(did you mean "smoke"\\?\\)'):
        load_suite("smok")


def test_grid_of_ten_thousand_runs_expands(write_suite):
    suite = load_suite(write_suite(BASE.replace("seeds: [0, 1]", f"seeds: {list(range(5000))}")))
    specs = suite.runs()
    assert len(specs) == 10_000 and len({s.run_id for s in specs}) == 10_000
