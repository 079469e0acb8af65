"""SLURM path speed: time to submit a 1,000-run suite as one array, and per-run overhead vs inline.

    SLURM_CONF=... python benchmarks/bench_slurm.py      # needs a reachable cluster (tests/slurm/cluster.sh start)

The 1,000 array tasks are submitted on hold (``--hold``) and cancelled right after, so the
cluster does not run them; the tiny run is then timed inline and through a real sbatch.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from bench.cli import main
from bench.launch import submit
from bench.spec import load_suite
from bench.store import RunRecord

GRID = """
datasets: [moons]
models: {{realnvp: {{n_layers: 2, hidden: 8}}}}
seeds: {seeds}
train: {{max_steps: 20, batch_size: 100, eval_every: 10}}
slurm: {{timeout_min: 5, cpus_per_task: 1, mem_gb: 1, additional: {{hold: true}}}}
"""


def main_() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = tmp / "grid.yaml"
        path.write_text(GRID.format(seeds=list(range(1000))))
        suite = load_suite(path)
        specs = suite.runs()
        start = time.perf_counter()
        summary, submitted, jobs = submit(specs, tmp / "results", "slurm", suite.slurm)
        elapsed = time.perf_counter() - start
        subprocess.run(["scancel", jobs[0].job_id.split("_")[0]], check=False)
        print(f"submit {len(jobs):,} runs as one array       {elapsed:8.2f} s  ({1e3 * elapsed / len(jobs):.2f} ms/run, "
              "held and cancelled)")

        tiny = tmp / "tiny.yaml"
        tiny.write_text(GRID.format(seeds=[0]).replace(", additional: {hold: true}", ""))
        spec = load_suite(tiny).runs()[0]
        start = time.perf_counter()
        main(["run", str(tiny), "--results", str(tmp / "inline"), "--quiet", "--no-report"])
        inline = time.perf_counter() - start
        start = time.perf_counter()
        main(["run", str(tiny), "--executor", "slurm", "--wait", "--results", str(tmp / "slurm"), "--quiet",
              "--no-report"])
        slurm = time.perf_counter() - start
        train = RunRecord(tmp / "slurm", spec.suite, spec.run_id).read_result()["wall_seconds"]
        print(f"tiny run (20 steps) inline, end to end  {inline:8.2f} s")
        print(f"tiny run through sbatch, end to end     {slurm:8.2f} s  (run itself {train:.2f} s)")
        print(f"per-run overhead of the slurm path      {slurm - inline:8.2f} s  (scheduling, python start-up, polling)")


if __name__ == "__main__":
    main_()
