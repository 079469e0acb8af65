"""The `flowbench` command: list | run | status | cancel | report | check | pin | audit | data.

Heavy libraries (torch, pandas) load inside the commands that need them, so `flowbench --help`
and `flowbench list` answer at once. Every user error is one line on stderr and exit code 2;
a sweep with failed runs exits 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from bench.errors import FlowbenchError

EXIT_OK, EXIT_RUNS_FAILED, EXIT_USAGE = 0, 1, 2


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", default=os.environ.get("FLOWBENCH_RESULTS", "results"), metavar="DIR",
                   help="results folder (default: ./results or $FLOWBENCH_RESULTS)")


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("suite", help="suite name (suites/NAME.yaml) or path to a suite file")
    p.add_argument("--only", metavar="K=V,...", help='filter the grid, e.g. "model=realnvp,dataset=moons,8gaussians"')
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help='override a setting for every run, e.g. "train.max_steps=200" (repeatable)')
    p.add_argument("--seeds", metavar="S,S,...", help='replace the suite\'s seeds, e.g. "0,1,2"')
    _add_results(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flowbench", description="Benchmark and reproduction harness for normalizing flows.",
        epilog="Start with `flowbench run smoke`; `flowbench COMMAND --help` tells more.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("list", help="list models, datasets or suites")
    p.add_argument("what", nargs="?", choices=("models", "datasets", "suites"), help="default: all three")

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
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where real data files are ($FLOWBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-report", action="store_true", help="do not print the table after the sweep")

    p = sub.add_parser("status", help="a table of runs and their states, from the records")
    p.add_argument("suite", nargs="?", help="a suite (shows its pending runs too); default: every suite found")
    p.add_argument("--only", metavar="K=V,...", help="filter the grid like `run --only`")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--seeds", metavar="S,S,...")
    _add_results(p)

    p = sub.add_parser("cancel", help="cancel a suite's queued or running SLURM jobs")
    _add_selection(p)

    p = sub.add_parser("report", help="tables (vs published numbers), figures and index.html in reports/SUITE/")
    p.add_argument("suite", help="suite name or file (its records are read from the results folder)")
    p.add_argument("--metric", default=None, help="headline metric (default: the suite's)")
    p.add_argument("--out", default="reports", metavar="DIR", help="where to write the report (default: reports)")
    p.add_argument("--no-figures", action="store_true", help="tables and index.html only")
    _add_results(p)

    p = sub.add_parser("check", help="compare the newest records with baselines/pinned/SUITE.csv (exit 1: regressed)")
    p.add_argument("suite", help="suite name or file")
    p.add_argument("--tolerance", action="append", default=[], metavar="METRIC=VALUE",
                   help="override a tolerance, e.g. nll=0.1 (absolute) or nfe=0.2 / nfe=20%% (relative); repeatable")
    p.add_argument("--pinned", default=None, metavar="DIR", help="folder of pinned files (default: baselines/pinned)")
    p.add_argument("--metric", default=None, help="headline metric (default: the suite's)")
    p.add_argument("--verbose", "-v", action="store_true", help="show every pinned quantity, not only what moved")
    _add_results(p)

    p = sub.add_parser("pin", help="write baselines/pinned/SUITE.csv from the newest completed records")
    p.add_argument("suite", help="suite name or file")
    p.add_argument("--pinned", default=None, metavar="DIR", help="folder of pinned files (default: baselines/pinned)")
    p.add_argument("--metric", default=None, help="headline metric (default: the suite's)")
    _add_results(p)

    p = sub.add_parser("audit", help="re-evaluate a suite's trained CNFs at solver tolerances 1e-8 ... 1e-1")
    p.add_argument("suite", help="suite name or file (its completed CNF runs are audited)")
    p.add_argument("--tolerances", default=None, metavar="T,T,...",
                   help="tolerances to audit (atol = rtol), default 1e-8,1e-7,...,1e-1")
    p.add_argument("--max-examples", type=int, default=2000, metavar="N",
                   help="test examples per evaluation (default 2000; 0: the whole test split)")
    p.add_argument("--out", default="reports", metavar="DIR", help="writes DIR/SUITE/tolerance_audit.{csv,md}")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where real data files are ($FLOWBENCH_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_results(p)

    p = sub.add_parser("data", help="check the real data files: found / missing / corrupt per dataset")
    p.add_argument("action", choices=("verify",), help="verify: check every dataset's files (MD5s, headers)")
    p.add_argument("--data-root", default=None, metavar="DIR", help="where real data files are ($FLOWBENCH_DATA)")
    return parser


# -- commands -----------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace) -> int:
    from baselines.registry import describe_models
    from bench.data import REGISTRY
    from bench.spec import suite_names

    what = [args.what] if args.what else ["models", "datasets", "suites"]
    if "models" in what:
        print("models:")
        for name, desc in describe_models().items():
            print(f"  {name:<14} {desc}")
    if "datasets" in what:
        print("datasets:")
        for name, entry in sorted(REGISTRY.items()):
            print(f"  {name:<14} {entry.kind:<12} {entry.description}")
    if "suites" in what:
        print("suites:")
        for name in suite_names():
            print(f"  {name}")
    return EXIT_OK


def _specs(args: argparse.Namespace):
    from bench.spec import load_suite, parse_only

    suite = load_suite(args.suite)
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError:
            raise FlowbenchError(f"--seeds {args.seeds}: expected integers separated by commas, e.g. 0,1,2") from None
    return suite, suite.runs(only=parse_only(args.only), seeds=seeds, sets=args.sets)


def _check_writable(results: str) -> None:
    from pathlib import Path

    path = Path(results)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise FlowbenchError(f"results folder {path} is not writable ({err.strerror}); "
                             "choose another with --results DIR") from None


def cmd_run(args: argparse.Namespace) -> int:
    from bench.launch import pending, run_inline

    suite, specs = _specs(args)
    todo, done = pending(specs, args.results, args.force)
    if args.dry_run:
        print(f"suite {suite.name} ({suite.path}): {len(specs)} runs, {len(todo)} to run, {done} already completed")
        for spec in specs:
            mark = "run " if spec in todo else "done"
            print(f"  {mark} {spec.run_id}  {spec.label:<40} max_steps={spec.train['max_steps']} metric={spec.metric}")
        return EXIT_OK
    _check_writable(args.results)
    data_root = args.data_root or suite.data_root
    print(f"suite {suite.name}: {len(specs)} runs, {len(todo)} to run, {done} already completed "
          f"-> {os.path.join(args.results, suite.name)}", flush=True)
    if args.executor != "inline":
        return _run_submitit(args, suite, specs, data_root)
    summary = run_inline(specs, args.results, data_root=data_root, device=args.device, force=args.force,
                         progress=not args.quiet)
    print(f"suite {suite.name}: {summary.line()}")
    if not args.no_report:
        _print_report(str(suite.path), args.results, None, "reports", figures=False)
    for label, message in summary.errors:
        print(f"  failed: {label}: {message}", file=sys.stderr)
    return EXIT_RUNS_FAILED if summary.failed else EXIT_OK


def _run_submitit(args: argparse.Namespace, suite, specs, data_root: str | None) -> int:
    from bench.launch import parse_slurm_overrides, slurm_parameters, submit, wait

    options = {**suite.slurm, **parse_slurm_overrides(args.slurm)}
    slurm_parameters(options, f"{suite.path}: slurm")  # validate before anything is submitted
    summary, submitted, jobs = submit(specs, args.results, args.executor, options, data_root=data_root,
                           device=args.device, force=args.force)
    if not jobs:
        print(f"suite {suite.name}: nothing submitted ({summary.line()})")
        return EXIT_OK
    array = jobs[0].job_id.split("_")[0]
    print(f"suite {suite.name}: submitted {len(jobs)} runs as {args.executor} job {array} "
          f"(logs in {os.path.join(args.results, suite.name, '_slurm')}); {summary.line()}", flush=True)
    if not (args.wait or args.executor == "local"):
        print(f"`flowbench status {args.suite}` follows them; `flowbench cancel {args.suite}` stops them")
        return EXIT_OK
    done = wait(submitted, args.results, jobs, progress=not args.quiet)
    print(f"suite {suite.name}: {done.line()}")
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
    from bench.store import RunRecord

    suite, specs = _specs(args)
    view = slurm_view(specs, args.results)
    rows, logs = [], []
    for spec in specs:
        info = view.get(spec.run_id, {})
        result = reconcile(spec, args.results, info) or RunRecord(args.results, spec.suite, spec.run_id).read_result() or {}
        status = result.get("status", "pending")
        value = (result.get("test") or {}).get(spec.metric)
        rows.append((spec.run_id, spec.label, status, info.get("state", ""), result.get("steps", ""),
                     f"{value:.4f}" if isinstance(value, float) else "", (result.get("error") or "")[:70]))
        if status not in ("completed", "pending", "running") and info.get("stderr"):
            logs.append(f"  log of {spec.label}: {info['stderr']}")
    print(f"suite {suite.name}: {len(rows)} runs")
    _print_rows(("run_id", "run", "status", "slurm", "steps", f"test {specs[0].metric}", "error"), rows)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row[2]] = counts.get(row[2], 0) + 1
    print("  " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for line in logs:
        print(line)
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from bench.store import scan

    if args.suite:
        return _status_of_suite(args)
    df = scan(args.results)
    _report_skipped(df)
    if df.empty:
        print(f"no run records under {args.results}")
        return EXIT_OK
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


def _suite_context(name: str) -> tuple[str, list[tuple[str, str, int]] | None, dict, list[str]]:
    """(suite name, its grid as (model, dataset, seed), its check: mapping, its differences: lines);
    the grid is None when the suite file cannot be found (the records alone are reported)."""
    from bench.spec import load_suite

    try:
        suite = load_suite(name)
    except FlowbenchError:
        if os.path.sep in name or name.endswith((".yaml", ".yml")):
            raise
        return name, None, {}, []
    grid = [(s.model, s.dataset, s.seed) for s in suite.runs(check_models=False)]
    return suite.name, grid, suite.check, suite.differences


def _scan_suite(suite: str, results: str):
    from bench.store import scan

    df = scan(results, suite)
    _report_skipped(df)
    if df.empty:
        raise FlowbenchError(f'no run records for suite "{suite}" under {results}; run `flowbench run {suite}` first')
    return df


def _print_report(suite: str, results: str, metric: str | None, out: str, figures: bool = True) -> None:
    from bench.report import differences_text, missing_text, to_markdown, write_report

    from bench.plots import start_workers

    pool = start_workers() if figures else None  # they load matplotlib and seaborn while the records are read
    try:
        name, grid, _, differences = _suite_context(suite)
        df = _scan_suite(name, results)
        report = write_report(df, name, out, metric, expected=grid, figures=figures, figure_pool=pool,
                              differences=differences)
    finally:
        if pool is not None:
            pool.terminate()  # every figure is written by now (or the report failed): nothing left to wait for
            pool.join()
    print(to_markdown(report.tables[0], f"## {name}: {report.tables[0].title}"), end="")
    print(missing_text(report.records), end="")
    print(differences_text(differences), end="")
    print(f"(report: {report.files['markdown']}, {report.files['html']}; {len(report.figures)} figures)")


def cmd_report(args: argparse.Namespace) -> int:
    _print_report(args.suite, args.results, args.metric, args.out, figures=not args.no_figures)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from bench.check import check, format_result, parse_tolerances, suite_tolerances

    name, _, check_cfg, _ = _suite_context(args.suite)
    tolerances = {**suite_tolerances(check_cfg), **parse_tolerances(args.tolerance)}
    from bench.store import scan

    df = scan(args.results, name)  # no records at all: check reports every pinned pair missing (exit 2)
    _report_skipped(df)
    result = check(df, name, tolerances, args.pinned, args.metric)
    print(f"suite {name}: checking against {args.pinned or 'baselines/pinned'}/{name}.csv")
    print(format_result(result, args.verbose), end="")
    return result.exit_code


def cmd_pin(args: argparse.Namespace) -> int:
    from bench.check import pin

    name, *_ = _suite_context(args.suite)
    df = _scan_suite(name, args.results)
    path, table, records = pin(df, name, args.pinned, args.metric)
    print(f"pinned {len(table)} quantities of {table[['model', 'dataset']].drop_duplicates().shape[0]} "
          f"(model, dataset) pairs -> {path}")
    if records.missing or not records.failed.empty:
        print(f"  note: {len(records.missing)} missing and {len(records.failed)} failed runs are not pinned")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    """`flowbench audit SUITE`: the tolerance audit of every completed CNF run, printed and written."""
    from bench.audit import DEFAULT_TOLERANCES, audit_suite, parse_tolerances, to_markdown, write_audit

    name, *_ = _suite_context(args.suite)
    tolerances = parse_tolerances(args.tolerances) if args.tolerances else DEFAULT_TOLERANCES
    records = _scan_suite(name, args.results)
    out, skipped = audit_suite(records, name, tolerances, args.max_examples or None, args.data_root,
                               progress=not args.quiet)
    if out.empty:
        raise FlowbenchError(f'suite "{name}": no completed CNF run with model.pt to audit'
                             + (f" (skipped: {'; '.join(f'{a} ({b})' for a, b in skipped)})" if skipped else ""))
    print(to_markdown(out, skipped), end="")
    csv, md = write_audit(out, skipped, args.out, name)
    print(f"(audit: {csv}, {md})")
    return EXIT_OK


def cmd_data(args: argparse.Namespace) -> int:
    """`flowbench data verify`: one line per dataset; exit 1 when a file is corrupt."""
    from bench.data import resolve_root
    from bench.data.verify import verify_all

    root = resolve_root(args.data_root)
    print(f"data root: {root if root else '(none: pass --data-root DIR or set FLOWBENCH_DATA)'}")
    statuses = verify_all(root)
    _print_rows(("dataset", "status", "where", "detail"), [(s.name, s.state, s.where, s.detail) for s in statuses])
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    print("  " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items())))
    if counts.get("missing"):
        print("  missing files: see docs/datasets.md (MAF's Zenodo archive for the UCI sets; torchvision's download "
              "or the cluster's copy for MNIST and CIFAR10)")
    return EXIT_RUNS_FAILED if counts.get("corrupt") else EXIT_OK


COMMANDS = {"list": cmd_list, "run": cmd_run, "status": cmd_status, "report": cmd_report, "cancel": cmd_cancel, "check": cmd_check, "pin": cmd_pin,
            "audit": cmd_audit, "data": cmd_data}


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
