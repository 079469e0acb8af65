"""The code a queued job runs: a read-only copy made at submission, named by its content hash.

An array task may start hours after ``flowbench run``; it starts in the copy (``_slurm/code/SHA/``),
so every task of a submission runs the submitted code whatever is edited meanwhile, and records
the hash it ran beside the submitted one (``code_mismatch`` is what ``status`` flags).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.errors import FlowbenchError

__all__ = ["SNAPSHOT_PACKAGES", "code_hash", "running_code", "snapshot_code", "code_mismatch"]

SNAPSHOT_PACKAGES = ("bench", "baselines")


def code_hash(entries: Mapping[str, Path]) -> str:
    """A content hash of code: every file under each entry (a package folder or a module file), by
    its path below the entry's name, bytecode caches and hidden files left out."""
    digest = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for name, path in entries.items():
        path = Path(path)
        if path.is_file():
            files.append((name, path))
            continue
        for root, dirs, names in os.walk(path):
            dirs[:] = [d for d in dirs if d != "__pycache__" and not d.startswith(".")]
            rel = Path(name) / Path(root).relative_to(path)
            files += [((rel / n).as_posix(), Path(root) / n) for n in names
                      if not n.startswith(".") and not n.endswith((".pyc", ".pyo"))]
    for rel, path in sorted(files):
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


def _code_sources(plugins: Sequence[str] = (), plugin_path: str = "") -> dict[str, Path]:
    """The code a run imports: the bench and baselines packages, and the suite's plugin modules that
    live in ``plugin_path`` (the user's own; plugins installed elsewhere are not copied)."""
    import importlib

    out: dict[str, Path] = {}
    for package in SNAPSHOT_PACKAGES:
        out[package] = Path(importlib.import_module(package).__file__).resolve().parent
    root = Path(plugin_path).resolve() if plugin_path else None
    for module in plugins:
        top = sys.modules.get(module.split(".")[0])
        where = Path(getattr(top, "__file__", None) or "").resolve() if top is not None else None
        if where is None or not where.is_file() or root is None or root not in where.parents:
            continue
        path = where.parent if where.name == "__init__.py" else where
        out[path.name] = path
    return out


def running_code(plugins: Sequence[str] = ()) -> str:
    """The hash of the code this process imported (``code_hash``): bench, baselines and the plugins
    that sit next to them (as in a snapshot)."""
    root = _code_sources()["bench"].parent
    return code_hash(_code_sources(plugins, str(root)))  # bench, baselines and the plugins beside them


def snapshot_code(folder: Path, plugins: Sequence[str] = (), plugin_path: str = "") -> dict[str, Any]:
    """Copy the code the jobs will run (``_code_sources``) into ``folder/code/SHA/`` (rsync when
    installed, else a plain copy; read-only), SHA being the copy's ``code_hash``. Returns {"sha",
    "git" (the checkout's commit, "+dirty" with uncommitted changes; None outside git), "dir"}."""
    from bench.env import git_sha

    sources = _code_sources(plugins, plugin_path)
    base = Path(folder) / "code"
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=base, prefix=".tmp-"))
        for name, src in sources.items():
            if shutil.which("rsync"):
                target = f"{tmp / name}/" if src.is_dir() else str(tmp / name)
                subprocess.run(["rsync", "-a", "--exclude", "__pycache__", "--exclude", "*.pyc",
                                f"{src}/" if src.is_dir() else str(src), target], check=True, capture_output=True)
            elif src.is_dir():
                shutil.copytree(src, tmp / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, tmp / name)
        sha = code_hash({p.name: p for p in tmp.iterdir()})
        for root, _, names in os.walk(tmp):
            for n in names:
                os.chmod(os.path.join(root, n), 0o444)
        final = base / sha
        try:
            os.rename(tmp, final)
        except OSError:  # the same code was snapshotted before: keep that copy
            shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, subprocess.CalledProcessError) as err:
        raise FlowbenchError(f"cannot snapshot the code into {base} ({err}); nothing was submitted") from None
    return {"sha": sha, "git": git_sha(), "dir": str(final)}




def code_mismatch(result: Mapping[str, Any] | None) -> str | None:
    """What ``status`` flags when a run ran other code than was submitted, else None."""
    code = (result or {}).get("code") or {}
    if code.get("submitted") and code.get("ran") and code["submitted"] != code["ran"]:
        return (f"ran code {code['ran']} but was submitted with {code['submitted']}"
                + (f" (git {code['git']})" if code.get("git") else ""))
    return None
