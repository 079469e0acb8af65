"""The HTML report (index.html) in a real browser: headless Chromium loads a page rendered from test
records, screenshots it, and the page's self-check (index.html?check) lists every table and image
that is hidden, of zero size or did not load; sorting and filtering by click, by filter box and by
URL hash; links from failed runs into the results folder."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
from report_records import now, write_run

from bench import report
from bench.html import href, run_links
from bench.store import scan


def _chromium() -> str | None:
    return (os.environ.get("FLOWBENCH_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
            or shutil.which("google-chrome"))


needs_chromium = pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium is not installed: `bash scripts/setup.sh` installs it "
                                "(apt-get install -y chromium; needs root or sudo)")


def _browse(url: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """One headless Chromium run on ``url`` (after its scripts ran: virtual time runs 5 s ahead)."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={profile}", "--virtual-time-budget=5000", *args, url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _self_check(page: Path, profile: Path, hash_: str = "") -> dict:
    """The page's self-check (index.html?check) as the browser left it in the DOM."""
    dom = _browse(page.resolve().as_uri() + "?check" + hash_, profile, "--dump-dom").stdout
    found = re.search(r'<pre id="flowbench-check"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, f"the page wrote no self-check; DOM starts: {dom[:500]}"
    return json.loads(html.unescape(found.group(1)))


def _rows(check: dict, table_id: str) -> list[list[str]]:
    return next(t for t in check["tables"] if t["id"] == table_id)["rows"]


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> report.Report:
    """A report with figures: four models on power and gas (power means 9.5, 10.25, -1.5 and none, so
    text order and number order differ), one run diverged, one failed (with a job log), one timed out."""
    base = tmp_path_factory.mktemp("html")
    results, t = base / "results", now()
    for seed, v in enumerate([9.4, 9.5, 9.6]):
        write_run(results, "s", "realnvp", "power", seed, v, params=1_000_000, mtime=t)
    write_run(results, "s", "glow", "power", 0, 10.25, params=999_999, mtime=t)
    write_run(results, "s", "glow", "power", 1, status="diverged", error="non-finite training loss (nan) at step 7")
    write_run(results, "s", "ffjord", "power", 0, -1.5, nfe=20, params=20_000, mtime=t)
    for model, v in (("realnvp", -8.0), ("glow", -8.2), ("iresnet", -7.5)):
        write_run(results, "s", model, "gas", 0, v, mtime=t)
    failed = write_run(results, "s", "ffjord", "gas", 0, status="failed",
                       error="RuntimeError: CUDA out of memory\nTried to allocate 2 GiB")
    log = results / "s" / "_slurm" / "17_0_log.err"
    log.parent.mkdir(parents=True)
    log.write_text("Traceback (most recent call last): ...\n")
    (failed.dir / "slurm.json").write_text(json.dumps({"job_id": "17_0", "executor": "slurm",
                                                        "stderr": str(log), "stdout": str(log.with_suffix(".out"))}))
    write_run(results, "s", "iresnet", "power", 0, status="timeout", error="time limit (3600 s) reached")
    return report.write_report(scan(results, "s"), "s", base / "reports")


@needs_chromium
def test_every_table_and_image_is_visible_and_the_screenshot_is_not_blank(page, tmp_path):
    check = _self_check(page.files["html"], tmp_path / "profile")
    assert check["problems"] == []
    ids = [t["id"] for t in check["tables"]]
    assert ids == [f"table-{t.key}" for t in page.tables] + ["counts", "failed-runs", "environment", "published"]
    assert all(t["width"] > 0 and t["height"] > 0 and t["rows"] for t in check["tables"] if t["id"] != "environment")
    assert len(page.figures) >= 3 and len(check["images"]) == page.files["html"].read_text().count("<img ")
    assert len(check["images"]) == sum(1 for p in page.figures.values() if p.suffix == ".png")
    assert all(i["natural"] > 0 and i["width"] > 0 and i["height"] > 0 for i in check["images"])

    from PIL import Image, ImageStat

    shot = tmp_path / "page.png"
    _browse(page.files["html"].resolve().as_uri(), tmp_path / "profile", f"--screenshot={shot}",
            "--window-size=1280,2400")
    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        stat = ImageStat.Stat(img.convert("L"))
        assert stat.var[0] > 500, f"a blank page: grey-level variance {stat.var[0]:.1f}"
        assert img.convert("L").getextrema()[0] < 60  # dark text and lines are drawn


@needs_chromium
def test_the_self_check_reports_a_broken_image_and_a_hidden_table(page, tmp_path):
    text = page.files["html"].read_text()
    first = re.search(r'<img alt="([^"]+)" src="data:image/png;base64,[^"]+"', text)
    broken = text.replace(first.group(0), f'<img alt="{first.group(1)}" src="figures/no-such-figure.png"', 1)
    broken = broken.replace("</style>", "#counts{display:none}\n</style>", 1)
    bad = page.out_dir / "broken.html"
    bad.write_text(broken)
    problems = _self_check(bad, tmp_path / "profile")["problems"]
    assert f"image {first.group(1)}: did not load (naturalWidth 0)" in problems
    assert "table #counts: hidden (display:none on <table#counts>)" in problems
    assert len(problems) == 2


@needs_chromium
def test_sort_and_filter_from_the_url_hash(page, tmp_path):
    profile = tmp_path / "profile"
    written = [r[0] for r in _rows(_self_check(page.files["html"], profile), "table-params")]
    up = _self_check(page.files["html"], profile, "#sort=power")
    # numbers in number order (text order would put 10.250 before 9.500), an empty cell ("–") last
    assert [r[0] for r in _rows(up, "table-headline")] == ["ffjord", "realnvp", "glow", "iresnet"]
    down = _self_check(page.files["html"], profile, "#sort=power:desc")
    assert [r[0] for r in _rows(down, "table-headline")] == ["glow", "realnvp", "ffjord", "iresnet"]
    assert next(t for t in down["tables"] if t["id"] == "table-headline")["sort"] == "power:desc"
    # thousands separators: 1,000,000 > 999,999 > 20,000
    assert [r[0] for r in _rows(down, "table-params")] == ["realnvp", "glow", "ffjord", "iresnet"]
    # one table's own sort and filter; the others keep their order and every row
    one = _self_check(page.files["html"], profile, "#table-headline.filter=real%20gl&counts.sort=failed:desc")
    assert [r[0] for r in _rows(one, "table-headline")] == []  # no row holds both words
    one = _self_check(page.files["html"], profile, "#table-headline.filter=GLOW&counts.sort=failed:desc")
    assert [r[0] for r in _rows(one, "table-headline")] == ["glow"]
    assert [r[0] for r in _rows(one, "table-params")] == written
    counts = _rows(one, "counts")
    failed_col = next(t for t in one["tables"] if t["id"] == "counts")["columns"].index("failed")
    assert [int(r[failed_col]) for r in counts] == sorted((int(r[failed_col]) for r in counts), reverse=True)
    assert counts[0][failed_col] == "1" and len(counts) == 8
    # every table filtered: the failed runs by their status
    every = _self_check(page.files["html"], profile, "#filter=timeout")
    assert [r[2] for r in _rows(every, "failed-runs")] == ["timeout"]
    assert _rows(every, "table-headline") == [] and every["problems"] == []  # an empty table still shows its header


@needs_chromium
def test_a_click_sorts_and_typing_filters_and_both_go_into_the_link(page, tmp_path):
    script = """<script>window.addEventListener('load', function () {
      var th = Array.prototype.find.call(document.querySelectorAll('#table-headline thead th'),
                                         function (h) { return h.textContent.trim() === 'power'; });
      th.click(); th.click();  // ascending, then descending
      var box = document.querySelector('#failed-runs').previousElementSibling.querySelector('input');
      box.value = 'diverged'; box.dispatchEvent(new Event('input'));
      window.flowbenchReport.check();
    });</script></body>"""
    clicked = page.out_dir / "clicked.html"
    clicked.write_text(page.files["html"].read_text().replace("</body>", script, 1))
    found = re.search(r'<pre id="flowbench-check"[^>]*>(.*?)</pre>',
                      _browse(clicked.resolve().as_uri(), tmp_path / "profile", "--dump-dom").stdout, re.S)
    check = json.loads(html.unescape(found.group(1)))
    assert [r[0] for r in _rows(check, "table-headline")] == ["glow", "realnvp", "ffjord", "iresnet"]
    assert [r[2] for r in _rows(check, "failed-runs")] == ["diverged"]
    assert check["hash"] == "#table-headline.sort=power%3Adesc&failed-runs.filter=diverged"


def test_failed_runs_link_to_their_log_error_and_training_log(page, tmp_path):
    text = page.files["html"].read_text()
    section = text[text.index('id="failed-runs"'):]
    section = section[:section.index("</table>")]
    rows = re.findall(r"<tr class=\"failed-status\"><th>([^<]+)</th>(.*?)</tr>", section, re.S)
    assert sorted(r[0] for r in rows) == ["ffjord/gas/seed0", "glow/power/seed1", "iresnet/power/seed0"]
    by_run = {name: dict((label, unquote(link)) for link, label in re.findall(r'<a href="([^"]+)"[^>]*>([^<]+)</a>',
                                                                                body)) for name, body in rows}
    failed_dir = page.records.failed.set_index("model").loc["ffjord", "path"]
    ffjord = by_run["ffjord/gas/seed0"]
    assert set(ffjord) == {"log (stderr)", "error", "training log", "run folder"}  # stdout was never written
    for label, link in ffjord.items():
        assert not link.startswith(("/", "file:")), link  # relative to the report's folder
    resolved = {label: (page.out_dir / link).resolve() for label, link in ffjord.items()}
    assert resolved["error"] == (Path(failed_dir) / "result.json").resolve()
    assert resolved["training log"] == (Path(failed_dir) / "metrics.jsonl").resolve()
    assert resolved["log (stderr)"].read_text().startswith("Traceback")
    assert "CUDA out of memory" in text and "<details><summary>error and traceback</summary><pre>Tried to allocate" in text
    # a report written elsewhere links by a path that resolves from there; no page folder: file: URIs
    elsewhere = tmp_path / "a" / "b" / "c"
    for label, link, _ in run_links(failed_dir, elsewhere):
        assert (elsewhere / unquote(link)).resolve() == Path(resolved[label]).resolve()
    assert all(link.startswith("file:///") for _, link, _ in run_links(failed_dir, None))
    assert run_links(tmp_path / "no-such-run", tmp_path) == []
    assert href(tmp_path / "x y#1.json", tmp_path / "r") == "../x%20y%231.json"  # a name that needs quoting
