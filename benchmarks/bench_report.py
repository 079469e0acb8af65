"""Speed of the reporting side: `flowbench report` and `flowbench check` on 10,000 records.

    python benchmarks/bench_report.py [--n 10000] [--keep DIR]

Writes 10,000 synthetic run records (5 models x 8 datasets x 250 seeds, 2% failed, CNFs with NFE
and learned tolerances, 10 evaluations each in metrics.jsonl), then times, as a user sees them
(fresh processes, imports included, median of --repeat runs): `flowbench report` with every figure
and `flowbench check`, each cold (scan cache removed: every record read) and warm (the cache of the
last read), and `flowbench pin`. Targets (issue 8): report < 10 s including figures; check < 2 s.
The report (tables, figures, index.html) is kept under --keep (default: reports/bench_report/).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

MODELS = {"realnvp": 0.0, "glow": 0.0, "ffjord": 120.0, "rnode": 60.0, "infocnf": 80.0}
DATASETS = ["8gaussians", "moons", "rings", "circles", "pinwheel", "2spirals", "checkerboard", "swissroll"]
SUITE = "bench_report"


def write_records(results: Path, n: int) -> None:
    """n records written directly (plain writes: generating them is not what is timed)."""
    rng = random.Random(0)
    seeds = max(1, n // (len(MODELS) * len(DATASETS)))
    i = 0
    for m_index, (model, nfe) in enumerate(MODELS.items()):
        for d_index, dataset in enumerate(DATASETS):
            for seed in range(seeds):
                if i >= n:
                    return
                run_id = f"{i:012x}"
                folder = results / SUITE / run_id
                folder.mkdir(parents=True)
                spec = {"run_id": run_id, "suite": SUITE, "model": model, "dataset": dataset, "seed": seed,
                        "model_config": {"hidden": 64}, "data_config": {"n_train": 10000},
                        "train": {"lr": 1e-3, "max_steps": 1000}, "metric": "nll"}
                (folder / "spec.json").write_text(json.dumps(spec))
                value = 2.0 + 0.1 * d_index - 0.05 * m_index + rng.gauss(0, 0.02)
                lines = []
                for k in range(1, 11):
                    row = {"step": 100 * k, "epoch": k / 4, "seconds": 3.0 * k * (1 + nfe / 100), "train_loss": value,
                           "lr": 1e-3, "nfe_forward": nfe, "nfe_backward": 1.5 * nfe,
                           "nfe_forward_total": nfe * 100 * k, "nfe_backward_total": 1.5 * nfe * 100 * k,
                           "val_nll": value + 1.0 / k}
                    if model == "infocnf":
                        row.update(train_tol_block0=1e-3 / k, train_tol_block1=1e-3 / k ** 0.5)
                    lines.append(json.dumps(row))
                (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
                if rng.random() < 0.02:
                    result = {"status": "diverged", "error": "non-finite training loss (nan) at step 512"}
                else:
                    result = {"status": "completed", "error": None, "test": {"nll": value},
                              "nfe": {"train_forward": nfe + rng.gauss(0, 1) if nfe else 0.0,
                                      "train_backward": 1.5 * nfe, "test_forward": nfe or None},
                              "train_seconds": 30.0 * (1 + nfe / 100), "steps": 1000, "params": 10000 + m_index}
                result.update(run_id=run_id, env={"git_sha": "0123abcd", "device": "cpu", "host": f"node{seed % 4}",
                                                  "versions": {"python": "3.11", "torch": "2.13.0"}})
                (folder / "result.json").write_text(json.dumps(result))
                i += 1


def timed(args: list[str], cwd: Path) -> tuple[float, float, int, str]:
    """(wall seconds, CPU seconds of the child, exit code, output) of `python -m bench ARGS`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc.returncode, proc.stdout + proc.stderr


def repeated(label: str, args: list[str], cwd: Path, repeat: int, target: float | None = None,
             before: Callable[[], None] = lambda: None) -> None:
    """Run ``args`` ``repeat`` times (``before`` each time) and print the median wall and CPU seconds."""
    walls, cpus = [], []
    for _ in range(repeat):
        before()
        wall, cpu, rc, out = timed(args, cwd)
        assert rc == 0, out
        walls.append(wall)
        cpus.append(cpu)
    line = (f"{label:<34} {statistics.median(walls):6.2f} s wall (min {min(walls):.2f}, max {max(walls):.2f})  "
            f"{statistics.median(cpus):6.2f} s CPU")
    if target is not None:
        line += f"  target < {target:g} s: {'met' if statistics.median(walls) < target else 'MISSED'}"
    print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5, help="timings per command (the median is printed)")
    parser.add_argument("--keep", default="reports/bench_report", help="where the report is kept")
    args = parser.parse_args()
    repo = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(repo))
    from bench.store import SCAN_CACHE

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        results = tmp / "results"
        start = time.perf_counter()
        write_records(results, args.n)
        os.sync()  # the records on disk before timing: no write-back competing with the reads
        print(f"wrote {args.n:,} synthetic records in {time.perf_counter() - start:.1f} s")
        print(f"load average before timing: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs "
              "(wall times on a shared machine include waiting; CPU time is the processes' own work)")
        cache = results / SUITE / SCAN_CACHE
        drop_cache = lambda: cache.unlink(missing_ok=True)  # noqa: E731  (cold: every record read)
        env_args = ["--results", str(results)]
        report_args = ["report", SUITE, *env_args, "--out", str(tmp / "reports")]
        repeated(f"flowbench report, cold ({args.n:,})", report_args, repo, args.repeat, 10.0, drop_cache)
        repeated("flowbench report, warm", report_args, repo, args.repeat, 10.0)
        figures = sorted(p.name for p in (tmp / "reports" / SUITE / "figures").glob("*.png"))
        print(f"  {len(figures)} figures, PNG + PDF: {', '.join(figures)}")
        repeated("flowbench pin", ["pin", SUITE, *env_args, "--pinned", str(tmp / "pinned")], repo, args.repeat)
        check_args = ["check", SUITE, *env_args, "--pinned", str(tmp / "pinned")]
        repeated("flowbench check, cold", check_args, repo, args.repeat, 2.0, drop_cache)
        repeated("flowbench check, warm", check_args, repo, args.repeat, 2.0)
        keep = repo / args.keep if not os.path.isabs(args.keep) else Path(args.keep)
        if keep.exists():
            shutil.rmtree(keep)
        shutil.copytree(tmp / "reports" / SUITE, keep)
        print(f"report kept in {keep}")


if __name__ == "__main__":
    main()
