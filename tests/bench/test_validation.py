"""Bad input is one line naming the file/field and what to do, exit 2, before any work (issue 15):
suite files (encoding, YAML duplicate keys and alias bombs, names, seeds, declared types and ranges
of hyperparameters and data options, plugins) and command-line arguments (device, seeds,
max-examples, unwritable output folders). No training here."""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import tracemalloc

import pytest

from baselines.constraints import conform
from baselines.registry import BUILTIN
from bench.cli import main
from bench.errors import FlowbenchError
from bench.paths import inside
from bench.spec import SUITES_DIR, _builder_signature, _canonical, load_suite, suite_names

BASE = """
datasets: {moons: {n_train: 100}}
models: {realnvp: {n_layers: 2}}
seeds: [0]
train: {max_steps: 5}
"""
SEED_MAX = "9223372036854775807"


def _bomb(levels: int) -> str:
    """The billion laughs: ``levels`` anchors, each nine aliases of the one before."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, levels + 1)]
    return BASE + "\n".join(lines) + f"\ndescription: *a{levels}\n"


def _plugin(tmp_path, monkeypatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


# (suite text, what the message says); every message also names the suite file
SUITE_CASES = {
    # paths stay where they are put
    "name ..": (BASE + "name: '..'\n", "name: suite name '..' must be letters, digits"),
    "name .": (BASE + "name: '.'\n", "name: suite name '.' must be letters, digits"),
    "name with /": (BASE + "name: a/b\n", "name: suite name 'a/b' must be"),
    "name .hidden": (BASE + "name: .hidden\n", "suite name '.hidden' must be"),
    # YAML
    "not UTF-8": ((BASE + "description: caf\xe9\n").encode("latin-1"),
                  "not UTF-8 text (byte 0xe9 at offset 117, line 6); save the file as UTF-8"),
    "control character": (BASE + "description: a\x01b\n", "line 6 is not valid YAML: character #x0001 is not allowed"),
    "duplicate key": (BASE + "seeds: [1]\n", 'line 6, column 1 is not valid YAML: duplicate key "seeds" (first at line 4)'),
    "duplicate nested key": (BASE.replace("{max_steps: 5}", "{max_steps: 5, max_steps: 6}"),
                             'duplicate key "max_steps" (first at line 5)'),
    "recursive alias": (BASE + "description: &a [*a]\n", "an alias (*name) refers to the anchor it is inside"),
    "nested too deeply": (BASE + "description: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to read"),
    # seeds
    "duplicate seeds": (BASE.replace("seeds: [0]", "seeds: [0, 1, 0]"),
                        "seeds: seed 0 is listed twice (its runs would be trained twice); list it once"),
    "seed beyond 2^63": (BASE.replace("seeds: [0]", "seeds: [9223372036854775808]"),
                         f"seeds: expected an integer in [0, {SEED_MAX}], got 9223372036854775808 (beyond the 64-bit"),
    "negative seed": (BASE.replace("seeds: [0]", "seeds: [-1]"), f"seeds: expected an integer in [0, {SEED_MAX}], got -1"),
    "seeds text": (BASE.replace("seeds: [0]", "seeds: zero"), "seeds: expected a non-empty list of integer seeds"),
    # hyperparameters: declared types and ranges of the builders
    "hidden sixteen": (BASE.replace("n_layers: 2", "hidden: sixteen"),
                       "(realnvp on moons): models.realnvp.hidden: expected an integer >= 1, got 'sixteen'"),
    "hidden -16": (BASE.replace("n_layers: 2", "hidden: -16"), "models.realnvp.hidden: expected an integer >= 1, got -16"),
    "hidden 0": (BASE.replace("n_layers: 2", "hidden: 0"), "models.realnvp.hidden: expected an integer >= 1, got 0"),
    "hidden 1e20": (BASE.replace("n_layers: 2", "hidden: 1e20"), "models.realnvp.hidden: expected an integer >= 1, got 1e+20"),
    "hidden 2^70": (BASE.replace("n_layers: 2", "hidden: 1180591620717411303424"), "(beyond the 64-bit integer range)"),
    "scale_bound nan": (BASE.replace("n_layers: 2", "scale_bound: .nan"),
                        "models.realnvp.scale_bound: expected a number > 0, got nan (not a finite number)"),
    "iresnet coeff": (BASE.replace("realnvp: {n_layers: 2}", "iresnet: {coeff: 1.5}"),
                      "models.iresnet.coeff: expected a number in (0, 1), got 1.5"),
    "ffjord solver": (BASE.replace("realnvp: {n_layers: 2}", "ffjord: {solver: dopri}"),
                      "models.ffjord.solver: expected one of dopri5, dopri8, bosh3"),
    "ffjord widths": (BASE.replace("realnvp: {n_layers: 2}", "ffjord: {hidden: [64, -1]}"),
                      "models.ffjord.hidden: expected an integer >= 1 or a list of integers >= 1 or null, got [64, -1]"),
    "latent_ode rnn": (BASE.replace("realnvp: {n_layers: 2}", "latent_ode: {rnn: lstm}"),
                       "models.latent_ode.rnn: expected one of gru, rnn, got 'lstm'"),
    "override hyperparameter": (BASE + "overrides:\n  - match: {model: realnvp}\n    model: {n_layers: -2}\n",
                                "models.realnvp.n_layers: expected an integer >= 1, got -2"),
    # data options: declared per loader
    "n_train 0": (BASE.replace("n_train: 100", "n_train: 0"), "(realnvp on moons): data.n_train: expected an integer >= 1, got 0"),
    "n_train -5": (BASE.replace("n_train: 100", "n_train: -5"), "data.n_train: expected an integer >= 1, got -5"),
    "n_train null": (BASE.replace("n_train: 100", "n_train: null"), "data.n_train: expected an integer >= 1, got None"),
    "alpha 0.7": (BASE.replace("moons: {n_train: 100}", "digits: {alpha: 0.7}"),
                  "data.alpha: expected a number in [0, 0.5), got 0.7"),
    "dequantize": (BASE.replace("moons: {n_train: 100}", "digits: {dequantize: middle}"),
                   "data.dequantize: expected one of uniform, center, got 'middle'"),
    "mixture means": (BASE.replace("moons: {n_train: 100}", "mixture1d: {means: 'a,b'}"),
                      "data.means: expected numbers separated by commas, e.g. \"-2,0,2\", got 'a,b'"),
    "data_root list": (BASE + "data_root: [1]\n", "data_root: expected a folder (text), got [1]"),
    # training values
    "lr nan": (BASE.replace("max_steps: 5", "max_steps: 5, lr: .nan"), "train.lr: expected a number >= 0, got nan"),
    "lr inf": (BASE.replace("max_steps: 5", "max_steps: 5, lr: .inf"), "train.lr: expected a number >= 0, got inf"),
    "grad_clip -inf": (BASE.replace("max_steps: 5", "max_steps: 5, grad_clip: -.inf"), "train.grad_clip: expected a number"),
    "max_steps 1e30": (BASE.replace("max_steps: 5", "max_steps: 1e30"), "train.max_steps: expected an integer >= 1"),
    "betas nan": (BASE.replace("max_steps: 5", "max_steps: 5, betas: [.nan, 0.9]"),
                  "train.betas: expected a list or null, got [nan, 0.9] (nan is not a finite number)"),
    "milestones 2^70": (BASE.replace("max_steps: 5", "max_steps: 5, milestones: [1180591620717411303424]"),
                        "train.milestones: expected a list, got [1180591620717411303424] (1180591620717411303424 is "
                        "beyond the 64-bit integer range)"),
    # match:
    "override match [[a]]": (BASE + "overrides:\n  - match: {model: [[realnvp]]}\n    skip: true\n",
                             "overrides[0].match.model: expected a model name or a non-empty list of names, got [['realnvp']]"),
    "override match []": (BASE + "overrides:\n  - match: {dataset: []}\n    skip: true\n",
                          "overrides[0].match.dataset: expected a dataset name or a non-empty list"),
    "grid match [[a]]": (BASE + "grid: {match: {model: [[realnvp]]}, train.lr: [1e-3, 1e-2]}\n",
                         "grid.match.model: expected a model name"),
    "variant match {a: 1}": (BASE + "variants: {big: {match: {dataset: {moons: 1}}, train.lr: 1e-2}}\n",
                             "variants.big.match.dataset: expected a dataset name"),
    # plugins:
    "plugins string": (BASE + "plugins: my_flows\n", "plugins: expected a non-empty list of module names, e.g. [my_flows], "
                                                     "got 'my_flows'"),
    "plugins mapping": (BASE + "plugins: {my_flows: 1}\n", "plugins: expected a non-empty list of module names"),
    "plugins number": (BASE + "plugins: 3\n", "plugins: expected a non-empty list of module names"),
    "plugins empty": (BASE + "plugins: []\n", "plugins: expected a non-empty list of module names"),
    "plugins null": (BASE + "plugins:\n", "plugins: expected a non-empty list of module names"),
    "plugins path": (BASE + "plugins: [./my_flows.py]\n", "plugins: './my_flows.py' is not a module name"),
    "plugins file": (BASE + "plugins: [my_flows.py]\n", "plugins: 'my_flows.py' is not a module name"),
    "plugins list of lists": (BASE + "plugins: [[a]]\n", "plugins: ['a'] is not a module name"),
    "plugins missing": (BASE + "plugins: [fb_no_such_plugin]\n", 'plugins: cannot import "fb_no_such_plugin"'),
    "plugin raises": (BASE + "plugins: [fb_plugin_raises]\n",
                      'plugins: importing "fb_plugin_raises" failed: RuntimeError: no licence server'),
    "plugin syntax error": (BASE + "plugins: [fb_plugin_syntax]\n", 'plugins: "fb_plugin_syntax" has a syntax error'),
    "plugin imports a missing package": (BASE + "plugins: [fb_plugin_imports]\n",
                                         "importing \"fb_plugin_imports\" failed: ModuleNotFoundError: No module named "
                                         "'fb_not_installed'"),
    "plugin exits": (BASE + "plugins: [fb_plugin_exits]\n", 'importing "fb_plugin_exits" failed: SystemExit: 3'),
}
PLUGINS = {"fb_plugin_raises": "raise RuntimeError('no licence server\\nsecond line')\n",
           "fb_plugin_syntax": "def broken(:\n    pass\n",
           "fb_plugin_imports": "import fb_not_installed\n",
           "fb_plugin_exits": "import sys\nsys.exit(3)\n"}


@pytest.mark.parametrize("case", list(SUITE_CASES))
def test_bad_suites_are_one_line_naming_the_file_and_exit_2(case, tmp_path, monkeypatch, capsys):
    text, message = SUITE_CASES[case]
    for name, source in PLUGINS.items():
        _plugin(tmp_path, monkeypatch, name, source)
    path = tmp_path / "suite.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(FlowbenchError) as err:
        load_suite(path).runs()
    assert message in str(err.value) and str(path) in str(err.value) and "\n" not in str(err.value)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert stderr.startswith("flowbench: error: ") and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not results.exists()  # nothing written before the error


def test_a_suite_file_named_dot_is_refused(write_suite):
    with pytest.raises(FlowbenchError, match=r"name: suite name '\.' must be letters"):
        load_suite(write_suite(BASE, "."))  # "..yaml": its name would be "."


@pytest.mark.parametrize("levels", [9, 10])
def test_an_alias_bomb_is_refused_at_once_in_bounded_memory(write_suite, levels):
    path = write_suite(_bomb(levels))
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(FlowbenchError) as err:
        load_suite(path)
    seconds, (_, peak) = time.perf_counter() - start, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert "expands to more than 100,000 values through its aliases" in str(err.value) and str(path) in str(err.value)
    assert seconds < 1 and peak < 20 * 2**20


def test_aliases_that_stay_small_still_work(write_suite):
    suite = load_suite(write_suite(BASE + "overrides:\n  - match: {model: realnvp}\n    train: &t {lr: 0.01}\n"
                                          "  - match: {dataset: moons}\n    train: *t\n"))
    assert suite.runs()[0].train["lr"] == 0.01


@pytest.mark.parametrize("sets, message", [
    (["model.hidden=-16"], "models.realnvp.hidden: expected an integer >= 1, got -16"),
    (["model.hidden=sixteen"], "models.realnvp.hidden: expected an integer >= 1, got 'sixteen'"),
    (["data.n_train=0"], "data.n_train: expected an integer >= 1, got 0"),
    (["train.lr=.nan"], "train.lr: expected a number >= 0, got nan"),
    (["model.scale_bound=.inf"], "models.realnvp.scale_bound: expected a number > 0, got inf"),
])
def test_set_values_are_checked_like_the_suites(write_suite, sets, message):
    path = write_suite(BASE)
    with pytest.raises(FlowbenchError) as err:
        load_suite(path).runs(sets=sets)
    assert message in str(err.value) and str(path) in str(err.value)


def test_numbers_are_coerced_once_to_the_declared_type(write_suite):
    spec = load_suite(write_suite(BASE.replace("n_layers: 2", "n_layers: 2, scale_bound: 2")
                                  .replace("moons: {n_train: 100}", "spirals: {noise: 1}")
                                  .replace("realnvp", "latent_ode").replace("n_layers: 2, scale_bound: 2", "obs_std: 1"))
                      ).runs()[0]
    assert spec.model_config["obs_std"] == 1.0 and isinstance(spec.model_config["obs_std"], float)
    assert spec.data_config["noise"] == 1.0 and isinstance(spec.data_config["noise"], float)


def test_every_default_meets_its_own_declaration():
    from bench.data import REGISTRY
    from bench.data.images import CROP_PADDING, DEQUANTIZE

    for model in BUILTIN:
        for name, param in list(_builder_signature(model).parameters.items())[1:]:
            assert _canonical(conform(param.default, param.annotation)) == _canonical(param.default), (model, name)
    for dataset, entry in REGISTRY.items():
        assert set(entry.checks) == set(entry.options), dataset  # every option declared
        for option, default in entry.options.items():
            assert conform(default, entry.checks[option]) == default, (dataset, option)
    assert REGISTRY["cifar10"].checks["dequantize"].__metadata__[0].values == DEQUANTIZE
    assert REGISTRY["cifar10"].checks["crop_padding"].__metadata__[0].values == CROP_PADDING


# the suites' resolved settings (model, dataset, seed, hyperparameters, data options, metric: the run id
# less the training fields) as the code before the declarations resolved them; update a line when a suite changes
RESOLVED = {
    "cifar10": "d16785766ed99e77", "images-small": "fc3af7de1c2d5869", "infocnf-cifar10": "80ccd1dd50df1f44",
    "infocnf-cifar10-large": "da72b45797c12993", "infocnf-small": "404a3cf64ab41eb3", "mnist": "584db6a8a825592d",
    "smoke": "bb93029473727280", "spirals": "e31563ff92429668", "tabular": "9b18dab7ae54bb1b",
    "tabular-small": "5a5286a679835962", "tolerance-audit": "8fd06ab365dad28e",
}


@pytest.mark.parametrize("name", sorted(RESOLVED))
def test_declarations_leave_the_suites_resolved_values_unchanged(name):
    assert name in suite_names()
    runs = load_suite(SUITES_DIR / f"{name}.yaml").runs()
    content = [[r.label, _canonical({k: v for k, v in r.content().items() if k != "train"})] for r in runs]
    assert hashlib.sha256(json.dumps(content).encode()).hexdigest()[:16] == RESOLVED[name]


# -- the command line ---------------------------------------------------------------------------
def _suite(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(BASE)
    return str(path)


def _blocked(tmp_path):
    """A folder that cannot be made: a file stands where its parent should be (works as root too)."""
    (tmp_path / "a-file").write_text("")
    return str(tmp_path / "a-file" / "out")


CLI_CASES = {
    "device tpu": (lambda t: ["run", _suite(t), "--device", "tpu", "--results", str(t / "r")],
                   "--device tpu: expected auto, cpu, cuda or cuda:N"),
    "device cuda0x": (lambda t: ["run", _suite(t), "--device", "cuda:x", "--dry-run"], "--device cuda:x: expected auto"),
    "seeds empty": (lambda t: ["run", _suite(t), "--seeds", "", "--results", str(t / "r")],
                    "--seeds '': expected integers separated by commas, e.g. 0,1,2"),
    "seeds word": (lambda t: ["run", _suite(t), "--seeds", "0,one", "--dry-run"], "--seeds '0,one': expected integers"),
    "seeds twice": (lambda t: ["run", _suite(t), "--seeds", "0,1,0", "--dry-run"], "--seeds: seed 0 is listed twice"),
    "seeds beyond 2^63": (lambda t: ["run", _suite(t), "--seeds", "9223372036854775808", "--dry-run"],
                          "--seeds: expected an integer in [0, 9223372036854775807], got 9223372036854775808"),
    "audit max-examples": (lambda t: ["audit", _suite(t), "--max-examples", "-5", "--results", str(t / "r")],
                           "--max-examples -5: expected a positive number of test examples, or 0 for the whole"),
    "history last": (lambda t: ["history", _suite(t), "--last", "0", "--results", str(t / "r")],
                     "--last 0: expected a positive number of checks"),
    "run results unwritable": (lambda t: ["run", _suite(t), "--results", _blocked(t), "--quiet"],
                               "/a-file/out is not writable (Not a directory); choose another with --results DIR"),
    "report out unwritable": (lambda t: ["report", _suite(t), "--out", _blocked(t), "--results", str(t / "r")],
                              "report folder"),
    "pin pinned unwritable": (lambda t: ["pin", _suite(t), "--pinned", _blocked(t), "--results", str(t / "r")],
                              "pinned folder"),
    "audit out unwritable": (lambda t: ["audit", _suite(t), "--out", _blocked(t), "--results", str(t / "r")],
                             "audit folder"),
    "history out unwritable": (lambda t: ["history", _suite(t), "--out", _blocked(t), "--results", str(t / "r")],
                               "history folder"),
    "report suite ..": (lambda t: ["report", "..", "--results", str(t / "r"), "--out", str(t / "o")],
                        "suite argument: suite name '..' must be letters"),
    "pin suite .": (lambda t: ["pin", ".", "--results", str(t / "r"), "--pinned", str(t / "p")],
                    "suite argument: suite name '.' must be letters"),
    "argparse": (lambda t: ["audit", _suite(t), "--max-examples", "many"],
                 "argument --max-examples: invalid int value: 'many' (`flowbench audit --help` lists the options)"),
    "argparse missing": (lambda t: ["run"], "flowbench run: error: the following arguments are required: suite"),
}


def _exit_code(argv: list[str]) -> int:
    """``main``'s exit code, argparse's own exits included."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_bad_arguments_are_one_line_and_exit_2_before_any_work(case, tmp_path, capsys):
    argv, message = CLI_CASES[case]
    code = _exit_code(argv(tmp_path))
    stderr = capsys.readouterr().err
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "o").exists()  # nothing read or written
    if "unwritable" in case:
        assert "not writable (Not a directory); choose another with --" in stderr


def test_cuda_without_cuda_stops_before_any_record(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    results = tmp_path / "r"
    assert main(["run", _suite(tmp_path), "--device", "cuda", "--results", str(results), "--quiet"]) == 2
    stderr = capsys.readouterr().err
    assert "--device cuda: CUDA is not available on this machine; use --device cpu or auto" in stderr
    assert len(stderr.strip().splitlines()) == 1 and not results.exists()
    # SLURM's nodes have their own devices: only the name is checked here
    from bench.cli import check_device

    check_device("cuda:1", here=False)


def test_inside_refuses_paths_outside_their_root(tmp_path):
    assert inside(tmp_path, "suite", "run") == tmp_path / "suite" / "run"
    for parts in ((".",), ("..",), ("a", "..", ".."), ("/etc",)):
        with pytest.raises(FlowbenchError, match="would be written outside"):
            inside(tmp_path, *parts)


def test_builder_annotations_do_not_need_evaluating_for_plugins(tmp_path, monkeypatch):
    """A plug-in builder whose annotations do not evaluate keeps working; its values are only kept sane."""
    from baselines.registry import _registered
    from bench.spec import resolve_model_config

    name = _plugin(tmp_path, monkeypatch, "fb_plugin_lazy", "from __future__ import annotations\n"
                   "from baselines import register\n"
                   "@register('fb_lazy')\n"
                   "def build(data, width: NotImported = 3, depth: int = 2):\n    return None\n")
    __import__(name)
    try:
        assert resolve_model_config("fb_lazy", {"width": 5}, "here") == {"width": 5, "depth": 2}
        with pytest.raises(FlowbenchError, match=r"here\.width: got nan: nan is not a finite number"):
            resolve_model_config("fb_lazy", {"width": float("nan")}, "here")
        assert inspect.signature(_registered["fb_lazy"][0]).parameters["depth"].annotation == "int"
    finally:
        _registered.pop("fb_lazy", None)
