"""Suites and runs: load a suite's YAML, validate every field, expand the grid into RunSpecs.

A suite names datasets, models and seeds, the training defaults, per-model / per-dataset /
per-(model, dataset) overrides, budgets, the headline metric, and the variants it sweeps
(``grid:``, ``variants:``; ``bench.variants``). Each RunSpec is fully resolved (defaults filled in)
and its ``run_id`` is a short hash of that content, so a finished run is recognised on a re-run and
a changed hyperparameter is a new run. A run's variant label and the published setting it
reproduces travel with it (spec.json) but are not part of the hash.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from baselines.constraints import Seed
from baselines.registry import flat_signature, get_builder, model_names
from bench import variants as _variants
from bench.data import REGISTRY
from bench.data.registry import resolve_data_options
from bench.errors import FlowbenchError, did_you_mean
from bench.fields import MODEL_RUN_ID_OPTIONAL, RUN_ID_OPTIONAL, TRAIN_DEFAULTS, _Loader, check_train, checked, parse_value
from bench.metrics import SUITE_METRICS, suite_metric_names
from bench.trackers import check_trackers

__all__ = ["check_seeds", "check_suite_name", "find_suite", "import_suite_plugins", "load_suite", "METRICS",
           "MODULE_NAME", "ONLY_KEYS", "Override", "OVERRIDE_KEYS", "parse_only", "parse_sets", "read_yaml",
           "resolve_model_config", "RunSpec", "Suite", "SUITE_KEYS", "suite_metrics", "SUITE_NAME", "suite_names",
           "SUITES_DIR"]

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"
METRICS = ("auto", *SUITE_METRICS)  # a suite's `metric:` (bench/metrics.py defines each)


def suite_metrics() -> tuple[str, ...]:
    """A suite's `metric:` choices now: METRICS plus any headline metric a registered dataset declared
    (``register_dataset(metric=Metric(...))`` adds it to ``bench.metrics.METRICS``)."""
    return ("auto", *suite_metric_names())


SUITE_KEYS = {
    "name": "suite name (defaults to the file name)",
    "description": "one line on what the suite is for",
    "metric": "headline metric: auto (each dataset's own), nll, bpd, ...",
    "datasets": "list of dataset names, or a mapping name -> data options",
    "models": "list of model names, or a mapping name -> hyperparameters",
    "seeds": "list of integer seeds",
    "train": "training defaults (see TRAIN_FIELDS)",
    "overrides": "list of {match: {model, dataset}, model:, train:, data:, skip:, setting:, published_model:, slurm:}",
    "grid": "settings to sweep: dotted key -> list of values (every combination is a variant), optional match:",
    "variants": "named variants: name -> {train:, model:, data: (or dotted keys), match:, setting:, published_model:, "
                "slurm:}",
    "setting": "the setting of the published rows the suite reproduces (baselines/published.csv's `setting`)",
    "data_root": "where loaders find real data files",
    "plugins": "modules to import that register extra models and datasets",
    "slurm": "SLURM resources for --executor slurm",
    "trackers": "experiment trackers every run logs to: tensorboard, mlflow, wandb (off by default; not in the run id)",
    "check": "tolerances for `flowbench check`",
    "sources": "where the hyperparameters come from (free text or mapping)",
    "differences": "differences from the papers kept on purpose (a list of lines; shown under the report's table)",
}
OVERRIDE_KEYS = ("match", "model", "train", "data", "skip", "setting", "published_model", "slurm")


# -- runs -------------------------------------------------------------------------------------
def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


@dataclass(frozen=True, eq=False)
class RunSpec:
    """One fully resolved run: what to train, on what, how, and how it is judged."""

    suite: str
    model: str
    dataset: str
    seed: int
    model_config: dict[str, Any] = field(default_factory=dict)
    data_config: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    metric: str = "nll"
    variant: str = ""  # the label of the suite's variant ("" for a plain run); not in the run id
    sweep: dict[str, Any] = field(default_factory=dict)  # swept settings (dotted key -> value); not in the run id
    setting: str = ""  # the published setting the run reproduces (published.csv); not in the run id
    published_model: str = ""  # the published rows' model name when not the model's own; not in the run id
    plugins: list[str] = field(default_factory=list)  # the suite's plugin modules, imported by worker processes
    plugin_path: str = ""  # the folder plugins were imported from (the submitting process's working directory)
    slurm: dict[str, Any] = field(default_factory=dict)  # SLURM resources (suite < override < variant); not in the run id
    trackers: list[str] = field(default_factory=list)  # experiment trackers (bench.trackers); not in the run id
    compile: bool = False  # torch.compile the CNF dynamics (`run --compile`): same arithmetic; not in the run id

    def content(self) -> dict[str, Any]:
        """Everything that determines the result (the suite's name, the variant's label and the
        published setting do not)."""
        return {"model": self.model, "dataset": self.dataset, "seed": self.seed,
                "model_config": self.model_config, "data_config": self.data_config,
                "train": self.train, "metric": self.metric}

    def hashed_content(self) -> dict[str, Any]:
        """``content()`` less the RUN_ID_OPTIONAL training fields that are at their default: what the
        run id hashes, so that adding such a field keeps every existing run id."""
        content = self.content()
        train = {k: v for k, v in content["train"].items()
                 if not (k in RUN_ID_OPTIONAL and type(v) is type(TRAIN_DEFAULTS[k]) and v == TRAIN_DEFAULTS[k])}
        return {**content, "train": train}

    @cached_property
    def run_id(self) -> str:
        return hashlib.sha256(_canonical(self.hashed_content()).encode()).hexdigest()[:12]

    @property
    def label(self) -> str:
        return _variants.run_label(self.model, self.variant, self.dataset, self.seed)

    def identity(self) -> dict[str, Any]:
        """What names the run in its records: run id, suite, model, variant, dataset, seed."""
        return {"run_id": self.run_id, "suite": self.suite, "model": self.model, "variant": self.variant,
                "dataset": self.dataset, "seed": self.seed}

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "suite": self.suite, "variant": self.variant, "sweep": self.sweep,
                "setting": self.setting, "published_model": self.published_model, "plugins": self.plugins,
                "plugin_path": self.plugin_path, "slurm": self.slurm, "trackers": self.trackers, "compile": self.compile, **self.content()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunSpec":
        return cls(suite=d["suite"], model=d["model"], dataset=d["dataset"], seed=d["seed"],
                   model_config=dict(d.get("model_config", {})), data_config=dict(d.get("data_config", {})),
                   train=dict(d.get("train", {})), metric=d.get("metric", "nll"), variant=d.get("variant") or "",
                   sweep=dict(d.get("sweep") or {}), setting=d.get("setting") or "",
                   published_model=d.get("published_model") or "", plugins=list(d.get("plugins") or []),
                   plugin_path=d.get("plugin_path") or "", slurm=dict(d.get("slurm") or {}),
                   trackers=list(d.get("trackers") or []), compile=bool(d.get("compile", False)))

    def import_plugins(self) -> None:
        """Import the suite's plugin modules in this process (a worker started by an executor), so their
        models and datasets are registered before the run is built."""
        for module in self.plugins:
            _import_plugin(module, f"run {self.label} (spec.json)", self.plugin_path)


# -- suites -----------------------------------------------------------------------------------
@dataclass
class Override:
    models: set[str] | None
    datasets: set[str] | None
    model: dict[str, Any]
    train: dict[str, Any]
    data: dict[str, Any]
    skip: bool = False  # leave the matched (model, dataset) pairs out of the grid
    setting: str | None = None  # the published setting of the matched pairs (None: unchanged)
    published_model: str | None = None  # the published rows' model name for the matched pairs
    slurm: dict[str, Any] = field(default_factory=dict)  # SLURM resources of the matched pairs' runs

    def applies(self, model: str, dataset: str) -> bool:
        return (self.models is None or model in self.models) and (self.datasets is None or dataset in self.datasets)


@dataclass
class Suite:
    name: str
    path: Path
    description: str
    metric: str
    datasets: dict[str, dict[str, Any]]
    models: dict[str, dict[str, Any]]
    seeds: list[int]
    train: dict[str, Any]
    overrides: list[Override]
    data_root: str | None = None
    plugins: list[str] = field(default_factory=list)
    slurm: dict[str, Any] = field(default_factory=dict)
    check: dict[str, Any] = field(default_factory=dict)
    differences: list[str] = field(default_factory=list)
    setting: str = ""  # the published setting the suite reproduces
    axes: _variants.Axes = field(default_factory=_variants.Axes)  # grid: and variants:
    trackers: list[str] = field(default_factory=list)  # experiment trackers of every run (bench.trackers)

    def runs(self, only: Mapping[str, set[str]] | None = None, seeds: Iterable[int] | None = None,
             sets: Iterable[str] = (), check_models: bool = True) -> list[RunSpec]:
        """Expand the grid (datasets x models x variants x seeds), filtered by ``only``, with ``--set`` applied."""
        only = dict(only or {})
        for key in only:
            if key not in ONLY_KEYS:
                raise FlowbenchError(f'--only: unknown key "{key}"; use model=, dataset=, variant= or seed=')
        for key, names in (("model", self.models), ("dataset", self.datasets)):
            for value in only.get(key, ()):
                if value not in names:
                    raise FlowbenchError(f'--only {key}={value}: the suite "{self.name}" has no {key} '
                                         f'"{value}"{did_you_mean(value, names)}')
        seed_list = check_seeds(list(seeds), "--seeds") if seeds is not None else list(self.seeds)
        if "seed" in only:
            try:
                wanted = {int(s) for s in only["seed"]}
            except ValueError:
                raise FlowbenchError(f"--only seed=: expected integers, got {sorted(only['seed'])}") from None
            seed_list = [s for s in seed_list if s in wanted]
        cli = parse_sets(sets)
        cli_variant = _variants.from_sets(cli)
        self.axes.check_sets(cli_variant)
        metric = cli.pop("metric", self.metric)
        if metric not in suite_metrics():
            raise FlowbenchError(f"--set metric={metric}: unknown metric{did_you_mean(str(metric), suite_metrics())}")

        specs: list[RunSpec] = []
        labels: set[str] = set()
        for dataset, data_options in self.datasets.items():
            if "dataset" in only and dataset not in only["dataset"]:
                continue
            for model, hparams in self.models.items():
                if "model" in only and model not in only["model"]:
                    continue
                if any(ov.skip and ov.applies(model, dataset) for ov in self.overrides):
                    continue  # a pair the suite leaves out (e.g. a time-series model on 2-D toy data)
                run_metric = REGISTRY[dataset].metric if metric == "auto" else metric
                pair = self._pair_variants(model, dataset, hparams, data_options, cli_variant, check_models)
                labels.update(spec.variant for spec in pair)
                pair = [s for s in pair if "variant" not in only or any(
                    _variants.matches(s.variant, w) for w in only["variant"])]
                for base in pair:
                    for seed in seed_list:
                        specs.append(RunSpec(self.name, model, dataset, seed, copy.deepcopy(base.model_config),
                                             dict(base.data_config), dict(base.train), run_metric, base.variant,
                                             dict(base.sweep), base.setting, base.published_model,
                                             list(self.plugins), os.getcwd() if self.plugins else "",
                                             dict(base.slurm), list(self.trackers)))
        for wanted in only.get("variant", ()):
            if not any(_variants.matches(label, wanted) for label in labels):
                raise FlowbenchError(f'--only variant={wanted}: the suite "{self.name}" has no variant "{wanted}"'
                                     f"{did_you_mean(wanted, sorted(labels - {''}))}")
        if not specs:
            raise FlowbenchError(f"{self.path}: the grid is empty after filters "
                                 f"(datasets {list(self.datasets)}, models {list(self.models)}, seeds {seed_list})")
        return specs


    def _pair_variants(self, model: str, dataset: str, hparams: Mapping[str, Any], data_options: Mapping[str, Any],
                       cli_variant: _variants.Variant, check_models: bool) -> list[RunSpec]:
        """One resolved seedless RunSpec per variant of a (model, dataset) pair: suite defaults <
        overrides < the variant (named, then grid point) < ``--set``; two variants that resolve to
        the same settings are an error."""
        model_base, train_base, data_base = dict(hparams), {**TRAIN_DEFAULTS, **self.train}, dict(data_options)
        setting, published_model, slurm = self.setting, "", dict(self.slurm)
        for ov in self.overrides:
            if ov.applies(model, dataset):
                slurm.update(ov.slurm)
                model_base.update(ov.model), train_base.update(ov.train), data_base.update(ov.data)
                setting = ov.setting if ov.setting is not None else setting
                published_model = ov.published_model if ov.published_model is not None else published_model
        out: list[RunSpec] = []
        seen: dict[str, str] = {}
        for var in self.axes.for_pair(model, dataset, cli_variant):
            where = f"{self.path} ({model} on {dataset}" + (f", variant {var.label})" if var.label else ")")
            train_cfg = {**TRAIN_DEFAULTS, **check_train({**train_base, **var.section("train")}, f"{where}: train")}
            _check_budget(train_cfg, where)
            data_cfg = resolve_data_options(dataset, {**data_base, **var.section("data")}, f"{where}: data")
            model_cfg = {**model_base, **var.section("model")}
            if check_models:
                model_cfg = resolve_model_config(model, model_cfg, f"{where}: models.{model}")
            spec = RunSpec(self.name, model, dataset, 0, model_cfg, data_cfg, train_cfg, "-", var.label,
                           dict(var.sweep), var.setting if var.setting is not None else setting,
                           var.published_model if var.published_model is not None else published_model,
                           slurm={**slurm, **var.slurm})
            if spec.run_id in seen:
                raise FlowbenchError(f'{self.path}: variants "{seen[spec.run_id]}" and "{var.label}" give identical '
                                     f"runs of {model} on {dataset} (the same settings); make them differ or drop one")
            seen[spec.run_id] = var.label
            out.append(spec)
        return out


def _check_budget(train: Mapping[str, Any], where: str) -> None:
    if not any(train.get(k) for k in ("max_steps", "max_epochs", "max_minutes")):
        raise FlowbenchError(f"{where}: train: no budget; set max_steps, max_epochs or max_minutes")


_signatures: dict[str, inspect.Signature] = {}


def _builder_signature(model: str) -> inspect.Signature:
    """The builder's signature as suites see it (``baselines.registry.flat_signature``): an options
    dataclass parameter stands for its fields, flat; annotations evaluated (they declare types and
    ranges); a plug-in whose annotations do not evaluate keeps them as text, and its values go unchecked."""
    if model not in _signatures:
        try:
            _signatures[model] = flat_signature(get_builder(model))
        except TypeError as err:  # a field declared twice: the builder's code must change
            raise FlowbenchError(f'model "{model}": {err}') from None
    return _signatures[model]


def resolve_model_config(model: str, config: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Hyperparameters with the builder's defaults filled in, each given value checked against the
    builder's annotation (``baselines.constraints``); unknown names get a did-you-mean. A
    MODEL_RUN_ID_OPTIONAL option at its default is left out (the builder's default applies)."""
    params = {n: p for n, p in list(_builder_signature(model).parameters.items())[1:]
              if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    for key in config:
        if key not in params:
            raise FlowbenchError(f'{where}: model "{model}" has no hyperparameter "{key}"{did_you_mean(str(key), params)}')
    out = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
    missing = [n for n, p in params.items() if p.default is inspect.Parameter.empty and n not in config]
    if missing:
        raise FlowbenchError(f'{where}: model "{model}" needs hyperparameter(s) {", ".join(missing)}')
    out.update({key: checked(value, params[key].annotation, f"{where}.{key}") for key, value in config.items()})
    for name in MODEL_RUN_ID_OPTIONAL:
        if name in out and type(out[name]) is type(params[name].default) and out[name] == params[name].default:
            del out[name]
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in out.items()}


def parse_sets(sets: Iterable[str]) -> dict[str, Any]:
    """``["train.max_steps=200", "model.hidden=32", "metric=nll"]`` -> nested mapping."""
    out: dict[str, Any] = {}
    for item in sets:
        key, eq, text = item.partition("=")
        if not eq or not key:
            raise FlowbenchError(f'--set {item}: expected KEY=VALUE, e.g. "train.max_steps=200"')
        section, dot, name = key.partition(".")
        if not dot:
            if key != "metric":
                raise FlowbenchError(f'--set {item}: "{key}" is not settable; use train.X=, model.X=, data.X= or metric=')
            out["metric"] = parse_value(text)
            continue
        if section not in ("train", "model", "data"):
            raise FlowbenchError(f'--set {item}: unknown section "{section}"{did_you_mean(section, ["train", "model", "data"])}')
        out.setdefault(section, {})[name] = parse_value(text)
    return out


ONLY_KEYS = ("model", "dataset", "variant", "seed")


def parse_only(text: str | None) -> dict[str, set[str]]:
    """``"model=realnvp,glow,dataset=moons"`` -> {"model": {realnvp, glow}, "dataset": {moons}}.

    After ``variant=`` a piece starts a new key only when it begins with one of ``ONLY_KEYS`` and "=",
    so variant labels may hold "=": ``variant=lr=0.001,lr=0.0005`` is two labels.
    """
    out: dict[str, set[str]] = {}
    key = None
    for piece in filter(None, (p.strip() for p in (text or "").split(","))):
        head, eq, rest = piece.partition("=")
        if eq and (key != "variant" or head.strip() in ONLY_KEYS):
            key, value = head.strip(), rest
        elif key is None:
            raise FlowbenchError(f'--only {text}: expected KEY=VALUE pairs, e.g. "model=realnvp,dataset=moons"')
        else:
            value = piece
        out.setdefault(key, set()).add(value.strip())
    return out


def find_suite(name_or_path: str | os.PathLike) -> Path:
    """A suite file: an existing path, else ``suites/NAME.yaml`` here, in $FLOWBENCH_SUITES or in the project."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if path.is_file():
            return path
        raise FlowbenchError(f"suite file {path} does not exist")
    dirs = [Path("suites"), *(Path(p) for p in os.environ.get("FLOWBENCH_SUITES", "").split(os.pathsep) if p), SUITES_DIR]
    for d in dirs:
        for ext in (".yaml", ".yml"):
            if (d / f"{name_or_path}{ext}").is_file():
                return d / f"{name_or_path}{ext}"
    known = suite_names()
    raise FlowbenchError(f'unknown suite "{name_or_path}"{did_you_mean(str(name_or_path), known)}; '
                         f"looked in {', '.join(str(d) for d in dict.fromkeys(dirs))}")


def suite_names() -> list[str]:
    dirs = [Path("suites"), *(Path(p) for p in os.environ.get("FLOWBENCH_SUITES", "").split(os.pathsep) if p), SUITES_DIR]
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.y*ml")})


def read_yaml(path: Path) -> Any:
    """A suite file's YAML: UTF-8 text, no duplicate keys, aliases bounded; every problem one line
    naming the file and where in it."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise FlowbenchError(f"cannot read suite file {path}: {err.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise FlowbenchError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}, line "
                             f"{line}); save the file as UTF-8") from None
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.reader.ReaderError as err:  # a control character
        raise FlowbenchError(f"{path}: line {text.count(chr(10), 0, err.position) + 1} is not valid YAML: "
                             f"character #x{err.character:04x} is not allowed; remove it") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        raise FlowbenchError(f"{path}:{at} is not valid YAML: {problem}") from None
    except RecursionError:
        raise FlowbenchError(f"{path}: nested too deeply to read; flatten the document") from None


def _names(value: Any, where: str, kind: str) -> dict[str, dict[str, Any]]:
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        if not all(isinstance(v, str) for v in value):
            raise FlowbenchError(f"{where}: expected a list of {kind} names, got {value!r}")
        return {v: {} for v in value}
    if isinstance(value, Mapping):
        out = {}
        for name, opts in value.items():
            if opts is None:
                opts = {}
            if not isinstance(opts, Mapping):
                raise FlowbenchError(f"{where}.{name}: expected a mapping of options, got {opts!r}")
            out[str(name)] = dict(opts)
        return out
    raise FlowbenchError(f"{where}: expected a list or mapping of {kind} names, got {value!r}")


SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")


def check_suite_name(name: Any, where: str) -> str:
    """A suite's name names its folders under --results, --out and --pinned, so it is an identifier:
    letters, digits, '-', '_' and '.', starting with a letter or digit (never "." or "..", no separators)."""
    if not isinstance(name, str) or not SUITE_NAME.fullmatch(name):
        raise FlowbenchError(f"{where}: suite name {name!r} must be letters, digits, '-', '_' or '.' (at most 100), "
                             "starting with a letter or digit; it names the suite's folders")
    return name


def check_seeds(seeds: Any, where: str) -> list[int]:
    """A non-empty list of distinct seeds (one integer is a list of one), each in [0, 2^63 - 1]."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds:
        raise FlowbenchError(f"{where}: expected a non-empty list of integer seeds, got {seeds!r}")
    out = [checked(s, Seed, where) for s in seeds]
    seen: set[int] = set()
    for s in out:
        if s in seen:
            raise FlowbenchError(f"{where}: seed {s} is listed twice (its runs would be trained twice); list it once")
        seen.add(s)
    return out


def load_suite(name_or_path: str | os.PathLike) -> Suite:
    """Read and validate a suite file (a path, or a name looked up as ``suites/NAME.yaml``); every
    problem is a FlowbenchError naming the file and field. ``Suite.runs()`` expands the grid into
    one ``RunSpec`` per dataset x model x variant x seed, each model's settings completed from its
    builder's defaults.

    >>> import tempfile
    >>> tmp = tempfile.TemporaryDirectory()
    >>> path = Path(tmp.name, "tiny.yaml")
    >>> _ = path.write_text("datasets: {moons: {n_train: 500}}\\n"
    ...                     "models: {realnvp: {n_layers: 2}, glow: {}}\\n"
    ...                     "seeds: [0, 1]\\n")
    >>> runs = load_suite(path).runs()
    >>> [run.label for run in runs]
    ['realnvp/moons/seed0', 'realnvp/moons/seed1', 'glow/moons/seed0', 'glow/moons/seed1']
    >>> runs[0].model_config["n_layers"], runs[0].model_config["hidden"]  # the suite's, the default
    (2, 64)
    >>> _ = path.write_text("datasets: {moons: {}}\\nmodels: {realnvpp: {}}\\n")
    >>> load_suite(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    bench.errors.FlowbenchError: .../tiny.yaml: models: unknown model "realnvpp" (did you mean "realnvp"?)
    >>> tmp.cleanup()
    """
    path = find_suite(name_or_path)
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise FlowbenchError(f"{path}: a suite is a mapping with at least datasets and models")
    for key in raw:
        if key not in SUITE_KEYS:
            raise FlowbenchError(f'{path}: unknown key "{key}"{did_you_mean(str(key), SUITE_KEYS)}')
    for key in ("datasets", "models"):
        if not raw.get(key):
            raise FlowbenchError(f"{path}: {key}: missing or empty; name at least one")
    suite_name = check_suite_name(raw.get("name", path.stem), f"{path}: name")
    data_root = raw.get("data_root")
    if data_root is not None and not (isinstance(data_root, str) and data_root.strip()):
        raise FlowbenchError(f"{path}: data_root: expected a folder (text), got {data_root!r}")
    plugins = _plugins(raw, path)
    for module in plugins:
        _import_plugin(module, path)
    models = _names(raw["models"], f"{path}: models", "model")
    known_models = model_names()
    for name in models:
        if name not in known_models:
            raise FlowbenchError(f'{path}: models: unknown model "{name}"{did_you_mean(name, known_models)}')
    datasets = _names(raw["datasets"], f"{path}: datasets", "dataset")
    for name in datasets:
        if name not in REGISTRY:
            raise FlowbenchError(f'{path}: datasets: unknown dataset "{name}"{did_you_mean(name, REGISTRY)}')

    seeds = check_seeds(raw.get("seeds", [0]), f"{path}: seeds")
    metric = raw.get("metric", "auto")
    if metric not in suite_metrics():
        raise FlowbenchError(f'{path}: metric: unknown metric "{metric}"{did_you_mean(str(metric), suite_metrics())}')
    train = check_train(raw.get("train") or {}, f"{path}: train")
    overrides = [_override(o, i, path, models, datasets) for i, o in enumerate(raw.get("overrides") or [])]
    axes = _variants.Axes(_variants.parse_variants(raw.get("variants"), f"{path}: variants", models, datasets),
                          _variants.parse_grid(raw.get("grid"), f"{path}: grid", models, datasets))
    axes.check(str(path))
    setting = raw.get("setting") or ""
    if not isinstance(setting, str):
        raise FlowbenchError(f"{path}: setting: expected a line of text (published.csv's setting), got {setting!r}")
    for key in ("slurm", "check"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise FlowbenchError(f"{path}: {key}: expected a mapping, got {raw[key]!r}")
    differences = raw.get("differences") or []
    if not isinstance(differences, list) or not all(isinstance(d, str) and d.strip() for d in differences):
        raise FlowbenchError(f"{path}: differences: expected a list of non-empty lines of text, got {differences!r}")
    return Suite(name=suite_name, path=path, description=str(raw.get("description", "")), metric=metric,
                 datasets=datasets, models=models, seeds=seeds, train=train, overrides=overrides,
                 data_root=data_root, plugins=list(plugins),
                 slurm=dict(raw.get("slurm") or {}), check=dict(raw.get("check") or {}),
                 differences=[" ".join(d.split()) for d in differences], setting=" ".join(setting.split()), axes=axes,
                 trackers=check_trackers(raw.get("trackers"), f"{path}: trackers"))


def _override(raw: Any, index: int, path: Path, models: Mapping, datasets: Mapping) -> Override:
    where = f"{path}: overrides[{index}]"
    if not isinstance(raw, Mapping):
        raise FlowbenchError(f"{where}: expected a mapping with match: and model:/train:/data:/skip:")
    for key in raw:
        if key not in OVERRIDE_KEYS:
            raise FlowbenchError(f'{where}: unknown key "{key}"{did_you_mean(str(key), OVERRIDE_KEYS)}')
    match_models, match_datasets = _variants.parse_match(raw.get("match"), where, models, datasets)
    for key in ("model", "data"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise FlowbenchError(f"{where}.{key}: expected a mapping, got {raw[key]!r}")
    skip = raw.get("skip", False)
    if not isinstance(skip, bool):
        raise FlowbenchError(f"{where}.skip: expected true/false, got {skip!r}")
    return Override(models=match_models, datasets=match_datasets, model=dict(raw.get("model") or {}),
                    train=check_train(raw.get("train") or {}, f"{where}.train"), data=dict(raw.get("data") or {}),
                    skip=skip, setting=_variants.optional_text(raw, "setting", where),
                    published_model=_variants.optional_text(raw, "published_model", where),
                    slurm=_variants.slurm_resources(raw.get("slurm"), f"{where}.slurm"))


MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def import_suite_plugins(name_or_path: str | os.PathLike) -> list[str]:
    """Import a suite's ``plugins:`` modules (and nothing else of it), so that their models and datasets
    are listed and verified; the module names."""
    path = find_suite(name_or_path)
    raw = read_yaml(path)
    plugins = _plugins(raw, path) if isinstance(raw, Mapping) else []
    for module in plugins:
        _import_plugin(module, path)
    return plugins


def _plugins(raw: Mapping, path: Path) -> list[str]:
    """``plugins:``: a non-empty list of module names as ``import`` takes them (``my_flows``, ``pkg.flows``)."""
    if "plugins" not in raw:
        return []
    value = raw["plugins"]
    if not isinstance(value, list) or not value:
        raise FlowbenchError(f"{path}: plugins: expected a non-empty list of module names, e.g. [my_flows], "
                             f"got {value!r}")
    for module in value:
        if not isinstance(module, str) or not MODULE_NAME.fullmatch(module) or module.endswith(".py"):
            raise FlowbenchError(f"{path}: plugins: {module!r} is not a module name; name it as `import` does "
                                 "(my_flows, package.flows), not as a file, with its folder on PYTHONPATH")
    return value


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _import_plugin(module: str, path: Path | str, folder: str = "") -> None:
    """Import a plug-in module from ``folder`` (default: the working directory) or the import path;
    whatever goes wrong is one line naming ``path`` (the suite file, or the run), the module and the error."""
    import importlib
    import sys

    folder = folder or os.getcwd()
    if folder not in sys.path and not (folder == os.getcwd() and "" in sys.path):
        sys.path.insert(0, folder)
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name and (module == err.name or module.startswith(f"{err.name}.")):
            raise FlowbenchError(f'{path}: plugins: cannot import "{module}" ({err}); is it on PYTHONPATH?') from None
        raise FlowbenchError(f'{path}: plugins: importing "{module}" failed: {_first_line(err)}') from None
    except SyntaxError as err:
        raise FlowbenchError(f'{path}: plugins: "{module}" has a syntax error: {err.msg} ({err.filename}, line '
                             f"{err.lineno})") from None
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a plug-in may raise anything at import
        raise FlowbenchError(f'{path}: plugins: importing "{module}" failed: {_first_line(err)}') from None
