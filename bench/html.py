"""The HTML report's page furniture: its style, its script (sortable tables, a filter box per table,
``#sort=``/``#filter=`` links, a visibility self-check) and the failed-runs table with links into
the results folder.

Everything is embedded in ``index.html`` (no server, no CDN, no other file), so the page opens from
disk and keeps working when the folder is copied. The script is plain JavaScript run by the browser;
nothing here runs code read from a results folder (``slurm.json`` is read as JSON, for a path).
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["CSS", "SCRIPT", "CHECK_ID", "page", "href", "run_links", "failed_runs_html"]

CHECK_ID = "flowbench-check"  # the element the self-check (``index.html?check``) writes its JSON into

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
table{border-collapse:collapse;margin:0.3em 0 1.5em}th,td{padding:3px 8px;text-align:right;border-bottom:1px solid #ddd}
thead th{border-bottom:2px solid #444}td{white-space:nowrap}tbody th{text-align:left}td.pub,td.gap{color:#777;font-size:90%}
thead th.sortable{cursor:pointer;user-select:none}thead th.sortable:hover{background:#f0f4fa}
thead th.sortable::after{content:"\\2195";color:#bbb;padding-left:0.3em;font-size:80%}
thead th.asc::after{content:"\\25B2";color:#333}thead th.desc::after{content:"\\25BC";color:#333}
div.filter{margin:0.4em 0 0;font-size:90%;color:#555}div.filter input{font:inherit;padding:2px 6px;width:16em}
div.filter span{padding-left:0.6em}
figure{display:inline-block;margin:0.5em;vertical-align:top}figure img{max-width:560px;border:1px solid #eee}
pre{background:#f6f6f6;padding:0.6em;overflow-x:auto}.small{font-size:85%;color:#555}
table.failed td.error{text-align:left;white-space:normal;max-width:40em}table.failed td.error pre{margin:0.2em 0}
table.failed th{text-align:left}table.failed td.links{text-align:left}table.failed td.links a{margin-right:0.6em}
tr.failed-status td.status{color:#a00}
table.published td,table.env td{white-space:normal}table.published td:last-child{text-align:left}
"""

# Sorting: a click on a header sorts the rows by that column, ascending, then descending. Cells
# are compared by their leading number when they have one ("-0.200 ± 0.010 (se ...)", "1,000,000",
# "+0.070"; a Unicode minus counts), numbers before words, words in natural order ("seed2" before
# "seed10"), and empty cells or "–" last either way. Filtering: a row stays when its text holds
# every word of the box (case-insensitive). Both are mirrored in the URL's hash:
#   #sort=COLUMN[:desc]&filter=TEXT            every table (sort: those that have the column)
#   #TABLE_ID.sort=COLUMN[:desc]&TABLE_ID.filter=TEXT   one table (ids: table-headline, counts, ...)
# applied on load and on hashchange, and rewritten as the reader sorts and filters, so a view is a
# link. index.html?check writes a JSON self-check into <pre id="flowbench-check"> after load (also
# window.flowbenchReport.check(), for a test that clicks first): each table's size, sort, filter and
# shown rows, each image's size, and the problems: a table or image hidden or of zero size, an
# image that did not load.
SCRIPT = r"""
(function () {
  'use strict';
  var NUM = /^\s*([+\-\u2212]?)(\d[\d,]*(?:\.\d*)?|\.\d+)(e[+\-]?\d+)?/i;
  var EMPTY = /^\s*(|\u2013|-|\u2014|nan|none)\s*$/i;

  function text(cell) { return cell ? (cell.textContent || '').replace(/\s+/g, ' ').trim() : ''; }
  function number(s) {
    var m = NUM.exec(s);
    if (!m) return null;
    var v = parseFloat((m[1] && m[1] !== '+' ? '-' : '') + m[2].replace(/,/g, '') + (m[3] || ''));
    return isNaN(v) ? null : v;
  }
  function compare(a, b) {  // a, b: cell texts; empty cells are handled by the caller
    var x = number(a), y = number(b);
    if (x !== null && y !== null) return x < y ? -1 : (x > y ? 1 : 0);
    if (x !== null) return -1;
    if (y !== null) return 1;
    return a.localeCompare(b, undefined, {numeric: true, sensitivity: 'base'});
  }
  function headers(table) {
    var rows = table.tHead ? table.tHead.rows : [];
    return rows.length ? rows[rows.length - 1].cells : [];
  }
  function columnIndex(table, name) {
    var hs = headers(table), want = name.trim().toLowerCase();
    for (var i = 0; i < hs.length; i++) if (text(hs[i]).toLowerCase() === want) return i;
    return -1;
  }
  function bodyRows(table) {
    var out = [];
    for (var b = 0; b < table.tBodies.length; b++)
      for (var r = 0; r < table.tBodies[b].rows.length; r++) out.push(table.tBodies[b].rows[r]);
    return out;
  }

  function sortTable(table, col, desc) {
    var hs = headers(table);
    if (col < 0 || col >= hs.length) return false;
    var body = table.tBodies[0];
    var rows = bodyRows(table).map(function (row, i) { return {row: row, key: text(row.cells[col]), i: i}; });
    rows.sort(function (p, q) {
      var pe = EMPTY.test(p.key), qe = EMPTY.test(q.key);
      if (pe || qe) return pe && qe ? p.i - q.i : (pe ? 1 : -1);
      var c = compare(p.key, q.key);
      return c !== 0 ? (desc ? -c : c) : p.i - q.i;
    });
    rows.forEach(function (r) { body.appendChild(r.row); });
    for (var i = 0; i < hs.length; i++) {
      hs[i].classList.remove('asc', 'desc');
      hs[i].removeAttribute('aria-sort');
    }
    hs[col].classList.add(desc ? 'desc' : 'asc');
    hs[col].setAttribute('aria-sort', desc ? 'descending' : 'ascending');
    table.setAttribute('data-sort', text(hs[col]) + (desc ? ':desc' : ''));
    return true;
  }

  function filterTable(table, query) {
    var words = query.toLowerCase().split(/\s+/).filter(Boolean), shown = 0, rows = bodyRows(table);
    rows.forEach(function (row) {
      var t = (row.textContent || '').toLowerCase();
      var keep = words.every(function (w) { return t.indexOf(w) >= 0; });
      row.hidden = !keep;
      if (keep) shown++;
    });
    var box = table.flowbenchFilter;
    if (box) {
      if (box.input.value !== query) box.input.value = query;
      box.count.textContent = (words.length ? shown + ' of ' : '') + rows.length + (rows.length === 1 ? ' row' : ' rows');
    }
    table.setAttribute('data-filter', query);
  }

  // the hash: key=value pairs joined by '&', values URI-encoded
  function readHash() {
    var out = {}, h = location.hash.replace(/^#/, '');
    h.split('&').forEach(function (part) {
      if (!part) return;
      var eq = part.indexOf('=');
      var key = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
      out[key] = eq < 0 ? '' : decodeURIComponent(part.slice(eq + 1).replace(/\+/g, ' '));
    });
    return out;
  }
  function writeHash(table, key, value) {
    var state = readHash(), parts = [];
    state[table.id + '.' + key] = value;
    if (!value) delete state[table.id + '.' + key];
    Object.keys(state).forEach(function (k) {
      parts.push(encodeURIComponent(k) + (state[k] === '' ? '' : '=' + encodeURIComponent(state[k])));
    });
    var url = location.href.replace(/#.*$/, '') + (parts.length ? '#' + parts.join('&') : '');
    try { history.replaceState(null, '', url); } catch (e) { /* a file: page that refuses: no link, still sorted */ }
  }
  function parseSort(value) {
    var desc = /:desc$/i.test(value), asc = /:asc$/i.test(value);
    return {column: desc || asc ? value.replace(/:(de|a)sc$/i, '') : value, desc: desc};
  }

  var tables = [];
  function applyHash() {
    var state = readHash();
    tables.forEach(function (table) {
      var sort = state[table.id + '.sort'] !== undefined ? state[table.id + '.sort'] : state.sort;
      if (sort) {
        var s = parseSort(sort);
        sortTable(table, columnIndex(table, s.column), s.desc);
      }
      var filter = state[table.id + '.filter'] !== undefined ? state[table.id + '.filter'] : state.filter;
      filterTable(table, filter || '');
    });
  }

  function setUp() {
    var all = document.querySelectorAll('table'), n = 0;
    for (var t = 0; t < all.length; t++) {
      var table = all[t];
      if (!table.tHead || !table.tBodies.length || !headers(table).length) continue;
      if (!table.id) table.id = 'table-' + (++n);
      tables.push(table);
      var hs = headers(table);
      for (var i = 0; i < hs.length; i++) {
        hs[i].classList.add('sortable');
        hs[i].title = 'sort by ' + text(hs[i]) + ' (click again: descending)';
        hs[i].addEventListener('click', (function (table, col) {
          return function () {
            var desc = headers(table)[col].classList.contains('asc');
            sortTable(table, col, desc);
            writeHash(table, 'sort', text(headers(table)[col]) + (desc ? ':desc' : ''));
          };
        })(table, i));
      }
      var div = document.createElement('div'), input = document.createElement('input'),
          count = document.createElement('span');
      div.className = 'filter';
      input.type = 'search';
      input.placeholder = 'filter rows';
      input.setAttribute('aria-label', 'filter the rows of ' + table.id);
      div.appendChild(input);
      div.appendChild(count);
      table.parentNode.insertBefore(div, table);
      table.flowbenchFilter = {input: input, count: count};
      input.addEventListener('input', (function (table, input) {
        return function () { filterTable(table, input.value); writeHash(table, 'filter', input.value); };
      })(table, input));
    }
    applyHash();
    window.addEventListener('hashchange', applyHash);
  }

  // the self-check (index.html?check): every table and figure must be on screen with a size, and
  // every image decoded; the findings go, as JSON, into a hidden pre element (id flowbench-check)
  // that a headless browser's --dump-dom shows
  function hiddenBy(el) {
    for (var e = el; e && e.nodeType === 1; e = e.parentElement) {
      var st = getComputedStyle(e);
      if (st.display === 'none') return 'display:none on <' + e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + '>';
      if (e === el && st.visibility !== 'visible') return 'visibility:' + st.visibility;
      if (parseFloat(st.opacity) === 0) return 'opacity:0 on <' + e.tagName.toLowerCase() + '>';
    }
    return '';
  }
  function check() {
    var problems = [], report = {tables: [], images: [], problems: problems};
    var all = document.querySelectorAll('table');
    for (var t = 0; t < all.length; t++) {
      var table = all[t], r = table.getBoundingClientRect(), why = hiddenBy(table);
      var name = 'table #' + (table.id || t);
      if (why) problems.push(name + ': hidden (' + why + ')');
      else if (r.width === 0 || r.height === 0) problems.push(name + ': zero size (' + r.width + 'x' + r.height + ')');
      var rows = bodyRows(table).filter(function (row) { return !row.hidden; });
      report.tables.push({id: table.id, width: r.width, height: r.height, sort: table.getAttribute('data-sort') || '',
                          filter: table.getAttribute('data-filter') || '', total: bodyRows(table).length,
                          columns: Array.prototype.map.call(headers(table), text),
                          rows: rows.map(function (row) { return Array.prototype.map.call(row.cells, text); })});
    }
    var imgs = document.images;
    for (var i = 0; i < imgs.length; i++) {
      var img = imgs[i], b = img.getBoundingClientRect(), hid = hiddenBy(img);
      var label = 'image ' + (img.alt || img.getAttribute('src').slice(0, 60));
      if (!img.complete || img.naturalWidth === 0) problems.push(label + ': did not load (naturalWidth 0)');
      if (hid) problems.push(label + ': hidden (' + hid + ')');
      else if (b.width === 0 || b.height === 0) problems.push(label + ': zero size (' + b.width + 'x' + b.height + ')');
      report.images.push({alt: img.alt, width: b.width, height: b.height, natural: img.naturalWidth});
    }
    var out = document.getElementById('flowbench-check') || document.createElement('pre');
    out.id = 'flowbench-check';
    out.hidden = true;
    report.hash = location.hash;
    out.textContent = JSON.stringify(report);
    document.body.appendChild(out);
    return report;
  }

  window.flowbenchReport = {check: check, sort: sortTable, filter: filterTable, applyHash: applyHash};

  document.addEventListener('DOMContentLoaded', setUp);
  window.addEventListener('load', function () {
    if (/[?&]check(=|&|$)/.test(location.search)) check();
  });
})();
"""


def page(title: str, body: Iterable[str]) -> str:
    """The whole document: ``body`` (HTML fragments) with the style and the script embedded."""
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style><script>{SCRIPT}</script></head>"
            "<body>\n" + "\n".join(body) + "\n</body></html>\n")


def href(target: str | os.PathLike, out_dir: str | os.PathLike | None) -> str:
    """A link to the file ``target`` from a page in ``out_dir``: a relative path (URL-quoted), so
    it keeps working when the report and results folders move together; a file: URI when there is
    no page folder or no relative path (another drive)."""
    full = os.path.abspath(target)
    if out_dir is not None:
        try:
            return quote(Path(os.path.relpath(full, os.path.abspath(out_dir))).as_posix())
        except ValueError:
            pass
    return Path(full).as_uri()


def _slurm_logs(run_dir: Path) -> list[tuple[str, Path]]:
    """The job's stderr and stdout files named by the run's slurm.json (read as JSON) that exist."""
    try:
        info = json.loads((run_dir / "slurm.json").read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(info, dict):
        return []
    out = []
    for key in ("stderr", "stdout"):
        value = info.get(key)
        if isinstance(value, str) and value:
            path = Path(value)
            if not path.exists():  # named relative to where it was submitted from: submitit writes results/SUITE/_slurm/
                path = run_dir.parent / "_slurm" / path.name
            if path.is_file():
                out.append((f"log ({key})", path))
    return out


def run_links(run_dir: str | os.PathLike | None, out_dir: str | os.PathLike | None) -> list[tuple[str, str, str]]:
    """(label, href, title) for the files of a run folder a reader of a failed run wants: the job's
    log (stderr, stdout: the job's slurm.json names them), its error (result.json: error and
    traceback) and its training log (metrics.jsonl). Files that are not there get no link."""
    if run_dir is None or not isinstance(run_dir, (str, os.PathLike)) or not str(run_dir):
        return []
    folder = Path(run_dir)
    files = [*_slurm_logs(folder), ("error", folder / "result.json"), ("training log", folder / "metrics.jsonl"),
             ("run folder", folder)]
    out = []
    for label, path in files:
        if path.exists():
            out.append((label, href(path, out_dir) + ("/" if path.is_dir() else ""), str(path)))
    return out


def _cell(row: Any, name: str) -> str:
    value = getattr(row, name, None)
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return str(value)


def failed_runs_html(failed: Any, out_dir: str | os.PathLike | None, label: Any) -> list[str]:
    """The failed runs (failed, diverged, timeout, preempted, oom) as a table: run, run id, status, the
    error's first line (the whole error and traceback folded under it) and links to the run's log,
    error and training log, relative to the report's folder ``out_dir``. ``label(model, variant,
    dataset, seed)`` names a run."""
    esc = html.escape
    out = [f'<h2 id="failed">failed runs ({len(failed)})</h2>',
           '<table class="failed" id="failed-runs"><thead><tr><th>run</th><th>run_id</th><th>status</th>'
           "<th>error</th><th>files</th></tr></thead><tbody>"]
    for row in failed.itertuples():
        err = _cell(row, "error")
        tb = _cell(row, "traceback")
        first = err.splitlines()[0] if err.strip() else "(no error recorded)"
        more = "\n".join(err.splitlines()[1:]).strip()
        detail = "\n\n".join(x for x in (more, tb.strip()) if x)
        error = esc(first[:300]) + (f"<details><summary>error and traceback</summary><pre>{esc(detail)}</pre></details>"
                                    if detail or len(first) > 300 else "")
        links = " ".join(f'<a href="{esc(h)}" title="{esc(t)}">{esc(name)}</a>'
                         for name, h, t in run_links(getattr(row, "path", None), out_dir))
        out.append(f'<tr class="failed-status"><th>{esc(label(row.model, row.variant, row.dataset, row.seed))}</th>'
                   f"<td>{esc(_cell(row, 'run_id'))}</td><td class='status'>{esc(_cell(row, 'status'))}</td>"
                   f"<td class='error'>{error}</td><td class='links'>{links or '(no files)'}</td></tr>")
    out.append("</tbody></table>")
    return out

