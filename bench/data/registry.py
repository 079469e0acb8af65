"""Dataset registry: ``@register_dataset`` next to the loader, read lazily (listing never imports torch).

A dataset is one loader function ``load(name, root, *, option=default, ...) -> Dataset`` decorated
with ``@register_dataset(name, kind=..., description=..., metric=..., files=...)``; one loader may
register several names. Everything else is read from the loader itself:

* options, their defaults and their declared types and ranges come from its signature
  (``n_train: Count = 20_000``, ``Annotated[float, Range(0, 1)]``: ``baselines.constraints``), and
  ``resolve_data_options`` here checks a suite's (or ``load_dataset``'s) values against them with
  ``constraints.conform`` (``bench.fields.checked``), as ``bench.spec`` does for models;
* ``files`` is the loader module's own file check, ``check(name, root) -> Status`` (what it expects,
  sizes or checksums, and how to get the files), or a ``NoFiles`` declaration (``GENERATED``,
  ``SKLEARN``) for data that is made rather than read; ``flowbench data verify`` calls it;
* ``metric`` is the headline a suite's ``metric: auto`` resolves to: a name of ``bench.metrics.METRICS``
  or a new ``bench.metrics.Metric``, which registering adds to that table.

Three ways in, as for models: the built-in loader modules (``BUILTIN_MODULES``, imported on first
use: they import torch only inside their functions), a suite's ``plugins:`` module, and the
``flowbench.datasets`` entry-point group of an installed package (``name = "package.module"``, the
module that registers ``name``).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any, Union

from bench.data.base import KINDS, NoFiles, Status
from bench import metrics
from bench.errors import FlowbenchError, did_you_mean
from bench.fields import checked

__all__ = ["BUILTIN_MODULES", "ENTRY_POINT_GROUP", "DatasetEntry", "DatasetRegistry", "FileCheck", "REGISTRY",
           "register_dataset", "describe_datasets", "resolve_data_options"]

ENTRY_POINT_GROUP = "flowbench.datasets"
# the modules whose loaders register the built-in datasets (imported on first use of the registry)
BUILTIN_MODULES = ("bench.data.toy", "bench.data.sklearn_sets", "bench.data.tabular", "bench.data.images",
                   "bench.data.timeseries")

FileCheck = Callable[[str, Union[Path, None]], Status]  # check(name, root) -> the dataset's verdict
_FIXED = 2  # a loader's leading parameters: the registered name and the data root


def _qualname(func: Callable) -> str:
    return f"{getattr(func, '__module__', '?')}:{getattr(func, '__qualname__', repr(func))}"


@dataclass(frozen=True, eq=False)
class DatasetEntry:
    """One registered dataset: its loader, kind, description, headline metric and file check.

    ``options`` (defaults) and ``checks`` (declared types and ranges) are read from the loader's
    signature on first use, so there is nothing to restate and nothing that can drift.

    >>> from baselines.constraints import describe
    >>> moons = REGISTRY["moons"]
    >>> moons.kind, moons.metric, moons.where, REGISTRY["digits"].metric
    ('toy', 'nll', 'bench.data.toy:load', 'bpd')
    >>> moons.options["n_train"], describe(moons.checks["n_train"])
    (20000, 'an integer >= 1')
    """

    name: str
    loader: Callable[..., Any]
    kind: str
    description: str
    metric: str = "nll"
    files: FileCheck | NoFiles | None = None
    shape: tuple[int, ...] | None = None  # an image set's C x H x W with its default options

    def data_shape(self, options: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The shape a run's data has: the declared image shape, padded by ``pad`` pixels a side and
        with ``channels`` channels when the options set them (MNIST as Glow's and i-ResNet's code feed
        it: 3x32x32); None when the dataset declares no shape."""
        if self.shape is None:
            return None
        c, h, w = self.shape
        pad = int(options.get("pad") or 0)
        return (int(options.get("channels") or c), h + 2 * pad, w + 2 * pad)

    @property
    def where(self) -> str:
        """``module:function`` of the loader (how messages name it)."""
        return _qualname(self.loader)

    @cached_property
    def _parameters(self) -> list[inspect.Parameter]:
        try:  # annotations evaluated: they declare types and ranges
            signature = inspect.signature(self.loader, eval_str=True)
        except Exception:  # noqa: BLE001 - e.g. names imported only under TYPE_CHECKING: kept as text, unchecked
            signature = inspect.signature(self.loader)
        return list(signature.parameters.values())[_FIXED:]

    @cached_property
    def options(self) -> dict[str, Any]:
        """option -> default, in the loader's order."""
        return {p.name: p.default for p in self._parameters}

    @cached_property
    def checks(self) -> dict[str, Any]:
        """option -> its declared type and range (``Any`` when the loader leaves it undeclared)."""
        return {p.name: (Any if p.annotation is inspect.Parameter.empty else p.annotation) for p in self._parameters}

    def load(self, root: Path | None, options: Mapping[str, Any]) -> Any:
        """The loader called with the registered name, the data root and the options."""
        return self.loader(self.name, root, **options)

    def verify(self, root: Path | None) -> Status:
        """`flowbench data verify`'s verdict, from the dataset's own declaration or file check."""
        if isinstance(self.files, NoFiles):
            return self.files.verify(self.name, root)
        try:
            status = self.files(self.name, root)
        except FlowbenchError as err:
            return Status(self.name, "error", self.where, f"its file check failed: {err}")
        except Exception as err:  # noqa: BLE001 - a plug-in's check may raise anything
            return Status(self.name, "error", self.where, f"its file check failed: {type(err).__name__}: {err}")
        if not isinstance(status, Status):
            return Status(self.name, "error", self.where, f"its file check returned {type(status).__name__}, "
                                                          "not a bench.data.base.Status")
        return status


_registered: dict[str, DatasetEntry] = {}
_builtins = {"state": "not loaded"}


def _load_builtins() -> None:
    """Import the built-in loader modules once (their decorators fill the registry)."""
    if _builtins["state"] != "not loaded":
        return
    _builtins["state"] = "loading"
    try:
        for module in BUILTIN_MODULES:
            importlib.import_module(module)
    except BaseException:
        _builtins["state"] = "not loaded"
        raise
    _builtins["state"] = "loaded"


def _check_signature(loader: Callable, name: str) -> None:
    """A loader takes (name, root) and then options, each with a default (what a suite leaves out)."""
    try:
        params = list(inspect.signature(loader).parameters.values())
    except (TypeError, ValueError) as err:
        raise FlowbenchError(f'dataset "{name}": the loader {_qualname(loader)} has no readable signature ({err})') \
            from None
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) < _FIXED or any(p.kind not in positional for p in params[:_FIXED]):
        raise FlowbenchError(f'dataset "{name}": the loader {_qualname(loader)} must take (name, root, *, option='
                             "default, ...): the registered name and the data root come first")
    for p in params[_FIXED:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise FlowbenchError(f'dataset "{name}": the loader {_qualname(loader)} takes {p}; name every option '
                                 "with its default (option: int = 10), so suites can be checked against them")
        if p.default is inspect.Parameter.empty:
            raise FlowbenchError(f'dataset "{name}": option "{p.name}" of the loader {_qualname(loader)} has no '
                                 "default; give it one (a suite may leave any option out)")


def _metric_name(metric: Any, name: str) -> str:
    """The headline metric's name; a new ``Metric`` is added to ``bench.metrics.METRICS``."""
    if isinstance(metric, metrics.Metric):
        declared = dataclasses.replace(metric, suite_metric=True)
        known = metrics.METRICS.get(metric.name)
        if known is not None and known != declared:
            raise FlowbenchError(f'dataset "{name}": metric "{metric.name}" is already defined differently in '
                                 "bench.metrics.METRICS; use its name (metric=\"" + metric.name + '") or a new name')
        metrics.register_metric(declared)  # checks its tolerance family
        return metric.name
    suite_metrics = metrics.suite_metric_names()
    if metric not in suite_metrics:
        raise FlowbenchError(f'dataset "{name}": unknown headline metric {metric!r}'
                             f"{did_you_mean(str(metric), suite_metrics)}; name one of bench.metrics.METRICS or "
                             "declare a new one with metric=Metric(...)")
    return metric


def register_dataset(name: str, *, kind: str, description: str, metric: Any = "nll",
                     files: FileCheck | NoFiles, shape: tuple[int, ...] | None = None) -> Callable[[Callable], Callable]:
    """Decorator that registers ``load(name, root, *, option=default, ...) -> Dataset`` under ``name``.

    ``kind``: one of ``bench.data.base.KINDS``. ``metric``: the headline metric (a name of
    ``bench.metrics.METRICS``, or a new ``bench.metrics.Metric``). ``files``: the loader module's
    check ``check(name, root) -> Status`` of the files it reads, or ``GENERATED`` / ``SKLEARN`` /
    ``NoFiles(state, where)`` when it reads none. Registering a name that another loader holds is
    an error; the same loader registering again (a module imported twice) replaces its entry.
    ``shape``: an image set's C x H x W with the default options (what bits/dim are per).
    """
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise FlowbenchError(f"register_dataset: the name must be a non-empty word, got {name!r}")
    if kind not in KINDS:
        raise FlowbenchError(f'dataset "{name}": unknown kind {kind!r}{did_you_mean(str(kind), KINDS)}')
    if not (isinstance(files, NoFiles) or callable(files)):
        raise FlowbenchError(f'dataset "{name}": files= must be its file check, check(name, root) -> Status, or '
                             "a NoFiles declaration (GENERATED, SKLEARN) for data it does not read from files")
    metric_name = _metric_name(metric, name)

    def decorate(loader: Callable) -> Callable:
        _check_signature(loader, name)
        if _builtins["state"] == "not loaded":
            _load_builtins()  # so that a plug-in cannot take a built-in's name unnoticed
        held = _registered.get(name)
        if held is not None and _qualname(held.loader) != _qualname(loader):
            raise FlowbenchError(f'dataset "{name}" is registered twice: by {held.where} and by {_qualname(loader)}; '
                                 "give the new one another name")
        _registered[name] = DatasetEntry(name, loader, kind, " ".join(description.split()), metric_name, files,
                                         tuple(shape) if shape else None)
        return loader

    return decorate


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _from_entry_point(name: str, ep: metadata.EntryPoint) -> DatasetEntry:
    """Import the module an entry point names; it must register ``name``."""
    try:
        ep.load()
    except FlowbenchError:
        raise
    except Exception as err:  # noqa: BLE001 - an installed plug-in may raise anything at import
        raise FlowbenchError(f'dataset "{name}": importing its entry point {ep.value} ({ENTRY_POINT_GROUP}) failed: '
                             f"{type(err).__name__}: {err}") from None
    if name not in _registered:
        raise FlowbenchError(f'dataset "{name}": its entry point {ep.value} ({ENTRY_POINT_GROUP}) registers no dataset '
                             f'"{name}"; decorate its loader with @register_dataset("{name}", ...)')
    return _registered[name]


class DatasetRegistry(Mapping[str, DatasetEntry]):
    """name -> DatasetEntry over every way in; membership and names never import a plug-in."""

    def __getitem__(self, name: str) -> DatasetEntry:
        _load_builtins()
        if name in _registered:
            return _registered[name]
        ep = _entry_points().get(name)
        if ep is None:
            raise KeyError(name)
        return _from_entry_point(name, ep)

    def __contains__(self, name: object) -> bool:
        _load_builtins()
        return name in _registered or name in _entry_points()

    def __iter__(self) -> Iterator[str]:
        _load_builtins()
        return iter(sorted(set(_registered) | set(_entry_points())))

    def __len__(self) -> int:
        return len(list(iter(self)))


REGISTRY = DatasetRegistry()


def resolve_data_options(dataset: str, options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Dataset options with the loader's defaults filled in, each checked against its declaration
    (the loader's signature, read by ``REGISTRY``: type and range; an undeclared option is only
    kept sane)."""
    entry = REGISTRY[dataset]
    out = dict(entry.options)
    for key, value in options.items():
        if key not in entry.options:
            raise FlowbenchError(f'{where}: dataset "{dataset}" has no option "{key}"'
                                 f"{did_you_mean(str(key), entry.options)}")
        out[key] = checked(value, entry.checks.get(key, Any), f"{where}.{key}")
    return out


def describe_datasets() -> dict[str, tuple[str, str]]:
    """name -> (kind, one-line description), sorted, without importing torch or an entry point's module."""
    _load_builtins()
    out = {name: (e.kind, e.description) for name, e in _registered.items()}
    for name, ep in _entry_points().items():
        out.setdefault(name, ("plug-in", f"plug-in dataset from {ep.value}"))
    return dict(sorted(out.items()))
