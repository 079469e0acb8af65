"""The regression gate's decision rule (bench/check.py): right in both directions.

Simulated summaries with known shifts (no training) check the error rates the rule promises, and
real tiny runs check the three everyday cases: the same seeds re-run unchanged (``=``), a budget cut
on the same seeds (regressed), other seeds (never regressed while the code is unchanged).
"""

from __future__ import annotations

import random
import statistics

import pytest

from bench.check import judge
from bench.cli import main

ALPHA, TOL, DRAWS = 0.05, 0.05, 200


def _sample(rng: random.Random, mean: float, sd: float, n: int) -> list[float]:
    return [rng.gauss(mean, sd) for _ in range(n)]


def _verdicts(shift: float, sd: float, n: int, seed: int = 0) -> list[str]:
    """DRAWS judgements of two populations of ``n`` seeds each (other seeds: no pairing)."""
    rng = random.Random(seed)
    out = []
    for _ in range(DRAWS):
        a, b = _sample(rng, 3.0, sd, n), _sample(rng, 3.0 + shift, sd, n)
        out.append(judge("nll", "abs", TOL, ALPHA, statistics.mean(a), statistics.stdev(a), n,
                         statistics.mean(b), statistics.stdev(b), n).verdict)
    return out


@pytest.mark.parametrize("sd, n", [(0.02, 3), (0.05, 5), (0.2, 3)])
@pytest.mark.slow
def test_unchanged_populations_regress_at_most_alpha_of_the_time(sd, n):
    verdicts = _verdicts(0.0, sd, n)
    assert verdicts.count("regressed") <= ALPHA * DRAWS


@pytest.mark.parametrize("sd, n", [(0.02, 3), (0.05, 5), (0.2, 3)])
@pytest.mark.slow
def test_a_shift_of_twice_the_tolerance_passes_at_most_alpha_of_the_time(sd, n):
    verdicts = _verdicts(2 * TOL, sd, n, seed=1)
    assert verdicts.count("ok") <= ALPHA * DRAWS


@pytest.mark.parametrize("sd", [0.0, 0.01, 5.0])
def test_a_rise_of_five_nats_on_the_same_seeds_regresses_whatever_the_spread(sd):
    rng = random.Random(2)
    for _ in range(20):
        pinned = {s: rng.gauss(3.0, sd) for s in (0, 1)}
        current = {s: v + 5.0 for s, v in pinned.items()}
        j = judge("nll", "abs", TOL, ALPHA, statistics.mean(pinned.values()), statistics.stdev(pinned.values()), 2,
                  statistics.mean(current.values()), statistics.stdev(current.values()), 2, pinned, current)
        assert (j.verdict, j.test, j.n) == ("regressed", "paired", 2)


@pytest.mark.parametrize("sd, n", [(0.0, 2), (0.01, 2), (5.0, 2), (5.0, 5), (0.0, 1)])
def test_a_rise_of_five_nats_on_other_seeds_is_never_ok(sd, n):
    rng = random.Random(3)
    for _ in range(50):
        a, b = _sample(rng, 3.0, sd, n), _sample(rng, 8.0, sd, n)
        spread = (statistics.stdev(a), statistics.stdev(b)) if n > 1 else (float("nan"), float("nan"))
        j = judge("nll", "abs", TOL, ALPHA, statistics.mean(a), spread[0], n, statistics.mean(b), spread[1], n)
        assert j.verdict in ("regressed", "inconclusive")


def test_zero_spread_integer_nfe_on_other_seeds_is_never_a_certain_difference():
    """NFE 20 on two seeds against 38 on two others, zero spread on both sides: Welch's p would be 0.
    No bound exists; the tolerance alone cannot tell seed from code, so the verdict is inconclusive."""
    j = judge("nfe_test", "rel", 0.1, ALPHA, 20.0, 0.0, 2, 38.0, 0.0, 2)
    assert (j.verdict, j.test) == ("inconclusive", "tolerance") and j.lower != j.lower and j.upper != j.upper
    same = judge("nfe_test", "rel", 0.1, ALPHA, 20.0, 0.0, 2, 21.0, 0.0, 2)
    assert (same.verdict, same.test) == ("ok", "tolerance")
    paired = judge("nfe_test", "rel", 0.1, ALPHA, 20.0, 0.0, 2, 38.0, 0.0, 2, {0: 20.0, 1: 20.0}, {0: 38.0, 1: 38.0})
    assert (paired.verdict, paired.test) == ("regressed", "paired")


SUITE = """
datasets:
  moons: {n_train: 512, n_val: 128, n_test: 256}
models:
  realnvp: {n_layers: 2, hidden: 16}
  ffjord: {hidden: [8], atol: 1e-3, rtol: 1e-3, eval_atol: 1e-3, eval_rtol: 1e-3}
seeds: [0, 1]
train: {max_steps: 20, batch_size: 128, lr: 5e-3, eval_every: 10}
"""


@pytest.mark.slow
def test_real_runs_equal_regressed_and_other_seeds(write_suite, tmp_path, capsys):
    suite = write_suite(SUITE, "g")
    pinned, first, again = tmp_path / "pinned", tmp_path / "first", tmp_path / "again"
    for folder in (first, again):
        assert main(["run", str(suite), "--results", str(folder), "--quiet", "--no-report"]) == 0
    assert main(["pin", str(suite), "--results", str(first), "--pinned", str(pinned)]) == 0
    capsys.readouterr()

    assert main(["check", str(suite), "--results", str(again), "--pinned", str(pinned), "-v"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("  realnvp", "  ffjord"))]
    assert rows and all(line.rstrip().endswith(" =") for line in rows if "train_seconds" not in line), out

    assert main(["run", str(suite), "--results", str(again), "--quiet", "--no-report",
                 "--set", "train.max_steps=2"]) == 0  # a 10 times smaller budget, the same seeds
    capsys.readouterr()
    assert main(["check", str(suite), "--results", str(again), "--pinned", str(pinned),
                 "--set", "train.max_steps=2"]) == 1
    out = capsys.readouterr().out
    assert "max_steps=2 -> pinned (suite)" in out and "REGRESSED" in out and "paired on 2 seed(s)" in out

    other = tmp_path / "other"
    assert main(["run", str(suite), "--results", str(other), "--quiet", "--no-report", "--seeds", "2,3"]) == 0
    capsys.readouterr()
    code = main(["check", str(suite), "--results", str(other), "--pinned", str(pinned), "-v"])
    out = capsys.readouterr().out
    assert code in (0, 3) and "REGRESSED" not in out, out
