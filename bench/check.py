"""The regression gate: pin a suite's numbers, then check new records against them.

``pin`` writes ``SUITE.csv`` into the suite's pinned folder (``pinned_folder``: the package's
baselines/pinned for a shipped suite, ``pinned/`` beside a user's own suite file, or ``--pinned``):
per (model, variant, dataset) and quantity (the
headline metric, a conditional model's conditional NLL, NFE forward/backward/test, training
seconds) the mean over seeds with its spread (std, min, max, n) and the seeds. ``check``
aggregates the newest records the same way and compares each quantity with its pinned mean under
a tolerance (``bench.metrics``: absolute for NLL, bits/dim and test error, relative for MSE, NFE
and time). A move in the bad direction beyond the tolerance is a regression only when it is also
significant: with two or more seeds on both sides, Welch's t-test (one-sided, alpha 0.05 by
default, the suite's ``check: {alpha: ...}`` or ``--alpha``); with one seed on either side the
tolerance alone decides, and the output says so. Time quantities depend on the hardware: the pinned
file records the device kind (``cpu``, ``cuda``) and name its runs trained on, and time is gated only
when the current records ran on the same kind; otherwise (or for a file pinned before the
``device_kind`` column) it is shown for information (verdict ``info``). Pinned and current quantities are matched by
(model, variant, dataset, record column), so a file pinned before variants (no ``variant``
column) still reads, and a pinned ``nll`` of ``test.nll`` meets the same column.

Only the light ``bench.errors``, ``bench.metrics`` and ``bench.stats`` are imported at module level;
pandas and bench.report load on use.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError, did_you_mean
from bench.metrics import METRICS, TOLERANCE_FAMILIES
from bench.stats import welch

__all__ = ["check", "CheckResult", "compare", "DEFAULT_ALPHA", "DEVICE_BOUND", "family", "format_result", "KEYS", "parse_alpha",
           "parse_tolerances", "pin", "PIN_COLUMNS", "PINNED_DIR", "pinned_folder", "pinned_path", "QUANTITIES",
           "read_pinned", "shipped", "suite_alpha", "suite_tolerances", "summarise", "tolerance_for",
           "unusable_pinned_runs", "VERDICTS"]

PINNED_DIR = Path(__file__).resolve().parent.parent / "baselines" / "pinned"
KEYS = ["model", "variant", "dataset"]
# pinned besides the headline (named after its metric, e.g. "nll") and a conditional model's conditional NLL
QUANTITIES = ("nfe_forward", "nfe_backward", "nfe_test", "train_seconds")
PIN_COLUMNS = ["model", "variant", "dataset", "quantity", "column", "mean", "std", "min", "max", "n", "seeds",
               "device_kind", "device_name"]
DEFAULT_ALPHA = 0.05
VERDICTS = ("regressed", "improved", "noise", "missing", "info", "ok")  # info: shown, not gated (other device)
DEVICE_BOUND = ("time",)  # tolerance families measured on the hardware: gated only between like devices


def family(quantity: str, where: str = "check") -> str:
    """The tolerance family of a quantity (``bench.metrics``): nll, bpd, error, mse, nfe or time."""
    metric = METRICS.get(quantity)
    if metric is None or metric.family is None:
        checkable = [n for n, m in METRICS.items() if m.family]
        raise FlowbenchError(f'{where}: "{quantity}" is not a quantity check compares{did_you_mean(quantity, checkable)}')
    return metric.family


def _number(key: str, value: Any, where: str, example: str) -> float:
    text = str(value).strip()
    try:
        number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        number = math.nan
    if not key or number != number or number < 0:
        raise FlowbenchError(f"{where} {key}={value}: expected {example}")
    return number


def parse_tolerances(items: Sequence[str] | Mapping[str, Any] | None, where: str = "--tolerance") -> dict[str, float]:
    """``["nll=0.1", "nfe=20%"]`` or a mapping -> {name: value}; a percentage is a fraction. A name is
    a tolerance family (nll, bpd, error, mse, nfe, time) or a quantity (nfe_backward, train_seconds)."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else (str(i).partition("=")[::2] for i in items)
    out = {}
    example = ("METRIC=NUMBER with a non-negative number, e.g. nll=0.05 (absolute) or nfe=0.1 / nfe=10% (relative)")
    for key, value in pairs:
        key = str(key).strip()
        number = _number(key, value, where, example)
        if key not in TOLERANCE_FAMILIES:
            family(key, f"{where} {key}={value}")  # an unknown name never silently gets NLL's tolerance
        out[key] = number
    return out


def parse_alpha(value: Any, where: str = "--alpha") -> float:
    """A significance level in (0, 1)."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = math.nan
    if not 0 < alpha < 1:
        raise FlowbenchError(f"{where}: expected a significance level between 0 and 1 (e.g. 0.05), got {value!r}")
    return alpha


def suite_tolerances(check: Mapping[str, Any] | None, where: str = "suite check:") -> dict[str, float]:
    """Tolerances from a suite's ``check:`` mapping: flat (``nll: 0.1``) or under ``tolerances:``
    (``alpha:`` is the significance level, not a tolerance)."""
    if not check:
        return {}
    flat = dict(check.get("tolerances", {})) if isinstance(check.get("tolerances"), Mapping) else {}
    flat.update({k: v for k, v in check.items() if k not in ("tolerances", "alpha") and not isinstance(v, Mapping)})
    return parse_tolerances(flat, where)


def suite_alpha(check: Mapping[str, Any] | None, where: str = "suite check:") -> float | None:
    """The suite's ``check: {alpha: ...}``, or None."""
    if not check or check.get("alpha") is None:
        return None
    return parse_alpha(check["alpha"], f"{where} alpha")


def tolerance_for(quantity: str, overrides: Mapping[str, float]) -> tuple[str, float]:
    """(kind, value) for a quantity: an exact override, then its family's override, then the default."""
    fam = family(quantity)
    kind, value = TOLERANCE_FAMILIES[fam]
    for key in (fam, quantity):
        if key in overrides:
            value = overrides[key]
    if fam == "time" and "train_seconds" in overrides:
        value = overrides["train_seconds"]
    return kind, float(value)


# -- summarising records ------------------------------------------------------------------------
def summarise(df, metric: str | None = None, labels: Mapping[str, Mapping[str, Any]] | None = None):
    """Long table per (model, variant, dataset, quantity): mean, std, min, max, n and seeds of the
    newest completed records; and the records (``bench.report.prepare``)."""
    import pandas as pd

    from bench.report import prepare

    records = prepare(df, metric=metric, labels=labels)
    done = records.completed
    if done.empty:
        return pd.DataFrame(columns=PIN_COLUMNS), records
    frames = [done[[*KEYS, "seed"]].assign(quantity=done["headline_metric"].astype(str),
                                           column="test." + done["headline_field"].astype(str),
                                           value=done["headline"])]
    cond = done[done["headline_field"] != done["headline_metric"]]  # conditional models: their own -log p(x|y)
    for name, group in cond.groupby("headline_metric"):
        twin = METRICS.get(f"{name}_conditional")
        if twin is not None and twin.source in group:
            frames.append(group[[*KEYS, "seed"]].assign(quantity=twin.name, column=twin.source,
                                                        value=pd.to_numeric(group[twin.source], errors="coerce")))
    for quantity in QUANTITIES:
        column = METRICS[quantity].source
        if column in done:
            frames.append(done[[*KEYS, "seed"]].assign(quantity=quantity, column=column,
                                                       value=pd.to_numeric(done[column], errors="coerce")))
    long = pd.concat(frames, ignore_index=True).dropna(subset=["value"])
    g = long.groupby([*KEYS, "quantity", "column"], sort=False)
    out = g["value"].agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    out["seeds"] = g["seed"].agg(lambda s: " ".join(str(int(x)) for x in sorted(s)))
    out = out.reset_index().merge(_devices(done), on=KEYS, how="left")
    out = out[~((out["quantity"].str.startswith("nfe")) & (out["max"] == 0))]  # no NFE: not a CNF
    return out[PIN_COLUMNS].reset_index(drop=True), records


def _one_value(values) -> str:
    """The one value a group of runs shares, "mixed" when they differ, "" when none is known."""
    known = {str(v) for v in values if isinstance(v, str) and v}
    return known.pop() if len(known) == 1 else "mixed" if known else ""


def _devices(done):
    """Per (model, variant, dataset): the device kind and name its runs trained on (``env.device_kind``,
    or the kind of ``env.device`` in a record from before that field)."""
    def column(name: str) -> list:
        return list(done[name]) if name in done else [None] * len(done)

    kinds = [kind if isinstance(kind, str) and kind else str(device).split(":")[0] if isinstance(device, str) else ""
             for kind, device in zip(column("env.device_kind"), column("env.device"))]
    frame = done[KEYS].assign(device_kind=kinds, device_name=column("env.device_name"))
    g = frame.groupby(KEYS, sort=False)
    return g.agg(device_kind=("device_kind", _one_value), device_name=("device_name", _one_value)).reset_index()


def pinned_path(suite: str, pinned_dir: str | os.PathLike | None = None) -> Path:
    """The folder of pinned files: ``pinned_dir`` or baselines/pinned (``pinned_folder`` chooses it for a suite)."""
    return Path(pinned_dir) if pinned_dir else PINNED_DIR


def shipped(suite_file: str | os.PathLike) -> bool:
    """Whether a suite file is one the package ships (it lies in the package's suites/ folder)."""
    from bench.spec import SUITES_DIR

    return Path(suite_file).resolve().parent == SUITES_DIR.resolve()


def pinned_folder(suite: str, suite_file: str | os.PathLike | None = None,
                  pinned_dir: str | os.PathLike | None = None) -> Path:
    """Where a suite's pinned file lives, so that `pin` writes and `check` reads the same place.

    ``pinned_dir`` (``--pinned``) when given; the package's baselines/pinned for a suite it ships; a
    ``pinned/`` folder beside a user's own suite file (SUITE_DIR/pinned/NAME.csv), so a user's pins
    never land inside the installed package. Without a suite file (only records), baselines/pinned
    when it already holds NAME.csv, else a FlowbenchError asking for ``--pinned``.
    """
    if pinned_dir:
        return Path(pinned_dir)
    if suite_file:
        return PINNED_DIR if shipped(suite_file) else Path(suite_file).parent / "pinned"
    if (PINNED_DIR / f"{suite}.csv").exists():
        return PINNED_DIR
    raise FlowbenchError(f'suite "{suite}": no suite file found, so there is no folder beside it for its pinned '
                         f"numbers; pass the suite file (e.g. path/to/{suite}.yaml: pins go to path/to/pinned/) "
                         "or --pinned DIR")


def pin(df, suite: str, pinned_dir: str | os.PathLike | None = None, metric: str | None = None,
        labels: Mapping[str, Mapping[str, Any]] | None = None):
    """Write ``pinned_dir/SUITE.csv`` from the newest completed records; returns (path, table, records)."""
    table, records = summarise(df, metric, labels)
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

    rows: Any  # DataFrame: KEYS, quantity, column, pinned(_std, _n), current(_std, _n), delta, moved, kind,
    #            tolerance, test ("welch" or "tolerance"), p (one-sided, toward the verdict), verdict,
    #            pinned_device, current_device, device_note (why a time row is info, not gated)
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # pinned rows without completed records
    unpinned: list[tuple[str, str, str]] = field(default_factory=list)  # current rows not in the pinned file
    alpha: float = DEFAULT_ALPHA
    git_sha: str | None = None  # the commit most of the checked records ran at
    failed_runs: list[tuple[str, str]] = field(default_factory=list)  # (pinned run or record, why it does not count)

    @property
    def regressed(self) -> Any:
        """The rows whose verdict is regressed."""
        return self.rows[self.rows["verdict"] == "regressed"]

    @property
    def exit_code(self) -> int:
        """0 all within tolerance or noise; 1 something regressed, or a pinned seed failed, diverged, timed
        out, is missing beside its pair's other seeds, lacks its test metric, or a record is unreadable;
        2 records missing for whole pinned (model, variant, dataset) rows (and nothing else wrong)."""
        if len(self.regressed) or self.failed_runs:
            return 1
        return 2 if self.missing else 0


def read_pinned(suite: str, pinned_dir: str | os.PathLike | None = None):
    """The pinned table of a suite (a file from before variants reads with variant ""); a
    FlowbenchError when there is none or it is not one."""
    import pandas as pd

    path = pinned_path(suite, pinned_dir) / f"{suite}.csv"
    if not path.exists():
        raise FlowbenchError(f'no pinned numbers for suite "{suite}" ({path}); run the suite and `flowbench pin {suite}`')
    try:
        table = pd.read_csv(path, dtype={"model": str, "variant": str, "dataset": str, "quantity": str, "seeds": str,
                                         "device_kind": str, "device_name": str},
                            keep_default_na=False, na_values={c: [""] for c in ("mean", "std", "min", "max", "n")})
    except (OSError, ValueError) as err:
        raise FlowbenchError(f"cannot read pinned numbers {path}: {err}") from None
    missing_cols = {"model", "dataset", "quantity", "mean"} - set(table.columns)
    if missing_cols:
        raise FlowbenchError(f"{path}: not a pinned-numbers file (missing columns {', '.join(sorted(missing_cols))}); "
                             f"re-create it with `flowbench pin {suite}`")
    if "variant" not in table:
        table["variant"] = ""
    for q in table["quantity"].unique():
        family(q, f"{path}: quantity")
    if "column" not in table:
        table["column"] = [METRICS[q].source for q in table["quantity"]]
    for col, default in (("std", math.nan), ("n", 1), ("device_kind", ""), ("device_name", "")):
        if col not in table:
            table[col] = default
    return table


def _judge(pinned: float, pinned_std: float, pinned_n: float, current: float, current_std: float,
           current_n: float, quantity: str, kind: str, tol: float, alpha: float) -> tuple[float, str, float, str]:
    """(moved in the tolerance's unit, positive = worse; test; p; verdict) of one quantity."""
    if current != current:
        return math.nan, "", math.nan, "missing"
    scale = max(abs(pinned), 1e-12) if kind == "rel" else 1.0
    moved = METRICS[quantity].sign * (current - pinned) / scale
    beyond = moved > tol + 1e-12 or moved < -tol - 1e-12
    seeds = min(int(pinned_n or 1), int(current_n or 1))
    if seeds < 2 or pinned_std != pinned_std or current_std != current_std:
        return moved, "tolerance", math.nan, ("regressed" if moved > tol + 1e-12 else
                                              "improved" if moved < -tol - 1e-12 else "ok")
    w = welch(pinned, pinned_std, int(pinned_n), current, current_std, int(current_n))
    worse, better = (w.p_greater, w.p_less) if METRICS[quantity].sign > 0 else (w.p_less, w.p_greater)
    p = worse if moved > 0 else better
    if not beyond:
        return moved, "welch", p, "ok"
    if p >= alpha:
        return moved, "welch", p, "noise"  # past the tolerance, but within the seeds' spread
    return moved, "welch", p, "regressed" if moved > 0 else "improved"


def compare(pinned, current, tolerances: Mapping[str, float] | None = None, alpha: float = DEFAULT_ALPHA) -> CheckResult:
    """Compare current summaries with pinned ones: tolerance per quantity, and Welch's t-test where
    both sides have two or more seeds."""
    import pandas as pd

    tolerances = dict(tolerances or {})
    cur = current.rename(columns={"mean": "current", "std": "current_std", "n": "current_n"})
    pin_ = pinned.rename(columns={"mean": "pinned", "std": "pinned_std", "n": "pinned_n"})
    on = [*KEYS, "column"]
    merged = pin_[[*on, "quantity", "pinned", "pinned_std", "pinned_n"]].merge(
        cur[[*on, "current", "current_std", "current_n"]], on=on, how="left")
    kinds, tols, moved, tests, ps, verdicts = [], [], [], [], [], []
    for r in merged.itertuples(index=False):
        kind, tol = tolerance_for(r.quantity, tolerances)
        m, test, p, verdict = _judge(r.pinned, r.pinned_std, r.pinned_n, r.current, r.current_std, r.current_n,
                                     r.quantity, kind, tol, alpha)
        kinds.append(kind), tols.append(tol), moved.append(m), tests.append(test), ps.append(p), verdicts.append(verdict)
    merged = merged.assign(kind=kinds, tolerance=tols, delta=merged["current"] - merged["pinned"], moved=moved,
                           test=tests, p=ps, verdict=verdicts)
    merged = _ungate_other_devices(merged, pin_, cur)
    done = set(zip(*(cur[k] for k in KEYS)))
    pinned_keys = list(dict.fromkeys(zip(*(pin_[k] for k in KEYS))))
    missing = [k for k in pinned_keys if k not in done]
    unpinned = [k for k in dict.fromkeys(zip(*(cur[k] for k in KEYS))) if k not in set(pinned_keys)]
    return CheckResult(pd.DataFrame(merged), missing, unpinned, alpha)


def _device_note(quantity: str, verdict: str, pinned: str, current: str) -> str:
    """Why a hardware-bound quantity is not gated ("" when it is): its devices differ or are unknown."""
    if family(quantity) not in DEVICE_BOUND or verdict == "missing":
        return ""
    if pinned in ("", "mixed"):
        return "pinned device unknown" if not pinned else "pinned on mixed devices"
    if current != pinned:
        return f"pinned on {pinned}, now {current or 'unknown'}"
    return ""


def _ungate_other_devices(merged, pinned, current):
    """Time rows whose pinned and current device kinds differ (or are unknown) become ``info``."""
    def kinds(table, name: str):
        if "device_kind" not in table:
            return table[KEYS].drop_duplicates().assign(**{name: ""})
        return table[[*KEYS, "device_kind"]].drop_duplicates(KEYS).rename(columns={"device_kind": name})

    merged = merged.merge(kinds(pinned, "pinned_device"), on=KEYS, how="left").merge(
        kinds(current, "current_device"), on=KEYS, how="left")
    notes = [_device_note(q, v, p if isinstance(p, str) else "", c if isinstance(c, str) else "")
             for q, v, p, c in zip(merged["quantity"], merged["verdict"], merged["pinned_device"],
                                   merged["current_device"])]
    ungated = [bool(n) for n in notes]
    merged["device_note"] = notes
    merged.loc[ungated, "verdict"] = "info"
    merged.loc[ungated, "test"] = ""
    return merged


def _pinned_seeds(group) -> list[int]:
    """The seeds a pinned (model, variant, dataset) row was pinned from (its ``seeds`` column)."""
    seeds: set[int] = set()
    for word in " ".join(group["seeds"].dropna().astype(str)).split():
        try:
            seeds.add(int(float(word)))
        except ValueError:  # a hand-edited file: the seeds that read are checked
            pass
    return sorted(seeds)


def _number_or_none(value: Any) -> float | None:
    """A finite number as result.json holds one (a JSON number, not a string of digits), else None."""
    if isinstance(value, (bool, str)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def unusable_pinned_runs(pinned, records, skipped: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """(run, why) for each pinned seed whose newest record does not count: failed, diverged, timed out,
    preempted, unfinished or absent while its row's other seeds have records, or completed without a
    number for a pinned test metric; and (path, why) for each unreadable record of the suite. A pinned
    row with no finished record at all is ``missing`` instead (the suite has not been run)."""
    from bench.variants import run_label

    problems = [(str(path), f"unreadable record ({reason})") for path, reason in skipped]
    if "seeds" not in pinned or records.df.empty:
        return problems
    wanted = ["status", "error", *{c for c in pinned["column"].dropna() if str(c).startswith("test.")}]
    df = records.df.reindex(columns=[*KEYS, "seed", *wanted])  # only what is judged: cheap on 10,000 rows
    newest = {(m, v, d, int(seed)): row for m, v, d, seed, row in
              zip(df["model"], df["variant"], df["dataset"], df["seed"], df[wanted].to_dict("records"))}
    for (model, variant, dataset), group in pinned.groupby(KEYS, sort=False):
        seeds = _pinned_seeds(group)
        rows = {seed: newest.get((model, variant, dataset, seed)) for seed in seeds}
        if not any(r is not None and r["status"] not in ("pending", "running") for r in rows.values()):
            continue  # nothing finished for the whole row: reported as missing
        columns = [c for c in dict.fromkeys(group["column"]) if str(c).startswith("test.")]
        for seed, row in rows.items():
            label = run_label(model, variant, dataset, seed)
            if row is None:
                problems.append((label, "no record (pinned)"))
            elif row["status"] != "completed":  # failed, diverged, timeout, preempted, oom, or still unfinished
                error = row.get("error")
                error = error if isinstance(error, str) and error else ""
                problems.append((label, f"{row['status']}" + (f": {error[:120]}" if error else "")))
            else:
                for column in columns:
                    if _number_or_none(row.get(column)) is None:
                        value = row.get(column)
                        shown = "absent" if value is None or (isinstance(value, float) and value != value) \
                            else f"{value!r}, not a number"
                        problems.append((label, f"completed, but its {column} is {shown}"))
    return problems


def _records_sha(records) -> str | None:
    done = records.completed
    if done.empty or "env.git_sha" not in done:
        return None
    shas = done["env.git_sha"].dropna()
    return str(shas.mode().iat[0]) if not shas.empty else None


def check(df, suite: str, tolerances: Mapping[str, float] | None = None, pinned_dir: str | os.PathLike | None = None,
          metric: str | None = None, alpha: float = DEFAULT_ALPHA,
          labels: Mapping[str, Mapping[str, Any]] | None = None) -> CheckResult:
    """Summarise the newest records of ``suite`` and compare them with its pinned numbers."""
    pinned = read_pinned(suite, pinned_dir)
    current, records = summarise(df, metric, labels)
    result = compare(pinned, current, tolerances, alpha)
    result.failed_runs = unusable_pinned_runs(pinned, records, df.attrs.get("skipped", []))
    result.git_sha = _records_sha(records)
    return result


def _decimals(quantity: str) -> int:
    """Decimals a quantity is shown with in the check table: those of its report tables."""
    metric = METRICS.get(quantity)
    return metric.digits if metric is not None else 3


def _unit(quantity: str) -> str:
    """The unit a quantity is compared in (seconds as "s"); "" for a unitless one."""
    metric = METRICS.get(quantity)
    unit = metric.unit if metric is not None else ""
    return {"seconds": "s"}.get(unit, unit)


def _fmt(x: float, decimals: int = 4) -> str:
    """A number at fixed ``decimals`` (every row of a quantity alike); "–" for NaN."""
    if x is None or x != x:
        return "–"
    return f"{x:.{decimals}f}" if abs(x) < 1e9 else f"{x:.3e}"


def _spread_text(mean: float, std: float, n: float, decimals: int) -> str:
    """'mean ± std (n=N)' over two or more seeds, the bare mean for one."""
    n = int(n) if n == n and n else 1
    if n < 2 or std != std:
        return _fmt(mean, decimals)
    return f"{_fmt(mean, decimals)} ± {_fmt(std, decimals)} (n={n})"


def _change_text(r: Any, decimals: int) -> str:
    """Current − pinned: a signed percentage (relative tolerances) or a signed number at the shown
    precision; "=" when the difference is below what the table shows, "–" when there is none."""
    if r.delta != r.delta:
        return "–"
    if r.kind == "rel":
        pct = round(100 * r.delta / max(abs(r.pinned), 1e-12), 1)
        return "=" if pct == 0 else f"{pct:+.1f}%"
    delta = round(r.delta, decimals)
    return "=" if delta == 0 else f"{delta:+.{decimals}f}"


def _test_text(r: Any) -> str:
    if r.verdict == "missing":
        return ""
    if r.verdict == "info":
        return f"{r.device_note}: not gated"
    if r.test == "welch":
        return f"Welch p={r.p:.3g}"
    return f"n={int(min(r.pinned_n or 1, r.current_n or 1))}: tolerance only"


def format_result(result: CheckResult, verbose: bool = False) -> str:
    """A table of what moved (every row with ``verbose``), then a one-line verdict."""
    rows = result.rows if verbose else result.rows[result.rows["verdict"] != "ok"]
    lines = []
    variants = bool(len(result.rows)) and (result.rows["variant"] != "").any()
    if len(rows):
        header = ("model", *(("variant",) if variants else ()), "dataset", "quantity (unit)",
                  "pinned: mean ± std (n seeds)", "current", "change", "tolerance", "test", "verdict")
        body = []
        for r in rows.itertuples(index=False):
            decimals, unit = _decimals(r.quantity), _unit(r.quantity)
            tol = f"±{100 * r.tolerance:g}%" if r.kind == "rel" else f"±{r.tolerance:g}" + (f" {unit}" if unit else "")
            pinned = _spread_text(r.pinned, r.pinned_std, r.pinned_n, decimals)
            current = _spread_text(r.current, r.current_std, r.current_n, decimals)
            body.append((r.model, *((r.variant,) if variants else ()), r.dataset,
                         f"{r.quantity} ({unit})" if unit else r.quantity, pinned, current, _change_text(r, decimals),
                         tol, _test_text(r), r.verdict.upper() if r.verdict == "regressed" else r.verdict))
        widths = [max(len(str(x)) for x in col) for col in zip(header, *body)]
        for row in (header, *body):
            lines.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())
    n = len(result.rows)
    counts = result.rows["verdict"].value_counts().to_dict() if n else {}
    summary = ", ".join(f"{counts[k]} {k}" for k in VERDICTS if counts.get(k))

    def names(keys: list[tuple[str, str, str]]) -> str:
        return ", ".join("/".join(x for x in k if x) for k in keys[:10]) + (" ..." if len(keys) > 10 else "")

    if result.failed_runs:
        lines.append(f"pinned runs that do not count ({len(result.failed_runs)}):")
        lines += [f"  {run}: {why}" for run, why in result.failed_runs]
    if result.missing:
        lines.append(f"missing records for {len(result.missing)} pinned (model, dataset): {names(result.missing)}")
    if result.unpinned:
        lines.append(f"not pinned (ignored): {names(result.unpinned)}")
    ungated = result.rows[result.rows["verdict"] == "info"] if n else result.rows
    if len(ungated):
        reasons = "; ".join(dict.fromkeys(ungated["device_note"]))
        lines.append(f"time shown for information, not gated ({len(ungated)} of {n} quantities): {reasons}"
                     + (" (a file pinned before device_kind: `flowbench pin` again on this device to gate time)"
                        if "unknown" in reasons else ""))
    if n:
        single = int((result.rows["test"] == "tolerance").sum())
        lines.append(f"significance: Welch's t-test (one-sided, alpha {result.alpha:g}) where both sides have 2+ "
                     f"seeds; {single} of {n} quantities have one seed on a side: tolerance only")
    verdict = ("FAILED RUNS" if result.failed_runs and not len(result.regressed) else
               {0: "OK", 1: "REGRESSION", 2: "MISSING RECORDS"}[result.exit_code])
    lines.append(f"check: {verdict}: {n} pinned quantities: {summary or 'none'}")
    return "\n".join(lines) + "\n"
