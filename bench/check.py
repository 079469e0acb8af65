"""The regression gate: pin a suite's numbers, then check new records against them.

``pin`` writes ``baselines/pinned/SUITE.csv``: per (model, dataset) and quantity (the headline
metric, NFE forward/backward/test, training seconds) the mean over seeds with its spread (std,
min, max, n). ``check`` aggregates the newest records the same way and compares each quantity
with its pinned mean under a tolerance: absolute for NLL, bits/dim and test error, relative for
NFE and time. Only a move in the bad direction (up: every quantity is lower-is-better) beyond
the tolerance is a regression; a move the other way beyond it is reported as improved.

Only ``bench.store`` is imported at module level (pandas and bench.report load on use).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.store import RunRecord

PINNED_DIR = Path(__file__).resolve().parent.parent / "baselines" / "pinned"

# quantity -> record column (the headline metric is added per dataset as its own name, e.g. "nll")
QUANTITIES = {"nfe_forward": "nfe.train_forward", "nfe_backward": "nfe.train_backward", "nfe_test": "nfe.test_forward",
              "train_seconds": "train_seconds"}

# tolerance families: (kind, default). "abs": |current - pinned| in the metric's unit; "rel": fraction of pinned
DEFAULT_TOLERANCES: dict[str, tuple[str, float]] = {
    "nll": ("abs", 0.05),  # nats
    "bpd": ("abs", 0.01),  # bits/dim
    "error": ("abs", 1.0),  # percentage points
    "mse": ("rel", 0.10),
    "nfe": ("rel", 0.10),
    "time": ("rel", 1.0),  # wall-clock differs between machines: only a doubling fails by default
}
PIN_COLUMNS = ["model", "dataset", "quantity", "column", "mean", "std", "min", "max", "n", "seeds"]


def family(quantity: str) -> str:
    """The tolerance family of a quantity: nll, bpd, error, mse, nfe or time."""
    if quantity.startswith("nfe"):
        return "nfe"
    if quantity.endswith("seconds") or quantity in ("time", "wall_clock"):
        return "time"
    for fam in ("nll", "bpd", "error", "mse"):
        if quantity.startswith(fam):
            return fam
    return "nll"


def parse_tolerances(items: Sequence[str] | Mapping[str, Any] | None, where: str = "--tolerance") -> dict[str, float]:
    """``["nll=0.1", "nfe=20%"]`` or a mapping -> {name: value}; a percentage is a fraction."""
    from bench.errors import FlowbenchError

    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else (str(i).partition("=")[::2] for i in items)
    out = {}
    for key, value in pairs:
        key = str(key).strip()
        text = str(value).strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            number = math.nan
        if not key or number != number or number < 0:
            raise FlowbenchError(f"{where} {key}={value}: expected METRIC=NUMBER with a non-negative number, "
                                 "e.g. nll=0.05 (absolute) or nfe=0.1 / nfe=10% (relative)")
        out[key] = number
    return out


def suite_tolerances(check: Mapping[str, Any] | None) -> dict[str, float]:
    """Tolerances from a suite's ``check:`` mapping: flat (``nll: 0.1``) or under ``tolerances:``."""
    if not check:
        return {}
    flat = dict(check.get("tolerances", {})) if isinstance(check.get("tolerances"), Mapping) else {}
    flat.update({k: v for k, v in check.items() if k != "tolerances" and not isinstance(v, Mapping)})
    return parse_tolerances(flat, "suite check:")


def tolerance_for(quantity: str, overrides: Mapping[str, float]) -> tuple[str, float]:
    """(kind, value) for a quantity: an exact override, then its family's override, then the default."""
    fam = family(quantity)
    kind, value = DEFAULT_TOLERANCES[fam]
    for key in (fam, quantity):
        if key in overrides:
            value = overrides[key]
    if fam == "time" and "train_seconds" in overrides:
        value = overrides["train_seconds"]
    return kind, float(value)


# -- summarising records ------------------------------------------------------------------------
def summarise(df, metric: str | None = None):
    """Long table per (model, dataset, quantity): mean, std, min, max, n and seeds of the newest records."""
    import pandas as pd

    from bench.report import prepare

    records = prepare(df, metric=metric)
    done = records.completed
    if done.empty:
        return pd.DataFrame(columns=PIN_COLUMNS), records
    frames = []
    head = done[["model", "dataset", "seed", "headline_metric"]].assign(
        value=done["headline"], column="test." + done["headline_metric"].astype(str)).rename(
        columns={"headline_metric": "quantity"})
    frames.append(head)
    for quantity, column in QUANTITIES.items():
        if column in done:
            frames.append(done[["model", "dataset", "seed"]].assign(
                quantity=quantity, column=column, value=pd.to_numeric(done[column], errors="coerce")))
    long = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    g = long.groupby(["model", "dataset", "quantity", "column"], sort=False)
    out = g["value"].agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    out["seeds"] = g["seed"].agg(lambda s: " ".join(str(int(x)) for x in sorted(s)))
    out = out.reset_index()
    out = out[~((out["quantity"].str.startswith("nfe")) & (out["max"] == 0))]  # no NFE: not a CNF
    return out[PIN_COLUMNS].reset_index(drop=True), records


def pinned_path(suite: str, pinned_dir: str | os.PathLike | None = None) -> Path:
    return Path(pinned_dir) if pinned_dir else PINNED_DIR


def pin(df, suite: str, pinned_dir: str | os.PathLike | None = None, metric: str | None = None):
    """Write ``pinned_dir/SUITE.csv`` from the newest completed records; returns (path, table, records)."""
    from bench.errors import FlowbenchError

    table, records = summarise(df, metric)
    if table.empty:
        raise FlowbenchError(f'suite "{suite}": no completed runs to pin; run `flowbench run {suite}` first')
    path = pinned_path(suite, pinned_dir) / f"{suite}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.6g")
    return path, table, records


# -- checking --------------------------------------------------------------------------------------
@dataclass
class CheckResult:
    """The comparison of every pinned quantity, and the verdict."""

    rows: Any  # DataFrame: model, dataset, quantity, pinned, pinned_std, current, current_std, delta, tolerance, verdict
    missing: list[tuple[str, str]] = field(default_factory=list)  # pinned (model, dataset) without completed records
    unpinned: list[tuple[str, str]] = field(default_factory=list)  # current (model, dataset) not in the pinned file

    @property
    def regressed(self) -> Any:
        return self.rows[self.rows["verdict"] == "regressed"]

    @property
    def exit_code(self) -> int:
        """0 all within tolerance; 1 something regressed; 2 records missing (and nothing regressed)."""
        if len(self.regressed):
            return 1
        return 2 if self.missing else 0


def read_pinned(suite: str, pinned_dir: str | os.PathLike | None = None):
    """The pinned table of a suite; a FlowbenchError when there is none."""
    import pandas as pd

    from bench.errors import FlowbenchError

    path = pinned_path(suite, pinned_dir) / f"{suite}.csv"
    if not path.exists():
        raise FlowbenchError(f'no pinned numbers for suite "{suite}" ({path}); run the suite and `flowbench pin {suite}`')
    try:
        table = pd.read_csv(path, dtype={"model": str, "dataset": str, "quantity": str, "seeds": str})
    except (OSError, ValueError) as err:
        raise FlowbenchError(f"cannot read pinned numbers {path}: {err}") from None
    missing_cols = {"model", "dataset", "quantity", "mean"} - set(table.columns)
    if missing_cols:
        raise FlowbenchError(f"{path}: not a pinned-numbers file (missing columns {', '.join(sorted(missing_cols))}); "
                             f"re-create it with `flowbench pin {suite}`")
    return table


def compare(pinned, current, tolerances: Mapping[str, float] | None = None) -> CheckResult:
    """Compare current summaries with pinned ones under per-quantity tolerances."""
    import numpy as np
    import pandas as pd

    tolerances = dict(tolerances or {})
    cur = current.rename(columns={"mean": "current", "std": "current_std", "n": "current_n"})
    pin_ = pinned.rename(columns={"mean": "pinned", "std": "pinned_std", "n": "pinned_n"})
    keys = ["model", "dataset", "quantity"]
    merged = pin_[[*keys, "pinned", "pinned_std", "pinned_n"]].merge(
        cur[[*keys, "current", "current_std", "current_n"]], on=keys, how="left")
    kinds, tols = zip(*(tolerance_for(q, tolerances) for q in merged["quantity"])) if len(merged) else ((), ())
    merged["kind"] = list(kinds)
    merged["tolerance"] = list(tols)
    merged["delta"] = merged["current"] - merged["pinned"]
    scale = np.where(merged["kind"] == "rel", merged["pinned"].abs().clip(lower=1e-12), 1.0)
    merged["moved"] = merged["delta"] / scale  # in the tolerance's unit
    verdict = np.where(merged["current"].isna(), "missing",
                       np.where(merged["moved"] > merged["tolerance"] + 1e-12, "regressed",
                                np.where(merged["moved"] < -merged["tolerance"] - 1e-12, "improved", "ok")))
    merged["verdict"] = verdict
    done_pairs = set(zip(cur["model"], cur["dataset"]))
    pinned_pairs = list(dict.fromkeys(zip(pin_["model"], pin_["dataset"])))
    missing = [p for p in pinned_pairs if p not in done_pairs]
    unpinned = [p for p in dict.fromkeys(zip(cur["model"], cur["dataset"])) if p not in set(pinned_pairs)]
    return CheckResult(pd.DataFrame(merged), missing, unpinned)


def check(df, suite: str, tolerances: Mapping[str, float] | None = None, pinned_dir: str | os.PathLike | None = None,
          metric: str | None = None) -> CheckResult:
    """Summarise the newest records of ``suite`` and compare them with its pinned numbers."""
    pinned = read_pinned(suite, pinned_dir)
    current, _ = summarise(df, metric)
    return compare(pinned, current, tolerances)


def _fmt(x: float) -> str:
    if x is None or x != x:
        return "–"
    return f"{x:.4g}" if abs(x) < 1e5 else f"{x:.3e}"


def format_result(result: CheckResult, verbose: bool = False) -> str:
    """A table of what moved (every row with ``verbose``), then a one-line verdict."""
    rows = result.rows if verbose else result.rows[result.rows["verdict"] != "ok"]
    lines = []
    if len(rows):
        header = ("model", "dataset", "quantity", "pinned", "current", "change", "tolerance", "verdict")
        body = []
        for r in rows.itertuples(index=False):
            if r.kind == "rel":
                change = f"{100 * r.moved:+.1f}%" if r.moved == r.moved else "–"
                tol = f"±{100 * r.tolerance:g}%"
            else:
                change = f"{r.delta:+.4g}" if r.delta == r.delta else "–"
                tol = f"±{r.tolerance:g}"
            pinned = _fmt(r.pinned) + (f" ± {_fmt(r.pinned_std)}" if r.pinned_std == r.pinned_std else "")
            current = _fmt(r.current) + (f" ± {_fmt(r.current_std)}" if r.current_std == r.current_std else "")
            body.append((r.model, r.dataset, r.quantity, pinned, current, change, tol, r.verdict.upper()
                         if r.verdict == "regressed" else r.verdict))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        for row in (header, *body):
            lines.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    n = len(result.rows)
    counts = result.rows["verdict"].value_counts().to_dict() if n else {}
    summary = ", ".join(f"{counts[k]} {k}" for k in ("regressed", "improved", "missing", "ok") if counts.get(k))
    if result.missing:
        lines.append(f"missing records for {len(result.missing)} pinned (model, dataset): "
                     + ", ".join(f"{m}/{d}" for m, d in result.missing[:10]) + (" ..." if len(result.missing) > 10 else ""))
    if result.unpinned:
        lines.append(f"not pinned (ignored): " + ", ".join(f"{m}/{d}" for m, d in result.unpinned[:10]))
    verdict = {0: "OK", 1: "REGRESSION", 2: "MISSING RECORDS"}[result.exit_code]
    lines.append(f"check: {verdict}: {n} pinned quantities: {summary or 'none'}")
    return "\n".join(lines) + "\n"
