"""The `flowbench` command: list | run | status | cancel | report | check | history | pin | audit | data.

Heavy libraries (torch, pandas) load inside the commands that need them, so `flowbench --help`
and `flowbench list` answer at once. Every user error is one line on stderr and exit code 2;
a sweep with failed runs exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from bench.errors import FlowbenchError
from bench.paths import inside

__all__ = ["build_parser", "check_device", "cmd_audit", "cmd_cancel", "cmd_check", "cmd_data", "cmd_history",
           "cmd_list", "cmd_pin", "cmd_report", "cmd_run", "cmd_status", "COMMANDS", "default_reports", "DEVICE",
           "entry", "figures_text", "main", "metric_header", "parse_seeds", "slurm_text", "SuiteContext"]

EXIT_OK, EXIT_RUNS_FAILED, EXIT_USAGE = 0, 1, 2
DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors (an unknown option, a missing argument) are one line and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=os.environ.get("FLOWBENCH_RESULTS", "results"), metavar="DIR",
                   help="results folder (default: ./results or $FLOWBENCH_RESULTS)")


def default_reports(results: str | os.PathLike) -> str:
    """Where reports of a results folder go unless --out/--report DIR says: ./reports for the default
    ./results (the two sit side by side), RESULTS/reports for any other results folder, so a run
    elsewhere never writes over the main report."""
    if os.path.abspath(results) == os.path.abspath("results"):
        return "reports"
    return os.path.join(results, "reports")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a suite file")
    p.add_argument("--only", metavar="K=V,...", help='filter the grid, e.g. "model=realnvp,dataset=moons,8gaussians" '
                   'or "variant=large" (model=, dataset=, variant=, seed=)')
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help='override a setting for every run, e.g. "train.max_steps=200" (repeatable)')
    p.add_argument("--seeds", metavar="S,S,...", help='replace the suite\'s seeds, e.g. "0,1,2"')
    _add_results(p)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flowbench", description="Benchmark and reproduction harness for normalizing flows.",
        epilog="Start with `flowbench run smoke`; `flowbench COMMAND --help` tells more.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list models, datasets or suites")
    p.add_argument("what", nargs="?", choices=("models", "datasets", "suites"), help="default: all three")
    p.add_argument("--suite", default=None, metavar="FILE",
                   help="also list the models and datasets a suite's plugins register (imports them)")

    p = sub.add_parser("run", help="run a suite's pending runs (completed ones are skipped)")
    _add_selection(p)
    p.add_argument("--force", action="store_true", help="re-run runs even if their record says completed")
    p.add_argument("--dry-run", action="store_true", help="print the grid and what would run, run nothing")
    p.add_argument("--executor", default="inline", choices=("inline", "local", "slurm"),
                   help="inline: this process (default); local: parallel processes; slurm: one job array")
    p.add_argument("--slurm", metavar="K=V,...", help='override the suite\'s SLURM resources, e.g. '
                   '"partition=gpu,timeout_min=120,gpus_per_node=1"')
    p.add_argument("--wait", action="store_true", help="with --executor slurm: wait, show finished runs, "
                   "exit 1 if any failed")
    p.add_argument("--retry", metavar="S,...", help="also re-run these statuses: diverged, oom (or all); failed, timeout, "
                   "preempted and lost runs are re-run anyway")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="with --executor local: runs at once (default: one per GPU, 1 without GPUs)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where real data files are ($FLOWBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress (a bar on a terminal, else a line per run)")
    p.add_argument("--tracker", dest="trackers", action="append", default=[], metavar="NAME",
                   help="also log every run to tensorboard, mlflow or wandb (repeatable; adds to the suite's "
                        "trackers:, never changes run ids)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the CNF models' dynamics: about 1.2x faster steps after about 30 s of "
                        "compiling per run (worth it for long runs; never changes run ids)")
    p.add_argument("--no-report", action="store_true", help="do not print the table after the sweep")
    p.add_argument("--report", nargs="?", const="", default=None, metavar="DIR",
                   help="also write the report (tables, figures, index.html) to DIR/SUITE (default DIR: ./reports "
                        "for ./results, else RESULTS/reports); without it a run writes no report")

    p = sub.add_parser("status", help="a table of runs and their states, from the records")
    p.add_argument("suite", nargs="?", help="a suite (shows its pending runs too); default: every suite found")
    p.add_argument("--only", metavar="K=V,...", help="filter the grid like `run --only`")
    p.add_argument("--retry", metavar="S,...", help="say what `run --retry S,...` would re-run")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", metavar="S,S,...")
    _add_results(p)

    p = sub.add_parser("cancel", help="cancel a suite's queued or running SLURM jobs")
    _add_selection(p)

    p = sub.add_parser("report", help="tables (vs published numbers), figures and index.html in reports/SUITE/")
    p.add_argument("suite", help="suite name or file (its records are read from the results folder)")
    p.add_argument("--metric", default=None, help="headline metric (default: the suite's)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="writes DIR/SUITE/ (default: ./reports for ./results, else RESULTS/reports)")
    p.add_argument("--no-figures", action="store_true", help="tables and index.html only")
    _add_results(p)

    p = sub.add_parser("check", help="compare the newest records with baselines/pinned/SUITE.csv (exit 1: regressed)")
    p.add_argument("suite", help="suite name or file")
    p.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                   help="override a tolerance, e.g. nll=0.1 (absolute) or nfe=0.2 / nfe=20%% (relative); repeatable")
    p.add_argument("--pinned", default=None, metavar="DIR", help="folder of pinned files (default: the package's "
                   "baselines/pinned for a shipped suite, else pinned/ beside the suite file)")
    p.add_argument("--metric", default=None, help="headline metric (default: the suite's)")
    p.add_argument("--alpha", default=None, metavar="A",
                   help="1 - confidence of the one-sided bounds used when the seeds differ (default: the suite's "
                        "or 0.05)")
    p.add_argument("--gate-time", action="store_true",
                   help="gate time even when the pinned numbers come from another device kind or host class")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="check the what-if runs `run --set KEY=VALUE` made, against the pinned numbers of the "
                        "variants they came from (repeatable, as given to run)")
    p.add_argument("--against", default=None, metavar="VARIANT",
                   help='the pinned variant the checked records are compared with ("" for the suite\'s own); '
                        "default: each record's own variant (with --set: the variant it came from)")
    p.add_argument("--history", default=None, metavar="FILE",
                   help="append the outcome to FILE (default: SUITE.history.jsonl beside the pinned file)")
    p.add_argument("--verbose", "-v", action="store_true", help="show every pinned quantity, not only what moved")
    _add_results(p)

    p = sub.add_parser("history", help="a quantity over the recorded checks (SUITE.history.jsonl beside the pinned "
                                       "file)")
    p.add_argument("suite", help="suite name or file")
    p.add_argument("--history", default=None, metavar="FILE", help="the history file (default: beside the pinned "
                   "file; see check --history)")
    p.add_argument("--pinned", default=None, metavar="DIR", help="folder of pinned files, as given to check")
    p.add_argument("--quantity", default=None, help="the quantity to show (default: the headline metrics)")
    p.add_argument("--last", type=int, default=10, metavar="N", help="the last N checks in the table (default 10)")
    p.add_argument("--out", default=None, metavar="DIR", help="writes DIR/SUITE/history.{md,csv,png,pdf} "
                   "(default: ./reports for ./results, else RESULTS/reports)")
    p.add_argument("--no-figures", action="store_true", help="the table only")
    _add_results(p)

    p = sub.add_parser("pin", help="write baselines/pinned/SUITE.csv from the newest completed records")
    p.add_argument("suite", help="suite name or file")
    p.add_argument("--pinned", default=None, metavar="DIR", help="folder of pinned files (default: the package's "
                   "baselines/pinned for a shipped suite, else pinned/ beside the suite file)")
    p.add_argument("--metric", default=None, help="headline metric (default: the suite's)")
    _add_results(p)

    p = sub.add_parser("audit", help="re-evaluate a suite's trained CNFs at solver tolerances 1e-8 ... 1e-1")
    p.add_argument("suite", help="suite name or file (its completed CNF runs are audited)")
    p.add_argument("--tolerances", default=None, metavar="T,T,...",
                   help="tolerances to audit (atol = rtol), default 1e-8,1e-7,...,1e-1")
    p.add_argument("--max-examples", type=int, default=2000, metavar="N",
                   help="test examples per evaluation (default 2000; 0: the whole test split)")
    p.add_argument("--out", default=None, metavar="DIR", help="writes DIR/SUITE/tolerance_audit.{csv,md} "
                   "(default: ./reports for ./results, else RESULTS/reports)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where real data files are ($FLOWBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_results(p)

    p = sub.add_parser("data", help="check the real data files: found / missing / corrupt per dataset")
    p.add_argument("action", choices=("verify",), help="verify: check every dataset's files (MD5s, headers)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where real data files are ($FLOWBENCH_DATA)")
    p.add_argument("--suite", default=None, metavar="FILE",
                   help="also verify the datasets a suite's plugins register (imports them)")
    return parser


# -- commands -----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from baselines.registry import describe_models
    from bench.data import describe_datasets
    from bench.spec import suite_names

    what = [args.what] if args.what else ["models", "datasets", "suites"]
    plugins: set[str] = set()
    if args.suite:  # its plugins register their models when the suite loads
        from bench.spec import load_suite

        before = set(describe_models()) | {f"dataset {d}" for d in describe_datasets()}
        suite = load_suite(args.suite)
        plugins = (set(describe_models()) | {f"dataset {d}" for d in describe_datasets()}) - before
        print(f"suite {suite.name} ({suite.path}): plugins {', '.join(suite.plugins) or 'none'}")
    if "models" in what:
        print("models:")
        _print_rows(("name", "description"),
                    [(name, desc + (" (plugin of this suite)" if name in plugins else ""))
                     for name, desc in describe_models().items()])
    if "datasets" in what:
        print("datasets:")
        for name, (kind, desc) in describe_datasets().items():
            print(f"  {name:<14} {kind:<12} {desc}" + (" (plugin of this suite)" if f"dataset {name}" in plugins else ""))
    if "suites" in what:
        print("suites:")
        for name in suite_names():
            print(f"  {name}")
    return EXIT_OK


def parse_seeds(text: str | None) -> list[int] | None:
    """``--seeds 0,1,2`` -> [0, 1, 2] (None when not given); ranges and repeats are checked with the suite's."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if not all(re.fullmatch(r"[-+]?[0-9]+", p) for p in parts):
        raise FlowbenchError(f"--seeds {text!r}: expected integers separated by commas, e.g. 0,1,2")
    return [int(p) for p in parts]


def _specs(args: argparse.Namespace):
    from bench.spec import load_suite, parse_only

    seeds = parse_seeds(args.seeds)
    suite = load_suite(args.suite)
    return suite, suite.runs(only=parse_only(args.only), seeds=seeds, sets=args.sets)


def _check_writable(folder: str | os.PathLike, option: str = "--results", what: str = "results folder") -> None:
    """Make ``folder`` (if need be) and write a probe file in it, before any work: a folder that
    cannot be written is one line naming it and the option that chooses another."""
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise FlowbenchError(f"{what} {path} is not writable ({err.strerror}); "
                             f"choose another with {option} DIR") from None


def check_device(device: str, here: bool) -> None:
    """``--device``: auto, cpu, cuda or cuda:N; with ``here`` (runs on this machine) a CUDA device
    must exist, checked before any record is written."""
    if not DEVICE.fullmatch(device):
        raise FlowbenchError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if here and device.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        if not count:
            raise FlowbenchError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
        if index >= count:
            raise FlowbenchError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0 to "
                                 f"cuda:{count - 1}")


def cmd_run(args: argparse.Namespace) -> int:
    from bench.launch import run_inline
    from bench.retry import pending
    from bench.trackers import add_trackers

    check_device(args.device, here=args.executor != "slurm")  # SLURM's nodes have their own devices
    suite, specs = _specs(args)
    specs = add_trackers(specs, args.trackers)  # --tracker on top of the suite's; their packages installed
    if args.compile:
        import dataclasses

        specs = [dataclasses.replace(s, compile=True) for s in specs]
    inside(args.results, suite.name)
    from bench.retry import parse_retry
    from bench.store import RunRecord

    retry = parse_retry(args.retry)
    if args.jobs is not None and args.executor != "local":
        raise FlowbenchError(f"--jobs {args.jobs}: only the local executor runs several runs at once here; "
                             "use --executor local (SLURM's array_parallelism bounds an array)")
    todo, done = pending(specs, args.results, args.force, retry)
    if args.dry_run:
        print(f"suite {suite.name} ({suite.path}): {len(specs)} runs, {len(todo)} to run, {done} already completed")
        for spec in specs:
            mark = "run " if spec in todo else "done" if RunRecord(args.results, spec.suite, spec.run_id).status \
                == "completed" else "left"  # left: the retry policy leaves it alone (diverged)
            print(f"  {mark} {spec.run_id}  {spec.label:<40} max_steps={spec.train['max_steps']} metric={spec.metric}")
        return EXIT_OK
    _check_writable(args.results)
    report_dir = None if args.report is None else (args.report or default_reports(args.results))
    if report_dir is not None:
        _check_writable(report_dir, "--report", "report folder")
    data_root = args.data_root or suite.data_root
    print(f"suite {suite.name}: {len(specs)} runs, {len(todo)} to run, {done} already completed "
          f"-> {os.path.join(args.results, suite.name)}", flush=True)
    if args.executor != "inline":
        return _run_submitit(args, suite, specs, data_root, retry, report_dir)
    summary = run_inline(specs, args.results, data_root=data_root, device=args.device, force=args.force,
                         progress=not args.quiet, retry=retry)
    print(f"suite {suite.name}: {summary.line()}")
    if report_dir is not None:  # asked for: the whole report, figures too (never a thinner one over a fuller one)
        _print_report(str(suite.path), args.results, None, report_dir, option="--report")
    elif not args.no_report:
        _print_table(str(suite.path), args.results)
        print(f"(no report written: `flowbench report {args.suite}` or `run --report` writes one to "
              f"{os.path.join(default_reports(args.results), suite.name)})")
    for label, message in summary.errors:
        print(f"  failed: {label}: {message}", file=sys.stderr)
    return EXIT_RUNS_FAILED if summary.failed else EXIT_OK


def _run_submitit(args: argparse.Namespace, suite, specs, data_root: str | None, retry: frozenset[str],
                  report_dir: str | None = None) -> int:
    from bench.launch import run_local, submit, wait
    from bench.slurm import parse_slurm_overrides, slurm_parameters

    options = parse_slurm_overrides(args.slurm)  # over each run's own (suite < override < variant)
    slurm_parameters({**suite.slurm, **options}, f"{suite.path}: slurm")  # validate before anything is submitted
    if args.executor == "local":
        done = run_local(specs, args.results, {**suite.slurm, **options}, jobs=args.jobs, data_root=data_root,
                         device=args.device, force=args.force, retry=retry, progress=not args.quiet)
        how = f" ({done.arrays[0][2]})" if done.arrays else ""
        return _finish_sweep(args, suite, f"local processes{how}: {done.line()}", done, report_dir)
    summary, submitted, jobs = submit(specs, args.results, args.executor, options, data_root=data_root,
                                      device=args.device, force=args.force, retry=retry)
    if not jobs:
        print(f"suite {suite.name}: nothing submitted ({summary.line()})")
        return EXIT_OK
    arrays = summary.arrays
    where = (f"{args.executor} job {arrays[0][0]}" if len(arrays) == 1 else f"{len(arrays)} arrays: " + ", ".join(
        f"{n} runs on {what} (job {array})" for array, n, what in arrays))
    print(f"suite {suite.name}: submitted {len(jobs)} runs as {where} "
          f"(logs in {os.path.join(args.results, suite.name, '_slurm')}); {summary.line()}", flush=True)
    if not args.wait:
        print(f"`flowbench status {args.suite}` follows them; `flowbench cancel {args.suite}` stops them")
        if report_dir is not None:
            print(f"(no report written: the runs are not finished; `flowbench report {args.suite} --results "
                  f"{args.results} --out {report_dir}` writes it when they are)")
        return EXIT_OK
    done = wait(submitted, args.results, jobs, progress=not args.quiet)
    return _finish_sweep(args, suite, done.line(), done, report_dir)


def _finish_sweep(args: argparse.Namespace, suite, line: str, done, report_dir: str | None) -> int:
    """After the runs of a local or waited-for SLURM sweep: its line, the report when asked, one line a
    failed run, and the exit status."""
    print(f"suite {suite.name}: {line}")
    if report_dir is not None:
        _print_report(str(suite.path), args.results, None, report_dir, option="--report")
    for label, message in done.errors:
        print(f"  failed: {label}: {message}", file=sys.stderr)
    return EXIT_RUNS_FAILED if done.failed else EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    from bench.launch import cancel

    suite, specs = _specs(args)
    ids = cancel(specs, args.results)
    print(f"suite {suite.name}: cancelled {len(ids)} job(s)" + (f": {', '.join(ids)}" if ids else ""))
    return EXIT_OK


def _status_of_suite(args: argparse.Namespace) -> int:
    """One line per run: the record's status joined with SLURM's view of its job, and counts."""
    from bench.launch import reconcile, slurm_view
    from bench.retry import decide, parse_retry, run_state
    from bench.snapshot import code_mismatch
    from bench.metrics import headline_of
    from bench.store import RunRecord

    suite, specs = _specs(args)
    retry = parse_retry(args.retry)
    view = slurm_view(specs, args.results)
    again: dict[str, int] = {}  # what `run` would take up, by the run's state
    mismatched = []
    metrics = list(dict.fromkeys(spec.metric for spec in specs))  # a column per headline metric (nll, bpd, mse)
    rows, logs = [], []
    for spec in specs:
        info = view.get(spec.run_id, {})
        record = RunRecord(args.results, spec.suite, spec.run_id)
        result = reconcile(spec, args.results, info) or record.read_result() or {}
        status = record.shown_status(result.get("status"))  # "stale": running, but its process is gone
        _, value = headline_of(spec.metric, result.get("test") or {})
        shown = [f"{value:.4f}" if isinstance(value, float) and m == spec.metric else "" for m in metrics]
        state, _ = run_state(record)
        go, why = decide(state, result, retry, slurm=info)
        if go:
            key = "lost" if why.startswith("lost") else "not run yet" if state == "pending" else state
            again[key] = again.get(key, 0) + 1
        mismatch = code_mismatch(result)
        if mismatch:
            mismatched.append(f"  code mismatch: {spec.label} [{spec.run_id}] {mismatch}")
        rows.append((spec.run_id, spec.label, status, slurm_text(info.get("state", ""), status),
                     result.get("steps", ""), *shown, ("run: " if go else "") + why if why != status else "",
                     (result.get("error") or "")[:70]))
        if (status not in ("completed", "pending", "running") or why.startswith("lost")) and info.get("stderr"):
            logs.append(f"  log of {spec.label}: {info['stderr']}")
    print(f"suite {suite.name}: {len(rows)} runs")
    _print_rows(("run_id", "run", "status", "slurm", "steps", *(metric_header(m) for m in metrics), "next `run`",
                 "error"), rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[2]] = counts.get(row[2], 0) + 1
    print("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    print(f"  `flowbench run{' --retry ' + args.retry if args.retry else ''}` would take up {sum(again.values())}"
          + (": " + ", ".join(f"{n} {s}" for s, n in sorted(again.items())) if again else ""))
    for line in mismatched + logs:
        print(line)
    return EXIT_OK


def metric_header(metric: str) -> str:
    """A status column's header: the test metric with its unit, e.g. "test nll (nats)", "test mse"."""
    from bench.metrics import METRICS

    unit = METRICS[metric].unit if metric in METRICS else ""
    return f"test {metric}" + (f" ({unit})" if unit and unit.lower() != metric.lower() else "")


def slurm_text(state: str, status: str) -> str:
    """SLURM's state of a run's job beside the run's own when they disagree: a job that ended
    COMPLETED around a failed run shows "COMPLETED (run: failed)", never a bare COMPLETED."""
    from bench.slurm import ACTIVE_STATES

    if not state or state in ACTIVE_STATES or (state == "COMPLETED") == (status == "completed"):
        return state
    return f"{state} (run: {status})"


def cmd_status(args: argparse.Namespace) -> int:
    from bench.store import RunRecord, scan

    if args.suite:
        return _status_of_suite(args)
    df = scan(args.results)
    _report_skipped(df)
    if df.empty:
        print(f"no run records under {args.results}")
        return EXIT_OK
    df["status"] = [RunRecord.at(p).shown_status(s) if s == "running" else s for s, p in zip(df["status"], df["path"])]
    for suite_name, group in df.groupby("suite"):
        counts = group["status"].value_counts().to_dict()
        print(f"{suite_name}: {len(group)} runs: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    return EXIT_OK


def _print_rows(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print("  " + "  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def _report_skipped(df) -> None:
    for path, reason in df.attrs.get("skipped", []):
        print(f"flowbench: warning: skipped unreadable record {path}: {reason}", file=sys.stderr)


@dataclass
class SuiteContext:
    """What report, pin, check, history and audit take from a suite file (when it is found)."""

    name: str
    path: str = ""  # the suite file ("" when only records were found)
    specs: list = field(default_factory=list)  # its grid as RunSpecs (empty without the file)
    check: dict = field(default_factory=dict)  # its check: mapping
    differences: list[str] = field(default_factory=list)

    @property
    def expected(self) -> list[tuple[str, str, str, int]] | None:
        """The grid as (model, variant, dataset, seed); None without the suite file."""
        return [(s.model, s.variant, s.dataset, s.seed) for s in self.specs] if self.path else None

    @property
    def labels(self) -> dict[str, dict]:
        """run_id -> the suite's current variant label, sweep values and published setting."""
        return {s.run_id: {"variant": s.variant, "sweep": s.sweep, "setting": s.setting,
                           "published_model": s.published_model} for s in self.specs}


def _suite_context(name: str) -> SuiteContext:
    """The suite's grid, check: mapping and differences; only its name when the suite file cannot be
    found (the records alone are reported)."""
    from bench.spec import check_suite_name, load_suite

    try:
        suite = load_suite(name)
    except FlowbenchError:
        if os.path.sep in name or name.endswith((".yaml", ".yml")):
            raise
        return SuiteContext(check_suite_name(name, "suite argument"))
    return SuiteContext(suite.name, str(suite.path), suite.runs(check_models=False), suite.check, suite.differences)


def _scan_suite(suite: str, results: str):
    from bench.store import scan

    df = scan(results, suite)
    _report_skipped(df)
    if df.empty:
        raise FlowbenchError(f'no run records for suite "{suite}" under {results}; run `flowbench run {suite}` first')
    return df


def _print_tables(name: str, tables, records, differences: Sequence[str]) -> None:
    """The headline tables as Markdown, then what is missing and the suite's declared differences."""
    from bench.report import differences_text, headline_tables, missing_text, to_markdown

    print("\n".join(to_markdown(t, f"## {name}: {t.title}") for t in headline_tables(tables)), end="")
    for text in (missing_text(records), differences_text(differences)):
        if text:
            print(f"\n{text}", end="")


def _print_table(suite: str, results: str, metric: str | None = None) -> None:
    """What `run` prints after a sweep: the headline tables from the records, nothing written."""
    from bench.report import build_tables, load_published, prepare

    ctx = _suite_context(suite)
    records = prepare(_scan_suite(ctx.name, results), ctx.expected, metric, ctx.labels)
    _print_tables(ctx.name, build_tables(records, load_published()), records, ctx.differences)


def figures_text(count: int, asked: bool, records=None) -> str:
    """How many figures a report holds, or why it holds none."""
    if not asked:
        return "no figures (--no-figures)"
    if count:
        return f"{count} figures"
    if records is not None and records.completed.empty:
        return "no figures: no completed run to draw"
    return "no figures: the records hold nothing to draw (no test metric or training history)"


def _print_report(suite: str, results: str, metric: str | None, out: str, figures: bool = True,
                  option: str = "--out") -> None:
    """Write the report to OUT/SUITE/ and print its headline tables and where it went."""
    from bench.plots import start_workers
    from bench.report import write_report

    pool = start_workers() if figures else None  # they load matplotlib and seaborn while the records are read
    try:
        ctx = _suite_context(suite)
        _check_writable(out, option, "report folder")
        inside(out, ctx.name)
        df = _scan_suite(ctx.name, results)
        report = write_report(df, ctx.name, out, metric, expected=ctx.expected, figures=figures, figure_pool=pool,
                              differences=ctx.differences, labels=ctx.labels)
    finally:
        if pool is not None:
            pool.terminate()  # every figure is written by now (or the report failed): nothing left to wait for
            pool.join()
    _print_tables(ctx.name, report.tables, report.records, ctx.differences)
    print(f"(report: {report.files['markdown']}, {report.files['html']}; "
          f"{figures_text(len(report.figures), figures, report.records)})")


def cmd_report(args: argparse.Namespace) -> int:
    _print_report(args.suite, args.results, args.metric, args.out or default_reports(args.results),
                  figures=not args.no_figures)
    return EXIT_OK


def _what_if_variants(ctx: SuiteContext, sets: Sequence[str], against: str | None) -> dict[str, str] | None:
    """current variant -> pinned variant for ``check --set/--against`` (None: each record's own)."""
    if not sets:
        return None if against is None else {v: against for v in dict.fromkeys(s.variant for s in ctx.specs)} or None
    from bench.spec import load_suite

    if not ctx.path:
        raise FlowbenchError(f'check --set: suite "{ctx.name}" is known only by its records; pass its suite file')
    suite = load_suite(ctx.path)
    mapping: dict[str, str] = {}
    for what_if, base in zip(suite.runs(sets=sets, check_models=False), suite.runs(check_models=False)):
        mapping[what_if.variant] = base.variant if against is None else against
    return mapping


def cmd_check(args: argparse.Namespace) -> int:
    """`flowbench check SUITE`: judge the newest records against the pinned numbers, print, and append
    the outcome to the check history beside the pinned file."""
    from bench import history
    from bench.check import DEFAULT_ALPHA, check, format_result, parse_alpha, parse_tolerances, pinned_folder
    from bench.check import suite_alpha, suite_tolerances
    from bench.store import scan

    ctx = _suite_context(args.suite)
    where = f"{ctx.path}: check" if ctx.path else "suite check:"
    tolerances = {**suite_tolerances(ctx.check, where), **parse_tolerances(args.tolerance)}
    alpha = parse_alpha(args.alpha) if args.alpha is not None else (suite_alpha(ctx.check, where) or DEFAULT_ALPHA)
    against = _what_if_variants(ctx, args.sets, args.against)
    folder = pinned_folder(ctx.name, ctx.path or None, args.pinned)
    log = history.history_path(folder, ctx.name, args.history)
    df = scan(args.results, ctx.name)  # no records at all: check reports every pinned pair missing (exit 2)
    _report_skipped(df)
    result = check(df, ctx.name, tolerances, folder, args.metric, alpha, ctx.labels, args.gate_time, against)
    pinned = folder / f"{ctx.name}.csv"
    print(f"suite {ctx.name}: checking against {pinned}")
    print(format_result(result, args.verbose), end="")
    try:
        print(f"(history: {history.append(log, ctx.name, result, pinned, ctx.path or None)})")
    except FlowbenchError as err:  # a read-only folder: the check itself still counts
        print(f"flowbench: warning: {err}", file=sys.stderr)
    return result.exit_code


def cmd_history(args: argparse.Namespace) -> int:
    """`flowbench history SUITE`: a quantity over the recorded checks, as a table and a figure."""
    from bench import history

    if args.last < 1:
        raise FlowbenchError(f"--last {args.last}: expected a positive number of checks")
    ctx = _suite_context(args.suite)
    args.out = args.out or default_reports(args.results)
    _check_writable(args.out, "--out", "history folder")
    out = str(inside(args.out, ctx.name))
    from bench.check import pinned_folder

    try:
        folder = pinned_folder(ctx.name, ctx.path or None, args.pinned)
    except FlowbenchError:  # only records: the history must then be named (or it is the legacy one)
        if not args.history:
            raise
        folder = Path(args.history).parent
    legacy = Path(args.results) / ctx.name / history.LEGACY_FILE
    frame = history.read(history.history_path(folder, ctx.name, args.history), ctx.name,
                         legacy if legacy.is_file() else None)
    wide = history.table(frame, args.quantity, args.last)
    text = history.to_markdown(wide)
    print(f"suite {ctx.name}: {frame['entry'].nunique()} checks recorded; current means per check, then the pinned "
          "mean and its tolerance band")
    print(text, end="")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "history.md"), "w") as f:
        f.write(f"# {ctx.name}: check history\n\n{text}")
    wide.to_csv(os.path.join(out, "history.csv"))
    written = ""
    if not args.no_figures:
        from bench.plots import save

        written = f", {save(history.figure(frame, args.quantity), Path(out), 'history')}"
    print(f"(history: {os.path.join(out, 'history.md')}, {os.path.join(out, 'history.csv')}{written})")
    return EXIT_OK


def cmd_pin(args: argparse.Namespace) -> int:
    from bench.check import pin, pinned_folder

    ctx = _suite_context(args.suite)
    folder = pinned_folder(ctx.name, ctx.path or None, args.pinned)
    _check_writable(folder, "--pinned", "pinned folder")
    inside(folder, f"{ctx.name}.csv")
    df = _scan_suite(ctx.name, args.results)
    path, table, records = pin(df, ctx.name, folder, args.metric, ctx.labels)
    seeds = " ".join(sorted(set(" ".join(table["seeds"]).split()), key=int))
    print(f"pinned {len(table)} quantities of {table[['model', 'variant', 'dataset']].drop_duplicates().shape[0]} "
          f"(model, variant, dataset) rows (seeds {seeds}) -> {path}")
    if records.missing or not records.failed.empty:
        print(f"  note: {len(records.missing)} missing and {len(records.failed)} failed runs are not pinned")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """`flowbench audit SUITE`: the tolerance audit of every completed CNF run, printed and written."""
    from bench.audit import DEFAULT_TOLERANCES, audit_suite, parse_tolerances, to_markdown, write_audit

    if args.max_examples < 0:
        raise FlowbenchError(f"--max-examples {args.max_examples}: expected a positive number of test examples, "
                             "or 0 for the whole test split")
    ctx = _suite_context(args.suite)
    name = ctx.name
    tolerances = parse_tolerances(args.tolerances) if args.tolerances else DEFAULT_TOLERANCES
    args.out = args.out or default_reports(args.results)
    _check_writable(args.out, "--out", "audit folder")
    inside(args.out, name)
    records = _scan_suite(name, args.results)
    out, skipped = audit_suite(records, name, tolerances, args.max_examples or None, args.data_root,
                               progress=not args.quiet and sys.stderr.isatty(), labels=ctx.labels)
    if out.empty:
        raise FlowbenchError(f'suite "{name}": no completed CNF run with model.pt to audit'
                             + (f" (skipped: {'; '.join(f'{a} ({b})' for a, b in skipped)})" if skipped else ""))
    print(to_markdown(out, skipped), end="")
    csv, md = write_audit(out, skipped, args.out, name)
    print(f"(audit: {csv}, {md})")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """`flowbench data verify`: one line per dataset, from its own registration, and how to get what is
    missing; exit 1 when a file is corrupt or a dataset's check failed."""
    from bench.data import resolve_root
    from bench.data.verify import verify_all

    if getattr(args, "suite", None):
        from bench.spec import import_suite_plugins

        import_suite_plugins(args.suite)
    root = resolve_root(args.data_root)
    print(f"data root: {root if root else '(none: pass --data-root DIR or set FLOWBENCH_DATA)'}")
    statuses = verify_all(root)
    _print_rows(("dataset", "status", "where", "detail"), [(s.name, s.state, s.where, s.detail) for s in statuses])
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    print("  " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    how: dict[str, list[str]] = {}  # each loader's own how-to-get-it text -> the datasets it covers
    for s in statuses:
        if s.how and s.state in ("missing", "corrupt"):
            how.setdefault(s.how, []).append(s.name)
    if how:
        print("  to get missing or corrupt files (more in docs/datasets.md):")
        for text, names in how.items():
            print(f"    {', '.join(names)}: {text}")
    return EXIT_RUNS_FAILED if counts.get("corrupt") or counts.get("error") else EXIT_OK


COMMANDS = {"list": cmd_list, "run": cmd_run, "status": cmd_status, "report": cmd_report, "cancel": cmd_cancel,
            "check": cmd_check, "history": cmd_history, "pin": cmd_pin, "audit": cmd_audit, "data": cmd_data}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return EXIT_USAGE
    logging.basicConfig(format="flowbench: %(levelname)s: %(message)s", level=logging.WARNING)
    try:
        return COMMANDS[args.command](args)
    except FlowbenchError as err:
        print(f"flowbench: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. `flowbench run suite --dry-run | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("flowbench: interrupted; finished records are kept, unfinished runs resume on the next `run`",
              file=sys.stderr)
        return 130


def entry() -> None:
    """The ``flowbench`` command: ``main``, then exit without the interpreter's final sweep over every
    object left (a frame of 10,000 records costs a third of a second to collect, for nothing)."""
    import gc

    code = main()
    gc.freeze()
    raise SystemExit(code)
