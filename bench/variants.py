"""Variants: the settings a suite sweeps besides datasets x models x seeds.

A suite's ``grid:`` maps dotted keys to lists of values (every combination is a variant, labelled by
its values: ``lr=0.001 atol=1e-05``); its ``variants:`` map names to settings (``large``); both may
be limited to some models or datasets with ``match:`` as overrides are, and name the published
``setting`` they reproduce. ``--set`` values label their runs the same way. A (model, dataset) pair
gets one run per seed for every combination of the named variants and grid points that apply to
it, or a single plain run (label "") when none does.

The label is carried in spec.json (never in the run id: the settings already are), and report,
pin, check, status and audit key on (model, variant, dataset).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.errors import FlowbenchError, did_you_mean
from bench.fields import check_train
from bench.slurm import slurm_parameters

__all__ = ["Axes", "combine", "fmt_value", "from_sets", "label_of", "matches", "optional_text", "parse_grid",
           "parse_match", "parse_settings", "parse_variants", "PLAIN", "row_label", "run_label", "SECTIONS",
           "short_names", "slurm_resources", "Variant", "VARIANT_KEYS"]

SECTIONS = ("train", "model", "data")
VARIANT_KEYS = ("match", "setting", "published_model", "slurm", *SECTIONS)
_NAME = re.compile(r"[A-Za-z0-9_.+-]+")


@dataclass(frozen=True)
class Variant:
    """A label and the settings it changes (section -> name -> value)."""

    label: str = ""
    settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    sweep: Mapping[str, Any] = field(default_factory=dict)  # dotted key -> value, for the sweep figure
    setting: str | None = None  # the published rows' setting it reproduces (None: inherited)
    published_model: str | None = None  # the published rows' model name (None: the model's own)
    models: frozenset[str] | None = None  # match: (None: every model)
    datasets: frozenset[str] | None = None
    slurm: Mapping[str, Any] = field(default_factory=dict)  # SLURM resources of its runs (not in the run id)

    def applies(self, model: str, dataset: str) -> bool:
        """Whether the variant's match: takes in this (model, dataset) pair."""
        return (self.models is None or model in self.models) and (self.datasets is None or dataset in self.datasets)

    def section(self, name: str) -> dict[str, Any]:
        """The settings of one section (train, model or data) as a new mapping."""
        return dict(self.settings.get(name, {}))


PLAIN = Variant()


def combine(parts: Iterable[Variant]) -> Variant:
    """One variant from several (a named variant, a grid point, --set): labels joined, later settings win."""
    parts = list(parts)
    settings: dict[str, dict[str, Any]] = {}
    sweep: dict[str, Any] = {}
    setting = published = None
    slurm: dict[str, Any] = {}
    for p in parts:
        for section, values in p.settings.items():
            settings.setdefault(section, {}).update(values)
        sweep.update(p.sweep)
        slurm.update(p.slurm)
        setting = p.setting if p.setting is not None else setting
        published = p.published_model if p.published_model is not None else published
    label = " ".join(p.label for p in parts if p.label)
    return Variant(label, settings, sweep, setting, published, slurm=slurm)


# -- labels -------------------------------------------------------------------------------------
def fmt_value(value: Any) -> str:
    """A setting's value as a label shows it: 0.001, 1e-05, true, 64/64/64."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "/".join(fmt_value(v) for v in value)
    return str(value).replace(" ", "_").replace(",", ";")


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Dotted key -> the name a label uses: its last part, or the whole key when that is ambiguous."""
    last = [k.rpartition(".")[2] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def label_of(values: Mapping[str, Any], names: Mapping[str, str] | None = None) -> str:
    """``{"train.lr": 0.001, "model.atol": 1e-05}`` -> ``"lr=0.001 atol=1e-05"``."""
    names = names or short_names(list(values))
    return " ".join(f"{names[k]}={fmt_value(v)}" for k, v in values.items())


def matches(label: str, wanted: str) -> bool:
    """``--only variant=WANTED``: the label itself, or every space-separated part of WANTED is one of its parts."""
    return label == wanted or (bool(wanted.split()) and set(wanted.split()) <= set(label.split()))


def row_label(model: str, variant: str) -> str:
    """A table row or a figure's legend entry: ``ffjord`` or ``ffjord (lr=0.001)``."""
    return f"{model} ({variant})" if variant else model


def run_label(model: str, variant: str, dataset: str, seed: int) -> str:
    """A run as messages name it: ``ffjord/moons/seed0`` or ``ffjord/moons/seed0 (lr=0.001)``."""
    return f"{model}/{dataset}/seed{seed}" + (f" ({variant})" if variant else "")


# -- parsing ------------------------------------------------------------------------------------
def parse_match(match: Any, where: str, models: Mapping | Iterable[str], datasets: Mapping | Iterable[str]
                ) -> tuple[frozenset[str] | None, frozenset[str] | None]:
    """``match: {model: ..., dataset: ...}`` -> (models, datasets), each None when not limited."""
    if not isinstance(match, Mapping) or not match or set(match) - {"model", "dataset"}:
        raise FlowbenchError(f"{where}.match: expected a mapping with model: and/or dataset:, got {match!r}")
    out: dict[str, frozenset[str]] = {}
    for key, known in (("model", models), ("dataset", datasets)):
        if key in match:
            values = match[key] if isinstance(match[key], list) else [match[key]]
            if not values or not all(isinstance(v, str) for v in values):
                raise FlowbenchError(f"{where}.match.{key}: expected a {key} name or a non-empty list of names, "
                                     f"got {match[key]!r}")
            for v in values:
                if v not in known:
                    raise FlowbenchError(f'{where}.match.{key}: "{v}" is not in this suite{did_you_mean(str(v), known)}')
            out[key] = frozenset(values)
    return out.get("model"), out.get("dataset")


def _split_key(key: Any, where: str) -> tuple[str, str]:
    section, dot, name = str(key).partition(".")
    if not dot or not name or section not in SECTIONS:
        raise FlowbenchError(f'{where}: "{key}" is not a setting; use train.NAME, model.NAME or data.NAME'
                             + (did_you_mean(section, SECTIONS) if dot else ""))
    return section, name


def _checked(section: str, name: str, value: Any, where: str) -> Any:
    """A training value validated (and normalised: 1 -> 1.0 for a float field); others are checked per run."""
    if section != "train":
        return value
    return check_train({name: value}, where)[name]


def optional_text(raw: Mapping, key: str, where: str) -> str | None:
    """An optional one-line text field (``setting:``, ``published_model:``), whitespace collapsed."""
    value = raw.get(key)
    if value is not None and not (isinstance(value, str) and value.strip()):
        raise FlowbenchError(f"{where}.{key}: expected a line of text, got {value!r}")
    return " ".join(value.split()) if value is not None else None


def slurm_resources(raw: Any, where: str) -> dict[str, Any]:
    """A ``slurm:`` mapping of an override or variant (resources of its runs only: never in the run id),
    each key checked as the suite's are."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise FlowbenchError(f"{where}: expected a mapping of SLURM resources, e.g. {{gpus_per_node: 4}}, got {raw!r}")
    slurm_parameters(raw, where, defaults=False)
    return dict(raw)


def parse_settings(raw: Mapping, where: str, extra: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Sections (``train: {lr: 1e-3}``) and dotted keys (``train.lr: 1e-3``) -> section -> name -> value;
    keys in ``extra`` are left to the caller, anything else is an error naming ``where``."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if key in extra:
            continue
        if key in SECTIONS:
            if not isinstance(value, Mapping):
                raise FlowbenchError(f"{where}.{key}: expected a mapping of settings, got {value!r}")
            for name, v in value.items():
                out.setdefault(key, {})[str(name)] = _checked(key, str(name), v, f"{where}.{key}")
            continue
        if "." not in str(key):
            raise FlowbenchError(f'{where}: unknown key "{key}"{did_you_mean(str(key), [*extra, *SECTIONS])}')
        section, name = _split_key(key, where)
        out.setdefault(section, {})[name] = _checked(section, name, value, f"{where}.{section}")
    return out


def parse_variants(raw: Any, where: str, models: Mapping, datasets: Mapping) -> list[Variant]:
    """A suite's ``variants:`` mapping, name -> settings (with optional match:, setting:, published_model:)."""
    if raw is None:
        return []
    if not isinstance(raw, Mapping) or not raw:
        raise FlowbenchError(f"{where}: expected a mapping of variant names to settings, got {raw!r}")
    out = []
    for name, body in raw.items():
        at = f"{where}.{name}"
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise FlowbenchError(f"{where}: variant name {name!r} must be letters, digits, '_', '.', '+' or '-'")
        body = body or {}
        if not isinstance(body, Mapping):
            raise FlowbenchError(f"{at}: expected a mapping of settings, got {body!r}")
        ms, ds = parse_match(body["match"], at, models, datasets) if "match" in body else (None, None)
        settings = parse_settings(body, at, extra=("match", "setting", "published_model", "slurm"))
        out.append(Variant(name, settings, {}, optional_text(body, "setting", at),
                           optional_text(body, "published_model", at), ms, ds,
                           slurm_resources(body.get("slurm"), f"{at}.slurm")))
    return out


def parse_grid(raw: Any, where: str, models: Mapping, datasets: Mapping) -> list[Variant]:
    """A suite's ``grid:`` (dotted key -> list of values, optional match:) -> one variant per combination."""
    import itertools

    if raw is None:
        return []
    if not isinstance(raw, Mapping) or not (set(raw) - {"match"}):
        raise FlowbenchError(f"{where}: expected a mapping of dotted settings to lists of values, "
                             f"e.g. {{train.lr: [1e-3, 5e-4]}}, got {raw!r}")
    ms, ds = parse_match(raw["match"], where, models, datasets) if "match" in raw else (None, None)
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if key == "match":
            continue
        section, name = _split_key(key, where)
        if not isinstance(values, list) or not values:
            raise FlowbenchError(f"{where}.{key}: expected a non-empty list of values, got {values!r}")
        checked = [_checked(section, name, v, f"{where}.{section}") for v in values]
        labels = [fmt_value(v) for v in checked]
        if len(set(labels)) < len(labels):
            raise FlowbenchError(f"{where}.{key}: a value is listed twice ({', '.join(labels)})")
        axes[f"{section}.{name}"] = checked
    names = short_names(list(axes))
    points = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo))
        settings: dict[str, dict[str, Any]] = {}
        for key, value in values.items():
            section, name = key.split(".", 1)
            settings.setdefault(section, {})[name] = value
        points.append(Variant(label_of(values, names), settings, values, None, None, ms, ds))
    return points


def from_sets(cli: Mapping[str, Any]) -> Variant:
    """``--set`` values (``parse_sets``' mapping) as a variant labelled by them (PLAIN when there are none)."""
    values = {f"{section}.{name}": v for section in SECTIONS for name, v in (cli.get(section) or {}).items()}
    if "metric" in cli:
        values["metric"] = cli["metric"]
    if not values:
        return PLAIN
    settings = {s: dict(cli[s]) for s in SECTIONS if cli.get(s)}
    return Variant(label_of(values), settings, {k: v for k, v in values.items() if k != "metric"})


@dataclass
class Axes:
    """A suite's named variants and grid points; ``for_pair`` combines those that apply to a pair."""

    named: list[Variant] = field(default_factory=list)
    grid: list[Variant] = field(default_factory=list)

    @property
    def swept(self) -> set[str]:
        """Dotted keys the grid sweeps."""
        return {k for p in self.grid for k in p.sweep}

    def check(self, where: str) -> None:
        """A named variant must not set what the grid sweeps (which of the two would win is unclear)."""
        swept = self.swept
        for v in self.named:
            for section, values in v.settings.items():
                both = sorted(f"{section}.{k}" for k in values if f"{section}.{k}" in swept)
                if both:
                    raise FlowbenchError(f"{where}: variants.{v.label} sets {', '.join(both)}, which grid: sweeps; "
                                         "set it in one place")

    def check_sets(self, cli: Variant) -> None:
        """``--set`` must not set what the grid sweeps (``--only variant=`` picks grid values)."""
        both = sorted(k for k in cli.sweep if k in self.swept)
        if both:
            raise FlowbenchError(f"--set {both[0]}: the suite sweeps {both[0]} in its grid:; pick grid values with "
                                 f'--only "variant={label_of({both[0]: cli.sweep[both[0]]})}" instead')

    def for_pair(self, model: str, dataset: str, cli: Variant = PLAIN) -> list[Variant]:
        """Every variant of one (model, dataset): named x grid points that apply, then --set on top."""
        named = [v for v in self.named if v.applies(model, dataset)] or [PLAIN]
        points = [p for p in self.grid if p.applies(model, dataset)] or [PLAIN]
        return [combine((n, p, cli)) for n in named for p in points]
