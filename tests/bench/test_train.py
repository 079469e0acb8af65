"""The training loop end to end: learning, exact resume after a kill, divergence, bad checkpoints."""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from baselines.base import FlowModel
from baselines.registry import get_builder, register
from bench.cli import main
from bench.data import load_dataset
from bench.spec import load_suite
from bench.store import RunRecord
from bench.train import evaluate, lr_at

TINY = """
datasets:
  8gaussians: {n_train: 2000, n_val: 500, n_test: 1000}
models:
  realnvp: {n_layers: 2, hidden: 16}
seeds: [0]
train: {max_steps: 400, batch_size: 64, lr: 5e-3, eval_every: 20, checkpoint_every: 20}
"""


def test_short_run_lowers_test_nll(write_suite, results):
    path = write_suite(TINY.replace("n_layers: 2, hidden: 16", "n_layers: 6, hidden: 32").replace("400", "600"))
    spec = load_suite(path).runs()[0]
    data = load_dataset(spec.dataset, spec.data_config)
    torch.manual_seed(spec.seed)
    untrained = get_builder("realnvp")(data.info, **spec.model_config)
    start = evaluate(untrained, data, data.test, torch.device("cpu"), 1000)["nll"]
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    result = RunRecord(results, spec.suite, spec.run_id).read_result()
    assert result["status"] == "completed" and result["steps"] == 600
    assert result["test"]["nll"] < start - 1.5 and result["test"]["nll"] < 3.6, (start, result["test"])
    history = RunRecord(results, spec.suite, spec.run_id).read_metrics()
    assert [h["step"] for h in history] == list(range(20, 601, 20))
    assert result["params"] == untrained.num_params() and result["best_step"] in [h["step"] for h in history]


def _run_cli(path, results):
    return subprocess.Popen([sys.executable, "-m", "bench", "run", str(path), "--results", str(results),
                             "--quiet", "--no-report"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.slow
def test_killed_run_resumes_and_continues_its_history(write_suite, tmp_path, capsys):
    path = write_suite(TINY.replace("max_steps: 400", "max_steps: 1500"))
    spec = load_suite(path).runs()[0]
    killed = RunRecord(tmp_path / "killed", spec.suite, spec.run_id)
    proc = _run_cli(path, tmp_path / "killed")
    deadline = time.time() + 120
    while time.time() < deadline and not (killed.checkpoint_path.exists() and len(killed.read_metrics()) >= 3):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed.read_result()["status"] == "running"  # really killed mid-run
    assert main(["status", str(path), "--results", str(tmp_path / "killed")]) == 0
    assert re.search(rf"{spec.run_id}\s+\S+\s+stale\s", capsys.readouterr().out)  # its process is gone
    assert _run_cli(path, tmp_path / "killed").wait() == 0  # takes the dead claim over and resumes
    straight = RunRecord(tmp_path / "straight", spec.suite, spec.run_id)
    assert _run_cli(path, tmp_path / "straight").wait() == 0

    resumed, reference = killed.read_metrics(), straight.read_metrics()
    assert [h["step"] for h in resumed] == list(range(20, 1501, 20))  # no gap, no duplicate
    for a, b in zip(resumed, reference):  # the same numbers as a run that was never killed
        assert (a["train_loss"], a["val_nll"]) == (b["train_loss"], b["val_nll"])
    r = killed.read_result()
    assert r["resumes"] == 1 and r["test"] == straight.read_result()["test"]


@register("always_nan", "test model whose loss turns NaN")
def _build_nan(data, explode_after: int = 3):
    class Exploding(FlowModel):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))
            self.calls = 0

        def log_prob(self, x, y=None):
            self.calls += 1
            scale = float("nan") if self.training and self.calls > explode_after else 1.0
            return -0.5 * (x ** 2).sum(1) * self.w * scale

    return Exploding()


def test_diverging_run_is_recorded_and_the_sweep_goes_on(write_suite, results, capsys):
    path = write_suite(TINY.replace("realnvp: {n_layers: 2, hidden: 16}", "always_nan: {}\n  realnvp: {n_layers: 2}")
                       .replace("max_steps: 400", "max_steps: 40"))
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    specs = {s.model: s for s in load_suite(path).runs()}
    bad = RunRecord(results, "t", specs["always_nan"].run_id).read_result()
    assert bad["status"] == "diverged" and "non-finite training loss (nan) at step 4" in bad["error"]
    assert RunRecord(results, "t", specs["realnvp"].run_id).read_result()["status"] == "completed"
    assert "1 completed, 1 diverged" in capsys.readouterr().out


def test_rerunning_a_finished_suite_runs_nothing(write_suite, results, capsys):
    path = write_suite(TINY.replace("max_steps: 400", "max_steps: 20"))
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    record = RunRecord(results, "t", load_suite(path).runs()[0].run_id)
    before = record.result_path.stat().st_mtime_ns
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 0
    assert "0 to run, 1 already completed" in capsys.readouterr().out
    assert record.result_path.stat().st_mtime_ns == before
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", "--force"]) == 0
    assert record.result_path.stat().st_mtime_ns != before


def test_checkpoint_that_does_not_match_leaves_the_record_alone(write_suite, results, capsys):
    path = write_suite(TINY)
    spec = load_suite(path).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    other = get_builder("realnvp")(load_dataset(spec.dataset, spec.data_config).info, n_layers=2, hidden=32)
    torch.save({"run_id": spec.run_id, "model": other.state_dict(), "optimizer": {}}, record.checkpoint_path)
    record.write_result({"status": "preempted", "steps": 100})
    files = {p.name: p.read_bytes() for p in record.dir.iterdir()}
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert f"checkpoint {record.checkpoint_path} does not match the model" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in record.dir.iterdir()} == files


def test_unwritable_results_folder(write_suite, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["run", str(write_suite(TINY)), "--results", str(blocker / "results"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("flowbench: error: results folder") and "--results DIR" in err and "Traceback" not in err


def test_learning_rate_schedule():
    t = {"lr": 1.0, "warmup_steps": 10, "schedule": "step", "milestones": [50, 80], "gamma": 0.1}
    assert [lr_at(s, t, 100) for s in (0, 9, 10, 49)] == [0.1, 1.0, 1.0, 1.0]
    assert lr_at(50, t, 100) == pytest.approx(0.1) and lr_at(99, t, 100) == pytest.approx(0.01)
    # a milestone inside the warm-up takes effect at once (InfoCNF's batch-8,000 runs: decay at 720, warm-up 1,000)
    w = {"lr": 1e-2, "warmup_steps": 1000, "schedule": "step", "milestones": [720], "gamma": 0.1}
    assert lr_at(719, w, 2400) == pytest.approx(1e-2 * 0.72) and lr_at(720, w, 2400) == pytest.approx(1e-3 * 0.721)
    assert lr_at(999, w, 2400) == pytest.approx(1e-3) and lr_at(1500, w, 2400) == pytest.approx(1e-3)
    c = {**t, "schedule": "cosine", "warmup_steps": 0}
    assert lr_at(0, c, 100) == 1.0 and lr_at(50, c, 100) == pytest.approx(0.5) and lr_at(100, c, 100) == pytest.approx(0)


class _Identity(FlowModel):
    """evaluate: the first coordinate as the per-example term (so means are easy to predict)."""

    def evaluate(self, x, y=None):
        return {"nll": x[:, 0].double()}


def test_evaluate_counts_exactly_max_examples_across_partial_batches():
    from bench.data.base import DataInfo, Dataset, Split

    x = torch.arange(10, dtype=torch.float32).unsqueeze(1)
    data = Dataset(DataInfo("t", "toy", (1,)), Split(x), Split(x), Split(x))
    for batch, limit in ((4, 5), (1000, 7), (3, None)):
        out = evaluate(_Identity(), data, data.test, torch.device("cpu"), batch, limit)
        n = 10 if limit is None else limit
        assert out["nll"] == pytest.approx(sum(range(n)) / n)


# -- optimiser options, gradient accumulation, Polyak averaging, final-weights testing ---------
def _spec(write_suite, train: str, models: str = "realnvp: {n_layers: 2, hidden: 16, batch_norm: false}"):
    text = TINY.replace("realnvp: {n_layers: 2, hidden: 16}", models).replace(
        "train: {max_steps: 400, batch_size: 64, lr: 5e-3, eval_every: 20, checkpoint_every: 20}", f"train: {train}")
    return load_suite(write_suite(text)).runs()[0]


def test_betas_and_weight_decay_on_marked_parameters_only():
    from bench.data.base import DataInfo
    from bench.errors import FlowbenchError
    from bench.train import make_optimizer

    model = get_builder("realnvp")(DataInfo("x", "image", (2, 4, 4), levels=256), n_scales=2, n_checker=1,
                                   n_channel=1, hidden=4, n_blocks=1)
    train = {"optimizer": "adam", "lr": 0.01, "betas": [0.5, 0.9], "weight_decay": 0.1, "weight_decay_on": "marked"}
    opt = make_optimizer(model, train)
    assert {g["betas"] for g in opt.param_groups} == {(0.5, 0.9)}
    marked = {id(p) for p in model.weight_decay_params()}
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # no loss gradient: only the decay can move a parameter
    opt.step()
    moved = {id(p) for p in model.parameters() if not torch.equal(p.detach(), before[id(p)]) and p.abs().sum() > 0}
    nonzero_marked = {id(p) for p in model.weight_decay_params() if p.abs().sum() > 0}
    assert moved == nonzero_marked and nonzero_marked and moved <= marked
    every = make_optimizer(model, {**train, "weight_decay_on": "all"})
    assert [g["weight_decay"] for g in every.param_groups] == [0.1]
    vector = get_builder("realnvp")(DataInfo("x", "toy", (2,)), n_layers=2)
    with pytest.raises(FlowbenchError, match=r"train.weight_decay_on: marked needs a model with weight_decay_para"):
        make_optimizer(vector, train)


@pytest.mark.parametrize("name", ["adam", "adamw", "adamax"])
def test_multi_tensor_optimizer_steps_equal_the_per_tensor_loop(name):
    """make_optimizer uses torch's multi-tensor update for speed; the parameters it reaches after a
    few steps are bit for bit those of the per-tensor loop (a fused or reordered update would not be)."""
    from bench.data.base import DataInfo
    from bench.train import make_optimizer

    torch.manual_seed(0)
    model = get_builder("realnvp")(DataInfo("x", "toy", (2,)), n_layers=2, hidden=8)
    twin = copy.deepcopy(model)
    train = {"optimizer": name, "lr": 0.01, "weight_decay": 1e-3}
    fast = make_optimizer(model, train)
    assert all(g["foreach"] for g in fast.param_groups)
    cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "adamax": torch.optim.Adamax}[name]
    plain = cls(twin.parameters(), lr=0.01, weight_decay=1e-3, foreach=False)
    for _ in range(5):
        x = torch.randn(32, 2)
        for net, opt in ((model, fast), (twin, plain)):
            opt.zero_grad()
            (-net.log_prob(x).mean()).backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_accumulated_micro_batches_make_the_same_step(write_suite, tmp_path):
    """For a model without batch statistics, 4 accumulated micro-batches give the full batch's step."""
    from bench.train import Trainer

    params = []
    for parts in (1, 4):
        spec = _spec(write_suite, f"{{max_steps: 1, batch_size: 64, lr: 1e-2, accumulate: {parts}}}")
        trainer = Trainer(spec, RunRecord(tmp_path / str(parts), spec.suite, spec.run_id), device="cpu", progress=False)
        sizes, forward = [], trainer.model.training_loss
        trainer.model.training_loss = lambda x, y: (sizes.append(len(x)), forward(x, y))[1]
        loss = trainer.timed_step(None)
        assert sizes == [64 // parts] * parts
        params.append((loss, [p.detach().clone() for p in trainer.model.parameters()]))
    (loss_one, one), (loss_four, four) = params
    assert loss_one == pytest.approx(loss_four, rel=1e-6)
    for a, b in zip(one, four):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_polyak_average_is_the_debiased_moving_average():
    from bench.train import Polyak

    layer = torch.nn.Linear(2, 1)
    polyak = Polyak(layer, 0.9)
    torch.testing.assert_close(polyak.averaged()[0], layer.weight)  # before any update: the live weights
    history = []
    for step in range(5):
        with torch.no_grad():
            layer.weight.add_(1.0 + step)
        history.append(layer.weight.detach().clone())
        polyak.update()
    weights = torch.tensor([0.9 ** (4 - i) * 0.1 for i in range(5)])
    expected = sum(w * h for w, h in zip(weights, history)) / weights.sum()  # TF's zero_debias
    torch.testing.assert_close(polyak.averaged()[0], expected)
    live = layer.weight.detach().clone()
    with polyak.swapped_in():
        torch.testing.assert_close(layer.weight, expected)
    assert torch.equal(layer.weight, live)


def test_polyak_evaluation_and_final_weights_survive_resume_exactly(write_suite, tmp_path, stop_at_step):
    """Polyak average (evaluated, saved), final-weight testing, betas and accumulation: a run stopped
    at step 50 and resumed gives exactly the uninterrupted run's history, test numbers and weights."""
    from bench.train import run_one

    spec = _spec(write_suite, "{max_steps: 100, batch_size: 64, lr: 5e-3, eval_every: 20, checkpoint_every: 20, "
                              "polyak: 0.9, restore_best: false, betas: [0.8, 0.99], accumulate: 2}")
    straight = RunRecord(tmp_path / "straight", spec.suite, spec.run_id)
    assert run_one(spec, straight, device="cpu", progress=False)["status"] == "completed"

    stopped = RunRecord(tmp_path / "stopped", spec.suite, spec.run_id)
    stop_at_step(50)
    assert run_one(spec, stopped, device="cpu", progress=False)["status"] == "preempted"
    assert torch.load(stopped.checkpoint_path, weights_only=False)["polyak"]["updates"] == 50
    stop_at_step(None)
    resumed = run_one(spec, stopped, device="cpu", progress=False)
    reference = straight.read_result()
    assert resumed["status"] == "completed" and resumed["resumes"] == 1
    assert resumed["test"] == reference["test"] and resumed["test_step"] == 100 == reference["test_step"]
    drop_time = [{k: v for k, v in row.items() if k != "seconds"} for row in stopped.read_metrics()]
    assert drop_time == [{k: v for k, v in row.items() if k != "seconds"} for row in straight.read_metrics()]
    assert [row["step"] for row in stopped.read_metrics()] == [20, 40, 60, 80, 100]
    a, b = (torch.load(r.model_path, weights_only=False) for r in (stopped, straight))
    assert a["step"] == 100 and a["polyak"] is True
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])


def test_polyak_weights_are_what_is_evaluated_and_saved(write_suite, tmp_path):
    from bench.train import Trainer

    spec = _spec(write_suite, "{max_steps: 40, batch_size: 64, lr: 5e-3, eval_every: 20, checkpoint_every: 100, "
                              "polyak: 0.95, restore_best: false}")
    record = RunRecord(tmp_path, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    trainer = Trainer(spec, record, device="cpu", progress=False)
    trainer.fit()
    live = [p.detach().clone() for p in trainer.polyak.params]
    averaged = trainer.polyak.averaged()
    assert any(not torch.equal(a, b) for a, b in zip(live, averaged))
    result = trainer.run()  # the budget is spent: no more steps, then the test evaluation
    assert all(torch.equal(p, a) for p, a in zip(trainer.polyak.params, averaged))  # tested: the average
    saved = torch.load(record.model_path, weights_only=False)["model"]
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())
    val = evaluate(trainer.model, trainer.data, trainer.data.val, torch.device("cpu"), spec.train["eval_batch_size"],
                   seed=spec.seed)
    assert record.read_metrics()[-1]["val_nll"] == val["nll"]  # the last validation saw the averaged weights
    assert result["test_step"] == 40


@pytest.mark.parametrize("suite,n_train", [("mnist", 60_000), ("cifar10", 50_000)])
def test_paper_scale_suites_count_steps_for_the_full_training_set(suite, n_train):
    """The paper-scale suites train on every training image, and their warm-ups, Adamax beta2 and
    step budgets are the official codes' formulas evaluated for that set."""
    import math

    import yaml

    suite_obj = load_suite(suite)
    runs = {r.model: r for r in suite_obj.runs(seeds=[0])}
    assert all(r.data_config["n_val"] == 0 for r in runs.values())
    glow = runs["glow"].train
    assert glow["batch_size"] == 512 == 8 * 64 and glow["accumulate"] == 8 and glow["optimizer"] == "adamax"
    assert glow["warmup_steps"] == math.ceil(10 * n_train / 512)  # openai/glow: epochs_warmup 10
    assert glow["betas"][1] == pytest.approx(1 - 1 / math.ceil(n_train / 512), abs=1e-6)  # 1 - 1/train_its
    assert glow["eval_every"] == 50 * (n_train // 512) and glow["polyak"] is None and glow["restore_best"]
    assert runs["glow"].data_config["logit"] is False and runs["glow"].data_config["shift"] == 0.1
    iresnet, its = runs["iresnet"].train, math.ceil(n_train / 128)
    assert iresnet["warmup_steps"] == 2 * its and iresnet["max_steps"] == 200 * its
    assert iresnet["lr"] == pytest.approx(3e-3 * (2 * its - 1) / its, rel=1e-4)  # the rate the official code uses
    assert runs["iresnet"].model_config["eval_series_terms"] == 5 and not iresnet["restore_best"]
    realnvp = runs["realnvp"].train
    assert (realnvp["weight_decay"], realnvp["weight_decay_on"], realnvp["grad_clip"]) == (1e-4, "marked", 100.0)
    assert runs["realnvp"].data_config["alpha"] == 0.05 and runs["realnvp"].model_config["n_scales"] == 2
    raw = yaml.safe_load(suite_obj.path.read_text())
    assert {"realnvp", "glow", "iresnet", "split"} <= set(raw["sources"]) and len(suite_obj.differences) >= 5


def test_checkpoint_with_a_planted_pickle_is_refused_and_never_runs(write_suite, results, capsys, planted_pickle):
    path = write_suite(TINY)
    spec = load_suite(path).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    marker = planted_pickle(record.checkpoint_path)
    record.write_result({"status": "preempted", "steps": 100})
    files = {p.name: p.read_bytes() for p in record.dir.iterdir()}
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {record.checkpoint_path} (not a plain weights file" in err and "--force" in err
    assert len([line for line in err.splitlines() if "checkpoint" in line]) == 1 and "Traceback" not in err
    assert not marker.exists()
    assert {p.name: p.read_bytes() for p in record.dir.iterdir()} == files  # nothing written is lost


HANG = """
datasets:
  8gaussians: {n_train: 2000, n_val: 500, n_test: 1000}
models:
  ffjord: {hidden: [32, 32, 32], adjoint: false}
seeds: [2]
train: {max_steps: 200, batch_size: 256, lr: 1e4, eval_every: 50, checkpoint_every: 50, max_minutes: 0.05}
variants:
  deadline: {train: {max_solver_evals: null, min_solver_step: null}}
  evals: {train: {max_solver_evals: 300, min_solver_step: null}}
  floor: {train: {max_solver_evals: null, min_solver_step: 1e-7}}
"""


@pytest.mark.slow
def test_a_run_that_cannot_finish_is_stopped_within_its_budget(write_suite, results, capsys):
    """FFJORD at lr 1e4, seed 2: after one step the dynamics are so stiff that one dopri5 solve ran
    for minutes (and grew to 24 GB before the kernel killed the sweep). Its solves are now bounded:
    by the budget (3 s of training, then as long again for an evaluation: timeout) and by the
    evaluations one solve may take (diverged); the sweep goes on."""
    path = write_suite(HANG)
    start = time.perf_counter()
    assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report"]) == 1
    assert time.perf_counter() - start < 40  # three runs of at most 3 s + 3 s each, and start-up
    runs = {s.variant: RunRecord(results, s.suite, s.run_id).read_result() for s in load_suite(path).runs()}
    unbounded = runs["deadline"]
    assert unbounded["status"] == "timeout" and "ran past max_minutes (0.05 min) inside an ODE solve" in \
        unbounded["error"]
    assert unbounded["train_seconds"] < 3.5 and unbounded["steps"] == 1
    assert runs["evals"]["status"] == "diverged"
    assert "more than 300 function evaluations in one ODE solve" in runs["evals"]["error"]
    assert runs["floor"]["status"] == "diverged" and "below the floor 1e-07" in runs["floor"]["error"]
    assert "2 diverged, 1 timeout" in capsys.readouterr().out


ONE_SET = "8gaussians: {n_train: 2000, n_val: 500, n_test: 1000}"
TWO_SETS = f"{ONE_SET}\n  moons: {{n_train: 2000, n_val: 500, n_test: 1000}}"  # two runs: the sweep goes on

WRITE_LIMITED = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), int(sys.argv[1])))
from bench.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("how", ["full disk", "read-only run folder"])
def test_a_record_that_cannot_be_written_fails_that_run_and_the_sweep_goes_on(write_suite, results, how):
    path = write_suite(TINY.replace(ONE_SET, TWO_SETS))
    specs = load_suite(path).runs()
    args = ["run", str(path), "--results", str(results), "--quiet", "--no-report"]
    if how == "full disk":  # room for spec.json and a short result, not for a checkpoint or a traceback
        room = max(len(json.dumps(s.to_dict(), indent=1)) for s in specs) + 200
        proc = subprocess.run([sys.executable, "-c", WRITE_LIMITED, str(room), *args], capture_output=True, text=True)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes through folder permissions")
        for spec in specs:
            RunRecord(results, spec.suite, spec.run_id).create(spec.to_dict())
            os.chmod(RunRecord(results, spec.suite, spec.run_id).dir, 0o555)
        proc = subprocess.run([sys.executable, "-m", "bench", *args], capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    failed = [line for line in proc.stderr.splitlines() if line.startswith("  failed: ")]
    assert len(failed) == 2 and all("free space or make the run folder writable" in line for line in failed)
    assert "2 failed" in proc.stdout  # both runs tried: the sweep went on
    if how == "full disk":
        for spec in specs:
            result = RunRecord(results, spec.suite, spec.run_id).read_result()
            assert result["status"] == "failed" and "checkpoint.pt: File too large" in result["error"]


def test_a_result_json_that_is_a_folder_is_named_and_left_alone(write_suite, results, capsys):
    path = write_suite(TINY.replace(ONE_SET, TWO_SETS).replace("max_steps: 400", "max_steps: 20"))
    odd, fine = load_suite(path).runs()
    record = RunRecord(results, odd.suite, odd.run_id)
    record.create(odd.to_dict())
    record.result_path.mkdir()
    for force in ([], ["--force"]):
        assert main(["run", str(path), "--results", str(results), "--quiet", "--no-report", *force]) == 1
        err = capsys.readouterr().err
        assert f"failed: {odd.label}: {record.result_path} is unreadable (Is a directory); move it away" in err
        assert "Traceback" not in err and record.result_path.is_dir()
        assert RunRecord(results, fine.suite, fine.run_id).read_result()["status"] == "completed"  # the rest ran


COMPILE_SUITE = """
datasets:
  8gaussians: {n_train: 256, n_val: 128, n_test: 128}
models:
  ffjord: {hidden: [8, 8]}
  realnvp: {n_layers: 2, hidden: 8}
seeds: [0]
train: {max_steps: 3, batch_size: 64, eval_every: 3, checkpoint_every: 3}
"""


def test_run_compile_compiles_the_cnf_dynamics_and_keeps_run_ids(write_suite, results, monkeypatch, capsys):
    """`run --compile` reaches each run (spec.json), compiles every CNF block of a CNF model and none of a
    discrete one (recorded as compiled_blocks), and leaves the run ids alone. The aot_eager backend
    stands in for inductor here (seconds instead of a compile; the numerics are tested in
    tests/baselines/test_cnf.py)."""
    import baselines.cnf as cnf

    real = cnf.compile_dynamics
    monkeypatch.setattr(cnf, "compile_dynamics", lambda module: real(module, backend="aot_eager"))
    path = write_suite(COMPILE_SUITE)
    assert main(["run", str(path), "--dry-run", "--results", str(results)]) == 0
    plain_ids = set(re.findall(r"\b[0-9a-f]{12}\b", capsys.readouterr().out))
    assert main(["run", str(path), "--compile", "--results", str(results), "--quiet", "--no-report"]) == 0
    compiled = {}
    for folder in (results / "t").iterdir():
        if (folder / "result.json").is_file():
            spec, result = json.loads((folder / "spec.json").read_text()), json.loads((folder / "result.json").read_text())
            assert spec["compile"] is True and result["status"] == "completed", result.get("error")
            compiled[spec["model"]] = (folder.name, result["compiled_blocks"])
    assert {model: n for model, (_, n) in compiled.items()} == {"ffjord": 1, "realnvp": 0}
    assert {run_id for run_id, _ in compiled.values()} == plain_ids
