"""The regression gate: pin a suite's numbers, then check new records against them.

``pin`` writes ``SUITE.csv`` into the suite's pinned folder (``pinned_folder``: the package's
baselines/pinned for a shipped suite, ``pinned/`` beside a user's own suite file, or ``--pinned``):
per (model, variant, dataset) and quantity (the headline metric, a conditional model's conditional
NLL, NFE forward/backward/test, training seconds) the mean over seeds with its spread (std, min,
max, n), the seeds and each seed's value. ``check`` aggregates the newest records the same way and
judges each quantity under a tolerance (``bench.metrics``: absolute for NLL, bits/dim and test
error, relative for MSE, NFE and time), with the burden of proof on the all-clear:

- **paired** (the pinned and current records share seeds; runs are deterministic, so the same spec
  and seed give the same numbers): the mean over shared seeds of current - pinned. Exactly zero
  everywhere is ``equal`` (shown ``=``); a mean shift in the bad direction beyond the tolerance is
  ``regressed`` whatever the number of seeds; within it, ``ok``.
- **bounds** (other seeds, two or more a side, some spread): one-sided 1 - alpha confidence bounds
  of the shift (Welch's degrees of freedom). ``ok`` when the upper bound is at or below the
  tolerance (shown to be within it), ``regressed`` when the lower bound is above it (shown to be
  beyond it), ``improved`` when the upper bound is below minus the tolerance; else
  ``inconclusive``, with the seeds a side that would settle it at the observed spread.
- **tolerance alone** (other seeds and one seed a side, or no spread on either: integer NFE that
  happened to agree): there is no bound to compute and none is pretended; a shift within the
  tolerance is ``ok``, a larger one ``inconclusive`` (run the pinned seeds to pair them).

Time depends on the hardware: the pinned file records the device kind and name its runs trained
on, and time is gated only when the current records ran on the same kind and name (``--gate-time``
gates it anyway); otherwise (or for a file pinned before the ``device_kind`` column) it is shown
for information (``info``). ``--set``/``--against`` check what-if variants against the pinned
numbers of the variant they came from (or another). Pinned and current quantities are matched by
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
from bench.stats import seeds_to_settle, shift_bounds

__all__ = ["check", "CheckResult", "compare", "DEFAULT_ALPHA", "DEVICE_BOUND", "EXIT_INCONCLUSIVE", "EXIT_MISSING",
           "EXIT_REGRESSED", "family", "format_result", "judge", "Judgement", "KEYS", "parse_alpha",
           "parse_tolerances", "pin", "PIN_COLUMNS", "PINNED_DIR", "pinned_folder", "pinned_path", "QUANTITIES",
           "read_pinned", "shipped", "suite_alpha", "suite_tolerances", "summarise", "tolerance_for",
           "TESTS", "unusable_pinned_runs", "VERDICTS"]

PINNED_DIR = Path(__file__).resolve().parent.parent / "baselines" / "pinned"
KEYS = ["model", "variant", "dataset"]
# pinned besides the headline (named after its metric, e.g. "nll") and a conditional model's conditional NLL
QUANTITIES = ("nfe_forward", "nfe_backward", "nfe_test", "train_seconds")
PIN_COLUMNS = ["model", "variant", "dataset", "quantity", "column", "mean", "std", "min", "max", "n", "seeds",
               "values", "device_kind", "device_name"]
DEFAULT_ALPHA = 0.05
# info: shown, not gated (time on another device); equal: paired and identical on every seed
VERDICTS = ("regressed", "inconclusive", "improved", "missing", "info", "ok", "equal")
EXIT_REGRESSED, EXIT_MISSING, EXIT_INCONCLUSIVE = 1, 2, 3
TESTS = ("paired", "bounds", "tolerance")  # which rule decided a row (module docstring)
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
    long = pd.concat(frames, ignore_index=True).dropna(subset=["value"]).sort_values("seed", kind="stable")
    g = long.groupby([*KEYS, "quantity", "column"], sort=False)
    out = g["value"].agg(["mean", "std", "min", "max", "count"]).rename(columns={"count": "n"})
    out["seeds"] = g["seed"].agg(lambda s: " ".join(str(int(x)) for x in s))  # in seed order, as the values
    out["values"] = g["value"].agg(lambda v: " ".join(repr(float(x)) for x in v))  # exact: what pairing compares
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
    against: dict[str, str] | None = None  # current variant -> the pinned variant it was checked against
    seeds: list[int] = field(default_factory=list)  # the seeds of the checked records
    device: str = ""  # the device (kind: name) most checked records trained on

    @property
    def regressed(self) -> Any:
        """The rows whose verdict is regressed."""
        return self.rows[self.rows["verdict"] == "regressed"]

    @property
    def inconclusive(self) -> Any:
        """The rows the evidence does not settle (more seeds would)."""
        return self.rows[self.rows["verdict"] == "inconclusive"]

    @property
    def exit_code(self) -> int:
        """0 every quantity shown within tolerance (ok, equal, improved, info); 1 something regressed,
        or a pinned seed failed, diverged, timed out, is missing beside its pair's other seeds, lacks
        its test metric, or a record is unreadable; 2 records missing for whole pinned (model,
        variant, dataset) rows; 3 inconclusive rows (and nothing else wrong)."""
        if len(self.regressed) or self.failed_runs:
            return EXIT_REGRESSED
        if self.missing:
            return EXIT_MISSING
        return EXIT_INCONCLUSIVE if len(self.inconclusive) else 0


def read_pinned(suite: str, pinned_dir: str | os.PathLike | None = None):
    """The pinned table of a suite (a file from before variants reads with variant ""); a
    FlowbenchError when there is none or it is not one."""
    import pandas as pd

    path = pinned_path(suite, pinned_dir) / f"{suite}.csv"
    if not path.exists():
        raise FlowbenchError(f'no pinned numbers for suite "{suite}" ({path}); run the suite and `flowbench pin {suite}`')
    try:
        table = pd.read_csv(path, dtype={"model": str, "variant": str, "dataset": str, "quantity": str, "seeds": str,
                                         "values": str, "device_kind": str, "device_name": str},
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
    for col, default in (("std", math.nan), ("n", 1), ("seeds", ""), ("values", ""), ("device_kind", ""),
                         ("device_name", "")):
        if col not in table:
            table[col] = default
    return table


@dataclass(frozen=True)
class Judgement:
    """The verdict on one quantity and how it was reached. Shifts are in the tolerance's unit
    (relative ones as fractions of the pinned mean), positive = worse."""

    verdict: str
    test: str = ""  # paired, bounds or tolerance (TESTS); "" for missing
    moved: float = math.nan  # the mean shift (paired: the mean of the per-seed shifts)
    lower: float = math.nan  # one-sided 1 - alpha bounds of the shift (bounds only)
    upper: float = math.nan
    n: int = 0  # pairs (paired), else the fewer seeds of the two sides
    needed: int | None = None  # seeds a side that would settle an inconclusive bounds comparison


def _per_seed(seeds: Any, values: Any) -> dict[int, float]:
    """{seed: value} from a pinned or current row's ``seeds`` and ``values`` (empty when either is
    absent, or they do not line up: a file pinned before per-seed values)."""
    words, numbers = str(seeds or "").split(), str(values or "").split()
    if not numbers or len(words) != len(numbers):
        return {}
    try:
        return {int(float(s)): float(v) for s, v in zip(words, numbers)}
    except ValueError:
        return {}


def judge(quantity: str, kind: str, tol: float, alpha: float, pinned: float, pinned_std: float, pinned_n: float,
          current: float, current_std: float, current_n: float, pinned_seeds: Mapping[int, float] | None = None,
          current_seeds: Mapping[int, float] | None = None) -> Judgement:
    """The verdict on one quantity (the rule in the module docstring): paired when both sides hold
    values of shared seeds, bounds with two or more seeds a side and a spread, tolerance alone else."""
    if current != current:
        return Judgement("missing")
    scale = max(abs(pinned), 1e-12) if kind == "rel" else 1.0
    sign = METRICS[quantity].sign
    eps = 1e-12
    shared = sorted(set(pinned_seeds or {}) & set(current_seeds or {}))
    if shared:
        diffs = [sign * (current_seeds[s] - pinned_seeds[s]) / scale for s in shared]
        moved = sum(diffs) / len(diffs)
        if all(current_seeds[s] == pinned_seeds[s] for s in shared):
            verdict = "equal"
        else:
            verdict = "regressed" if moved > tol + eps else "improved" if moved < -tol - eps else "ok"
        return Judgement(verdict, "paired", moved, n=len(shared))
    moved = sign * (current - pinned) / scale
    n = int(min(pinned_n or 1, current_n or 1))
    spread_a, spread_b = (pinned_std / scale, current_std / scale)
    if n < 2 or spread_a != spread_a or spread_b != spread_b or not (spread_a > 0 or spread_b > 0):
        return Judgement("ok" if abs(moved) <= tol + eps else "inconclusive", "tolerance", moved, n=n)
    bounds = shift_bounds(0.0, spread_a, int(pinned_n), moved, spread_b, int(current_n), alpha)
    if bounds.lower > tol + eps:
        verdict = "regressed"
    elif bounds.upper < -tol - eps:
        verdict = "improved"
    elif bounds.upper <= tol + eps:
        verdict = "ok"
    else:
        verdict = "inconclusive"
    needed = seeds_to_settle(moved, spread_a, spread_b, tol, alpha) if verdict == "inconclusive" else None
    return Judgement(verdict, "bounds", moved, bounds.lower, bounds.upper, n, needed)


def compare(pinned, current, tolerances: Mapping[str, float] | None = None, alpha: float = DEFAULT_ALPHA,
            gate_time: bool = False) -> CheckResult:
    """Judge current summaries against pinned ones (``judge``): paired by seed where both hold the
    values of shared seeds, else by confidence bounds or the tolerance alone; time gated only
    between like devices unless ``gate_time``."""
    import pandas as pd

    tolerances = dict(tolerances or {})
    cur = current.rename(columns={"mean": "current", "std": "current_std", "n": "current_n",
                                  "seeds": "current_seeds", "values": "current_values"})
    pin_ = pinned.rename(columns={"mean": "pinned", "std": "pinned_std", "n": "pinned_n",
                                  "seeds": "pinned_seeds", "values": "pinned_values"})
    for frame, side in ((cur, "current"), (pin_, "pinned")):
        for col in (f"{side}_seeds", f"{side}_values"):
            if col not in frame:
                frame[col] = ""
    on = [*KEYS, "column"]
    merged = pin_[[*on, "quantity", "pinned", "pinned_std", "pinned_n", "pinned_seeds", "pinned_values"]].merge(
        cur[[*on, "current", "current_std", "current_n", "current_seeds", "current_values"]], on=on, how="left")
    kinds, tols, judgements = [], [], []
    for r in merged.itertuples(index=False):
        kind, tol = tolerance_for(r.quantity, tolerances)
        judgements.append(judge(r.quantity, kind, tol, alpha, r.pinned, r.pinned_std, r.pinned_n, r.current,
                                r.current_std, r.current_n, _per_seed(r.pinned_seeds, r.pinned_values),
                                _per_seed(r.current_seeds, r.current_values)))
        kinds.append(kind), tols.append(tol)
    merged = merged.assign(kind=kinds, tolerance=tols, delta=merged["current"] - merged["pinned"],
                           moved=[j.moved for j in judgements], test=[j.test for j in judgements],
                           lower=[j.lower for j in judgements], upper=[j.upper for j in judgements],
                           pairs=[j.n for j in judgements], needed=[j.needed for j in judgements],
                           verdict=[j.verdict for j in judgements])
    merged = _ungate_other_devices(merged, pin_, cur, gate_time)
    done = set(zip(*(cur[k] for k in KEYS)))
    pinned_keys = list(dict.fromkeys(zip(*(pin_[k] for k in KEYS))))
    missing = [k for k in pinned_keys if k not in done]
    unpinned = [k for k in dict.fromkeys(zip(*(cur[k] for k in KEYS))) if k not in set(pinned_keys)]
    return CheckResult(pd.DataFrame(merged), missing, unpinned, alpha)


def _device_note(quantity: str, verdict: str, pinned: tuple[str, str], current: tuple[str, str]) -> str:
    """Why a hardware-bound quantity is not gated ("" when it is): the pinned and current device
    kinds or names (the host class: the GPU's name, the CPU's model and threads) differ or are unknown."""
    if family(quantity) not in DEVICE_BOUND or verdict == "missing":
        return ""
    (kind, name), (now_kind, now_name) = pinned, current
    if kind in ("", "mixed"):
        return "pinned device unknown" if not kind else "pinned on mixed devices"
    if now_kind != kind:
        return f"pinned on {kind}, now {now_kind or 'unknown'}"
    if name and now_name and name != now_name:
        return f"pinned on {name}, now {now_name}"
    return ""


def _ungate_other_devices(merged, pinned, current, gate_time: bool = False):
    """Time rows whose pinned and current devices differ (or are unknown) become ``info``, unless
    ``gate_time``."""
    def devices(table, prefix: str):
        """Per row key: the device kind and name the table states ("" where it has no such column)."""
        frame = table[KEYS].copy()
        frame[f"{prefix}_device"] = table["device_kind"] if "device_kind" in table else ""
        frame[f"{prefix}_device_name"] = table["device_name"] if "device_name" in table else ""
        return frame.drop_duplicates(KEYS)

    merged = merged.merge(devices(pinned, "pinned"), on=KEYS, how="left").merge(
        devices(current, "current"), on=KEYS, how="left")

    def text(value: Any) -> str:
        return value if isinstance(value, str) else ""

    notes = [_device_note(q, v, (text(pk), text(pn)), (text(ck), text(cn)))
             for q, v, pk, pn, ck, cn in zip(merged["quantity"], merged["verdict"], merged["pinned_device"],
                                             merged["pinned_device_name"], merged["current_device"],
                                             merged["current_device_name"])]
    merged["device_note"] = [n if not gate_time else "" for n in notes]
    ungated = [bool(n) for n in merged["device_note"]]
    merged.loc[ungated, "verdict"] = "info"
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
    """The commit most checked records ran at (a code snapshot's records carry the submission's
    commit, or ``snapshot:HASH`` outside git)."""
    done = records.completed
    if done.empty or "env.git_sha" not in done:
        return None
    shas = done["env.git_sha"].dropna()
    shas = shas[shas.astype(str) != ""]
    return str(shas.mode().iat[0]) if not shas.empty else None


def check(df, suite: str, tolerances: Mapping[str, float] | None = None, pinned_dir: str | os.PathLike | None = None,
          metric: str | None = None, alpha: float = DEFAULT_ALPHA,
          labels: Mapping[str, Mapping[str, Any]] | None = None, gate_time: bool = False,
          against: Mapping[str, str] | None = None) -> CheckResult:
    """Summarise the newest records of ``suite`` and compare them with its pinned numbers. ``against``
    maps current variants to the pinned variants they are checked against (what-if runs); only
    records of its variants are then checked."""
    pinned = read_pinned(suite, pinned_dir)
    if against is not None:
        attrs = dict(df.attrs)
        df = df[df["variant"].isin(list(against))].copy() if "variant" in df else df.iloc[0:0]
        df["variant"] = df["variant"].map(dict(against)) if len(df) else df.get("variant")
        df.attrs.update(attrs)
    current, records = summarise(df, metric, labels)
    result = compare(pinned, current, tolerances, alpha, gate_time)
    result.failed_runs = unusable_pinned_runs(pinned, records, df.attrs.get("skipped", []))
    result.git_sha = _records_sha(records)
    result.against = dict(against) if against is not None else None
    done = records.completed
    result.seeds = sorted({int(x) for x in done["seed"]}) if len(done) else []
    if len(done):
        devices = _devices(done)
        kinds = [f"{k}: {n}" if n else k for k, n in zip(devices["device_kind"], devices["device_name"]) if k]
        result.device = max(set(kinds), key=kinds.count) if kinds else ""
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


def _shift_text(value: float, r: Any, decimals: int) -> str:
    """A shift in the tolerance's unit: a signed percentage (relative) or a signed number."""
    return f"{100 * value:+.1f}%" if r.kind == "rel" else f"{value:+.{decimals}f}"


def _test_text(r: Any, alpha: float) -> str:
    """Which rule decided the row, with the figures it decided on."""
    if r.verdict == "missing":
        return ""
    if r.verdict == "info":
        return f"{r.device_note}: not gated"
    decimals = _decimals(r.quantity)
    tol = f"{100 * r.tolerance:g}%" if r.kind == "rel" else f"{r.tolerance:g}"
    if r.test == "paired":
        if r.verdict == "equal":
            return f"paired on {int(r.pairs)} seed(s): identical"
        return f"paired on {int(r.pairs)} seed(s): mean shift {_shift_text(r.moved, r, decimals)} vs ±{tol}"
    level = f"{100 * (1 - alpha):g}%"
    if r.test == "bounds":
        bounds = f"{level} bounds [{_shift_text(r.lower, r, decimals)}, {_shift_text(r.upper, r, decimals)}]"
        if r.verdict == "regressed":
            return f"{bounds}: lower bound above +{tol}"
        if r.verdict in ("ok", "improved"):
            return f"{bounds}: upper bound " + ("at or below" if r.verdict == "ok" else "below") + \
                f" {'+' if r.verdict == 'ok' else '-'}{tol}"
        needed = r.needed if r.needed == r.needed and r.needed is not None else None
        settle = f"{int(needed)} seeds a side would settle it" if needed else "more seeds than 1,000 a side needed"
        return f"{bounds} straddle +{tol}: {settle}"
    why = "one seed a side" if int(r.pairs or 1) < 2 else "no spread on either side"
    if r.verdict == "ok":
        return f"tolerance alone ({why}): within ±{tol}"
    return f"tolerance alone ({why}): beyond ±{tol}, no bound to decide; run the pinned seeds (paired) or more seeds"


def format_result(result: CheckResult, verbose: bool = False) -> str:
    """A table of what moved (every row with ``verbose``), then a one-line verdict."""
    rows = result.rows if verbose else result.rows[~result.rows["verdict"].isin(("ok", "equal"))]
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
                         tol, _test_text(r, result.alpha),
                         {"regressed": "REGRESSED", "equal": "="}.get(r.verdict, r.verdict)))
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
    if result.against is not None:
        mapping = ", ".join(f"{cur or '(suite)'} -> pinned {pin or '(suite)'}" for cur, pin in result.against.items())
        lines.append(f"what-if records checked against other pinned numbers: {mapping or 'none'}")
    if n:
        tests = result.rows["test"].value_counts().to_dict()
        lines.append(f"decided by: {tests.get('paired', 0)} paired by seed, {tests.get('bounds', 0)} by "
                     f"{100 * (1 - result.alpha):g}% one-sided bounds (other seeds), {tests.get('tolerance', 0)} by "
                     "the tolerance alone (one seed or no spread)")
    verdict = ("FAILED RUNS" if result.failed_runs and not len(result.regressed) else
               {0: "OK", 1: "REGRESSION", 2: "MISSING RECORDS", 3: "INCONCLUSIVE"}[result.exit_code])
    lines.append(f"check: {verdict}: {n} pinned quantities: {summary or 'none'}")
    return "\n".join(lines) + "\n"
