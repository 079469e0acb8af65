"""A dataset is one file: a plug-in module's @register_dataset is listed, verified, checked and run,
with no edit to bench/; the built-in options are read from the loaders' signatures."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import sys
import textwrap

import numpy as np
import pytest

from bench import metrics
from bench.cli import main
from bench.data import REGISTRY, DatasetEntry, describe_datasets, load_dataset, register_dataset
from bench.data import registry as data_registry
from bench.data.base import GENERATED
from bench.errors import FlowbenchError
from bench.spec import load_suite
from bench.store import RunRecord

PLUGIN = '''
"""Two datasets in one file: blobs (drawn from a seed) and blobfile (read from DATA_ROOT/blobs/points.npy)."""
from pathlib import Path
from typing import Annotated

import numpy as np

from baselines.constraints import Count, Range, Seed
from bench.data import DataInfo, Dataset, NoFiles, Split, Status, register_dataset

HOW = "save an N x 2 float array as DATA_ROOT/blobs/points.npy"


def check(name: str, root: Path | None) -> Status:
    if root is None:
        return Status(name, "missing", "DATA_ROOT/blobs/points.npy", "no data root", HOW)
    path = root / "blobs" / "points.npy"
    if not path.is_file():
        return Status(name, "missing", str(path), how=HOW)
    shape = np.load(path).shape
    if len(shape) != 2 or shape[1] != 2:
        return Status(name, "corrupt", str(path), f"expected N x 2 points, found shape {shape}", HOW)
    return Status(name, "found", str(path))


def _dataset(name, x, n_train, n_val):
    import torch

    x = torch.from_numpy(x.astype(np.float32))
    cuts = (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None))
    info = DataInfo(name=name, kind="toy", shape=(2,), metric="nll", notes="plug-in")
    return Dataset(info, *(Split(x[c]) for c in cuts))


@register_dataset("blobs", kind="toy", description="two Gaussian blobs (a plug-in)",
                  files=NoFiles("generated", "drawn by the blobs plug-in from its seed"))
def load(name: str, root: Path | None = None, *, n_train: Count = 512, n_val: Count = 128, n_test: Count = 128,
         spread: Annotated[float, Range(0, 5, min_open=True)] = 0.5, seed: Seed = 0):
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    centre = np.where(rng.random(n) < 0.5, -2.0, 2.0)[:, None]
    return _dataset(name, centre + spread * rng.standard_normal((n, 2)), n_train, n_val)


@register_dataset("blobfile", kind="toy", description="blobs read from a file (a plug-in)", files=check)
def load_file(name: str, root: Path | None = None, *, n_val: Count = 16):
    x = np.load(root / "blobs" / "points.npy")
    return _dataset(name, x, len(x) - 2 * n_val, n_val)
'''

SUITE = """
datasets:
  blobs: {n_train: 256, spread: 0.3}
models: {realnvp: {n_layers: 2, hidden: 8, batch_norm: false}}
seeds: [0]
train: {max_steps: 4, batch_size: 64, eval_every: 2, lr: 1e-3}
plugins: [fb_blobs_plugin]
"""


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The plug-in module in tmp_path (the working directory); its registrations, its module and any
    metric it declares are undone afterwards."""
    (tmp_path / "fb_blobs_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    data_registry._load_builtins()  # so that the restored registry holds them
    saved, saved_metrics = dict(data_registry._registered), dict(metrics.METRICS)
    yield tmp_path
    data_registry._registered.clear()
    data_registry._registered.update(saved)
    metrics.METRICS.clear()
    metrics.METRICS.update(saved_metrics)
    for name in [m for m in sys.modules if m.startswith("fb_")]:
        del sys.modules[name]


def _write(folder, text, name="blobs.yaml"):
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_plugin_dataset_is_listed_verified_loaded_and_run(plugin, capsys):
    suite = _write(plugin, SUITE)
    assert "blobs" not in REGISTRY
    assert main(["list", "datasets", "--suite", str(suite)]) == 0
    out = capsys.readouterr().out
    assert "blobs          toy          two Gaussian blobs (a plug-in) (plugin of this suite)" in out
    assert "blobfile" in out and "moons" in out

    # verify: each dataset's own verdict; the file-backed one missing, with its own how-to, then corrupt, then found
    root = plugin / "data"
    assert main(["data", "verify", "--suite", str(suite), "--data-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "blobs          generated  drawn by the blobs plug-in from its seed" in out
    assert f"blobfile       missing    {root / 'blobs' / 'points.npy'}" in out
    assert "blobfile: save an N x 2 float array as DATA_ROOT/blobs/points.npy" in out
    (root / "blobs").mkdir(parents=True)
    np.save(root / "blobs" / "points.npy", np.zeros((40, 3)))
    assert main(["data", "verify", "--data-root", str(root)]) == 1  # corrupt
    assert "expected N x 2 points, found shape (40, 3)" in capsys.readouterr().out
    np.save(root / "blobs" / "points.npy", np.random.default_rng(0).standard_normal((40, 2)))
    assert main(["data", "verify", "--data-root", str(root)]) == 0
    assert f"blobfile       found      {root / 'blobs' / 'points.npy'}" in capsys.readouterr().out
    assert len(load_dataset("blobfile", {}, root).train) == 8

    # options and defaults from the loader's signature; the run trains on the plug-in's data
    (spec,) = load_suite(suite).runs()
    assert spec.data_config == {"n_train": 256, "n_val": 128, "n_test": 128, "spread": 0.3, "seed": 0}
    assert spec.metric == "nll"  # the registration's headline metric (metric: auto)
    data = load_dataset("blobs", spec.data_config)
    assert len(data.train) == 256 and 1.5 < float(data.train.x.abs().mean()) < 2.5
    results = plugin / "results"
    assert main(["run", str(suite), "--results", str(results), "--quiet", "--no-report"]) == 0
    record = RunRecord(results, spec.suite, spec.run_id)
    result = record.read_result()
    assert result["status"] == "completed" and result["steps"] == 4 and math.isfinite(result["test"]["nll"])
    assert json.loads(record.spec_path.read_text())["data_config"] == spec.data_config


@pytest.mark.slow
def test_a_plugin_dataset_runs_in_worker_processes(plugin):
    """The worker imports the suite's plugins from spec.json before loading the data."""
    suite = _write(plugin, SUITE)
    results = plugin / "results"
    assert main(["run", str(suite), "--executor", "local", "--results", str(results), "--quiet", "--no-report"]) == 0
    (spec,) = load_suite(suite).runs()
    assert RunRecord(results, spec.suite, spec.run_id).read_result()["status"] == "completed"


@pytest.mark.parametrize("data, message", [
    ("blobs: {spread: 7}", "data.spread: expected a number in (0, 5], got 7"),
    ("blobs: {spread: 0.3, n_train: 0}", "data.n_train: expected an integer >= 1, got 0"),
    ("blobs: {spred: 0.3}", 'data: dataset "blobs" has no option "spred" (did you mean "spread"?)'),
    ("moons: {n_train: -5}", "data.n_train: expected an integer >= 1, got -5"),
    ("mnist: {dequantize: centre}", 'data.dequantize: expected one of uniform, center, got \'centre\''),
])
def test_a_bad_option_value_is_one_line_naming_the_suite_field(plugin, capsys, data, message):
    suite = _write(plugin, SUITE.replace("blobs: {n_train: 256, spread: 0.3}", data))
    with pytest.raises(FlowbenchError) as err:
        load_suite(suite).runs()
    assert str(suite) in str(err.value) and message in str(err.value) and "\n" not in str(err.value)
    assert main(["run", str(suite), "--dry-run", "--results", str(plugin / "r")]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_declared_options_are_the_loader_signature():
    """No restatement: every dataset's defaults and declarations are its loader's signature."""
    assert not {"options", "checks"} & {f.name for f in dataclasses.fields(DatasetEntry)}
    for name, entry in REGISTRY.items():
        params = list(inspect.signature(entry.loader, eval_str=True).parameters.values())[2:]
        assert entry.options == {p.name: p.default for p in params}, name
        assert entry.checks == {p.name: p.annotation for p in params}, name
    assert REGISTRY["mnist"].checks["pad"].__metadata__[0].max == 16
    assert REGISTRY["moons"].options["n_train"] == 20_000 and REGISTRY["spirals"].metric == "mse"
    # the defaults the registry held before it read them from the loaders (a restated table until then)
    expected = {"cifar10": {"flip": True, "n_val": 5000, "alpha": 1e-6, "crop_padding": "symmetric"},
                "mnist": {"pad": 0, "channels": 1, "flip": False, "dequantize": "uniform", "verify": True},
                "mnist10k": {"n_train": 8000, "n_val": 1000}, "digits": {"val_fraction": 0.1, "test_fraction": 0.2},
                "spirals": {"n_spirals": 5000, "window": 200, "horizon": 200, "noise": 0.3, "targets": "direction"},
                "mixture1d": {"means": "-2,0,2", "n_test": 20_000}, "power": {"cache": True}}
    for name, defaults in expected.items():
        assert {k: REGISTRY[name].options[k] for k in defaults} == defaults, name


def test_registration_mistakes_are_clear(plugin):
    def loader(name, root=None, *, n: int = 1):
        return None

    with pytest.raises(FlowbenchError, match='dataset "x": unknown kind \'images\' \\(did you mean "image"\\?\\)'):
        register_dataset("x", kind="images", description="", files=GENERATED)
    with pytest.raises(FlowbenchError, match='unknown headline metric \'bdp\' \\(did you mean "bpd"\\?\\)'):
        register_dataset("x", kind="image", description="", metric="bdp", files=GENERATED)
    with pytest.raises(FlowbenchError, match="files= must be its file check"):
        register_dataset("x", kind="toy", description="", files="generated")
    with pytest.raises(FlowbenchError, match='option "n" of the loader .* has no default'):
        register_dataset("x", kind="toy", description="", files=GENERATED)(lambda name, root, *, n: None)
    with pytest.raises(FlowbenchError, match="takes \\*\\*options; name every option"):
        register_dataset("x", kind="toy", description="", files=GENERATED)(lambda name, root, **options: None)
    with pytest.raises(FlowbenchError, match='dataset "moons" is registered twice: by bench.data.toy:load'):
        register_dataset("moons", kind="toy", description="", files=GENERATED)(loader)
    assert "x" not in REGISTRY


def test_data_verify_imports_the_suites_plugins_and_reports_a_failing_check(plugin, capsys):
    suite = _write(plugin, SUITE)
    assert main(["data", "verify", "--suite", str(suite)]) == 0
    assert "blobs          generated  drawn by the blobs plug-in from its seed" in capsys.readouterr().out

    def broken(name, root):
        raise OSError("disk on fire")

    register_dataset("blobs_broken", kind="toy", description="", files=broken)(lambda name, root, *, n=1: None)
    assert main(["data", "verify"]) == 1
    out = capsys.readouterr().out
    assert "blobs_broken   error" in out and "its file check failed: OSError: disk on fire" in out


def test_a_new_headline_metric_is_declared_by_the_registration(plugin):
    """metric=Metric(...) adds the suite metric: `metric: auto` resolves to it and `metric:` accepts it."""
    head = '@register_dataset("blobs", kind="toy",'
    source = PLUGIN.replace(head, f'{head} metric=Metric("blob_nll", "nats", "blob NLL", "nll"),')
    (plugin / "fb_blobs_plugin.py").write_text("from bench.metrics import Metric\n" + source)
    suite = _write(plugin, SUITE)
    assert load_suite(suite).runs()[0].metric == "blob_nll"
    assert load_suite(_write(plugin, SUITE + "metric: blob_nll\n", "m.yaml")).runs()[0].metric == "blob_nll"
    del sys.modules["fb_blobs_plugin"]
    (plugin / "fb_blobs_plugin.py").write_text(PLUGIN)
    data_registry._registered.pop("blobs")
    metrics.METRICS.pop("blob_nll")
    with pytest.raises(FlowbenchError, match='metric: unknown metric "blob_nll"'):
        load_suite(_write(plugin, SUITE + "metric: blob_nll\n", "m.yaml"))


def test_an_installed_package_registers_through_the_entry_point_group(plugin):
    """``flowbench.datasets``: listed without importing the module, imported on first use."""
    (plugin / "fb_ep_blobs.py").write_text(PLUGIN.replace('"blobs"', '"epblobs"').replace('"blobfile"', '"epfile"'))
    dist = plugin / "fb_ep_blobs-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fb-ep-blobs\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[flowbench.datasets]\nepblobs = fb_ep_blobs\nnothing = fb_ep_blobs\n")
    assert describe_datasets()["epblobs"] == ("plug-in", "plug-in dataset from fb_ep_blobs")
    assert "fb_ep_blobs" not in sys.modules and "epblobs" in REGISTRY
    assert REGISTRY["epblobs"].options["spread"] == 0.5 and "fb_ep_blobs" in sys.modules
    with pytest.raises(FlowbenchError, match='its entry point fb_ep_blobs \\(flowbench.datasets\\) registers no '
                                             'dataset "nothing"'):
        REGISTRY["nothing"]
