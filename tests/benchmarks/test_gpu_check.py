"""benchmarks/gpu_check.py on the CPU (``--device cpu`` runs the very checks a GPU gets): one table,
a row per check, a failing check a FAIL row rather than a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=300)


def rows(stdout: str) -> dict[str, list[str]]:
    """The table's rows by check: [family, outcome, figures]."""
    cells = [[c.strip() for c in line.strip("|").split(" | ")] for line in stdout.splitlines()
             if line.startswith("| ") and not line.startswith("| check ")]
    return {c[0]: c[1:] for c in cells}


@pytest.mark.slow
def test_a_check_on_the_cpu_is_an_ok_row_of_the_table(tmp_path):
    out = tmp_path / "gpu.md"
    proc = gpu_check("--device", "cpu", "--only", "train-glow,bench-cnf-official", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("GPU check on CPU (cpu): torch ")
    assert "| check | family | outcome | figures |" in proc.stdout
    table = rows(proc.stdout)
    assert list(table) == ["train-glow", "bench-cnf-official"]
    family, outcome, figures = table["train-glow"]
    assert (family, outcome) == ("glow (image)", "ok")
    assert "s/step" in figures and "syncs/step 1 (0 scalar reads + 1 packed read)" in figures
    assert table["bench-cnf-official"][1:] == ["skip", "skipped: no --official-ffjord"]
    assert out.read_text() == proc.stdout.split("\n\n", 1)[1]  # the header with its time, and the table


def test_a_check_that_cannot_run_is_a_fail_row_not_a_crash():
    proc = gpu_check("--device", "nosuchdevice", "--only", "train-glow")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert rows(proc.stdout)["train-glow"][1] == "FAIL"
