"""The tolerance audit: Riemann sums against closed forms, tolerances reach the solvers, and a
trained 1-D CNF integrates to one at a tight tolerance."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from bench.audit import integral_of_density, parse_tolerances, riemann_grid, set_eval_tolerance
from bench.cli import main
from bench.errors import FlowbenchError


class Gaussian1D(torch.nn.Module):
    """log p of N(mu, sd^2) plus a constant (log_scale != 0 gives a mass of exp(log_scale))."""

    def __init__(self, mu: float, sd: float, log_scale: float = 0.0):
        super().__init__()
        self.mu, self.sd, self.log_scale = mu, sd, log_scale

    def log_prob(self, x):
        d = torch.distributions.Normal(self.mu, self.sd)
        return d.log_prob(x[:, 0]) + self.log_scale


def test_riemann_sum_against_closed_forms():
    data = torch.randn(5000, 1) * 2 + 1
    grid, width = riemann_grid(data)
    assert len(grid) == 4000 and math.isclose(width, float(grid[1] - grid[0]), rel_tol=1e-9)
    assert abs(integral_of_density(Gaussian1D(1.0, 2.0), grid, width) - 1.0) < 1e-6
    assert abs(integral_of_density(Gaussian1D(1.0, 2.0, math.log(0.5)), grid, width) - 0.5) < 1e-6
    # a density much wider than the grid loses the mass outside it: the audit would show it
    lost = integral_of_density(Gaussian1D(1.0, 50.0), grid, width)
    assert lost < 0.5


def test_parse_tolerances_messages():
    assert parse_tolerances("1e-3,1e-8, 1e-5") == (1e-8, 1e-5, 1e-3)
    with pytest.raises(FlowbenchError, match=r'--tolerances "1e-3,x": expected numbers in \(0, 1\)'):
        parse_tolerances("1e-3,x")
    with pytest.raises(FlowbenchError, match="expected numbers in"):
        parse_tolerances("2")


def test_set_eval_tolerance_reaches_every_block():
    from baselines.registry import get_builder
    from bench.data import load_dataset

    info = load_dataset("mixture1d", {"n_train": 100, "n_val": 10, "n_test": 10}).info
    model = get_builder("ffjord")(info, n_blocks=2, hidden=[8])
    assert set_eval_tolerance(model, 3e-4) == 2
    blocks = [m for m in model.modules() if hasattr(m, "eval_solver")]
    assert [(b.eval_solver.atol, b.eval_solver.rtol) for b in blocks] == [(3e-4, 3e-4)] * 2
    rk4 = get_builder("ffjord")(info, hidden=[8], eval_solver="rk4")
    assert set_eval_tolerance(rk4, 1e-3) == 0  # fixed-step evaluation: nothing to audit
    assert set_eval_tolerance(torch.nn.Linear(1, 1), 1e-3) == 0


SUITE = """
name: audit-t
datasets:
  mixture1d: {n_train: 4000, n_val: 500, n_test: 1000}
models:
  ffjord: {hidden: [16, 16], adjoint: false, end_time: 1.0}
train: {batch_size: 256, lr: 1e-2, max_steps: 60, eval_every: 60, eval_max_examples: 500}
"""


def test_trained_1d_cnf_integrates_to_one_at_tight_tolerance(write_suite, results, tmp_path, capsys):
    path = write_suite(SUITE, name="audit-t")
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    out_dir = tmp_path / "reports"
    assert main(["audit", str(path), "--results", str(results), "--out", str(out_dir), "--quiet",
                 "--tolerances", "1e-8,1e-5,1e-1", "--max-examples", "500"]) == 0
    printed = capsys.readouterr().out
    assert "ffjord on mixture1d" in printed and "| 1e-08 |" in printed
    audit = pd.read_csv(out_dir / "audit-t" / "tolerance_audit.csv").set_index("tolerance")
    assert list(audit.index) == [1e-8, 1e-5, 1e-1]
    assert audit.loc[1e-8, "mass_error"] < 2e-3  # a density: mass one up to the solver and the grid
    assert audit.loc[1e-8, "delta"] == 0.0
    assert audit.loc[1e-1, "nfe"] < audit.loc[1e-8, "nfe"]  # looser tolerance, fewer evaluations
    assert abs(audit.loc[1e-5, "value"] - audit.loc[1e-5, "recorded"]) < 0.05  # the run's own evaluation setting
    assert (out_dir / "audit-t" / "tolerance_audit.md").read_text().startswith("# audit-t: tolerance audit")


def test_audit_without_records_says_what_to_do(write_suite, results, capsys):
    path = write_suite(SUITE, name="audit-t")
    assert main(["audit", str(path), "--results", str(results)]) == 2
    assert 'no run records for suite "audit-t"' in capsys.readouterr().err


def test_audit_rows_carry_the_variant():
    from bench.audit import AUDIT_COLUMNS, to_markdown, with_deltas

    rows = [{"run_id": f"r{k}", "model": "ffjord", "variant": variant, "dataset": "moons", "seed": 0, "metric": "nll",
             "recorded": 1.0, "tolerance": tol, "value": 1.0 + tol, "nfe": 10.0, "mass": None}
            for k, variant in enumerate(["atol=1e-05", "atol=0.001"]) for tol in (1e-8, 1e-3)]
    out = with_deltas(pd.DataFrame(rows, columns=AUDIT_COLUMNS[:-2]))
    assert list(out.columns[:4]) == ["run_id", "model", "variant", "dataset"]
    md = to_markdown(out)
    assert "### ffjord (atol=1e-05) on moons, seed 0 (r0)" in md and "### ffjord (atol=0.001) on moons" in md
