"""The checks to run once when a GPU machine is lent: one table, a few minutes (issue 24).

    python benchmarks/gpu_check.py --device cuda --out docs/measurements-gpu.md
    python benchmarks/gpu_check.py --device cpu --only train-glow,resume   # the same checks on the CPU

Checks (``--only`` takes names or their prefixes: ``train``, ``ddp``, ``bench``):

- ``train-FAMILY``: a short run of each family through the harness (``bench.train.run_one``) on the
  device, completed; seconds per step, peak memory, and host syncs per training step (profiled
  ``Trainer.timed_step`` calls: scalar reads of the device, and on CUDA device-to-host copies; the
  harness's one packed read of the loss is the one allowed sync a step).
- ``resume``: ``flowbench run`` SIGKILLed after its first checkpoint, then run again to completion,
  gives the uninterrupted run's weights and test metric.
- ``ddp-FAMILY``: 2 processes on the one device (gloo) end with identical weights and the 1-process
  run's test metric.
- ``bench-discrete``, ``bench-cnf``, ``bench-cnf-official``: the side-by-side speed benchmarks on the
  device (their headline figures).

Every check runs inside try/except: a failure is a FAIL row, never a crash; the exit status is 1
when any row failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
SUBPROCESS_TIMEOUT = 240  # seconds for any one child process (a hung GPU job must not eat the lease)

# family -> (kind, dataset, data options, model options); tiny models that run in seconds
TOY = "{n_train: 1024, n_val: 256, n_test: 256}"
FAMILIES: dict[str, tuple[str, str, str, str]] = {
    "realnvp": ("image, batch norm", "digits", "{}",
                "{n_scales: 1, n_checker: 2, n_channel: 2, hidden: 8, n_blocks: 1, batch_norm: true}"),
    "glow": ("image", "digits", "{}", "{n_levels: 2, n_steps: 2, hidden: 16, split_prior: true}"),
    "iresnet": ("image", "digits", "{}", "{n_stages: 1, n_blocks: 1, hidden: 8}"),
    "ffjord": ("vector, moving batch norm", "moons", TOY,
               "{hidden: [16, 16], batch_norm: true, n_blocks: 2, divergence: hutchinson, atol: 1e-4, rtol: 1e-4, "
               "eval_atol: 1e-4, eval_rtol: 1e-4}"),
    "rnode": ("vector", "moons", TOY, "{hidden: [16, 16], solver: rk4, step_size: 0.25, eval_atol: 1e-4, "
                                      "eval_rtol: 1e-4}"),
    "infocnf": ("labels", "8gaussians", TOY, "{hidden: [8, 8], adjoint: false, eval_atol: 1e-4, eval_rtol: 1e-4}"),
}
DISCRETE = ("realnvp", "glow", "iresnet")  # no reads of their own: exactly the harness's one sync a step

SUITE = """name: {name}
datasets: {{{dataset}: {data}}}
models: {{{model}: {options}}}
seeds: [0]
train: {{max_steps: {steps}, batch_size: 64, eval_batch_size: 256, lr: 5e-3, eval_every: {every},
         checkpoint_every: {checkpoint}, accumulate: {accumulate}}}
"""

SYNC_EVENT = "aten::_local_scalar_dense"  # one per host read of a device scalar (item, bool, float)
OPTIMIZER_STEP = "Optimizer.step#"  # torch.optim reads its step counters, CPU tensors: no device sync
# ops whose reads happen in their CPU kernels only (no sync on CUDA); see tests/sync_counts.py
CPU_ONLY_READS = ("aten::linalg_lu_solve", "aten::var", "aten::std", "aten::var_mean", "aten::std_mean",
                  "aten::one_hot")


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    check: str
    family: str
    outcome: str  # ok, FAIL or skip
    figures: str


class CheckFailed(Exception):
    """A check ran but its figures are not what they should be (the message is the figures)."""


def write_suite(folder: Path, model: str, *, steps: int = 20, every: int = 10, checkpoint: int | None = None,
                accumulate: int = 1) -> Path:
    """A one-run suite file of ``model`` on its family's dataset in ``folder``: ``steps`` steps, evaluated
    every ``every``, checkpointed every ``checkpoint`` (default: ``every``)."""
    _, dataset, data, options = FAMILIES[model]
    path = folder / f"check-{model}.yaml"
    path.write_text(SUITE.format(name=f"check-{model}", dataset=dataset, data=data, model=model, options=options,
                                 steps=steps, every=every, checkpoint=checkpoint or every, accumulate=accumulate))
    return path


def headline(result: dict[str, Any], metric: str) -> float:
    """The run's test metric (the suite's headline, e.g. bpd or nll)."""
    value = result.get("test", {}).get(metric)
    if value is None or not math.isfinite(value):
        raise CheckFailed(f"no finite test {metric} in the result: {result.get('test')}")
    return float(value)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest |a - b| over two state dicts' floating tensors (1 for any other tensor that differs)."""
    return max((x - b[k]).abs().max().item() if x.is_floating_point() else float(not torch.equal(x, b[k]))
               for k, x in a.items())


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: this checkout first on PYTHONPATH."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def run_child(args: list[str], env: dict[str, str] | None = None, timeout: float = SUBPROCESS_TIMEOUT) -> str:
    """Run a Python child to completion; its stdout (CheckFailed with its output's tail if it fails)."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT,
                          env=env or child_env(), timeout=timeout)
    if proc.returncode:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-3:]
        raise CheckFailed(f"exit {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


# -- host syncs ---------------------------------------------------------------------------------------
def _inside(event: Any, names: tuple[str, ...], prefix: str = "") -> bool:
    """Whether a profiler event is nested in one named ``names`` (or starting with ``prefix``)."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name in names or (prefix and parent.name.startswith(prefix)):
            return True
        parent = parent.cpu_parent
    return False


def count_syncs(fn: Callable[[], Any], device: torch.device) -> tuple[int, int | None]:
    """Run ``fn`` under torch.profiler: (scalar reads of the device, device-to-host copies). Reads are
    ``aten::_local_scalar_dense`` events outside the optimiser's step and the CPU-only kernels; the
    copies (CUDA ``Memcpy DtoH`` events, None off CUDA) include ``.tolist()``'s, which no CPU event shows."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn()
        if cuda:
            torch.cuda.synchronize(device)
    events = prof.events()
    reads = sum(1 for e in events if e.name == SYNC_EVENT and not _inside(e, CPU_ONLY_READS, OPTIMIZER_STEP))
    copies = sum(1 for e in events if e.name.startswith("Memcpy DtoH")) if cuda else None
    return reads, copies


def step_syncs(spec: Any, results: Path, device: str, steps: int = 3) -> tuple[float, float | None]:
    """Per training step (after 2 warm-up steps): scalar reads, and device-to-host copies on CUDA, of a
    Trainer built in this process on ``spec``."""
    from bench.store import RunRecord
    from bench.train import Trainer

    record = RunRecord(results, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    trainer = Trainer(spec, record, device=device, progress=False)
    for _ in range(2):  # data-dependent initialisation, the optimiser's lazy state
        trainer.timed_step(None)
    reads, copies = count_syncs(lambda: [trainer.timed_step(None) for _ in range(steps)], trainer.device)
    return reads / steps, None if copies is None else copies / steps


# -- the checks ---------------------------------------------------------------------------------------
def check_train(model: str, device: str, tmp: Path) -> str:
    """A short run through the harness, completed; its speed, memory and syncs per step."""
    from bench.spec import load_suite
    from bench.store import RunRecord
    from bench.train import run_one

    spec = load_suite(write_suite(tmp, model)).runs()[0]
    result = run_one(spec, RunRecord(tmp / "results", spec.suite, spec.run_id), device=device, progress=False)
    if result.get("status") != "completed":
        raise CheckFailed(f"status {result.get('status')}: {str(result.get('error'))[:200]}")
    metric = headline(result, spec.metric)
    reads, copies = step_syncs(spec, tmp / "syncs", device)
    if copies is None:  # the CPU profiler cannot see .tolist(): the harness's packed read is added
        syncs, how = reads + 1, f"{reads:g} scalar reads + 1 packed read"
    else:
        syncs, how = copies, f"DtoH copies; {reads:g} scalar reads"
    figures = (f"{result['seconds_per_step']:.4f} s/step, peak {result['peak_memory_mb']:.0f} MB, "
               f"syncs/step {syncs:g} ({how}), test {spec.metric} {metric:.4f}")
    if copies is not None and copies < 1:  # the loss is copied to the host every step
        raise CheckFailed(figures + "; no device-to-host copy recorded: did the profiler see CUDA (CUPTI)?")
    if model in DISCRETE and (reads or syncs != 1):
        raise CheckFailed(figures + "; expected 1 sync a step")
    return figures


def check_resume(device: str, tmp: Path) -> str:
    """``flowbench run`` killed by SIGKILL after its first checkpoint and run again completes to the
    uninterrupted run's weights and test metric."""
    from bench.spec import load_suite
    from bench.store import RunRecord

    suite = write_suite(tmp, "glow", steps=120, every=60, checkpoint=10)  # killed after step 10, well before 120
    spec = load_suite(suite).runs()[0]

    def command(results: Path) -> list[str]:
        return ["-m", "bench", "run", str(suite), "--device", device, "--results", str(results), "--quiet",
                "--no-report"]

    killed = RunRecord(tmp / "killed", spec.suite, spec.run_id)
    log = tmp / "killed.log"
    with log.open("w") as sink:
        proc = subprocess.Popen([sys.executable, *command(tmp / "killed")], cwd=ROOT, env=child_env(),
                                stdout=sink, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while not killed.checkpoint_path.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is not None or not killed.checkpoint_path.exists():
            raise CheckFailed(f"no checkpoint to kill the run after (exit {proc.poll()}): "
                              + " | ".join(log.read_text().strip().splitlines()[-3:]))
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    run_child(command(tmp / "killed"))
    run_child(command(tmp / "straight"))
    straight = RunRecord(tmp / "straight", spec.suite, spec.run_id)
    results = [r.read_result() or {} for r in (killed, straight)]
    if results[0].get("resumes") != 1:
        raise CheckFailed(f"the second run did not resume the checkpoint (resumes {results[0].get('resumes')})")
    weights = [torch.load(r.model_path, map_location="cpu", weights_only=True)["model"] for r in (killed, straight)]
    diff = max_difference(*weights)
    metrics = [headline(r, spec.metric) for r in results]
    rel = abs(metrics[0] - metrics[1]) / abs(metrics[1])
    tolerance = 1e-4 if torch.device(device).type == "cuda" else 1e-6
    figures = (f"killed after the first checkpoint, resumed: max |dw| {diff:.2g}, test {spec.metric} "
               f"{metrics[0]:.6f} vs {metrics[1]:.6f} uninterrupted (rel {rel:.2g}, tolerance {tolerance:g})")
    if rel > tolerance:
        raise CheckFailed(figures)
    return figures


def worker(suite: str, results: str, out: str, device: str) -> None:
    """One process of a (multi-process) run: train the suite's one run, save weights and result."""
    from bench.spec import load_suite
    from bench.store import RunRecord
    from bench.train import Trainer

    torch.set_num_threads(1)
    spec = load_suite(suite).runs()[0]
    record = RunRecord(results, spec.suite, spec.run_id)
    record.create(spec.to_dict())
    trainer = Trainer(spec, record, device=device, progress=False)
    result = trainer.run()
    torch.save({k: v.cpu() for k, v in trainer.model.state_dict().items()}, out)
    Path(out + ".json").write_text(json.dumps(result, default=str))


def check_processes(model: str, device: str, tmp: Path) -> str:
    """2 gloo processes on the one device end with identical weights and the test metric of 1."""
    from bench.spec import load_suite

    # Glow: micro-batches make ActNorm's first-step shift gradient real (tests/bench/test_train_distributed.py)
    suite = write_suite(tmp, model, steps=6, every=3, accumulate=2)
    metric = load_suite(suite).runs()[0].metric
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    outputs: dict[int, list[Path]] = {}
    for world in (1, 2):
        procs, outputs[world] = [], [tmp / f"w{world}-rank{rank}.pt" for rank in range(world)]
        try:
            for rank, out in enumerate(outputs[world]):
                env = child_env(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                                MASTER_PORT=str(port), FLOWBENCH_BACKEND="gloo", OMP_NUM_THREADS="1")
                procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(suite), str(tmp / f"w{world}"),
                                               str(out), "--device", device], cwd=ROOT, env=env,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            logs = [p.communicate(timeout=SUBPROCESS_TIMEOUT)[0] for p in procs]
        finally:  # a process left waiting in a collective must not outlive the check
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for p, log in zip(procs, logs):
            if p.returncode:
                raise CheckFailed(f"{world} process(es): exit {p.returncode}: "
                                  + " | ".join(log.strip().splitlines()[-3:]))
    ranks = [torch.load(f, map_location="cpu", weights_only=True) for f in outputs[2]]
    differing = [k for k, v in ranks[0].items() if not torch.equal(v, ranks[1][k])]
    single = torch.load(outputs[1][0], map_location="cpu", weights_only=True)
    diff = max_difference(ranks[0], single)
    metrics = [headline(json.loads(Path(str(outputs[w][0]) + ".json").read_text()), metric) for w in (1, 2)]
    rel = abs(metrics[1] - metrics[0]) / abs(metrics[0])
    figures = (f"ranks identical: {'yes' if not differing else 'no (' + ', '.join(differing[:3]) + ')'}, "
               f"max |dw| vs 1 process {diff:.2g}, test {metric} {metrics[1]:.6f} vs {metrics[0]:.6f} (rel {rel:.2g})")
    if differing or rel > 1e-4:
        raise CheckFailed(figures)
    return figures


def check_bench_discrete(device: str) -> str:
    """benchmarks/bench_discrete.py --quick on the device: normflows / harness per case."""
    out = run_child([str(BENCHMARKS / "bench_discrete.py"), "--quick", "--device", device])
    ratios = re.findall(r"^(\S+)\s.*?\s(\d+\.\d+)x\s", out, re.MULTILINE)
    if not ratios:
        raise CheckFailed(f"no ratio in its output; last line: {out.strip().splitlines()[-1:]}")
    return "normflows / harness, speed: " + ", ".join(f"{case} {ratio}x" for case, ratio in ratios)


def check_bench_cnf(device: str) -> str:
    """benchmarks/bench_cnf.py --quick on the device: CPU and wall seconds per step of each toy case."""
    out = run_child([str(BENCHMARKS / "bench_cnf.py"), "--quick", "--steps", "3", "--device", device])
    rows = re.findall(r"^(toy-\S+)\s+(\w+)\s+(adjoint|direct)\s+(\d+\.\d+)\s+(\d+\.\d+)", out, re.MULTILINE)
    if not rows:
        raise CheckFailed(f"no case rows in its output; last line: {out.strip().splitlines()[-1:]}")
    return "s/step (CPU/wall): " + ", ".join(f"{case} {model} {how} {cpu}/{wall}" for case, model, how, cpu, wall in rows)


def check_bench_cnf_official(device: str, official: str | None) -> str:
    """benchmarks/bench_cnf_official.py beside the official FFJORD checkout: its speed-up line."""
    out = run_child([str(BENCHMARKS / "bench_cnf_official.py"), "--official", str(official), "--steps", "10",
                     "--warmup", "2", "--device", device])
    lines = [line for line in out.splitlines() if line.startswith(("speed-up", "same weights"))]
    return "; ".join(lines) or out.strip().splitlines()[-1]


# -- the table ----------------------------------------------------------------------------------------
def header(device: torch.device) -> str:
    """Device name, torch, CUDA and cuDNN versions, date."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return (f"GPU check on {name} ({device}): torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {cudnn}, "
            f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}")


def table(rows: list[Row]) -> str:
    """The rows as a markdown table (a ``|`` inside a cell escaped)."""
    lines = ["| check | family | outcome | figures |", "|---|---|---|---|"]
    for r in rows:
        figures = r.figures.replace("|", "\\|")
        lines.append(f"| {r.check} | {r.family} | {r.outcome} | {figures} |")
    return "\n".join(lines)


def checks(device: str, official: str | None) -> list[tuple[str, str, Callable[[Path], str] | None]]:
    """(name, family, run in a temporary folder) of every check; None: skipped."""
    out: list[tuple[str, str, Callable[[Path], str] | None]] = []
    for model, (kind, *_) in FAMILIES.items():
        out.append((f"train-{model}", f"{model} ({kind})", lambda tmp, m=model: check_train(m, device, tmp)))
    out.append(("resume", "glow (image)", lambda tmp: check_resume(device, tmp)))
    for model in ("ffjord", "glow"):
        out.append((f"ddp-{model}", f"{model} ({FAMILIES[model][0]})",
                    lambda tmp, m=model: check_processes(m, device, tmp)))
    out.append(("bench-discrete", "realnvp, glow, iresnet", lambda tmp: check_bench_discrete(device)))
    out.append(("bench-cnf", "ffjord, rnode", lambda tmp: check_bench_cnf(device)))
    out.append(("bench-cnf-official", "ffjord (official code)",
                (lambda tmp: check_bench_cnf_official(device, official)) if official else None))
    return out


def selected(name: str, only: list[str] | None, names: list[str]) -> bool:
    """Whether ``--only`` picks check ``name`` (one of ``names``): by its full name, or by a dash-separated
    prefix that is no check's full name (``train`` picks every train-*, ``bench-cnf`` only itself)."""
    return only is None or any(name == o or (o not in names and name.startswith(o + "-")) for o in only)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda (default where available), cuda:N or cpu")
    parser.add_argument("--only", help="comma-separated checks or prefixes, e.g. train-glow,resume,ddp")
    parser.add_argument("--out", metavar="FILE", help="also write the header and table (markdown) to FILE")
    parser.add_argument("--official-ffjord", metavar="DIR", help="checkout of rtqichen/ffjord (bench-cnf-official)")
    parser.add_argument("--worker", nargs=3, metavar=("SUITE", "RESULTS", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(*args.worker, args.device)
        return 0
    only = [o.strip() for o in args.only.split(",")] if args.only else None
    names = [name for name, _, _ in checks(args.device, args.official_ffjord)]
    unknown = [o for o in only or [] if not any(selected(n, [o], names) for n in names)]
    if unknown:
        parser.error(f"--only: unknown check(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    rows: list[Row] = []
    try:
        head = header(torch.device(args.device))
    except Exception as err:  # a device this machine lacks: every check will say so too
        head = f"GPU check on {args.device} (unavailable: {err}): torch {torch.__version__}"
    print(head, flush=True)
    started = time.perf_counter()
    for name, family, run in checks(args.device, args.official_ffjord):
        if not selected(name, only, names):
            continue
        if run is None:
            rows.append(Row(name, family, "skip", "skipped: no --official-ffjord"))
            continue
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix=f"gpu-check-{name}-") as tmp:
                figures, outcome = run(Path(tmp)), "ok"
        except CheckFailed as err:
            figures, outcome = str(err), "FAIL"
        except Exception as err:  # noqa: BLE001 - one broken check is a FAIL row, the others still run
            figures, outcome = f"{type(err).__name__}: {str(err)[:300]}", "FAIL"
            traceback.print_exc()
        rows.append(Row(name, family, outcome, f"{figures} [{time.perf_counter() - start:.0f} s]"))
        print(f"{name}: {outcome}", file=sys.stderr, flush=True)
    text = f"{head}; {time.perf_counter() - started:.0f} s in all\n\n{table(rows)}\n"
    print("\n" + text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 1 if any(r.outcome == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
