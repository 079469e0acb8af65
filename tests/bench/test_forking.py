"""Forked worker pools: used where they pay and are safe, never from a process with torch loaded."""

from __future__ import annotations

import os
import sys

import pytest

from bench.forking import fork_pool, usable_cores


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def test_pool_runs_work_in_other_processes(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    if usable_cores() < 2 or not sys.platform.startswith("linux"):
        assert fork_pool() is None
        pytest.skip("forking is only used on Linux with two or more cores")
    pool = fork_pool(2)
    try:
        out = pool.map(_pid_and_square, range(6))
    finally:
        pool.close()
        pool.join()
    assert [sq for _, sq in out] == [x * x for x in range(6)]
    assert os.getpid() not in {pid for pid, _ in out}


def test_no_pool_for_one_worker_or_with_torch_loaded(monkeypatch):
    assert fork_pool(1) is None
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch") or object())
    assert fork_pool(2) is None
