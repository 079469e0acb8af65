"""The plateau learning-rate schedule (FFJORD's ``update_lr``): its drops against scripted validation
losses, its composition with the warm-up, and an exact resume of a run whose rate has dropped."""

from __future__ import annotations

import pytest
import torch

from bench.spec import load_suite
from bench.store import RunRecord
from bench.train import Trainer, lr_at, plateau_drops, run_one

LR = 4e-3
SUITE = """
datasets:
  8gaussians: {n_train: 640, n_val: 100, n_test: 500}
models:
  realnvp: {n_layers: 2, hidden: 16, batch_norm: false}
seeds: [0]
train: {max_steps: STEPS, batch_size: 64, lr: 0.004, eval_every: 1, checkpoint_every: 7, schedule: plateau,
        restore_best: false}
"""

# one validation per step; 5.0 first, then no improvement (an equal loss is no improvement, as
# train_tabular.py's `val_loss.avg < best_loss`)
STREAK = [5.0] * 25
# the 11th stale validation (the 12th), an improvement (the 13th), then a new streak of 21 (14th-34th)
IMPROVED_AFTER_DROP = [5.0] * 12 + [4.0] + [4.5] * 23


def _spec(write_suite, steps: int):
    return load_suite(write_suite(SUITE.replace("STEPS", str(steps)))).runs()[0]


@pytest.fixture
def scripted_validation(monkeypatch):
    """Validation losses from a list, indexed by the step (so a resumed run sees the same sequence);
    the test split is evaluated for real. Records, at each validation, the rate the optimiser used
    in the step before it (one validation a step)."""
    original = Trainer._evaluate
    used: dict[int, float] = {}

    def arm(losses: list[float]) -> dict[int, float]:
        def evaluate(self, split, *args, **kwargs):
            if split is self.data.val:
                used[self.state.step] = self.optimizer.param_groups[0]["lr"]
                return {"nll": losses[self.state.step // self.train["eval_every"] - 1]}
            return original(self, split, *args, **kwargs)

        monkeypatch.setattr(Trainer, "_evaluate", evaluate)
        return used

    return arm


def test_plateau_drops_follow_ffjords_update_lr():
    """rtqichen/ffjord train_tabular.py (--early_stopping 30): ``ndecs`` 0 -> 1 when the stale count
    exceeds 30 // 3 = 10, 1 -> 2 when it exceeds 30 // 3 * 2 = 20. On an improvement the official
    code zeroes ``n_vals_without_improvement`` but not the global ``ndecs``, and its else branch sets
    ``lr / 10**ndecs``: the rate stays where it dropped to, never back to ``lr``."""
    stale, drops, rates = 0, 0, []
    for improved in [True] + [False] * 11 + [True] + [False] * 25:
        stale = 0 if improved else stale + 1
        drops = plateau_drops(drops, stale)
        rates.append(drops)
    assert rates == [0] * 11 + [1] * 22 + [2] * 5  # 11th stale; improvement keeps 1; 21st stale of the new streak
    assert plateau_drops(0, 25) == 1  # one drop a validation at most (update_lr's elif)


def test_plateau_composes_with_the_warmup():
    t = {"lr": 1.0, "warmup_steps": 10, "schedule": "plateau", "milestones": [], "gamma": 0.1}
    assert lr_at(4, t, 100, drops=1) == pytest.approx(0.05) and lr_at(4, t, 100) == pytest.approx(0.5)
    assert [lr_at(50, t, 100, drops=d) for d in (0, 1, 2)] == [1.0, 1.0 / 10, 1.0 / 100]
    assert lr_at(50, {**t, "schedule": "constant"}, 100, drops=2) == 1.0  # only plateau reads the drops


@pytest.mark.parametrize("losses, rates", [
    # drops at the 11th stale validation (the 12th) and the 21st (the 22nd): no reset after the first
    (STREAK, [LR] * 12 + [LR / 10] * 10 + [LR / 100] * 3),
    # after the drop an improvement zeroes the stale count but keeps lr / 10 (ndecs is never undone);
    # the second drop needs 21 stale validations of the new streak (the 34th validation)
    (IMPROVED_AFTER_DROP, [LR] * 12 + [LR / 10] * 22 + [LR / 100] * 2),
], ids=["one-streak", "improvement-after-the-drop"])
def test_plateau_rate_of_every_step_and_metrics_line(write_suite, tmp_path, scripted_validation, losses, rates):
    """The rate the optimiser uses after validation k is the one update_lr set there; the metrics
    line of validation k shows the rate of the steps before it (its window's last step)."""
    used = scripted_validation(losses)
    spec = _spec(write_suite, len(losses))
    record = RunRecord(tmp_path, spec.suite, spec.run_id)
    result = run_one(spec, record, device="cpu", progress=False)
    assert result["status"] == "completed"
    assert [used[step] for step in range(1, len(losses) + 1)] == pytest.approx(rates, rel=1e-12)
    history = record.read_metrics()
    assert [row["val_nll"] for row in history] == losses
    assert [row["lr"] for row in history] == pytest.approx(rates, rel=1e-12)


def test_plateau_run_resumes_exactly(write_suite, tmp_path, scripted_validation, stop_at_step):
    """Stopped at step 20 (after the first drop and an improvement, 7 validations into a new streak)
    and resumed: the same rates, metrics history, test numbers and weights as the uninterrupted run,
    so the drop count and the stale count both survive the checkpoint."""
    losses = IMPROVED_AFTER_DROP + [4.5] * 4
    used = scripted_validation(losses)
    spec = _spec(write_suite, len(losses))
    straight = RunRecord(tmp_path / "straight", spec.suite, spec.run_id)
    reference = run_one(spec, straight, device="cpu", progress=False)
    straight_rates = dict(used)
    assert reference["status"] == "completed"
    assert [straight_rates[s] for s in (12, 13, 34, 35)] == pytest.approx([LR, LR / 10, LR / 10, LR / 100])

    used.clear()
    stopped = RunRecord(tmp_path / "stopped", spec.suite, spec.run_id)
    stop_at_step(20)
    assert run_one(spec, stopped, device="cpu", progress=False)["status"] == "preempted"
    loop = torch.load(stopped.checkpoint_path, weights_only=False)["loop"]
    assert (loop["step"], loop["lr_drops"], loop["bad_evals"]) == (20, 1, 7)
    stop_at_step(None)
    resumed = run_one(spec, stopped, device="cpu", progress=False)
    assert resumed["status"] == "completed" and resumed["resumes"] == 1
    assert used == straight_rates
    assert resumed["test"] == reference["test"]

    def drop_time(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert drop_time(stopped.read_metrics()) == drop_time(straight.read_metrics())
    a, b = (torch.load(r.model_path, weights_only=False)["model"] for r in (stopped, straight))
    assert all(torch.equal(a[k], b[k]) for k in b)
