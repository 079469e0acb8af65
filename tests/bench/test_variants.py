"""Variants: grid: and variants: expand into labelled runs, --set labels its runs, --only variant=
filters, the published setting follows suite < override < variant, and labels never touch run ids."""

from __future__ import annotations

import hashlib
import json

import pytest

from bench import variants
from bench.errors import FlowbenchError
from bench.fields import RUN_ID_OPTIONAL
from bench.spec import RunSpec, load_suite, parse_only

BASE = """
datasets: [8gaussians, moons]
models: {realnvp: {n_layers: 2}, glow: {n_steps: 2}}
seeds: [0, 1]
train: {max_steps: 50, lr: 1e-3}
"""


def _by_label(specs):
    out = {}
    for s in specs:
        out.setdefault((s.model, s.dataset, s.variant), []).append(s)
    return out


def test_a_two_value_grid_is_two_labelled_variants_per_pair(write_suite):
    suite = load_suite(write_suite(BASE + "grid: {train.lr: [1e-3, 5e-4]}\n"))
    specs = suite.runs()
    assert len(specs) == 2 * 2 * 2 * 2  # datasets x models x grid values x seeds
    by = _by_label(specs)
    assert set(by) == {(m, d, v) for m in ("realnvp", "glow") for d in ("8gaussians", "moons")
                       for v in ("lr=0.001", "lr=0.0005")}
    low = by[("realnvp", "moons", "lr=0.0005")][0]
    assert low.train["lr"] == 5e-4 and low.sweep == {"train.lr": 5e-4} and low.label == "realnvp/moons/seed0 (lr=0.0005)"
    assert len({s.run_id for s in specs}) == len(specs)
    # the variant at the suite's own value is the same run as the plain suite's: same settings, same id
    plain = {(s.model, s.dataset, s.seed): s.run_id for s in load_suite(write_suite(BASE, "plain")).runs()}
    assert all(plain[(s.model, s.dataset, s.seed)] == s.run_id for s in specs if s.variant == "lr=0.001")


def test_grid_combinations_short_labels_and_match(write_suite):
    suite = load_suite(write_suite(BASE + """
grid:
  match: {model: realnvp}
  train.lr: [1e-3, 5e-4]
  model.hidden: [16, 32]
"""))
    by = _by_label(suite.runs(seeds=[0]))
    realnvp = sorted(v for m, d, v in by if m == "realnvp" and d == "moons")
    assert realnvp == ["lr=0.0005 hidden=16", "lr=0.0005 hidden=32", "lr=0.001 hidden=16", "lr=0.001 hidden=32"]
    assert by[("realnvp", "moons", "lr=0.0005 hidden=32")][0].model_config["hidden"] == 32
    assert [v for m, d, v in by if m == "glow" and d == "moons"] == [""]  # not matched: one plain run
    # the same name in two sections is spelled out in full
    assert variants.short_names(["train.x", "model.x", "model.hidden"]) == {
        "train.x": "train.x", "model.x": "model.x", "model.hidden": "hidden"}
    assert variants.fmt_value([64, 64]) == "64/64" and variants.fmt_value(True) == "true"


def test_named_variants_settings_published_setting_and_precedence(write_suite):
    suite = load_suite(write_suite(BASE + """
setting: small batch (900)
overrides:
  - match: {model: glow}
    train: {lr: 0.01}
    setting: small batch (900); fixed tolerances
variants:
  small: {}
  large:
    train: {batch_size: 8000, lr: 0.02}
    setting: large batch (8000)
  learned:
    match: {model: glow}
    model.n_steps: 3
    published_model: realnvp
    setting: large batch (8000); learned tolerances
"""))
    by = _by_label(suite.runs(seeds=[0]))
    assert sorted(v for m, d, v in by if m == "realnvp" and d == "moons") == ["large", "small"]
    assert sorted(v for m, d, v in by if m == "glow" and d == "moons") == ["large", "learned", "small"]
    small, large = by[("glow", "moons", "small")][0], by[("glow", "moons", "large")][0]
    assert small.train["lr"] == 0.01 and large.train["lr"] == 0.02  # a variant wins over an override
    assert small.setting == "small batch (900); fixed tolerances"  # the override's setting
    assert by[("realnvp", "moons", "small")][0].setting == "small batch (900)"  # the suite's
    assert large.setting == "large batch (8000)" and large.train["batch_size"] == 8000
    learned = by[("glow", "moons", "learned")][0]
    assert learned.model_config["n_steps"] == 3 and learned.published_model == "realnvp"
    assert learned.setting == "large batch (8000); learned tolerances"


def test_labels_and_settings_are_carried_but_never_in_the_run_id(write_suite):
    spec = load_suite(write_suite(BASE)).runs()[0]
    assert spec.variant == "" and spec.setting == "" and spec.sweep == {}
    # the id is the hash of exactly what determines the result, as before variants existed
    content = {k: getattr(spec, k) for k in ("model", "dataset", "seed", "model_config", "data_config", "train",
                                             "metric")}
    content["train"] = {k: v for k, v in spec.train.items() if k not in RUN_ID_OPTIONAL}  # at their defaults
    digest = hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"), default=str).encode())
    assert spec.run_id == digest.hexdigest()[:12]
    labelled = RunSpec(**{**{k: getattr(spec, k) for k in ("suite", "model", "dataset", "seed", "model_config",
                                                           "data_config", "train", "metric")},
                          "variant": "lr=1", "sweep": {"train.lr": 1.0}, "setting": "x", "published_model": "glow"})
    assert labelled.run_id == spec.run_id
    d = labelled.to_dict()
    assert (d["variant"], d["sweep"], d["setting"], d["published_model"]) == ("lr=1", {"train.lr": 1.0}, "x", "glow")
    back = RunSpec.from_dict(d)
    assert (back.variant, back.setting, back.run_id) == ("lr=1", "x", spec.run_id)
    old = {k: v for k, v in spec.to_dict().items() if k not in ("variant", "sweep", "setting", "published_model")}
    assert RunSpec.from_dict(old).run_id == spec.run_id and RunSpec.from_dict(old).variant == ""  # a pre-variant spec.json
    assert labelled.identity() == {"run_id": spec.run_id, "suite": spec.suite, "model": spec.model, "variant": "lr=1",
                                   "dataset": spec.dataset, "seed": spec.seed}


def test_set_labels_its_runs_and_only_variant_filters(write_suite):
    suite = load_suite(write_suite(BASE + "grid: {train.lr: [1e-3, 5e-4], model.hidden: [8, 16]}\n"))
    specs = suite.runs(sets=["train.max_steps=20"], only={"model": {"realnvp"}, "dataset": {"moons"}}, seeds=[0])
    assert sorted(s.variant for s in specs) == ["lr=0.0005 hidden=16 max_steps=20", "lr=0.0005 hidden=8 max_steps=20",
                                                "lr=0.001 hidden=16 max_steps=20", "lr=0.001 hidden=8 max_steps=20"]
    assert all(s.train["max_steps"] == 20 for s in specs)
    plain = load_suite(write_suite(BASE, "plain")).runs(sets=["model.hidden=8"], seeds=[0])
    assert {s.variant for s in plain} == {"hidden=8"}
    only = parse_only("model=realnvp,variant=lr=0.001,lr=0.0005 hidden=8,dataset=moons")
    assert only == {"model": {"realnvp"}, "variant": {"lr=0.001", "lr=0.0005 hidden=8"}, "dataset": {"moons"}}
    picked = suite.runs(only=only, seeds=[0])
    assert sorted(s.variant for s in picked) == ["lr=0.0005 hidden=8", "lr=0.001 hidden=16", "lr=0.001 hidden=8"]
    with pytest.raises(FlowbenchError, match=r'--only variant=lr=0.01: the suite "t" has no variant "lr=0.01"'):
        suite.runs(only={"variant": {"lr=0.01"}})
    with pytest.raises(FlowbenchError, match=r"--set train.lr: the suite sweeps train.lr in its grid:"):
        suite.runs(sets=["train.lr=0.1"])
    with pytest.raises(FlowbenchError, match='unknown key "datset"'):
        suite.runs(only=parse_only("model=realnvp,datset=moons"))


@pytest.mark.parametrize("text, message", [
    ("grid: {train.lr: 1e-3}\n", "grid.train.lr: expected a non-empty list of values, got 0.001"),
    ("grid: {lr: [1e-3]}\n", 'grid: "lr" is not a setting; use train.NAME, model.NAME or data.NAME'),
    ("grid: {trian.lr: [1e-3]}\n", '"trian.lr" is not a setting'),
    ("grid: {train.lr: [fast]}\n", "grid.train.lr: expected a number >= 0, got 'fast'"),
    ("grid: {train.lr: [1e-3, 0.001]}\n", "grid.train.lr: a value is listed twice"),
    ("grid: {train.lr: [1e-3, 5e-4]}\nvariants: {big: {train.lr: 0.1}}\n", "variants.big sets train.lr, which grid: sweeps"),
    ("variants: {big batch: {}}\n", "variant name 'big batch' must be letters"),
    ("variants: {big: {train: {lr: fast}}}\n", "variants.big.train.lr: expected a number >= 0, got 'fast'"),
    ("variants: {big: {trian: {}}}\n", 'variants.big: unknown key "trian" (did you mean "train"?)'),
    ("variants: {big: {match: {model: flow}}}\n", 'variants.big.match.model: "flow" is not in this suite'),
    ("variants: {a: {}, b: {}}\n", 'variants "a" and "b" give identical runs of realnvp on 8gaussians'),
    ("variants: {a: {model.n_layer: 3}}\n", 'variant a): models.realnvp: model "realnvp" has no hyperparameter "n_layer"'),
    ("setting: 3\n", "setting: expected a line of text"),
])
def test_variant_validation_messages_name_the_file_and_field(write_suite, text, message):
    path = write_suite(BASE + text)
    with pytest.raises(FlowbenchError) as err:
        load_suite(path).runs()
    assert message in str(err.value) and str(path) in str(err.value)


def test_matches_and_labels():
    assert variants.matches("large lr=0.001", "large") and variants.matches("large lr=0.001", "lr=0.001 large")
    assert not variants.matches("large lr=0.001", "small") and not variants.matches("large", "")
    assert variants.matches("", "")
    assert variants.row_label("ffjord", "") == "ffjord" and variants.row_label("ffjord", "a") == "ffjord (a)"
    assert variants.from_sets({}) is variants.PLAIN
    v = variants.from_sets({"train": {"lr": 0.01}, "metric": "bpd"})
    assert v.label == "lr=0.01 metric=bpd" and v.sweep == {"train.lr": 0.01}
