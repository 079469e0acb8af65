"""The protocol a number was measured under: what must agree before two numbers share a column, a
gap or a bold.

A test metric is a definition (``bench.metrics``) *and* a protocol:

- ``dims``: the shape bits/dim are per (``1x28x28``; ``3x32x32`` for MNIST padded and tiled as
  Glow's and i-ResNet's code feed it). Bits/dim over 784 and over 3,072 dimensions are different
  numbers.
- ``dequantize``: how test images were dequantised: ``uniform`` noise (FFJORD, Glow) or the bin
  ``center`` (x + 0.5) / 256 (RNODE's test loop).
- ``checkpoint``: which weights were tested: ``best_val`` (the best validation metric), ``best_test``
  (the validation curve is the test set), ``final``, or ``lowest`` (the lowest value over the
  evaluations, as InfoCNF's Table 1 reports test error).
- ``device``: where time and memory were measured (a GPU's name; ``unknown GPU`` for a paper's
  hours): time is never compared across hardware.

A record's protocol comes from its resolved spec (``of_record``: the flattened ``spec.json``
columns a scan reads, so every record has one, old ones included); a published row's from its own
columns in ``baselines/published.csv`` (``of_published``; an empty field states nothing). Two
numbers are comparable when no field that both state differs (``differences``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = ["differences", "FIELDS", "of_published", "of_record", "of_spec", "Protocol", "shape_text"]


@dataclass(frozen=True)
class Protocol:
    """The facts that decide comparability ("" where a field does not apply or is not stated)."""

    dims: str = ""
    dequantize: str = ""
    checkpoint: str = ""
    device: str = ""


FIELDS = tuple(f.name for f in fields(Protocol))


def shape_text(shape: tuple[int, ...] | None) -> str:
    """``(3, 32, 32)`` -> ``"3x32x32"``; "" for None."""
    return "x".join(str(d) for d in shape) if shape else ""


def _value(row: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = row.get(key, default)
    return default if value is None or (isinstance(value, float) and value != value) else value


def of_record(row: Mapping[str, Any]) -> Protocol:
    """A record's protocol from its flattened spec (``dataset``, ``data_config.*``, ``train.*``) and
    environment (``env.device_kind``, ``env.device_name``)."""
    from bench.data import REGISTRY

    dataset = str(_value(row, "dataset", ""))
    entry = REGISTRY.get(dataset) if hasattr(REGISTRY, "get") else None
    options = {k.split(".", 1)[1]: v for k, v in row.items() if str(k).startswith("data_config.")}
    options = {k: _value(options, k) for k in options}
    shape = entry.data_shape(options) if entry is not None else None
    dequantize = str(options.get("dequantize") or "uniform") if shape else ""
    if not _value(row, "train.restore_best", True):
        checkpoint = "final"
    else:
        checkpoint = "best_test" if _value(options, "n_val") == 0 else "best_val"
    kind, name = _value(row, "env.device_kind", ""), _value(row, "env.device_name", "")
    return Protocol(shape_text(shape), dequantize, checkpoint, str(name or kind or ""))


def of_spec(dataset: str, data_config: Mapping[str, Any], train: Mapping[str, Any], device: str = "") -> Protocol:
    """A run's protocol from its resolved spec (``of_record`` on the columns a scan would read)."""
    row = {"dataset": dataset, "train.restore_best": train.get("restore_best", True), "env.device_name": device,
           **{f"data_config.{k}": v for k, v in data_config.items()}}
    return of_record(row)


def of_published(row: Mapping[str, Any]) -> Protocol:
    """A published row's protocol from its ``dims``, ``dequantize``, ``checkpoint`` and ``device``
    columns (absent or empty: not stated)."""
    return Protocol(*(str(_value(row, f, "") or "").strip() for f in FIELDS))


def differences(ours: Protocol, theirs: Protocol, with_device: bool = False) -> list[str]:
    """``field: ours vs theirs`` for each field both state that differs (``device`` only for time and
    memory, ``with_device``)."""
    out = []
    for name in FIELDS:
        if name == "device" and not with_device:
            continue
        a, b = getattr(ours, name), getattr(theirs, name)
        if a and b and a != b:
            out.append(f"{name} {a} vs {b}")
        elif name == "device" and b and not a:
            out.append(f"device unknown vs {b}")
    return out
