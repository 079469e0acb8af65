"""Every output lands where the README says: a new user's sequence (run, report, an own suite with a
plugin model, pin, check, a run with --results elsewhere) in a fresh working directory creates exactly
the files listed here, writes nothing into the package and no report unless one is asked for; and
progress piped to a file is plain lines, one per finished run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.check import PINNED_DIR
from bench.cli import main
from bench.spec import SUITES_DIR

__all__: list[str] = []

PLUGIN = '''
from baselines import register
from baselines.constraints import Count
from baselines.registry import get_builder


@register("fb_outputs_flow", "a plugin flow of the outputs test (a two-layer RealNVP)")
def build(data, hidden: Count = 8):
    return get_builder("realnvp")(data, n_layers=2, hidden=hidden)
'''

SUITE = """
name: mine
plugins: [fb_outputs_plugin]
datasets: {moons: {n_train: 300, n_val: 100, n_test: 100}}
models: {realnvp: {n_layers: 2, hidden: 8}, fb_outputs_flow: {hidden: 8}}
seeds: [0]
train: {max_steps: 4, batch_size: 50, eval_every: 2}
"""

RUN_FILES = {"spec.json", "metrics.jsonl", "result.json", "model.pt"}
REPORT_FILES = {"report.md", "table.md", "tables.tex", "summary.csv", "headline.csv", "runs.csv", "summary.parquet",
                "records.parquet", "index.html"}


def _tree(root: Path) -> set[str]:
    """Every file under ``root`` (relative, run ids replaced by RUN)."""
    out = set()
    for path in root.rglob("*"):
        if path.is_file():
            rel = path.relative_to(root).as_posix()
            out.add(re.sub(r"/[0-9a-f]{12}/", "/RUN/", rel))
    return out


def _snapshot(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty working directory holding only the user's suite and plugin module, with no
    FLOWBENCH_* folders set."""
    for var in ("FLOWBENCH_RESULTS", "FLOWBENCH_SUITES"):
        monkeypatch.delenv(var, raising=False)
    work = tmp_path / "work"
    (work / "mine").mkdir(parents=True)
    (work / "mine" / "mine.yaml").write_text(textwrap.dedent(SUITE))
    (work / "fb_outputs_plugin.py").write_text(PLUGIN)
    monkeypatch.chdir(work)
    return work


@pytest.mark.slow
def test_a_new_users_outputs_go_where_the_readme_says(workdir, capsys):
    package = {PINNED_DIR: _snapshot(PINNED_DIR), SUITES_DIR: _snapshot(SUITES_DIR)}
    repo_reports = _snapshot(SUITES_DIR.parent / "reports")
    start = _tree(workdir)

    # the plugin's model is listed with the suite that brings it
    assert main(["list", "models", "--suite", "mine/mine.yaml"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^  fb_outputs_flow +a plugin flow .*\(plugin of this suite\)$", listing, re.M), listing
    rows = [line for line in listing.splitlines() if line.startswith("  ") and not line.startswith("  name")]
    cells = [re.split(r" {2,}", line.strip(), maxsplit=1) for line in rows]
    described = [(line, cell) for line, cell in zip(rows, cells) if len(cell) == 2]  # (a plugin may have no text)
    column = {line.index(desc, 2 + len(name)) for line, (name, desc) in described}
    assert len(column) == 1, listing  # every description starts in one column, after the longest name
    assert max(len(cell[0]) for cell in cells) + 2 <= column.pop() - 2

    # 1. run, stderr piped to a file: a plain line per finished run; the table on stdout; no report
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(workdir.parent / "stderr.txt", "w") as err:
        proc = subprocess.run([sys.executable, "-m", "bench", "run", "mine/mine.yaml"], stdout=subprocess.PIPE,
                              stderr=err, text=True, env=env)
    log = (workdir.parent / "stderr.txt").read_text()
    assert proc.returncode == 0, log
    assert "\r" not in log and "\x1b" not in log, repr(log)
    lines = log.splitlines()
    assert len(lines) == 2 and lines[0].startswith("[1/2] ok ") and lines[1].startswith("[2/2] ok "), log
    assert {"realnvp/moons/seed0", "fb_outputs_flow/moons/seed0"} == {line.split()[2] for line in lines}
    assert "| fb_outputs_flow |" in proc.stdout and "(no report written" in proc.stdout
    assert os.path.join("reports", "mine") in proc.stdout
    assert not (workdir / "reports").exists()

    # 2. run again: nothing runs, nothing is written (no report rewritten behind the user's back)
    before = _tree(workdir)
    assert main(["run", "mine/mine.yaml", "--quiet"]) == 0
    assert "2 already completed" in capsys.readouterr().out
    assert _tree(workdir) == before

    # 3. report: ./reports/SUITE for the default results folder
    assert main(["report", "mine/mine.yaml", "--no-figures"]) == 0
    assert "no figures (--no-figures)" in capsys.readouterr().out

    # 4. pin and check: the pinned file lives beside the suite file, and both name it
    assert main(["pin", "mine/mine.yaml"]) == 0
    assert os.path.join("mine", "pinned", "mine.csv") in capsys.readouterr().out
    assert main(["check", "mine/mine.yaml"]) == 0
    out = capsys.readouterr().out
    assert f"checking against {os.path.join('mine', 'pinned', 'mine.csv')}" in out and "check: OK" in out

    # 5. a run with --results elsewhere: its records there, and its report (asked for) beside them
    assert main(["run", "mine/mine.yaml", "--results", "elsewhere/res", "--quiet", "--no-report",
                 "--only", "model=realnvp"]) == 0
    assert main(["report", "mine/mine.yaml", "--results", "elsewhere/res", "--no-figures"]) == 0
    assert os.path.join("elsewhere", "res", "reports", "mine", "report.md") in capsys.readouterr().out

    created = _tree(workdir) - start
    expected = ({f"results/mine/RUN/{f}" for f in RUN_FILES} | {"results/mine/.scan-cache.json"}
                | {f"reports/mine/{f}" for f in REPORT_FILES} | {"mine/pinned/mine.csv", "mine/pinned/mine.history.jsonl"}
                | {f"elsewhere/res/mine/RUN/{f}" for f in RUN_FILES} | {"elsewhere/res/mine/.scan-cache.json"}
                | {f"elsewhere/res/reports/mine/{f}" for f in REPORT_FILES})
    assert created == expected, (sorted(created - expected), sorted(expected - created))
    assert len(list((workdir / "results" / "mine").glob("*/spec.json"))) == 2  # both runs' records
    assert {k: _snapshot(k) for k in package} == package  # nothing written into the package
    assert _snapshot(SUITES_DIR.parent / "reports") == repo_reports


def test_a_report_never_replaces_a_fuller_one(workdir, capsys):
    """A report without figures refuses to replace one with figures (naming the folder and what to do);
    a run's report is written only with --report, to the folder tied to its results."""
    assert main(["run", "mine/mine.yaml", "--results", "res", "--quiet", "--no-report"]) == 0
    figures = workdir / "res" / "reports" / "mine" / "figures"
    figures.mkdir(parents=True)
    (figures / "bars.png").write_bytes(b"png")  # what an earlier report with figures left
    html = workdir / "res" / "reports" / "mine" / "index.html"
    html.write_text("the fuller report")
    capsys.readouterr()
    assert main(["report", "mine/mine.yaml", "--results", "res", "--no-figures"]) == 2
    err = capsys.readouterr().err
    assert f"{figures.parent.relative_to(workdir)} holds a report with figures" in err and "drop --no-figures" in err
    assert html.read_text() == "the fuller report"
    assert main(["report", "mine/mine.yaml", "--results", "res", "--no-figures", "--out", "thin"]) == 0
    assert (workdir / "thin" / "mine" / "index.html").exists() and not (workdir / "reports").exists()


def test_pins_of_a_suite_without_its_file_need_a_folder(workdir, capsys):
    """Records alone (no suite file found): pin names the two ways to say where the pins go."""
    assert main(["run", "mine/mine.yaml", "--results", "res", "--quiet", "--no-report"]) == 0
    capsys.readouterr()
    assert main(["pin", "mine", "--results", "res"]) == 2
    err = capsys.readouterr().err
    assert 'suite "mine": no suite file found' in err and "--pinned DIR" in err
    assert main(["pin", "mine", "--results", "res", "--pinned", "pins"]) == 0
    assert f"-> {os.path.join('pins', 'mine.csv')}" in capsys.readouterr().out
