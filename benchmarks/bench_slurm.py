"""SLURM path speed: submitting a 1,000-run suite, `status` over a 1,000-task array, and the
per-run overhead of the slurm path vs inline.

    SLURM_CONF=... python benchmarks/bench_slurm.py      # needs a reachable cluster (tests/slurm/cluster.sh start)
    SLURM_CONF=... python benchmarks/bench_slurm.py --status-only

The 1,000-run submission is made on hold (``--hold``) and cancelled right after, so the cluster
does not run it. For `status`, a 1,000-task array of `true` runs to the end (``sbatch --array
--wrap true``), 1,000 run records point at its tasks, and `flowbench status` is timed with the
number of sacct / squeue calls it makes (one of each per 200 arrays, never one per run); the same
for a held 1,000-task array, which sacct reports compressed (``123_[0-999]``).
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cli import main
from bench.launch import submit
from bench.slurm import SLURM_QUERIES, job_states
from bench.spec import load_suite
from bench.store import RunRecord

GRID = """
datasets: [moons]
models: {{realnvp: {{n_layers: 2, hidden: 8}}}}
seeds: {seeds}
train: {{max_steps: 20, batch_size: 100, eval_every: 10}}
slurm: {{timeout_min: 5, cpus_per_task: 1, mem_gb: 1, additional: {{hold: true}}}}
"""


def _sbatch_array(n: int, hold: bool) -> str:
    cmd = ["sbatch", "--parsable", f"--array=0-{n - 1}", "--wrap", "true", "-o", "/dev/null", "-c", "1",
           "--mem=100M", "-t", "1", "-J", "flowbench-bench"] + (["--hold"] if hold else [])
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().split(";")[0]


def _records_for(tmp: Path, name: str, array: str, n: int) -> Path:
    """A suite of ``n`` tiny runs whose records say they were submitted as the tasks of ``array``."""
    path = tmp / f"{name}.yaml"
    path.write_text(GRID.format(seeds=list(range(n))).replace(", additional: {hold: true}", ""))
    for spec in load_suite(path).runs():
        record = RunRecord(tmp / "results", spec.suite, spec.run_id)
        record.create(spec.to_dict())
        (record.dir / "slurm.json").write_text(json.dumps({"job_id": f"{array}_{spec.seed}", "executor": "slurm",
                                                           "submitted": time.time() - 3600}))
    return path


def _time_status(path: Path, results: Path) -> tuple[float, float, dict[str, int]]:
    """(wall s of job_states over the suite's tasks, wall s of `flowbench status`, queries of status)."""
    ids = [json.loads(p.read_text())["job_id"] for p in (results / path.stem).glob("*/slurm.json")]
    start = time.perf_counter()
    states = job_states(ids)
    query = time.perf_counter() - start
    assert len(states) == len(ids)
    before = dict(SLURM_QUERIES)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()) as out:
        main(["status", str(path), "--results", str(results)])
    wall = time.perf_counter() - start
    calls = {k: SLURM_QUERIES[k] - before.get(k, 0) for k in SLURM_QUERIES}
    print("   " + out.getvalue().strip().splitlines()[-1].strip())
    return query, wall, calls


def status_at_scale(n: int = 1000, run_s: float = 120) -> None:
    """`status` over an n-task array that ended (its tasks run for ``run_s`` seconds, the rest is
    cancelled: the test cluster starts about one task a second), and over a held one."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        array = _sbatch_array(n, hold=False)
        start = time.time()
        while subprocess.run(["squeue", "-h", "-j", array], capture_output=True, text=True).stdout.strip():
            if time.time() - start > run_s:
                subprocess.run(["scancel", array], check=False)
            time.sleep(2)
        ended = sorted(job_states([f"{array}_{i}" for i in range(n)]).values())
        counts = {s: ended.count(s) for s in set(ended)}
        print(f"{n:,}-task array {array} of `true`: ended after {time.time() - start:.0f} s ({counts})")
        path = _records_for(tmp, "ended", array, n)
        query, wall, calls = _time_status(path, tmp / "results")
        print(f"job_states over {n:,} ended tasks         {query:8.2f} s")
        print(f"flowbench status, {n:,} runs (ended array) {wall:8.2f} s  ({calls})")
        held = _sbatch_array(n, hold=True)
        try:
            path = _records_for(tmp, "held", held, n)
            query, wall, calls = _time_status(path, tmp / "results")
            states = set(job_states([f"{held}_{i}" for i in range(n)]).values())
            print(f"job_states over {n:,} held tasks          {query:8.2f} s  (states {sorted(states)})")
            print(f"flowbench status, {n:,} runs (held array)  {wall:8.2f} s  ({calls})")
        finally:
            subprocess.run(["scancel", held], check=False)


def main_() -> None:
    status_at_scale()
    if "--status-only" in sys.argv:
        return
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
