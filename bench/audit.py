"""The tolerance audit (InfoCNF, appendix C): how much a trained CNF's numbers depend on the ODE
solver's error tolerance at evaluation.

For every completed CNF run of a suite the test metric is re-evaluated with the evaluation solver's
``atol = rtol = tol`` for each audited tolerance (default 1e-8 ... 1e-1), next to the NFE that
costs; for a 1-D density the total probability mass ``integral p(x) dx`` is also computed by a
midpoint Riemann sum on a fine grid, and ``|1 - integral|`` reported: a loose tolerance can give a
"density" that does not integrate to one, and an NLL that looks better than the model is.

A model takes part when it has evaluation solvers (modules with an ``eval_solver``, as
``baselines.cnf.CNF``); other runs are listed as skipped.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError
from bench.variants import run_label

__all__ = ["AUDIT_COLUMNS", "audit_model", "audit_suite", "DEFAULT_TOLERANCES", "integral_of_density",
           "parse_tolerances", "Point", "riemann_grid", "RIEMANN_POINTS", "set_eval_tolerance", "to_markdown",
           "with_deltas", "write_audit"]

DEFAULT_TOLERANCES = tuple(10.0 ** -k for k in range(8, 0, -1))  # 1e-8 ... 1e-1
RIEMANN_POINTS = 4000


def parse_tolerances(text: str) -> tuple[float, ...]:
    """``"1e-8,1e-5,1e-3"`` -> sorted tolerances (tightest first); a clear error for anything else."""
    try:
        values = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError:
        values = []
    if not values or any(not (0 < v < 1) for v in values):
        raise FlowbenchError(f'--tolerances "{text}": expected numbers in (0, 1) separated by commas, '
                             'e.g. "1e-8,1e-5,1e-3"')
    return tuple(values)


def set_eval_tolerance(model: Any, tol: float) -> int:
    """Set ``atol = rtol = tol`` on every evaluation solver of ``model``; returns how many adaptive
    solvers there were (0: not a CNF, or fixed-step evaluation, where a tolerance means nothing)."""
    adaptive = 0
    for module in model.modules():
        solver = getattr(module, "eval_solver", None)
        if solver is None or not dataclasses.is_dataclass(solver):
            continue
        module.eval_solver = dataclasses.replace(solver, atol=tol, rtol=tol)
        adaptive += solver.options() is None  # fixed-step methods carry a step size instead
    return adaptive


def riemann_grid(x: Any, points: int = RIEMANN_POINTS, margin: float = 3.0) -> tuple[Any, float]:
    """Midpoints of ``points`` cells covering the data +- ``margin`` standard deviations, and the cell width."""
    import torch

    x = x.double().flatten()
    pad = margin * float(x.std())
    lo, hi = float(x.min()) - pad, float(x.max()) + pad
    width = (hi - lo) / points
    return lo + width * (torch.arange(points, dtype=torch.float64) + 0.5), width


@dataclasses.dataclass
class Point:
    """One audited tolerance of one run."""

    tolerance: float
    value: float  # the run's headline test metric at this tolerance
    nfe: float
    mass: float | None = None  # integral of p over the grid (1-D models)


def integral_of_density(model: Any, grid: Any, width: float, batch: int = 1000) -> float:
    """Midpoint Riemann sum of ``exp(log_prob)`` over ``grid`` (a 1-D model's total probability mass)."""
    import torch

    total = 0.0
    with torch.no_grad():
        for start in range(0, len(grid), batch):
            x = grid[start:start + batch].float().unsqueeze(1)
            total += float(model.log_prob(x).double().exp().sum()) * width
    return total


def audit_model(model: Any, data: Any, metric: str, tolerances: Sequence[float], max_examples: int | None = 2000,
                batch_size: int = 1000) -> list[Point]:
    """Re-evaluate ``model`` on ``data``'s test split at each tolerance (and integrate it when 1-D)."""
    import torch

    from bench.train import evaluate, read_model_nfe

    device = torch.device("cpu")
    grid, width = riemann_grid(data.train.x) if data.info.shape == (1,) else (None, 0.0)
    points = []
    for tol in tolerances:
        set_eval_tolerance(model, tol)
        test = evaluate(model, data, data.test, device, batch_size, max_examples, seed=10_000)
        mass = None
        if grid is not None:
            read_model_nfe(model)
            mass = integral_of_density(model, grid, width)
            read_model_nfe(model)
        points.append(Point(tol, float(test.get(metric, math.nan)), float(test.get("nfe", math.nan)), mass))
    return points


def audit_suite(df: Any, suite: str, tolerances: Sequence[float] = DEFAULT_TOLERANCES,
                max_examples: int | None = 2000, data_root: str | None = None, progress: bool = True,
                labels: Any = None):
    """Audit every completed CNF run among ``suite``'s records (``bench.store.scan``'s frame; ``labels``:
    the suite's variant labels by run_id): (DataFrame of points, list of (run, why skipped))."""
    import pandas as pd
    from tqdm.auto import tqdm

    from bench.report import prepare
    from bench.models import load_model

    done = prepare(df, labels=labels).completed
    rows, skipped = [], []
    for run in tqdm(done.to_dict("records"), desc=f"audit {suite}", disable=not progress, leave=False):
        label = run_label(run["model"], run["variant"], run["dataset"], run["seed"])
        if not os.path.exists(os.path.join(run["path"], "model.pt")):
            skipped.append((label, "no model.pt"))
            continue
        try:
            model, data = load_model(run["path"], data_root)
        except FlowbenchError as err:  # random bytes or a planted pickle in model.pt: this run, not the audit
            skipped.append((label, str(err)))
            continue
        if set_eval_tolerance(model, tolerances[0]) == 0:
            skipped.append((label, "no adaptive ODE solver at evaluation (not a CNF)"))
            continue
        metric = run.get("metric") or "nll"
        for p in audit_model(model, data, metric, tolerances, max_examples):
            rows.append({"run_id": run["run_id"], "model": run["model"], "variant": run["variant"],
                         "dataset": run["dataset"],
                         "seed": run["seed"], "metric": metric, "recorded": run.get(f"test.{metric}"),
                         **dataclasses.asdict(p)})
    return with_deltas(pd.DataFrame(rows, columns=AUDIT_COLUMNS[:-2])), skipped


AUDIT_COLUMNS = ["run_id", "model", "variant", "dataset", "seed", "metric", "recorded", "tolerance", "value", "nfe", "mass",
                 "delta", "mass_error"]


def with_deltas(out):
    """Add ``delta`` (the metric minus its value at the run's tightest tolerance) and ``mass_error``
    (``|1 - integral of p|``, 1-D models)."""
    out = out.sort_values(["run_id", "tolerance"], kind="stable").reset_index(drop=True)
    tightest = out.groupby("run_id")["value"].transform("first")
    out["delta"] = out["value"] - tightest
    out["mass_error"] = (1.0 - out["mass"].astype(float)).abs()
    return out[AUDIT_COLUMNS]


def to_markdown(out, skipped: Sequence[tuple[str, str]] = ()) -> str:
    """One table a run: tolerance, metric, change vs the tightest tolerance, NFE, |1 - mass|."""
    lines = []
    for run_id, g in out.groupby("run_id", sort=False):
        first = g.iloc[0]
        variant = f" ({first['variant']})" if first["variant"] else ""
        lines += [f"### {first['model']}{variant} on {first['dataset']}, seed {first['seed']} ({run_id}): "
                  f"test {first['metric']}"
                  f" (recorded {_fmt(first['recorded'], 4)})", "",
                  f"| tolerance | {first['metric']} | change vs {g['tolerance'].min():.0e} | NFE | abs(1 - mass) |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for r in g.itertuples(index=False):
            lines.append(f"| {r.tolerance:.0e} | {_fmt(r.value, 4)} | {r.delta:+.2e} | {_fmt(r.nfe, 1)} | "
                         f"{'–' if r.mass_error != r.mass_error else f'{r.mass_error:.2e}'} |")
        lines.append("")
    if skipped:
        lines.append("Not audited: " + "; ".join(f"{label} ({why})" for label, why in skipped))
    return "\n".join(lines) + "\n"


def _fmt(x: Any, digits: int) -> str:
    return "–" if x is None or x != x else f"{float(x):.{digits}f}"


def write_audit(out, skipped: Sequence[tuple[str, str]], out_dir: str | os.PathLike, suite: str) -> tuple[Path, Path]:
    """``OUT/SUITE/tolerance_audit.csv`` and ``.md``."""
    folder = Path(out_dir) / suite
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / "tolerance_audit.csv", folder / "tolerance_audit.md"
    out.to_csv(csv, index=False, float_format="%.8g")
    md.write_text(f"# {suite}: tolerance audit\n\n" + to_markdown(out, skipped))
    return csv, md
